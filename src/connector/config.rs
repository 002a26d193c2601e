//! The connector file format, as serde types. The doc comments here are the
//! reference for connector authors (README "Connector files" mirrors them).

use crate::duration::HumanDuration;
use crate::signature::SignatureConfig;
use schemars::JsonSchema;
use serde::de::{Error as _, Unexpected};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// The JSON Schema (2020-12) of a connector file, generated from
/// [`ConnectorFile`] and the types under it, the same types that parse the
/// file (`switchboard schema connector`).
pub fn schema() -> Value {
    schemars::schema_for!(ConnectorFile).to_value()
}

/// `connectors/NAME.yaml`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectorFile {
    /// Must equal the file name without extension.
    pub name: String,
    /// What the connector talks to, for people reading it.
    pub description: Option<String>,
    /// Where actions are sent. Overridden by `SWITCHBOARD_BASE_URL_<NAME>` or
    /// `base_urls.<name>` in the secrets file, to point at a sandbox or mock.
    pub base_url: String,
    /// Names of the secrets this connector needs. Each must be set, or the
    /// hub refuses to start: `SWITCHBOARD_SECRET_<CONNECTOR>_<SECRET>` or the
    /// secrets file. Templates read them as `{{ secrets.NAME }}`.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// How requests authenticate (`type: bearer | basic | header | query`).
    pub auth: Option<AuthFile>,
    /// Default timeout of every action (default 30s).
    pub timeout: Option<HumanDuration>,
    /// Retries of failed calls (connect errors, timeouts, 429, 5xx); actions may override.
    pub retry: Option<RetryFile>,
    /// Limits shared by every run calling this connector.
    pub limits: Option<LimitsFile>,
    /// Stop calling a failing API for a while instead of hammering it.
    pub circuit_breaker: Option<BreakerFile>,
    /// Header carrying the idempotency key (`<run id>:<step id>`); `false` to send none.
    pub idempotency_header: Option<IdempotencyHeader>,
    /// The calls recipes make: `call: <connector>.<action>`.
    #[serde(default)]
    pub actions: BTreeMap<String, ActionFile>,
    /// Receiving this app's webhooks at `POST /hooks/<connector>`.
    pub webhook: Option<WebhookFile>,
    /// Where an action with `url:` may send: each entry a URL (scheme, host,
    /// port and a path prefix), e.g. `https://hooks.slack.com/`. A rendered
    /// `url:` must have the same scheme, host and port as one of them and a
    /// path under its path; anything else is refused before sending.
    #[serde(default)]
    pub allowed_urls: Vec<String>,
    /// Polling triggers: for an app that cannot push, call one of the
    /// actions every so often and turn each new item of its answer into an
    /// event of this connector (see [`PollFile`]). A poll runs only while a
    /// loaded recipe triggers on its event.
    #[serde(default)]
    pub polls: BTreeMap<String, PollFile>,
}

