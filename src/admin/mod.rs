//! Admin API: read events and runs (JSON, paginated), behind a bearer token;
//! plus `/healthz` and `/readyz`, which need no token.
//!
//! Reads the store through the engine. Its only writes are retries (through
//! the engine) and edits of recipe state ([`state`], through the store's
//! state operations).

pub mod state;

use crate::engine::Engine;
use crate::error::ApiError;
use crate::secret::Secret;
use crate::store::{Page, Retried, RunFilter, RunStatus};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Largest page the API returns.
pub const MAX_PAGE: usize = 500;

#[derive(Clone)]
pub struct AdminState {
    pub engine: Arc<Engine>,
    pub token: Secret,
    /// Queue depth above which `/readyz` answers 503 (events are still accepted).
    pub max_queue: usize,
}

pub fn router(state: AdminState) -> Router {
    let api = Router::new()
        .route("/api/events", get(list_events))
        .route("/api/events/{id}", get(show_event))
        .route("/api/runs", get(list_runs))
        .route("/api/runs/{id}", get(show_run))
        .route("/api/runs/{id}/retry", post(retry_run))
        .route("/api/runs/retry", post(retry_runs))
        .route("/api/queue", get(queue))
        .merge(state::router())
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(ready))
        .merge(api)
        .with_state(state)
}

async fn require_token(
    State(st): State<AdminState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(given.as_bytes().ct_eq(st.token.expose().as_bytes())) && !given.is_empty() {
        Ok(next.run(req).await)
    } else {
        Err(ApiError::AdminToken)
    }
}

/// Ready unless the run queue is deeper than `max_queue` (then 503, so a
/// load balancer can steer new work elsewhere; webhooks are still accepted).
async fn ready(State(st): State<AdminState>) -> Result<Response, ApiError> {
    let depth = st
        .engine
        .queue_depth()
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let (code, status) = if depth > st.max_queue {
        (StatusCode::SERVICE_UNAVAILABLE, "overloaded")
    } else {
        (StatusCode::OK, "ready")
    };
    let body = json!({"status": status, "queue_depth": depth, "max_queue": st.max_queue});
    Ok((code, Json(body)).into_response())
}

/// `GET /api/queue`: how many runs wait or are in flight.
async fn queue(State(st): State<AdminState>) -> Result<Json<Value>, ApiError> {
    let depth = st.engine.queue_depth().map_err(internal)?;
    Ok(Json(json!({
        "queue_depth": depth,
        "max_queue": st.max_queue,
        "overloaded": depth > st.max_queue
    })))
}

#[derive(Deserialize)]
struct PageQuery {
    limit: Option<usize>,
    before: Option<String>,
    status: Option<String>,
    recipe: Option<String>,
}

impl PageQuery {
    fn page(&self) -> Page {
        Page {
            limit: self.limit.unwrap_or(50).clamp(1, MAX_PAGE),
            before: self.before.clone(),
        }
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

/// `{items, next}`: `next` is the `before` cursor of the following page, null at the end.
fn paged<T: serde::Serialize>(items: Vec<T>, limit: usize, id: impl Fn(&T) -> &str) -> Json<Value> {
    let next = (items.len() >= limit)
        .then(|| items.last().map(|i| id(i).to_string()))
        .flatten();
    Json(json!({"items": items, "next": next}))
}

async fn list_events(
    State(st): State<AdminState>,
    Query(q): Query<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    let page = q.page();
    let events = st.engine.store().events(&page).map_err(internal)?;
    Ok(paged(events, page.limit, |e| &e.id))
}

async fn show_event(
    State(st): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let store = st.engine.store();
    let event = store
        .event(&id)
        .map_err(internal)?
        .ok_or_else(|| ApiError::NotFound(format!("no event {id}")))?;
    let runs: Vec<Value> = event
        .runs
        .iter()
        .filter_map(|r| store.run(r).ok().flatten())
        .map(|r| json!({"id": r.id, "recipe": r.recipe, "status": r.status, "error": r.error}))
        .collect();
    let mut v = serde_json::to_value(&event).map_err(internal)?;
    v["runs"] = Value::Array(runs);
    Ok(Json(v))
}

pub fn parse_status(s: &str) -> Result<RunStatus, ApiError> {
    serde_json::from_value(Value::String(s.to_string())).map_err(|_| {
        ApiError::BadRequest(format!(
            "unknown status `{s}`, expected queued, running, retrying, succeeded, failed or dead"
        ))
    })
}

async fn list_runs(
    State(st): State<AdminState>,
    Query(q): Query<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    let page = q.page();
    let filter = RunFilter {
        status: q.status.as_deref().map(parse_status).transpose()?,
        recipe: q.recipe.clone(),
        failures: false,
    };
    let runs = st.engine.store().runs(&page, &filter).map_err(internal)?;
    Ok(paged(runs, page.limit, |r| &r.id))
}

async fn show_run(
    State(st): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let run = st
        .engine
        .store()
        .run(&id)
        .map_err(internal)?
        .ok_or_else(|| ApiError::NotFound(format!("no run {id}")))?;
    Ok(Json(serde_json::to_value(run).map_err(internal)?))
}

/// `POST /api/runs/{id}/retry`: a failed or dead run resumes at its failed step.
async fn retry_run(
    State(st): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    match st.engine.retry(&id).map_err(internal)? {
        Retried::Queued(run) => Ok(Json(json!({"retried": [run.id]}))),
        Retried::NotFound => Err(ApiError::NotFound(format!("no run {id}"))),
        Retried::NotFailed(s) => Err(ApiError::Conflict(format!(
            "run {id} is {}; only failed or dead runs can be retried",
            serde_json::to_value(s)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        ))),
    }
}

#[derive(Deserialize)]
struct RetryQuery {
    recipe: String,
}

/// `POST /api/runs/retry?recipe=NAME`: every failed or dead run of a recipe.
async fn retry_runs(
    State(st): State<AdminState>,
    Query(q): Query<RetryQuery>,
) -> Result<Json<Value>, ApiError> {
    let ids = st.engine.retry_recipe(&q.recipe).map_err(internal)?;
    Ok(Json(json!({"retried": ids})))
}
