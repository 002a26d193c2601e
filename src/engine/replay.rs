//! Replay: what a recipe as it is now would have done for a stored event,
//! answered from what actually happened (`switchboard replay`,
//! `GET /api/replay`).
//!
//! The event goes through the trigger ([`Catalog::triggered`], the function
//! `Engine::accept` uses) and, if the recipe starts, through the same step
//! executor as a worker's run ([`super::step::Walker`]) with a [`ReplayHost`]:
//! a call whose step (same path id, same `connector.action`) is recorded in
//! the original run is answered with its recorded output — or its recorded
//! failure —, any other call is *not made*: it is noted ("would call X with
//! Y") and answered `null`, so later steps still run. Recipe state steps are
//! answered from their recorded outputs likewise, else from an empty
//! in-memory state; a wait that completed in the original run completes the
//! same way (woken by the same event, or timed out), else the replay ends
//! there, waiting.
//!
//! Invariant: no I/O, as [`super::dry_run`]: it takes the [`Catalog`], an
//! event and a run, never the HTTP client or the store, so nothing is
//! written and no call leaves the process.

use super::step::{self, Host, Next, Outcome};
use super::Catalog;
use crate::connector::http::redact_value;
use crate::store::state::{MemoryState, StateOp, StateOutput};
use crate::store::{Event, Parked, Run, RunStatus, StepRecord, StepStatus};
use serde_json::Value;
use std::collections::BTreeMap;
use std::future::Future;

/// What the recipe would have done for one event.
#[derive(Debug, Clone, PartialEq)]
pub struct Replayed {
    /// The recipe's trigger and `if` hold for the event.
    pub triggered: bool,
    /// How the run would end: succeeded, failed, skipped, waiting (a wait
    /// the original run never completed). `None` when not triggered.
    pub status: Option<RunStatus>,
    pub error: Option<String>,
    pub reason: Option<String>,
    /// The step records it would keep (inputs redacted as the hub records them).
    pub records: Vec<StepRecord>,
    /// Path ids of calls without a recorded answer (not made; answered `null`).
    pub unanswered: Vec<String>,
    /// Path ids of state steps answered from an empty in-memory state.
    pub state_guessed: Vec<String>,
}

/// Replay `recipe` of `catalog` for `event`, answering from `original`
/// (the event's run of this recipe, if it had one).
pub fn replay(catalog: &Catalog, recipe: &str, event: &Event, original: Option<&Run>) -> Replayed {
    let mut out = Replayed {
        triggered: false,
        status: None,
        error: None,
        reason: None,
        records: Vec::new(),
        unanswered: Vec::new(),
        state_guessed: Vec::new(),
    };
    let Some(recipe) = catalog.recipe(recipe) else {
        return out;
    };
    // The time the event arrived: templates see the time it first saw.
    let mut now = event.received_at;
    let mut trigger_ctx = Catalog::trigger_context(event.body.clone(), now);
    catalog.triggered(
        &event.connector,
        event.event_type.as_deref(),
        &mut trigger_ctx,
        |r, _| out.triggered |= r.name == recipe.name,
    );
    if !out.triggered {
        return out;
    }
    let recorded: BTreeMap<&str, &StepRecord> = original
        .map(|r| r.steps.iter().map(|s| (s.id.as_str(), s)).collect())
        .unwrap_or_default();
    let mut state = MemoryState::default();
    let mut host = ReplayHost {
        recorded: &recorded,
        out: &mut out,
        state: &mut state,
        now,
        parked: None,
        events: BTreeMap::new(),
    };
    let run_id = original.map_or("replay", |r| r.id.as_str());
    let outcome = loop {
        host.now = now;
        let ctx = step::context(recipe, run_id, &event.id, event.body.clone(), now);
        let outcome = step::walk_at_once(catalog, recipe, &mut host, ctx, "replay");
        let Some(parked) = host
            .parked
            .clone()
            .filter(|_| outcome == Outcome::Suspended)
        else {
            break outcome;
        };
        // A wait: complete it as the original run's did, if it did.
        let Some(done) = recorded.get(parked.step.as_str()) else {
            host.out.status = Some(RunStatus::Waiting);
            return out;
        };
        match done.output.get("event_id").and_then(Value::as_str) {
            Some(id) => {
                let body = done.output.get("event").cloned().unwrap_or(Value::Null);
                host.events.insert(id.to_string(), body);
                if let Some(p) = host.parked.as_mut() {
                    p.woken_by = Some(id.to_string());
                }
                now = now.max(done.started_at);
            }
            None => now = now.max(parked.until),
        }
    };
    match outcome {
        Outcome::Finished => out.status = Some(RunStatus::Succeeded),
        Outcome::Stopped { status, reason } => {
            out.status = Some(status);
            out.reason = Some(reason);
        }
        Outcome::Failed { status, error } => {
            out.status = Some(status);
            out.error = Some(error);
        }
        Outcome::Suspended => {
            out.status = Some(RunStatus::Failed);
            out.error = Some("the replay was suspended".into());
        }
    }
    out
}

