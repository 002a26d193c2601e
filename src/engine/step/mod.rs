//! The executor: walks a recipe's compiled step tree for one run, shared by
//! the worker ([`super::worker`]) and the dry run of `switchboard test`
//! ([`super::dry_run`]), so a recipe test exercises the same conditions,
//! templates, branches and loops as production. Only the [`Host`] differs:
//! it makes the calls (HTTP and a durable journal in the worker, mocks in
//! the dry run).
//!
//! **Replay by path.** Every executed step instance has a *path id*: its
//! step id, prefixed by the steps it is nested in (`notify`,
//! `each_agent[2].notify`, `route.case0.tag`). Its record is appended to the
//! run's records under that id. Walking the tree, the executor looks each
//! instance up by path: a recorded instance is *replayed* — its recorded
//! output goes into the context, its recorded decision (the branch a
//! `switch` took, the list a `for_each` iterates, a `stop`) is followed —
//! without evaluating a condition or making a call again; an instance
//! without a record runs. So a run resumed after a crash, a retry or a wait
//! follows the path it took before, even if the event or the time changed.
//!
//! One file per step kind in this folder holds its `execute` function.
//! Adding a kind: its variant in `recipe::steps::StepKind`, an arm in
//! [`Walker::step`], and an `execute` function here (and, when the kind
//! needs something only the worker or the dry run can do — a store write,
//! parking the run — a method on [`Host`]).
//!
//! Nothing here does I/O: the host does.

mod assign;
mod call;
mod for_each;
mod set;
mod state;
mod stop;
mod switch;
pub(crate) mod wait;

use super::Catalog;
use crate::recipe::steps::CallStep;
use crate::recipe::{Recipe, Step, StepKind};
use crate::store::state::{StateOp, StateOutput};
use crate::store::{self, Parked, RunStatus, StepRecord, StepStatus};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

/// What runs a walker's effects: the worker (HTTP, store) or the dry run (mocks).
pub(crate) trait Host: Send {
    /// The run's records so far, oldest first.
    fn records(&self) -> &[StepRecord];
    /// The same, to append a record (the worker makes it durable before
    /// its next call or with the run's end, so a record of a control step
    /// costs no write of its own) or complete one (a `for_each`'s output
    /// once its items ran).
    fn records_mut(&mut self) -> &mut Vec<StepRecord>;
    /// Stop between steps (shutdown): the run is left to resume later.
    fn interrupted(&self) -> bool {
        false
    }
    /// A `cancel_on` event arrived while this run was executing: the
    /// reason. Asked at each step boundary of a recipe with `cancel_on`.
    fn cancel_requested(&mut self) -> Option<String> {
        None
    }
    /// Make the call of a `call` step instance whose inputs rendered. The
    /// returned record is the step's (it is pushed by the walker, unless the
    /// host suspended the run).
    fn call(&mut self, call: Call<'_>) -> impl Future<Output = (StepRecord, Next)> + Send;
    /// Apply a recipe state operation (`state:`, `assign:`) and record the
    /// step: `record` makes the step's record from the outcome. The worker
    /// writes the state change and the run with that record **in one atomic
    /// batch**, so a resumed run finds the record and never applies it twice;
    /// the dry run applies it to its in-memory state. The record is pushed by
    /// the walker. `None`: the store could not write; the run is suspended.
    fn state<F>(
        &mut self,
        op: StateOp,
        record: F,
    ) -> impl Future<Output = Option<(StateOutput, StepRecord)>> + Send
    where
        F: FnOnce(&StateOutput) -> StepRecord + Send;
    /// The run's parked state: a wait that began (and maybe woke).
    fn parked(&self) -> Option<&Parked>;
    /// Park the run (a wait step began): the worker stores it `waiting`
    /// with its keys and lets it go; the walk then suspends.
    fn park(&mut self, parked: Parked) -> impl Future<Output = ()> + Send;
    /// The wait step completed: forget the parked state.
    fn unpark(&mut self);
    /// The body of a stored event (the one that woke a `wait_for`).
    fn event(&mut self, id: &str) -> impl Future<Output = Option<Value>> + Send;
}

/// One call to make.
pub(crate) struct Call<'a> {
    /// The step instance's path id (the `Idempotency-Key` is `<run id>:<path>`).
    pub path: &'a str,
    pub step: &'a CallStep,
    /// The rendered `with:` inputs (not redacted).
    pub input: Value,
}

