//! The admin queries — list and show events and runs, the answer to a retry —
//! written once over a [`Store`] and returning typed values.
//!
//! The admin API serves them as JSON (through [`super::console::Console`]),
//! the CLI calls them directly when it opens the store itself (no hub
//! running) and renders the same types when it asks a running hub, and the
//! dashboard renders them as HTML through the same `Console`: one
//! implementation, so the three cannot disagree. Nothing here knows HTTP.

/// The records the admin API answers with (the store's serde types, named
/// here so API users — the dashboard — need not reach into the store).
pub use crate::store::{Attempt, Event, Run, RunHead, RunStatus, StepRecord, StepStatus};
use crate::store::{Page, Retried, RunFilter, Store, StoreError};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

/// Page size when none is asked for.
pub const DEFAULT_LIMIT: usize = 50;
/// Largest page returned.
pub const MAX_PAGE: usize = 500;
/// Largest event body, step input, output or request (as JSON text) a list
/// item carries; a larger one is replaced by a summary (the whole record is
/// one `show` away), so a page is bounded by its item count, not by what
/// senders and APIs sent (60 events of 1 MiB made a 60 MiB page).
pub const LIST_VALUE_MAX: usize = 4 * 1024;

/// Why a query has no answer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("no {kind} {id}")]
    NotFound { kind: &'static str, id: String },
    #[error("unknown status `{name}`, expected {}", list(status_names()))]
    UnknownStatus { name: String },
    #[error("run {id} is {}; only failed or dead runs can be retried", status_name(*.status))]
    NotRetryable { id: String, status: RunStatus },
    #[error("cannot read `{given}` as a time for `{field}`: expected RFC 3339 (`2026-11-30T09:00:00Z`), a UTC date-time (`2026-11-30T09:00`) or milliseconds since 1970")]
    BadTime { field: &'static str, given: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One page, newest first. `next` is the `before` cursor of the following
/// page, `None` at the end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Listing<T> {
    pub items: Vec<T>,
    #[serde(default)]
    pub next: Option<String>,
}

/// Which page of a listing: as given by a user (CLI flags or API query).
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Items per page (default 50, at most 500).
    pub limit: Option<usize>,
    /// The `next` of the previous page.
    pub before: Option<String>,
}

/// Which runs to list. (The page fields are repeated rather than a
/// flattened [`PageQuery`]: URL query strings cannot fill numbers through
/// `serde(flatten)`.)
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunsQuery {
    /// Items per page (default 50, at most 500).
    pub limit: Option<usize>,
    /// The `next` of the previous page.
    pub before: Option<String>,
    /// A status name (`failed`); unknown names are an error.
    pub status: Option<String>,
    /// A recipe name.
    pub recipe: Option<String>,
}

/// Which events to list: a page, narrowed by connector, event type, time
/// or delivery id. Without a delivery id, filters are applied while paging
/// newest first, looking at most at [`FILTER_SCAN`] events per page: a page
/// may then hold fewer items than `limit` and still have a `next`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Items per page (default 50, at most 500).
    pub limit: Option<usize>,
    /// The `next` of the previous page.
    pub before: Option<String>,
    /// A connector name.
    pub connector: Option<String>,
    /// The event type, exactly.
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// Received at or after (RFC 3339, `YYYY-MM-DDTHH:MM` in UTC, or ms).
    pub since: Option<String>,
    /// Received before.
    pub until: Option<String>,
    /// The sender's delivery id, exactly (looked up, not scanned).
    pub delivery_id: Option<String>,
}

/// Most events one filtered page looks at.
pub const FILTER_SCAN: usize = 10_000;

/// An event with a summary of each of its runs (instead of their ids).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventView {
    pub id: String,
    pub connector: String,
    pub event_type: Option<String>,
    pub delivery_id: Option<String>,
    pub received_at: i64,
    /// How it reached the hub: `webhook`, `schedule` or `poll`.
    pub origin: crate::store::Origin,
    pub body: Value,
    pub runs: Vec<RunSummary>,
}

/// A run as an event lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RunSummary {
    pub id: String,
    pub recipe: String,
    pub status: RunStatus,
    pub error: Option<String>,
}

/// The runs a retry queued again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RetriedRuns {
    pub retried: Vec<String>,
}

impl PageQuery {
    fn page(&self) -> Page {
        page(self.limit, &self.before)
    }
}

fn page(limit: Option<usize>, before: &Option<String>) -> Page {
    Page {
        limit: limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_PAGE),
        before: before.clone(),
    }
}

