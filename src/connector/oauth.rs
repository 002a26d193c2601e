//! OAuth2 for connectors: `auth: { type: oauth2, … }`.
//!
//! A connector's access token comes from its token endpoint, by the
//! client-credentials grant or by a user's grant (authorization code with
//! PKCE, obtained once by `switchboard connect NAME`, then kept fresh with
//! the refresh-token grant). The token set is cached in memory and in the
//! hub's store through a [`TokenStore`] (the engine's, over the state
//! namespace `switchboard:oauth`), so every node on one PostgreSQL shares
//! one grant; refreshed before it expires and once when the API answers 401.
//!
//! **Single flight.** Every call asks [`OAuth2::token`]; a fresh token is
//! read under a std mutex held for no await. Obtaining a new one holds an
//! async gate (one caller per process), then reads the store (another node
//! may have a fresh token already), then takes the store's refresh lease
//! ([`TokenStore::lease`], one holder across nodes; a loser waits and reads
//! the store again) and reads the store once more under it before asking
//! the endpoint. 100 concurrent steps on any number of nodes make one token
//! request, and a refresh token is only ever spent as read from the store
//! under the lease.
//!
//! **Rotation.** A refresh answer with a new refresh token is stored
//! (durably) before the new access token is used and before the lease is
//! given back: after a crash, the store holds the newest refresh token any
//! node ever used. (The one window is between the endpoint's answer and the
//! store's commit; see ARCHITECTURE.md.)
//!
//! **The token file** `<data>/oauth/<connector>.json` is read once and
//! moved into the store (then removed): the tokens of a hub from before the
//! store held them, or those `switchboard connect` hands over while a hub
//! holds the sled store.
//!
//! Tokens are [`Secret`]s; every value seen is added to the connector's
//! redactions, so an API echoing one finds `***` in the record. This module
//! never logs a token, a client secret or an authorization code.

use super::config::{ClientAuth, OAuthGrant};
use super::http::{CallError, Client};
use super::Connector;
use crate::secret::Secret;
use crate::template::{Template, Templates};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where `connect` listens unless the connector says otherwise.
pub const DEFAULT_REDIRECT_URI: &str = "http://127.0.0.1:8976/callback";
/// Refresh this long before a token expires (at most half its lifetime).
pub const DEFAULT_REFRESH_BEFORE: Duration = Duration::from_secs(60);
/// Largest token endpoint answer read.
const MAX_TOKEN_ANSWER: usize = 64 * 1024;
/// Token values remembered for redaction (current and recent ones).
const KNOWN_TOKENS: usize = 8;
/// How often a node waiting for another's token request reads the store.
const LEASE_POLL: Duration = Duration::from_millis(50);
/// The refresh lease outlives a token request by this much (the request is
/// bounded by the connector's timeout; this covers the store's write). A
/// node that dies holding the lease delays the others' refresh this long
/// past the timeout.
const LEASE_MARGIN: Duration = Duration::from_secs(5);

/// Where a connector's token set is kept beyond one process's memory: the
/// hub's store (`engine::tokens` implements it over recipe state), shared
/// by every node on it. Calls block on the store; [`OAuth2`] makes them on
/// the blocking pool.
pub trait TokenStore: Send + Sync {
    /// The token set stored for `connector`, if any.
    fn load(&self, connector: &str) -> Result<Option<Tokens>, String>;
    /// Replace it with `tokens`; durable when this returns.
    fn save(&self, connector: &str, tokens: &Tokens) -> Result<(), String>;
    /// Take the right to ask `connector`'s token endpoint, for `ttl`: true
    /// if this caller has it now (no one held a live lease).
    fn lease(&self, connector: &str, ttl: Duration) -> Result<bool, String>;
    /// Give the lease back.
    fn release(&self, connector: &str) -> Result<(), String>;
}

/// Run a blocking store call off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(format!("the store call did not finish: {e}")))
}

/// A compiled `auth: { type: oauth2 }`.
pub struct OAuth2 {
    pub settings: Settings,
    data: Mutex<Data>,
    /// Held while a new token is obtained: single flight.
    gate: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for OAuth2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuth2")
            .field("connector", &self.settings.connector)
            .field("grant", &self.settings.grant)
            .field("token_url", &self.settings.token_url.as_str())
            .finish_non_exhaustive()
    }
}

/// What the hub holds. A std mutex: nothing awaits while it is held.
#[derive(Default)]
struct Data {
    tokens: Option<Tokens>,
    /// An access token the API refused (401): not used again, though the
    /// store may still hold it (until someone obtains a new one).
    rejected: Option<Secret>,
    /// A refresh token the endpoint refused, and why: calls fail at once
    /// (no request) until another refresh token is stored.
    refused: Option<(Secret, String)>,
    /// Token values seen, newest last, for redaction.
    known: Vec<Secret>,
}

/// A token set.
#[derive(Clone)]
pub struct Tokens {
    pub access: Option<Secret>,
    /// Unix ms; `None`: the endpoint gave no lifetime (used until a 401).
    pub expires_at: Option<i64>,
    pub obtained_at: i64,
    pub refresh: Option<Secret>,
    pub scope: Option<String>,
}

