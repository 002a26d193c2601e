//! Connectors: one SaaS app each, described in `connectors/NAME.yaml`.
//!
//! A connector file declares how to reach the app (base URL, auth, secrets),
//! its *actions* (declarative HTTP calls with templated path, query, headers
//! and body, and output fields picked by JSONPath) and, optionally, how its
//! inbound webhooks are verified and read. Files are compiled here, once, into
//! [`Connector`]s; [`http`] runs actions. This module knows nothing about
//! recipes, runs or the store.

pub mod config;
pub mod http;
pub mod jwt;
pub mod limits;
pub mod oauth;
pub mod poll;
pub mod secrets;

use crate::jsonpath::JsonPath;
use crate::secret::Secret;
use crate::signature::SignatureConfig;
use crate::template::{Template, Templates, ValueTemplate};
use crate::yaml::{LoadError, SourceMap};
use config::{ActionFile, AuthFile, ConnectorFile, FieldSource, IdempotencyHeader};
use reqwest::Method;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use secrets::SecretSource;

/// Default time an action may take before it fails as timed out.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A compiled connector.
#[derive(Debug)]
pub struct Connector {
    pub name: String,
    pub base_url: String,
    pub auth: Auth,
    /// Shared with the compiled recipe steps that call them.
    pub actions: BTreeMap<String, Arc<Action>>,
    pub webhook: Option<Webhook>,
    /// Values of the secrets this connector declared, for templates and redaction.
    pub secrets: BTreeMap<String, Secret>,
    /// Every form of a secret that may show up in a record and is replaced
    /// by `***` (see `http::redaction_forms`), longest first.
    pub redactions: Vec<Secret>,
    /// May this connector call loopback / private / link-local addresses?
    pub allow_internal: bool,
    /// Rate / concurrency limits and the circuit breaker, shared by all runs.
    pub limits: limits::Limits,
    /// Header carrying `<run id>:<step id>`; none when disabled.
    pub idempotency_header: Option<String>,
    /// Where `url:` actions may send (parsed at load).
    pub allowed_urls: Vec<reqwest::Url>,
    /// Polling triggers, by name (`polls:`).
    pub polls: BTreeMap<String, Arc<poll::Poll>>,
}

impl Connector {
    /// Does this connector make events of `event_type` by a poll?
    pub fn poll_for(&self, event_type: &str) -> Option<&Arc<poll::Poll>> {
        self.polls.values().find(|p| p.event_type == event_type)
    }
}

#[derive(Debug)]
pub enum Auth {
    None,
    Bearer(Template),
    Basic {
        username: Template,
        password: Template,
    },
    Header {
        name: String,
        value: Template,
    },
    Query {
        name: String,
        value: Template,
    },
    /// `Authorization: Bearer` with an access token from the token endpoint.
    OAuth2(Box<oauth::OAuth2>),
}

#[derive(Debug)]
pub struct Action {
    pub name: String,
    pub method: Method,
    pub target: Target,
    pub query: Vec<(String, Template)>,
    pub headers: Vec<(String, Template)>,
    pub body: Body,
    pub timeout: Duration,
    pub retry: limits::RetryPolicy,
    /// Declared inputs: name → required?
    pub inputs: BTreeMap<String, bool>,
    /// Output fields: name → JSONPath into the response body. Empty: the whole body.
    pub output: Vec<(String, JsonPath)>,
    /// A 2xx answer that means failure (`fail_when:`).
    pub fail_when: Option<FailWhen>,
    /// Webhook event types this call makes the app send (`causes:`).
    pub causes: Vec<String>,
}

/// `fail_when:` compiled: when the answer's node at `path` passes `test`,
/// the call failed although its HTTP status is a success.
#[derive(Debug)]
pub struct FailWhen {
    pub path: JsonPath,
    pub test: ValueTest,
    /// Where the answer says why (`$.error`).
    pub reason: Option<JsonPath>,
}

/// The one test of a `fail_when:`.
#[derive(Debug, Clone, PartialEq)]
pub enum ValueTest {
    Equals(Value),
    NotEquals(Value),
    Exists(bool),
}

impl ValueTest {
    /// Does the node (`None`: the path selects nothing) pass? A `null` node
    /// counts as missing.
    pub fn holds(&self, node: Option<&Value>) -> bool {
        let node = node.filter(|v| !v.is_null());
        match self {
            ValueTest::Equals(v) => node == Some(v),
            ValueTest::NotEquals(v) => node != Some(v),
            ValueTest::Exists(e) => node.is_some() == *e,
        }
    }
}

impl FailWhen {
    /// Why `answer` is a failure, or `None` when it is not. Used by the HTTP
    /// runtime on a real answer and by `switchboard test` on a mock.
    pub fn check(&self, answer: &Value) -> Option<String> {
        let node = self.path.first(answer).filter(|v| !v.is_null());
        if !self.test.holds(node) {
            return None;
        }
        let what = match (&self.test, node) {
            (ValueTest::Equals(v), _) => format!("is {v}"),
            (ValueTest::NotEquals(v), Some(n)) => format!("is {n}, not {v}"),
            (ValueTest::NotEquals(v), None) => format!("is missing, not {v}"),
            (ValueTest::Exists(true), _) => "exists".to_string(),
            (ValueTest::Exists(false), _) => "is missing".to_string(),
        };
        let mut msg = format!(
            "a success status, but the answer says the call failed: `{}` {what}",
            self.path.as_str()
        );
        if let Some(why) = self.reason.as_ref().and_then(|r| r.first(answer)) {
            match why {
                Value::String(s) => msg.push_str(&format!(": {s}")),
                Value::Null => {}
                other => msg.push_str(&format!(": {other}")),
            }
        }
        Some(msg)
    }
}

