//! `wait`, `wait_until` and `wait_for`: durable waits, and the awaited-event
//! patterns they share with a recipe's `cancel_on:`.
//!
//! A wait parks the run in the store (status `waiting`, due at its end)
//! instead of holding a worker; `engine::step::wait` executes it. An
//! awaited event ([`Awaited`]) is matched at ingest by an indexed key: the
//! waiting run's `key` rendered when it parks, the incoming event's `match`
//! rendered when it arrives.

use super::Compiler;
use crate::recipe::condition::Condition;
use crate::recipe::scope::{check_templates, Scope};
use crate::template::{Template, ValueTemplate};
use crate::time::{parse_duration, MAX_WAIT_MS};
use serde_json::Value;

/// `wait: 3d`.
#[derive(Debug)]
pub struct WaitStep {
    pub ms: i64,
}

/// `wait_until: "{{ ... }}"`: a template giving an instant.
#[derive(Debug)]
pub struct WaitUntilStep {
    pub until: Template,
}

/// `wait_for: { event, connector, key, match, if, timeout }`.
#[derive(Debug)]
pub struct WaitForStep {
    pub awaited: Awaited,
    pub timeout_ms: i64,
    /// `calendar:`: the timeout counts this calendar's business hours only.
    pub calendar: Option<std::sync::Arc<crate::time::Calendar>>,
}

/// An event a waiting run listens for (`wait_for`, `cancel_on`).
#[derive(Debug, Clone)]
pub struct Awaited {
    pub connector: String,
    pub event: String,
    /// Over the waiting run's context, rendered when it parks.
    pub key: Template,
    /// Over the incoming event's context `{event, vars, run}`.
    pub matcher: Template,
    /// Over the incoming event's context.
    pub condition: Option<Condition>,
}

pub(super) fn compile_wait(cx: &mut Compiler<'_>, text: &str, ptr: &str) -> Option<WaitStep> {
    match duration(text, cx.var_values) {
        Ok(ms) => Some(WaitStep { ms }),
        Err(e) => {
            cx.error(&format!("{ptr}/wait"), e.0);
            None
        }
    }
}

pub(super) fn compile_wait_until(
    cx: &mut Compiler<'_>,
    source: &str,
    ptr: &str,
) -> Option<WaitUntilStep> {
    let until = cx.template(source, &format!("{ptr}/wait_until"))?;
    if let Template::Literal(text) = &until {
        // A fixed time is checked now, not on the first run.
        if let Err(e) = crate::time::parse_instant(text) {
            cx.error(&format!("{ptr}/wait_until"), e.0);
            return None;
        }
    }
    Some(WaitUntilStep { until })
}

pub(super) fn compile_wait_for(
    cx: &mut Compiler<'_>,
    f: &crate::recipe::config::WaitForFile,
    ptr: &str,
) -> Option<WaitForStep> {
    let p = format!("{ptr}/wait_for");
    let timeout = duration(&f.timeout, cx.var_values)
        .map_err(|e| cx.error(&format!("{p}/timeout"), e.0))
        .ok();
    let awaited = awaited(
        cx,
        Pattern {
            event: &f.event,
            connector: f.connector.as_deref(),
            key: &f.key,
            matcher: f.matcher.as_deref(),
            condition: f.condition.as_ref(),
        },
        &p,
    );
    let calendar = match &f.calendar {
        None => Some(None),
        Some(name) => match cx.calendars.get(name) {
            Some(c) => Some(Some(c.clone())),
            None => {
                let e = crate::time::calendar::unknown(name, cx.calendars);
                cx.error(&format!("{p}/calendar"), e.0);
                None
            }
        },
    };
    Some(WaitForStep {
        awaited: awaited?,
        timeout_ms: timeout?,
        calendar: calendar?,
    })
}

/// A wait's duration: literal (`12h`), or exactly `{{ vars.NAME }}` of a
/// var holding one, fixed when the recipe loads (so a test or a team can
/// change the SLA in one place, and `check` still checks it).
fn duration(text: &str, vars: &Value) -> Result<i64, crate::time::TimeError> {
    let var = text
        .trim()
        .strip_prefix("{{")
        .and_then(|t| t.strip_suffix("}}"))
        .and_then(|t| t.trim().strip_prefix("vars."));
    let Some(name) = var else {
        return parse_duration(text, MAX_WAIT_MS);
    };
    match vars.get(name) {
        Some(Value::String(d)) => parse_duration(d, MAX_WAIT_MS)
            .map_err(|e| crate::time::TimeError(format!("vars.{name}: {}", e.0))),
        Some(_) => Err(crate::time::TimeError(format!(
            "vars.{name} must be a duration such as `12h`"
        ))),
        None => Err(crate::time::TimeError(format!(
            "unknown var `{name}`: a duration may be `{{{{ vars.NAME }}}}` of a declared var"
        ))),
    }
}

/// The fields of a `wait_for` / `cancel_on` entry.
pub(crate) struct Pattern<'a> {
    pub event: &'a str,
    pub connector: Option<&'a str>,
    pub key: &'a str,
    pub matcher: Option<&'a str>,
    pub condition: Option<&'a Value>,
}

/// Compile an awaited-event pattern at `ptr`.
pub(crate) fn awaited(cx: &mut Compiler<'_>, f: Pattern<'_>, ptr: &str) -> Option<Awaited> {
    let before = cx.errors.len();
    let connector = match (f.connector, cx.trigger_connector) {
        (Some(c), _) => Some(c.to_string()),
        (None, Some(c)) => Some(c.to_string()),
        (None, None) => {
            cx.error(
                ptr,
                "give `connector:`: the recipe's trigger is not a webhook, so there is no default",
            );
            None
        }
    };
    if let Some(c) = &connector {
        let at = if f.connector.is_some() {
            format!("{ptr}/connector")
        } else {
            ptr.to_string()
        };
        match cx.connectors.get(c) {
            None => {
                let mut names: Vec<&String> = cx.connectors.by_name.keys().collect();
                names.sort();
                let names: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
                cx.error(
                    &at,
                    format!(
                        "unknown connector `{c}`, expected one of {}",
                        names.join(", ")
                    ),
                );
            }
            Some(conn) if conn.webhook.is_none() => cx.error(
                &at,
                format!("connector `{c}` has no `webhook:` section, so it sends no events"),
            ),
            Some(_) => {}
        }
    }
    let key = cx.template(f.key, &format!("{ptr}/key"));
    // `match` and `if` see the incoming event: `{event, vars, run}`, no steps.
    let incoming = Scope {
        steps: &[],
        outputs: &crate::recipe::scope::NO_OUTPUTS,
        vars: cx.vars,
        locals: &[],
        calendars: cx.calendars,
    };
    let mptr = format!("{ptr}/match");
    // Without `match:`, the key is also the matcher (compiled above).
    let matcher = match f.matcher {
        None => key.clone(),
        Some(m) => {
            let t = cx.templates.compile_at(m, cx.map, &mptr, cx.errors);
            if let Some(t) = &t {
                let t = ValueTemplate::String(t.clone());
                check_templates(&t, &mptr, &incoming, cx.templates, cx.map, cx.errors);
            }
            t
        }
    };
    let condition = f
        .condition
        .and_then(|v| incoming.condition(v, &format!("{ptr}/if"), cx.map, cx.templates, cx.errors));
    if cx.errors.len() > before {
        return None;
    }
    Some(Awaited {
        connector: connector?,
        event: f.event.to_string(),
        key: key?,
        matcher: matcher?,
        condition,
    })
}