/// The token file's shape, and the stored record's.
#[derive(Serialize, Deserialize)]
struct TokenFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    access_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<i64>,
    #[serde(default)]
    obtained_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
}

impl From<TokenFile> for Tokens {
    fn from(f: TokenFile) -> Tokens {
        Tokens {
            access: f.access_token.map(Secret::new),
            expires_at: f.expires_at,
            obtained_at: f.obtained_at,
            refresh: f.refresh_token.map(Secret::new),
            scope: f.scope,
        }
    }
}

impl From<&Tokens> for TokenFile {
    fn from(t: &Tokens) -> TokenFile {
        TokenFile {
            access_token: t.access.as_ref().map(|s| s.expose().to_string()),
            expires_at: t.expires_at,
            obtained_at: t.obtained_at,
            refresh_token: t.refresh.as_ref().map(|s| s.expose().to_string()),
            scope: t.scope.clone(),
        }
    }
}

impl Tokens {
    /// The stored form (token values in clear: the store is where they live).
    pub fn to_json(&self) -> Value {
        serde_json::to_value(TokenFile::from(self)).unwrap_or(Value::Null)
    }

    /// Read the stored form; the error names no value.
    pub fn from_json(v: Value) -> Result<Tokens, String> {
        serde_json::from_value::<TokenFile>(v)
            .map(Tokens::from)
            .map_err(|e| format!("not a token record: {e}"))
    }
}

/// A token endpoint's success answer (RFC 6749 5.1).
#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default, deserialize_with = "number_or_text")]
    expires_in: Option<i64>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    scope: Option<String>,
}

/// A token endpoint's error answer (RFC 6749 5.2).
#[derive(Deserialize)]
struct ErrorAnswer {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// `expires_in` as a number or, as some providers send it, a string.
fn number_or_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        Some(Value::Number(n)) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn token_error(message: impl Into<String>, retryable: bool) -> CallError {
    CallError::Token {
        message: message.into(),
        retryable,
    }
}

/// Settings of an [`OAuth2`], compiled from the file.
pub struct Settings {
    pub connector: String,
    pub grant: OAuthGrant,
    pub token_url: reqwest::Url,
    pub client_id: Template,
    pub client_secret: Option<Template>,
    pub client_auth: ClientAuth,
    pub scopes: Vec<String>,
    pub audience: Option<String>,
    pub authorize_url: Option<reqwest::Url>,
    pub redirect_uri: reqwest::Url,
    /// A refresh token from the secrets, used until a stored one exists.
    pub refresh_seed: Option<Template>,
    pub refresh_before: Duration,
    /// Timeout of one token request (the connector's default timeout).
    pub timeout: Duration,
    /// The token file moved into the store when found (`<data>/oauth/NAME.json`).
    pub file: Option<PathBuf>,
    /// `grant: jwt_bearer`: how the assertion is made.
    pub jwt: Option<JwtSettings>,
}

/// The assertion of a `grant: jwt_bearer` connector (templates over secrets).
pub struct JwtSettings {
    pub private_key: Template,
    pub subject: Option<Template>,
    pub key_id: Option<Template>,
}

impl OAuth2 {
    pub fn new(settings: Settings) -> OAuth2 {
        OAuth2 {
            settings,
            data: Mutex::new(Data::default()),
            gate: tokio::sync::Mutex::new(()),
        }
    }

    fn data(&self) -> std::sync::MutexGuard<'_, Data> {
        // A panic while holding it leaves plain data behind; go on with it.
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Is `t`'s access token good at `now` (unix ms)? It is refreshed
    /// `refresh_before` ahead of its expiry, or half its lifetime ahead when
    /// that is shorter (a 60 s token is refreshed after 30 s).
    pub fn fresh(&self, t: &Tokens, now: i64) -> bool {
        if t.access.is_none() {
            return false;
        }
        match t.expires_at {
            None => true,
            Some(exp) => {
                let life = (exp - t.obtained_at).max(0);
                let margin = (self.settings.refresh_before.as_millis() as i64).min(life / 2);
                now < exp - margin
            }
        }
    }

    fn cached(&self, now: i64) -> Option<Secret> {
        let d = self.data();
        let t = d.tokens.as_ref()?;
        if self.fresh(t, now) && t.access != d.rejected {
            t.access.clone()
        } else {
            None
        }
    }

    /// Remember token values for redaction (bounded, newest kept).
    fn learn(d: &mut Data, t: &Tokens) {
        for s in [&t.access, &t.refresh].into_iter().flatten() {
            if s.expose().len() >= 4 && !d.known.contains(s) {
                d.known.push(s.clone());
            }
        }
        let n = d.known.len();
        if n > KNOWN_TOKENS {
            d.known.drain(..n - KNOWN_TOKENS);
        }
    }

    /// `text` with every token value this connector has seen (and its
    /// encoded forms) replaced by `***`.
    pub fn redact(&self, text: &str) -> String {
        let known = self.data().known.clone();
        let mut out = text.to_string();
        for s in &known {
            for form in super::http::forms_of(s.expose()) {
                if out.contains(&form) {
                    out = out.replace(&form, "***");
                }
            }
        }
        out
    }

