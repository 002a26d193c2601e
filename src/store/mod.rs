//! Durable state: events, runs with their step records, and the run queue.
//!
//! [`Store`] is a trait with two backends: the embedded [`sled`](self::sled)
//! store (the default, one node) and [`pg`] (PostgreSQL, several nodes on
//! one database), chosen by [`Backend`]. Backends write; [`GroupCommit`] makes writes
//! durable, sharing one flush among every request waiting at the same time.
//! This module knows nothing about HTTP, recipes or connectors: records are
//! plain serde types.
//!
//! The queue is designed for leases: leasing a run moves its queue entry to
//! the lease's expiry time, so a run whose worker died comes due again by
//! itself.

pub mod compact;
#[cfg(test)]
mod conformance;
pub mod copy;
pub mod index;
mod overlay;
pub mod pg;
pub mod reopen;
pub mod retention;
pub mod sled;
pub mod state;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use state::{StateEntry, StateKey, StateOp, StateOutput};
use std::sync::Arc;
use utoipa::ToSchema;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O error: {0}")]
    Io(String),
    #[error("corrupt record {key}: {detail}")]
    Corrupt { key: String, detail: String },
    /// Another process has the embedded store in this directory open.
    #[error("the store in {0} is in use by another process (a running hub, or `switchboard store compact`)")]
    InUse(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// One accepted inbound delivery.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Event {
    pub id: String,
    pub connector: String,
    /// The event type read by the connector's `webhook.event_type`; none if it could not be read.
    pub event_type: Option<String>,
    /// The sender's delivery id, used to refuse a second delivery of the same event.
    pub delivery_id: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub received_at: i64,
    /// The body as JSON (form fields become an object).
    pub body: Value,
    /// Runs started for this event.
    pub runs: Vec<String>,
    /// Refuses a replay of this delivery (see [`ReplayGuard`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<ReplayGuard>,
    /// How the event reached the hub.
    #[serde(default)]
    pub origin: Origin,
}

/// How an event reached the hub.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Sent to `POST /hooks/{connector}` (events stored before polls existed too).
    #[default]
    Webhook,
    /// A slot of an `on: { schedule }` recipe.
    Schedule,
    /// An item a connector's poll found (`polls:`); its delivery id is
    /// `<poll>/<item id>`.
    Poll,
}

impl Origin {
    /// The serde name, as the API and the CLI spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Webhook => "webhook",
            Origin::Schedule => "schedule",
            Origin::Poll => "poll",
        }
    }
}

/// What makes a second copy of a signed delivery a replay: a hash of what
/// the sender signed (signed timestamp and body; the id too where it is
/// signed), or of the body alone for a connector's `dedupe_window`. A
/// delivery whose key was stored (`p/<connector>\0<key>`) less than
/// `window_ms` before (or ever, without a window) is a duplicate of that
/// event and starts nothing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ReplayGuard {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<i64>,
}

impl ReplayGuard {
    /// Is an event received at `received_at` a replay of the one with the
    /// same key received at `seen_at`? (Every backend asks this.)
    pub(crate) fn replays(&self, received_at: i64, seen_at: i64) -> bool {
        self.window_ms
            .is_none_or(|w| received_at.saturating_sub(seen_at) < w)
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Waiting for a worker.
    Queued,
    /// Leased by a worker.
    Running,
    /// A step failed and waits for its next attempt (`due_at`).
    Retrying,
    Succeeded,
    /// A step failed in a way retrying cannot fix (a 4xx, a template error).
    Failed,
    /// Dead letter: a step failed on every attempt. `runs retry` resumes it.
    Dead,
    /// Parked until `due_at` or an awaited event (a `wait` step): in the
    /// queue at its due time, not leased, holding no worker.
    Waiting,
    /// Ended by a cancelling event (`reason` says which).
    Cancelled,
    /// Ended early by a `stop` step with `status: skipped` (`reason` says why).
    Skipped,
}

impl RunStatus {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunStatus::Succeeded
                | RunStatus::Failed
                | RunStatus::Dead
                | RunStatus::Cancelled
                | RunStatus::Skipped
        )
    }

    /// Failed or dead: a person may retry it.
    pub fn is_failure(self) -> bool {
        matches!(self, RunStatus::Failed | RunStatus::Dead)
    }
}

/// One recipe executing for one event.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Run {
    pub id: String,
    pub event_id: String,
    pub recipe: String,
    pub status: RunStatus,
    pub created_at: i64,
    pub updated_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<i64>,
    /// Step records, in the order the steps ran; each `id` is the step
    /// instance's path id (`notify`, `each[2].notify`, `route.case1.tag`).
    /// A resumed run replays them by path id and runs what has none.
    pub steps: Vec<StepRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why a run ended early although nothing failed: a `stop` step's
    /// reason, or the event that cancelled it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the queue entry of this run is due (ms). While leased: the lease's expiry.
    pub due_at: i64,
    /// The step being retried, with its attempts so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<StepRecord>,
    /// Incremented by each manual retry; attempts are counted per round.
    #[serde(default)]
    pub round: u32,
    /// The recipe's concurrency key, if it has one: runs of one key run in
    /// arrival order, at most `limit` at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<ConcurrencySlot>,
    /// The recipe's debounce key, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debounce: Option<DebounceSlot>,
    /// Set while a wait step parks the run, and when it wakes until the step completes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parked: Option<Parked>,
    /// Executions begun since the run's last checkpoint (the poison-run
    /// guard): leasing adds one, durably, before the run executes; a
    /// checkpoint sets it to 1 (this execution goes on), a clean
    /// suspension (retry, wait) to 0. Above [`MAX_STARTS`] the last
    /// executions all ended with the process: the run fails instead of
    /// crashing the hub again.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub starts: u32,
    /// The recipe's `cancel_on` keys, rendered on its event when the run was
    /// created: the run is listed under them (`c/`) until it finishes, so a
    /// cancelling event finds it also while it is queued, running or
    /// retrying (then it ends at its next step boundary, see `x/`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listening: Vec<Correlation>,
    /// The version of its recipe the run started with (`Recipe::version`):
    /// after a reload it goes on with that version's steps, never a mix.
    /// `None`: a run stored before versions existed (it runs the loaded one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// Executions a run may begin without reaching a checkpoint: a third
