//! Running one connector action: render the request, send it with the one
//! shared HTTP client, read a bounded response, pick the output fields.
//!
//! Every string that leaves this module for a record (URL, request body,
//! response excerpt, error) has the connector's secrets replaced by `***`.
//! Redirects are never followed, and calls to loopback / private / link-local
//! addresses are refused unless the connector is allowed to make them (checked
//! on IP literals here and on every DNS answer by [`GuardedResolver`], so DNS
//! rebinding cannot slip past).

use super::{Action, Auth, Body, Connector, Connectors};
use crate::template::Templates;
use reqwest::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

/// Largest response body read into memory; a larger one fails the call.
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;
/// Largest response excerpt kept in a step record.
pub const MAX_EXCERPT_BYTES: usize = 64 * 1024;

/// The shared outbound client.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
}

/// What was sent and received, redacted, for the step record.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CallRecord {
    pub method: String,
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_body: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_excerpt: Option<String>,
    /// `Location` of a 3xx answer (redirects are not followed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Value of `Retry-After` on a 429 / 503 answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<String>,
}

/// Why a call failed. Messages are redacted.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum CallError {
    #[error("could not render the request: {0}")]
    Render(String),
    #[error("missing required input `{0}`")]
    MissingInput(String),
    #[error("refused: {0}")]
    Blocked(String),
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("HTTP {status}")]
    Status { status: u16 },
    #[error("redirect (HTTP {status}) not followed")]
    Redirect { status: u16 },
    #[error("bad response: {0}")]
    Response(String),
    /// Not sent: the connector's circuit breaker is open for this long.
    #[error("not called: circuit breaker open after repeated failures")]
    CircuitOpen(std::time::Duration),
}

