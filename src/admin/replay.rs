//! Replay over stored events: for each event of a recipe's trigger (a page
//! of them, newest first), what the recipe as it is on disk would have done
//! ([`crate::engine::replay`]), compared with the run that actually ran —
//! new runs, runs that no longer start, steps added, removed, with other
//! inputs, calls that would be made without a recorded answer.
//!
//! Written once over a [`History`] (where stored events and runs come from):
//! the store itself (the admin API, the CLI when no hub holds the store), or
//! a running hub's admin API (the CLI, replaying files of its own checkout
//! against a hub's history). Nothing is written; no call leaves the process.

use super::queries::{self, EventsQuery, Listing, QueryError};
use crate::engine::replay::{replay as replay_event, Replayed};
use crate::engine::Catalog;
use crate::store::{Event, Run, RunStatus, StepRecord, Store};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

/// Where stored events and runs come from.
pub trait History {
    /// A page of events, filtered as `/api/events` filters (bodies may be summarised).
    fn events(&self, q: &EventsQuery) -> Result<Listing<Event>, String>;
    /// One event, whole.
    fn event(&self, id: &str) -> Result<Option<Event>, String>;
    fn run(&self, id: &str) -> Result<Option<Run>, String>;
}

/// The store as a [`History`].
pub struct StoreHistory<'a>(pub &'a dyn Store);

impl History for StoreHistory<'_> {
    fn events(&self, q: &EventsQuery) -> Result<Listing<Event>, String> {
        queries::find_events(self.0, q, &[]).map_err(|e| e.to_string())
    }
    fn event(&self, id: &str) -> Result<Option<Event>, String> {
        self.0.event(id).map_err(|e| e.to_string())
    }
    fn run(&self, id: &str) -> Result<Option<Run>, String> {
        self.0.run(id).map_err(|e| e.to_string())
    }
}

/// What to replay.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReplayQuery {
    /// The recipe, by name, as its file is now.
    pub recipe: String,
    /// Events received this long ago or later (`7d`, `12h`), or since a time
    /// (RFC 3339, `YYYY-MM-DDTHH:MM` in UTC, or ms). Default `7d`.
    pub since: Option<String>,
    /// Only events received before this time (RFC 3339, `YYYY-MM-DDTHH:MM`
    /// in UTC, or ms); default: up to now.
    pub until: Option<String>,
    /// Exactly these events (ids separated by commas; at most 500); no paging.
    pub events: Option<String>,
    /// Events looked at per page (default 50, at most 500).
    pub limit: Option<usize>,
    /// The `next` of the previous page.
    pub before: Option<String>,
}

/// One page of a replay, newest event first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReplayPage {
    pub recipe: String,
    /// The version of the recipe replayed (`Recipe::version` of the file now).
    pub version: String,
    /// Events where the recipe ran or would run; an event where neither is
    /// not listed.
    pub items: Vec<EventReplay>,
    /// Events looked at for this page (a page may list fewer and still
    /// have a `next`).
    pub scanned: usize,
    /// The `before` of the next page; `None` at the end.
    pub next: Option<String>,
}

/// The verdict for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The same steps with the same inputs and the same outcome.
    Unchanged,
    /// Both start a run, but steps, inputs or the outcome differ.
    Changed,
    /// The recipe would start a run where none ran.
    NewRun,
    /// A run ran; the recipe would not start one now.
    NoLongerStarts,
}

/// The replay of one event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventReplay {
    pub event_id: String,
    pub event_type: Option<String>,
    pub received_at: i64,
    pub verdict: Verdict,
    /// The run that ran, if one did.
    pub before: Option<RunOutline>,
    /// The run the recipe would make now, if it starts.
    pub after: Option<RunOutline>,
    /// Step by step, what differs (empty when unchanged).
    pub changes: Vec<StepChange>,
}

/// A run in a replay: its outcome and the steps it ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RunOutline {
    /// The stored run's id (`before` only).
    pub run: Option<String>,
    pub status: RunStatus,
    /// The recipe version it ran (`before`) or would run (`after`).
    pub version: Option<String>,
    pub error: Option<String>,
    pub reason: Option<String>,
    /// Path ids of its steps, in order.
    pub steps: Vec<String>,
}

/// What differs at one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StepChange {
    /// The step instance's path id.
    pub step: String,
    pub change: Change,
    /// `connector.action`, or the step kind.
    pub call: String,
    /// Its input in the run that ran.
    pub before: Option<Value>,
    /// Its input now.
    pub after: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Runs now and did not: a call without a recorded answer, so it was
    /// not made; "would call `call` with `after`" (answered `null`).
    WouldCall,
    /// A step other than a call that runs now and did not.
    Added,
    /// Ran and would not now.
    Removed,
    /// The same step with other inputs (a call's recorded answer was used).
    Inputs,
    /// Another `connector.action` at this step (not made: "would call").
    Call,
}

/// Why a replay has no answer.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("no recipe named `{0}` in the files replayed")]
    NoRecipe(String),
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error("{0}")]
    Bad(String),
    #[error("{0}")]
    Source(String),
}

/// Longest list of `events` one replay takes.
pub const MAX_EVENTS: usize = queries::MAX_PAGE;