/// What a call's outcome means for the run.
pub(crate) enum Next {
    /// The step is done; go on.
    Continue,
    /// The host has rescheduled the run (a retry, an open breaker) or could
    /// not record it: stop walking, the run resumes later by replay.
    Suspend,
    /// The step failed: the run ends with this status.
    End(RunStatus),
}

/// How a walk ended.
#[derive(Debug, PartialEq)]
pub(crate) enum Outcome {
    /// Every step ran or was skipped.
    Finished,
    /// A `stop` step ended the run.
    Stopped { status: RunStatus, reason: String },
    /// A step failed; the run ends with `status` (failed or dead).
    Failed { status: RunStatus, error: String },
    /// The host suspended the run; it resumes later.
    Suspended,
}

/// What one step instance means for the walk.
pub(crate) enum Flow {
    Next,
    Halt(Outcome),
}

type BoxFlow<'s> = Pin<Box<dyn Future<Output = Flow> + Send + 's>>;

/// Walk `recipe` with a host that answers everything at once (the dry
/// run, replay): the walk completes within one poll, no runtime needed.
/// `what` names the walk in the error if it ever waited.
pub(crate) fn walk_at_once<H: Host>(
    catalog: &Catalog,
    recipe: &Recipe,
    host: &mut H,
    ctx: Value,
    what: &str,
) -> Outcome {
    let mut walk = Walker::new(catalog, recipe, host, ctx);
    let fut = std::pin::pin!(walk.run());
    match fut.poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
        std::task::Poll::Ready(o) => o,
        std::task::Poll::Pending => Outcome::Failed {
            status: RunStatus::Failed,
            error: format!("the {what} waited on something outside the process"),
        },
    }
}

/// Walks one run's step tree.
pub(crate) struct Walker<'a, H: Host> {
    pub catalog: &'a Catalog,
    pub recipe: &'a Recipe,
    pub host: &'a mut H,
    /// `{event, steps, vars, run}` plus the loop variables in scope.
    pub ctx: Value,
    /// Path id → position in the host's records.
    index: HashMap<String, usize>,
}

