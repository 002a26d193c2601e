//! Workers: lease runs from the store's queue and execute their steps.
//!
//! Each step's record is written and made durable before the next step
//! starts, so a run resumes at its first unfinished step after a restart.
//! Workers hold no state of their own: everything lives in the store.

use super::step::{self, Prepared};
use super::Engine;
use crate::connector::http::{redact_value, CallError};
use crate::connector::limits::parse_retry_after;
use crate::recipe::{Recipe, Step};
use crate::store::{self, Attempt, Run, RunStatus, StepRecord, StepStatus};
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

/// Longest a worker sleeps before looking at the queue again.
const IDLE_POLL: Duration = Duration::from_millis(500);

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
                let store = self.store.clone();
                let swept = tokio::task::spawn_blocking(move || {
                    store.sweep_state(store::now_ms(), SWEEP_CHUNK)
                })
                .await;
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
            // Runs handed over at ingest first, then the store's queue.
            let handed = self
                .handoff_rx
                .try_lock()
                .ok()
                .and_then(|mut rx| rx.try_recv().ok());
            let mut runs = match handed {
                Some(run) => vec![run],
                None => self
                    .store
                    .lease(store::now_ms(), lease_ms, 1)
                    .unwrap_or_else(|e| {
                        tracing::error!(error = %e, "leasing runs failed");
                        Vec::new()
                    }),
            };
            if runs.is_empty() {
                let wait = match self.store.next_due() {
                    Ok(Some(due)) => Duration::from_millis(
                        (due - store::now_ms()).clamp(1, IDLE_POLL.as_millis() as i64) as u64,
                    ),
                    _ => IDLE_POLL,
                };
                let handed = async { self.handoff_rx.lock().await.recv().await };
                tokio::select! {
                    run = handed => runs.extend(run),
                    _ = notified => {}
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => {}
                }
            }
            for run in runs {
                let id = run.id.clone();
                if let Err(e) = self.execute(run, &shutdown).await {
                    // The run stays leased; it comes due again when the lease expires.
                    tracing::error!(run = %id, error = %e, "could not record run progress");
                }
            }
        }
    }

    /// Execute a leased run from its first unfinished step.
    pub(crate) async fn execute(
        &self,
        mut run: Run,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<(), store::StoreError> {
        let Some(recipe) = self.catalog.recipe(&run.recipe) else {
            let msg = format!("recipe `{}` is not loaded", run.recipe);
            return self.finish(&mut run, RunStatus::Failed, Some(msg)).await;
        };
        let Some(event) = self.store.event(&run.event_id)? else {
            let msg = format!("event {} not found", run.event_id);
            return self.finish(&mut run, RunStatus::Failed, Some(msg)).await;
        };
        let mut ctx = context(recipe, &run, event.body, self.now_ms());
        let start = run.steps.len();
        for step in recipe.steps.iter().skip(start) {
            if *shutdown.borrow() {
                // Leave the run leased: the next start resumes it at this step.
                return Ok(());
            }
            let prior = run.pending.take();
            let (record, next) = self.run_step(recipe, step, &run, &ctx, prior).await;
            tracing::info!(run = %run.id, recipe = %recipe.name, step = %step.id, status = ?record.status, http_status = ?record.http_status, attempts = record.attempts, "step finished");
            match next {
                Next::Continue => {}
                Next::RetryIn(delay) => {
                    let previous_due = run.due_at;
                    let now = store::now_ms();
                    run.pending = Some(record);
                    run.status = RunStatus::Retrying;
                    run.updated_at = now;
                    run.due_at = now + delay.as_millis() as i64;
                    self.store.reschedule(&run, previous_due)?;
                    return self.commit.sync().await;
                }
                Next::Stop(status) => {
                    let msg = step::failure_message(
                        step,
                        (status == RunStatus::Dead).then_some(record.attempts),
                        record.error.as_deref().unwrap_or_default(),
                    );
                    run.steps.push(record);
                    return self.finish(&mut run, status, Some(msg)).await;
                }
            }
            step::set_output(&mut ctx, step, record.output.clone());
            run.steps.push(record);
            run.updated_at = store::now_ms();
            if run.steps.len() < recipe.steps.len() {
                // The last step's record is written by `finish`, in one write.
                self.store.save_run(&run)?;
                self.commit.sync().await?;
            }
        }
        self.finish(&mut run, RunStatus::Succeeded, None).await
    }

    async fn finish(
        &self,
        run: &mut Run,
        status: RunStatus,
        error: Option<String>,
    ) -> Result<(), store::StoreError> {
        let now = store::now_ms();
        run.status = status;
        run.error = error;
        run.updated_at = now;
        run.finished_at = Some(now);
        self.store.finish_run(run)?;
        self.commit.sync().await
    }

    /// Run one step (one attempt of it). `prior` is the record of earlier
    /// attempts when the step is being retried.
    async fn run_step(
        &self,
        recipe: &Recipe,
        step: &Step,
        run: &Run,
        ctx: &Value,
        prior: Option<StepRecord>,
    ) -> (StepRecord, Next) {
        let started_at = store::now_ms();
        let clock = Instant::now();
        let mut record = prior.unwrap_or_else(|| StepRecord {
            id: step.id.clone(),
            call: format!("{}.{}", step.connector, step.action),
            status: StepStatus::Succeeded,
            input: Value::Null,
            request: None,
            http_status: None,
            output: Value::Null,
            error: None,
            started_at,
            duration_ms: 0,
            attempts: 0,
            history: Vec::new(),
        });
        let fail = |mut record: StepRecord, error: String| {
            record.status = StepStatus::Failed;
            record.error = Some(error);
            (record, Next::Stop(RunStatus::Failed))
        };
        // Condition and inputs: shared with the dry run of `switchboard test`.
        let (connector, action, input) = match step::prepare(&self.catalog, recipe, step, ctx) {
            Prepared::Skipped => {
                record.status = StepStatus::Skipped;
                return (record, Next::Continue);
            }
            Prepared::Failed {
                connector,
                input,
                error,
            } => {
                if let Some(c) = connector {
                    record.input = redact_value(c, input);
                }
                return fail(record, error);
            }
            Prepared::Call {
                connector,
                action,
                input,
            } => (connector, action, input),
        };
        let templates = &self.catalog.templates;
        record.input = redact_value(connector, input.clone());
        let key = format!("{}:{}", run.id, step.id);
        let outcome = self
            .client
            .call(templates, connector, action, &input, &key)
            .await;
        let elapsed = clock.elapsed().as_millis() as u64;
        let error = match &outcome.result {
            // Not sent: wait for the breaker without spending an attempt.
            Err(CallError::CircuitOpen(wait)) => {
                record.error = Some(CallError::CircuitOpen(*wait).to_string());
                return (record, Next::RetryIn(*wait));
            }
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
        match outcome.result {
            Ok(out) => {
                record.status = StepStatus::Succeeded;
                record.output = out;
                record.error = None;
                (record, Next::Continue)
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
                    (record, Next::Stop(RunStatus::Failed))
                } else if this_round >= policy.attempts {
                    (record, Next::Stop(RunStatus::Dead))
                } else {
                    let retry_after = outcome
                        .record
                        .retry_after
                        .as_deref()
                        .and_then(|v| parse_retry_after(v, SystemTime::now()));
                    (record, Next::RetryIn(policy.delay(this_round, retry_after)))
                }
            }
        }
    }
}

/// What a step's outcome means for its run.
enum Next {
    Continue,
    RetryIn(Duration),
    Stop(RunStatus),
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

/// The run context templates and conditions see: `{event, steps, vars, run}`.
fn context(recipe: &Recipe, run: &Run, event: Value, now: i64) -> Value {
    let steps: Map<String, Value> = run
        .steps
        .iter()
        .map(|s| (s.id.clone(), s.output.clone()))
        .collect();
    step::context(recipe, &run.id, &run.event_id, steps, event, now)
}
