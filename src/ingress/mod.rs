//! Ingress: `POST /hooks/{connector}`.
//!
//! Reads the body within the size limit, verifies the signature the
//! connector's `webhook:` section declares ([`crate::signature`]), parses JSON or
//! form bodies, reads the event type and delivery id, and hands the event to
//! the engine, answering only once it is stored durably. Knows HTTP and
//! signatures, nothing about recipes. Bad input is answered with a JSON error
//! and changes nothing.

use crate::connector::{Connector, Field, Webhook};
use crate::engine::{Catalog, Engine, Incoming};
use crate::error::ApiError;
use crate::metrics;
use crate::signature;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Map, Value};
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Arc;

/// What the webhook routes need.
#[derive(Clone)]
pub struct IngressState {
    pub engine: Arc<Engine>,
    /// Largest accepted body, in bytes.
    pub body_limit: usize,
    /// The URL senders use to reach the hub (for schemes that sign the URL), e.g. `https://hooks.example.com`.
    pub public_url: Option<String>,
    /// `serve --backpressure`: refuse webhooks while the queue is too deep.
    pub backpressure: Option<Arc<Backpressure>>,
}

/// Back-pressure (`serve --backpressure`): while the run queue is deeper
/// than `--max-queue`, webhooks are answered 503 + `Retry-After` before
/// anything is read or stored, so a sender that retries holds the backlog
/// instead of the hub. The depth is sampled (every [`Backpressure::EVERY`])
/// off the request path, so a request pays one atomic load.
pub struct Backpressure {
    max_queue: usize,
    depth: AtomicUsize,
}

impl Backpressure {
    /// How often the queue depth is sampled.
    pub const EVERY: std::time::Duration = std::time::Duration::from_millis(100);

    pub fn new(max_queue: usize) -> Backpressure {
        Backpressure {
            max_queue,
            depth: AtomicUsize::new(0),
        }
    }

    fn overloaded(&self) -> bool {
        self.depth.load(AtomicOrdering::Relaxed) > self.max_queue
    }

    /// Sample the queue depth until `stop` turns true.
    pub async fn sample(
        self: Arc<Self>,
        engine: Arc<Engine>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        while !*stop.borrow() {
            let e = engine.clone();
            if let Ok(Ok(depth)) = tokio::task::spawn_blocking(move || e.queue_depth()).await {
                self.depth.store(depth, AtomicOrdering::Relaxed);
            }
            tokio::select! {
                _ = tokio::time::sleep(Self::EVERY) => {}
                _ = stop.changed() => {}
            }
        }
    }
}

pub fn router(state: IngressState) -> Router {
    Router::new()
        .route("/hooks/{connector}", post(receive))
        .with_state(state)
}

/// Every answer to a webhook is counted, by connector (a loaded one's
/// name: the path segment is the sender's) and status.
async fn receive(
    State(st): State<IngressState>,
    Path(name): Path<String>,
    req: Request<Body>,
) -> Response {
    let catalog = st.engine.catalog();
    let connector = catalog.connectors.get(&name);
    let resp = match connector.and_then(|c| Some((c, c.webhook.as_ref()?))) {
        Some((c, webhook)) => handle(&st, &catalog, c, webhook, req).await.into_response(),
        None => ApiError::NotFound(format!("no webhook connector named `{name}`")).into_response(),
    };
    let label = connector.map_or(metrics::UNKNOWN_CONNECTOR, |c| c.name.as_str());
    metrics::get().webhook(label, resp.status().as_u16());
    resp
}