fn listing<T>(items: Vec<T>, page: &Page, id: impl Fn(&T) -> &str) -> Listing<T> {
    let next = (items.len() >= page.limit)
        .then(|| items.last().map(|i| id(i).to_string()))
        .flatten();
    Listing { items, next }
}

pub fn events(store: &dyn Store, q: &PageQuery) -> Result<Listing<Event>, QueryError> {
    let page = q.page();
    let mut events = store.events(&page)?;
    for e in &mut events {
        summarise(&mut e.body);
    }
    Ok(listing(events, &page, |e| &e.id))
}

/// Events matching `q`, newest first. `connectors` are the names a delivery
/// id is looked up under when `q` names no connector.
pub fn find_events(
    store: &dyn Store,
    q: &EventsQuery,
    connectors: &[&str],
) -> Result<Listing<Event>, QueryError> {
    let blank = |o: &Option<String>| {
        o.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let (connector, event_type, delivery) = (
        blank(&q.connector),
        blank(&q.event_type),
        blank(&q.delivery_id),
    );
    let since = blank(&q.since)
        .map(|s| parse_time("since", &s))
        .transpose()?;
    let until = blank(&q.until)
        .map(|s| parse_time("until", &s))
        .transpose()?;
    let keep = |e: &Event| {
        connector.as_deref().is_none_or(|c| c == e.connector)
            && event_type
                .as_deref()
                .is_none_or(|t| Some(t) == e.event_type.as_deref())
            && since.is_none_or(|t| e.received_at >= t)
            && until.is_none_or(|t| e.received_at < t)
    };
    let mut page = q.page_query().page();
    if let Some(d) = delivery {
        let names: Vec<&str> = match &connector {
            Some(c) => vec![c.as_str()],
            None => connectors.to_vec(),
        };
        let mut items = Vec::new();
        for name in names {
            if let Some(mut e) = store.event_by_delivery(name, &d)? {
                if keep(&e) {
                    summarise(&mut e.body);
                    items.push(e);
                }
            }
        }
        items.sort_by(|a, b| b.id.cmp(&a.id));
        return Ok(Listing { items, next: None });
    }
    if connector.is_none() && event_type.is_none() && since.is_none() && until.is_none() {
        return events(store, &q.page_query());
    }
    // Start below `until` (ids sort by time), stop at `since`.
    if let Some(t) = until {
        let floor = crate::store::id_floor(t);
        if page.before.as_ref().is_none_or(|b| *b > floor) {
            page.before = Some(floor);
        }
    }
    let limit = page.limit;
    let mut items = Vec::new();
    let mut scanned = 0;
    let mut chunk = Page {
        limit: 500,
        before: page.before.clone(),
    };
    loop {
        let batch = store.events(&chunk)?;
        for mut e in batch.iter().cloned() {
            scanned += 1;
            if since.is_some_and(|t| e.received_at < t) {
                return Ok(Listing { items, next: None });
            }
            let last = e.id.clone();
            if keep(&e) {
                summarise(&mut e.body);
                items.push(e);
            }
            if items.len() >= limit || scanned >= FILTER_SCAN {
                return Ok(Listing {
                    items,
                    next: Some(last),
                });
            }
        }
        match batch.last() {
            Some(e) if batch.len() >= chunk.limit => chunk.before = Some(e.id.clone()),
            _ => return Ok(Listing { items, next: None }),
        }
    }
}

/// A time given by a person or a form: RFC 3339, a date-time without zone
/// (UTC, as `<input type="datetime-local">` sends it), a date, or ms.
pub fn parse_time(field: &'static str, text: &str) -> Result<i64, QueryError> {
    let text = text.trim();
    let bad = || QueryError::BadTime {
        field,
        given: text.chars().take(60).collect(),
    };
    if let Ok(t) = crate::time::parse_instant(text) {
        return Ok(t.as_millisecond());
    }
    let civil: jiff::civil::DateTime = text.parse().map_err(|_| bad())?;
    civil
        .to_zoned(jiff::tz::TimeZone::UTC)
        .map(|z| z.timestamp().as_millisecond())
        .map_err(|_| bad())
}

impl EventsQuery {
    fn page_query(&self) -> PageQuery {
        PageQuery {
            limit: self.limit,
            before: self.before.clone().filter(|b| !b.is_empty()),
        }
    }
}

/// Replace a value over [`LIST_VALUE_MAX`] bytes of JSON by `{"omitted": …, "bytes": N}`.
fn summarise(v: &mut Value) {
    let bytes = serde_json::to_string(v).map(|s| s.len()).unwrap_or(0);
    if bytes > LIST_VALUE_MAX {
        *v = serde_json::json!({
            "omitted": format!("larger than {LIST_VALUE_MAX} bytes; show the record for all of it"),
            "bytes": bytes,
        });
    }
}

pub fn event(store: &dyn Store, id: &str) -> Result<EventView, QueryError> {
    let event = store.event(id)?.ok_or_else(|| QueryError::NotFound {
        kind: "event",
        id: id.to_string(),
    })?;
    let runs = event
        .runs
        .iter()
        .filter_map(|r| store.run(r).ok().flatten())
        .map(|r| RunSummary {
            id: r.id,
            recipe: r.recipe,
            status: r.status,
            error: r.error,
        })
        .collect();
    Ok(EventView {
        id: event.id,
        connector: event.connector,
        event_type: event.event_type,
        delivery_id: event.delivery_id,
        received_at: event.received_at,
        origin: event.origin,
        body: event.body,
        runs,
    })
}

pub fn runs(store: &dyn Store, q: &RunsQuery) -> Result<Listing<Run>, QueryError> {
    let page = page(q.limit, &q.before.clone().filter(|b| !b.is_empty()));
    let filter = RunFilter {
        status: q
            .status
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(parse_status)
            .transpose()?,
        recipe: q.recipe.clone().filter(|r| !r.is_empty()),
        failures: false,
    };
    let mut runs = store.runs(&page, &filter)?;
    for run in &mut runs {
        for step in run.steps.iter_mut().chain(run.pending.as_mut()) {
            summarise(&mut step.input);
            summarise(&mut step.output);
            if let Some(r) = step.request.as_mut() {
                summarise(r);
            }
        }
    }
    Ok(listing(runs, &page, |r| &r.id))
}

pub fn run(store: &dyn Store, id: &str) -> Result<Run, QueryError> {
    store.run(id)?.ok_or_else(|| QueryError::NotFound {
        kind: "run",
        id: id.to_string(),
    })
}

/// The answer to retrying run `id`, from what the store did.
pub fn retried(id: &str, outcome: Retried) -> Result<RetriedRuns, QueryError> {
    match outcome {
        Retried::Queued(run) => Ok(RetriedRuns {
            retried: vec![run.id],
        }),
        Retried::NotFound => Err(QueryError::NotFound {
            kind: "run",
            id: id.to_string(),
        }),
        Retried::NotFailed(status) => Err(QueryError::NotRetryable {
            id: id.to_string(),
            status,
        }),
    }
}

/// A run status by its name (`failed`).
pub fn parse_status(name: &str) -> Result<RunStatus, QueryError> {
    RunStatus::deserialize(de::value::StrDeserializer::<de::value::Error>::new(name)).map_err(
        |_| QueryError::UnknownStatus {
            name: name.to_string(),
        },
    )
}

/// Every run status name, in declaration order, as serde spells them: adding
/// a status to [`RunStatus`] adds it to error messages and CLI help.
pub fn status_names() -> &'static [&'static str] {
    /// A deserializer that only records the variant names serde offers it.
    struct Names(&'static [&'static str]);
    impl<'de> Deserializer<'de> for &mut Names {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("only enums"))
        }
        fn deserialize_enum<V: Visitor<'de>>(
            self,
            _name: &'static str,
            variants: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            self.0 = variants;
            Err(de::Error::custom("names recorded"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map struct identifier ignored_any
        }
    }
    let mut names = Names(&[]);
    let _ = RunStatus::deserialize(&mut names);
    names.0
}

