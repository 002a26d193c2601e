//! Running one connector action: render the request, send it with the one
//! shared HTTP client, read a bounded response, pick the output fields.
//!
//! Every string that leaves this module for a record (URL, request body,
//! response excerpt, error) has the connector's secrets replaced by `***`.
//! Redirects are never followed, and calls to loopback / private / link-local
//! addresses are refused unless the connector is allowed to make them (checked
//! on IP literals here and on every DNS answer by [`GuardedResolver`], so DNS
//! rebinding cannot slip past).

use super::{Action, Auth, Body, Connector, Connectors, Target};
use crate::template::{Template, Templates};
use reqwest::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

/// Largest response body read into memory; a larger one fails the call.
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;
/// Largest response excerpt kept in a step record.
pub const MAX_EXCERPT_BYTES: usize = 64 * 1024;

/// The shared outbound clients.
#[derive(Clone)]
pub struct Client {
    /// For every connector: its resolver drops internal addresses.
    guarded: reqwest::Client,
    /// Only for connectors named in `--allow-internal`.
    open: reqwest::Client,
    /// Where OAuth2 connectors keep their tokens beyond memory (the hub's
    /// store); `None`: memory only.
    tokens: Option<Arc<dyn super::oauth::TokenStore>>,
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
    /// The target is an internal address and this connector is not allowed
    /// to reach internal addresses.
    #[error(
        "refused: {target} is an internal address; allow it with --allow-internal {connector}"
    )]
    Internal { target: String, connector: String },
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
    /// A success status whose body says the call failed (`fail_when:`).
    #[error("{0}")]
    Answer(String),
    /// Not sent: the connector's circuit breaker is open for this long.
    #[error("not called: circuit breaker open after repeated failures")]
    CircuitOpen(std::time::Duration),
    /// Not sent: the connector's rate or concurrency limit is full; try
    /// again after this long (the run goes back to the queue, the worker
    /// moves on).
    #[error("not called yet: waiting for the connector's rate or concurrency limit")]
    Limited(std::time::Duration),
    /// Not sent: the connector's OAuth2 access token could not be
    /// obtained. `retryable`: the token endpoint was unreachable, timed
    /// out or answered 429 / 5xx.
    #[error("OAuth2: {message}")]
    Token { message: String, retryable: bool },
}

impl CallError {
    /// Worth trying again later: network trouble, timeouts, 429 and 5xx.
    pub fn retryable(&self) -> bool {
        match self {
            CallError::Timeout(_) | CallError::Connect(_) => true,
            CallError::Status { status } => *status == 429 || *status >= 500,
            CallError::Token { retryable, .. } => *retryable,
            _ => false,
        }
    }
}

/// What a call answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The action's output (fields, or the body up to an excerpt's size):
    /// a step's call.
    Output,
    /// The whole JSON body (redacted, up to [`MAX_RESPONSE_BYTES`]): a poll
    /// reads its items, cursor and next page from it.
    Whole,
}

/// One action to render and send ([`Client::call`]).
#[derive(Clone, Copy)]
pub struct Request<'a> {
    pub templates: &'a Templates,
    pub connector: &'a Connector,
    pub action: &'a Action,
    pub input: &'a Value,
    /// Stable across retries of the same step.
    pub idempotency_key: &'a str,
    pub answer: Answer,
}

pub struct CallOutcome {
    pub record: CallRecord,
    pub result: Result<Value, CallError>,
}

impl Client {
    /// Two clients: a guarded one whose resolver drops internal addresses,
    /// and an open one for the connectors allowed to reach them. Allowing is
    /// per connector, never per host: allowing `mock` on localhost does not
    /// let another connector reach localhost. Neither uses a system proxy
    /// (`HTTP_PROXY` / `HTTPS_PROXY` / `ALL_PROXY` are ignored): a proxy
    /// resolves the target itself, past the guard.
    pub fn new(_connectors: &Connectors) -> Result<Client, String> {
        let build = |guard: bool| {
            let mut b = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .user_agent(concat!("switchboard/", env!("CARGO_PKG_VERSION")))
                .pool_max_idle_per_host(32);
            if guard {
                b = b.dns_resolver(Arc::new(GuardedResolver));
            }
            b.build().map_err(|e| e.to_string())
        };
        Ok(Client {
            guarded: build(true)?,
            open: build(false)?,
            tokens: None,
        })
    }