impl CallError {
    /// Worth trying again later: network trouble, timeouts, 429 and 5xx.
    pub fn retryable(&self) -> bool {
        match self {
            CallError::Timeout(_) | CallError::Connect(_) => true,
            CallError::Status { status } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

pub struct CallOutcome {
    pub record: CallRecord,
    pub result: Result<Value, CallError>,
}

impl Client {
    /// One client for every connector. Hosts of connectors allowed to reach
    /// internal addresses are exempt from the resolver's filter.
    pub fn new(connectors: &Connectors) -> Result<Client, String> {
        let allowed_hosts = connectors
            .by_name
            .values()
            .filter(|c| c.allow_internal)
            .filter_map(|c| {
                reqwest::Url::parse(&c.base_url)
                    .ok()?
                    .host_str()
                    .map(str::to_string)
            })
            .collect();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("switchboard/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(GuardedResolver { allowed_hosts }))
            .pool_max_idle_per_host(32)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Client { http })
    }

    /// Render and send one action. `idempotency_key` is stable across retries of the same step.
    pub async fn call(
        &self,
        templates: &Templates,
        connector: &Connector,
        action: &Action,
        input: &Value,
        idempotency_key: &str,
    ) -> CallOutcome {
        let mut record = CallRecord {
            method: action.method.to_string(),
            ..Default::default()
        };
        let result = self
            .send(
                templates,
                connector,
                action,
                input,
                idempotency_key,
                &mut record,
            )
            .await;
        let result = result.map_err(|e| redact_error(connector, e));
        CallOutcome { record, result }
    }

    async fn send(
        &self,
        templates: &Templates,
        connector: &Connector,
        action: &Action,
        input: &Value,
        idempotency_key: &str,
        record: &mut CallRecord,
    ) -> Result<Value, CallError> {
        for (name, required) in &action.inputs {
            if *required && input.get(name).is_none() {
                return Err(CallError::MissingInput(name.clone()));
            }
        }
        let secrets: Map<String, Value> = connector
            .secrets
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.expose().to_string())))
            .collect();
        let ctx = serde_json::json!({ "input": input, "secrets": secrets });
        let render = |t| {
            templates
                .render_string(t, &ctx)
                .map_err(|e| CallError::Render(e.to_string()))
        };

        let path = render(&action.path)?;
        let mut url = reqwest::Url::parse(&format!("{}{}", connector.base_url, path))
            .map_err(|e| CallError::Render(format!("invalid URL: {e}")))?;
        {
            let mut q = url.query_pairs_mut();
            for (k, t) in &action.query {
                q.append_pair(k, &render(t)?);
            }
            if let Auth::Query { name, value } = &connector.auth {
                q.append_pair(name, &render(value)?);
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        record.url = connector.redact(url.as_str());
        if let Some(host) = url.host_str() {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if let Ok(ip) = host.parse::<IpAddr>() {
                if is_internal(ip) && !connector.allow_internal {
                    return Err(CallError::Blocked(format!(
                        "{ip} is an internal address; allow it with --allow-internal {}",
                        connector.name
                    )));
                }
            }
        }

        let mut req = self
            .http
            .request(action.method.clone(), url)
            .timeout(action.timeout);
        match &connector.auth {
            Auth::None | Auth::Query { .. } => {}
            Auth::Bearer(t) => req = req.bearer_auth(render(t)?),
            Auth::Basic { username, password } => {
                req = req.basic_auth(render(username)?, Some(render(password)?))
            }
            Auth::Header { name, value } => req = req.header(name.as_str(), render(value)?),
        }
        for (k, t) in &action.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| CallError::Render(format!("header name `{k}`: {e}")))?;
            let value = HeaderValue::from_str(&render(t)?)
                .map_err(|e| CallError::Render(format!("header `{k}`: {e}")))?;
            req = req.header(name, value);
        }
        if let Some(h) = &connector.idempotency_header {
            req = req.header(h.as_str(), idempotency_key);
        }
        match &action.body {
            Body::None => {}
            Body::Json(t) => {
                let body = templates
                    .render_value(t, &ctx)
                    .map_err(|e| CallError::Render(e.to_string()))?;
                let bytes =
                    serde_json::to_vec(&body).map_err(|e| CallError::Render(e.to_string()))?;
                record.request_body = Some(redact_value(connector, body));
                req = req.header(CONTENT_TYPE, "application/json").body(bytes);
            }
            Body::Form(fields) => {
                let pairs = fields
                    .iter()
                    .map(|(k, t)| Ok((k.clone(), render(t)?)))
                    .collect::<Result<Vec<_>, CallError>>()?;
                let encoded = serde_urlencoded::to_string(&pairs)
                    .map_err(|e| CallError::Render(e.to_string()))?;
                let shown: Map<String, Value> = pairs
                    .into_iter()
                    .map(|(k, v)| (k, Value::String(v)))
                    .collect();
                record.request_body = Some(redact_value(connector, Value::Object(shown)));
                req = req
                    .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(encoded);
            }
        }

        // The connector's limits: a concurrency permit and a rate slot, held
        // until the answer is read. The breaker is asked before waiting for
        // them and again after, so no call leaves once it has opened.
        let breaker = &connector.limits.breaker;
        breaker
            .check(Instant::now())
            .map_err(CallError::CircuitOpen)?;
        let _admission = connector.limits.admit().await;
        breaker
            .check(Instant::now())
            .map_err(CallError::CircuitOpen)?;
        let result = self.exchange(req, connector, action, record).await;
        let failed = result.as_ref().is_err_and(CallError::retryable);
        breaker.record(Instant::now(), failed);
        result
    }

    /// Send the request and read its bounded answer.
    async fn exchange(
        &self,
        req: reqwest::RequestBuilder,
        connector: &Connector,
        action: &Action,
        record: &mut CallRecord,
    ) -> Result<Value, CallError> {
        let mut resp = req.send().await.map_err(|e| transport_error(e, action))?;
        let status = resp.status();
        record.status = Some(status.as_u16());
        let header = |name| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|s| connector.redact(s))
        };
        record.location = header(reqwest::header::LOCATION);
        record.retry_after = header(reqwest::header::RETRY_AFTER);

        // Read at most MAX_RESPONSE_BYTES, chunk by chunk.
        let mut body = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                        return Err(CallError::Response(format!(
                            "response body larger than {MAX_RESPONSE_BYTES} bytes"
                        )));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Err(transport_error(e, action)),
            }
        }
        if !status.is_success() {
            record.response_excerpt = Some(excerpt(connector, &body));
            return Err(if status.is_redirection() {
                CallError::Redirect {
                    status: status.as_u16(),
                }
            } else {
                CallError::Status {
                    status: status.as_u16(),
                }
            });
        }
        let json: Value = if body.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(_) if action.output.is_empty() => Value::String(excerpt(connector, &body)),
                Err(e) => {
                    record.response_excerpt = Some(excerpt(connector, &body));
                    return Err(CallError::Response(format!("expected a JSON body: {e}")));
                }
            }
        };
        if action.output.is_empty() {
            if body.len() > MAX_EXCERPT_BYTES {
                return Ok(Value::String(excerpt(connector, &body)));
            }
            return Ok(redact_value(connector, json));
        }
        let out: Map<String, Value> = action
            .output
            .iter()
            .filter_map(|(k, p)| Some((k.clone(), p.pick(&json)?)))
            .collect();
        Ok(redact_value(connector, Value::Object(out)))
    }
}