/// Where an action sends.
#[derive(Debug)]
pub enum Target {
    /// `path:` under the connector's base URL (values print as encoded segments).
    Path(Template),
    /// `url:` rendered whole, refused unless under one of the connector's `allowed_urls`.
    Url(Template),
}

#[derive(Debug)]
pub enum Body {
    None,
    Json(ValueTemplate),
    Form(Vec<(String, Template)>),
}

/// How inbound webhooks for this connector are verified and read.
#[derive(Debug)]
pub struct Webhook {
    pub verifier: crate::signature::Verifier,
    pub event_type: Option<Field>,
    pub event_id: Option<Field>,
    /// `dedupe_window`: refuse a body seen within it.
    pub dedupe_window: Option<Duration>,
    /// `normalize:`: other body shapes, read into the one recipes use.
    pub normalize: Vec<Normalize>,
    /// `object_key:` (template source over `event`): the default key of a
    /// recipe's loop breaker; compiled by the recipe, in its own context.
    pub object_key: Option<String>,
}

/// One compiled `webhook.normalize:` entry.
#[derive(Debug)]
pub struct Normalize {
    pub path: JsonPath,
    pub test: ValueTest,
    /// Over `{body}`.
    pub body: ValueTemplate,
}

impl Webhook {
    /// The body recipes see: `body` itself, or what the first `normalize`
    /// entry whose `when` holds renders from it (fields rendering `null` left
    /// out). Ingress and `switchboard test` both read events through this.
    pub fn normalize(&self, templates: &Templates, body: Value) -> Result<Value, String> {
        let Some(n) = self
            .normalize
            .iter()
            .find(|n| n.test.holds(n.path.first(&body)))
        else {
            return Ok(body);
        };
        // Moved in (`json!` would copy it through its serializer).
        let ctx = Value::Object(serde_json::Map::from_iter([("body".to_string(), body)]));
        let out = templates
            .render_value(&n.body, &ctx)
            .map_err(|e| e.to_string())?;
        Ok(drop_nulls(&n.body, out))
    }
}

/// `value` (rendered from `t`) without the fields of `t`'s mappings that
/// rendered `null`. A value one template produced (`"{{ body }}"`) is kept
/// as it is, nulls and all.
fn drop_nulls(t: &ValueTemplate, value: Value) -> Value {
    match (t, value) {
        (ValueTemplate::Object(fields), Value::Object(mut map)) => {
            for (k, sub) in fields {
                match map.remove(k) {
                    None | Some(Value::Null) => {}
                    Some(v) => {
                        map.insert(k.clone(), drop_nulls(sub, v));
                    }
                }
            }
            Value::Object(map)
        }
        (ValueTemplate::Array(items), Value::Array(values)) => Value::Array(
            items
                .iter()
                .zip(values)
                .map(|(t, v)| drop_nulls(t, v))
                .collect(),
        ),
        (_, other) => other,
    }
}

/// Where a value of an inbound request is read from.
#[derive(Debug)]
pub enum Field {
    Path(JsonPath),
    Header(String),
    Value(String),
}

impl Field {
    /// The field's value for one request: a header through `header`, the
    /// first node a path selects in the parsed body (a non-string as JSON
    /// text, `null` as nothing), or the fixed value. Ingress and `switchboard
    /// test` both read event types through this.
    pub fn read(
        &self,
        header: impl FnOnce(&str) -> Option<String>,
        body: &Value,
    ) -> Option<String> {
        match self {
            Field::Value(v) => Some(v.clone()),
            Field::Header(h) => header(h),
            Field::Path(p) => match p.first(body)? {
                Value::String(s) => Some(s.clone()),
                Value::Null => None,
                other => Some(other.to_string()),
            },
        }
    }
}

/// All loaded connectors, by name.
#[derive(Debug, Default)]
pub struct Connectors {
    /// Shared with the compiled recipe steps that call them (a step holds
    /// its resolved connector and action).
    pub by_name: HashMap<String, Arc<Connector>>,
    /// Connectors with secrets that are not set, each with one error per
    /// missing secret. They are compiled (so recipes using them are checked)
    /// with stand-in values; the catalog decides, once it knows which
    /// connectors the recipes use, whether these are errors (a recipe uses
    /// the connector) or warnings (the connector is then dropped:
    /// [`Connectors::drop_unusable`]).
    pub missing_secrets: BTreeMap<String, Vec<LoadError>>,
}

impl Connectors {
    pub fn get(&self, name: &str) -> Option<&Connector> {
        self.by_name.get(name).map(|c| &**c)
    }

    /// Settle the connectors whose secrets are missing, given whether a
    /// loaded recipe uses each (its trigger, a call, a `wait_for` or
    /// `cancel_on`): a used one is an error per missing secret; an unused
    /// one is a warning and is removed, so nothing runs on stand-in
    /// credentials and its webhook answers 404.
    pub fn drop_unusable(
        &mut self,
        used: impl Fn(&str) -> bool,
        errors: &mut Vec<LoadError>,
        warnings: &mut Vec<LoadError>,
    ) {
        for (name, missing) in std::mem::take(&mut self.missing_secrets) {
            if used(&name) {
                errors.extend(missing);
                continue;
            }
            self.by_name.remove(&name);
            warnings.extend(missing.into_iter().map(|mut e| {
                e.message = format!(
                    "warning: {}; no loaded recipe uses connector `{name}`, so it is not loaded (its webhook answers 404)",
                    e.message
                );
                e
            }));
        }
    }
}