/// start means the process stopped twice while it ran.
pub const MAX_STARTS: u32 = 2;

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A debounced run: while it has not started, a later event of the same
/// key becomes its event and pushes its start out by `quiet_ms`, up to
/// `first_at + max_ms` (`b/<key>` points at it; leasing removes that).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct DebounceSlot {
    /// `<recipe>\0<rendered key>`.
    pub key: String,
    pub quiet_ms: i64,
    pub max_ms: i64,
    /// When the burst's first event arrived.
    pub first_at: i64,
    /// Events folded into this run so far, this one included.
    #[serde(default)]
    pub events: u32,
}

/// A run parked by a wait step (status `waiting`): its queue entry is at
/// `until`, and it is listed under its correlation keys (`w/`, `c/`) so an
/// incoming event finds it by a prefix scan, never by scanning waiting runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Parked {
    /// Path id of the waiting step.
    pub step: String,
    /// When the wait ends by itself (its time, or a `wait_for` timeout), ms.
    pub until: i64,
    /// When it began.
    pub since: i64,
    /// Where it is listed; all removed when it wakes, times out or is cancelled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<Correlation>,
    /// The event that woke it (a `wait_for` match), set by the store in the
    /// batch that stored that event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub woken_by: Option<String>,
}

/// What a matching event does to a listed run.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Listen {
    /// Resume it (`wait_for`).
    Wake,
    /// End it as `cancelled` (`cancel_on`).
    Cancel,
}

/// A correlation key: a waiting run listed under (connector, event type,
/// rendered key), or — as a probe — what an incoming event looks up.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Correlation {
    pub listen: Listen,
    pub connector: String,
    pub event_type: String,
    pub key: String,
    /// The listener: `<recipe>\0<step path>` for a `wait_for`, `<recipe>`
    /// for `cancel_on`; a probe finds only entries of its own listener.
    pub tag: String,
}

/// Runs an incoming event woke or cancelled, in the batch that stored it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Matched {
    pub woken: Vec<String>,
    /// Ended as `cancelled` in that batch (waiting, queued or retrying).
    pub cancelled: Vec<String>,
    /// Running: asked to stop, ending `cancelled` at its next step boundary.
    pub cancelling: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ConcurrencySlot {
    /// `<recipe>\0<rendered key>`.
    pub key: String,
    pub limit: u32,
    /// Arrival order within the key, assigned by the store.
    #[serde(default)]
    pub seq: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Succeeded,
    Failed,
    Skipped,
}

impl StepStatus {
    /// The serde name (`succeeded`), as the API and the logs spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
            StepStatus::Skipped => "skipped",
        }
    }
}

/// What one step did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct StepRecord {
    /// The step instance's path id: the step id, prefixed by its enclosing
    /// steps (`each_agent[2].notify`, `route.case0.tag`).
    pub id: String,
    /// `connector.action` for a call; the kind key (`set`, `for_each`, …) otherwise.
    pub call: String,
    pub status: StepStatus,
    /// Rendered `with:` inputs, secrets redacted. A `for_each` records the
    /// list it iterates here, a `stop` its reason and status.
    pub input: Value,
    /// The request sent and the answer's status, redacted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    #[serde(default)]
    pub output: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub started_at: i64,
    pub duration_ms: u64,
    pub attempts: u32,
    /// Every attempt of this step, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Attempt>,
}

impl StepRecord {
    /// A record of step instance `id` (`call`: its `connector.action` or
    /// kind) begun at `started_at`: no input, request, answer or attempt
    /// yet; callers set what their step has.
    pub fn new(id: &str, call: String, status: StepStatus, started_at: i64) -> StepRecord {
        StepRecord {
            id: id.to_string(),
            call,
            status,
            input: serde_json::Value::Null,
            request: None,
            http_status: None,
            output: serde_json::Value::Null,
            error: None,
            started_at,
            duration_ms: 0,
            attempts: 0,
            history: Vec::new(),
        }
    }
}

/// One call of a step's action.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Attempt {
    pub at: i64,
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The manual-retry round it belongs to.
    #[serde(default)]
    pub round: u32,
}

/// A run without its step records: what the admin summaries count
/// (per-minute activity, runs by status, a recipe's last run).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct RunHead {
    pub id: String,
    pub recipe: String,
    pub status: RunStatus,
    pub created_at: i64,
    #[serde(default)]
    pub finished_at: Option<i64>,
}