/// One delivery to a connector with a `webhook:`.
async fn handle(
    st: &IngressState,
    catalog: &Catalog,
    connector: &Connector,
    webhook: &Webhook,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let name = connector.name.as_str();
    let (
        Parts {
            method,
            uri,
            headers,
            ..
        },
        body,
    ) = req.into_parts();

    if st.backpressure.as_ref().is_some_and(|b| b.overloaded()) {
        return Err(ApiError::Unavailable(
            "the run queue is over --max-queue; retry later".into(),
        ));
    }
    let too_large = || ApiError::TooLarge(st.body_limit);
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if len > st.body_limit {
            return Err(too_large());
        }
    }
    let bytes: Bytes = axum::body::to_bytes(body, st.body_limit)
        .await
        .map_err(|e| {
            if crate::listener::is_body_timeout(&e) {
                ApiError::Timeout(e.to_string())
            } else {
                too_large()
            }
        })?;

    let url = match &st.public_url {
        Some(base) => format!(
            "{}{}",
            base.trim_end_matches('/'),
            uri.path_and_query().map(|p| p.as_str()).unwrap_or("")
        ),
        None => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("localhost");
            format!(
                "http://{host}{}",
                uri.path_and_query().map(|p| p.as_str()).unwrap_or("")
            )
        }
    };
    let request = signature::Request {
        method: method.as_str(),
        url: &url,
        headers: &headers,
        body: &bytes,
    };
    let verified = webhook
        .verifier
        .verify(&request, crate::store::now_ms() / 1000)
        .map_err(|e| {
            tracing::warn!(connector = %name, check = e.check(), "webhook refused");
            metrics::get().signature_failure(name, e.check());
            ApiError::Unauthorized {
                check: e.check(),
                message: e.to_string(),
            }
        })?;

    let replay = replay_guard(webhook, &verified, &bytes);
    let mut body = parse_body(&headers, &bytes)?;
    // A token sent in the body (Wufoo's `HandshakeKey`) is a secret: it was
    // checked above and is not stored with the event.
    if let (Some(field), Value::Object(fields)) = (webhook.verifier.secret_field(), &mut body) {
        fields.remove(field);
    }
    let body = webhook
        .normalize(&catalog.templates, body)
        .map_err(|e| {
            ApiError::BadRequest(format!(
                "the body could not be read into connector `{name}`'s event shape (`webhook.normalize`): {e}"
            ))
        })?;
    let event_type = webhook
        .event_type
        .as_ref()
        .and_then(|f| read_field(f, &headers, &body));
    let delivery_id = verified.delivery_id.or_else(|| {
        webhook
            .event_id
            .as_ref()
            .and_then(|f| read_field(f, &headers, &body))
    });

    let accepted = st
        .engine
        .accept(Incoming {
            connector: connector.name.clone(),
            event_type: event_type.clone(),
            delivery_id,
            body,
            replay,
            origin: crate::store::Origin::Webhook,
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "storing an event failed");
            ApiError::Unavailable("the event could not be stored; retry later".into())
        })?;
    tracing::info!(connector = %name, event = %accepted.event_id, event_type = event_type.as_deref(), runs = accepted.runs.len(), duplicate = accepted.duplicate, "webhook accepted");
    // A recipe's `reply:` answers the sender instead of the default JSON.
    if let Some(answer) = accepted.reply.clone() {
        let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
        let mut resp = (status, answer.body).into_response();
        let h = resp.headers_mut();
        if let Ok(v) = axum::http::HeaderValue::from_str(&answer.content_type) {
            h.insert(axum::http::header::CONTENT_TYPE, v);
        }
        if let Ok(v) = axum::http::HeaderValue::from_str(&accepted.event_id) {
            h.insert(crate::engine::reply::EVENT_HEADER, v);
        }
        return Ok(resp);
    }
    let status = if accepted.duplicate {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(accepted)).into_response())
}

/// How a verified request's replay is refused: by what was signed (a
/// scheme with a timestamp: for as long as the timestamp is fresh), or by
/// the body within the connector's `dedupe_window`. `None`: it is not
/// (`check` warns).
fn replay_guard(
    webhook: &Webhook,
    verified: &signature::Verified,
    body: &[u8],
) -> Option<crate::store::ReplayGuard> {
    use sha2::Digest;
    if let Some(key) = webhook.verifier.replay_key(verified, body) {
        return Some(crate::store::ReplayGuard {
            key,
            window_ms: None,
        });
    }
    let window = webhook.dedupe_window?;
    Some(crate::store::ReplayGuard {
        key: format!("body:{}", hex::encode(sha2::Sha256::digest(body))),
        window_ms: Some(window.as_millis().min(i64::MAX as u128) as i64),
    })
}

/// JSON, or form fields as a JSON object (a repeated field becomes a list).
pub fn parse_body(headers: &HeaderMap, bytes: &[u8]) -> Result<Value, ApiError> {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if ctype.starts_with("application/x-www-form-urlencoded") {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(bytes)
            .map_err(|e| ApiError::BadRequest(format!("malformed form body: {e}")))?;
        let mut obj = Map::new();
        for (k, v) in pairs {
            match obj.get_mut(&k) {
                None => {
                    obj.insert(k, Value::String(v));
                }
                Some(Value::Array(list)) => list.push(Value::String(v)),
                Some(prev) => {
                    let first = prev.take();
                    *prev = Value::Array(vec![first, Value::String(v)]);
                }
            }
        }
        return Ok(Value::Object(obj));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest(
            "empty body, expected a JSON document".into(),
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::BadRequest(format!(
            "malformed JSON at line {} column {}: {e}",
            e.line(),
            e.column()
        ))
    })
}

fn read_field(field: &Field, headers: &HeaderMap, body: &Value) -> Option<String> {
    let header = |h: &str| {
        headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    field.read(header, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_bodies_become_objects() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded".parse().unwrap(),
        );
        let v = parse_body(&h, b"a=1&b=x+y&a=2").unwrap();
        assert_eq!(v, serde_json::json!({"a": ["1", "2"], "b": "x y"}));
    }

    #[test]
    fn malformed_json_names_the_position() {
        let h = HeaderMap::new();
        let e = parse_body(&h, b"{\n \"a\": }").unwrap_err();
        assert!(e.to_string().contains("line 2 column"), "{e}");
    }
}