/// Answers from the original run's records; records in memory.
struct ReplayHost<'a> {
    recorded: &'a BTreeMap<&'a str, &'a StepRecord>,
    out: &'a mut Replayed,
    state: &'a mut MemoryState,
    now: i64,
    parked: Option<Parked>,
    /// Bodies of the events that woke the original run's waits, by id.
    events: BTreeMap<String, Value>,
}

impl Host for ReplayHost<'_> {
    fn records(&self) -> &[StepRecord] {
        &self.out.records
    }

    fn records_mut(&mut self) -> &mut Vec<StepRecord> {
        &mut self.out.records
    }

    fn call(&mut self, call: step::Call<'_>) -> impl Future<Output = (StepRecord, Next)> + Send {
        let name = call.step.name();
        let mut record = StepRecord {
            // As the worker records it: secrets redacted.
            input: redact_value(&call.step.connector, call.input),
            ..StepRecord::new(call.path, name.clone(), StepStatus::Succeeded, self.now)
        };
        let next = match self.recorded.get(call.path).filter(|r| r.call == name) {
            Some(r) if r.status == StepStatus::Succeeded => {
                record.output = r.output.clone();
                record.http_status = r.http_status;
                record.attempts = r.attempts;
                Next::Continue
            }
            Some(r) => {
                record.status = StepStatus::Failed;
                record.http_status = r.http_status;
                record.error = r.error.clone();
                record.attempts = r.attempts;
                Next::End(RunStatus::Failed)
            }
            None => {
                self.out.unanswered.push(call.path.to_string());
                Next::Continue
            }
        };
        std::future::ready((record, next))
    }

    fn state<F>(
        &mut self,
        op: StateOp,
        record: F,
    ) -> impl Future<Output = Option<(StateOutput, StepRecord)>> + Send
    where
        F: FnOnce(&StateOutput) -> StepRecord + Send,
    {
        let out = match self.recorded_state(&op) {
            Some(out) => out,
            None => {
                let out = self
                    .state
                    .apply(&op, self.now)
                    .unwrap_or_else(|e| StateOutput::Failed {
                        reason: e.to_string(),
                    });
                let r = record(&out);
                self.out.state_guessed.push(r.id.clone());
                return std::future::ready(Some((out, r)));
            }
        };
        let r = record(&out);
        std::future::ready(Some((out, r)))
    }

    fn parked(&self) -> Option<&Parked> {
        self.parked.as_ref()
    }

    fn park(&mut self, parked: Parked) -> impl Future<Output = ()> + Send {
        self.parked = Some(parked);
        std::future::ready(())
    }

    fn unpark(&mut self) {
        self.parked = None;
    }

    fn event(&mut self, id: &str) -> impl Future<Output = Option<Value>> + Send {
        std::future::ready(self.events.get(id).cloned())
    }
}

impl ReplayHost<'_> {
    /// The original run's answer to this state operation: its succeeded
    /// state step on the same key (namespace and key, as the record's input
    /// names them) not yet used by this replay, read back into the
    /// operation's output. (The host is not told the step's path, so the
    /// key decides.)
    fn recorded_state(&self, op: &StateOp) -> Option<StateOutput> {
        let key = match op {
            StateOp::Get(k) | StateOp::Delete(k) => k,
            StateOp::Set { key, .. }
            | StateOp::SetIfAbsent { key, .. }
            | StateOp::Incr { key, .. } => key,
            StateOp::Assign(a) => &a.rotation,
        };
        let used: std::collections::BTreeSet<&str> =
            self.out.records.iter().map(|r| r.id.as_str()).collect();
        let found = self.recorded.values().find(|r| {
            r.status == StepStatus::Succeeded
                && !used.contains(r.id.as_str())
                && r.input.get("namespace").and_then(Value::as_str) == Some(key.namespace.as_str())
                && r.input.get("key").and_then(Value::as_str) == Some(key.key.as_str())
        })?;
        let o = &found.output;
        let b = |k: &str| o.get(k).and_then(Value::as_bool);
        Some(match op {
            StateOp::Get(_) => StateOutput::Value {
                found: b("found")?,
                value: o.get("value")?.clone(),
            },
            StateOp::Set { .. } | StateOp::SetIfAbsent { .. } => StateOutput::Set {
                set: b("set")?,
                value: o.get("value")?.clone(),
            },
            StateOp::Delete(_) => StateOutput::Deleted {
                deleted: b("deleted")?,
            },
            StateOp::Incr { .. } => StateOutput::Count {
                count: o.get("count")?.as_i64()?,
            },
            StateOp::Assign(_) => StateOutput::Assigned {
                index: o.get("index")?.as_u64()? as usize,
                load: o.get("load").and_then(Value::as_f64),
            },
        })
    }
}