impl From<&Run> for RunHead {
    fn from(r: &Run) -> RunHead {
        RunHead {
            id: r.id.clone(),
            recipe: r.recipe.clone(),
            status: r.status,
            created_at: r.created_at,
            finished_at: r.finished_at,
        }
    }
}

/// A page request: newest first, items strictly older than `before`.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub limit: usize,
    pub before: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub status: Option<RunStatus>,
    pub recipe: Option<String>,
    /// Only failed or dead runs.
    pub failures: bool,
}

impl RunFilter {
    pub fn matches(&self, run: &Run) -> bool {
        self.status.is_none_or(|s| s == run.status)
            && (!self.failures || run.status.is_failure())
            && self.recipe.as_deref().is_none_or(|r| r == run.recipe)
    }
}

impl Run {
    /// What [`Store::retry_run`] does to a failed or dead run, on every
    /// backend: its failed step becomes `pending` again (keeping its
    /// attempt history), and the run is queued due at `now` in a new round.
    pub fn requeue_for_retry(&mut self, now: i64) {
        if self
            .steps
            .last()
            .is_some_and(|s| s.status == StepStatus::Failed)
        {
            self.pending = self.steps.pop();
        }
        self.round += 1;
        self.starts = 0;
        self.status = RunStatus::Queued;
        self.error = None;
        self.finished_at = None;
        self.updated_at = now;
        self.due_at = now;
    }

    /// What [`Store::lease`] does to a due run, on every backend: it runs
    /// (one start more) if `turn` (its concurrency key lets it), else it only
    /// moves to the lease's end — a run ahead of it finishing makes it due
    /// again, and the lease time is the safety net.
    pub(crate) fn lease_until(&mut self, now: i64, lease_ms: i64, turn: bool) {
        if turn {
            self.status = RunStatus::Running;
            self.starts += 1;
        }
        self.due_at = now + lease_ms;
        self.updated_at = now;
    }

    /// Is this the debounced run of its key that has not started (the one a
    /// newer event of the key folds into)?
    pub(crate) fn debounce_pending(&self) -> bool {
        self.status == RunStatus::Queued && self.debounce.is_some()
    }

    /// A pending debounced run takes a newer event of its key (`d`: that
    /// event's slot), on every backend: due after the quiet time, at most
    /// `max_ms` after the burst began.
    pub(crate) fn absorb(&mut self, event_id: &str, d: &DebounceSlot) {
        let first = self.debounce.as_ref().map_or(d.first_at, |x| x.first_at);
        self.due_at = (d.first_at + d.quiet_ms).min(first + d.max_ms);
        self.event_id = event_id.to_string();
        self.updated_at = d.first_at;
        if let Some(pd) = &mut self.debounce {
            pd.events += 1;
        }
    }

    /// What event `event_id`, matching `probe`, does to this run listed
    /// under it, on every backend (the run is changed as the answer says;
    /// the caller writes it and its keys): a waiting run wakes or ends, a
    /// queued or retrying one ends, a running one is asked to stop.
    pub(crate) fn hear(&mut self, probe: &Correlation, event_id: &str, now: i64) -> Heard {
        let reason = || {
            format!(
                "cancelled by event {event_id} ({} {})",
                probe.connector, probe.event_type
            )
        };
        match (self.status, probe.listen) {
            (RunStatus::Waiting, _) => {}
            (RunStatus::Queued | RunStatus::Retrying, Listen::Cancel) => {
                self.cancel(reason(), now);
                return Heard::Cancelled { keys: Vec::new() };
            }
            (RunStatus::Running, Listen::Cancel) => return Heard::Cancelling(reason()),
            _ => return Heard::Stale,
        }
        let Some(mut parked) = self.parked.take() else {
            return Heard::Stale;
        };
        let keys = std::mem::take(&mut parked.keys);
        self.updated_at = now;
        match probe.listen {
            Listen::Wake => {
                parked.woken_by = Some(event_id.to_string());
                self.parked = Some(parked);
                self.status = RunStatus::Queued;
                self.due_at = now;
                Heard::Woken { keys }
            }
            Listen::Cancel => {
                self.cancel(reason(), now);
                Heard::Cancelled { keys }
            }
        }
    }

    fn cancel(&mut self, reason: String, now: i64) {
        self.status = RunStatus::Cancelled;
        self.finished_at = Some(now);
        self.updated_at = now;
        self.reason = Some(reason);
    }
}

/// What [`Run::hear`] made of a run, for its backend to write.
#[derive(Debug, PartialEq)]
pub(crate) enum Heard {
    /// It was waiting: queued, due now. Unlist `keys` (its park keys), list
    /// its lifetime cancel keys again.
    Woken { keys: Vec<Correlation> },
    /// It ends now (it was waiting, queued or retrying): off the queue, its
    /// debounce key, cancel keys and `keys` (park keys) unlisted, its
    /// concurrency slot freed.
    Cancelled { keys: Vec<Correlation> },
    /// It is executing: its worker ends it at the next step boundary, for
    /// this reason.
    Cancelling(String),
    /// Finished, or a wake key of a run not waiting: drop the listing.
    Stale,
}

/// Result of [`Store::retry_run`].
#[derive(Debug, Clone, PartialEq)]
pub enum Retried {
    Queued(Box<Run>),
    NotFound,
    /// Only failed or dead runs can be retried.
    NotFailed(RunStatus),
}