/// One polling trigger, `polls.NAME`:
///
/// ```yaml
/// polls:
///   new_responses:
///     action: list_responses            # an action of this connector
///     every: 5m                         # how often (at least 1s)
///     jitter: 30s                       # a fixed offset in [0, jitter) per poll
///     with: { since: "{{ cursor }}" }   # the action's inputs: templates over cursor, page
///     items: "$.items[*]"               # where the items are in the answer
///     id: "$.token"                     # an item's identity: JSONPath, list of them, or `hash`
///     event: { type: form_response }    # the event each new item becomes
///     cursor: { item: "$.submitted_at", initial: "{{ now() }}" }
///     pages: { token: "$.next", max: 10 }
///     first_run: now                    # now | all | { latest: N }
/// ```
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PollFile {
    pub description: Option<String>,
    /// The action to call (its name in `actions:`).
    pub action: String,
    /// The interval: one poll per slot of this length (at least 1s).
    pub every: HumanDuration,
    /// Spreads polls: each poll's slots are offset by a fixed amount in
    /// `[0, jitter)` derived from its name (the same on every node and
    /// across restarts). At most `every`. Default: none.
    pub jitter: Option<HumanDuration>,
    /// The action's inputs; every string is a template over `cursor` (the
    /// poll's stored position, undefined until it has one unless
    /// `cursor.initial` is given) and `page` (the next-page token of
    /// `pages.token`; undefined on the first page). `now()` is the poll's time.
    #[serde(default)]
    pub with: BTreeMap<String, Value>,
    /// JSONPath of the items in the answer: `$.items[*]`, or `$.items` (a
    /// path selecting one list means its elements).
    pub items: String,
    /// An item's identity, which dedupes it (the event's delivery id):
    /// a JSONPath into the item (`$.id`), a list of them joined by `:`
    /// (`["$.id", "$.updated_at"]`: an update is a new item), or `hash`
    /// (SHA-256 of the item's JSON).
    pub id: PollIdFile,
    /// The event each new item becomes. Default: type = the poll's name,
    /// body = the item.
    pub event: Option<PollEventFile>,
    /// Where the poll resumes: a high-water mark or the answer's position token.
    pub cursor: Option<CursorFile>,
    /// Follow more pages within one poll, up to a bound.
    pub pages: Option<PagesFile>,
    /// What the first poll (no stored state) does with what it finds:
    /// `now` (default: nothing old becomes an event), `all`, or
    /// `{ latest: N }`. `serve --backfill CONNECTOR.POLL` makes it `all`.
    pub first_run: Option<FirstRunFile>,
}

/// `id:` of a poll.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum PollIdFile {
    /// `$.id`, or the word `hash`.
    One(String),
    /// Several JSONPaths, joined by `:`.
    Many(Vec<String>),
}

/// `event:` of a poll.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PollEventFile {
    /// The event type (default: the poll's name); recipes trigger on it
    /// with `on: { connector, event }`.
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// The event body, every string a template over `item` (default: the
    /// item itself), e.g. `{ ticket: "{{ item }}" }` to give polled items
    /// the shape the app's webhooks send, so one recipe serves both.
    pub body: Option<Value>,
}

/// `cursor:` of a poll: exactly one of `item` and `response`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CursorFile {
    /// JSONPath into each item: the cursor becomes the highest value seen
    /// (a high-water mark such as `$.updated_at`); items below it are old.
    pub item: Option<String>,
    /// JSONPath into the answer: its value is the next position
    /// (Zendesk's `$.after_cursor`, `$.end_time`).
    pub response: Option<String>,
    /// Template: the cursor before the first poll (e.g. `"{{ now() }}"`).
    pub initial: Option<String>,
    /// Template: the cursor before the first poll of a backfill
    /// (`serve --backfill`), e.g. `"0"`; default: undefined.
    pub backfill: Option<String>,
}

/// `pages:` of a poll.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PagesFile {
    /// JSONPath of the next page's token in the answer, read by templates
    /// as `page`; missing, null or empty: the last page.
    pub token: Option<String>,
    /// JSONPath that is `true` on the last page (`$.end_of_stream`).
    pub until: Option<String>,
    /// Most pages in one poll (default 10, at most 100); the rest waits
    /// for the next poll, from the cursor.
    pub max: Option<u32>,
}

/// `first_run:` of a poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum FirstRunFile {
    /// Items found by the first poll are only remembered as seen.
    Now,
    /// Every item found by the first poll is an event.
    All,
    /// The last N items of the first poll (in the answer's order; with
    /// `cursor.item`, the N highest) are events.
    Latest(u32),
}

/// `retry: { attempts: 5, backoff: 1s, max_backoff: 5m, max_retry_after: 1h }`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryFile {
    /// Attempts in all, the first included (default 5; 1 = no retries).
    pub attempts: Option<u32>,
    /// First backoff; doubles each attempt, with full jitter (default 1s).
    pub backoff: Option<HumanDuration>,
    /// Cap of one backoff (default 5m).
    pub max_backoff: Option<HumanDuration>,
    /// Longest `Retry-After` honoured; longer ones are cut to this (default 1h).
    pub max_retry_after: Option<HumanDuration>,
}

