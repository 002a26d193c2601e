//! The engine: turns accepted events into runs and runs them.
//!
//! [`Catalog`] is the loaded, checked set of connectors and recipes with the
//! matching index on (connector, event type). [`Engine::accept`] matches an
//! incoming event, stores it with its runs in one atomic write and waits for
//! the write to be durable; workers ([`worker`]) lease runs from the store's
//! queue and execute their steps, checkpointing each step before the next.
//! [`dry_run`] runs a recipe for one event with mocked calls (`switchboard
//! test`); it and the workers prepare steps through the same `step` module.
//! This module knows nothing about axum or HTTP servers.

mod catalog;
pub mod dry_run;
pub mod poller;
pub mod reload;
pub mod replay;
pub mod reply;
pub mod retention;
pub mod scheduler;
mod step;
mod timer;
pub mod tokens;
pub mod worker;

pub use catalog::{files_version, Catalog, LoadOptions};

use crate::connector::http::Client;
use crate::recipe::Recipe;
use crate::store::{self, Event, GroupCommit, Inserted, Run, RunStatus, Store, StoreError};
use crate::time::{Clock, SystemClock};
use serde::Serialize;
use serde_json::Value;
use std::sync::Arc;
use tokio::sync::Notify;

/// Concurrent run executors when not configured. A worker waits for its
/// run's finish to be durable (a group commit) before taking the next, so
/// deliveries per second are bounded by workers / (call + commit) long
/// before the CPU is: with 16, W1 at c64 used half of the 2 CPUs; 64 gave
/// +13-40 % W1 throughput for ~16 MiB more peak RSS (BENCHMARKS.md).
pub const DEFAULT_WORKERS: usize = 64;

/// Tunables of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Concurrent run executors.
    pub workers: usize,
    /// How long a leased run is reserved for its worker before it comes due again.
    pub lease: std::time::Duration,
    /// How often expired recipe state is swept (it is hidden from reads at once).
    pub state_sweep: std::time::Duration,
    /// What "now" is for events, schedules and templates (`run.now`).
    pub clock: Arc<dyn Clock>,
    /// Events (with their finished runs) older than this are deleted in
    /// the background ([`retention`]); `None` keeps everything.
    pub retention: Option<std::time::Duration>,
    /// Polls (`CONNECTOR.POLL`) whose first run takes every item it finds
    /// (`serve --backfill`), whatever their `first_run:`.
    pub backfill: Vec<String>,
    /// How long an event's answer may wait for a worker to take its run
    /// when every worker is busy and the hand-off is full (`serve
    /// --handoff-wait`), before the run goes to the store's queue instead.
    /// Paces a sender to the rate runs are done, so a burst cannot build an
    /// unbounded backlog; zero: never wait.
    pub handoff_wait: std::time::Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            workers: DEFAULT_WORKERS,
            lease: std::time::Duration::from_secs(300),
            state_sweep: std::time::Duration::from_secs(30),
            clock: Arc::new(SystemClock),
            retention: Some(retention::DEFAULT_RETENTION),
            backfill: Vec::new(),
            handoff_wait: DEFAULT_HANDOFF_WAIT,
        }
    }
}

/// [`EngineConfig::handoff_wait`] by default.
pub const DEFAULT_HANDOFF_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// An inbound event, verified and parsed by the ingress.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub connector: String,
    pub event_type: Option<String>,
    pub delivery_id: Option<String>,
    pub body: Value,
    /// Refuses a replay of this delivery (from the signature, or the
    /// connector's `dedupe_window`).
    pub replay: Option<crate::store::ReplayGuard>,
    /// How it reached the hub (a webhook, a schedule slot, a poll).
    pub origin: crate::store::Origin,
}

/// What [`Engine::accept`] did.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Accepted {
    pub event_id: String,
    pub runs: Vec<String>,
    /// True when this delivery id was accepted before; nothing new was stored or started.
    pub duplicate: bool,
    /// The answer a matching recipe's `reply:` gives the sender, rendered
    /// after the event was stored (see [`reply`]).
    #[serde(skip)]
    pub reply: Option<reply::Answer>,
}