/// What the loader needs besides the files.
pub struct LoadOptions<'a> {
    pub secrets: &'a SecretSource,
    /// Connector names allowed to call internal addresses (`*` = all).
    pub allow_internal: &'a [String],
}

/// Load every `*.yaml` / `*.yml` file in `dir`. Errors are collected, not
/// stopped at; `warnings` gets what works but deserves a look
/// (`signature: { scheme: none }`).
pub fn load_dir(
    dir: &Path,
    templates: &mut Templates,
    opts: &LoadOptions<'_>,
    errors: &mut Vec<LoadError>,
    warnings: &mut Vec<LoadError>,
) -> Connectors {
    let mut out = Connectors::default();
    for (path, text) in crate::yaml::read_dir(dir, errors) {
        match crate::yaml::load::<ConnectorFile>(&path, &text) {
            Err(e) => errors.push(e),
            Ok((file, map)) => {
                let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
                if file.name != stem {
                    errors.push(map.error(
                        "/name",
                        format!(
                            "connector name `{}` must match its file name `{stem}`",
                            file.name
                        ),
                    ));
                    continue;
                }
                if out.by_name.contains_key(&file.name) {
                    errors.push(map.error("/name", format!("duplicate connector `{}`", file.name)));
                    continue;
                }
                if let Some(SignatureConfig::None {}) = file.webhook.as_ref().map(|w| &w.signature)
                {
                    warnings.push(map.error(
                        "/webhook/signature/scheme",
                        format!(
                            "warning: connector `{}` accepts unsigned webhooks (`scheme: none`): anyone who can reach the hub can trigger its recipes",
                            file.name
                        ),
                    ));
                }
                if let Some(w) = file.webhook.as_ref() {
                    let untimed = matches!(
                        &w.signature,
                        SignatureConfig::Github(_)
                            | SignatureConfig::Shopify(_)
                            | SignatureConfig::Token(_)
                    ) || matches!(&w.signature, SignatureConfig::Hmac(h) if h.timestamp_header.is_none());
                    if untimed && w.dedupe_window.is_none() {
                        warnings.push(map.error(
                            "/webhook/signature/scheme",
                            format!(
                                "warning: connector `{}` is replayable: its signature scheme signs no timestamp, so a captured delivery stays valid forever; set `webhook.dedupe_window` (e.g. 24h) to refuse a body seen again within it",
                                file.name
                            ),
                        ));
                    }
                }
                let mut missing = Vec::new();
                if let Some(c) = compile(file, &map, templates, opts, &mut missing, errors) {
                    if !missing.is_empty() {
                        out.missing_secrets.insert(c.name.clone(), missing);
                    }
                    out.by_name.insert(c.name.clone(), Arc::new(c));
                } else {
                    errors.extend(missing);
                }
            }
        }
    }
    out
}