    /// Keep OAuth2 token sets in `tokens` (shared by every node on it).
    pub fn with_token_store(mut self, tokens: Arc<dyn super::oauth::TokenStore>) -> Client {
        self.tokens = Some(tokens);
        self
    }

    pub(crate) fn token_store(&self) -> Option<&Arc<dyn super::oauth::TokenStore>> {
        self.tokens.as_ref()
    }

    /// Render and send one action, through the connector's limits,
    /// breaker and guards.
    pub async fn call(&self, r: Request<'_>) -> CallOutcome {
        let mut record = CallRecord {
            method: r.action.method.to_string(),
            ..Default::default()
        };
        let result = self.send(&r, &mut record).await;
        let result = result.map_err(|e| redact_error(r.connector, e));
        CallOutcome { record, result }
    }

    async fn send(&self, r: &Request<'_>, record: &mut CallRecord) -> Result<Value, CallError> {
        let Request {
            templates,
            connector,
            action,
            input,
            idempotency_key,
            ..
        } = *r;
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
        // Built field by field: `json!` would copy `input` through its
        // serializer instead of a plain clone.
        let mut ctx = Map::new();
        ctx.insert("input".into(), input.clone());
        ctx.insert("secrets".into(), Value::Object(secrets));
        let ctx = Value::Object(ctx);
        let render = |t| {
            templates
                .render_string(t, &ctx)
                .map_err(|e| CallError::Render(e.to_string()))
        };

        let mut url = match &action.target {
            Target::Path(t) => build_url(&connector.base_url, &render(t)?)?,
            Target::Url(t) => allowed_url(&render(t)?, &connector.allowed_urls)?,
        };
        {
            let mut q = url.query_pairs_mut();
            for (k, t) in &action.query {
                // A single expression rendering `null` leaves the parameter
                // out (`{{ input.page | default(none) }}`: an optional one).
                if let Template::Typed { .. } = t {
                    let v = templates
                        .render(t, &ctx)
                        .map_err(|e| CallError::Render(e.to_string()))?;
                    match v {
                        Value::Null => {}
                        Value::String(s) => {
                            q.append_pair(k, &s);
                        }
                        other => {
                            q.append_pair(k, &other.to_string());
                        }
                    }
                    continue;
                }
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
        let client = self.client_for(connector, &url)?;

        let mut req = client
            .request(action.method.clone(), url)
            .timeout(action.timeout);
        match &connector.auth {
            // Added once the call is admitted (see `authorized`).
            Auth::None | Auth::Query { .. } | Auth::OAuth2(_) => {}
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
        // them and passed after (the first call after a cool-down is the
        // half-open probe), so no call leaves once it has opened.
        let breaker = &connector.limits.breaker;
        breaker
            .check(Instant::now())
            .map_err(CallError::CircuitOpen)?;
        // Never wait for a limit here: a full one sends the run back to the
        // queue until a slot is likely free (see `Limits::try_admit`). The
        // metric records each admission: 0, or how long the run is sent away.
        let admitted = connector.limits.try_admit(Instant::now());
        let held = admitted.as_ref().err().copied().unwrap_or_default();
        crate::metrics::get().limit_wait(&connector.name, held);
        let _admission = admitted.map_err(CallError::Limited)?;
        let pass = breaker
            .pass(Instant::now())
            .map_err(CallError::CircuitOpen)?;
        let result = match &connector.auth {
            Auth::OAuth2(oauth) => self.authorized(oauth, req, r, record, _admission).await,
            _ => self.exchange(req, r, record).await,
        };
        if matches!(result, Err(CallError::Limited(_))) {
            // Not sent after all: no outcome for the breaker (a half-open
            // probe abandoned lets the next call probe).
            return result;
        }
        let failed = result.as_ref().is_err_and(CallError::retryable);
        pass.record(Instant::now(), failed);
        result
    }

    /// The client for a request to `url` from `connector`: the open one if
    /// the connector may reach internal addresses, else the guarded one
    /// (and an internal IP literal is refused here, before any DNS).
    pub(crate) fn client_for(
        &self,
        connector: &Connector,
        url: &reqwest::Url,
    ) -> Result<&reqwest::Client, CallError> {
        if connector.allow_internal {
            return Ok(&self.open);
        }
        if let Some(ip) = literal_ip(url) {
            if is_internal(ip) {
                return Err(CallError::Internal {
                    target: ip.to_string(),
                    connector: connector.name.clone(),
                });
            }
        }
        Ok(&self.guarded)
    }

    /// Send with the connector's OAuth2 access token. A 401 answer
    /// forgets that token and sends once more with a new one (admitted by
    /// the limits again, so a resend counts like any call).
    async fn authorized(
        &self,
        oauth: &super::oauth::OAuth2,
        req: reqwest::RequestBuilder,
        r: &Request<'_>,
        record: &mut CallRecord,
        admission: super::limits::Admission,
    ) -> Result<Value, CallError> {
        let (templates, connector) = (r.templates, r.connector);
        let token = oauth.token(self, templates, connector).await?;
        let again = req.try_clone();
        let result = self
            .exchange(req.bearer_auth(token.expose()), r, record)
            .await;
        let (Err(CallError::Status { status: 401 }), Some(again)) = (&result, again) else {
            return result;
        };
        oauth.invalidate(&token);
        drop(admission);
        let _admission = connector
            .limits
            .try_admit(Instant::now())
            .map_err(CallError::Limited)?;
        let token = oauth.token(self, templates, connector).await?;
        let url = record.url.clone();
        *record = CallRecord {
            method: record.method.clone(),
            url,
            request_body: record.request_body.take(),
            ..Default::default()
        };
        self.exchange(again.bearer_auth(token.expose()), r, record)
            .await
    }

    /// Send the request and read its bounded answer.
    async fn exchange(
        &self,
        req: reqwest::RequestBuilder,
        r: &Request<'_>,
        record: &mut CallRecord,
    ) -> Result<Value, CallError> {
        let (connector, action, answer) = (r.connector, r.action, r.answer);
        let mut resp = req
            .send()
            .await
            .map_err(|e| transport_error(e, connector, action))?;
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
                Err(e) => return Err(transport_error(e, connector, action)),
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
                Err(_) if action.output.is_empty() && answer == Answer::Output => {
                    Value::String(excerpt(connector, &body))
                }
                Err(e) => {
                    record.response_excerpt = Some(excerpt(connector, &body));
                    return Err(CallError::Response(format!("expected a JSON body: {e}")));
                }
            }
        };
        if let Some(why) = action.fail_when.as_ref().and_then(|f| f.check(&json)) {
            record.response_excerpt = Some(excerpt(connector, &body));
            return Err(CallError::Answer(why));
        }
        if answer == Answer::Whole {
            return Ok(redact_value(connector, json));
        }
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

fn transport_error(e: reqwest::Error, connector: &Connector, action: &Action) -> CallError {
    if e.is_timeout() {
        return CallError::Timeout(action.timeout);
    }
    match transport_cause(&e, connector) {
        Ok(msg) => CallError::Connect(msg),
        Err(internal) => internal,
    }
}

/// The innermost cause of a transport error (refused, DNS), or the
/// resolver's refusal of an internal address as `CallError::Internal`.
pub(crate) fn transport_cause(
    e: &reqwest::Error,
    connector: &Connector,
) -> Result<String, CallError> {
    let mut msg = e.to_string();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(internal) = s.downcast_ref::<InternalAddress>() {
            return Err(CallError::Internal {
                target: internal.host.clone(),
                connector: connector.name.clone(),
            });
        }
        msg = s.to_string();
        src = s.source();
    }
    Ok(msg)
}

/// The URL for a rendered `path`: `base_url` + `path`, refused unless its
/// scheme, host and port are the base URL's and its path stays under the
/// base URL's path. Path templates already encode every value they print
/// (`Templates::compile_path`); this is the check on the built URL, after
/// rendering and normalisation, so no later change to rendering can let
/// event data pick where a request goes.
pub fn build_url(base_url: &str, path: &str) -> Result<reqwest::Url, CallError> {
    let refuse = |why: &str| CallError::Blocked(format!("path `{path}` {why}"));
    let base = reqwest::Url::parse(base_url)
        .map_err(|e| CallError::Render(format!("invalid base URL: {e}")))?;
    if !path.starts_with('/') {
        return Err(refuse("does not start with `/`"));
    }
    let route = path.split(['?', '#']).next().unwrap_or("");
    if route.contains("//") {
        return Err(refuse("has an empty segment"));
    }
    if route.split('/').any(is_dot_segment) {
        return Err(refuse("has a `.` or `..` segment"));
    }
    let url = reqwest::Url::parse(&format!("{}{path}", base_url.trim_end_matches('/')))
        .map_err(|e| CallError::Render(format!("invalid URL: {e}")))?;
    let base_path = base.path().trim_end_matches('/');
    let under_base = url.path() == base_path
        || url
            .path()
            .strip_prefix(base_path)
            .is_some_and(|rest| rest.starts_with('/'));
    if url.scheme() != base.scheme()
        || url.host() != base.host()
        || url.port_or_known_default() != base.port_or_known_default()
        || !url.username().is_empty()
        || url.password().is_some()
        || !under_base
    {
        return Err(refuse("leaves the connector's base URL"));
    }
    Ok(url)
}

/// A `url:` action's rendered URL, if it lies under one of `allowed`: same
/// scheme, host and port, no user info, its (normalised) path under the
/// allowed path. Event data chooses the URL here, so nothing else passes.
pub fn allowed_url(rendered: &str, allowed: &[reqwest::Url]) -> Result<reqwest::Url, CallError> {
    let url = reqwest::Url::parse(rendered)
        .map_err(|e| CallError::Blocked(format!("URL `{rendered}` is not a URL: {e}")))?;
    let under = |a: &reqwest::Url| {
        let base_path = a.path().trim_end_matches('/');
        url.scheme() == a.scheme()
            && url.host() == a.host()
            && url.port_or_known_default() == a.port_or_known_default()
            && url.username().is_empty()
            && url.password().is_none()
            && (url.path() == base_path
                || url
                    .path()
                    .strip_prefix(base_path)
                    .is_some_and(|rest| rest.starts_with('/')))
    };
    if allowed.iter().any(under) {
        Ok(url)
    } else {
        Err(CallError::Blocked(format!(
            "URL `{}` is not under the connector's allowed_urls",
            url.origin().ascii_serialization()
        )))
    }
}

/// `.` or `..`, also percent-encoded (URL parsers resolve `%2e%2e` too).
fn is_dot_segment(segment: &str) -> bool {
    let lower = segment.to_ascii_lowercase();
    let decoded = lower.replace("%2e", ".");
    decoded == "." || decoded == ".."
}

/// The URL's host if it is an IP literal.
fn literal_ip(url: &reqwest::Url) -> Option<IpAddr> {
    let host = url.host_str()?;
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

fn excerpt(connector: &Connector, body: &[u8]) -> String {
    // A JSON body is redacted as values (a secret JSON-escaped in the text
    // is plain once parsed), then written back compactly.
    if body.len() <= MAX_EXCERPT_BYTES {
        if let Ok(v) = serde_json::from_slice::<Value>(body) {
            return redact_value(connector, v).to_string();
        }
    }
    let cut = &body[..body.len().min(MAX_EXCERPT_BYTES)];
    let text = String::from_utf8_lossy(cut);
    connector.redact(&text)
}

fn redact_error(connector: &Connector, e: CallError) -> CallError {
    match e {
        CallError::Render(m) => CallError::Render(connector.redact(&m)),
        CallError::Connect(m) => CallError::Connect(connector.redact(&m)),
        CallError::Blocked(m) => CallError::Blocked(connector.redact(&m)),
        CallError::Internal {
            target,
            connector: c,
        } => CallError::Internal {
            target: connector.redact(&target),
            connector: c,
        },
        CallError::Response(m) => CallError::Response(connector.redact(&m)),
        CallError::Answer(m) => CallError::Answer(connector.redact(&m)),
        CallError::Token { message, retryable } => CallError::Token {
            message: connector.redact(&message),
            retryable,
        },
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
        // Keys too: an API may echo a secret as an object key.
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| (connector.redact(&k), redact_value(connector, v)))
                .collect(),
        ),
        other => other,
    }
}

impl Connector {
    /// `text` with every form of every secret of this connector replaced
    /// by `***`, and every OAuth2 token it has held.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        if let Auth::OAuth2(oauth) = &self.auth {
            out = oauth.redact(&out);
        }
        for form in &self.redactions {
            if out.contains(form.expose()) {
                out = out.replace(form.expose(), "***");
            }
        }
        out
    }
}

