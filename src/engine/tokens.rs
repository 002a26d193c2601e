//! OAuth2 token sets in the store: the [`TokenStore`] the engine gives its
//! HTTP client, so every node on one store (PostgreSQL) shares one grant.
//!
//! It uses recipe state, like the poller, in the reserved namespace
//! [`NAMESPACE`] (recipes cannot name it), through `Store::apply_state` /
//! `Store::state_get`, so every backend carries it without a method of its
//! own:
//! - `<connector>`: the token set (a value: access and refresh token,
//!   expiry, scope), replaced whole by one `set` and flushed before the
//!   caller uses it;
//! - `<connector>/lease`: the refresh lease, a `set_if_absent` with a TTL
//!   (the token request's timeout and a margin). The node whose write lands
//!   asks the token endpoint; the others read the token set until the new
//!   one is there. Given back by a delete when the request is done; a node
//!   that dies holding it holds it until the TTL.
//!
//! Token values are shown nowhere but here: [`redact`] is what the state
//! listing (`switchboard state`, `/api/state`) shows of this namespace.

use crate::connector::oauth::{TokenStore, Tokens};
use crate::store::state::{StateEntry, StateKey, StateKind, StateOp, StateOutput};
use crate::store::Store;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// The state namespace OAuth2 token sets and refresh leases live in.
pub const NAMESPACE: &str = "switchboard:oauth";

/// The engine's [`TokenStore`]: recipe state in [`NAMESPACE`].
pub struct StoreTokens {
    store: Arc<dyn Store>,
}

impl StoreTokens {
    pub fn new(store: Arc<dyn Store>) -> StoreTokens {
        StoreTokens { store }
    }
}

fn key(connector: &str) -> StateKey {
    StateKey {
        namespace: NAMESPACE.to_string(),
        key: connector.to_string(),
    }
}

fn lease_key(connector: &str) -> StateKey {
    StateKey {
        namespace: NAMESPACE.to_string(),
        key: format!("{connector}/lease"),
    }
}

impl TokenStore for StoreTokens {
    fn load(&self, connector: &str) -> Result<Option<Tokens>, String> {
        let entries = self
            .store
            .state_get(&key(connector), crate::store::now_ms())
            .map_err(|e| e.to_string())?;
        entries
            .into_iter()
            .find(|e| e.kind == StateKind::Value)
            .map(|e| Tokens::from_json(e.value))
            .transpose()
    }

    fn save(&self, connector: &str, tokens: &Tokens) -> Result<(), String> {
        let op = StateOp::Set {
            key: key(connector),
            value: tokens.to_json(),
            ttl_ms: None,
        };
        self.store
            .apply_state(&op, crate::store::now_ms(), &mut |_| None)
            .map_err(|e| e.to_string())?;
        self.store.flush().map_err(|e| e.to_string())
    }

    fn lease(&self, connector: &str, ttl: Duration) -> Result<bool, String> {
        let now = crate::store::now_ms();
        let op = StateOp::SetIfAbsent {
            key: lease_key(connector),
            value: json!({ "since": now }),
            ttl_ms: Some(ttl.as_millis().min(i64::MAX as u128) as i64),
        };
        let out = self
            .store
            .apply_state(&op, now, &mut |_| None)
            .map_err(|e| e.to_string())?;
        Ok(matches!(out, StateOutput::Set { set: true, .. }))
    }

    fn release(&self, connector: &str) -> Result<(), String> {
        let op = StateOp::Delete(lease_key(connector));
        self.store
            .apply_state(&op, crate::store::now_ms(), &mut |_| None)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// `entry` as people may see it: in [`NAMESPACE`], every token value
/// becomes `***` and the first 8 hex digits of its SHA-256 (enough to tell
/// two apart, nothing to use); other namespaces are left alone.
pub fn redact(mut entry: StateEntry) -> StateEntry {
    if entry.namespace == NAMESPACE {
        entry.value = redacted(entry.value);
    }
    entry
}

fn redacted(v: Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) if k.ends_with("_token") => Value::String(fingerprint(&s)),
                        v @ (Value::Number(_) | Value::Bool(_) | Value::Null) => v,
                        Value::String(s) if k == "scope" => Value::String(s),
                        other => redacted(other),
                    };
                    (k, v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(redacted).collect()),
        Value::String(s) => Value::String(fingerprint(&s)),
        other => other,
    }
}

/// `*** sha256:1a2b3c4d`.
pub fn fingerprint(token: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(token.as_bytes());
    format!("*** sha256:{}", hex::encode(&digest[..4]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_values_are_redacted_and_others_kept() {
        let entry = |ns: &str, value: Value| StateEntry {
            namespace: ns.into(),
            key: "crm".into(),
            kind: StateKind::Value,
            value,
            window_ms: None,
            expires_at: None,
            updated_at: 0,
            cursor: String::new(),
        };
        let stored = json!({"access_token": "at-1", "refresh_token": "rt-1", "expires_at": 5, "scope": "a b", "other": "x"});
        let shown = redact(entry(NAMESPACE, stored.clone())).value;
        assert_eq!(shown["access_token"], fingerprint("at-1"));
        assert_eq!(shown["refresh_token"], fingerprint("rt-1"));
        assert_eq!(shown["other"], fingerprint("x"));
        assert_eq!(
            (&shown["expires_at"], &shown["scope"]),
            (&json!(5), &json!("a b"))
        );
        assert!(!shown.to_string().contains("at-1") && !shown.to_string().contains("rt-1"));
        assert_ne!(fingerprint("at-1"), fingerprint("at-2"));
        assert_eq!(redact(entry("recipe", stored.clone())).value, stored);
        assert_eq!(
            redact(entry(NAMESPACE, json!("raw"))).value,
            json!(fingerprint("raw"))
        );
    }
}