fn compile(
    file: ConnectorFile,
    map: &SourceMap,
    templates: &mut Templates,
    opts: &LoadOptions<'_>,
    missing: &mut Vec<LoadError>,
    errors: &mut Vec<LoadError>,
) -> Option<Connector> {
    let name = file.name.clone();

    // Secrets: every declared one must be set. A missing one goes to
    // `missing` (an error if a recipe uses the connector, see
    // `Connectors::drop_unusable`) but the rest is still compiled, so
    // recipes using this connector are checked too instead of failing with
    // "unknown connector".
    let mut secrets = BTreeMap::new();
    for (i, s) in file.secrets.iter().enumerate() {
        match opts.secrets.get(&name, s) {
            Some(v) => {
                secrets.insert(s.clone(), v);
            }
            None => missing.push(map.error(
                &format!("/secrets/{i}"),
                format!(
                    "connector `{name}`: secret `{s}` is not set (set {} or add `{name}: {{ {s}: ... }}` to the secrets file)",
                    SecretSource::env_name(&name, s)
                ),
            )),
        }
    }
    let before = errors.len();
    let cx = TplCx {
        map,
        secrets: &file.secrets,
    };
    let base_url = opts
        .secrets
        .base_url(&name)
        .unwrap_or_else(|| file.base_url.clone());
    if reqwest::Url::parse(&base_url).is_err() {
        errors.push(map.error(
            "/base_url",
            format!("invalid base URL `{base_url}`, expected e.g. https://api.example.com"),
        ));
    }

    let auth = match &file.auth {
        None => Auth::None,
        Some(AuthFile::Bearer { token }) => {
            match cx.compile(templates, token, "/auth/token", None, errors) {
                Some(t) => Auth::Bearer(t),
                None => Auth::None,
            }
        }
        Some(AuthFile::Basic { username, password }) => {
            let u = cx.compile(templates, username, "/auth/username", None, errors);
            let p = cx.compile(templates, password, "/auth/password", None, errors);
            match (u, p) {
                (Some(username), Some(password)) => Auth::Basic { username, password },
                _ => Auth::None,
            }
        }
        Some(AuthFile::Header { name: h, value }) => {
            match cx.compile(templates, value, "/auth/value", None, errors) {
                Some(value) => Auth::Header {
                    name: h.clone(),
                    value,
                },
                None => Auth::None,
            }
        }
        Some(AuthFile::Query { name: q, value }) => {
            match cx.compile(templates, value, "/auth/value", None, errors) {
                Some(value) => Auth::Query {
                    name: q.clone(),
                    value,
                },
                None => Auth::None,
            }
        }
        Some(a @ AuthFile::OAuth2 { .. }) => {
            let at = OAuthAt {
                name: &name,
                base_url: &base_url,
                timeout: file.timeout.map(|t| t.0).unwrap_or(DEFAULT_TIMEOUT),
                file: opts.secrets.token_file(&name),
            };
            match compile_oauth(a, &at, &cx, templates, errors) {
                Some(o) => Auth::OAuth2(Box::new(o)),
                None => Auth::None,
            }
        }
    };

    let retry = limits::RetryPolicy::default().with(file.retry.as_ref());
    let limits = limits::Limits::new(file.limits.as_ref(), file.circuit_breaker.as_ref())
        .map_err(|e| errors.push(map.error("/limits/concurrency", e)))
        .ok();
    let idempotency_header = match &file.idempotency_header {
        None | Some(IdempotencyHeader::Enabled(true)) => Some("Idempotency-Key".to_string()),
        Some(IdempotencyHeader::Enabled(false)) => None,
        Some(IdempotencyHeader::Name(n)) => {
            if reqwest::header::HeaderName::from_bytes(n.as_bytes()).is_err() {
                errors.push(map.error("/idempotency_header", format!("invalid header name `{n}`")));
            }
            Some(n.clone())
        }
    };

    let mut allowed_urls = Vec::new();
    for (i, u) in file.allowed_urls.iter().enumerate() {
        match reqwest::Url::parse(u) {
            Ok(url)
                if matches!(url.scheme(), "http" | "https")
                    && url.host().is_some()
                    && url.username().is_empty()
                    && url.password().is_none() =>
            {
                allowed_urls.push(url)
            }
            _ => errors.push(map.error(
                &format!("/allowed_urls/{i}"),
                format!("invalid allowed URL `{u}`, expected `https://host[:port]/path-prefix`"),
            )),
        }
    }
    let mut actions = BTreeMap::new();
    let defaults = ActionDefaults {
        timeout: file.timeout.map(|t| t.0),
        retry,
        urls_allowed: !file.allowed_urls.is_empty(),
    };
    for (aname, a) in &file.actions {
        let p = format!("/actions/{}", crate::yaml::escape(aname));
        if let Some(action) = compile_action(aname, a, &p, &cx, templates, &defaults, errors) {
            actions.insert(aname.clone(), Arc::new(action));
        }
    }

    let polls = poll::compile_all(&name, &file.polls, &actions, &cx, templates, errors);

    let webhook = file.webhook.as_ref().and_then(|w| {
        let secret_values: Vec<Secret> = match w.signature.secret() {
            None => Vec::new(),
            Some(s) if !file.secrets.iter().any(|d| d == s) => {
                errors.push(map.error(
                    "/webhook/signature/secret",
                    format!("signing secret `{s}` is not declared in `secrets:`"),
                ));
                return None;
            }
            // Every active value is accepted (rotation: a YAML list, or the
            // variable and `<variable>_PREVIOUS`). A value is never split.
            Some(s) => opts.secrets.get_all(&name, s).unwrap_or_default(),
        };
        // A missing secret is already reported; check the rest of the
        // section with a stand-in value (the catalog is refused, or the
        // connector dropped, anyway).
        let secret_values = if secrets_missing(&file, w, &secrets) {
            vec![Secret::new("c3RhbmQtaW4=")]
        } else {
            secret_values
        };
        let verifier = match crate::signature::Verifier::new(&w.signature, secret_values) {
            Ok(v) => Some(v),
            Err(e) => {
                errors.push(map.error(&format!("/webhook/signature/{}", e.key()), e.to_string()));
                None
            }
        };
        let field =
            |f: &Option<FieldSource>, ptr: &str, errors: &mut Vec<LoadError>| -> Option<Field> {
                match f {
                    None => None,
                    Some(FieldSource::Path(p)) => match JsonPath::compile(p) {
                        Ok(jp) => Some(Field::Path(jp)),
                        Err(e) => {
                            errors.push(map.error(&format!("{ptr}/path"), e));
                            None
                        }
                    },
                    Some(FieldSource::Header(h)) => Some(Field::Header(h.clone())),
                    Some(FieldSource::Value(v)) => Some(Field::Value(v.clone())),
                }
            };
        let event_type = field(&w.event_type, "/webhook/event_type", errors);
        let event_id = field(&w.event_id, "/webhook/event_id", errors);
        let mut normalize = Vec::new();
        for (i, n) in w.normalize.iter().enumerate() {
            let p = format!("/webhook/normalize/{i}");
            let w = &n.when;
            let when = node_test(
                (&w.path, [&w.equals, &w.not_equals], w.exists),
                &format!("{p}/when"),
                map,
                errors,
            );
            let body = match templates.compile_value_at(&n.body, map, &format!("{p}/body"), errors) {
                Some(vt) => {
                    let mut leaves = Vec::new();
                    templates.leaves(&vt, format!("{p}/body"), &mut leaves);
                    for (ptr, t) in leaves {
                        for var in templates.variables(t) {
                            if var != "body" && !var.starts_with("body.") {
                                errors.push(map.error(
                                    &ptr,
                                    format!("unknown template variable `{var}`: a `normalize` body reads `body` (the body as received)"),
                                ));
                            }
                        }
                    }
                    Some(vt)
                }
                None => None,
            };
            if let (Some((path, test)), Some(body)) = (when, body) {
                normalize.push(Normalize { path, test, body });
            }
        }
        // Compiled again by each recipe whose loop breaker uses it; checked
        // here so a mistake points at the connector file.
        if let Some(key) = &w.object_key {
            if let Some(t) = templates.compile_at(key, map, "/webhook/object_key", errors) {
                for var in templates.variables(&t) {
                    if var != "event" && !var.starts_with("event.") {
                        errors.push(map.error(
                            "/webhook/object_key",
                            format!("unknown template variable `{var}`: `object_key` reads `event` (the event as recipes see it)"),
                        ));
                    }
                }
            }
        }
        Some(Webhook {
            verifier: verifier?,
            event_type,
            event_id,
            dedupe_window: w.dedupe_window.map(|d| d.0),
            normalize,
            object_key: w.object_key.clone(),
        })
    });

    let limits = limits?;
    if errors.len() > before {
        return None;
    }
    let allow_internal = opts.allow_internal.iter().any(|a| a == "*" || *a == name);
    let redactions = http::redaction_forms(&secrets, &auth, templates);
    Some(Connector {
        name,
        base_url: base_url.trim_end_matches('/').to_string(),
        auth,
        actions,
        webhook,
        redactions,
        secrets,
        allow_internal,
        limits,
        idempotency_header,
        allowed_urls,
        polls,
    })
}