/// Every form in which a secret of `secrets` can come back in a record: the
/// value, its form and percent encodings, its JSON-escaped form, its
/// base64 (standard and URL-safe, padded or not), and the base64
/// `user:password` of Basic auth (rendered once, from secrets only).
/// Values under 4 bytes are skipped (they would blank out ordinary text).
/// Longest first, so a longer form is replaced before a part of it.
pub fn redaction_forms(
    secrets: &std::collections::BTreeMap<String, crate::secret::Secret>,
    auth: &Auth,
    templates: &Templates,
) -> Vec<crate::secret::Secret> {
    use base64::Engine as _;
    let b64 = [
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::URL_SAFE,
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    let mut values: Vec<String> = secrets.values().map(|v| v.expose().to_string()).collect();
    if let Auth::Basic { username, password } = auth {
        let ctx: Map<String, Value> = secrets
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.expose().to_string())))
            .collect();
        let ctx = serde_json::json!({ "secrets": ctx });
        if let (Ok(u), Ok(p)) = (
            templates.render_string(username, &ctx),
            templates.render_string(password, &ctx),
        ) {
            let pair = format!("{u}:{p}");
            values.extend(b64.iter().map(|e| e.encode(&pair)));
            if secrets.values().any(|v| pair.contains(v.expose())) {
                values.push(pair);
            }
        }
    }
    let mut forms: Vec<String> = Vec::new();
    for v in values {
        if v.len() < 4 {
            continue;
        }
        forms.extend(forms_of(&v));
    }
    forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
    forms.dedup();
    forms.into_iter().map(crate::secret::Secret::new).collect()
}

