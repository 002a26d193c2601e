//! Admin API: read events and runs (JSON, paginated), behind a bearer token;
//! `/metrics` (Prometheus), behind the token unless `--metrics-public`;
//! plus `/healthz` and `/readyz`, which need no token.
//!
//! The answers come from [`queries`] (events and runs) and [`state`] (recipe
//! state), typed and shared with the CLI. Reads the store through the
//! engine; its only writes are run retries (through the engine, which wakes
//! the workers) and edits of recipe state (through the store's state
//! operations).

pub mod console;
pub mod queries;
pub mod replay;
pub mod state;

use crate::engine::Engine;
use crate::error::{ApiError, ErrorBody};
use crate::secret::Secret;
use crate::store::{Event, Run};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use console::{
    CatalogView, ConnectorView, Console, FileCheck, Overview, RangeQuery, RecipeDetail,
    RecipeSummary, ReloadAnswer,
};
use queries::{EventView, EventsQuery, Listing, QueryError, RetriedRuns, RunsQuery};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

#[derive(Clone)]
pub struct AdminState {
    pub engine: Arc<Engine>,
    pub token: Secret,
    /// Queue depth above which `/readyz` answers 503 (events are still accepted).
    pub max_queue: usize,
    /// Serve `/metrics` without the token (`--metrics-public`), for a
    /// scraper on a network the operator trusts.
    pub metrics_public: bool,
    /// The directories and secrets `serve` loaded, for `/api/check`.
    pub files: console::Files,
}

/// The admin API's OpenAPI description: info, the bearer scheme and tags.
/// The paths come from the handlers' `#[utoipa::path]` attributes as they
/// are registered in [`api`], so a route cannot exist undocumented.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Switchboard admin API",
        description = "Events, runs, retries, recipe state and the queue of a Switchboard hub. \
            Every route needs `Authorization: Bearer <admin token>`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    modifiers(&BearerToken),
    security(("admin_token" = [])),
    tags(
        (name = "events", description = "Accepted webhook deliveries"),
        (name = "runs", description = "Recipe runs, their step records, retries"),
        (name = "state", description = "Recipe state: values, window counters, rotations"),
        (name = "hub", description = "The hub itself: queue, overview, connectors, files"),
        (name = "recipes", description = "Loaded recipes, their last 24 hours, and replays of stored events")
    )
)]
struct ApiDoc;

/// Adds the `admin_token` bearer scheme the document's `security` names.
struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Every `/api` route, each registered with its OpenAPI operation.
fn api() -> OpenApiRouter<AdminState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(list_events))
        .routes(routes!(show_event))
        .routes(routes!(list_runs))
        .routes(routes!(show_run))
        .routes(routes!(retry_run))
        .routes(routes!(retry_runs))
        .routes(routes!(queue))
        .routes(routes!(overview))
        .routes(routes!(connectors))
        .routes(routes!(polls))
        .routes(routes!(recipes))
        .routes(routes!(recipe))
        .routes(routes!(check))
        .routes(routes!(catalog))
        .routes(routes!(reload))
        .routes(routes!(replay_recipe))
        .routes(routes!(store_stats))
        .merge(state::api())
}

/// The admin API's OpenAPI 3.1 document (served at `/api/openapi.json`,
/// kept in `docs/openapi.json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    described(api().into_openapi())
}

/// Every response without a description gets its status's reason phrase
/// (`OK`, `Not Found`): OpenAPI requires one, and the handlers' attributes
/// need not repeat it.
fn described(mut doc: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    for item in doc.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for op in operations.into_iter().flatten() {
            for (code, response) in op.responses.responses.iter_mut() {
                if let utoipa::openapi::RefOr::T(r) = response {
                    if r.description.is_empty() {
                        r.description = StatusCode::from_bytes(code.as_bytes())
                            .ok()
                            .and_then(|s| s.canonical_reason())
                            .unwrap_or("Answer")
                            .to_string();
                    }
                }
            }
        }
    }
    doc
}

/// The OpenAPI document as served and committed: pretty JSON, one final newline.
pub fn openapi_json() -> String {
    let mut text = openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

pub fn router(state: AdminState) -> Router {
    let (api, doc) = api().split_for_parts();
    let doc = described(doc);
    let doc = Arc::new({
        let mut text = doc.to_pretty_json().unwrap_or_default();
        text.push('\n');
        text
    });
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
        // The document describes the API, it holds no data (and is in the repo).
        .route(
            OPENAPI_PATH,
            get(move || async move {
                ([(header::CONTENT_TYPE, "application/json")], (*doc).clone())
            }),
        )
        .merge(open)
        .merge(api)
        .with_state(state)
}

/// Where the OpenAPI document is served, without the token.
pub const OPENAPI_PATH: &str = "/api/openapi.json";

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
    if console::token_matches(&st.token, given) {
        Ok(next.run(req).await)
    } else {
        Err(ApiError::AdminToken)
    }
}

