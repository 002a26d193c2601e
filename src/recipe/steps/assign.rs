//! `assign: { from, strategy, … }` — pick an agent from a list: round robin
//! with a persistent rotation, or the least loaded, skipping agents that are
//! away or at capacity.

use super::state::{key as state_key, namespace};
use super::Compiler;
use crate::recipe::condition::Condition;
use crate::recipe::config::{AssignFile, LoadFile, StepFile};
use crate::template::{Template, ValueTemplate};

/// Most agents one `assign` picks from.
pub const MAX_AGENTS: usize = 1_000;

/// The name an agent has in `skip:`, `id:` and `load:` templates.
pub const AGENT: &str = "agent";

/// A compiled `assign:` step.
#[derive(Debug)]
pub struct AssignStep {
    /// The agents: a list literal or a template rendering to a list.
    pub from: ValueTemplate,
    pub strategy: AssignStrategy,
    /// Each agent's load: needed by `least_loaded`; with `capacity:`, an
    /// agent at or above it is skipped (with either strategy).
    pub load: Option<LoadSource>,
    /// Where the rotation lives: `namespace:` (`None`: the recipe's name) and `key:`.
    pub namespace: Option<String>,
    /// The rotation's key; `None`: the step's id.
    pub key: Option<Template>,
    /// An agent's id (for messages and load keys): `None` means the item
    /// itself when it is a string or number, else its `id` field.
    pub id: Option<Template>,
    /// Rules over `{agent, event, steps, vars, run}`; an agent for whom any holds is skipped.
    pub skip: Vec<Condition>,
    /// Agents whose load is at or above this are skipped.
    pub capacity: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssignStrategy {
    /// The next agent after the last one picked (persistent per key).
    RoundRobin,
    /// The agent with the smallest load; ties go round robin.
    LeastLoaded,
}

/// Where least-loaded assignment reads an agent's load.
#[derive(Debug)]
pub enum LoadSource {
    /// A template over the context with `agent`, rendering to a number
    /// (e.g. from a step that fetched every agent's open tickets).
    Template(Template),
    /// A state value per agent, maintained with `state: { incr: … }`;
    /// `add` is added to the picked agent's value in the same write.
    State { key: Template, add: i64 },
}

pub(super) fn compile(cx: &mut Compiler<'_>, s: &StepFile, ptr: &str) -> Option<AssignStep> {
    let f: &AssignFile = s.assign.as_ref()?;
    let p = format!("{ptr}/assign");
    let before = cx.errors.len();
    let from = cx.value_template(&f.from, &format!("{p}/from"));
    if let serde_json::Value::Array(a) = &f.from {
        if a.is_empty() {
            cx.error(
                &format!("{p}/from"),
                "`from:` is an empty list: expected the agents to pick from",
            );
        } else if a.len() > MAX_AGENTS {
            cx.error(
                &format!("{p}/from"),
                format!("`from:` lists {} agents, the most is {MAX_AGENTS}", a.len()),
            );
        }
    } else if !f.from.is_string() {
        cx.error(
            &format!("{p}/from"),
            "`from:` must be a list of agents or a template rendering to one",
        );
    }
    let ns = namespace(cx, f.namespace.as_ref(), &format!("{p}/namespace"));
    let key = f
        .key
        .as_ref()
        .and_then(|k| state_key(cx, k, &format!("{p}/key")));
    // `agent` is visible in the per-agent templates and rules.
    cx.locals.push(AGENT.to_string());
    let id =
        f.id.as_ref()
            .and_then(|t| cx.template(t, &format!("{p}/id")));
    let skip: Vec<Condition> = f
        .skip
        .iter()
        .enumerate()
        .filter_map(|(i, rule)| cx.condition(rule, &format!("{p}/skip/{i}")))
        .collect();
    let load = match &f.load {
        None => None,
        Some(LoadFile::Template(t)) => cx
            .template(t, &format!("{p}/load"))
            .map(LoadSource::Template),
        Some(LoadFile::State { key, add }) => {
            state_key(cx, key, &format!("{p}/load/key")).map(|key| LoadSource::State {
                key,
                add: add.unwrap_or(1),
            })
        }
    };
    let strategy = match f.strategy.as_deref().unwrap_or("round_robin") {
        "round_robin" => Some(AssignStrategy::RoundRobin),
        "least_loaded" if f.load.is_none() => {
            cx.error(&p, "`strategy: least_loaded` needs `load:`: a template per agent (\"{{ steps.loads.by_agent[agent] }}\") or a state counter ({ key: \"open:{{ agent }}\" })");
            None
        }
        "least_loaded" => Some(AssignStrategy::LeastLoaded),
        other => {
            cx.error(
                &format!("{p}/strategy"),
                format!("unknown strategy `{other}`, expected round_robin or least_loaded"),
            );
            None
        }
    };
    cx.locals.pop();
    if let Some(c) = f.capacity {
        if c.is_nan() || c <= 0.0 {
            cx.error(
                &format!("{p}/capacity"),
                format!("`capacity:` is {c}, expected a number above 0"),
            );
        } else if f.load.is_none() {
            cx.error(
                &format!("{p}/capacity"),
                "`capacity:` is compared with each agent's load: give `load:` too",
            );
        }
    }
    if cx.errors.len() > before {
        return None;
    }
    Some(AssignStep {
        from: from?,
        strategy: strategy?,
        load,
        namespace: ns?,
        key,
        id,
        skip,
        capacity: f.capacity,
    })
}
