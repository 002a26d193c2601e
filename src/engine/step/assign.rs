//! `assign:` — pick an agent: render the list, each agent's id, skip rules
//! and load here (pure, over the run context with `agent`), then let the
//! store pick under its state lock (round robin from the stored position, or
//! the least loaded) and move the rotation in the same write as the step's
//! record, so concurrent runs never get the same slot wrongly.

use super::state::{apply, render_key};
use super::{Flow, Host, Walker};
use crate::recipe::steps::{AssignStep, AssignStrategy, LoadSource, AGENT, MAX_AGENTS};
use crate::recipe::Step;
use crate::store::state::{Assign, Loads, StateKey, StateOp, StateOutput, Strategy};
use serde_json::{json, Value};

pub(super) async fn execute<H: Host>(
    w: &mut Walker<'_, H>,
    step: &Step,
    a: &AssignStep,
    path: &str,
) -> Flow {
    let prepared = prepare(w, step, a);
    // The per-agent context entry is gone whatever happened.
    if let Some(o) = w.ctx.as_object_mut() {
        o.remove(AGENT);
    }
    let (op, agents, ids, input) = match prepared {
        Ok(p) => p,
        Err((input, error)) => return w.fail(path, &step.kind, input, error),
    };
    apply(
        w,
        step,
        path,
        StateOp::Assign(op),
        input,
        move |out| match out {
            StateOutput::Assigned { index, load } => json!({
                "agent": agents.get(*index).cloned().unwrap_or(Value::Null),
                "id": ids.get(*index).cloned().unwrap_or_default(),
                "index": index,
                "load": load,
            }),
            other => other.to_json(),
        },
    )
    .await
}

type Prepared = (Assign, Vec<Value>, Vec<String>, Value);

fn prepare<H: Host>(
    w: &mut Walker<'_, H>,
    step: &Step,
    a: &AssignStep,
) -> Result<Prepared, (Value, String)> {
    let templates = &w.catalog.templates;
    let from = templates
        .render_value(&a.from, &w.ctx)
        .map_err(|e| (Value::Null, format!("`from` did not render: {e}")))?;
    let Value::Array(agents) = from else {
        return Err((
            Value::Null,
            format!(
                "`from` rendered {}, expected a list of agents",
                short(&from)
            ),
        ));
    };
    if agents.len() > MAX_AGENTS {
        return Err((
            Value::Null,
            format!(
                "`from` has {} agents, the most is {MAX_AGENTS}",
                agents.len()
            ),
        ));
    }
    let namespace = a.namespace.clone().unwrap_or_else(|| w.recipe.name.clone());
    let rotation = match &a.key {
        Some(t) => render_key(w, t, &namespace)?,
        None => StateKey::new(&namespace, &step.id).map_err(|e| (Value::Null, e))?,
    };
    let mut ids = Vec::with_capacity(agents.len());
    let mut skipped = Vec::with_capacity(agents.len());
    let mut given = Vec::new();
    let mut keys = Vec::new();
    for (i, agent) in agents.iter().enumerate() {
        if let Some(o) = w.ctx.as_object_mut() {
            o.insert(AGENT.to_string(), agent.clone());
        }
        let id = match &a.id {
            Some(t) => w
                .catalog
                .templates
                .render_string(t, &w.ctx)
                .map_err(|e| (Value::Null, format!("`id` of agent {i}: {e}")))?,
            None => match agent {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                other => match other.get("id") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Number(n)) => n.to_string(),
                    _ => {
                        return Err((
                            Value::Null,
                            format!(
                                "agent {i} ({}) has no id: give agents as strings, objects with an `id`, or set `id:`",
                                short(other)
                            ),
                        ))
                    }
                },
            },
        };
        let rule = a
            .skip
            .iter()
            .position(|c| c.eval_with(&w.ctx, &w.catalog.templates));
        skipped.push(rule.map(|r| format!("skip rule {} holds", r + 1)));
        match &a.load {
            None => {}
            Some(LoadSource::Template(t)) => {
                let v = w
                    .catalog
                    .templates
                    .render(t, &w.ctx)
                    .map_err(|e| (Value::Null, format!("`load` of agent `{id}`: {e}")))?;
                let n = v
                    .as_f64()
                    .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()));
                match n {
                    Some(n) => given.push(n),
                    None => {
                        return Err((
                            Value::Null,
                            format!(
                                "`load` of agent `{id}` rendered {}, expected a number",
                                short(&v)
                            ),
                        ))
                    }
                }
            }
            Some(LoadSource::State { key, .. }) => keys.push(render_key(w, key, &namespace)?),
        }
        ids.push(id);
    }
    let loads = match &a.load {
        None => None,
        Some(LoadSource::Template(_)) => Some(Loads::Given(given)),
        Some(LoadSource::State { add, .. }) => Some(Loads::Keys { keys, add: *add }),
    };
    let input = json!({
        "namespace": rotation.namespace,
        "key": rotation.key,
        "agents": ids,
        "strategy": match a.strategy {
            AssignStrategy::RoundRobin => "round_robin",
            AssignStrategy::LeastLoaded => "least_loaded",
        },
    });
    let op = Assign {
        rotation,
        agents: ids.clone(),
        skipped,
        strategy: match a.strategy {
            AssignStrategy::RoundRobin => Strategy::RoundRobin,
            AssignStrategy::LeastLoaded => Strategy::LeastLoaded,
        },
        loads,
        capacity: a.capacity,
    };
    Ok((op, agents, ids, input))
}

/// A value in an error message, cut short.
fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 80 {
        format!("{}…", s.chars().take(80).collect::<String>())
    } else {
        s
    }
}