pub struct Engine {
    /// The current catalog and the replaced ones runs still need ([`reload`]).
    catalogs: reload::Catalogs,
    store: Arc<dyn Store>,
    commit: GroupCommit,
    client: Client,
    /// Wakes idle workers when new runs are queued or an earlier due time
    /// is stored ([`timer`]).
    wake: Notify,
    /// Wakes the scheduler when a reload installed a catalog.
    reloaded: Notify,
    timer: timer::Timer,
    /// Held while an event takes its ids and is stored. A std Mutex: nothing
    /// async happens while it is held.
    ingest_order: std::sync::Mutex<()>,
    /// Hand-off of new runs straight to workers. Runs sent here are stored
    /// already leased (status `running`, due at the lease's end), so no
    /// worker leases them from the store too; after a crash, start-up
    /// releases them like any other lease.
    handoff: tokio::sync::mpsc::Sender<Handoff>,
    handoff_rx: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Handoff>>,
    config: EngineConfig,
}

/// Runs waiting in memory for a worker; beyond this, new runs go through the store's queue.
const HANDOFF_CAPACITY: usize = 256;

/// A run handed to a worker at ingest, with its event's body as `accept`
/// parsed it: the worker does not read the event back from the store and
/// decode it again. The body is the stored one (it was durable before the
/// run was handed over), so a run resumed later from the store sees the same.
pub(crate) struct Handoff {
    pub run: Run,
    pub body: Value,
}

impl Engine {
    pub fn new(
        catalog: Catalog,
        store: Arc<dyn Store>,
        config: EngineConfig,
    ) -> Result<Arc<Engine>, String> {
        let client = Client::new(&catalog.connectors)?
            .with_token_store(Arc::new(tokens::StoreTokens::new(store.clone())));
        let commit = GroupCommit::start(store.clone());
        let (handoff, handoff_rx) = tokio::sync::mpsc::channel(HANDOFF_CAPACITY);
        Ok(Arc::new(Engine {
            handoff,
            handoff_rx: tokio::sync::Mutex::new(handoff_rx),
            catalogs: reload::Catalogs::new(catalog, config.clock.now_ms()),
            store,
            commit,
            client,
            wake: Notify::new(),
            reloaded: Notify::new(),
            timer: timer::Timer::default(),
            ingest_order: std::sync::Mutex::new(()),
            config,
        }))
    }

    /// The catalog new events are matched against now (a reload may
    /// replace it at any time: read it once per use).
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalogs.current()
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Now, by the engine's clock (ms since the epoch).
    pub fn now_ms(&self) -> i64 {
        self.config.clock.now_ms()
    }