/// Ready unless the run queue is deeper than `max_queue` (then 503, so a
/// load balancer can steer new work elsewhere; webhooks are still accepted).
/// `catalog.status` is `stale` while the files on disk failed to reload.
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
    // A stale catalog does not make the hub unready: it serves the last
    // good files. It is said here, for a person or a probe that reads it.
    let catalog = st.engine.catalogs().status();
    let body = json!({
        "status": status,
        "queue_depth": depth,
        "max_queue": st.max_queue,
        "catalog": {
            "version": catalog.version,
            "status": if catalog.stale.is_some() { "stale" } else { "current" },
            "errors": catalog.stale.map(|s| s.errors).unwrap_or_default(),
        },
    });
    Ok((code, Json(body)).into_response())
}

/// The run queue's depth and its bound.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QueueView {
    /// Runs due or in flight (parked runs not counted).
    pub queue_depth: usize,
    /// `--max-queue`: above it `/readyz` answers 503.
    pub max_queue: usize,
    pub overloaded: bool,
}

/// How many runs wait or are in flight.
#[utoipa::path(get, path = "/api/queue", tag = "hub",
    responses((status = 200, body = QueueView), (status = 401, body = ErrorBody)))]
async fn queue(State(st): State<AdminState>) -> Result<Json<QueueView>, ApiError> {
    let depth = st.engine.queue_depth()?;
    Ok(Json(QueueView {
        queue_depth: depth,
        max_queue: st.max_queue,
        overloaded: depth > st.max_queue,
    }))
}

/// Whether to recount the store by a full scan.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct StatsQuery {
    /// Also recount everything from the records and check the index
    /// (slow on a big store; status-changing writes wait meanwhile).
    #[serde(default)]
    scan: bool,
    /// Also count keys and bytes by key prefix (a full scan of the
    /// embedded store; nothing waits for it). 400 on PostgreSQL.
    #[serde(default)]
    keys: bool,
}

/// What the store holds: counts (from counters, no scan) and bytes on disk.
#[utoipa::path(get, path = "/api/store/stats", tag = "hub", params(StatsQuery),
    responses((status = 200, body = crate::store::StoreStats), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn store_stats(
    State(st): State<AdminState>,
    Query(q): Query<StatsQuery>,
) -> Result<Json<crate::store::StoreStats>, ApiError> {
    let store = st.engine.store();
    let mut stats = store.stats(q.scan)?;
    if q.keys {
        stats.keys = store
            .key_usage()?
            .ok_or_else(|| ApiError::BadRequest(crate::store::NO_KEY_USAGE.into()))?;
    }
    Ok(Json(stats))
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::NotFound { .. } => ApiError::NotFound(e.to_string()),
            QueryError::UnknownStatus { .. } | QueryError::BadTime { .. } => {
                ApiError::BadRequest(e.to_string())
            }
            QueryError::NotRetryable { .. } => ApiError::Conflict(e.to_string()),
            QueryError::Store(e) => e.into(),
        }
    }
}

/// Events, newest first, optionally filtered; bodies over 4 KiB are summarised in pages.
#[utoipa::path(get, path = "/api/events", tag = "events", params(EventsQuery),
    responses((status = 200, body = Listing<Event>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list_events(
    State(st): State<AdminState>,
    Query(q): Query<EventsQuery>,
) -> Result<Json<Listing<Event>>, ApiError> {
    Ok(Json(Console::new(st).events(&q)?))
}

/// One event with its whole body and a summary of each of its runs.
#[utoipa::path(get, path = "/api/events/{id}", tag = "events",
    params(("id" = String, Path, description = "Event id")),
    responses((status = 200, body = EventView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn show_event(
    State(st): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<EventView>, ApiError> {
    Ok(Json(Console::new(st).event(&id)?))
}

/// Runs, newest first, by status and recipe.
#[utoipa::path(get, path = "/api/runs", tag = "runs", params(RunsQuery),
    responses((status = 200, body = Listing<Run>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list_runs(
    State(st): State<AdminState>,
    Query(q): Query<RunsQuery>,
) -> Result<Json<Listing<Run>>, ApiError> {
    Ok(Json(Console::new(st).runs(&q)?))
}

/// One run with every step record (and `pending`: the step waiting for its next attempt).
#[utoipa::path(get, path = "/api/runs/{id}", tag = "runs",
    params(("id" = String, Path, description = "Run id")),
    responses((status = 200, body = Run), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn show_run(
    State(st): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<Run>, ApiError> {
    Ok(Json(Console::new(st).run(&id)?))
}

/// Retry a failed or dead run: it resumes at its failed step (409 for any other status).
#[utoipa::path(post, path = "/api/runs/{id}/retry", tag = "runs",
    params(("id" = String, Path, description = "Run id")),
    responses((status = 200, body = RetriedRuns), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "The run is not failed or dead", body = ErrorBody)))]
async fn retry_run(
    State(st): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<RetriedRuns>, ApiError> {
    Ok(Json(Console::new(st).retry(&id)?))
}

/// Which recipe's runs to retry.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct RetryQuery {
    /// Recipe name.
    recipe: String,
}

/// Retry every failed or dead run of a recipe.
#[utoipa::path(post, path = "/api/runs/retry", tag = "runs", params(RetryQuery),
    responses((status = 200, body = RetriedRuns), (status = 401, body = ErrorBody)))]
async fn retry_runs(
    State(st): State<AdminState>,
    Query(q): Query<RetryQuery>,
) -> Result<Json<RetriedRuns>, ApiError> {
    Ok(Json(Console::new(st).retry_recipe(&q.recipe)?))
}

/// Events and runs per minute (hour) or per 15 minutes (day), runs by
/// status, dead letters, queue depth, each connector's breaker and limits.
#[utoipa::path(get, path = "/api/overview", tag = "hub", params(RangeQuery),
    responses((status = 200, body = Overview), (status = 401, body = ErrorBody)))]
async fn overview(
    State(st): State<AdminState>,
    Query(q): Query<RangeQuery>,
) -> Result<Json<Overview>, ApiError> {
    Ok(Json(Console::new(st).overview(q.range)?))
}

/// Each connector: base URL, actions, webhook checks, limits now.
#[utoipa::path(get, path = "/api/connectors", tag = "hub",
    responses((status = 200, body = Vec<ConnectorView>), (status = 401, body = ErrorBody)))]