    /// Read the token file (nothing if there is none or it is unreadable).
    fn read_file(&self) -> Option<Tokens> {
        let path = self.settings.file.as_ref()?;
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(connector = %self.settings.connector, file = %path.display(), error = %e, "cannot read the OAuth2 token file");
                return None;
            }
        };
        match serde_json::from_slice::<TokenFile>(&bytes) {
            Ok(f) => Some(f.into()),
            Err(e) => {
                // serde_json's message names a position, never the content.
                tracing::warn!(connector = %self.settings.connector, file = %path.display(), error = %e, "the OAuth2 token file is not valid; ignoring it");
                None
            }
        }
    }

    /// Move the token file into the store, if there is one: the tokens of
    /// a hub from before the store held them, or a grant `connect` handed
    /// over while this hub held the store. It replaces the stored set (it
    /// is the newer grant); the file is removed once the store has it.
    async fn import_file(&self, store: &Arc<dyn TokenStore>) {
        let Some(path) = self.settings.file.clone() else {
            return;
        };
        let Some(tokens) = self.read_file() else {
            return;
        };
        let (st, name, t) = (
            store.clone(),
            self.settings.connector.clone(),
            tokens.clone(),
        );
        match blocking(move || st.save(&name, &t)).await {
            Ok(()) => {
                {
                    let mut d = self.data();
                    Self::learn(&mut d, &tokens);
                    d.tokens = Some(tokens);
                    d.refused = None;
                }
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(connector = %self.settings.connector, file = %path.display(), error = %e, "the OAuth2 tokens are in the store; cannot remove the token file");
                }
                tracing::info!(connector = %self.settings.connector, file = %path.display(), "OAuth2 tokens moved from the token file into the store");
            }
            Err(e) => {
                tracing::error!(connector = %self.settings.connector, error = %e, "cannot move the OAuth2 token file into the store; trying again at the next token")
            }
        }
    }

    /// Read the stored token set and hold it; its access token if that is
    /// fresh and not one the API refused.
    async fn adopt(&self, store: &Arc<dyn TokenStore>) -> Result<Option<Secret>, CallError> {
        let (st, name) = (store.clone(), self.settings.connector.clone());
        let found = blocking(move || st.load(&name)).await.map_err(|e| {
            token_error(
                format!(
                    "cannot read the stored OAuth2 tokens of `{}`: {e}",
                    self.settings.connector
                ),
                true,
            )
        })?;
        let mut d = self.data();
        if let Some(t) = found {
            Self::learn(&mut d, &t);
            d.tokens = Some(t);
        }
        Ok(match d.tokens.as_ref() {
            Some(t) if self.fresh(t, now_ms()) && t.access != d.rejected => t.access.clone(),
            _ => None,
        })
    }

    /// Forget `used` as the access token (the API answered 401 to it), so
    /// the next [`OAuth2::token`] obtains a new one. A token already
    /// replaced is left alone: 100 calls answered 401 make one refresh.
    pub fn invalidate(&self, used: &Secret) {
        let mut d = self.data();
        if let Some(t) = d.tokens.as_mut() {
            if t.access.as_ref() == Some(used) {
                t.access = None;
                d.rejected = Some(used.clone());
            }
        }
    }

    /// The access token to send: the cached one while fresh, else the
    /// store's, else a new one from the endpoint (one request however many
    /// callers wait, on however many nodes share the store).
    pub async fn token(
        &self,
        client: &Client,
        templates: &Templates,
        connector: &Connector,
    ) -> Result<Secret, CallError> {
        if let Some(t) = self.cached(now_ms()) {
            return Ok(t);
        }
        let _gate = self.gate.lock().await;
        if let Some(t) = self.cached(now_ms()) {
            return Ok(t);
        }
        let Some(store) = client.token_store() else {
            return self.obtain(client, templates, connector, None).await;
        };
        self.import_file(store).await;
        if let Some(t) = self.adopt(store).await? {
            return Ok(t);
        }
        // One node at a time asks the endpoint; the others wait for its
        // answer in the store.
        let ttl = self.settings.timeout + LEASE_MARGIN;
        let deadline = tokio::time::Instant::now() + ttl + LEASE_MARGIN;
        loop {
            let (st, name) = (store.clone(), self.settings.connector.clone());
            let leased = blocking(move || st.lease(&name, ttl)).await.map_err(|e| {
                token_error(
                    format!(
                        "cannot take the OAuth2 refresh lease of `{}`: {e}",
                        self.settings.connector
                    ),
                    true,
                )
            })?;
            if leased {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(token_error(
                    format!(
                        "another node has been obtaining a token for `{}` for over {}s; trying again later",
                        self.settings.connector,
                        (ttl + LEASE_MARGIN).as_secs()
                    ),
                    true,
                ));
            }
            tokio::time::sleep(LEASE_POLL).await;
            if let Some(t) = self.adopt(store).await? {
                return Ok(t);
            }
        }
        // Under the lease: the store is read once more (a node may have
        // finished just before), so the refresh token spent is the newest.
        let result = match self.adopt(store).await {
            Ok(Some(t)) => Ok(t),
            Ok(None) => self.obtain(client, templates, connector, Some(store)).await,
            Err(e) => Err(e),
        };
        let (st, name) = (store.clone(), self.settings.connector.clone());
        if let Err(e) = blocking(move || st.release(&name)).await {
            tracing::warn!(connector = %self.settings.connector, error = %e, "cannot give back the OAuth2 refresh lease; it expires by itself");
        }
        result
    }

    /// Ask the endpoint for a new token set, store it, and answer its
    /// access token.
    async fn obtain(
        &self,
        client: &Client,
        templates: &Templates,
        connector: &Connector,
        store: Option<&Arc<dyn TokenStore>>,
    ) -> Result<Secret, CallError> {
        let form = self.grant_form(templates, connector)?;
        let previous = self.data().tokens.clone();
        let result = self
            .request(client, templates, connector, form.clone())
            .await;
        let mut tokens = match result {
            Ok(t) => t,
            Err(Refusal::Grant(message)) => {
                if let Some(rt) = form.refresh {
                    self.data().refused = Some((rt, message.clone()));
                }
                return Err(token_error(message, false));
            }
            Err(Refusal::Other(e)) => return Err(e),
        };
        // A refresh answer without a refresh token keeps the old one.
        if tokens.refresh.is_none() {
            tokens.refresh = form.refresh.clone();
        }
        crate::crash::point("oauth.answered");
        self.keep(tokens.clone(), store).await;
        crate::crash::point("oauth.persisted");
        let rotated = previous
            .as_ref()
            .and_then(|p| p.refresh.as_ref())
            .is_some_and(|old| Some(old) != tokens.refresh.as_ref());
        tracing::info!(
            connector = %self.settings.connector,
            grant = ?self.settings.grant,
            expires_in_s = tokens.expires_at.map(|e| (e - tokens.obtained_at) / 1000),
            rotated,
            "OAuth2 access token obtained"
        );
        tokens
            .access
            .ok_or_else(|| token_error("the token endpoint's answer has no access token", false))
    }

    /// Hold `tokens` and store them (durably, before they are used).
    async fn keep(&self, tokens: Tokens, store: Option<&Arc<dyn TokenStore>>) {
        {
            let mut d = self.data();
            Self::learn(&mut d, &tokens);
            d.tokens = Some(tokens.clone());
            d.refused = None;
            d.rejected = None;
        }
        let Some(store) = store else {
            return;
        };
        let (st, name) = (store.clone(), self.settings.connector.clone());
        if let Err(e) = blocking(move || st.save(&name, &tokens)).await {
            tracing::error!(
                connector = %self.settings.connector,
                error = %e,
                "could not store the OAuth2 tokens; they are used from memory, and a restart (or another node) may need `switchboard connect` again"
            );
        }
    }

    /// What the next token request sends.
    fn grant_form(&self, templates: &Templates, connector: &Connector) -> Result<Form, CallError> {
        let mut fields = vec![];
        match self.settings.grant {
            OAuthGrant::ClientCredentials => {
                fields.push(("grant_type".into(), "client_credentials".into()));
                if !self.settings.scopes.is_empty() {
                    fields.push(("scope".into(), self.settings.scopes.join(" ")));
                }
                if let Some(a) = &self.settings.audience {
                    fields.push(("audience".into(), a.clone()));
                }
                Ok(Form {
                    fields,
                    refresh: None,
                })
            }
            OAuthGrant::JwtBearer => {
                let assertion = self.assertion(templates, connector)?;
                fields.push((
                    "grant_type".into(),
                    "urn:ietf:params:oauth:grant-type:jwt-bearer".into(),
                ));
                fields.push(("assertion".into(), assertion.expose().to_string()));
                Ok(Form {
                    fields,
                    refresh: None,
                })
            }
            OAuthGrant::AuthorizationCode => {
                let held = self.data().tokens.as_ref().and_then(|t| t.refresh.clone());
                let refresh = match held {
                    Some(r) => r,
                    None => match &self.settings.refresh_seed {
                        Some(t) => Secret::new(render(templates, connector, t)?),
                        None => {
                            return Err(token_error(
                                format!(
                                    "connector `{}` is not connected: run `switchboard connect {}` once",
                                    self.settings.connector, self.settings.connector
                                ),
                                false,
                            ))
                        }
                    },
                };
                if let Some((spent, why)) = &self.data().refused {
                    if *spent == refresh {
                        return Err(token_error(why.clone(), false));
                    }
                }
                fields.push(("grant_type".into(), "refresh_token".into()));
                fields.push(("refresh_token".into(), refresh.expose().to_string()));
                Ok(Form {
                    fields,
                    refresh: Some(refresh),
                })
            }
        }
    }

    /// A signed assertion (RFC 7523 2.1): issuer `client_id`, audience
    /// `audience` or the token URL, the scopes, valid for an hour. It is a
    /// credential for that hour: it joins the redactions.
    fn assertion(&self, templates: &Templates, connector: &Connector) -> Result<Secret, CallError> {
        let name = &self.settings.connector;
        let Some(j) = &self.settings.jwt else {
            return Err(token_error(
                format!("connector `{name}` has no `private_key`"),
                false,
            ));
        };
        let key = Secret::new(render(templates, connector, &j.private_key)?);
        let signer = super::jwt::Signer::from_pem(key.expose()).map_err(|e| {
            token_error(
                format!("the `private_key` of `{name}` cannot sign: {e}"),
                false,
            )
        })?;
        let issuer = render(templates, connector, &self.settings.client_id)?;
        let subject = match &j.subject {
            Some(t) => Some(render(templates, connector, t)?),
            None => None,
        };
        let key_id = match &j.key_id {
            Some(t) => Some(render(templates, connector, t)?),
            None => None,
        };
        let audience = self
            .settings
            .audience
            .clone()
            .unwrap_or_else(|| self.settings.token_url.to_string());
        let scopes = &self.settings.scopes;
        let claims = super::jwt::Claims {
            issuer: &issuer,
            subject: subject.as_deref(),
            audience: &audience,
            scope: (!scopes.is_empty()).then(|| scopes.join(" ")),
            issued_at: now_ms() / 1000,
        };
        let assertion = signer
            .assertion(&claims, key_id.as_deref())
            .map_err(|e| token_error(format!("`{name}`: {e}"), false))?;
        let mut d = self.data();
        d.known.push(assertion.clone());
        let n = d.known.len();
        if n > KNOWN_TOKENS {
            d.known.drain(..n - KNOWN_TOKENS);
        }
        Ok(assertion)
    }

    /// The client's credentials, rendered from the secrets.
    fn credentials(
        &self,
        templates: &Templates,
        connector: &Connector,
    ) -> Result<(String, Option<Secret>), CallError> {
        let id = render(templates, connector, &self.settings.client_id)?;
        let secret = match &self.settings.client_secret {
            Some(t) => Some(Secret::new(render(templates, connector, t)?)),
            None => None,
        };
        Ok((id, secret))
    }

    /// POST `form` (with the client's authentication) to the token
    /// endpoint and read the token set it answers.
    async fn request(
        &self,
        client: &Client,
        templates: &Templates,
        connector: &Connector,
        form: Form,
    ) -> Result<Tokens, Refusal> {
        let (id, secret) = self.credentials(templates, connector)?;
        let mut fields = form.fields;
        let http = client.client_for(connector, &self.settings.token_url)?;
        let mut req = http
            .post(self.settings.token_url.clone())
            .timeout(self.settings.timeout)
            .header(reqwest::header::ACCEPT, "application/json");
        match (self.settings.client_auth, &secret) {
            (ClientAuth::Basic, Some(s)) => {
                // RFC 6749 2.3.1: both form-encoded, then Basic.
                req = req.basic_auth(form_encode(&id), Some(form_encode(s.expose())));
            }
            (ClientAuth::Body, Some(s)) => {
                fields.push(("client_id".into(), id));
                fields.push(("client_secret".into(), s.expose().to_string()));
            }
            // The assertion is the JWT-bearer grant's credential; its
            // `client_id` is the assertion's issuer, not a client.
            (_, None) if self.settings.grant == OAuthGrant::JwtBearer => {}
            // A public client (no secret) names itself in the body.
            (_, None) => fields.push(("client_id".into(), id)),
        }
        let body = serde_urlencoded::to_string(&fields)
            .map_err(|e| Refusal::Other(token_error(e.to_string(), false)))?;
        let req = req
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body);
        let refresh = fields
            .iter()
            .any(|(k, v)| k == "grant_type" && v == "refresh_token");
        let answer = self.send(connector, req).await?;
        self.read_answer(connector, answer, refresh)
    }

    async fn send(
        &self,
        connector: &Connector,
        req: reqwest::RequestBuilder,
    ) -> Result<(u16, String, Vec<u8>), Refusal> {
        let url = self.settings.token_url.as_str();
        let mut resp = req.send().await.map_err(|e| {
            if e.is_timeout() {
                return Refusal::Other(token_error(
                    format!(
                        "the token endpoint {url} did not answer within {:?}",
                        self.settings.timeout
                    ),
                    true,
                ));
            }
            match super::http::transport_cause(&e, connector) {
                Err(internal) => Refusal::Other(internal),
                Ok(msg) => Refusal::Other(token_error(
                    format!("cannot reach the token endpoint {url}: {msg}"),
                    true,
                )),
            }
        })?;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let mut body = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(c)) => {
                    if body.len() + c.len() > MAX_TOKEN_ANSWER {
                        return Err(Refusal::Other(token_error(
                            format!("the token endpoint's answer is larger than {MAX_TOKEN_ANSWER} bytes"),
                            false,
                        )));
                    }
                    body.extend_from_slice(&c);
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(Refusal::Other(token_error(
                        format!("reading the token endpoint's answer failed: {e}"),
                        true,
                    )))
                }
            }
        }
        Ok((status, content_type, body))
    }

    /// A token set from the endpoint's answer, or why not. Every message
    /// is redacted (an endpoint may echo what it was sent).
    fn read_answer(
        &self,
        connector: &Connector,
        (status, content_type, body): (u16, String, Vec<u8>),
        refresh: bool,
    ) -> Result<Tokens, Refusal> {
        let url = self.settings.token_url.as_str();
        let name = &self.settings.connector;
        let html = content_type.contains("html")
            || body
                .iter()
                .find(|b| !b.is_ascii_whitespace())
                .is_some_and(|b| *b == b'<');
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        let red = |s: &str| connector.redact(s);
        if (200..300).contains(&status) {
            if html {
                return Err(Refusal::Other(token_error(
                    format!("the token endpoint {url} answered an HTML page (HTTP {status}), not a JSON token: check `token_url`"),
                    false,
                )));
            }
            let Some(v) = json else {
                return Err(Refusal::Other(token_error(
                    format!("the token endpoint {url} answered HTTP {status} without a JSON body (content type `{content_type}`)"),
                    false,
                )));
            };
            let answer: TokenAnswer = serde_json::from_value(v).map_err(|_| {
                Refusal::Other(token_error(
                    format!(
                        "the token endpoint {url} answered HTTP {status} without an `access_token`"
                    ),
                    false,
                ))
            })?;
            let now = now_ms();
            return Ok(Tokens {
                access: Some(Secret::new(answer.access_token)),
                expires_at: answer
                    .expires_in
                    .map(|s| now.saturating_add(s.max(0).saturating_mul(1000))),
                obtained_at: now,
                refresh: answer.refresh_token.map(Secret::new),
                scope: answer.scope,
            });
        }
        let retryable = status == 429 || status >= 500;
        let oauth_error = json.and_then(|v| serde_json::from_value::<ErrorAnswer>(v).ok());
        let described = |e: &ErrorAnswer| match &e.error_description {
            Some(d) => red(&format!("{}: {d}", e.error)),
            None => red(&e.error),
        };
        let message = match &oauth_error {
            Some(e) if e.error == "invalid_grant" && refresh => {
                return Err(Refusal::Grant(format!(
                    "the token endpoint refused the refresh token of `{name}` ({}); re-connect with `switchboard connect {name}`",
                    described(e)
                )))
            }
            Some(e) if e.error == "invalid_client" => format!(
                "the token endpoint refused the client credentials of `{name}` ({}): check its client_id and client_secret",
                described(e)
            ),
            Some(e) => format!(
                "the token endpoint {url} answered HTTP {status} ({})",
                described(e)
            ),
            None if html => {
                format!("the token endpoint {url} answered HTTP {status} with an HTML page")
            }
            None => format!("the token endpoint {url} answered HTTP {status}"),
        };
        Err(Refusal::Other(token_error(message, retryable)))
    }

    /// The URL to open for `connect`: the authorization endpoint with the
    /// client id, scopes, redirect URI, `state` and the PKCE challenge.
    pub fn authorization_url(
        &self,
        client_id: &str,
        redirect_uri: &reqwest::Url,
        state: &str,
        challenge: &str,
    ) -> Option<reqwest::Url> {
        let mut url = self.settings.authorize_url.clone()?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", client_id)
                .append_pair("redirect_uri", redirect_uri.as_str());
            if !self.settings.scopes.is_empty() {
                q.append_pair("scope", &self.settings.scopes.join(" "));
            }
            if let Some(a) = &self.settings.audience {
                q.append_pair("audience", a);
            }
            q.append_pair("state", state)
                .append_pair("code_challenge", challenge)
                .append_pair("code_challenge_method", "S256");
        }
        Some(url)
    }

    /// `switchboard connect`: run the authorization-code flow with PKCE
    /// once. Listens on the redirect URI's loopback address (`port`
    /// overrides its port; 0 takes a free one), calls `show` with the URL
    /// to open, waits up to `wait` for the redirect, exchanges the code and
    /// stores the tokens: in `store` (the hub's, when `connect` could open
    /// it), else in the token file, which the hub holding the store moves
    /// into it at its next token. Never prints or returns a token.
    #[allow(clippy::too_many_arguments)]
    pub async fn connect(
        &self,
        client: &Client,
        templates: &Templates,
        connector: &Connector,
        store: Option<Arc<dyn TokenStore>>,
        port: Option<u16>,
        wait: Duration,
        show: impl FnOnce(&reqwest::Url, &reqwest::Url),
    ) -> Result<Connected, String> {
        if self.settings.grant != OAuthGrant::AuthorizationCode {
            return Err(format!(
                "connector `{}` uses the {} grant: it needs no `connect`",
                self.settings.connector,
                match self.settings.grant {
                    OAuthGrant::JwtBearer => "JWT-bearer",
                    _ => "client-credentials",
                }
            ));
        }
        if self.settings.authorize_url.is_none() {
            return Err(format!(
                "connector `{}` has no `authorize_url`: `connect` cannot send you to the app",
                self.settings.connector
            ));
        }
        let mut redirect = self.settings.redirect_uri.clone();
        if let Some(p) = port {
            let _ = redirect.set_port(Some(p));
        }
        let host = redirect.host_str().unwrap_or("127.0.0.1").to_string();
        let bind_host = host.trim_start_matches('[').trim_end_matches(']');
        let bind_host = if bind_host == "localhost" {
            "127.0.0.1"
        } else {
            bind_host
        };
        let listener = tokio::net::TcpListener::bind((
            bind_host,
            redirect.port_or_known_default().unwrap_or(80),
        ))
        .await
        .map_err(|e| format!("cannot listen on {redirect} for the redirect: {e}"))?;
        let bound = listener.local_addr().map_err(|e| e.to_string())?.port();
        let _ = redirect.set_port(Some(bound));
        let (id, _) = self
            .credentials(templates, connector)
            .map_err(|e| e.to_string())?;
        let pkce = Pkce::new();
        let state = random_text(32);
        let url = self
            .authorization_url(&id, &redirect, &state, &pkce.challenge)
            .ok_or("no authorize_url")?;
        show(&url, &redirect);
        let code = tokio::time::timeout(wait, callback(&listener, redirect.path(), &state))
            .await
            .map_err(|_| format!("no redirect arrived within {wait:?}; not connected"))??;
        let fields = vec![
            ("grant_type".to_string(), "authorization_code".to_string()),
            ("code".to_string(), code.expose().to_string()),
            ("redirect_uri".to_string(), redirect.to_string()),
            (
                "code_verifier".to_string(),
                pkce.verifier.expose().to_string(),
            ),
        ];
        let form = Form {
            fields,
            refresh: None,
        };
        let tokens = match self.request(client, templates, connector, form).await {
            Ok(t) => t,
            Err(Refusal::Grant(m)) => return Err(m),
            Err(Refusal::Other(e)) => return Err(connector.redact(&e.to_string())),
        };
        let mut summary = Connected {
            stored: Stored::Store,
            expires_in: tokens
                .expires_at
                .map(|e| Duration::from_millis((e - tokens.obtained_at).max(0) as u64)),
            refresh_token: tokens.refresh.is_some(),
            scope: tokens.scope.clone(),
        };
        match store {
            Some(store) => {
                let name = self.settings.connector.clone();
                blocking(move || store.save(&name, &tokens))
                    .await
                    .map_err(|e| format!("cannot store the tokens in the store: {e}"))?;
            }
            None => {
                let path = self
                    .settings
                    .file
                    .clone()
                    .ok_or("no store and no token file to store the tokens in")?;
                let text = serde_json::to_vec_pretty(&TokenFile::from(&tokens))
                    .map_err(|e| e.to_string())?;
                write_atomic(&path, &text)
                    .map_err(|e| format!("cannot store the tokens in {}: {e}", path.display()))?;
                summary.stored = Stored::File(path);
            }
        }
        Ok(summary)
    }
}