    /// Store the event with a run per matching recipe; returns once it is durable.
    pub async fn accept(&self, incoming: Incoming) -> Result<Accepted, StoreError> {
        let now = self.now_ms();
        // One context for every recipe's conditions and keys: the body is
        // moved in and back out, never copied.
        let mut ctx = Catalog::trigger_context(incoming.body, now);
        let mut runs = Vec::new();
        let mut replier: Option<&Recipe> = None;
        // One catalog for the whole event, whatever a reload does meanwhile.
        let snapshot = self.catalog();
        let catalog = &*snapshot;
        catalog.triggered(
            &incoming.connector,
            incoming.event_type.as_deref(),
            &mut ctx,
            |r, ctx| {
                // The documented winner among matching recipes with a
                // `reply:`: the first by recipe name.
                if r.reply.is_some() && replier.is_none_or(|w: &Recipe| r.name < w.name) {
                    replier = Some(r);
                }
                // `<recipe>\0<rendered key>`, or None (logged) when it does
                // not render or renders empty (a missing field).
                let key = |t, what: &str| match catalog.templates.render_string(t, ctx) {
                    Ok(k) if !k.is_empty() => Some(format!("{}\0{k}", r.name)),
                    Ok(_) => {
                        tracing::warn!(recipe = %r.name, "{what} key rendered empty");
                        None
                    }
                    Err(e) => {
                        tracing::warn!(recipe = %r.name, error = %e, "{what} key did not render");
                        None
                    }
                };
                // Without a key, concurrency serialises on the empty key
                // (safe); debounce runs the event on its own rather than
                // folding it into unrelated events.
                let concurrency = r
                    .concurrency
                    .as_ref()
                    .map(|(t, limit)| store::ConcurrencySlot {
                        key: key(t, "concurrency").unwrap_or_else(|| format!("{}\0", r.name)),
                        limit: *limit,
                        seq: 0,
                    });
                let debounce = r.debounce.as_ref().and_then(|d| {
                    Some(store::DebounceSlot {
                        key: key(&d.key, "debounce")?,
                        quiet_ms: d.quiet_ms,
                        max_ms: d.max_ms,
                        first_at: now,
                        events: 1,
                    })
                });
                // Listed under its `cancel_on` keys while unfinished; a key
                // that needs a step's output is listed when the run parks.
                let listening = r
                    .cancel_on
                    .iter()
                    .filter_map(|c| {
                        let key = catalog.templates.render_string(&c.key, ctx).ok()?;
                        (!key.is_empty()).then(|| store::Correlation {
                            listen: store::Listen::Cancel,
                            connector: c.connector.clone(),
                            event_type: c.event.clone(),
                            key,
                            tag: r.name.clone(),
                        })
                    })
                    .collect();
                // A debounced run starts once its key has been quiet.
                let due_at = debounce.as_ref().map_or(now, |d| now + d.quiet_ms);
                runs.push(Run {
                    // Ids are given when the event is stored, below.
                    id: String::new(),
                    event_id: String::new(),
                    recipe: r.name.clone(),
                    status: RunStatus::Queued,
                    created_at: now,
                    updated_at: now,
                    finished_at: None,
                    steps: Vec::new(),
                    error: None,
                    reason: None,
                    due_at,
                    pending: None,
                    round: 0,
                    concurrency,
                    debounce,
                    parked: None,
                    starts: 0,
                    listening,
                    version: Some(r.version.clone()),
                });
            },
        );
        // New runs without a concurrency key go to a worker directly, leased
        // in the same write that stores them (saves a lease write per run).
        let lease_ms = self.config.lease.as_millis() as i64;
        let mut handoffs = Vec::new();
        // With every worker busy and the hand-off full, the answer waits (at
        // most `handoff_wait`) for a worker: nothing is stored yet, so a
        // crash meanwhile loses nothing acknowledged.
        let wait_until = tokio::time::Instant::now() + self.config.handoff_wait;
        for run in runs
            .iter_mut()
            .filter(|r| r.concurrency.is_none() && r.debounce.is_none())
        {
            let permit = match self.handoff.try_reserve() {
                Ok(permit) => permit,
                Err(_) if self.config.handoff_wait.is_zero() => break,
                Err(_) => match tokio::time::timeout_at(wait_until, self.handoff.reserve()).await {
                    Ok(Ok(permit)) => permit,
                    _ => break,
                },
            };
            run.status = RunStatus::Running;
            run.due_at = now + lease_ms;
            // Stored with the event, durably, before a worker executes it.
            run.starts = 1;
            handoffs.push(permit);
        }
        // Waiting runs this event may wake or cancel: one indexed key per listener.
        let probes = catalog.probes(
            &incoming.connector,
            incoming.event_type.as_deref(),
            &mut ctx,
        );
        let mut event = Event {
            id: String::new(),
            connector: incoming.connector,
            event_type: incoming.event_type,
            delivery_id: incoming.delivery_id,
            received_at: now,
            body: ctx["event"].take(),
            runs: Vec::new(),
            replay: incoming.replay,
            origin: incoming.origin,
        };
        // Ids are taken and the event stored under one lock, so the order of
        // event ids is the order the store gives runs within a concurrency
        // key: an event with a later id never runs ahead of an earlier one.
        // An event with no keyed run and nothing to wake or cancel has no
        // order to keep: it lets go of the lock once its ids are taken, so
        // such events are stored side by side (on PostgreSQL the store
        // call is a round trip, and holding the lock across it made every
        // accept of the node wait for the one before).
        let ordered = !probes.is_empty()
            || runs
                .iter()
                .any(|r| r.concurrency.is_some() || r.debounce.is_some());
        let (inserted, matched) = {
            let order = self.ingest_order.lock().unwrap_or_else(|p| p.into_inner());
            event.id = store::new_id(now);
            for run in &mut runs {
                run.id = store::new_id(now);
                run.event_id = event.id.clone();
            }
            event.runs = runs.iter().map(|r| r.id.clone()).collect();
            if !ordered {
                drop(order);
            }
            self.store
                .insert_event_matching(&event, &runs, &probes, now)?
        };
        let event_id = event.id.clone();
        self.commit.sync().await?;
        let reply_run = replier.and_then(|r| runs.iter().find(|run| run.recipe == r.name));
        let reply_run = reply_run.map(|run| run.id.clone());
        if !matched.woken.is_empty()
            || !matched.cancelled.is_empty()
            || !matched.cancelling.is_empty()
        {
            tracing::info!(event = %event_id, woken = ?matched.woken, cancelled = ?matched.cancelled, cancelling = ?matched.cancelling, "listed runs matched");
        }
        if !matched.woken.is_empty() || !matched.cancelled.is_empty() {
            // Woken runs are due now, and so is the next run of a cancelled
            // run's concurrency key.
            self.wake.notify_waiters();
        }
        let (mut accepted, handed) =
            self.accepted(inserted, event_id, event.runs, runs, handoffs)?;
        if !accepted.duplicate {
            crate::metrics::get().event_stored(&event.connector);
        }
        if let Some((r, reply)) = replier.and_then(|r| r.reply.as_ref().map(|p| (r, p))) {
            let run_id = if accepted.duplicate {
                reply::run_of(self, r, &accepted.runs)
            } else {
                reply_run
            };
            accepted.reply = Some(reply::answer(
                &catalog.templates,
                r,
                reply,
                &event.body,
                &accepted,
                run_id,
                now,
            ));
        }
        // The body goes with the handed-off runs: moved into the last one,
        // copied for the others (one run per event is the common case).
        let mut body = Some(event.body);
        let last = handed.len().saturating_sub(1);
        for (i, (permit, run)) in handed.into_iter().enumerate() {
            let body = if i == last {
                body.take().unwrap_or_default()
            } else {
                body.clone().unwrap_or_default()
            };
            permit.send(Handoff { run, body });
        }
        Ok(accepted)
    }