/// Result of [`Store::sweep_state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub removed: usize,
    /// This sweep reached the end: the next one starts from the beginning.
    pub cycle_done: bool,
}

/// What the store holds: `switchboard store stats`, `GET /api/store/stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StoreStats {
    /// From the counters kept in the records' own batches (no scan).
    pub counts: Counts,
    /// Live and expired-but-not-yet-swept state entries (values, counters,
    /// rotations). Counted by a scan of the state keys.
    pub state_entries: u64,
    /// The store's files on disk.
    pub bytes_on_disk: u64,
    /// The same counts by a full scan of the records, when asked for
    /// (`--scan`): they must equal `counts`. The scan holds the store lock
    /// (writes that change a status wait), so it is one snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scanned: Option<Counts>,
    /// What a full scan found wrong with the index keys (empty: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// Every key prefix of the embedded store with its keys and bytes,
    /// when asked for (`--keys`, a full scan): what the live data weighs
    /// against `bytes_on_disk`. Refused on PostgreSQL ([`NO_KEY_USAGE`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<KeyUsage>,
}

/// Why `store stats --keys` has nothing to show on a store without keys.
pub const NO_KEY_USAGE: &str = "`--keys` counts the keys of the embedded store; this store is PostgreSQL, whose tables' bytes are the stats' bytes on disk";

/// The keys under one prefix (`e/`, `r/`, `is/`, `#/` …: up to the first `/`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct KeyUsage {
    pub prefix: String,
    pub keys: u64,
    /// The keys' bytes and their values' bytes.
    pub key_bytes: u64,
    pub value_bytes: u64,
}

/// Counts of records.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Counts {
    pub events: u64,
    /// Runs by status name; every status is listed.
    pub runs: std::collections::BTreeMap<String, u64>,
    /// Runs queued, running or retrying (waiting runs are not backlog).
    pub queue_depth: u64,
}

impl Counts {
    pub fn runs_total(&self) -> u64 {
        self.runs.values().sum()
    }

    pub fn status(&self, s: RunStatus) -> u64 {
        self.runs.get(index::status_name(s)).copied().unwrap_or(0)
    }
}

/// Result of storing an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    New,
    /// The same (connector, delivery id) was stored before, as this event.
    Duplicate {
        event_id: String,
    },
}

/// What the run queue holds, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounts {
    /// Runs due or leased: [`Store::queue_depth`].
    pub backlog: usize,
    /// Runs parked by a wait step (`waiting`).
    pub parked: usize,
}

