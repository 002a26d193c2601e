//! Workers: lease runs from the store's queue and execute their steps.
//!
//! Each step's record is written and made durable before the next step
//! starts, so a run resumes at its first unfinished step after a restart.
//! Workers hold no state of their own: everything lives in the store.

use super::Engine;
use crate::connector::http::{redact_value, CallError};
use crate::recipe::{Recipe, Step};
use crate::store::{self, Run, RunStatus, StepRecord, StepStatus};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Longest a worker sleeps before looking at the queue again.
const IDLE_POLL: Duration = Duration::from_millis(500);

/// Start `config.workers` workers; they stop when `shutdown` turns true.
pub fn spawn(
    engine: &Arc<Engine>,
    shutdown: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..engine.config.workers.max(1))
        .map(|_| {
            let engine = engine.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move { engine.work(shutdown).await })
        })
        .collect()
}

impl Engine {
    async fn work(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let lease_ms = self.config.lease.as_millis() as i64;
        while !*shutdown.borrow() {
            // Register for a wake-up before looking, so a run queued between
            // the look and the wait is not missed.
            let notified = self.wake.notified();
            let leased = match self.store.lease(store::now_ms(), lease_ms, 1) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "leasing runs failed");
                    Vec::new()
                }
            };
            if leased.is_empty() {
                let wait = match self.store.next_due() {
                    Ok(Some(due)) => Duration::from_millis(
                        (due - store::now_ms()).clamp(1, IDLE_POLL.as_millis() as i64) as u64,
                    ),
                    _ => IDLE_POLL,
                };
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            for run in leased {
                let id = run.id.clone();
                if let Err(e) = self.execute(run).await {
                    // The run stays leased; it comes due again when the lease expires.
                    tracing::error!(run = %id, error = %e, "could not record run progress");
                }
            }
        }
    }

    /// Execute a leased run from its first unfinished step.
    pub(crate) async fn execute(&self, mut run: Run) -> Result<(), store::StoreError> {
        let Some(recipe) = self.catalog.recipe(&run.recipe) else {
            let msg = format!("recipe `{}` is not loaded", run.recipe);
            return self.finish(&mut run, RunStatus::Failed, Some(msg)).await;
        };
        let Some(event) = self.store.event(&run.event_id)? else {
            let msg = format!("event {} not found", run.event_id);
            return self.finish(&mut run, RunStatus::Failed, Some(msg)).await;
        };
        let mut ctx = context(recipe, &run, event.body);
        let start = run.steps.len();
        for step in recipe.steps.iter().skip(start) {
            let record = self.run_step(recipe, step, &run, &ctx).await;
            tracing::info!(run = %run.id, recipe = %recipe.name, step = %step.id, status = ?record.status, http_status = ?record.http_status, "step finished");
            if let Some(steps) = ctx.get_mut("steps").and_then(Value::as_object_mut) {
                steps.insert(step.id.clone(), record.output.clone());
            }
            let failed = record.status == StepStatus::Failed;
            let error = record.error.clone();
            run.steps.push(record);
            run.updated_at = store::now_ms();
            if failed {
                let msg = format!(
                    "step `{}` ({}.{}) failed: {}",
                    step.id,
                    step.connector,
                    step.action,
                    error.unwrap_or_default()
                );
                return self.finish(&mut run, RunStatus::Failed, Some(msg)).await;
            }
            self.store.save_run(&run)?;
            self.commit.sync().await?;
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

    async fn run_step(&self, recipe: &Recipe, step: &Step, run: &Run, ctx: &Value) -> StepRecord {
        let started_at = store::now_ms();
        let clock = Instant::now();
        let mut record = StepRecord {
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
        };
        if let Some(cond) = &step.condition {
            if !cond.eval(ctx) {
                record.status = StepStatus::Skipped;
                return record;
            }
        }
        let templates = &self.catalog.templates;
        let (Some(connector), Some(action)) = (
            self.catalog.connectors.get(&step.connector),
            self.catalog
                .connectors
                .get(&step.connector)
                .and_then(|c| c.actions.get(&step.action)),
        ) else {
            record.status = StepStatus::Failed;
            record.error = Some(format!("{} is not loaded", record.call));
            return record;
        };
        let mut input = Map::new();
        for (k, t) in &step.with {
            match templates.render_value(t, ctx) {
                Ok(v) => {
                    input.insert(k.clone(), v);
                }
                Err(e) => {
                    record.status = StepStatus::Failed;
                    record.error = Some(format!("input `{k}` of recipe `{}`: {e}", recipe.name));
                    record.input = redact_value(connector, Value::Object(input));
                    return record;
                }
            }
        }
        let input = Value::Object(input);
        record.input = redact_value(connector, input.clone());
        let key = format!("{}:{}", run.id, step.id);
        record.attempts = 1;
        let outcome = self
            .client
            .call(templates, connector, action, &input, &key)
            .await;
        record.duration_ms = clock.elapsed().as_millis() as u64;
        record.http_status = outcome.record.status;
        record.request = serde_json::to_value(&outcome.record).ok();
        match outcome.result {
            Ok(out) => record.output = out,
            Err(e) => {
                record.status = StepStatus::Failed;
                record.error = Some(describe(&e, &outcome.record));
            }
        }
        record
    }
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
fn context(recipe: &Recipe, run: &Run, event: Value) -> Value {
    let steps: Map<String, Value> = run
        .steps
        .iter()
        .map(|s| (s.id.clone(), s.output.clone()))
        .collect();
    json!({
        "event": event,
        "steps": steps,
        "vars": recipe.vars,
        "run": { "id": run.id, "event_id": run.event_id, "recipe": run.recipe },
    })
}