fn transport_error(e: reqwest::Error, action: &Action) -> CallError {
    if e.is_timeout() {
        return CallError::Timeout(action.timeout);
    }
    // The innermost cause says what happened (refused, DNS, our resolver's refusal).
    let mut msg = e.to_string();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
    while let Some(s) = src {
        msg = s.to_string();
        src = s.source();
    }
    if msg.contains("internal address") {
        CallError::Blocked(msg)
    } else {
        CallError::Connect(msg)
    }
}

fn excerpt(connector: &Connector, body: &[u8]) -> String {
    let cut = &body[..body.len().min(MAX_EXCERPT_BYTES)];
    let text = String::from_utf8_lossy(cut);
    connector.redact(&text)
}

fn redact_error(connector: &Connector, e: CallError) -> CallError {
    match e {
        CallError::Render(m) => CallError::Render(connector.redact(&m)),
        CallError::Connect(m) => CallError::Connect(connector.redact(&m)),
        CallError::Blocked(m) => CallError::Blocked(connector.redact(&m)),
        CallError::Response(m) => CallError::Response(connector.redact(&m)),
        other => other,
    }
}

/// Replace secrets in every string of a JSON value.
pub fn redact_value(connector: &Connector, v: Value) -> Value {
    match v {
        Value::String(s) => Value::String(connector.redact(&s)),
        Value::Array(a) => {
            Value::Array(a.into_iter().map(|v| redact_value(connector, v)).collect())
        }
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| (k, redact_value(connector, v)))
                .collect(),
        ),
        other => other,
    }
}

impl Connector {
    /// `text` with every secret value of this connector replaced by `***`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in self.secrets.values() {
            for part in std::iter::once(secret.expose()).chain(secret.expose().split_whitespace()) {
                // Very short values would blank out ordinary text; secrets are long.
                if part.len() >= 4 && out.contains(part) {
                    out = out.replace(part, "***");
                }
                // The form / query encoding of the value, too.
                let encoded: String = url_encode(part);
                if part.len() >= 4 && encoded != part && out.contains(&encoded) {
                    out = out.replace(&encoded, "***");
                }
            }
        }
        out
    }
}

fn url_encode(s: &str) -> String {
    serde_urlencoded::to_string([("", s)])
        .map(|e| e.trim_start_matches('=').to_string())
        .unwrap_or_default()
}

/// Is this an address a connector must not reach by default?
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // CGNAT 100.64/10
                || o[0] == 0
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link local
        }
    }
}

/// A DNS resolver that drops internal addresses, except for allowed hosts.
struct GuardedResolver {
    allowed_hosts: HashSet<String>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        let allow = self.allowed_hosts.contains(&host);
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| allow || !is_internal(a.ip()))
                .collect();
            if addrs.is_empty() {
                let msg = format!("{host} resolves only to internal addresses (or not at all); refusing to connect to an internal address");
                return Err(msg.into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "172.32.0.1"] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn retryable_errors() {
        assert!(CallError::Status { status: 503 }.retryable());
        assert!(CallError::Status { status: 429 }.retryable());
        assert!(!CallError::Status { status: 404 }.retryable());
        assert!(CallError::Timeout(std::time::Duration::from_secs(1)).retryable());
        assert!(!CallError::Redirect { status: 302 }.retryable());
    }
}
