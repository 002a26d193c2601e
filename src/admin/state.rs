//! Recipe state for people: list, show, set and delete entries.
//!
//! The typed queries here are shared by the CLI (`switchboard state …` on a
//! store it opened itself) and the `/api/state` routes (on the running hub's
//! store), so both answer the same way. Writes go through
//! [`Store::apply_state`], the path steps use, so an edit is serialised with
//! the recipes' own increments.
//!
//! OAuth2 token sets (namespace `switchboard:oauth`) are listed with every
//! token value redacted (`engine::tokens::redact`) and cannot be written
//! here: `switchboard connect` writes them.

use super::AdminState;
use crate::engine::tokens;
use crate::error::{ApiError, ErrorBody};
use crate::store::state::{self, StateEntry, StateKey, StateOp, StateOutput};
use crate::store::{Store, StoreError};
use axum::extract::{Path, Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

/// Largest page of entries.
pub const MAX_STATE_PAGE: usize = 500;

/// Why a state query failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::BadRequest(m) => ApiError::BadRequest(m),
            QueryError::NotFound(m) => ApiError::NotFound(m),
            QueryError::Store(e) => e.into(),
        }
    }
}

/// One page of entries; `next` is the `after` cursor of the following page.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct StatePage {
    pub items: Vec<StateEntry>,
    pub next: Option<String>,
}

fn key(namespace: &str, key: &str) -> Result<StateKey, QueryError> {
    StateKey::new(namespace, key).map_err(QueryError::BadRequest)
}

/// Live entries in (kind, namespace, key) order.
pub fn list(
    store: &dyn Store,
    namespace: Option<&str>,
    after: Option<&str>,
    limit: usize,
    now: i64,
) -> Result<StatePage, QueryError> {
    let after = after
        .map(state::parse_cursor)
        .transpose()
        .map_err(QueryError::BadRequest)?;
    let limit = limit.clamp(1, MAX_STATE_PAGE);
    let items: Vec<StateEntry> = store
        .state_entries(namespace, after.as_deref(), limit, now)?
        .into_iter()
        .map(tokens::redact)
        .collect();
    let next = (items.len() >= limit)
        .then(|| items.last().map(|e| e.cursor.clone()))
        .flatten();
    Ok(StatePage { items, next })
}

/// Every live entry of one key (a value, a window counter, a rotation).
pub fn show(
    store: &dyn Store,
    namespace: &str,
    name: &str,
    now: i64,
) -> Result<Vec<StateEntry>, QueryError> {
    let entries: Vec<StateEntry> = store
        .state_get(&key(namespace, name)?, now)?
        .into_iter()
        .map(tokens::redact)
        .collect();
    if entries.is_empty() {
        return Err(QueryError::NotFound(format!(
            "no state `{name}` in namespace `{namespace}`"
        )));
    }
    Ok(entries)
}

/// Write a value (a JSON value), expiring `ttl` from now if given.
pub fn set(
    store: &dyn Store,
    namespace: &str,
    name: &str,
    value: Value,
    ttl: Option<Duration>,
    now: i64,
) -> Result<Vec<StateEntry>, QueryError> {
    if namespace == tokens::NAMESPACE {
        return Err(QueryError::BadRequest(format!(
            "`{}` holds OAuth2 tokens, written by `switchboard connect NAME` (delete a key to disconnect)",
            tokens::NAMESPACE
        )));
    }
    let op = StateOp::Set {
        key: key(namespace, name)?,
        value,
        ttl_ms: ttl.map(|t| t.as_millis().min(i64::MAX as u128) as i64),
    };
    store.apply_state(&op, now, &mut |_| None)?;
    show(store, namespace, name, now)
}

/// Remove a key of every kind; false if there was none.
pub fn delete(
    store: &dyn Store,
    namespace: &str,
    name: &str,
    now: i64,
) -> Result<bool, QueryError> {
    let op = StateOp::Delete(key(namespace, name)?);
    Ok(matches!(
        store.apply_state(&op, now, &mut |_| None)?,
        StateOutput::Deleted { deleted: true }
    ))
}

