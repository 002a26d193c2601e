//! The poller: runs each connector `polls:` entry a recipe triggers on,
//! once per interval, and turns every new item it finds into an event.
//!
//! **Once per interval.** A poll's slots are `k·every + offset` (the offset
//! is the poll's jitter, fixed by its name). Before polling a slot, a node
//! *claims* it with one `set_if_absent` of `<connector>.<poll>@<slot>` in the
//! reserved state namespace [`NAMESPACE`] (`Store::apply_state`, serialised
//! by the store, expiring after two intervals): only the node whose write
//! lands polls that slot, so a restart inside a slot, or a second node on
//! the same store, does not poll it again. A node that dies while polling
//! loses that slot's poll only; the next slot resumes from the stored cursor.
//!
//! **Once per item.** Each new item is accepted like a webhook delivery
//! ([`Engine::accept`]): event type = the poll's `event.type`, delivery id
//! `<poll>/<item id>`, origin [`Origin::Poll`]. The store's dedupe on
//! (connector, delivery id) is the seen-set — an item seen before, in this
//! poll or after a restart, starts nothing — and it is pruned with the
//! events by retention. The cursor (a high-water mark or the answer's
//! position) keeps old items from being asked for again at all.
//!
//! **State** ([`PollState`]): one value `<connector>.<poll>` in
//! [`NAMESPACE`], written through `Store::apply_state` after the events of
//! each page are durable, so a crash repeats at most a page (whose items
//! dedupe). It holds the cursor, whether the first run is done (and what it
//! only remembered as seen), and the status the CLI and the admin API show:
//! last success, last error, consecutive failures, a warning.
//!
//! **Following the catalog.** A supervisor task keeps one task per poll a
//! loaded recipe triggers on ([`active`]); after each reload it starts the
//! polls that became active and stops those that are not (a task finishes
//! the poll it is making first). Each task reads the current catalog once
//! per slot, and a reload wakes it, so a poll whose interval, action or
//! templates changed runs as changed from its next slot (a new interval's
//! slot at or before now, if not polled yet, at once).
//!
//! A poll is a call like any other: the connector's rate and concurrency
//! limits, circuit breaker, timeout and SSRF guard apply. A retryable
//! failure (network, timeout, 429, 5xx, a full limit, an open breaker) is
//! tried again within the slot after the retry policy's backoff (at least
//! `Retry-After`), up to its attempts; then the next slot tries again from
//! the same cursor.

use super::{Engine, Incoming};
use crate::connector::http::{Answer, CallError, Request};
use crate::connector::limits::parse_retry_after;
use crate::connector::poll::{FirstRun, Items, Poll};
use crate::connector::Connector;
use crate::store::state::{StateKey, StateOp, StateOutput};
use crate::store::{Origin, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The state namespace polls keep their cursor, status and slot claims in.
/// Recipes cannot write it (`check` refuses a `namespace:` starting with
/// `switchboard:`); `switchboard state` can read and delete it.
pub const NAMESPACE: &str = "switchboard:poll";
/// Most item ids a first run remembers as seen without making events.
pub const MAX_SEEN: usize = 1_000;

/// What a poll remembers between slots (a state value; see the module doc).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PollState {
    /// Where the next poll resumes (`cursor:`), if it has a position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<Value>,
    /// The first run is done: later items are events.
    #[serde(default)]
    pub started: bool,
    /// Ids the first run found and did not turn into events (`first_run:
    /// now` / `latest`), at most [`MAX_SEEN`]: they never become events.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seen: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error_at: Option<i64>,
    /// Failed attempts since the last success.
    #[serde(default)]
    pub failures: u32,
    /// Something that works but deserves a look (the items path selected
    /// nothing); cleared when it no longer holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// Events this poll made, in all.
    #[serde(default)]
    pub events: u64,
    /// Items of the last successful poll, and how many were new events.
    #[serde(default)]
    pub last_items: u64,
    #[serde(default)]
    pub last_new: u64,
}

/// Why one attempt of a poll failed, and whether to try again in the slot.
#[derive(Debug)]
struct Failure {
    error: String,
    retry: Retry,
}

#[derive(Debug, Clone, Copy)]
enum Retry {
    /// Not within this slot (bad input, a 4xx): the next slot tries again.
    No,
    /// After this long (a full limit, an open breaker).
    After(Duration),
    /// After the retry policy's backoff, at least the `Retry-After` given.
    Backoff(Option<Duration>),
}