/// `limits: { rate: 100/10s, concurrency: 8 }`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// At most N calls in any window of the given length: `100/10s`, `5/1s`.
    pub rate: Option<Rate>,
    /// At most N calls in flight at once.
    pub concurrency: Option<usize>,
}

/// `circuit_breaker: { failures: 5, cooldown: 30s }`; `circuit_breaker: { failures: 0 }` turns it off.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BreakerFile {
    /// Consecutive retryable failures that open the breaker (default 5).
    pub failures: Option<u32>,
    /// How long it stays open (default 30s).
    pub cooldown: Option<HumanDuration>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum IdempotencyHeader {
    Enabled(bool),
    Name(String),
}

/// How requests authenticate. Values are templates over `secrets`.
// One per connector file, read once at load: the OAuth2 variant's size
// costs nothing, and boxing it would put a Box in every pattern.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthFile {
    /// `Authorization: Bearer <token>`.
    Bearer { token: String },
    /// HTTP basic auth.
    Basic { username: String, password: String },
    /// Any header, e.g. `Authorization: DeepL-Auth-Key <key>` or `X-Api-Key`.
    Header { name: String, value: String },
    /// A query parameter, e.g. `?api_key=...`.
    Query { name: String, value: String },
    /// OAuth2: an access token from the token endpoint, sent as
    /// `Authorization: Bearer <token>`, cached in memory and in the store
    /// (shared by every node on it), refreshed before it expires and once
    /// on a 401.
    #[serde(rename = "oauth2")]
    OAuth2 {
        /// `client_credentials` (the app's own token), `authorization_code`
        /// (a user's grant, obtained once by `switchboard connect NAME` and
        /// kept fresh with its refresh token; alias `refresh_token`) or
        /// `jwt_bearer` (RFC 7523: a signed assertion, e.g. a Google service
        /// account).
        grant: OAuthGrant,
        /// The token endpoint: a URL, or a path under the base URL's origin
        /// (`/oauth/v1/token`).
        token_url: String,
        /// Template over `secrets`. For `jwt_bearer`, the assertion's
        /// issuer (`iss`: a service account's `client_email`), sent as a
        /// client only with a `client_secret`.
        client_id: String,
        /// Template over `secrets`; required for `client_credentials`.
        #[serde(default)]
        client_secret: Option<String>,
        /// How the client authenticates at the token endpoint: `basic`
        /// (HTTP Basic, the default) or `body` (`client_id` and
        /// `client_secret` form fields).
        #[serde(default)]
        client_auth: Option<ClientAuth>,
        /// Scopes to ask for (sent space-separated as `scope`).
        #[serde(default)]
        scopes: Vec<String>,
        /// `audience` form field (Auth0 and others).
        #[serde(default)]
        audience: Option<String>,
        /// `authorization_code` only: where `switchboard connect` sends the
        /// user to grant access.
        #[serde(default)]
        authorize_url: Option<String>,
        /// `authorization_code` only: the loopback URL `connect` listens on
        /// (default `http://127.0.0.1:8976/callback`); register it with the app.
        #[serde(default)]
        redirect_uri: Option<String>,
        /// `authorization_code` only: a refresh token obtained elsewhere
        /// (template over `secrets`), used until `connect` stores one.
        #[serde(default)]
        refresh_token: Option<String>,
        /// Refresh this long before the token expires (default 60s; at
        /// most half the token's lifetime).
        #[serde(default)]
        refresh_before: Option<HumanDuration>,
        /// `jwt_bearer` only: the PEM RSA private key that signs the
        /// assertion (template over `secrets`; PKCS#8, as a Google
        /// service-account key file's `private_key`, or PKCS#1).
        #[serde(default)]
        private_key: Option<String>,
        /// `jwt_bearer` only: the assertion's `sub`, the user to act as
        /// (domain-wide delegation); template over `secrets`.
        #[serde(default)]
        subject: Option<String>,
        /// `jwt_bearer` only: the assertion header's `kid` (a key file's
        /// `private_key_id`); template over `secrets`.
        #[serde(default)]
        key_id: Option<String>,
    },
}