/// The durable state. Writes are not durable until [`Store::flush`] returns.
pub trait Store: Send + Sync + 'static {
    /// Store an event and its new runs (queued, due now) atomically, unless
    /// an event with the same (connector, delivery id) exists.
    ///
    /// A run with a [`DebounceSlot`] whose key already has a run that has
    /// not started is not stored: that pending run takes this event instead
    /// (due `quiet_ms` from now, at most `first_at + max_ms`), and the stored
    /// event lists the pending run's id in place of the new one.
    fn insert_event(&self, event: &Event, runs: &[Run]) -> Result<Inserted> {
        self.insert_event_matching(event, runs, &[], 0)
            .map(|(i, _)| i)
    }
    /// [`Store::insert_event`], and in the same atomic batch: every waiting
    /// run listed under one of `probes` (same listen kind, connector, event
    /// type, key and tag) is woken (queued now, `parked.woken_by` = this
    /// event) or cancelled (`cancelled`, its `reason` naming this event), and
    /// its correlation keys removed. A duplicate delivery matches nothing.
    fn insert_event_matching(
        &self,
        event: &Event,
        runs: &[Run],
        probes: &[Correlation],
        now: i64,
    ) -> Result<(Inserted, Matched)>;
    /// Park a leased run (status `waiting`, `run.parked` set, `due_at` =
    /// `parked.until`): move its queue entry from `previous_due` and list it
    /// under its correlation keys, in one batch.
    fn park(&self, run: &Run, previous_due: i64) -> Result<()>;
    /// Make every write so far durable.
    fn flush(&self) -> Result<()>;
    /// Due times (engine clock, ms) of runs that **other processes** sharing
    /// this store queued, for waking idle workers (`i64::MIN`: look at the
    /// queue, something may have been missed). `None`: nobody else writes
    /// this store (sled: one process), so the engine's own wake-ups are all.
    fn watch_queue(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<i64>> {
        None
    }
    /// The first half of a flush, for the pipelined group commit: make every
    /// write so far part of what the next [`Store::sync`] makes durable (sled:
    /// apply the overlay to the tree as one batch). Nothing to do by default.
    fn prepare_sync(&self) -> Result<()> {
        Ok(())
    }
    /// The second half: make every write prepared so far durable. By default
    /// a whole [`Store::flush`].
    fn sync(&self) -> Result<()> {
        self.flush()
    }
    /// Does a write survive this process being killed once the call that
    /// made it returned? sled: no, not before a sync (the overlay and
    /// sled's log buffer are in this process). PostgreSQL: yes, the
    /// database holds every commit; only the database's own crash can lose
    /// commits not yet flushed, and it loses a suffix of its log, never a
    /// commit without the ones after it.
    fn outlives_process(&self) -> bool {
        false
    }
    /// Can the store take writes? An error says why not (`/readyz`).
    fn healthy(&self) -> Result<()> {
        Ok(())
    }
    fn event(&self, id: &str) -> Result<Option<Event>>;
    fn events(&self, page: &Page) -> Result<Vec<Event>>;
    fn run(&self, id: &str) -> Result<Option<Run>>;
    fn runs(&self, page: &Page, filter: &RunFilter) -> Result<Vec<Run>>;
    /// When the events received at or after `since` (ms) came, newest
    /// first, at most `max`: per-minute counts without reading a body.
    fn event_times(&self, since: i64, max: usize) -> Result<Vec<i64>> {
        let mut out = Vec::new();
        let mut page = Page {
            limit: 500,
            before: None,
        };
        loop {
            let events = self.events(&page)?;
            for e in &events {
                if e.received_at < since || out.len() >= max {
                    return Ok(out);
                }
                out.push(e.received_at);
            }
            match events.last() {
                Some(e) if events.len() >= page.limit => page.before = Some(e.id.clone()),
                _ => return Ok(out),
            }
        }
    }
    /// The runs created at or after `since` (ms), newest first, at most
    /// `max`, without their step records.
    fn run_heads(&self, since: i64, max: usize) -> Result<Vec<RunHead>> {
        let mut out = Vec::new();
        let mut page = Page {
            limit: 500,
            before: None,
        };
        loop {
            let runs = self.runs(&page, &RunFilter::default())?;
            for r in &runs {
                if r.created_at < since || out.len() >= max {
                    return Ok(out);
                }
                out.push(RunHead::from(r));
            }
            match runs.last() {
                Some(r) if runs.len() >= page.limit => page.before = Some(r.id.clone()),
                _ => return Ok(out),
            }
        }
    }
    /// The event a connector's delivery id was stored as.
    fn event_by_delivery(&self, connector: &str, delivery_id: &str) -> Result<Option<Event>> {
        let mut page = Page {
            limit: 500,
            before: None,
        };
        loop {
            let events = self.events(&page)?;
            if let Some(e) = events
                .iter()
                .find(|e| e.connector == connector && e.delivery_id.as_deref() == Some(delivery_id))
            {
                return Ok(Some(e.clone()));
            }
            match events.last() {
                Some(e) if events.len() >= page.limit => page.before = Some(e.id.clone()),
                _ => return Ok(None),
            }
        }
    }
    /// Lease up to `max` runs due at `now`: each becomes `Running`, due again at `now + lease_ms`.
    fn lease(&self, now: i64, lease_ms: i64, max: usize) -> Result<Vec<Run>>;
    /// Checkpoint a leased run (its steps so far); its queue entry is unchanged.
    fn save_run(&self, run: &Run) -> Result<()>;
    /// Write a finished run and remove it from the queue.
    fn finish_run(&self, run: &Run) -> Result<()>;
    /// Write a leased run and move its queue entry from `previous_due` to `run.due_at`.
    fn reschedule(&self, run: &Run, previous_due: i64) -> Result<()>;
    /// Put a failed or dead run back in the queue, due at `now`: its failed
    /// step becomes `pending` (keeping its attempt history) and runs again;
    /// completed steps are kept and never repeated.
    fn retry_run(&self, id: &str, now: i64) -> Result<Retried>;
    /// Make every leased run due now (at start-up of a single node, every lease is stale).
    fn release_leases(&self, now: i64) -> Result<usize>;
    /// Why this run was cancelled while it ran (a `cancel_on` event arrived
    /// after it was leased), if it was: the worker asks at each step boundary.
    fn cancel_requested(&self, run_id: &str) -> Result<Option<String>>;
    /// Number of runs waiting or leased.
    fn queue_depth(&self) -> Result<usize>;
    /// The queue by kind: due or leased (the depth), and parked in a wait.
    fn queue_counts(&self) -> Result<QueueCounts> {
        Ok(QueueCounts {
            backlog: self.queue_depth()?,
            parked: 0,
        })
    }
    /// Counts and size (see [`StoreStats`]); with `scan`, recounted from
    /// the records too and the index checked.
    fn stats(&self, scan: bool) -> Result<StoreStats>;
    /// Keys and bytes by key prefix, by a full scan (`store stats --keys`);
    /// `None` from a store without keys (PostgreSQL: its tables' sizes
    /// are `bytes_on_disk`).
    fn key_usage(&self) -> Result<Option<Vec<KeyUsage>>> {
        Ok(None)
    }
    /// Retention: look at up to `max` events older than `cutoff` (ms), from
    /// where the previous call stopped, and delete those whose runs are all
    /// finished and not dead, with their runs, index keys and dedupe and
    /// replay keys, in one batch (see [`retention`]).
    fn expire(&self, cutoff: i64, max: usize) -> Result<retention::Expired>;
    /// When the earliest queue entry is due, if any.
    fn next_due(&self) -> Result<Option<i64>>;

    /// The last schedule slot (ms) handled for `recipe`, if any.
    fn schedule_cursor(&self, recipe: &str) -> Result<Option<i64>>;
    /// Record that `recipe`'s schedule handled `slot` (the event's dedupe,
    /// not this, is what makes a slot fire once).
    fn set_schedule_cursor(&self, recipe: &str, slot: i64) -> Result<()>;

    /// Apply a recipe state operation at `now` (see [`state`]). `checkpoint`
    /// gets the outcome and returns the run to write with it — the run with
    /// the step's record — and the state change and that run are written in
    /// **one atomic batch**: after a crash a resumed run either finds the
    /// step's record (and does not apply it again) or finds neither.
    /// State operations are serialised, so concurrent increments are never lost.
    fn apply_state(
        &self,
        op: &StateOp,
        now: i64,
        checkpoint: &mut dyn FnMut(&StateOutput) -> Option<Run>,
    ) -> Result<StateOutput>;
    /// Live state entries in key order (kind, namespace, key), after the
    /// raw cursor `after` ([`StateEntry::cursor`], hex-decoded).
    fn state_entries(
        &self,
        namespace: Option<&str>,
        after: Option<&[u8]>,
        limit: usize,
        now: i64,
    ) -> Result<Vec<StateEntry>>;
    /// The live entries of one key (a value, a counter and a rotation may share it).
    fn state_get(&self, key: &StateKey, now: i64) -> Result<Vec<StateEntry>>;
    /// Remove expired values and counters, looking at most at `max` entries
    /// from where the previous sweep stopped.
    fn sweep_state(&self, now: i64, max: usize) -> Result<Swept>;
}

