//! `wait`, `wait_until`, `wait_for`: park the run, and complete the step
//! once it is woken (its time came, or the awaited event arrived).
//!
//! The first time the walker reaches the step it computes the end of the
//! wait and the correlation keys (the `wait_for` key and the recipe's
//! `cancel_on` keys, rendered on this run's context) and asks the host to
//! park the run: the worker writes it `waiting` with its queue entry at the
//! end and its keys, in one batch, and lets it go. When the run comes back
//! (the timer, or an event that woke it), the walker replays up to this
//! step, finds the parked state for its path, and records the step's
//! output — so the wait completes once, whatever happens around it.

use super::{Flow, Host, Outcome, Walker};
use crate::recipe::{Step, StepKind};
use crate::store::{Correlation, Listen, Parked};
use crate::time::{describe_ms, MAX_WAIT_MS};
use serde_json::{json, Value};

/// The listener tag of a `wait_for` step (static step id, so a nested
/// instance matches its step's listener too).
pub(crate) fn wait_tag(recipe: &str, step_id: &str) -> String {
    format!("{recipe}\0{step_id}")
}

pub(super) async fn execute<H: Host>(w: &mut Walker<'_, H>, step: &Step, path: &str) -> Flow {
    let now = w.ctx["run"]["now"].as_i64().unwrap_or_default();
    if let Some(p) = w.host.parked().filter(|p| p.step == path).cloned() {
        if p.woken_by.is_some() || now >= p.until {
            let output = match (&step.kind, &p.woken_by) {
                (StepKind::WaitFor(_), Some(id)) => {
                    let body = w.host.event(id).await.unwrap_or(Value::Null);
                    json!({"timed_out": false, "event": body, "event_id": id})
                }
                (StepKind::WaitFor(_), None) => {
                    json!({"timed_out": true, "event": null, "event_id": null})
                }
                _ => json!({"until": p.until, "woke_at": now}),
            };
            w.host.unpark();
            let input = json!({"since": p.since, "until": p.until});
            return w.succeed(step, path, input, output);
        }
        // Leased before its time (a lease released at start-up): park again.
        return park(w, p).await;
    }
    let templates = &w.catalog.templates;
    let until = match &step.kind {
        StepKind::Wait(s) => now + s.ms,
        StepKind::WaitFor(f) => match &f.calendar {
            None => now + f.timeout_ms,
            Some(cal) => {
                let due = jiff::Timestamp::from_millisecond(now)
                    .ok()
                    .and_then(|t| cal.add_open_time(t, f.timeout_ms));
                match due {
                    Some(t) => t.as_millisecond(),
                    None => {
                        let error = format!(
                            "wait_for of recipe `{}`: calendar `{}` is not open for {} within two years",
                            w.recipe.name,
                            cal.name,
                            describe_ms(f.timeout_ms)
                        );
                        return w.fail(path, &step.kind, Value::Null, error);
                    }
                }
            }
        },
        StepKind::WaitUntil(u) => {
            let at = templates
                .render(&u.until, &w.ctx)
                .map_err(|e| e.0)
                .and_then(|v| crate::time::instant(&v).map_err(|e| e.0));
            match at {
                Ok(t) => t.as_millisecond(),
                Err(e) => {
                    let error = format!("wait_until of recipe `{}`: {e}", w.recipe.name);
                    return w.fail(path, &step.kind, Value::Null, error);
                }
            }
        }
        _ => unreachable!("wait::execute is called for wait steps only"),
    };
    if until - now > MAX_WAIT_MS {
        let error = format!(
            "wait_until is {} ahead, more than the maximum of {}",
            describe_ms(until - now),
            describe_ms(MAX_WAIT_MS)
        );
        return w.fail(path, &step.kind, json!({"until": until}), error);
    }
    if until <= now {
        // A time already past: nothing to wait for.
        let output = json!({"until": until, "woke_at": now});
        let input = json!({"since": now, "until": until});
        return w.succeed(step, path, input, output);
    }
    let mut keys = Vec::new();
    if let StepKind::WaitFor(f) = &step.kind {
        let a = &f.awaited;
        match templates.render_string(&a.key, &w.ctx) {
            Ok(k) if !k.is_empty() => keys.push(Correlation {
                listen: Listen::Wake,
                connector: a.connector.clone(),
                event_type: a.event.clone(),
                key: k,
                tag: wait_tag(&w.recipe.name, &step.id),
            }),
            Ok(_) => {
                let error = "the wait_for key rendered empty, so no event could match it";
                return w.fail(path, &step.kind, Value::Null, error.into());
            }
            Err(e) => {
                let error = format!("wait_for key of recipe `{}`: {e}", w.recipe.name);
                return w.fail(path, &step.kind, Value::Null, error);
            }
        }
    }
    for (i, c) in w.recipe.cancel_on.iter().enumerate() {
        match templates.render_string(&c.key, &w.ctx) {
            Ok(k) if !k.is_empty() => keys.push(Correlation {
                listen: Listen::Cancel,
                connector: c.connector.clone(),
                event_type: c.event.clone(),
                key: k,
                tag: w.recipe.name.clone(),
            }),
            Ok(_) => {
                let error =
                    format!("cancel_on[{i}] key rendered empty, so no event could cancel this run");
                return w.fail(path, &step.kind, Value::Null, error);
            }
            Err(e) => {
                let error = format!("cancel_on[{i}] key of recipe `{}`: {e}", w.recipe.name);
                return w.fail(path, &step.kind, Value::Null, error);
            }
        }
    }
    let parked = Parked {
        step: path.to_string(),
        until,
        since: now,
        keys,
        woken_by: None,
    };
    park(w, parked).await
}

async fn park<H: Host>(w: &mut Walker<'_, H>, parked: Parked) -> Flow {
    w.host.park(parked).await;
    Flow::Halt(Outcome::Suspended)
}