/// The OAuth2 grant a connector's tokens come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OAuthGrant {
    ClientCredentials,
    #[serde(alias = "refresh_token")]
    AuthorizationCode,
    /// RFC 7523: an RS256 assertion signed with `private_key` (Google
    /// service accounts); `client_id` is its issuer.
    JwtBearer,
}

/// How a client authenticates at the token endpoint (RFC 6749 2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    Basic,
    Body,
}

/// One declarative HTTP call.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionFile {
    /// What the call does, for people reading it.
    pub description: Option<String>,
    /// The inputs a recipe step passes in `with:`; templates read them as `{{ input.NAME }}`.
    #[serde(default)]
    pub inputs: BTreeMap<String, InputFile>,
    /// `GET`, `POST`, … (any case).
    pub method: HttpMethod,
    /// Path appended to the base URL (template). Exactly one of `path:` and `url:`.
    pub path: Option<String>,
    /// The whole URL, from the event through an input (a Slack
    /// `response_url`): `url: "{{ input.response_url }}"`. Only under the
    /// connector's `allowed_urls`; the base URL is not used.
    pub url: Option<String>,
    /// Query parameters; values are templates.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// Request headers; values are templates.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// JSON body; every string in it is a template.
    pub body: Option<Value>,
    /// Form-encoded body (`application/x-www-form-urlencoded`); values are templates.
    pub form: Option<BTreeMap<String, String>>,
    /// This action's timeout (default: the connector's).
    pub timeout: Option<HumanDuration>,
    /// Overrides the connector's `retry:` fields given here.
    pub retry: Option<RetryFile>,
    /// Output fields: name → JSONPath into the JSON response. Without it the
    /// step's output is the whole response body.
    #[serde(default)]
    pub output: BTreeMap<String, String>,
    /// A successful HTTP answer that still means failure, e.g. Slack's
    /// `200 {"ok": false, "error": "channel_not_found"}`:
    /// `fail_when: { path: "$.ok", equals: false, reason: "$.error" }`.
    pub fail_when: Option<FailWhenFile>,
    /// Event types of this connector's webhook that this call makes the app
    /// send (`update_ticket` causes `ticket.updated`): `check` warns about a
    /// recipe on such an event that calls it without an `if:` guard.
    #[serde(default)]
    pub causes: Vec<String>,
}

/// `fail_when:` of an action: the step fails (not retried) when the node at
/// `path` of the JSON answer passes the one test given.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FailWhenFile {
    /// JSONPath into the answer's body.
    pub path: String,
    /// Fails when the node equals this value.
    pub equals: Option<Value>,
    /// Fails when the node is missing or differs from this value.
    pub not_equals: Option<Value>,
    /// `true`: fails when the node exists (and is not null); `false`: when it does not.
    pub exists: Option<bool>,
    /// JSONPath of the reason to put in the step's error (`$.error`).
    pub reason: Option<String>,
}

/// An action input: `{ required: false, description: ... }`; required by default.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InputFile {
    /// Must a step give it (default true)?
    pub required: Option<bool>,
    /// What the input is, for recipe authors.
    pub description: Option<String>,
}

impl InputFile {
    pub fn required(&self) -> bool {
        self.required.unwrap_or(true)
    }
}