/// Where an `oauth2` section is compiled: its connector's name, base URL
/// (token paths are under its origin), default timeout and token file.
struct OAuthAt<'a> {
    name: &'a str,
    base_url: &'a str,
    timeout: Duration,
    file: Option<std::path::PathBuf>,
}

/// Compile `auth: { type: oauth2 }`, every problem at its key.
fn compile_oauth(
    a: &AuthFile,
    at: &OAuthAt<'_>,
    cx: &TplCx<'_>,
    templates: &mut Templates,
    errors: &mut Vec<LoadError>,
) -> Option<oauth::OAuth2> {
    use config::{ClientAuth, OAuthGrant};
    let AuthFile::OAuth2 {
        grant,
        token_url,
        client_id,
        client_secret,
        client_auth,
        scopes,
        audience,
        authorize_url,
        redirect_uri,
        refresh_token,
        refresh_before,
        private_key,
        subject,
        key_id,
    } = a
    else {
        return None;
    };
    let map = cx.map;
    let before = errors.len();
    let token_url = if token_url.starts_with('/') {
        reqwest::Url::parse(at.base_url)
            .ok()
            .and_then(|b| b.join(token_url).ok())
    } else {
        reqwest::Url::parse(token_url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
    };
    if token_url.is_none() {
        errors.push(map.error(
            "/auth/token_url",
            "invalid `token_url`, expected a URL (`https://app.example.com/oauth/token`) or a path under the base URL (`/oauth/token`)",
        ));
    }
    let client_id = cx.compile(templates, client_id, "/auth/client_id", None, errors);
    let client_secret = match client_secret {
        Some(t) => cx
            .compile(templates, t, "/auth/client_secret", None, errors)
            .map(Some),
        None => {
            if *grant == OAuthGrant::ClientCredentials {
                errors.push(map.error(
                    "/auth",
                    format!(
                        "missing `client_secret`: the client-credentials grant authenticates the app itself; declare it in `secrets:` and add `client_secret: \"{{{{ secrets.client_secret }}}}\"` (set {})",
                        SecretSource::env_name(at.name, "client_secret")
                    ),
                ));
            } else if *client_auth == Some(ClientAuth::Basic) {
                errors.push(map.error(
                    "/auth/client_auth",
                    "`client_auth: basic` needs a `client_secret` (a public client without one sends its `client_id` in the body)",
                ));
            }
            Some(None)
        }
    };
    for (i, s) in scopes.iter().enumerate() {
        if s.is_empty()
            || s.chars()
                .any(|c| c.is_whitespace() || c == '"' || c == '\\')
        {
            errors.push(map.error(
                &format!("/auth/scopes/{i}"),
                format!("invalid scope `{s}`: one scope per list item, without spaces or quotes"),
            ));
        }
    }
    let code_only = |key: &str, given: bool, errors: &mut Vec<LoadError>| {
        if given && *grant != OAuthGrant::AuthorizationCode {
            errors.push(map.error(
                &format!("/auth/{key}"),
                format!("`{key}` is for `grant: authorization_code`; this grant has no user to send anywhere"),
            ));
        }
    };
    code_only("authorize_url", authorize_url.is_some(), errors);
    code_only("redirect_uri", redirect_uri.is_some(), errors);
    code_only("refresh_token", refresh_token.is_some(), errors);
    let authorize_url = match authorize_url {
        None => {
            if *grant == OAuthGrant::AuthorizationCode && refresh_token.is_none() {
                errors.push(map.error(
                    "/auth",
                    "`grant: authorization_code` needs `authorize_url` (where `switchboard connect` sends you to grant access) or a `refresh_token`",
                ));
            }
            None
        }
        Some(u) => match reqwest::Url::parse(u) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                Some(url)
            }
            _ => {
                errors.push(map.error(
                    "/auth/authorize_url",
                    format!("invalid `authorize_url` `{u}`, expected e.g. https://app.example.com/oauth/authorize"),
                ));
                None
            }
        },
    };
    let redirect = redirect_uri
        .as_deref()
        .unwrap_or(oauth::DEFAULT_REDIRECT_URI);
    let redirect_uri = match reqwest::Url::parse(redirect) {
        Ok(u)
            if u.scheme() == "http"
                && matches!(u.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"))
                && u.port().is_some() =>
        {
            Some(u)
        }
        _ => {
            errors.push(map.error(
                "/auth/redirect_uri",
                format!("invalid `redirect_uri` `{redirect}`: `connect` listens on it, so it must be a loopback URL with a port, e.g. http://127.0.0.1:8976/callback"),
            ));
            None
        }
    };
    let refresh_seed = match refresh_token {
        Some(t) => cx
            .compile(templates, t, "/auth/refresh_token", None, errors)
            .map(Some),
        None => Some(None),
    };
    let jwt_only = |key: &str, given: bool, errors: &mut Vec<LoadError>| {
        if given && *grant != OAuthGrant::JwtBearer {
            errors.push(map.error(
                &format!("/auth/{key}"),
                format!("`{key}` is for `grant: jwt_bearer`"),
            ));
        }
    };
    jwt_only("private_key", private_key.is_some(), errors);
    jwt_only("subject", subject.is_some(), errors);
    jwt_only("key_id", key_id.is_some(), errors);
    let mut tpl = |t: &Option<String>, key: &str, errors: &mut Vec<LoadError>| match t {
        Some(t) => cx
            .compile(templates, t, &format!("/auth/{key}"), None, errors)
            .map(Some),
        None => Some(None),
    };
    let jwt = if *grant == OAuthGrant::JwtBearer {
        let key = tpl(private_key, "private_key", errors);
        let subject = tpl(subject, "subject", errors);
        let key_id = tpl(key_id, "key_id", errors);
        if private_key.is_none() {
            errors.push(map.error(
                "/auth",
                format!(
                    "`grant: jwt_bearer` needs `private_key`: the PEM key that signs the assertion (a service account key file's `private_key`); declare it in `secrets:` and add `private_key: \"{{{{ secrets.private_key }}}}\"` (set {})",
                    SecretSource::env_name(at.name, "private_key")
                ),
            ));
        }
        match (key, subject, key_id) {
            (Some(Some(private_key)), Some(subject), Some(key_id)) => Some(oauth::JwtSettings {
                private_key,
                subject,
                key_id,
            }),
            _ => None,
        }
    } else {
        None
    };
    let refresh_before = refresh_before
        .map(|d| d.0)
        .unwrap_or(oauth::DEFAULT_REFRESH_BEFORE);
    if errors.len() > before {
        return None;
    }
    Some(oauth::OAuth2::new(oauth::Settings {
        connector: at.name.to_string(),
        grant: *grant,
        token_url: token_url?,
        client_id: client_id?,
        client_secret: client_secret?,
        client_auth: client_auth.unwrap_or(ClientAuth::Basic),
        scopes: scopes.clone(),
        audience: audience.clone(),
        authorize_url,
        redirect_uri: redirect_uri?,
        refresh_seed: refresh_seed?,
        refresh_before,
        timeout: at.timeout,
        file: at.file.clone(),
        jwt,
    }))
}