impl Failure {
    fn fatal(error: impl Into<String>) -> Failure {
        Failure {
            error: error.into(),
            retry: Retry::No,
        }
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Failure {
        Failure {
            error: e.to_string(),
            retry: Retry::Backoff(None),
        }
    }
}

/// A poll for one slot, its connector, and the catalog they were read from
/// (their templates live in that catalog's registry).
struct Polling {
    poll: Arc<Poll>,
    /// The connector the poll belongs to (base URL, auth, limits).
    source: Arc<Connector>,
    catalog: Arc<super::Catalog>,
}

impl std::ops::Deref for Polling {
    type Target = Poll;
    fn deref(&self) -> &Poll {
        &self.poll
    }
}

/// The polls that run (those a loaded recipe triggers on), each with its connector.
pub fn active(catalog: &super::Catalog) -> Vec<(Arc<Connector>, Arc<Poll>)> {
    let mut out = Vec::new();
    for c in catalog.connectors.by_name.values() {
        for p in c.polls.values() {
            if catalog
                .recipes
                .iter()
                .any(|r| r.connector == c.name && r.event == p.event_type && r.schedule.is_none())
            {
                out.push((c.clone(), p.clone()));
            }
        }
    }
    out.sort_by_key(|(_, p)| p.full_name());
    out
}

/// Start the poller: one task per active poll, following the catalog (a
/// reload starts added polls, stops removed ones, and a changed poll runs
/// as changed from its next slot); all stop when `shutdown` turns true.
pub fn spawn(
    engine: &Arc<Engine>,
    shutdown: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let polls = active(&engine.catalog());
    for name in &engine.config.backfill {
        if !polls.iter().any(|(_, p)| &p.full_name() == name) {
            tracing::warn!(poll = %name, "--backfill names no running poll (CONNECTOR.POLL of a poll a recipe triggers on)");
        }
    }
    let engine = engine.clone();
    vec![tokio::spawn(async move {
        engine.supervise_polls(shutdown).await
    })]
}

/// The active poll named `name` (`<connector>.<poll>`) in `catalog`, with its connector.
fn find(catalog: &super::Catalog, name: &str) -> Option<(Arc<Connector>, Arc<Poll>)> {
    active(catalog)
        .into_iter()
        .find(|(_, p)| p.full_name() == name)
}

/// The stored state of `poll`, if it ever ran.
pub fn state(
    store: &dyn crate::store::Store,
    poll: &str,
    now: i64,
) -> Result<Option<PollState>, StoreError> {
    let key = state_key(poll);
    let entries = store.state_get(&key, now)?;
    Ok(entries
        .into_iter()
        .find(|e| e.kind == crate::store::state::StateKind::Value)
        .and_then(|e| serde_json::from_value(e.value).ok()))
}

fn state_key(poll: &str) -> StateKey {
    StateKey {
        namespace: NAMESPACE.to_string(),
        key: poll.to_string(),
    }
}

impl Engine {
    /// Keep one task per active poll of the current catalog: at start and
    /// after every reload, start the polls that are new and stop those
    /// that are gone (a stopped task finishes the poll it is making).
    async fn supervise_polls(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut running: std::collections::BTreeMap<
            String,
            (watch::Sender<bool>, tokio::task::JoinHandle<()>),
        > = Default::default();
        while !*shutdown.borrow() {
            // Registered before the catalog is read: a reload in between
            // still wakes this loop.
            let reloaded = self.reloaded.notified();
            tokio::pin!(reloaded);
            reloaded.as_mut().enable();
            let wanted: Vec<String> = active(&self.catalog())
                .iter()
                .map(|(_, p)| p.full_name())
                .collect();
            let gone: Vec<String> = running
                .keys()
                .filter(|n| !wanted.contains(n))
                .cloned()
                .collect();
            for name in gone {
                if let Some((stop, task)) = running.remove(&name) {
                    let _ = stop.send(true);
                    let _ = task.await;
                    tracing::info!(poll = %name, "poll stopped: no loaded recipe triggers on it any more");
                }
            }
            for name in wanted {
                if running.contains_key(&name) {
                    continue;
                }
                let (stop, stopped) = watch::channel(false);
                let engine = self.clone();
                let task_name = name.clone();
                let task = tokio::spawn(async move { engine.run_poll(task_name, stopped).await });
                running.insert(name, (stop, task));
            }
            tokio::select! {
                _ = reloaded => {}
                _ = shutdown.changed() => {}
            }
        }
        for (stop, task) in running.into_values() {
            let _ = stop.send(true);
            let _ = task.await;
        }
    }