/// Where `connect` put the tokens.
#[derive(Debug, PartialEq)]
pub enum Stored {
    /// In the store, where every hub on it reads them.
    Store,
    /// In the token file, for the hub holding the store to move in.
    File(PathBuf),
}

/// What `connect` obtained, without a token value.
#[derive(Debug)]
pub struct Connected {
    pub stored: Stored,
    pub expires_in: Option<Duration>,
    pub refresh_token: bool,
    pub scope: Option<String>,
}

/// A token request's form fields, and the refresh token it spends.
#[derive(Clone)]
struct Form {
    fields: Vec<(String, String)>,
    refresh: Option<Secret>,
}

/// Why no token came back.
enum Refusal {
    /// The endpoint refused the refresh token (`invalid_grant`): only a
    /// new grant helps.
    Grant(String),
    Other(CallError),
}

impl From<CallError> for Refusal {
    fn from(e: CallError) -> Refusal {
        Refusal::Other(e)
    }
}

fn render(templates: &Templates, connector: &Connector, t: &Template) -> Result<String, CallError> {
    let secrets: Map<String, Value> = connector
        .secrets
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.expose().to_string())))
        .collect();
    templates
        .render_string(t, &serde_json::json!({ "secrets": secrets }))
        .map_err(|e| CallError::Render(connector.redact(&e.to_string())))
}