/// What actions inherit from their connector.
struct ActionDefaults {
    timeout: Option<Duration>,
    retry: limits::RetryPolicy,
    /// The connector lists `allowed_urls` (else a `url:` action is an error).
    urls_allowed: bool,
}

fn secrets_missing(
    file: &ConnectorFile,
    w: &config::WebhookFile,
    have: &BTreeMap<String, Secret>,
) -> bool {
    match w.signature.secret() {
        Some(s) => file.secrets.iter().any(|d| d == s) && !have.contains_key(s),
        None => false,
    }
}

fn compile_action(
    name: &str,
    a: &ActionFile,
    p: &str,
    cx: &TplCx<'_>,
    templates: &mut Templates,
    defaults: &ActionDefaults,
    errors: &mut Vec<LoadError>,
) -> Option<Action> {
    let map = cx.map;
    let before = errors.len();
    let method = a.method.0.clone();
    let inputs: BTreeMap<String, bool> = a
        .inputs
        .iter()
        .map(|(k, v)| (k.clone(), v.required()))
        .collect();
    let target = match (&a.path, &a.url) {
        (Some(path), None) => cx
            .compile_path(templates, path, &format!("{p}/path"), &inputs, errors)
            .map(Target::Path),
        (None, Some(_)) if !defaults.urls_allowed => {
            errors.push(map.error(
                &format!("{p}/url"),
                "an action with `url:` needs the connector's `allowed_urls:` (where it may send)",
            ));
            None
        }
        (None, Some(url)) => cx
            .compile(templates, url, &format!("{p}/url"), Some(&inputs), errors)
            .map(Target::Url),
        (Some(_), Some(_)) => {
            errors.push(map.error(
                &format!("{p}/url"),
                "an action has either `path:` (under the base URL) or `url:`, not both",
            ));
            None
        }
        (None, None) => {
            errors.push(map.error(
                p,
                "an action needs `path:` (under the base URL) or `url:` (under `allowed_urls`)",
            ));
            None
        }
    };
    let pairs = |m: &BTreeMap<String, String>,
                 field: &str,
                 templates: &mut Templates,
                 errors: &mut Vec<LoadError>| {
        m.iter()
            .filter_map(|(k, v)| {
                let ptr = format!("{p}/{field}/{}", crate::yaml::escape(k));
                cx.compile(templates, v, &ptr, Some(&inputs), errors)
                    .map(|t| (k.clone(), t))
            })
            .collect::<Vec<_>>()
    };
    let query = pairs(&a.query, "query", templates, errors);
    let headers = pairs(&a.headers, "headers", templates, errors);
    let body = match (&a.body, &a.form) {
        (None, None) => Body::None,
        (Some(_), Some(_)) => {
            errors.push(map.error(
                &format!("{p}/form"),
                "an action has either `body:` (JSON) or `form:`, not both",
            ));
            Body::None
        }
        (None, Some(fields)) => Body::Form(pairs(fields, "form", templates, errors)),
        (Some(v), None) => match templates.compile_value_at(v, map, &format!("{p}/body"), errors) {
            Some(vt) => {
                let mut leaves = Vec::new();
                templates.leaves(&vt, format!("{p}/body"), &mut leaves);
                for (ptr, t) in leaves {
                    cx.check(templates, t, &ptr, Some(&inputs), errors);
                }
                Body::Json(vt)
            }
            None => Body::None,
        },
    };
    let fail_when = a
        .fail_when
        .as_ref()
        .and_then(|f| compile_fail_when(f, &format!("{p}/fail_when"), map, errors));
    let mut output = Vec::new();
    for (k, v) in &a.output {
        match JsonPath::compile(v) {
            Ok(jp) => output.push((k.clone(), jp)),
            Err(e) => errors.push(map.error(&format!("{p}/output/{}", crate::yaml::escape(k)), e)),
        }
    }
    if errors.len() > before {
        return None;
    }
    Some(Action {
        name: name.to_string(),
        method,
        target: target?,
        query,
        headers,
        body,
        timeout: a
            .timeout
            .map(|t| t.0)
            .or(defaults.timeout)
            .unwrap_or(DEFAULT_TIMEOUT),
        retry: defaults.retry.with(a.retry.as_ref()),
        inputs,
        output,
        fail_when,
        causes: a.causes.clone(),
    })
}