/// Where the store lives: `serve --store` / `SWITCHBOARD_STORE`, either a
/// `postgres://` URL or a directory for sled (default: `<data>/store`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    Sled(std::path::PathBuf),
    Postgres(String),
}

impl Backend {
    /// `spec` as given (`None`: sled in `<data_dir>/store`).
    pub fn parse(spec: Option<&str>, data_dir: &std::path::Path) -> Backend {
        match spec.map(str::trim).filter(|s| !s.is_empty()) {
            None => Backend::Sled(data_dir.join("store")),
            Some(s) if pg::is_url(s) => Backend::Postgres(s.to_string()),
            Some(s) => Backend::Sled(std::path::PathBuf::from(s)),
        }
    }

    /// Where it is, for messages: the directory, or the URL without its password.
    pub fn describe(&self) -> String {
        match self {
            Backend::Sled(dir) => dir.display().to_string(),
            Backend::Postgres(url) => pg::redact_url(url),
        }
    }
}

/// Retry every failed or dead run of `recipe`; returns the ids queued again.
pub fn retry_failed(store: &dyn Store, recipe: &str, now: i64) -> Result<Vec<String>> {
    let filter = RunFilter {
        status: None,
        recipe: Some(recipe.to_string()),
        failures: true,
    };
    // Collect first: retried runs stop matching the filter while we page.
    let mut found = Vec::new();
    let mut page = Page {
        limit: 500,
        before: None,
    };
    loop {
        let runs = store.runs(&page, &filter)?;
        let Some(last) = runs.last() else { break };
        page.before = Some(last.id.clone());
        found.extend(runs.into_iter().map(|r| r.id));
    }
    let mut ids = Vec::new();
    for id in found {
        if let Retried::Queued(run) = store.retry_run(&id, now)? {
            ids.push(run.id);
        }
    }
    Ok(ids)
}

/// How long the group commit lets a group fill while writers are arriving
/// faster than one every `GATHER` (see [`Arrivals`]).
const GATHER: std::time::Duration = std::time::Duration::from_micros(250);

/// Group commit: callers that wrote something wait for one shared flush.
///
/// Every waiter queued so far shares one apply and one flush (two threads,
/// see [`GroupCommit::start`]), so N concurrent webhooks cost one fsync, not N.
#[derive(Clone)]
pub struct GroupCommit {
    tx: std::sync::mpsc::Sender<(Waiter, std::time::Instant)>,
}

type Waiter = tokio::sync::oneshot::Sender<std::result::Result<(), String>>;

/// The mean time between writers asking for a commit (a moving average
/// over about the last 8), from the times they asked. The window opens
/// only when it is shorter than [`GATHER`]: then another writer is expected
/// within the window. At 1,000 events/s a webhook and the previous event's
/// finish often share a group, but the next writer is ~0.5 ms away, so a
/// window would only delay the group (BENCHMARKS.md, "Where the tail at
/// 1,000/s comes from").
struct Arrivals {
    last: Option<std::time::Instant>,
    /// Nanoseconds.
    mean_gap: f64,
}

impl Arrivals {
    /// A gap longer than this counts as this: an idle second does not take
    /// hundreds of arrivals to forget.
    const MAX_GAP: std::time::Duration = std::time::Duration::from_millis(2);

    fn new() -> Arrivals {
        Arrivals {
            last: None,
            mean_gap: Self::MAX_GAP.as_nanos() as f64,
        }
    }

    fn arrived(&mut self, at: std::time::Instant) {
        if let Some(last) = self.last {
            let gap = at.saturating_duration_since(last).min(Self::MAX_GAP);
            self.mean_gap += (gap.as_nanos() as f64 - self.mean_gap) / 8.0;
        }
        // Senders race to the channel: keep the latest time seen.
        self.last = Some(self.last.map_or(at, |l| l.max(at)));
    }

    fn busy(&self) -> bool {
        self.mean_gap < GATHER.as_nanos() as f64
    }
}

