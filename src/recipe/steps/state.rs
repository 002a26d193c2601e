//! `state: { get | set | set_if_absent | delete | incr: key, … }` — recipe
//! state: values with an optional TTL, counters (over a sliding window).

use super::Compiler;
use crate::recipe::config::{StateFile, StepFile};
use crate::template::{Template, ValueTemplate};
use std::time::Duration;

/// Longest namespace or key in bytes (as the store checks rendered keys).
pub const MAX_KEY_BYTES: usize = 512;

/// Longest `window:` of a counter and longest `ttl:` (a year and a day).
pub const MAX_STATE_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// A compiled `state:` step.
#[derive(Debug)]
pub struct StateStep {
    /// `namespace:`; `None`: the recipe's name.
    pub namespace: Option<String>,
    /// The key, a template over the run context; rendering empty fails the step.
    pub key: Template,
    pub action: StateAction,
}

/// What a `state:` step does with its key.
#[derive(Debug)]
pub enum StateAction {
    /// Output `{found, value}`.
    Get,
    /// Output `{set: true, value}`.
    Set {
        value: ValueTemplate,
        ttl: Option<Duration>,
    },
    /// Output `{set, value}`: `set` is false when the key held a value (then `value` is it).
    SetIfAbsent {
        value: ValueTemplate,
        ttl: Option<Duration>,
    },
    /// Output `{deleted}`.
    Delete,
    /// Output `{count}`: without `window` an integer value, with it the
    /// number counted in the last `window`.
    Incr {
        by: i64,
        window: Option<Duration>,
        ttl: Option<Duration>,
    },
}

impl StateAction {
    /// The operation's key in YAML.
    pub fn name(&self) -> &'static str {
        match self {
            StateAction::Get => "get",
            StateAction::Set { .. } => "set",
            StateAction::SetIfAbsent { .. } => "set_if_absent",
            StateAction::Delete => "delete",
            StateAction::Incr { .. } => "incr",
        }
    }
}

const OPS: &str = "get, set, set_if_absent, delete or incr";

/// Check a `namespace:` (literal) at `ptr`: `Some(None)` when not given
/// (the recipe's name), `None` after reporting an error.
pub(super) fn namespace(
    cx: &mut Compiler<'_>,
    given: Option<&String>,
    ptr: &str,
) -> Option<Option<String>> {
    let Some(ns) = given else {
        return Some(None);
    };
    let problem = if ns.is_empty() {
        Some("it is empty".to_string())
    } else if ns.len() > MAX_KEY_BYTES {
        Some(format!("it is longer than {MAX_KEY_BYTES} bytes"))
    } else if ns.contains('\0') {
        Some("it contains a NUL character".to_string())
    } else if ns.starts_with("switchboard:") {
        Some("namespaces starting with `switchboard:` are the hub's own (polls keep their cursors there, OAuth2 connectors their tokens)".to_string())
    } else {
        None
    };
    match problem {
        None => Some(Some(ns.clone())),
        Some(p) => {
            cx.error(ptr, format!("invalid namespace: {p}"));
            None
        }
    }
}

/// Compile a key template at `ptr`: a literal must already be a valid key.
pub(super) fn key(cx: &mut Compiler<'_>, source: &str, ptr: &str) -> Option<Template> {
    if source.trim().is_empty() {
        cx.error(ptr, "the state key is empty: expected a key or a template such as \"tickets:{{ event.requester.email }}\"");
        return None;
    }
    if source.len() > MAX_KEY_BYTES {
        cx.error(
            ptr,
            format!("the state key is longer than {MAX_KEY_BYTES} bytes"),
        );
        return None;
    }
    cx.template(source, ptr)
}