/// Replay `q.recipe` of `catalog` over `history`'s events. `now` (ms) is
/// what `since: 7d` counts back from.
pub fn replay(
    history: &dyn History,
    catalog: &Catalog,
    q: &ReplayQuery,
    now: i64,
) -> Result<ReplayPage, ReplayError> {
    let recipe = catalog
        .recipe(&q.recipe)
        .ok_or_else(|| ReplayError::NoRecipe(q.recipe.clone()))?;
    let ids: Vec<String> = q
        .events
        .iter()
        .flat_map(|e| e.split([',', ' ']))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let (events, scanned, next) = if !ids.is_empty() {
        if ids.len() > MAX_EVENTS {
            return Err(ReplayError::Bad(format!(
                "at most {MAX_EVENTS} events at a time ({} given)",
                ids.len()
            )));
        }
        let mut events = Vec::new();
        for id in &ids {
            let e = history
                .event(id)
                .map_err(ReplayError::Source)?
                .ok_or_else(|| QueryError::NotFound {
                    kind: "event",
                    id: id.clone(),
                })?;
            events.push(e);
        }
        (events, ids.len(), None)
    } else {
        let since = since_ms(q.since.as_deref().unwrap_or("7d"), now)?;
        let listing = history
            .events(&EventsQuery {
                limit: q.limit,
                before: q.before.clone(),
                connector: Some(recipe.connector.clone()),
                since: Some(since.to_string()),
                until: q.until.clone().filter(|u| !u.trim().is_empty()),
                ..EventsQuery::default()
            })
            .map_err(ReplayError::Source)?;
        let scanned = listing.items.len();
        let mut events = Vec::new();
        for e in listing.items {
            // Listed bodies may be summarised: the whole event is one read away.
            if let Some(whole) = history.event(&e.id).map_err(ReplayError::Source)? {
                events.push(whole);
            }
        }
        (events, scanned, listing.next)
    };
    let mut items = Vec::new();
    for event in &events {
        let mut original = None;
        for id in &event.runs {
            if let Some(r) = history.run(id).map_err(ReplayError::Source)? {
                if r.recipe == recipe.name {
                    original = Some(r);
                    break;
                }
            }
        }
        let replayed = replay_event(catalog, &recipe.name, event, original.as_ref());
        if let Some(item) = compare(event, original.as_ref(), &replayed, &recipe.version) {
            items.push(item);
        }
    }
    Ok(ReplayPage {
        recipe: recipe.name.clone(),
        version: recipe.version.clone(),
        items,
        scanned,
        next,
    })
}

/// `7d` back from `now`, or a time.
fn since_ms(text: &str, now: i64) -> Result<i64, ReplayError> {
    if let Ok(d) = humantime::parse_duration(text.trim()) {
        return Ok(now - d.as_millis().min(i64::MAX as u128) as i64);
    }
    Ok(queries::parse_time("since", text)?)
}

/// The replay of one event against its original run; `None` when neither
/// ran nor would run.
fn compare(
    event: &Event,
    original: Option<&Run>,
    replayed: &Replayed,
    version: &str,
) -> Option<EventReplay> {
    let before = original.map(|r| RunOutline {
        run: Some(r.id.clone()),
        status: r.status,
        version: r.version.clone(),
        error: r.error.clone(),
        reason: r.reason.clone(),
        steps: r.steps.iter().map(|s| s.id.clone()).collect(),
    });
    let after = replayed
        .status
        .filter(|_| replayed.triggered)
        .map(|status| RunOutline {
            run: None,
            status,
            version: Some(version.to_string()),
            error: replayed.error.clone(),
            reason: replayed.reason.clone(),
            steps: replayed.records.iter().map(|s| s.id.clone()).collect(),
        });
    let empty = Vec::new();
    let old: &[StepRecord] = original.map_or(&empty, |r| &r.steps);
    let mut changes = Vec::new();
    for new in &replayed.records {
        let unanswered = replayed.unanswered.contains(&new.id);
        match old.iter().find(|o| o.id == new.id) {
            None => changes.push(StepChange {
                step: new.id.clone(),
                change: if unanswered {
                    Change::WouldCall
                } else {
                    Change::Added
                },
                call: new.call.clone(),
                before: None,
                after: Some(new.input.clone()),
            }),
            Some(o) if o.call != new.call => changes.push(StepChange {
                step: new.id.clone(),
                change: Change::Call,
                call: new.call.clone(),
                before: Some(serde_json::json!({"call": o.call, "input": o.input})),
                after: Some(serde_json::json!({"call": new.call, "input": new.input})),
            }),
            Some(o) if o.input != new.input => changes.push(StepChange {
                step: new.id.clone(),
                change: Change::Inputs,
                call: new.call.clone(),
                before: Some(o.input.clone()),
                after: Some(new.input.clone()),
            }),
            Some(_) => {}
        }
    }
    for o in old {
        if !replayed.records.iter().any(|n| n.id == o.id) {
            changes.push(StepChange {
                step: o.id.clone(),
                change: Change::Removed,
                call: o.call.clone(),
                before: Some(o.input.clone()),
                after: None,
            });
        }
    }
    let verdict = match (&before, &after) {
        (None, None) => return None,
        (None, Some(_)) => Verdict::NewRun,
        (Some(_), None) => Verdict::NoLongerStarts,
        (Some(b), Some(a)) => {
            if changes.is_empty() && same_outcome(b, a) {
                Verdict::Unchanged
            } else {
                Verdict::Changed
            }
        }
    };
    Some(EventReplay {
        event_id: event.id.clone(),
        event_type: event.event_type.clone(),
        received_at: event.received_at,
        verdict,
        before,
        after,
        changes,
    })
}

/// Outcomes that mean the same: a replay answers a failed call with its
/// failure once (no retries), so `dead` before is `failed` now; a run not
/// finished yet is compared by its steps only.
fn same_outcome(before: &RunOutline, after: &RunOutline) -> bool {
    let norm = |s: RunStatus| {
        if s == RunStatus::Dead {
            RunStatus::Failed
        } else {
            s
        }
    };
    !before.status.is_final() || norm(before.status) == norm(after.status)
}