/// `application/x-www-form-urlencoded` of one value.
fn form_encode(s: &str) -> String {
    serde_urlencoded::to_string([("", s)])
        .map(|e| e.trim_start_matches('=').to_string())
        .unwrap_or_default()
}

/// Letters and digits, `n` of them, from the OS's random source.
fn random_text(n: usize) -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~";
    let mut rng = rand::rng();
    (0..n)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

/// A PKCE pair (RFC 7636): a random verifier and its S256 challenge.
pub struct Pkce {
    pub verifier: Secret,
    pub challenge: String,
}

impl Pkce {
    pub fn new() -> Pkce {
        Pkce::from_verifier(random_text(64))
    }

    pub fn from_verifier(verifier: String) -> Pkce {
        use base64::Engine as _;
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(verifier.as_bytes());
        Pkce {
            challenge: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest),
            verifier: Secret::new(verifier),
        }
    }
}

impl Default for Pkce {
    fn default() -> Self {
        Pkce::new()
    }
}

/// Wait on `listener` for the browser's redirect to `path`; answer it with
/// a short page; the code, or why there is none. Other requests (a
/// favicon) get 404 and the wait goes on.
async fn callback(
    listener: &tokio::net::TcpListener,
    path: &str,
    state: &str,
) -> Result<Secret, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let (mut conn, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut head = Vec::new();
        let mut buf = [0u8; 2048];
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        if read.is_err() {
            continue;
        }
        let text = String::from_utf8_lossy(&head);
        let target = text
            .lines()
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .unwrap_or("/");
        let url = reqwest::Url::parse(&format!("http://loopback{target}"));
        let Ok(url) = url else { continue };
        let answer = |status: &str, msg: &str| {
            format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/html; charset=utf-8\r\ncache-control: no-store\r\nconnection: close\r\n\r\n<!doctype html><title>Switchboard</title><p>{msg}</p>\n"
            )
        };
        if url.path() != path {
            let _ = conn
                .write_all(answer("404 Not Found", "Not found.").as_bytes())
                .await;
            continue;
        }
        let q: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
        let result = if let Some(err) = q.get("error") {
            let why = q
                .get("error_description")
                .map(|d| format!("{err}: {d}"))
                .unwrap_or_else(|| err.clone());
            Err(format!(
                "the app refused the authorization ({why}); not connected"
            ))
        } else if q.get("state").map(String::as_str) != Some(state) {
            Err("the redirect's `state` does not match this request; not connected".to_string())
        } else if let Some(code) = q.get("code") {
            Ok(Secret::new(code.clone()))
        } else {
            Err("the redirect carries no `code`; not connected".to_string())
        };
        let page = match &result {
            Ok(_) => answer(
                "200 OK",
                "Switchboard is connected. You can close this tab.",
            ),
            Err(_) => answer(
                "400 Bad Request",
                "Switchboard is not connected; see the terminal.",
            ),
        };
        let _ = conn.write_all(page.as_bytes()).await;
        let _ = conn.shutdown().await;
        return result;
    }
}

