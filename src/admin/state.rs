//! Recipe state for people: list, show, set and delete entries.
//!
//! The typed queries here are shared by the CLI (`switchboard state …` on a
//! store it opened itself) and the `/api/state` routes (on the running hub's
//! store), so both answer the same way. Writes go through
//! [`Store::apply_state`], the path steps use, so an edit is serialised with
//! the recipes' own increments.

use super::AdminState;
use crate::error::ApiError;
use crate::store::state::{self, StateEntry, StateKey, StateOp, StateOutput};
use crate::store::{Store, StoreError};
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::time::Duration;

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
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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
    let items = store.state_entries(namespace, after.as_deref(), limit, now)?;
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
    let entries = store.state_get(&key(namespace, name)?, now)?;
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

pub(super) fn router() -> Router<AdminState> {
    Router::new().route("/api/state", get(list_state)).route(
        "/api/state/{namespace}/{key}",
        get(show_state).put(set_state).delete(delete_state),
    )
}

#[derive(Deserialize)]
struct ListQuery {
    namespace: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/state?namespace=NS&after=CURSOR&limit=N`
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

/// `GET /api/state/{namespace}/{key}`: `{items: [entries]}`.
async fn show_state(
    State(st): State<AdminState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let items = show(
        &**st.engine.store(),
        &namespace,
        &name,
        crate::store::now_ms(),
    )?;
    Ok(Json(json!({ "items": items })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetBody {
    value: Value,
    /// `30s`, `1h`, `7d`.
    #[serde(default)]
    ttl: Option<String>,
}

/// `PUT /api/state/{namespace}/{key}` with `{"value": …, "ttl": "1h"?}`.
async fn set_state(
    State(st): State<AdminState>,
    Path((namespace, name)): Path<(String, String)>,
    body: Result<Json<SetBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(json!({ "items": items })))
}

/// `DELETE /api/state/{namespace}/{key}`: 404 if there was nothing.
async fn delete_state(
    State(st): State<AdminState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(json!({ "deleted": true })))
}