/// Inbound webhooks: `POST /hooks/<connector>`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookFile {
    /// How requests are verified: `{ scheme: github | stripe | slack | zendesk | hmac | token | …, secret: … }`.
    pub signature: SignatureConfig,
    /// Where the event type is: `{ path: "$.type" }`, `{ header: X-GitHub-Event }` or `{ value: form.submitted }`.
    pub event_type: Option<FieldSource>,
    /// Where the sender's delivery id is, when the signature scheme has no
    /// delivery-id header: `{ path: "$.id" }` or `{ header: X-Request-Id }`.
    pub event_id: Option<FieldSource>,
    /// Refuse a body seen before within this window (`24h`): replay
    /// protection for schemes that sign no timestamp (GitHub, Shopify).
    pub dedupe_window: Option<crate::duration::HumanDuration>,
    /// Other body shapes the app sends for the same events, read into the
    /// one recipes use: the first entry whose `when` holds replaces the body
    /// by its rendered `body` (templates over `body`, the body as received;
    /// a field that renders `null` is left out). The event type and id are
    /// then read from the result.
    #[serde(default)]
    pub normalize: Vec<NormalizeFile>,
    /// Template over `event`: the object an event is about
    /// (`"{{ event.ticket.id }}"`), the default key of recipes' loop breakers.
    pub object_key: Option<String>,
}

/// One `webhook.normalize:` entry.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NormalizeFile {
    /// Which bodies: `{ path, equals | not_equals | exists }`.
    pub when: WhenFile,
    /// The body recipes see instead; every string is a template over `body`.
    pub body: Value,
}

/// A test on one node of a JSON document: `{ path: "$.ok", equals: false }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WhenFile {
    pub path: String,
    pub equals: Option<Value>,
    pub not_equals: Option<Value>,
    pub exists: Option<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum FieldSource {
    Path(String),
    Header(String),
    Value(String),
}

/// A rate as written: `CALLS/DURATION`, such as `100/10s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub max: usize,
    pub per: Duration,
}

impl std::str::FromStr for Rate {
    type Err = String;

    fn from_str(text: &str) -> Result<Rate, String> {
        let err = || format!("invalid rate `{text}`, expected CALLS/DURATION such as `100/10s`");
        let (n, per) = text.split_once('/').ok_or_else(err)?;
        let max: usize = n.trim().parse().map_err(|_| err())?;
        let per = humantime::parse_duration(per.trim()).map_err(|_| err())?;
        if max == 0 || max > tokio::sync::Semaphore::MAX_PERMITS || per.is_zero() {
            return Err(err());
        }
        Ok(Rate { max, per })
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }
}

impl JsonSchema for Rate {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Rate".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "`CALLS/DURATION`, such as `100/10s`.",
            "type": "string",
            "pattern": "^ *[0-9]+ */ *[0-9]",
            "examples": ["100/10s", "5/1s"]
        })
    }
}

/// The methods an action may use.
const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

/// An HTTP method, any case in the file (`post` is `POST`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpMethod(pub reqwest::Method);

impl<'de> Deserialize<'de> for HttpMethod {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let method = reqwest::Method::from_bytes(text.to_ascii_uppercase().as_bytes())
            .map_err(|_| D::Error::invalid_value(Unexpected::Str(&text), &"an HTTP method"))?;
        // A well-formed token is not yet a method an API knows (`GETT`).
        if !METHODS.contains(&method.as_str()) {
            let upper = text.to_ascii_uppercase();
            return Err(D::Error::custom(format!(
                "unknown HTTP method `{text}`, expected one of {}{}",
                METHODS.join(", "),
                crate::yaml::did_you_mean(&upper, METHODS.iter().copied())
                    .map(|m| format!("; did you mean `{m}`?"))
                    .unwrap_or_default()
            )));
        }
        Ok(HttpMethod(method))
    }
}

/// One of [`METHODS`], in any case: the upper-case names for completion,
/// a case-insensitive pattern (`[Gg][Ee][Tt]`, JSON Schema has no flag) for
/// what the loader accepts.
impl JsonSchema for HttpMethod {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "HttpMethod".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let any_case: Vec<String> = METHODS
            .iter()
            .map(|m| {
                m.chars()
                    .map(|c| format!("[{c}{}]", c.to_ascii_lowercase()))
                    .collect()
            })
            .collect();
        schemars::json_schema!({
            "description": "An HTTP method, any case.",
            "anyOf": [
                { "enum": METHODS },
                { "type": "string", "pattern": format!("^({})$", any_case.join("|")) }
            ]
        })
    }
}