fn compile_fail_when(
    f: &config::FailWhenFile,
    p: &str,
    map: &SourceMap,
    errors: &mut Vec<LoadError>,
) -> Option<FailWhen> {
    let test = node_test(
        (&f.path, [&f.equals, &f.not_equals], f.exists),
        p,
        map,
        errors,
    );
    let reason = match &f.reason {
        None => Some(None),
        Some(r) => JsonPath::compile(r)
            .map(Some)
            .map_err(|e| errors.push(map.error(&format!("{p}/reason"), e)))
            .ok(),
    };
    let (path, test) = test?;
    Some(FailWhen {
        path,
        test,
        reason: reason?,
    })
}

/// The node and its one test of a `fail_when` / `when`: `path` and exactly
/// one of `equals`, `not_equals`, `exists`.
fn node_test(
    (path, [equals, not_equals], exists): (&str, [&Option<Value>; 2], Option<bool>),
    p: &str,
    map: &SourceMap,
    errors: &mut Vec<LoadError>,
) -> Option<(JsonPath, ValueTest)> {
    let path = JsonPath::compile(path)
        .map_err(|e| errors.push(map.error(&format!("{p}/path"), e)))
        .ok();
    let tests: Vec<ValueTest> = [
        equals.clone().map(ValueTest::Equals),
        not_equals.clone().map(ValueTest::NotEquals),
        exists.map(ValueTest::Exists),
    ]
    .into_iter()
    .flatten()
    .collect();
    if tests.len() != 1 {
        let key = p.rsplit('/').next().unwrap_or("");
        errors.push(map.error(
            p,
            format!("`{key}` takes `path` and exactly one of `equals`, `not_equals`, `exists`"),
        ));
        return None;
    }
    Some((path?, tests.into_iter().next()?))
}

/// What connector templates may read: `input.NAME` (declared inputs, in
/// actions only) and `secrets.NAME` (declared secrets).
struct TplCx<'a> {
    map: &'a SourceMap,
    secrets: &'a [String],
}