/// Replace `path` with `bytes` atomically: write a private temp file
/// beside it, fsync it, rename it over `path`, fsync the directory. A
/// crash leaves the old file or the new one, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oauth(refresh_before: Duration) -> OAuth2 {
        let mut templates = Templates::new();
        OAuth2::new(Settings {
            connector: "c".into(),
            grant: OAuthGrant::ClientCredentials,
            token_url: reqwest::Url::parse("https://x.example/token").unwrap(),
            client_id: templates.compile("id").unwrap(),
            client_secret: None,
            client_auth: ClientAuth::Basic,
            scopes: vec![],
            audience: None,
            authorize_url: None,
            redirect_uri: reqwest::Url::parse(DEFAULT_REDIRECT_URI).unwrap(),
            refresh_seed: None,
            refresh_before,
            timeout: Duration::from_secs(5),
            file: None,
            jwt: None,
        })
    }

    fn tokens(obtained_at: i64, expires_at: Option<i64>) -> Tokens {
        Tokens {
            access: Some(Secret::new("at")),
            expires_at,
            obtained_at,
            refresh: None,
            scope: None,
        }
    }

    /// Freshness on a virtual clock: refreshed `refresh_before` ahead, or
    /// half the lifetime ahead for a short-lived token.
    #[test]
    fn a_token_is_refreshed_before_it_expires() {
        let o = oauth(Duration::from_secs(60));
        let hour = tokens(0, Some(3_600_000));
        assert!(o.fresh(&hour, 0));
        assert!(o.fresh(&hour, 3_539_999));
        assert!(!o.fresh(&hour, 3_540_000), "60 s before the end");
        assert!(!o.fresh(&hour, 4_000_000));
        let short = tokens(1_000, Some(61_000));
        assert!(o.fresh(&short, 30_999));
        assert!(!o.fresh(&short, 31_000), "half of a 60 s lifetime");
        let endless = tokens(0, None);
        assert!(o.fresh(&endless, i64::MAX / 2), "no lifetime: until a 401");
        let none = Tokens {
            access: None,
            ..endless
        };
        assert!(!o.fresh(&none, 0));
    }

    /// RFC 7636 appendix B's example, and a generated pair.
    #[test]
    fn pkce_challenge_is_s256_of_the_verifier() {
        let rfc = Pkce::from_verifier("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".into());
        assert_eq!(rfc.challenge, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
        let v = Pkce::new();
        assert_eq!(v.verifier.expose().len(), 64);
        assert_eq!(
            Pkce::from_verifier(v.verifier.expose().into()).challenge,
            v.challenge
        );
    }

    #[test]
    fn the_token_file_is_replaced_whole_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("oauth").join("c.json");
        write_atomic(&path, b"{\"refresh_token\": \"one\"}").unwrap();
        write_atomic(&path, b"{\"refresh_token\": \"two\"}").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"refresh_token\": \"two\"}"
        );
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temp file left: {names:?}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
    }
}