/// A status as its name (`failed`).
pub fn status_name(status: RunStatus) -> &'static str {
    let names = status_names();
    names
        .iter()
        .copied()
        .find(|n| parse_status(n).is_ok_and(|s| s == status))
        .unwrap_or("unknown")
}

/// A step status as its name (`succeeded`, `failed`, `skipped`).
pub fn step_status_name(status: StepStatus) -> &'static str {
    match status {
        StepStatus::Succeeded => "succeeded",
        StepStatus::Failed => "failed",
        StepStatus::Skipped => "skipped",
    }
}

/// `a, b or c`.
fn list(names: &[&str]) -> String {
    match names.split_last() {
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_follow_the_enum() {
        assert_eq!(
            &status_names()[..6],
            [
                "queued",
                "running",
                "retrying",
                "succeeded",
                "failed",
                "dead"
            ]
        );
        for name in status_names() {
            assert_eq!(status_name(parse_status(name).expect("parses")), *name);
        }
        let e = parse_status("done").expect_err("unknown");
        assert!(
            e.to_string().starts_with(
                "unknown status `done`, expected queued, running, retrying, succeeded, failed"
            ),
            "{e}"
        );
    }

    #[test]
    fn an_event_view_has_the_fields_of_an_event() {
        let event = Event {
            id: "e".into(),
            connector: "c".into(),
            event_type: Some("t".into()),
            delivery_id: None,
            received_at: 1,
            body: serde_json::json!({"a": 1}),
            runs: vec![],
            origin: Default::default(),
            replay: None,
        };
        let view = EventView {
            id: "e".into(),
            connector: "c".into(),
            event_type: Some("t".into()),
            delivery_id: None,
            received_at: 1,
            origin: Default::default(),
            body: serde_json::json!({"a": 1}),
            runs: vec![],
        };
        assert_eq!(
            serde_json::to_value(&event).expect("json"),
            serde_json::to_value(&view).expect("json")
        );
    }
}

/// A connector's poll and how it is doing (`GET /api/polls`,
/// `switchboard polls`). What the files say (interval, event, whether a
/// recipe runs it) is known only to a hub that loaded them; the status is
/// what the poll stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PollView {
    /// `<connector>.<poll>`.
    pub name: String,
    pub connector: String,
    /// The event type its items become (unknown without the files).
    #[serde(default)]
    pub event_type: Option<String>,
    /// Its interval, ms.
    #[serde(default)]
    pub every_ms: Option<i64>,
    /// A loaded recipe triggers on its event, so it runs.
    #[serde(default)]
    pub active: Option<bool>,
    /// When its next slot starts (ms), if it runs.
    #[serde(default)]
    pub next_due: Option<i64>,
    /// Its first run is done.
    pub started: bool,
    /// Where the next poll resumes.
    #[serde(default)]
    pub cursor: Option<Value>,
    #[serde(default)]
    pub last_attempt: Option<i64>,
    #[serde(default)]
    pub last_success: Option<i64>,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub last_error_at: Option<i64>,
    /// Failed attempts since the last success.
    pub failures: u32,
    /// Something that works but deserves a look (the items path selected nothing).
    #[serde(default)]
    pub warning: Option<String>,
    /// Events it made, in all.
    pub events: u64,
    /// Items the last successful poll found, and how many were new.
    pub last_items: u64,
    pub last_new: u64,
}

