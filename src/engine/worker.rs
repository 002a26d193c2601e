//! Workers: lease runs from the store's queue and execute their steps.
//!
//! The steps are walked by the executor ([`super::step`]); this module is
//! its host in production: it makes the HTTP calls, with retries, and keeps
//! the records in the run, durable before each call and with the run's end,
//! so a run resumes after a restart by replaying what is recorded.
//! Workers hold no state of their own: everything lives in the store.

use super::step::{self, Call, Host, Next, Outcome, Walker};
use super::Engine;
use crate::connector::http::{redact_value, Answer, CallError, Request};
use crate::connector::limits::parse_retry_after;
use crate::store::state::{StateOp, StateOutput};
use crate::store::{self, Attempt, Run, RunStatus, StepRecord, StepStatus};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

/// Entries one state sweep looks at before yielding; a tick sweeps at most
/// [`SWEEP_CHUNKS`] of them, so a sweep never holds the state lock for long.
const SWEEP_CHUNK: usize = 1_000;
const SWEEP_CHUNKS: usize = 20;

/// Start `config.workers` workers and the state sweeper; they stop when
/// `shutdown` turns true.
pub fn spawn(
    engine: &Arc<Engine>,
    shutdown: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks: Vec<_> = (0..engine.config.workers.max(1))
        .map(|_| {
            let engine = engine.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move { engine.work(shutdown).await })
        })
        .collect();
    if let Some(mut queued) = engine.store.watch_queue() {
        // Runs other nodes queued: wake the idle workers as for our own.
        let (engine, mut shutdown) = (engine.clone(), shutdown.clone());
        tasks.push(tokio::spawn(async move {
            while !*shutdown.borrow() {
                tokio::select! {
                    due = queued.recv() => match due {
                        Some(due) => engine.queued_at(due),
                        None => return,
                    },
                    _ = shutdown.changed() => {}
                }
            }
        }));
    }
    let engine = engine.clone();
    tasks.push(tokio::spawn(
        async move { engine.sweep_state(shutdown).await },
    ));
    tasks
}