async fn connectors(State(st): State<AdminState>) -> Json<Vec<ConnectorView>> {
    Json(Console::new(st).connectors())
}

/// Each connector poll: interval, whether a recipe runs it, next slot,
/// cursor, last success, last error, failures, warning.
#[utoipa::path(get, path = "/api/polls", tag = "hub",
    responses((status = 200, body = Vec<queries::PollView>), (status = 401, body = ErrorBody)))]
async fn polls(State(st): State<AdminState>) -> Result<Json<Vec<queries::PollView>>, ApiError> {
    Ok(Json(Console::new(st).polls()?))
}

/// Each loaded recipe: trigger, last run, runs and success rate over 24 h.
#[utoipa::path(get, path = "/api/recipes", tag = "recipes",
    responses((status = 200, body = Vec<RecipeSummary>), (status = 401, body = ErrorBody)))]
async fn recipes(State(st): State<AdminState>) -> Result<Json<Vec<RecipeSummary>>, ApiError> {
    Ok(Json(Console::new(st).recipes()?))
}

/// One recipe with its file's text as on disk now.
#[utoipa::path(get, path = "/api/recipes/{name}", tag = "recipes",
    params(("name" = String, Path, description = "Recipe name")),
    responses((status = 200, body = RecipeDetail), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn recipe(
    State(st): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Json<RecipeDetail>, ApiError> {
    Ok(Json(Console::new(st).recipe(&name)?))
}

/// What `switchboard check` says about the files on disk now (the hub keeps running what it loaded).
#[utoipa::path(get, path = "/api/check", tag = "hub",
    responses((status = 200, body = FileCheck), (status = 401, body = ErrorBody)))]
async fn check(State(st): State<AdminState>) -> Json<FileCheck> {
    Json(Console::new(st).check_files().await)
}

/// The loaded catalog: its version, each recipe's version, versions kept
/// for unfinished runs, and whether the last reload failed (`stale`, with
/// the errors).
#[utoipa::path(get, path = "/api/catalog", tag = "hub",
    responses((status = 200, body = CatalogView), (status = 401, body = ErrorBody)))]
async fn catalog(State(st): State<AdminState>) -> Json<CatalogView> {
    Json(Console::new(st).catalog_view())
}

/// Load the connector and recipe files now, as SIGHUP does: if they check,
/// new events use them; if not, the last good files stay (`failed`, with
/// the errors; the catalog is then `stale`).
#[utoipa::path(post, path = "/api/catalog/reload", tag = "hub",
    responses((status = 200, body = ReloadAnswer), (status = 401, body = ErrorBody)))]
async fn reload(State(st): State<AdminState>) -> Json<ReloadAnswer> {
    Json(Console::new(st).reload().await)
}

impl From<replay::ReplayError> for ApiError {
    fn from(e: replay::ReplayError) -> Self {
        match e {
            replay::ReplayError::NoRecipe(_) => ApiError::NotFound(e.to_string()),
            replay::ReplayError::Query(q) => q.into(),
            replay::ReplayError::Bad(m) => ApiError::BadRequest(m),
            replay::ReplayError::Source(m) => ApiError::Unavailable(m),
        }
    }
}

/// What a recipe as its file is on disk now would have done for stored
/// events, against what ran: a dry run (no call is made, nothing is
/// written) answering calls from the original runs' records. One page of
/// events, newest first.
#[utoipa::path(get, path = "/api/replay", tag = "recipes", params(replay::ReplayQuery),
    responses((status = 200, body = replay::ReplayPage), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn replay_recipe(
    State(st): State<AdminState>,
    Query(q): Query<replay::ReplayQuery>,
) -> Result<Json<replay::ReplayPage>, ApiError> {
    Ok(Json(Console::new(st).replay(q).await?))
}
