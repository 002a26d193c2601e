//! The answer to the sender of a webhook, from a matching recipe's `reply:`.
//!
//! Rendered by [`Engine::accept`] once the event and its runs are durable,
//! over `{event, vars, run}` (`run`: the replying recipe's run of this
//! event — `id`, `event_id`, `recipe`, `now`). When several matching
//! recipes declare a `reply:`, the first by recipe name answers (`check`
//! warns about such recipes). A reply that does not render never loses the
//! event: the sender gets the documented fallback — the reply's status with
//! an empty body — and the failure is logged.

use super::Engine;
use crate::recipe::reply::Reply;
use crate::recipe::Recipe;
use serde_json::{json, Value};

/// A rendered answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
}

/// The header naming the stored event on a `reply:` answer (the default
/// answer has the id in its JSON body).
pub const EVENT_HEADER: &str = "X-Switchboard-Event";

/// Render `recipe`'s reply for the accepted event (or its fallback).
pub(super) fn answer(
    templates: &crate::template::Templates,
    recipe: &Recipe,
    reply: &Reply,
    event: &Value,
    accepted: &super::Accepted,
    run_id: Option<String>,
    now: i64,
) -> Answer {
    let ctx = json!({
        "event": event,
        "vars": recipe.vars,
        "steps": {},
        "run": { "id": run_id, "event_id": accepted.event_id, "recipe": recipe.name, "now": now },
    });
    let body = templates.render_value(&reply.body, &ctx).and_then(|v| {
        Ok(match v {
            Value::String(s) if !reply.json => s.into_bytes(),
            v if reply.json => {
                serde_json::to_vec(&v).map_err(|e| crate::template::TemplateError(e.to_string()))?
            }
            other => other.to_string().into_bytes(),
        })
    });
    match body {
        Ok(body) => Answer {
            status: reply.status,
            content_type: reply.content_type.clone(),
            body,
        },
        Err(e) => {
            tracing::warn!(recipe = %recipe.name, event = %accepted.event_id, error = %e, "reply did not render; answering with an empty body");
            Answer {
                status: reply.status,
                content_type: "text/plain; charset=utf-8".into(),
                body: Vec::new(),
            }
        }
    }
}

/// The run of `recipe` among a stored event's runs (for a repeated delivery).
pub(super) fn run_of(engine: &Engine, recipe: &Recipe, runs: &[String]) -> Option<String> {
    runs.iter()
        .find(|id| {
            engine
                .store
                .run(id)
                .ok()
                .flatten()
                .is_some_and(|r| r.recipe == recipe.name)
        })
        .cloned()
}