impl GroupCommit {
    /// Two threads, a pipeline: the *applier* takes every writer waiting and
    /// prepares their writes as one group ([`Store::prepare_sync`]: sled
    /// applies the overlay as one batch), then hands the group to the
    /// *syncer*, which makes every group handed to it so far durable with one
    /// [`Store::sync`] and answers their writers. While one sync waits for
    /// the disk, the next group is being applied, so a commit costs the
    /// longer of the two, not their sum. A writer is answered only by a sync
    /// that started after its group was prepared.
    pub fn start(store: Arc<dyn Store>) -> GroupCommit {
        let (tx, rx) = std::sync::mpsc::channel::<(Waiter, std::time::Instant)>();
        let (prepared_tx, prepared_rx) =
            std::sync::mpsc::channel::<(Vec<Waiter>, std::time::Instant)>();
        let syncer = store.clone();
        std::thread::Builder::new()
            .name("group-commit".into())
            .spawn(move || {
                let mut arrivals = Arrivals::new();
                while let Some(first) = next_or_idle(&rx) {
                    let mut waiters = Vec::new();
                    for (w, at) in std::iter::once(first).chain(rx.try_iter()) {
                        arrivals.arrived(at);
                        waiters.push(w);
                    }
                    if arrivals.busy() {
                        // Writers are arriving faster than one a window: give
                        // the group a moment to fill (as PostgreSQL's
                        // `commit_delay` does when other transactions are
                        // active), so sled writes its log once per group,
                        // not per writer. Light load never waits.
                        let until = std::time::Instant::now() + GATHER;
                        while let Some(left) =
                            until.checked_duration_since(std::time::Instant::now())
                        {
                            match rx.recv_timeout(left) {
                                Ok((w, at)) => {
                                    arrivals.arrived(at);
                                    waiters.push(w);
                                }
                                Err(_) => break,
                            }
                        }
                    }
                    crate::crash::point("group.apply");
                    let started = std::time::Instant::now();
                    match store.prepare_sync() {
                        Ok(()) => {
                            if prepared_tx.send((waiters, started)).is_err() {
                                return;
                            }
                        }
                        Err(e) => answer(waiters, Err(e.to_string())),
                    }
                }
            })
            .expect("spawning the group-commit thread");
        std::thread::Builder::new()
            .name("group-sync".into())
            .spawn(move || {
                while let Some((mut waiters, started)) = next_or_idle(&prepared_rx) {
                    for (more, _) in prepared_rx.try_iter() {
                        waiters.extend(more);
                    }
                    let r = syncer.sync().map_err(|e| e.to_string());
                    crate::metrics::get().commit(waiters.len(), started.elapsed());
                    crate::crash::point("group.answer");
                    answer(waiters, r);
                }
            })
            .expect("spawning the group-sync thread");
        GroupCommit { tx }
    }

    /// Have every write made before this call made durable by a flush
    /// soon, without waiting for it (for a write nobody is told about).
    pub fn request(&self) {
        let (tx, _) = tokio::sync::oneshot::channel();
        let _ = self.tx.send((tx, std::time::Instant::now()));
    }

    /// Wait until every write made before this call is durable.
    pub async fn sync(&self) -> Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send((tx, std::time::Instant::now()))
            .map_err(|_| StoreError::Io("group commit stopped".into()))?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Io(e)),
            Err(_) => Err(StoreError::Io("group commit stopped".into())),
        }
    }
}

/// The next message, or `None` once every sender is gone; if none is
/// waiting, the thread is about to block for want of work, and says so
/// ([`set_thread_idle_hook`]) first.
fn next_or_idle<T>(rx: &std::sync::mpsc::Receiver<T>) -> Option<T> {
    match rx.try_recv() {
        Ok(m) => Some(m),
        Err(std::sync::mpsc::TryRecvError::Disconnected) => None,
        Err(std::sync::mpsc::TryRecvError::Empty) => {
            thread_idle();
            // Once more after a quiet second: the hook may skip a call that
            // comes soon after its last one, and this may be the last.
            match rx.recv_timeout(std::time::Duration::from_secs(1)) {
                Ok(m) => Some(m),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => None,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    thread_idle();
                    rx.recv().ok()
                }
            }
        }
    }
}

static THREAD_IDLE_HOOK: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// What the group-commit threads call before they block for want of work,
/// and again once they have had none for a second. `serve` sets it to hand
/// the thread's cached freed memory back to the allocator (the binary's
/// `alloc.rs`); the library knows no allocator. Set once per process; later
/// calls change nothing.
pub fn set_thread_idle_hook(hook: fn()) {
    let _ = THREAD_IDLE_HOOK.set(hook);
}

fn thread_idle() {
    if let Some(hook) = THREAD_IDLE_HOOK.get() {
        hook();
    }
}

/// Free the tree nodes the calling thread replaced or paged out, for a
/// thread that has run out of work (the binary's idle hook calls it).
///
/// sled hands a node it replaces or pages out to crossbeam-epoch, into a
/// bag of the thread that did it (64 per bag). A bag joins the collector's
/// queue only once it is full or its thread flushes it, and only a later
/// collection frees it, after the epoch has advanced twice. The group
/// commit flushes its own bag after every group (`overlay`'s
/// `collect_garbage`); a runtime worker that paged nodes in and out for
/// its reads keeps up to a bag of them for as long as it stays idle: 3.5–7
/// MiB of a hub that had just parked 100,000 runs (BENCHMARKS.md, "100,000
/// waiting runs"). Three rounds: the flush, and the two epochs the bag must
/// age; an epoch does not advance while another thread is pinned in an
/// older one, so a busy hub may free the bag later, at its next collection.
pub fn release_thread_garbage() {
    release_garbage(crossbeam_epoch::pin);
}