impl TplCx<'_> {
    fn compile(
        &self,
        templates: &mut Templates,
        src: &str,
        ptr: &str,
        inputs: Option<&BTreeMap<String, bool>>,
        errors: &mut Vec<LoadError>,
    ) -> Option<Template> {
        let t = templates.compile_at(src, self.map, ptr, errors)?;
        self.check(templates, &t, ptr, inputs, errors);
        Some(t)
    }

    /// A URL path: starts with `/`, prints values as encoded segments.
    fn compile_path(
        &self,
        templates: &mut Templates,
        src: &str,
        ptr: &str,
        inputs: &BTreeMap<String, bool>,
        errors: &mut Vec<LoadError>,
    ) -> Option<Template> {
        let t = templates.compile_path_at(src, self.map, ptr, errors)?;
        self.check(templates, &t, ptr, Some(inputs), errors);
        Some(t)
    }

    fn check(
        &self,
        templates: &Templates,
        t: &Template,
        ptr: &str,
        inputs: Option<&BTreeMap<String, bool>>,
        errors: &mut Vec<LoadError>,
    ) {
        for var in templates.variables(t) {
            if let Err(msg) = self.check_var(&var, inputs) {
                errors.push(self.map.error(ptr, msg));
            }
        }
    }

    fn check_var(&self, var: &str, inputs: Option<&BTreeMap<String, bool>>) -> Result<(), String> {
        let mut parts = var.split('.');
        match (parts.next().unwrap_or(""), parts.next(), inputs) {
            ("secrets", Some(s), _) if self.secrets.iter().any(|d| d == s) => Ok(()),
            ("secrets", Some(s), _) => Err(format!(
                "template reads secret `{s}`, which is not declared in `secrets:`"
            )),
            ("input", _, None) => Err("connector-level templates cannot read `input`".into()),
            ("input", Some(i), Some(inputs)) if !inputs.contains_key(i) => Err(format!(
                "template reads `input.{i}`, which is not declared in this action's `inputs:`"
            )),
            ("input", _, Some(_)) => Ok(()),
            (other, _, _) => Err(format!(
                "unknown template variable `{other}`, expected `input.NAME` or `secrets.NAME`"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Load one connector file; its action `a` and the errors.
    fn load(yaml: &str) -> (Option<Arc<Action>>, Vec<String>) {
        let (a, errors, _) = load_templates(yaml);
        (a, errors)
    }

    /// As [`load`], with the templates the action's templates are in.
    fn load_templates(yaml: &str) -> (Option<Arc<Action>>, Vec<String>, Templates) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("c.yaml"), yaml).unwrap();
        let secrets = SecretSource::from_env(Vec::new()).with_placeholders();
        let opts = LoadOptions {
            secrets: &secrets,
            allow_internal: &[],
        };
        let (mut errors, mut warnings) = (Vec::new(), Vec::new());
        let mut templates = Templates::new();
        let c = load_dir(
            dir.path(),
            &mut templates,
            &opts,
            &mut errors,
            &mut warnings,
        );
        let action = c.get("c").and_then(|c| c.actions.get("a").cloned());
        (
            action,
            errors.iter().map(|e| e.to_string()).collect(),
            templates,
        )
    }

    const HEAD: &str =
        "name: c\nbase_url: https://x.example\nactions:\n  a:\n    method: POST\n    path: /a\n";

    /// Connector templates are compiled as recipe templates are: a mistake
    /// at its line and column inside a block scalar, and a render error
    /// that ends with where the template is written.
    #[test]
    fn templates_are_located_at_check_and_when_rendering() {
        let inputs = "    inputs: { name: { required: false } }\n";
        let (_, errors) = load(&format!(
            "{HEAD}{inputs}    headers: {{ X-Name: \"{{{{ input.name | lowr }}}}\" }}\n    body:\n      text: |\n        Hello\n        {{{{ input.name | defualt('x') }}}}\n        {{{{ input.name( }}}}\n"
        ));
        let errors: Vec<String> = errors
            .iter()
            .map(|e| e.split_once("c.yaml:").unwrap().1.to_string())
            .collect();
        assert_eq!(
            errors,
            [
                "8:41: unknown template filter `lowr`; did you mean `lower`?",
                "13:24: template error: syntax error: unexpected `}`",
            ]
        );
        let (a, errors, templates) = load_templates(&format!(
            "{HEAD}{inputs}    body:\n      text: |\n        Hello\n        {{{{ input.name.first }}}}\n"
        ));
        assert!(errors.is_empty(), "{errors:?}");
        let a = a.unwrap();
        let Body::Json(body) = &a.body else {
            panic!("a JSON body")
        };
        let err = templates
            .render_value(body, &json!({"input": {}}))
            .unwrap_err()
            .0;
        assert!(err.ends_with("c.yaml:10:9"), "{err}");
    }

    #[test]
    fn fail_when_turns_a_success_answer_into_a_failure() {
        let (a, errors) = load(&format!(
            "{HEAD}    fail_when: {{ path: \"$.ok\", not_equals: true, reason: \"$.error\" }}\n"
        ));
        assert!(errors.is_empty(), "{errors:?}");
        let a = a.unwrap();
        let f = |v: &Value| a.fail_when.as_ref().unwrap().check(v);
        assert_eq!(f(&json!({"ok": true, "ts": "1"})), None);
        assert_eq!(
            f(&json!({"ok": false, "error": "channel_not_found"})).as_deref(),
            Some("a success status, but the answer says the call failed: `$.ok` is false, not true: channel_not_found")
        );
        assert_eq!(
            f(&json!("ok")).as_deref(),
            Some("a success status, but the answer says the call failed: `$.ok` is missing, not true")
        );

        let (a, errors) = load(&format!(
            "{HEAD}    fail_when: {{ path: \"$.errors\", exists: true, reason: \"$.errors[0].message\" }}\n"
        ));
        assert!(errors.is_empty(), "{errors:?}");
        let a = a.unwrap();
        let f = a.fail_when.as_ref().unwrap();
        assert_eq!(f.check(&json!({"data": 1})), None);
        assert_eq!(f.check(&json!({"errors": null})), None);
        assert!(f
            .check(&json!({"errors": [{"message": "denied"}]}))
            .unwrap()
            .ends_with("`$.errors` exists: denied"));
    }

    #[test]
    fn fail_when_needs_exactly_one_test_and_valid_paths() {
        for (body, want) in [
            (
                "{ path: \"$.ok\" }",
                "exactly one of `equals`, `not_equals`, `exists`",
            ),
            (
                "{ path: \"$.ok\", equals: false, exists: true }",
                "exactly one of",
            ),
            ("{ path: \"ok\", equals: false }", "invalid JSONPath `ok`"),
            (
                "{ path: \"$.ok\", equals: false, reason: \"error\" }",
                "invalid JSONPath `error`",
            ),
            ("{ path: \"$.ok\", equal: false }", "unknown field `equal`"),
        ] {
            let (a, errors) = load(&format!("{HEAD}    fail_when: {body}\n"));
            assert!(a.is_none(), "{body}");
            assert!(
                errors.iter().any(|e| e.contains(want)),
                "{body}: {errors:?}"
            );
        }
    }
}