/// The forms one secret value may come back in: URL- and form-encoded,
/// JSON-escaped, base64 (standard and URL-safe, padded or not) and itself;
/// longest first.
pub(crate) fn forms_of(v: &str) -> Vec<String> {
    use base64::Engine as _;
    let b64 = [
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::URL_SAFE,
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    let mut forms = vec![url_encode(v), percent_encode(v)];
    if let Ok(json) = serde_json::to_string(v) {
        forms.push(json[1..json.len() - 1].to_string());
    }
    forms.extend(b64.iter().map(|e| e.encode(v)));
    forms.push(v.to_string());
    forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
    forms.dedup();
    forms
}

fn url_encode(s: &str) -> String {
    serde_urlencoded::to_string([("", s)])
        .map(|e| e.trim_start_matches('=').to_string())
        .unwrap_or_default()
}

/// RFC 3986 percent-encoding of everything but unreserved characters.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// IPv4 ranges a connector must not reach by default: every entry of the
/// IANA IPv4 Special-Purpose Address Registry (RFC 6890 and updates), plus
/// multicast and the reserved 240/4. Some entries are globally reachable
/// (AS112, AMT) but no SaaS API lives there.
const SPECIAL_V4: &[(Ipv4Addr, u8)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8),       // "this network"
    (Ipv4Addr::new(10, 0, 0, 0), 8),      // private
    (Ipv4Addr::new(100, 64, 0, 0), 10),   // shared address space (CGNAT)
    (Ipv4Addr::new(127, 0, 0, 0), 8),     // loopback
    (Ipv4Addr::new(169, 254, 0, 0), 16),  // link local (cloud metadata)
    (Ipv4Addr::new(172, 16, 0, 0), 12),   // private
    (Ipv4Addr::new(192, 0, 0, 0), 24),    // IETF protocol assignments
    (Ipv4Addr::new(192, 0, 2, 0), 24),    // documentation TEST-NET-1
    (Ipv4Addr::new(192, 31, 196, 0), 24), // AS112-v4
    (Ipv4Addr::new(192, 52, 193, 0), 24), // AMT
    (Ipv4Addr::new(192, 88, 99, 0), 24),  // 6to4 relay anycast (deprecated)
    (Ipv4Addr::new(192, 168, 0, 0), 16),  // private
    (Ipv4Addr::new(192, 175, 48, 0), 24), // direct delegation AS112
    (Ipv4Addr::new(198, 18, 0, 0), 15),   // benchmarking
    (Ipv4Addr::new(198, 51, 100, 0), 24), // documentation TEST-NET-2
    (Ipv4Addr::new(203, 0, 113, 0), 24),  // documentation TEST-NET-3
    (Ipv4Addr::new(224, 0, 0, 0), 4),     // multicast
    (Ipv4Addr::new(240, 0, 0, 0), 4),     // reserved, and 255.255.255.255
];