    /// What `accept` did, once the write is durable, with the new runs to
    /// hand to workers (each with its reserved permit); or the runs of the
    /// first delivery of a duplicate.
    #[allow(clippy::type_complexity)]
    fn accepted<'p>(
        &self,
        inserted: Inserted,
        event_id: String,
        event_runs: Vec<String>,
        runs: Vec<Run>,
        mut handoffs: Vec<tokio::sync::mpsc::Permit<'p, Handoff>>,
    ) -> Result<(Accepted, Vec<(tokio::sync::mpsc::Permit<'p, Handoff>, Run)>), StoreError> {
        let mut event_runs = event_runs;
        match inserted {
            Inserted::New => {
                if runs.iter().any(|r| r.debounce.is_some()) {
                    // A debounced run may have folded into a pending one:
                    // the stored event names the runs it really has.
                    if let Some(stored) = self.store.event(&event_id)? {
                        event_runs = stored.runs;
                    }
                }
                let permits = handoffs.len();
                let mut queued = false;
                let mut handed = Vec::with_capacity(permits);
                for run in runs {
                    if run.status == RunStatus::Running {
                        if let Some(permit) = handoffs.pop() {
                            handed.push((permit, run));
                        }
                    } else {
                        queued = true;
                    }
                }
                debug_assert!(
                    handoffs.is_empty(),
                    "{permits} permits for the handed-off runs"
                );
                if queued {
                    self.wake.notify_waiters();
                }
                let accepted = Accepted {
                    event_id,
                    runs: event_runs,
                    duplicate: false,
                    reply: None,
                };
                Ok((accepted, handed))
            }
            Inserted::Duplicate { event_id } => {
                let runs = self
                    .store
                    .event(&event_id)?
                    .map(|e| e.runs)
                    .unwrap_or_default();
                let accepted = Accepted {
                    event_id,
                    runs,
                    duplicate: true,
                    reply: None,
                };
                Ok((accepted, Vec::new()))
            }
        }
    }

    /// Put a failed or dead run back in the queue; it resumes at its failed step.
    pub fn retry(&self, run_id: &str) -> Result<store::Retried, StoreError> {
        let r = self.store.retry_run(run_id, self.now_ms())?;
        if matches!(r, store::Retried::Queued(_)) {
            self.wake.notify_waiters();
        }
        Ok(r)
    }

    /// Retry every failed or dead run of a recipe.
    pub fn retry_recipe(&self, recipe: &str) -> Result<Vec<String>, StoreError> {
        let ids = store::retry_failed(&*self.store, recipe, self.now_ms())?;
        if !ids.is_empty() {
            self.wake.notify_waiters();
        }
        Ok(ids)
    }

    /// Wait until every store write made so far is durable (shared flush).
    pub async fn sync(&self) -> Result<(), StoreError> {
        self.commit.sync().await
    }

    /// Runs waiting or in flight.
    pub fn queue_depth(&self) -> Result<usize, StoreError> {
        self.store.queue_depth()
    }

    /// The states `/metrics` reports: the queue by kind and every
    /// connector's breaker, read now.
    pub fn metrics_snapshot(&self) -> Result<crate::metrics::Snapshot, StoreError> {
        let counts = self.store.queue_counts()?;
        let breakers = self
            .catalog()
            .connectors
            .by_name
            .iter()
            .map(|(name, c)| (name.clone(), c.limits.breaker.position()))
            .collect();
        Ok(crate::metrics::Snapshot {
            queue_depth: counts.backlog,
            waiting_runs: counts.parked,
            breakers,
        })
    }
}
