//! Admin API: read events and runs (JSON, paginated), behind a bearer token;
//! `/metrics` (Prometheus), behind the token unless `--metrics-public`;
//! plus `/healthz` and `/readyz`, which need no token.
//!
//! The answers come from [`queries`] (events and runs) and [`state`] (recipe
//! state), typed and shared with the CLI. Reads the store through the
//! engine; its only writes are run retries (through the engine, which wakes
//! the workers) and edits of recipe state (through the store's state
//! operations).

pub mod queries;
pub mod state;

use crate::engine::Engine;
use crate::error::ApiError;
use crate::secret::Secret;
use crate::store::{Event, Run};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use queries::{EventView, Listing, PageQuery, QueryError, RetriedRuns, RunsQuery};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use subtle::ConstantTimeEq;

#[derive(Clone)]
pub struct AdminState {
    pub engine: Arc<Engine>,
    pub token: Secret,
    /// Queue depth above which `/readyz` answers 503 (events are still accepted).
    pub max_queue: usize,
    /// Serve `/metrics` without the token (`--metrics-public`), for a
    /// scraper on a network the operator trusts.
    pub metrics_public: bool,
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
        .merge(state::router());
    let metrics_route = Router::new().route("/metrics", get(metrics));
    let (api, open) = if state.metrics_public {
        (api, metrics_route)
    } else {
        (api.merge(metrics_route), Router::new())
    };
    let api = api.route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(ready))
        .merge(open)
        .merge(api)
        .with_state(state)
}

/// `GET /metrics`: the process's metrics in the OpenMetrics text format,
/// with the queue and the breakers read now.
async fn metrics(State(st): State<AdminState>) -> Result<Response, ApiError> {
    let snapshot = st.engine.metrics_snapshot()?;
    let text = crate::metrics::get()
        .encode(&snapshot)
        .map_err(|e| ApiError::Unavailable(format!("encoding metrics: {e}")))?;
    Ok(([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response())
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
    if let Err(e) = st.engine.store().healthy() {
        let body = json!({"status": "store_unavailable", "store": e.to_string()});
        return Ok((StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response());
    }
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
    let depth = st.engine.queue_depth()?;
    Ok(Json(json!({
        "queue_depth": depth,
        "max_queue": st.max_queue,
        "overloaded": depth > st.max_queue
    })))
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::NotFound { .. } => ApiError::NotFound(e.to_string()),
            QueryError::UnknownStatus { .. } => ApiError::BadRequest(e.to_string()),
            QueryError::NotRetryable { .. } => ApiError::Conflict(e.to_string()),
            QueryError::Store(e) => e.into(),
        }
    }
}

async fn list_events(
    State(st): State<AdminState>,
    Query(q): Query<PageQuery>,
) -> Result<Json<Listing<Event>>, ApiError> {
    Ok(Json(queries::events(&**st.engine.store(), &q)?))
}

async fn show_event(
    State(st): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<EventView>, ApiError> {
    Ok(Json(queries::event(&**st.engine.store(), &id)?))
}

async fn list_runs(
    State(st): State<AdminState>,
    Query(q): Query<RunsQuery>,
) -> Result<Json<Listing<Run>>, ApiError> {
    Ok(Json(queries::runs(&**st.engine.store(), &q)?))
}

async fn show_run(
    State(st): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<Run>, ApiError> {
    Ok(Json(queries::run(&**st.engine.store(), &id)?))
}

/// `POST /api/runs/{id}/retry`: a failed or dead run resumes at its failed step.
async fn retry_run(
    State(st): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<RetriedRuns>, ApiError> {
    Ok(Json(queries::retried(&id, st.engine.retry(&id)?)?))
}

#[derive(Deserialize)]
struct RetryQuery {
    recipe: String,
}

/// `POST /api/runs/retry?recipe=NAME`: every failed or dead run of a recipe.
async fn retry_runs(
    State(st): State<AdminState>,
    Query(q): Query<RetryQuery>,
) -> Result<Json<RetriedRuns>, ApiError> {
    let retried = st.engine.retry_recipe(&q.recipe)?;
    Ok(Json(RetriedRuns { retried }))
}