impl Engine {
    /// Remove expired recipe state in bounded chunks (reads already hide it).
    async fn sweep_state(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        while !*shutdown.borrow() {
            tokio::select! {
                _ = tokio::time::sleep(self.config.state_sweep) => {}
                _ = shutdown.changed() => return,
            }
            for _ in 0..SWEEP_CHUNKS {
                let (store, now) = (self.store.clone(), self.now_ms());
                let swept =
                    tokio::task::spawn_blocking(move || store.sweep_state(now, SWEEP_CHUNK)).await;
                match swept {
                    Ok(Ok(s)) => {
                        if s.removed > 0 {
                            tracing::debug!(removed = s.removed, "expired state swept");
                        }
                        if s.cycle_done {
                            break;
                        }
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "sweeping expired state failed");
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
    }

    async fn work(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let lease_ms = self.config.lease.as_millis() as i64;
        while !*shutdown.borrow() {
            // Register for a wake-up before looking, so a run queued between
            // the look and the wait is not missed.
            let notified = self.wake.notified();
            // Runs handed over at ingest first, then the store's queue;
            // but a run already due in the store (a wait's or retry's time
            // came) goes first, so a steady stream of new events cannot
            // starve timers. One look at the queue per turn: it is also what
            // an idle worker sleeps until (see `timer`), and when nothing is
            // due the lease is skipped — a run queued after this look wakes
            // the worker (`notified`, registered before it).
            let until = self.idle_until();
            let due_in_store = until <= self.now_ms();
            let handed = if due_in_store {
                None
            } else {
                self.handoff_rx
                    .try_lock()
                    .ok()
                    .and_then(|mut rx| rx.try_recv().ok())
            };
            let from_store = handed.is_none();
            // A handed-over run comes with its event's body; a leased one
            // reads it from the store.
            let mut runs: Vec<(Run, Option<Value>)> = match handed {
                Some(h) => vec![(h.run, Some(h.body))],
                None if !due_in_store => Vec::new(),
                None => self
                    .store
                    .lease(self.now_ms(), lease_ms, 1)
                    .unwrap_or_else(|e| {
                        tracing::error!(error = %e, "leasing runs failed");
                        Vec::new()
                    })
                    .into_iter()
                    .map(|run| (run, None))
                    .collect(),
            };
            // Runs leased from the store (not handed over) must have their
            // counted start made durable before executing.
            let leased = from_store && !runs.is_empty();
            if runs.is_empty() {
                // Sleep until the earliest due run (see `timer`), woken
                // early by a new run or an earlier due time.
                let handed = async { self.handoff_rx.lock().await.recv().await };
                tokio::select! {
                    h = handed => runs.extend(h.map(|h| (h.run, Some(h.body)))),
                    _ = notified => {}
                    _ = self.sleep_until(until) => {}
                    _ = shutdown.changed() => {}
                }
            }
            if leased {
                // The lease counted a start (poison-run guard): make it
                // durable before the run can crash the process.
                if let Err(e) = self.commit.sync().await {
                    tracing::error!(error = %e, "could not record a lease; the runs come due again");
                    continue;
                }
            }
            for (run, body) in runs {
                let id = run.id.clone();
                if let Err(e) = self.execute(run, body, &shutdown).await {
                    // The run stays leased; it comes due again when the lease expires.
                    tracing::error!(run = %id, error = %e, "could not record run progress");
                }
            }
        }
    }

    /// Execute a leased run: walk its steps, replaying the recorded ones by
    /// path id and running the rest (see [`step`]). `body`: its event's
    /// body when the run was handed over at ingest (else read from the store).
    pub(crate) async fn execute(
        &self,
        mut run: Run,
        body: Option<Value>,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<(), store::StoreError> {
        // The catalog with the version of the recipe the run started with
        // (see `reload`): a run never mixes two versions' steps.
        let catalog = match self.catalogs.for_run(&mut run) {
            Ok(c) => c,
            Err(gone) => {
                tracing::error!(run = %run.id, recipe = %run.recipe, "{}", gone.message);
                return self
                    .finish(&mut run, RunStatus::Failed, Some(gone.message))
                    .await;
            }
        };
        let Some(recipe) = catalog.recipe(&run.recipe) else {
            let msg = format!("recipe `{}` is not loaded", run.recipe);
            return self.finish(&mut run, RunStatus::Failed, Some(msg)).await;
        };
        if run.starts > store::MAX_STARTS {
            let msg = format!(
                "the process stopped {} times while this run was executing, without it reaching a checkpoint; \
                 not resumed again (poison-run guard). `switchboard runs retry {}` runs it once more",
                run.starts - 1,
                run.id
            );
            tracing::error!(run = %run.id, recipe = %run.recipe, "{msg}");
            return self.finish(&mut run, RunStatus::Failed, Some(msg)).await;
        }
        let body = match body {
            Some(body) => body,
            None => match self.store.event(&run.event_id)? {
                Some(event) => event.body,
                None => {
                    let msg = format!("event {} not found", run.event_id);
                    return self.finish(&mut run, RunStatus::Failed, Some(msg)).await;
                }
            },
        };
        let ctx = step::context(recipe, &run.id, &run.event_id, body, self.now_ms());
        let mut host = WorkerHost {
            engine: self,
            catalog: &catalog,
            pending: run.pending.take(),
            saved: run.steps.len(),
            run: &mut run,
            shutdown,
            store_error: None,
        };
        let outcome = Walker::new(&catalog, recipe, &mut host, ctx).run().await;
        if outcome == Outcome::Suspended && host.store_error.is_none() {
            // Shutting down between steps: what ran is recorded before the exit.
            if let Err(e) = host.checkpoint().await {
                host.store_error = Some(e);
            }
        }
        if let Some(e) = host.store_error.take() {
            // The run stays leased; it comes due again when the lease expires.
            return Err(e);
        }
        match outcome {
            Outcome::Finished => self.finish(&mut run, RunStatus::Succeeded, None).await,
            Outcome::Stopped { status, reason } => {
                run.reason = Some(reason);
                self.finish(&mut run, status, None).await
            }
            Outcome::Failed { status, error } => self.finish(&mut run, status, Some(error)).await,
            // Rescheduled by the host, or shutting down: the run stays leased
            // and resumes by replay.
            Outcome::Suspended => Ok(()),
        }
    }

    async fn finish(
        &self,
        run: &mut Run,
        status: RunStatus,
        error: Option<String>,
    ) -> Result<(), store::StoreError> {
        let now = self.now_ms();
        run.status = status;
        run.error = error;
        run.updated_at = now;
        run.finished_at = Some(now);
        self.store.finish_run(run)?;
        // Counted once readers can see the final record (the admin API
        // shows it from here on), under the status's serde name.
        if let Ok(Value::String(name)) = serde_json::to_value(status) {
            crate::metrics::get().run_finished(&run.recipe, &name);
        }
        if self.store.outlives_process() {
            // Nothing waits on a finish: no call of this run comes after it,
            // and every write this worker makes next lies after it in the
            // database's log, so no later write is durable without it. A
            // killed node loses nothing committed; a crash of the database
            // before the flush asked for here loses the finish, and the run
            // replays (its call again, with the same `Idempotency-Key`), as
            // for a crash during the call. So the worker takes its next run
            // at once instead of after a flush.
            self.commit.request();
        } else {
            self.commit.sync().await?;
        }
        if run.concurrency.is_some() {
            // The next run of its key is due now.
            self.queued_at(now);
        }
        Ok(())
    }

    /// Run one attempt of a call. `prior` is the record of earlier
    /// attempts when the step is being retried.
    async fn run_call(
        &self,
        catalog: &super::Catalog,
        call: &Call<'_>,
        run: &Run,
        prior: Option<StepRecord>,
    ) -> (StepRecord, Attempted) {
        let started_at = store::now_ms();
        let clock = Instant::now();
        let (connector, action) = (&*call.step.connector, &*call.step.action);
        let mut record = prior.unwrap_or_else(|| {
            StepRecord::new(
                call.path,
                call.step.name(),
                StepStatus::Succeeded,
                started_at,
            )
        });
        let templates = &catalog.templates;
        record.input = redact_value(connector, call.input.clone());
        let key = format!("{}:{}", run.id, call.path);
        let outcome = self
            .client
            .call(Request {
                templates,
                connector,
                action,
                input: &call.input,
                idempotency_key: &key,
                answer: Answer::Output,
            })
            .await;
        let elapsed = clock.elapsed().as_millis() as u64;
        let error = match &outcome.result {
            // Not sent: wait for the breaker without spending an attempt.
            Err(CallError::CircuitOpen(wait)) => {
                crate::metrics::get().breaker_refusal(&connector.name);
                record.error = Some(CallError::CircuitOpen(*wait).to_string());
                return (record, Attempted::RetryIn(*wait));
            }
            // Not sent: back to the queue until a slot is likely free,
            // without holding this worker or spending an attempt.
            Err(CallError::Limited(wait)) => return (record, Attempted::WaitSlot(*wait)),
            Err(e) => Some(describe(e, &outcome.record)),
            Ok(_) => None,
        };
        record.history.push(Attempt {
            at: started_at,
            duration_ms: elapsed,
            http_status: outcome.record.status,
            error: error.clone(),
            round: run.round,
        });
        record.attempts = record.history.len() as u32;
        record.started_at = started_at;
        record.duration_ms = elapsed;
        record.http_status = outcome.record.status;
        record.request = serde_json::to_value(&outcome.record).ok();
        let metrics = crate::metrics::get();
        metrics.call(
            &connector.name,
            &action.name,
            outcome.record.status,
            Duration::from_millis(elapsed),
        );
        match outcome.result {
            Ok(out) => {
                record.status = StepStatus::Succeeded;
                record.output = out;
                record.error = None;
                (record, Attempted::Done)
            }
            Err(e) => {
                let policy = action.retry;
                let this_round = record
                    .history
                    .iter()
                    .filter(|a| a.round == run.round)
                    .count() as u32;
                record.status = StepStatus::Failed;
                record.error = error;
                if !e.retryable() {
                    (record, Attempted::End(RunStatus::Failed))
                } else if this_round >= policy.attempts {
                    (record, Attempted::End(RunStatus::Dead))
                } else {
                    metrics.retry(&connector.name, &action.name);
                    let retry_after = outcome
                        .record
                        .retry_after
                        .as_deref()
                        .and_then(|v| parse_retry_after(v, SystemTime::now()));
                    (
                        record,
                        Attempted::RetryIn(policy.delay(this_round, retry_after)),
                    )
                }
            }
        }
    }
}

/// The worker's side of the executor: calls over HTTP, records in the run,
/// made durable before each call and with the run's end.
struct WorkerHost<'a> {
    engine: &'a Engine,
    /// The catalog of the run's recipe version (its templates render the steps).
    catalog: &'a super::Catalog,
    run: &'a mut Run,
    shutdown: &'a watch::Receiver<bool>,
    /// The record of the call being retried (its attempts so far).
    pending: Option<StepRecord>,
    /// Records already durable (`run.steps[..saved]`).
    saved: usize,
    /// A store write failed: the walk was suspended, the run stays leased.
    store_error: Option<store::StoreError>,
}

impl WorkerHost<'_> {
    /// A state operation, written in one batch with the run (its records so
    /// far and this step's), then made durable before the walk goes on.
    async fn state_inner<F>(&mut self, op: StateOp, record: F) -> Option<(StateOutput, StepRecord)>
    where
        F: FnOnce(&StateOutput) -> StepRecord + Send,
    {
        let now = self.engine.now_ms();
        let mut record = Some(record);
        let mut made: Option<StepRecord> = None;
        let run: &Run = self.run;
        let written = self.engine.store.apply_state(&op, now, &mut |out| {
            let r = (record.take()?)(out);
            let mut checkpoint = run.clone();
            checkpoint.starts = 1;
            checkpoint.steps.push(r.clone());
            checkpoint.updated_at = now;
            made = Some(r);
            Some(checkpoint)
        });
        let written = match written {
            Ok(out) => self.engine.commit.sync().await.map(|()| out),
            Err(e) => Err(e),
        };
        match (written, made) {
            (Ok(out), Some(r)) => {
                tracing::info!(run = %self.run.id, recipe = %self.run.recipe, step = %r.id, status = r.status.as_str(), "step finished");
                // The walker pushes the record next; it is durable already.
                self.saved = self.run.steps.len() + 1;
                Some((out, r))
            }
            (Err(e), _) => {
                self.store_error = Some(e);
                None
            }
            (Ok(_), None) => None,
        }
    }

    /// Make every record so far durable (before a call, so the call's
    /// preceding decisions survive a crash during it).
    async fn checkpoint(&mut self) -> Result<(), store::StoreError> {
        if self.run.steps.len() > self.saved {
            self.run.updated_at = store::now_ms();
            self.run.starts = 1;
            self.engine.store.save_run(self.run)?;
            self.engine.commit.sync().await?;
            self.saved = self.run.steps.len();
        }
        Ok(())
    }

    /// Store the run `waiting` until `parked.until`, listed under its keys,
    /// with its records so far: one batch.
    async fn park_inner(&mut self, parked: store::Parked) {
        let previous_due = self.run.due_at;
        let now = self.engine.now_ms();
        tracing::info!(run = %self.run.id, recipe = %self.run.recipe, step = %parked.step, until = parked.until, "run waiting");
        crate::metrics::get().run_parked(&self.run.recipe);
        self.run.status = RunStatus::Waiting;
        self.run.due_at = parked.until;
        self.run.updated_at = now;
        self.run.parked = Some(parked);
        self.run.starts = 0;
        let written = self.engine.store.park(self.run, previous_due);
        if self.synced(written).await {
            self.engine.queued_at(self.run.due_at);
        }
    }

    async fn call_inner(&mut self, call: Call<'_>) -> (StepRecord, Next) {
        if let Err(e) = self.checkpoint().await {
            self.store_error = Some(e);
            return (empty_record(&call), Next::Suspend);
        }
        let prior = self.pending.take().filter(|p| p.id == call.path);
        let (record, attempted) = self
            .engine
            .run_call(self.catalog, &call, self.run, prior)
            .await;
        crate::crash::point("step.called");
        if !matches!(attempted, Attempted::WaitSlot(_)) {
            tracing::info!(run = %self.run.id, recipe = %self.run.recipe, step = %call.path, status = record.status.as_str(), http_status = record.http_status, duration_ms = record.duration_ms, attempts = record.attempts, "step finished");
        }
        match attempted {
            Attempted::Done => (record, Next::Continue),
            Attempted::WaitSlot(delay) => {
                // Earlier attempts of a step being retried are kept.
                let pending = Some(record.clone()).filter(|r| r.attempts > 0);
                let now = store::now_ms();
                self.requeue(RunStatus::Queued, now, delay, pending).await;
                (record, Next::Suspend)
            }
            Attempted::End(status) => (record, Next::End(status)),
            Attempted::RetryIn(delay) => {
                let now = self.engine.now_ms();
                let pending = Some(record.clone());
                if self.requeue(RunStatus::Retrying, now, delay, pending).await {
                    self.engine.queued_at(self.run.due_at);
                }
                (record, Next::Suspend)
            }
        }
    }

    /// Store the run `status` again, due `delay` after `now`, with the
    /// step to take up again (`pending`) and its records so far: one write.
    /// `false`: the store failed (kept in `store_error`).
    async fn requeue(
        &mut self,
        status: RunStatus,
        now: i64,
        delay: Duration,
        pending: Option<StepRecord>,
    ) -> bool {
        let previous_due = self.run.due_at;
        self.run.pending = pending;
        self.run.status = status;
        self.run.updated_at = now;
        self.run.due_at = now + delay.as_millis() as i64;
        self.run.starts = 0;
        let written = self.engine.store.reschedule(self.run, previous_due);
        self.synced(written).await
    }

    /// After a write of the run, wait for its group commit: then its
    /// records so far are durable. `false`: the store failed (kept in
    /// `store_error`).
    async fn synced(&mut self, written: Result<(), store::StoreError>) -> bool {
        let synced = match written {
            Ok(()) => self.engine.commit.sync().await,
            Err(e) => Err(e),
        };
        if let Err(e) = synced {
            self.store_error = Some(e);
            return false;
        }
        self.saved = self.run.steps.len();
        true
    }
}

impl Host for WorkerHost<'_> {
    fn records(&self) -> &[StepRecord] {
        &self.run.steps
    }

    fn records_mut(&mut self) -> &mut Vec<StepRecord> {
        &mut self.run.steps
    }

    fn interrupted(&self) -> bool {
        *self.shutdown.borrow()
    }

    fn cancel_requested(&mut self) -> Option<String> {
        match self.engine.store.cancel_requested(&self.run.id) {
            Ok(reason) => reason,
            Err(e) => {
                // Not known now: the next step boundary asks again.
                tracing::warn!(run = %self.run.id, error = %e, "cannot read a cancel request");
                None
            }
        }
    }

    fn call(
        &mut self,
        call: Call<'_>,
    ) -> impl std::future::Future<Output = (StepRecord, Next)> + Send {
        self.call_inner(call)
    }

    fn state<F>(
        &mut self,
        op: StateOp,
        record: F,
    ) -> impl std::future::Future<Output = Option<(StateOutput, StepRecord)>> + Send
    where
        F: FnOnce(&StateOutput) -> StepRecord + Send,
    {
        self.state_inner(op, record)
    }

    fn parked(&self) -> Option<&store::Parked> {
        self.run.parked.as_ref()
    }

    fn park(&mut self, parked: store::Parked) -> impl std::future::Future<Output = ()> + Send {
        self.park_inner(parked)
    }

    fn unpark(&mut self) {
        self.run.parked = None;
    }

    fn event(&mut self, id: &str) -> impl std::future::Future<Output = Option<Value>> + Send {
        let body = match self.engine.store.event(id) {
            Ok(e) => e.map(|e| e.body),
            Err(e) => {
                tracing::error!(run = %self.run.id, event = %id, error = %e, "cannot read the event that woke the run");
                None
            }
        };
        std::future::ready(body)
    }
}

fn empty_record(call: &Call<'_>) -> StepRecord {
    let now = store::now_ms();
    StepRecord::new(call.path, call.step.name(), StepStatus::Failed, now)
}

/// What one attempt of a call means for its run.
enum Attempted {
    Done,
    /// The connector's limit is full: queued again after this long.
    WaitSlot(Duration),
    RetryIn(Duration),
    End(RunStatus),
}

/// The error line of a failed call, with the answer's excerpt where there is one.
fn describe(e: &CallError, rec: &crate::connector::http::CallRecord) -> String {
    let mut msg = e.to_string();
    if let Some(loc) = &rec.location {
        msg.push_str(&format!(" (Location: {loc})"));
    }
    if let Some(ex) = &rec.response_excerpt {
        let short: String = ex.chars().take(500).collect();
        msg.push_str(&format!(": {short}"));
    }
    msg
}