/// [`release_thread_garbage`] over the participant `pin` pins.
fn release_garbage(pin: impl Fn() -> crossbeam_epoch::Guard) {
    for _ in 0..3 {
        pin().flush();
    }
}

fn answer(waiters: Vec<Waiter>, r: std::result::Result<(), String>) {
    for w in waiters {
        let _ = w.send(r.clone());
    }
}

/// Time-ordered unique ids (ULID layout: 48-bit ms time + 80 random bits,
/// Crockford base32), so keys sort by creation time. Monotonic within the
/// process: an id made in the same millisecond as the previous one (or with a
/// clock that stepped back) is the previous one plus one, so "newest first"
/// holds for events received in the same millisecond too.
pub fn new_id(now_ms: i64) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    // A std Mutex: nothing async happens while it is held.
    static LAST: std::sync::Mutex<u128> = std::sync::Mutex::new(0);
    let rand: u128 = rand::random::<u128>() & ((1u128 << 80) - 1);
    let mut v: u128 = ((now_ms.max(0) as u128) << 80) | rand;
    {
        let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
        if (v >> 80) <= (*last >> 80) {
            v = *last + 1;
        }
        *last = v;
    }
    (0..26)
        .map(|i| ALPHABET[((v >> (125 - i * 5)) & 31) as usize] as char)
        .collect()
}

/// The creation time (ms) an id made by [`new_id`] carries; `None` for
/// anything else.
pub fn id_time(id: &str) -> Option<i64> {
    if id.len() != 26 {
        return None;
    }
    let mut v: u128 = 0;
    for c in id.bytes() {
        let d = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ"
            .iter()
            .position(|&a| a == c)?;
        v = v.checked_mul(32)? | d as u128;
    }
    i64::try_from(v >> 80).ok()
}

/// The smallest id [`new_id`] can make at `ms`: every id made at or after
/// `ms` sorts at or after it, every earlier one before it.
pub fn id_floor(ms: i64) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let v: u128 = (ms.max(0) as u128) << 80;
    (0..26)
        .map(|i| ALPHABET[((v >> (125 - i * 5)) & 31) as usize] as char)
        .collect()
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod step_status_tests {
    use super::StepStatus;

    #[test]
    fn step_status_names_are_the_serde_names() {
        for s in [
            StepStatus::Succeeded,
            StepStatus::Failed,
            StepStatus::Skipped,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Garbage a thread deferred stays in its own bag, whatever others
    /// collect, until that thread releases it (on a collector of its own,
    /// so no other test's pins hold the epoch back).
    #[test]
    fn a_threads_deferred_garbage_is_freed_only_when_it_releases_it() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let collector = crossbeam_epoch::Collector::new();
        let (idle, other) = (collector.register(), collector.register());
        let freed = Arc::new(AtomicBool::new(false));
        let f = freed.clone();
        idle.pin().defer(move || f.store(true, Ordering::SeqCst));
        for _ in 0..1000 {
            other.pin().flush();
        }
        assert!(!freed.load(Ordering::SeqCst), "freed from another bag");
        release_garbage(|| idle.pin());
        assert!(freed.load(Ordering::SeqCst), "still deferred");
    }

    #[test]
    fn ids_carry_their_time_and_floors_sort_before_them() {
        for ms in [0, 1, 1_700_000_000_123, 4_102_444_800_000] {
            let id = new_id(ms);
            let t = id_time(&id).expect("an id");
            assert!(t >= ms, "{id}: {t} < {ms}");
            assert!(id_floor(ms) <= id && id_floor(t + 1) > id, "{id}");
            assert_eq!(id_time(&id_floor(ms)), Some(ms));
        }
        assert_eq!(id_time("not an id"), None);
        assert_eq!(id_time("ILOU0000000000000000000000"), None);
    }

    #[test]
    fn ids_sort_by_time_and_are_unique() {
        let a = new_id(1_700_000_000_000);
        let b = new_id(1_700_000_000_001);
        assert_eq!(a.len(), 26);
        assert!(a < b);
        assert_ne!(new_id(5), new_id(5));
    }

    #[test]
    fn ids_of_the_same_millisecond_keep_their_order() {
        let now = now_ms();
        let ids: Vec<String> = (0..1000).map(|_| new_id(now)).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn the_commit_window_opens_only_for_writers_closer_than_the_window() {
        use std::time::{Duration, Instant};
        let at = |a: &mut Arrivals, t0: Instant, gaps_us: &[u64]| {
            let mut t = t0;
            for g in gaps_us {
                t += Duration::from_micros(*g);
                a.arrived(t);
            }
            t
        };
        let t0 = Instant::now();
        let mut a = Arrivals::new();
        assert!(!a.busy(), "a lone writer never waits");
        // 1,000 events/s: a webhook and a finish together, then 1 ms apart.
        let t = at(&mut a, t0, &[50, 950].repeat(50));
        assert!(!a.busy(), "mean gap {} ns", a.mean_gap);
        // Saturation: a writer every 150 µs.
        let t = at(&mut a, t, &[150; 30]);
        assert!(a.busy(), "mean gap {} ns", a.mean_gap);
        // An idle minute is forgotten within a few dozen close writers.
        let t = at(&mut a, t, &[60_000_000]);
        assert!(!a.busy());
        at(&mut a, t, &[150; 30]);
        assert!(a.busy(), "mean gap {} ns", a.mean_gap);
    }
}
