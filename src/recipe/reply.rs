//! `reply:` — a recipe's immediate answer to the sender of its webhook,
//! compiled and checked here; `engine::reply` renders it once the event is
//! stored.

use super::scope::{check_templates, Scope};
use crate::template::{Templates, ValueTemplate};
use crate::yaml::{LoadError, Pos, SourceMap};

/// A compiled `reply:`.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    /// Rendered over `{event, vars, run}`; JSON when `json` is true, else text.
    pub body: ValueTemplate,
    pub json: bool,
    /// Where `reply:` is, for the warning when several recipes could answer.
    pub at: Pos,
}

pub(super) fn compile(
    r: &super::config::ReplyFile,
    scope: &Scope<'_>,
    map: &SourceMap,
    templates: &mut Templates,
    errors: &mut Vec<LoadError>,
) -> Option<Reply> {
    let before = errors.len();
    let status = r.status.unwrap_or(200);
    if !(200..=299).contains(&status) {
        errors.push(map.error(
            "/reply/status",
            format!("reply status {status} is not a success, expected 200-299"),
        ));
    }
    let json = match (&r.body, r.content_type.as_deref()) {
        (serde_json::Value::String(_), None) => false,
        (serde_json::Value::String(_), Some(ct)) => is_json(ct),
        (serde_json::Value::Object(_) | serde_json::Value::Array(_), None) => true,
        (serde_json::Value::Object(_) | serde_json::Value::Array(_), Some(ct)) => {
            if !is_json(ct) {
                errors.push(map.error(
                    "/reply/content_type",
                    format!("a mapping or list `body` is sent as JSON, so `content_type` must be a JSON type, not `{ct}`"),
                ));
            }
            true
        }
        (_, _) => {
            errors.push(map.error(
                "/reply/body",
                "`body` must be a string (text) or a mapping or list (JSON)",
            ));
            false
        }
    };
    if let Some(ct) = &r.content_type {
        if ct.parse::<http::HeaderValue>().is_err() || ct.trim().is_empty() {
            errors.push(map.error(
                "/reply/content_type",
                format!("invalid content type `{ct}`"),
            ));
        }
    }
    let body = templates.compile_value_at(&r.body, map, "/reply/body", errors);
    if let Some(t) = &body {
        check_templates(t, "/reply/body", scope, templates, map, errors);
    }
    if errors.len() > before {
        return None;
    }
    Some(Reply {
        status,
        content_type: r.content_type.clone().unwrap_or_else(|| {
            if json {
                "application/json".into()
            } else {
                "text/plain; charset=utf-8".into()
            }
        }),
        body: body?,
        json,
        at: map.locate_key("/reply"),
    })
}

fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence.ends_with("+json")
}