impl<'a, H: Host> Walker<'a, H> {
    pub fn new(catalog: &'a Catalog, recipe: &'a Recipe, host: &'a mut H, ctx: Value) -> Self {
        let index = host
            .records()
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id.clone(), i))
            .collect();
        Walker {
            catalog,
            recipe,
            host,
            ctx,
            index,
        }
    }

    /// Walk the recipe's steps from the first, replaying recorded instances.
    pub async fn run(&mut self) -> Outcome {
        let recipe = self.recipe;
        match self.steps(&recipe.steps, "").await {
            Flow::Next => Outcome::Finished,
            Flow::Halt(o) => o,
        }
    }

    /// Walk sibling steps; `prefix` is their parent's path with a trailing `.`.
    pub(crate) fn steps<'s>(&'s mut self, steps: &'s [Step], prefix: &'s str) -> BoxFlow<'s> {
        Box::pin(async move {
            for step in steps {
                let path = format!("{prefix}{}", step.id);
                if let Flow::Halt(o) = self.step(step, &path).await {
                    return Flow::Halt(o);
                }
            }
            Flow::Next
        })
    }

    async fn step(&mut self, step: &Step, path: &str) -> Flow {
        let recorded = self.index.get(path).copied();
        match recorded {
            Some(i) => {
                let rec = &self.host.records()[i];
                if rec.status == StepStatus::Skipped {
                    self.set_output(step, Value::Null);
                    return Flow::Next;
                }
                if rec.status == StepStatus::Failed {
                    // Only the last record of a failed run fails; a retry
                    // takes it out first. Replaying one ends the run again.
                    let error = rec.error.clone().unwrap_or_default();
                    return Flow::Halt(Outcome::Failed {
                        status: RunStatus::Failed,
                        error: failure_message(path, &rec.call, None, &error),
                    });
                }
            }
            None => {
                if self.host.interrupted() {
                    return Flow::Halt(Outcome::Suspended);
                }
                if !self.recipe.cancel_on.is_empty() {
                    if let Some(reason) = self.host.cancel_requested() {
                        return Flow::Halt(Outcome::Stopped {
                            status: RunStatus::Cancelled,
                            reason,
                        });
                    }
                }
                if let Some(cond) = &step.condition {
                    if !cond.eval_with(&self.ctx, &self.catalog.templates) {
                        self.push(
                            path,
                            &step.kind,
                            StepStatus::Skipped,
                            Value::Null,
                            Value::Null,
                        );
                        self.set_output(step, Value::Null);
                        return Flow::Next;
                    }
                }
            }
        }
        // Kinds whose record is their whole effect replay from its output;
        // control kinds replay their recorded decision themselves.
        let control = matches!(
            step.kind,
            StepKind::Stop(_) | StepKind::Switch(_) | StepKind::ForEach(_)
        );
        if let (Some(i), false) = (recorded, control) {
            let out = self.recorded(i).output.clone();
            self.set_output(step, out);
            return Flow::Next;
        }
        match &step.kind {
            StepKind::Call(k) => call::execute(self, step, k, path).await,
            StepKind::Set(k) => set::execute(self, step, k, path),
            StepKind::State(k) => state::execute(self, step, k, path).await,
            StepKind::Assign(k) => assign::execute(self, step, k, path).await,
            StepKind::Stop(k) => stop::execute(self, step, k, path, recorded),
            StepKind::Switch(k) => switch::execute(self, step, k, path, recorded).await,
            StepKind::ForEach(k) => for_each::execute(self, step, k, path, recorded).await,
            StepKind::Wait(_) | StepKind::WaitUntil(_) | StepKind::WaitFor(_) => {
                wait::execute(self, step, path).await
            }
        }
    }

    /// Make a step's output visible to later steps as `steps.<id>`.
    pub(crate) fn set_output(&mut self, step: &Step, output: Value) {
        if let Some(steps) = self.ctx.get_mut("steps").and_then(Value::as_object_mut) {
            steps.insert(step.id.clone(), output);
        }
    }

    /// The record of a recorded instance.
    pub(crate) fn recorded(&self, index: usize) -> &StepRecord {
        &self.host.records()[index]
    }

    /// Append a record made by the walker (no call).
    pub(crate) fn push(
        &mut self,
        path: &str,
        kind: &StepKind,
        status: StepStatus,
        input: Value,
        output: Value,
    ) -> usize {
        self.push_record(StepRecord {
            input,
            output,
            ..StepRecord::new(path, kind.label(), status, store::now_ms())
        })
    }

    pub(crate) fn push_record(&mut self, record: StepRecord) -> usize {
        let i = self.host.records().len();
        self.index.insert(record.id.clone(), i);
        self.host.records_mut().push(record);
        i
    }

    /// Record a step that succeeded without a call, and make its output
    /// visible to later steps.
    pub(crate) fn succeed(&mut self, step: &Step, path: &str, input: Value, output: Value) -> Flow {
        self.push(
            path,
            &step.kind,
            StepStatus::Succeeded,
            input,
            output.clone(),
        );
        self.set_output(step, output);
        Flow::Next
    }

    /// End the run as failed at a step that made no call (an input, a
    /// value or a list that does not render), recording why.
    pub(crate) fn fail(
        &mut self,
        path: &str,
        kind: &StepKind,
        input: Value,
        error: String,
    ) -> Flow {
        let i = self.push(path, kind, StepStatus::Failed, input, Value::Null);
        if let Some(r) = self.host.records_mut().get_mut(i) {
            r.error = Some(error.clone());
        }
        Flow::Halt(Outcome::Failed {
            status: RunStatus::Failed,
            error: failure_message(path, &kind.label(), None, &error),
        })
    }
}

/// The run's error when the step instance at `path` (`label`: its
/// `connector.action` or kind) failed with `error`, `attempts` given when
/// retries were exhausted: the one wording of the worker and the dry run.
pub(crate) fn failure_message(
    path: &str,
    label: &str,
    attempts: Option<u32>,
    error: &str,
) -> String {
    let after = attempts
        .map(|n| format!(" after {n} attempts"))
        .unwrap_or_default();
    format!("step `{path}` ({label}) failed{after}: {error}")
}

/// The run context templates and conditions see: `{event, steps, vars, run}`,
/// `steps` empty (the walker fills it, replaying records). `now` (ms, from
/// the engine's clock) is `run.now`, what `now()` and business-hours
/// conditions read.
pub(crate) fn context(
    recipe: &Recipe,
    run_id: &str,
    event_id: &str,
    event: Value,
    now: i64,
) -> Value {
    // Built field by field: `json!` would copy `event` through its
    // serializer (an allocation per node of the body) instead of moving it.
    let mut ctx = Map::new();
    ctx.insert("event".into(), event);
    ctx.insert("steps".into(), Value::Object(Map::new()));
    ctx.insert("vars".into(), recipe.vars.clone());
    ctx.insert(
        "run".into(),
        json!({ "id": run_id, "event_id": event_id, "recipe": recipe.name, "now": now }),
    );
    Value::Object(ctx)
}