/// IPv6 ranges a connector must not reach by default (IANA IPv6
/// Special-Purpose Address Registry, plus site-local and multicast). Forms
/// that embed an IPv4 address (mapped, compatible, 6to4) are judged by the
/// embedded address in [`is_internal`]; NAT64 is refused whole.
const SPECIAL_V6: &[(Ipv6Addr, u8)] = &[
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0), 128), // unspecified
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 1), 128), // loopback
    (Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96), // NAT64 well-known prefix
    (Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48), // NAT64 local use
    (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64), // discard only
    (Ipv6Addr::new(0x100, 0, 0, 1, 0, 0, 0, 0), 64), // dummy prefix
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23), // IETF protocol assignments (Teredo, ORCHID, benchmarking …)
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32), // documentation
    (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20), // documentation
    (Ipv6Addr::new(0x5f00, 0, 0, 0, 0, 0, 0, 0), 16), // segment routing SIDs
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),  // unique local
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10), // link local
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10), // site local (deprecated)
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),  // multicast
];

/// Is this an address a connector must not reach by default?
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => SPECIAL_V4.iter().any(|(net, len)| {
            let mask = u32::MAX.checked_shl(32 - u32::from(*len)).unwrap_or(0);
            u32::from(v4) & mask == u32::from(*net) & mask
        }),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            // IPv4-mapped ::ffff:a.b.c.d and IPv4-compatible ::a.b.c.d.
            if bits >> 32 == 0xffff || (bits >> 32 == 0 && bits > 1) {
                return is_internal(IpAddr::V4(Ipv4Addr::from(bits as u32)));
            }
            // 6to4 2002:a.b.c.d::/48.
            if bits >> 112 == 0x2002 && is_internal(IpAddr::V4(Ipv4Addr::from((bits >> 80) as u32)))
            {
                return true;
            }
            SPECIAL_V6.iter().any(|(net, len)| {
                let mask = u128::MAX.checked_shl(128 - u32::from(*len)).unwrap_or(0);
                bits & mask == u128::from(*net) & mask
            })
        }
    }
}