    /// Poll `name` once per slot until `stop`. Each slot reads the current
    /// catalog (a reload changes the poll's interval, action or templates
    /// from the next slot on); a reload wakes it so a changed interval is
    /// slept by at once.
    async fn run_poll(self: Arc<Self>, name: String, mut stop: watch::Receiver<bool>) {
        let mut handled: Option<i64> = None;
        while !*stop.borrow() {
            let reloaded = self.reloaded.notified();
            tokio::pin!(reloaded);
            reloaded.as_mut().enable();
            let catalog = self.catalog();
            let Some((source, poll)) = find(&catalog, &name) else {
                // Removed by a reload: the supervisor stops this task.
                drop(catalog);
                tokio::select! {
                    _ = reloaded => {}
                    _ = stop.changed() => {}
                }
                continue;
            };
            let poll = Polling {
                poll,
                source,
                catalog,
            };
            let slot = poll.slot_at_or_before(self.now_ms());
            if handled != Some(slot) {
                handled = Some(slot);
                match self.claim(&poll, slot) {
                    Ok(true) => self.poll_slot(&poll, slot, &mut stop).await,
                    Ok(false) => {
                        tracing::debug!(poll = %name, slot, "slot already polled (an earlier run or another node)")
                    }
                    Err(e) => {
                        tracing::error!(poll = %name, slot, error = %e, "cannot claim the poll's slot; skipping it");
                        self.record_failure(&poll, &format!("cannot claim the slot: {e}"));
                    }
                }
            }
            // From the slot handled, not from now: a clock that moved on
            // while this slot was polled must not skip the next one.
            let next = slot + poll.every_ms;
            // The catalog is not held while sleeping.
            drop(poll);
            tokio::select! {
                _ = self.sleep_until(next) => {}
                _ = reloaded => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Take slot `slot` of `poll` for this node: true if no one had it.
    fn claim(&self, poll: &Poll, slot: i64) -> Result<bool, StoreError> {
        let now = self.now_ms();
        let op = StateOp::SetIfAbsent {
            key: state_key(&format!("{}@{slot}", poll.full_name())),
            value: json!(now),
            ttl_ms: Some(poll.every_ms.saturating_mul(2)),
        };
        Ok(matches!(
            self.store.apply_state(&op, now, &mut |_| None)?,
            StateOutput::Set { set: true, .. }
        ))
    }

    /// Poll slot `slot`, trying again within it after retryable failures.
    async fn poll_slot(&self, poll: &Polling, slot: i64, shutdown: &mut watch::Receiver<bool>) {
        let name = poll.full_name();
        let policy = poll.action.retry;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match self.poll_once(poll, slot).await {
                Ok(()) => return,
                Err(f) => {
                    self.record_failure(poll, &f.error);
                    let now = self.now_ms();
                    let retry_in = match f.retry {
                        Retry::No => None,
                        Retry::After(d) => Some(d),
                        Retry::Backoff(ra) => Some(policy.delay(attempt, ra)),
                    };
                    let retry_at = retry_in.map(|d| now + d.as_millis() as i64);
                    match retry_at {
                        Some(at) if attempt < policy.attempts && at < slot + poll.every_ms => {
                            tracing::warn!(poll = %name, attempt, error = %f.error, retry_in_ms = at - now, "poll failed; trying again");
                            tokio::select! {
                                _ = self.sleep_until(at) => {}
                                _ = shutdown.changed() => return,
                            }
                        }
                        _ => {
                            tracing::error!(poll = %name, attempt, error = %f.error, "poll failed; the next slot tries again from the same cursor");
                            return;
                        }
                    }
                }
            }
        }
    }

    fn load_state(&self, poll: &Poll) -> Result<PollState, StoreError> {
        Ok(state(&*self.store, &poll.full_name(), self.now_ms())?.unwrap_or_default())
    }

    fn save_state(&self, poll: &Poll, st: &PollState) -> Result<(), StoreError> {
        let op = StateOp::Set {
            key: state_key(&poll.full_name()),
            value: serde_json::to_value(st).unwrap_or(Value::Null),
            ttl_ms: None,
        };
        self.store.apply_state(&op, self.now_ms(), &mut |_| None)?;
        Ok(())
    }

    fn record_failure(&self, poll: &Poll, error: &str) {
        let now = self.now_ms();
        let result = self.load_state(poll).and_then(|mut st| {
            st.last_attempt = Some(now);
            st.last_error = Some(error.to_string());
            st.last_error_at = Some(now);
            st.failures = st.failures.saturating_add(1);
            self.save_state(poll, &st)
        });
        if let Err(e) = result {
            tracing::error!(poll = %poll.full_name(), error = %e, "cannot record the poll's failure");
        }
    }

    /// One poll: every page up to `pages.max`, each page's new items
    /// accepted as events before the cursor after it is stored.
    async fn poll_once(&self, poll: &Polling, slot: i64) -> Result<(), Failure> {
        let name = poll.full_name();
        let mut st = self.load_state(poll)?;
        let first = !st.started;
        let backfill = first && self.config.backfill.contains(&name);
        if !first && self.config.backfill.contains(&name) {
            tracing::warn!(poll = %name, "--backfill applies to a poll's first run only; this poll has run before (delete its state to start over: switchboard state delete {NAMESPACE} {name})");
        }
        let now = self.now_ms();
        st.last_attempt = Some(now);
        let mut cursor = st.cursor.clone();
        if first && cursor.is_none() {
            cursor = self.initial_cursor(poll, backfill, now)?;
        }
        let mut page: Option<Value> = None;
        // The first run decides over everything it found, at its end.
        let mut found: Vec<(String, Value)> = Vec::new();
        let (mut items_total, mut new_total) = (0u64, 0u64);
        for n in 0..poll.pages.max {
            let input = self.poll_input(poll, cursor.as_ref(), page.as_ref(), now)?;
            let key = format!("poll:{name}@{slot}:{n}");
            let outcome = self
                .client
                .call(Request {
                    templates: &poll.catalog.templates,
                    connector: &poll.source,
                    action: &poll.action,
                    input: &input,
                    idempotency_key: &key,
                    answer: Answer::Whole,
                })
                .await;
            let answer = match outcome.result {
                Ok(a) => a,
                Err(e) => {
                    return Err(call_failure(
                        e,
                        outcome.record.retry_after.as_deref(),
                        poll,
                        n,
                    ))
                }
            };
            let items = match poll.items(&answer) {
                Items::Found(items) => {
                    st.warning = None;
                    items
                }
                Items::Nothing => {
                    let msg = format!(
                        "`items: {}` selects nothing in the answer (an empty list would be fine): check the path",
                        poll.items.as_str()
                    );
                    if st.warning.is_none() {
                        tracing::warn!(poll = %name, "{msg}");
                    }
                    st.warning = Some(msg);
                    Vec::new()
                }
            };
            let mut ids = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                ids.push(poll.item_id(item, i).map_err(Failure::fatal)?);
            }
            items_total += items.len() as u64;
            let next_cursor = poll.next_cursor(cursor.as_ref(), &answer, &items);
            if first {
                found.extend(ids.into_iter().zip(items));
            } else {
                for (id, item) in ids.into_iter().zip(items) {
                    if poll.is_old(&item, st.cursor.as_ref()) || st.seen.contains(&id) {
                        continue;
                    }
                    if self.accept_item(poll, &id, item).await? {
                        new_total += 1;
                    }
                }
                // The page's events are durable: move the cursor past them.
                st.cursor = next_cursor.clone();
                self.save_state(poll, &st)?;
            }
            cursor = next_cursor;
            page = poll.page_token(&answer);
            if poll.last_page(&answer) {
                break;
            }
            if n + 1 == poll.pages.max {
                tracing::info!(poll = %name, pages = poll.pages.max, "more pages than `pages.max`: the next poll goes on from the cursor");
            }
        }
        if first {
            let mode = if backfill {
                FirstRun::All
            } else {
                poll.first_run
            };
            let values: Vec<Value> = found.iter().map(|(_, v)| v.clone()).collect();
            let chosen = poll.first_run_events(&values, mode);
            let mut seen = Vec::new();
            for (i, (id, item)) in found.into_iter().enumerate() {
                if chosen.contains(&i) {
                    if self.accept_item(poll, &id, item).await? {
                        new_total += 1;
                    }
                } else if seen.len() < MAX_SEEN {
                    seen.push(id);
                }
            }
            tracing::info!(poll = %name, found = items_total, events = new_total, backfill, "first poll: {} item(s) remembered as seen", seen.len());
            st.seen = seen;
            st.cursor = cursor;
            st.started = true;
        }
        st.last_success = Some(now);
        st.last_error = None;
        st.failures = 0;
        st.events += new_total;
        st.last_items = items_total;
        st.last_new = new_total;
        self.save_state(poll, &st)?;
        self.sync().await?;
        tracing::info!(poll = %name, items = items_total, new = new_total, "polled");
        Ok(())
    }

    /// The cursor before the first poll: `cursor.initial` (or
    /// `cursor.backfill` when backfilling), rendered now.
    fn initial_cursor(
        &self,
        poll: &Polling,
        backfill: bool,
        now: i64,
    ) -> Result<Option<Value>, Failure> {
        let Some(c) = &poll.cursor else {
            return Ok(None);
        };
        let t = if backfill { &c.backfill } else { &c.initial };
        let Some(t) = t else { return Ok(None) };
        let which = if backfill { "backfill" } else { "initial" };
        let v = poll
            .catalog
            .templates
            .render(t, &json!({"run": {"now": now}}))
            .map_err(|e| Failure::fatal(format!("`cursor.{which}` did not render: {e}")))?;
        match v {
            Value::Null => Ok(None),
            Value::String(s) if s.is_empty() => Err(Failure::fatal(format!(
                "`cursor.{which}` rendered empty: the poll is not sent (it would ask for everything)"
            ))),
            v => Ok(Some(v)),
        }
    }

    /// The action's inputs for one page: `with:` over `{cursor, page, run}`;
    /// an input rendering `null` is left out, one reading the cursor or the
    /// page that renders empty is an error (nothing is sent).
    fn poll_input(
        &self,
        poll: &Polling,
        cursor: Option<&Value>,
        page: Option<&Value>,
        now: i64,
    ) -> Result<Value, Failure> {
        let mut ctx = Map::new();
        if let Some(c) = cursor {
            ctx.insert("cursor".into(), c.clone());
        }
        if let Some(p) = page {
            ctx.insert("page".into(), p.clone());
        }
        ctx.insert("run".into(), json!({"now": now}));
        let ctx = Value::Object(ctx);
        let mut input = Map::new();
        for (k, t) in &poll.with {
            let v = poll.catalog.templates.render_value(t, &ctx).map_err(|e| {
                let hint = if cursor.is_none() {
                    " (the poll has no cursor yet: give it `cursor.initial`, or write `cursor | default(...)`)"
                } else {
                    ""
                };
                Failure::fatal(format!("input `{k}` did not render: {e}{hint}"))
            })?;
            match v {
                Value::Null => {}
                Value::String(s) if s.is_empty() && poll.positional.contains(k) => {
                    return Err(Failure::fatal(format!(
                        "input `{k}` rendered empty from the cursor or page: the poll is not sent (it would ask for everything)"
                    )))
                }
                v => {
                    input.insert(k.clone(), v);
                }
            }
        }
        Ok(Value::Object(input))
    }

    /// Accept one item as an event; true if it was new.
    async fn accept_item(&self, poll: &Polling, id: &str, item: Value) -> Result<bool, Failure> {
        let body = match &poll.body {
            None => item,
            Some(t) => poll
                .catalog
                .templates
                .render_value(t, &json!({ "item": item }))
                .map_err(|e| {
                    Failure::fatal(format!("`event.body` did not render for item `{id}`: {e}"))
                })?,
        };
        let accepted = self
            .accept(Incoming {
                connector: poll.connector.clone(),
                event_type: Some(poll.event_type.clone()),
                delivery_id: Some(format!("{}/{id}", poll.name)),
                body,
                replay: None,
                origin: Origin::Poll,
            })
            .await?;
        if !accepted.duplicate {
            tracing::info!(poll = %poll.full_name(), item = %id, event = %accepted.event_id, runs = accepted.runs.len(), "new item");
        }
        Ok(!accepted.duplicate)
    }
}

/// A failed call as a poll failure: retryable ones (and full limits, an
/// open breaker) are tried again after a delay.
fn call_failure(e: CallError, retry_after: Option<&str>, poll: &Poll, page: u32) -> Failure {
    let retry = match &e {
        CallError::Limited(d) | CallError::CircuitOpen(d) => Retry::After(*d),
        e if e.retryable() => Retry::Backoff(
            retry_after.and_then(|v| parse_retry_after(v, std::time::SystemTime::now())),
        ),
        _ => Retry::No,
    };
    Failure {
        error: format!(
            "page {}: {}.{}: {e}",
            page + 1,
            poll.connector,
            poll.action.name
        ),
        retry,
    }
}