/// Parse a TTL as people write it (`30s`, `1h`, `7d`).
pub fn parse_ttl(text: &str) -> Result<Duration, QueryError> {
    humantime::parse_duration(text).map_err(|e| {
        QueryError::BadRequest(format!(
            "invalid ttl {text:?}: {e} (expected e.g. \"30s\", \"1h\", \"7d\")"
        ))
    })
}

/// The `/api/state` routes, each with its OpenAPI operation.
pub(super) fn api() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(list_state))
        .routes(routes!(show_state, set_state, delete_state))
}

/// Every entry of one key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct StateItems {
    pub items: Vec<StateEntry>,
}

/// The answer to a delete.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Deleted {
    pub deleted: bool,
}

/// Which entries to list.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only this namespace.
    namespace: Option<String>,
    /// The `next` of the previous page.
    after: Option<String>,
    /// Entries per page (default 50, at most 500).
    limit: Option<usize>,
}

/// Recipe state entries in (kind, namespace, key) order.
#[utoipa::path(get, path = "/api/state", tag = "state", params(ListQuery),
    responses((status = 200, body = StatePage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list_state(
    State(st): State<AdminState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<StatePage>, ApiError> {
    let page = list(
        &**st.engine.store(),
        q.namespace.as_deref(),
        q.after.as_deref(),
        q.limit.unwrap_or(50),
        crate::store::now_ms(),
    )?;
    Ok(Json(page))
}

/// One key's entries (a value, a counter, a rotation may share a key).
#[utoipa::path(get, path = "/api/state/{namespace}/{key}", tag = "state", params(KeyPath),
    responses((status = 200, body = StateItems), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn show_state(
    State(st): State<AdminState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Json<StateItems>, ApiError> {
    let items = show(
        &**st.engine.store(),
        &namespace,
        &name,
        crate::store::now_ms(),
    )?;
    Ok(Json(StateItems { items }))
}

/// A state key in a path (percent-encode `/` in keys).
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // read by the OpenAPI derive only; the handlers take a tuple
struct KeyPath {
    /// The namespace (a recipe's, or `state:`'s `namespace`).
    namespace: String,
    /// The key.
    key: String,
}

/// A value to write.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SetBody {
    value: Value,
    /// `30s`, `1h`, `7d`.
    #[serde(default)]
    ttl: Option<String>,
}

/// Write a value, expiring after `ttl` if given.
#[utoipa::path(put, path = "/api/state/{namespace}/{key}", tag = "state", params(KeyPath),
    request_body = SetBody,
    responses((status = 200, body = StateItems), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn set_state(
    State(st): State<AdminState>,
    Path((namespace, name)): Path<(String, String)>,
    body: Result<Json<SetBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<StateItems>, ApiError> {
    let Json(body) = body.map_err(|e| {
        ApiError::BadRequest(format!(
            "expected a JSON body {{\"value\": …, \"ttl\": \"1h\"?}}: {}",
            e.body_text()
        ))
    })?;
    let ttl = body.ttl.as_deref().map(parse_ttl).transpose()?;
    let items = set(
        &**st.engine.store(),
        &namespace,
        &name,
        body.value,
        ttl,
        crate::store::now_ms(),
    )?;
    st.engine.sync().await?;
    Ok(Json(StateItems { items }))
}

/// Remove the key, every kind (404 if there was nothing).
#[utoipa::path(delete, path = "/api/state/{namespace}/{key}", tag = "state", params(KeyPath),
    responses((status = 200, body = Deleted), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_state(
    State(st): State<AdminState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Json<Deleted>, ApiError> {
    if !delete(
        &**st.engine.store(),
        &namespace,
        &name,
        crate::store::now_ms(),
    )? {
        return Err(ApiError::NotFound(format!(
            "no state `{name}` in namespace `{namespace}`"
        )));
    }
    st.engine.sync().await?;
    Ok(Json(Deleted { deleted: true }))
}