/// Every poll: those of `catalog` (when a hub has the files) with their
/// stored status, and any other poll with a stored status.
pub fn polls(
    store: &dyn Store,
    catalog: Option<&crate::engine::Catalog>,
    now: i64,
) -> Result<Vec<PollView>, QueryError> {
    use crate::engine::poller::{self, PollState};
    let mut out: std::collections::BTreeMap<String, PollView> = Default::default();
    let view = |name: &str, st: &PollState| {
        let connector = name.split('.').next().unwrap_or("").to_string();
        PollView {
            name: name.to_string(),
            connector,
            event_type: None,
            every_ms: None,
            active: None,
            next_due: None,
            started: st.started,
            cursor: st.cursor.clone(),
            last_attempt: st.last_attempt,
            last_success: st.last_success,
            last_error: st.last_error.clone(),
            last_error_at: st.last_error_at,
            failures: st.failures,
            warning: st.warning.clone(),
            events: st.events,
            last_items: st.last_items,
            last_new: st.last_new,
        }
    };
    let mut after: Option<Vec<u8>> = None;
    loop {
        let entries = store.state_entries(Some(poller::NAMESPACE), after.as_deref(), 500, now)?;
        for e in &entries {
            // `<connector>.<poll>@<slot>` are slot claims, not states.
            if e.key.contains('@') {
                continue;
            }
            if let Ok(st) = serde_json::from_value::<PollState>(e.value.clone()) {
                out.insert(e.key.clone(), view(&e.key, &st));
            }
        }
        match entries.last().and_then(|l| hex::decode(&l.cursor).ok()) {
            Some(cursor) if entries.len() >= 500 => after = Some(cursor),
            _ => break,
        }
    }
    if let Some(catalog) = catalog {
        let active = poller::active(catalog);
        for c in catalog.connectors.by_name.values() {
            for p in c.polls.values() {
                let name = p.full_name();
                let v = out
                    .entry(name.clone())
                    .or_insert_with(|| view(&name, &PollState::default()));
                let runs = active.iter().any(|(_, a)| a.full_name() == name);
                v.event_type = Some(p.event_type.clone());
                v.every_ms = Some(p.every_ms);
                v.active = Some(runs);
                v.next_due = runs.then(|| p.slot_at_or_before(now) + p.every_ms);
            }
        }
    }
    Ok(out.into_values().collect())
}