/// The resolver's refusal, found again in reqwest's error chain.
#[derive(Debug)]
struct InternalAddress {
    host: String,
}

impl std::fmt::Display for InternalAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} resolves only to internal addresses", self.host)
    }
}

impl std::error::Error for InternalAddress {}

/// A DNS resolver that drops internal addresses (checked on every answer,
/// so DNS rebinding cannot slip past).
struct GuardedResolver;

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let addrs: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| !is_internal(a.ip()))
                .collect();
            if found.is_empty() {
                return Err(format!("{host} has no address").into());
            }
            if addrs.is_empty() {
                return Err(Box::new(InternalAddress { host }) as Box<_>);
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every special-purpose range: its first and last address are internal,
    /// the addresses just outside it are not (unless a neighbouring range
    /// covers them).
    #[test]
    fn every_special_purpose_range_is_internal() {
        for (net, len) in SPECIAL_V4 {
            let first = u32::from(*net);
            let last = first | (u32::MAX.checked_shr(u32::from(*len)).unwrap_or(0));
            for ip in [first, last] {
                assert!(
                    is_internal(Ipv4Addr::from(ip).into()),
                    "{}",
                    Ipv4Addr::from(ip)
                );
            }
            for outside in [first.wrapping_sub(1), last.wrapping_add(1)] {
                let ip = Ipv4Addr::from(outside);
                let covered = SPECIAL_V4.iter().any(|(n, l)| {
                    let mask = u32::MAX.checked_shl(32 - u32::from(*l)).unwrap_or(0);
                    outside & mask == u32::from(*n) & mask
                });
                assert_eq!(is_internal(ip.into()), covered, "{ip}");
            }
        }
        for (net, len) in SPECIAL_V6 {
            let first = u128::from(*net);
            let last = first | (u128::MAX.checked_shr(u32::from(*len)).unwrap_or(0));
            for ip in [first, last] {
                assert!(
                    is_internal(Ipv6Addr::from(ip).into()),
                    "{}",
                    Ipv6Addr::from(ip)
                );
            }
        }
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "198.18.0.1",
            "198.19.255.255",
            "240.0.0.1",
            "255.255.255.255",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",      // IPv4-compatible
            "::10.0.0.1",       // IPv4-compatible
            "2002:7f00:1::1",   // 6to4 of 127.0.0.1
            "2002:a9fe:a9fe::", // 6to4 of 169.254.169.254
            "64:ff9b::7f00:1",  // NAT64 of 127.0.0.1
            "64:ff9b::808:808", // NAT64 of anything
            "2001:db8::1",
            "2001::1", // Teredo
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700::1111",
            "172.32.0.1",
            "198.20.0.1",
            "223.255.255.255",
            "::ffff:8.8.8.8",
            "2002:808:808::1", // 6to4 of 8.8.8.8
            "2a00:1450::1",
        ] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn the_built_url_keeps_the_base_urls_origin_and_path() {
        let ok = |base: &str, path: &str| build_url(base, path).map(|u| u.to_string());
        assert_eq!(
            ok("https://api.example.com", "/crm/v3/contacts/a%2F..%2Fx").unwrap(),
            "https://api.example.com/crm/v3/contacts/a%2F..%2Fx"
        );
        assert_eq!(
            ok("https://api.example.com/v2/", "/search?q=1").unwrap(),
            "https://api.example.com/v2/search?q=1"
        );
        for (base, path) in [
            ("https://api.example.com", "@evil.example/x"),
            ("https://api.example.com", "/a/../../b"),
            ("https://api.example.com/v2", "/../admin"),
            ("https://api.example.com/v2", "/%2e%2E/admin"),
            ("https://api.example.com/v2", "/./x"),
            ("https://api.example.com", "//evil.example/x"),
            ("https://api.example.com", "/a//b"),
            ("https://api.example.com", ".evil.example/x"),
            ("https://api.example.com", ":8443/x"),
            ("https://api.example.com/v2", "x"),
        ] {
            let e = build_url(base, path).unwrap_err();
            assert!(matches!(e, CallError::Blocked(_)), "{base} {path}: {e}");
        }
        // A backslash is a slash to URL parsers: the origin still holds.
        let e = build_url("https://api.example.com/v2", "/\\..\\..\\x");
        if let Ok(u) = &e {
            assert_eq!(u.host_str(), Some("api.example.com"));
            assert!(u.path().starts_with("/v2/"), "{u}");
        }
    }

    #[test]
    fn a_url_action_sends_only_under_its_allowed_urls() {
        let allowed = [reqwest::Url::parse("https://hooks.slack.com/commands/").unwrap()];
        for ok in [
            "https://hooks.slack.com/commands/T1/42/abc",
            "https://hooks.slack.com:443/commands/x",
        ] {
            assert!(allowed_url(ok, &allowed).is_ok(), "{ok}");
        }
        for bad in [
            "https://hooks.slack.com.evil.example/commands/x", // another host
            "https://hooks.slack.com/commandsx/y",             // not under the path
            "https://hooks.slack.com/commands/../api/x",       // normalised out of it
            "http://hooks.slack.com/commands/x",               // another scheme
            "https://hooks.slack.com:8443/commands/x",         // another port
            "https://u:p@hooks.slack.com/commands/x",          // user info
            "not a url",
        ] {
            assert!(
                matches!(allowed_url(bad, &allowed), Err(CallError::Blocked(_))),
                "{bad}"
            );
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