/// A positive duration at most [`MAX_STATE_DURATION`].
pub(super) fn duration(
    cx: &mut Compiler<'_>,
    d: Duration,
    ptr: &str,
    what: &str,
) -> Option<Duration> {
    if d.is_zero() {
        cx.error(ptr, format!("`{what}` must be longer than 0"));
        None
    } else if d > MAX_STATE_DURATION {
        cx.error(
            ptr,
            format!(
                "`{what}` is longer than the maximum of {} days",
                MAX_STATE_DURATION.as_secs() / 86_400
            ),
        );
        None
    } else {
        Some(d)
    }
}

pub(super) fn compile(cx: &mut Compiler<'_>, s: &StepFile, ptr: &str) -> Option<StateStep> {
    let f: &StateFile = s.state.as_ref()?;
    let p = format!("{ptr}/state");
    let given: Vec<(&str, &String)> = [
        ("get", &f.get),
        ("set", &f.set),
        ("set_if_absent", &f.set_if_absent),
        ("delete", &f.delete),
        ("incr", &f.incr),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
    .collect();
    let (op, source) = match given.as_slice() {
        [one] => *one,
        [] => {
            cx.error(
                &p,
                format!("`state:` needs one operation: expected exactly one of {OPS} with the key"),
            );
            return None;
        }
        [_, (second, _), ..] => {
            let e = cx.map.error_at_key(
                &format!("{p}/{second}"),
                format!(
                    "`state:` does one operation, this one gives {}: expected exactly one of {OPS}",
                    given
                        .iter()
                        .map(|(k, _)| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(" and ")
                ),
            );
            cx.errors.push(e);
            return None;
        }
    };
    let before = cx.errors.len();
    let namespace = namespace(cx, f.namespace.as_ref(), &format!("{p}/namespace"));
    let key = key(cx, source, &format!("{p}/{op}"));
    // Keys that only some operations take.
    let allowed: &[&str] = match op {
        "get" | "delete" => &[],
        "set" | "set_if_absent" => &["value", "ttl"],
        _ => &["by", "window", "ttl"],
    };
    for (name, present) in [
        ("value", f.value.is_some()),
        ("ttl", f.ttl.is_some()),
        ("by", f.by.is_some()),
        ("window", f.window.is_some()),
    ] {
        if present && !allowed.contains(&name) {
            cx.error(
                &format!("{p}/{name}"),
                format!(
                    "`{name}:` does not go with `{op}:` (it takes {})",
                    if allowed.is_empty() {
                        "only the key and `namespace:`".to_string()
                    } else {
                        allowed
                            .iter()
                            .map(|a| format!("`{a}:`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ),
            );
        }
    }
    let ttl = f
        .ttl
        .and_then(|d| duration(cx, d.0, &format!("{p}/ttl"), "ttl"));
    let window = f
        .window
        .and_then(|d| duration(cx, d.0, &format!("{p}/window"), "window"));
    if f.ttl.is_some() && f.window.is_some() {
        cx.error(
            &format!("{p}/ttl"),
            "a window counter expires with its window: leave out `ttl:`",
        );
    }
    if let (Some(by), Some(_)) = (f.by, f.window) {
        if by < 0 {
            cx.error(
                &format!("{p}/by"),
                format!("a window counter only counts up: `by` is {by}, expected 0 or more"),
            );
        }
    }
    let value = |cx: &mut Compiler<'_>| match &f.value {
        Some(v) => cx.value_template(v, &format!("{p}/value")),
        None => {
            cx.error(&p, format!("`{op}:` needs `value:` (the value to store)"));
            None
        }
    };
    let action = match op {
        "get" => Some(StateAction::Get),
        "delete" => Some(StateAction::Delete),
        "set" => value(cx).map(|value| StateAction::Set { value, ttl }),
        "set_if_absent" => value(cx).map(|value| StateAction::SetIfAbsent { value, ttl }),
        _ => Some(StateAction::Incr {
            by: f.by.unwrap_or(1),
            window,
            ttl,
        }),
    };
    if cx.errors.len() > before {
        return None;
    }
    Some(StateStep {
        namespace: namespace?,
        key: key?,
        action: action?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::errors;

    const HEAD: &str = "name: r\non: { connector: zendesk, event: ticket.created }\nsteps:\n";

    fn check(steps: &str) -> Vec<String> {
        errors(&format!("{HEAD}{steps}"))
    }

    #[test]
    fn good_state_steps_load() {
        assert_eq!(
            check(concat!(
                "  - id: n\n    state: { incr: \"t:{{ event.ticket.id }}\", window: 24h }\n",
                "  - id: w\n    state: { set_if_absent: \"w:{{ event.ticket.id }}\", value: \"{{ steps.n.count }}\", ttl: 30d }\n",
                "  - state: { get: x, namespace: shared }\n",
                "  - state: { delete: x }\n",
                "  - state: { incr: load, by: -1 }\n",
            )),
            Vec::<String>::new()
        );
    }

    #[test]
    fn bad_state_steps_are_check_errors_with_positions() {
        assert_eq!(
            check("  - state: { ttl: 1h }\n"),
            ["4:12: `state:` needs one operation: expected exactly one of get, set, set_if_absent, delete or incr with the key"]
        );
        assert_eq!(
            check("  - state: { get: a, delete: b }\n"),
            ["4:22: `state:` does one operation, this one gives `get` and `delete`: expected exactly one of get, set, set_if_absent, delete or incr"]
        );
        assert_eq!(
            check("  - state: { get: \"\" }\n"),
            ["4:19: the state key is empty: expected a key or a template such as \"tickets:{{ event.requester.email }}\""]
        );
        assert_eq!(
            check("  - state: { set: a }\n"),
            ["4:12: `set:` needs `value:` (the value to store)"]
        );
        assert_eq!(
            check("  - state: { get: a, window: 1h }\n"),
            ["4:30: `window:` does not go with `get:` (it takes only the key and `namespace:`)"]
        );
        assert_eq!(
            check("  - state: { incr: a, window: 0s }\n"),
            ["4:31: `window` must be longer than 0"]
        );
        assert_eq!(
            check("  - state: { set: a, value: 1, ttl: 400d }\n"),
            ["4:37: `ttl` is longer than the maximum of 366 days"]
        );
        assert_eq!(
            check("  - state: { incr: a, window: soon }\n"),
            ["4:31: invalid duration \"soon\": expected number at 0 (expected e.g. \"250ms\", \"10s\", \"5m\")"]
        );
        assert_eq!(
            check("  - state: { incr: \"{{ steps.nope }}\" }\n"),
            ["4:20: unknown step id `nope`, expected an earlier step: (none are defined)"]
        );
    }

    #[test]
    fn bad_assign_steps_are_check_errors_with_positions() {
        assert_eq!(
            check("  - assign: { from: [] }\n"),
            ["4:21: `from:` is an empty list: expected the agents to pick from"]
        );
        assert_eq!(
            check("  - assign: { from: [a], strategy: fastest }\n"),
            ["4:36: unknown strategy `fastest`, expected round_robin or least_loaded"]
        );
        assert_eq!(
            check("  - assign: { from: [a], strategy: least_loaded }\n"),
            ["4:13: `strategy: least_loaded` needs `load:`: a template per agent (\"{{ steps.loads.by_agent[agent] }}\") or a state counter ({ key: \"open:{{ agent }}\" })"]
        );
        assert_eq!(
            check("  - assign: { from: [a], capacity: 3 }\n"),
            ["4:36: `capacity:` is compared with each agent's load: give `load:` too"]
        );
        assert_eq!(
            check("  - assign: { from: [a], skip: [ { \"$.agnt.away\": { equals: true } } ] }\n"),
            ["4:36: unknown JSONPath root `$.agnt`, expected `$.event`, `$.steps`, `$.vars` or `$.run` (or a loop variable: `$.agent`); did you mean `$.agent`?"]
        );
        assert_eq!(
            check("  - assign: { from: [a], strategy: least_loaded, load: { key: \"open:{{ agent }}\" }, skip: [ { \"$.agent.away\": { equals: true } } ] }\n"),
            Vec::<String>::new()
        );
    }
}
