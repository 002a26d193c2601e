//! OAuth2 connectors end to end through the real binary, against an
//! OAuth2 authorization server in this test ([`AuthServer`], axum on
//! 127.0.0.1): it issues access tokens, expires them when the test says,
//! rotates refresh tokens strictly (a spent one is refused and counted),
//! checks PKCE on the authorization code, and serves the API the
//! connector calls (401 for an unknown or expired token). Tokens live in
//! the store (state namespace `switchboard:oauth`); two nodes on one
//! PostgreSQL share them.

use crate::utils::*;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{json, Value};
use sha2::Digest as _;
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CLIENT_ID: &str = "sb-client-id";
/// The JWT-bearer grant's assertion type (RFC 7523 2.1).
const JWT_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// A 2048-bit RSA key made for this test only (`openssl genpkey`), and its
/// public half (PKCS#1 DER, base64), with which the server checks assertions.
const JWT_PRIVATE_KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC9zPi1dxb6Vgh/\n1QsNkpAwweQCOLKfj+pNADygg4HCmnXbUWrETs/9v8+PWWI3aheY98ZJg7H+NBfx\nKTIyDhGdviAJTgMYuDssVqxBrBP47lzi2x+6bJmQISzTKjf/mUAFBMdldEEQBNoy\nGcEpLYy3cXT35hygLvMWFxEb03XxAM1+an+wapPyvdOgxx9HtwOE5p+KThjYH59A\nbAPqQi/0WMrkFB9SGD6j22HE3kZ6afMLEXvEgb92CH+TUl1oTl/2UFL18uaDJJn9\nnoor4xowycDWaiCc5IHvE9j/Q4uXbwKCzWdMGW7HDEeucnXYUMC9LTQgyaWrInq7\ntcWTx+vHAgMBAAECggEAFe192F0zWuWgosAmwEEsBm4IHReWz2dtjsrVtkerMKPu\ntNFhr99ZGTxVSv7tIXDQ3BvYHTspT7COCY8UXQMSFvLVua15Hxx9vaAf05CBWDOV\nqKHfNwb/8M5cYuMQSCfY5RuJu9dkAulEmiAumEbKaJEjjdZYfUsfS3CLyfayvA6E\nKAlT9xLFSNVlSKa4OnWRKenrX911Ltpu5vt0mnlHk9ejpq1cm7Qq4aNqrpWX+ruZ\nL5ZYe+9I9njAhvPXL7TAXqq5MKS1c404Qh4wlaTZ5ZnxqUGUey6RelleAJphBIcc\nARDgDzkN2kQkYS0YKK27mVpcWcP+qTWZ24FtuDSpCQKBgQDqS6MI5s3en/KJlc6r\nWPHgDZBZnq2aHyG/f66IR7i4x4bnP6SfX134iC6KQCJpkQqeTHjkavkxNx3/NI9+\n0c0lXy99z/rJdZ3AF2p1MTNJuOpM9ZeN14uHBpFguLHQINNG5L4CU+8YU86G3T4K\nv9x8V+o1iT3YPev2xiXXurHIzwKBgQDPYiHKQNsG2uk95zLH6cXg00iAlvyciI2y\niJW8N2CAc7srH/9WzEZzjoEQDOpM2UrpdLfL3ZtkT7rPohVYwyvWLKd9YSRRc3ph\nn0C4bWA4yzBE23SSGkvJ1Zj+M7lA1X6e2vDgMLXfhqpzXMKzW3ii5PebIfToC75u\n9YB4SFh7iQKBgQCjTKCPnb6zgivbtWxchRvgm9OWg0BggX5WKLoPBl47e+YM25Dz\n+9ZVWSWG+niBt7P87TP9kImqwc3IiGvTaotflt5VBFa5f565uhhbIjWrFpVHmo1N\nMYRwUiWVkmVsuNRJPzkoCjRFcnQqD54kg+E7UVNOiR9vzojecPEDUX6EhQKBgAYy\n8b2g+KsYyhYOnib5pu+UgTtOyBhJwKqQiKFKqnjMfNDKMRDAJG752IPJTwujByk5\nUvEmG6oA9B2Ww7qWgu3xAcSura49nG/kmcOpiVHJSRUV1kMzxAYxe1RF6Yi1mQZY\nlxCshBM9bETshelkl5OO8pPRjQeOqk+YyRFPYE25AoGADk9yJpfc4gpqa2kN+X+a\nhiRENrmuc1KFtMcBDXuQiz9MFB9m0jbfRxKuqA5DMTqK8UIQkvLNCRXoJ+AfCZ3/\n6nFriMmCZvPEVXbD/Rz9kVaYdMZLOb5TRNAcN/rr3lkHQxF6mpVs6umw4fb4FBpn\nfjYjS4SYuyR1Wqab1mLFLPs=\n-----END PRIVATE KEY-----\n";
const JWT_PUBLIC_KEY_DER: &str = "MIIBCgKCAQEAvcz4tXcW+lYIf9ULDZKQMMHkAjiyn4/qTQA8oIOBwpp121FqxE7P/b/Pj1liN2oXmPfGSYOx/jQX8SkyMg4Rnb4gCU4DGLg7LFasQawT+O5c4tsfumyZkCEs0yo3/5lABQTHZXRBEATaMhnBKS2Mt3F09+YcoC7zFhcRG9N18QDNfmp/sGqT8r3ToMcfR7cDhOafik4Y2B+fQGwD6kIv9FjK5BQfUhg+o9thxN5GemnzCxF7xIG/dgh/k1JdaE5f9lBS9fLmgySZ/Z6KK+MaMMnA1mognOSB7xPY/0OLl28Cgs1nTBluxwxHrnJ12FDAvS00IMmlqyJ6u7XFk8frxwIDAQAB";
const SERVICE_ACCOUNT: &str = "sb@project.iam.gserviceaccount.com";
const CLIENT_SECRET: &str = "Canary-client-S3cret/+=";

/// How the token endpoint answers.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Normal,
    Html,
    Error500,
}

struct AuthState {
    mode: Mode,
    /// Access tokens the API accepts.
    live_access: HashSet<String>,
    /// Every access token issued.
    issued_access: Vec<String>,
    /// The one refresh token that works (strict rotation).
    live_refresh: Option<String>,
    /// Refresh tokens rotated away or revoked.
    spent_refresh: HashSet<String>,
    /// Uses of a spent refresh token.
    spent_reuse: u32,
    /// Token requests by grant type.
    token_requests: HashMap<String, u32>,
    /// code → (challenge, redirect_uri).
    codes: HashMap<String, (String, String)>,
    /// API calls answered 200 / 401, and the tokens the API saw.
    api_ok: u32,
    api_401: u32,
    api_tokens_seen: HashSet<String>,
    /// Expire the current access tokens after this many successful API calls.
    expire_after: Option<u32>,
    /// The API refuses every token (a grant without the scope it needs).
    reject_all: bool,
    /// The user clicks "deny" on the consent screen.
    deny: bool,
    /// Token endpoint latency (so concurrent callers overlap).
    latency: Duration,
    /// `expires_in` of issued tokens.
    expires_in: i64,
    n: u32,
    /// The token endpoint's URL: the audience assertions must name.
    token_url: String,
    /// Assertions received, and the claims of those verified.
    assertions: Vec<String>,
    jwt_claims: Vec<Value>,
}

#[derive(Clone)]
struct AuthServer {
    state: Arc<Mutex<AuthState>>,
    url: String,
}

impl AuthServer {
    async fn start() -> AuthServer {
        let state = Arc::new(Mutex::new(AuthState {
            mode: Mode::Normal,
            live_access: HashSet::new(),
            issued_access: Vec::new(),
            live_refresh: None,
            spent_refresh: HashSet::new(),
            spent_reuse: 0,
            token_requests: HashMap::new(),
            codes: HashMap::new(),
            api_ok: 0,
            api_401: 0,
            api_tokens_seen: HashSet::new(),
            expire_after: None,
            reject_all: false,
            deny: false,
            latency: Duration::ZERO,
            expires_in: 3600,
            n: 0,
            token_url: String::new(),
            assertions: Vec::new(),
            jwt_claims: Vec::new(),
        }));
        let app = axum::Router::new()
            .route("/oauth/token", axum::routing::post(token))
            .route("/oauth/authorize", axum::routing::get(authorize))
            .route("/api/echo", axum::routing::post(api))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        state.lock().unwrap().token_url = format!("{url}/oauth/token");
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        AuthServer { state, url }
    }

    fn with<T>(&self, f: impl FnOnce(&mut AuthState) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    fn requests(&self, grant: &str) -> u32 {
        self.with(|s| s.token_requests.get(grant).copied().unwrap_or(0))
    }

    /// The API refuses every access token issued so far (they expired).
    fn expire_access(&self) {
        self.with(|s| s.live_access.clear());
    }

    /// The user revoked the app: every refresh and access token is dead.
    fn revoke(&self) {
        self.with(|s| {
            s.live_access.clear();
            if let Some(r) = s.live_refresh.take() {
                s.spent_refresh.insert(r);
            }
        });
    }

    /// Every token value it issued (access and refresh).
    fn all_tokens(&self) -> Vec<String> {
        self.with(|s| {
            let mut all = s.issued_access.clone();
            all.extend(s.spent_refresh.iter().cloned());
            all.extend(s.live_refresh.clone());
            all
        })
    }
}

fn oauth_error(status: StatusCode, error: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": error, "error_description": format!("{error} (test server)")})),
    )
        .into_response()
}

/// Client authentication: HTTP Basic (form-encoded id and secret) or the
/// body's `client_id` / `client_secret`; a public client sends only its id.
fn client_ok(headers: &HeaderMap, form: &HashMap<String, String>) -> bool {
    if let Some(h) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        let Some(b64) = h.strip_prefix("Basic ") else {
            return false;
        };
        let pair = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_default();
        let pair = String::from_utf8_lossy(&pair).to_string();
        let dec = |s: &str| {
            serde_urlencoded::from_str::<Vec<(String, String)>>(&format!("v={s}"))
                .map(|v| v[0].1.clone())
                .unwrap_or_default()
        };
        let (id, secret) = pair.split_once(':').unwrap_or(("", ""));
        return dec(id) == CLIENT_ID && dec(secret) == CLIENT_SECRET;
    }
    form.get("client_id").map(String::as_str) == Some(CLIENT_ID)
        && form.get("client_secret").is_none_or(|s| s == CLIENT_SECRET)
}

async fn token(
    State(state): State<Arc<Mutex<AuthState>>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let (mode, latency) = {
        let mut s = state.lock().unwrap();
        let grant = form.get("grant_type").cloned().unwrap_or_default();
        *s.token_requests.entry(grant).or_default() += 1;
        (s.mode, s.latency)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    match mode {
        Mode::Html => {
            return (
                StatusCode::OK,
                [("content-type", "text/html")],
                "<html><body>Sign in to continue</body></html>",
            )
                .into_response()
        }
        Mode::Error500 => {
            return (StatusCode::INTERNAL_SERVER_ERROR, "upstream exploded").into_response()
        }
        Mode::Normal => {}
    }
    let jwt = form.get("grant_type").map(String::as_str) == Some(JWT_GRANT);
    if !jwt && !client_ok(&headers, &form) {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    let mut s = state.lock().unwrap();
    s.n += 1;
    let n = s.n;
    let mut refresh = None;
    match form.get("grant_type").map(String::as_str) {
        Some("client_credentials") => {
            if form.get("scope").map(String::as_str) != Some("tickets:read tickets:write")
                || form.get("audience").map(String::as_str) != Some("https://api.example.com")
            {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_scope");
            }
        }
        Some("authorization_code") => {
            let code = form.get("code").cloned().unwrap_or_default();
            let Some((challenge, redirect)) = s.codes.remove(&code) else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            };
            let verifier = form.get("code_verifier").cloned().unwrap_or_default();
            let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(sha2::Sha256::digest(verifier.as_bytes()));
            if computed != challenge || form.get("redirect_uri") != Some(&redirect) {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            }
            refresh = Some(format!("rt-{n}-{}", rand::random::<u32>()));
        }
        Some("refresh_token") => {
            let given = form.get("refresh_token").cloned().unwrap_or_default();
            if s.live_refresh.as_ref() != Some(&given) {
                if s.spent_refresh.contains(&given) {
                    s.spent_reuse += 1;
                }
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            }
            // Strict rotation: the used one is spent, a new one issued.
            s.spent_refresh.insert(given);
            refresh = Some(format!("rt-{n}-{}", rand::random::<u32>()));
        }
        Some(JWT_GRANT) => {
            // The assertion alone authenticates: no client in the request.
            if headers.contains_key("authorization") || form.contains_key("client_id") {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
            }
            let assertion = form.get("assertion").cloned().unwrap_or_default();
            s.assertions.push(assertion.clone());
            match verify_assertion(&assertion, &s.token_url) {
                Ok(claims) => s.jwt_claims.push(claims),
                Err(_) => return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant"),
            }
        }
        _ => return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type"),
    }
    let access = format!("at-{n}-{}", rand::random::<u64>());
    s.live_access.insert(access.clone());
    s.issued_access.push(access.clone());
    let mut answer = json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": s.expires_in,
    });
    if let Some(r) = refresh {
        s.live_refresh = Some(r.clone());
        answer["refresh_token"] = json!(r);
    }
    axum::Json(answer).into_response()
}

/// An RS256 assertion checked as a JWT-bearer token endpoint does (RFC
/// 7523 3): the signature with the service account's public key, the
/// header, and the claims (issuer, audience, scope, an hour's lifetime
/// from about now). Its claims, or why not.
fn verify_assertion(assertion: &str, audience: &str) -> Result<Value, String> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = assertion.split('.').collect();
    let [header, claims, signature] = parts[..] else {
        return Err(format!("{} parts", parts.len()));
    };
    let signature = b64.decode(signature).map_err(|e| e.to_string())?;
    let public = base64::engine::general_purpose::STANDARD
        .decode(JWT_PUBLIC_KEY_DER)
        .unwrap();
    ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, public)
        .verify(format!("{header}.{claims}").as_bytes(), &signature)
        .map_err(|_| "bad signature".to_string())?;
    let json = |part: &str| -> Result<Value, String> {
        serde_json::from_slice(&b64.decode(part).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())
    };
    let (header, claims) = (json(header)?, json(claims)?);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let iat = claims["iat"].as_i64().unwrap_or(0);
    let checks = [
        (header["alg"] == "RS256", "alg"),
        (header["kid"] == "key-1", "kid"),
        (claims["iss"] == SERVICE_ACCOUNT, "iss"),
        (claims["aud"] == audience, "aud"),
        (claims["scope"] == "tickets:read tickets:write", "scope"),
        ((iat - now).abs() < 300, "iat"),
        (claims["exp"].as_i64() == Some(iat + 3600), "exp"),
    ];
    for (ok, what) in checks {
        if !ok {
            return Err(format!("wrong `{what}`: {header} {claims}"));
        }
    }
    Ok(claims)
}

async fn authorize(
    State(state): State<Arc<Mutex<AuthState>>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let ok = q.get("response_type").map(String::as_str) == Some("code")
        && q.get("client_id").map(String::as_str) == Some(CLIENT_ID)
        && q.get("code_challenge_method").map(String::as_str) == Some("S256")
        && q.get("scope").map(String::as_str) == Some("tickets:read offline_access");
    let redirect = q.get("redirect_uri").cloned().unwrap_or_default();
    if !ok || !redirect.starts_with("http://127.0.0.1:") {
        return (StatusCode::BAD_REQUEST, "bad authorization request").into_response();
    }
    let state_param = q.get("state").cloned().unwrap_or_default();
    if state.lock().unwrap().deny {
        let location = format!(
            "{redirect}?error=access_denied&error_description=The+user+denied+access&state={state_param}"
        );
        return (StatusCode::FOUND, [("location", location)]).into_response();
    }
    let code = format!("code-{}", rand::random::<u64>());
    state.lock().unwrap().codes.insert(
        code.clone(),
        (
            q.get("code_challenge").cloned().unwrap_or_default(),
            redirect.clone(),
        ),
    );
    let location = format!("{redirect}?code={code}&state={state_param}");
    (StatusCode::FOUND, [("location", location)]).into_response()
}

/// The API: 200 echoing the Authorization header it got (so redaction is
/// put to the test), 401 for a token that is not live.
async fn api(State(state): State<Arc<Mutex<AuthState>>>, headers: HeaderMap) -> Response {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let token = auth.strip_prefix("Bearer ").unwrap_or("").to_string();
    let mut s = state.lock().unwrap();
    s.api_tokens_seen.insert(token.clone());
    if s.reject_all || !s.live_access.contains(&token) {
        s.api_401 += 1;
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "invalid_token", "seen": auth})),
        )
            .into_response();
    }
    s.api_ok += 1;
    if s.expire_after == Some(s.api_ok) {
        s.live_access.clear();
    }
    axum::Json(json!({"ok": true, "authorization": auth})).into_response()
}

/// A connector `crm` with `auth` (YAML lines under `auth:`), calling the
/// server's `/api/echo`, and a recipe calling it for every Zendesk ticket.
fn config(server: &AuthServer, auth: &str) -> Config {
    let cfg = Config::connectors_only();
    cfg.connector(
        "crm",
        &format!(
            "name: crm\nbase_url: {}\nsecrets: [client_secret]\ntimeout: 3s\nretry: {{ attempts: 2, backoff: 10ms }}\n\
             auth:\n{auth}\nactions:\n  echo:\n    method: POST\n    path: /api/echo\n    body: {{ hello: world }}\n",
            server.url
        ),
    );
    cfg.recipe(
        "sync",
        "name: sync\non: { connector: zendesk, event: ticket.created }\nsteps:\n  - id: echo\n    call: crm.echo\n",
    );
    cfg
}

const CLIENT_CREDENTIALS: &str =
    "  type: oauth2\n  grant: client_credentials\n  token_url: /oauth/token\n  \
    client_id: sb-client-id\n  client_secret: \"{{ secrets.client_secret }}\"\n  \
    scopes: [\"tickets:read\", \"tickets:write\"]\n  audience: https://api.example.com\n";

const AUTHORIZATION_CODE: &str =
    "  type: oauth2\n  grant: authorization_code\n  token_url: /oauth/token\n  \
    authorize_url: URL/oauth/authorize\n  client_auth: body\n  client_id: sb-client-id\n  \
    client_secret: \"{{ secrets.client_secret }}\"\n  scopes: [\"tickets:read\", offline_access]\n";

fn options(cfg: &Config, data: &std::path::Path) -> HubOptions {
    let mut opts = cfg.options();
    opts.env.push((
        "SWITCHBOARD_SECRET_CRM_CLIENT_SECRET".into(),
        CLIENT_SECRET.into(),
    ));
    opts.data = Some(data.to_path_buf());
    opts
}

/// Post `n` tickets; the ids of their runs.
async fn post_tickets(hub: &Hub, first: u64, n: u64) -> Vec<String> {
    let mut runs = Vec::new();
    for id in first..first + n {
        let (status, accepted) = hub
            .post_zendesk(&ticket_event(id, "Hello", "bob@example.com"))
            .await;
        assert_eq!(status, 202, "{accepted}");
        let (_, event) = hub
            .api(&format!(
                "/api/events/{}",
                accepted["event_id"].as_str().unwrap()
            ))
            .await;
        runs.push(event["runs"][0]["id"].as_str().unwrap().to_string());
    }
    runs
}

/// One ticket's run, finished.
async fn one_run(hub: &Hub, id: u64) -> Value {
    let runs = post_tickets(hub, id, 1).await;
    hub.wait_run(&runs[0]).await
}

/// 100 concurrent steps with no token make one token request (single
/// flight); the token expiring mid-traffic (the API answers 401) makes one
/// more, and every run succeeds. Client credentials by HTTP Basic, with
/// scopes and audience.
#[tokio::test]
async fn one_token_request_for_100_concurrent_steps_and_one_after_expiry() {
    let server = AuthServer::start().await;
    server.with(|s| {
        s.latency = Duration::from_millis(300);
        s.expire_after = Some(50);
    });
    let cfg = config(&server, CLIENT_CREDENTIALS);
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(&cfg, &dir.path().join("data"));
    opts.args = vec!["--workers".into(), "100".into()];
    let hub = Hub::start(opts).await;
    let runs = post_tickets(&hub, 1, 100).await;
    for id in &runs {
        let run = hub.wait_run(id).await;
        assert_eq!(run["status"], "succeeded", "{run}");
    }
    let (ok, unauthorized) = server.with(|s| (s.api_ok, s.api_401));
    assert_eq!(ok, 100);
    assert!(unauthorized >= 1, "the token expired mid-traffic");
    assert_eq!(
        server.requests("client_credentials"),
        2,
        "one token for the first 50 calls, one after it expired"
    );
    // The token is in the store (a restart needs no new one), shown redacted.
    let saved = stored(&dir.path().join("data"), None, Some(&hub)).unwrap();
    let last = server.with(|s| s.issued_access.last().cloned().unwrap());
    assert_eq!(saved["access_token"], fingerprint(&last), "{saved}");
    assert!(!dir.path().join("data/oauth").exists(), "no token file");
}

/// How `switchboard state` shows a token value: `*** sha256:` and 8 hex digits.
fn fingerprint(token: &str) -> String {
    format!(
        "*** sha256:{}",
        hex::encode(&sha2::Sha256::digest(token.as_bytes())[..4])
    )
}

/// `crm`'s token record as `switchboard state get switchboard:oauth crm`
/// shows it (token values redacted): through `hub`'s admin API while it
/// holds the store, else from the store (`store`, or the data dir's).
fn stored(data: &std::path::Path, store: Option<&str>, hub: Option<&Hub>) -> Option<Value> {
    let mut cmd = command(&["state", "get", "switchboard:oauth", "crm", "--json"]);
    cmd.arg("--data").arg(data);
    if let Some(h) = hub {
        cmd.arg("--url")
            .arg(&h.url)
            .env("SWITCHBOARD_ADMIN_TOKEN", &h.token);
    }
    if let Some(url) = store.map(str::to_string).or_else(|| test_store(data)) {
        cmd.env("SWITCHBOARD_STORE", url);
    }
    let out = cmd.output().unwrap();
    if !out.status.success() {
        assert!(stderr(&out).contains("no state `crm`"), "{}", stderr(&out));
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    Some(v["items"][0]["value"].clone())
}

/// An access token past its expiry (by `expires_at` in the token file of
/// a hub from before the store held tokens) is refreshed before it is
/// used: the API never sees it, although the server would still accept
/// it. The file is moved into the store (and removed) on first use.
#[tokio::test]
async fn a_token_is_refreshed_before_it_expires() {
    let server = AuthServer::start().await;
    let cfg = config(&server, &AUTHORIZATION_CODE.replace("URL", &server.url));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    server.with(|s| {
        s.live_access.insert("at-stale-but-accepted".into());
        s.live_refresh = Some("rt-seeded".into());
    });
    write(
        &data.join("oauth/crm.json"),
        &json!({
            "access_token": "at-stale-but-accepted",
            "expires_at": now - 1_000,
            "obtained_at": now - 3_601_000,
            "refresh_token": "rt-seeded",
        })
        .to_string(),
    );
    let hub = Hub::start(options(&cfg, &data)).await;
    let run = one_run(&hub, 1).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(server.requests("refresh_token"), 1);
    server.with(|s| {
        assert!(!s.api_tokens_seen.contains("at-stale-but-accepted"));
        assert_eq!(s.api_401, 0);
    });
    assert!(
        !data.join("oauth/crm.json").exists(),
        "moved into the store"
    );
    let saved = stored(&data, None, Some(&hub)).unwrap();
    let live = server.with(|s| s.live_refresh.clone().unwrap());
    assert_ne!(live, "rt-seeded");
    assert_eq!(saved["refresh_token"], fingerprint(&live), "{saved}");
}

/// Start `switchboard connect crm --port 0`, follow the printed URL like a
/// browser (the server approves at once and redirects to the loopback
/// listener), and return the command's output.
async fn connect(
    cfg: &Config,
    data: &std::path::Path,
    store: Option<&str>,
    server: &AuthServer,
) -> std::process::Output {
    let mut cmd = command(&["connect", "crm"]);
    cmd.args(["--port", "0", "--timeout", "30s", "--allow-internal", "crm"])
        .arg("--data")
        .arg(data)
        .arg("--connectors")
        .arg(&cfg.connectors)
        .arg("--recipes")
        .arg(&cfg.recipes)
        .env("SWITCHBOARD_SECRET_CRM_CLIENT_SECRET", CLIENT_SECRET)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(url) = store.map(str::to_string).or_else(|| test_store(data)) {
        cmd.env("SWITCHBOARD_STORE", url);
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.trim_start().starts_with("http") {
                let _ = tx.send(line.trim().to_string());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let url = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("connect printed the URL");
    assert!(
        url.starts_with(&format!("{}/oauth/authorize?", server.url)),
        "{url}"
    );
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let approved = browser.get(&url).send().await.unwrap();
    assert_eq!(approved.status(), 302);
    let back = approved.headers()["location"].to_str().unwrap().to_string();
    let page = browser.get(&back).send().await.unwrap();
    let expected = if server.with(|s| s.deny) { 400 } else { 200 };
    assert_eq!(page.status(), expected);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "connect did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    let out = reader.join().unwrap();
    std::process::Output {
        status,
        stdout: out.into_bytes(),
        stderr: err.into_bytes(),
    }
}

/// `connect` runs the authorization-code flow with PKCE once and stores the
/// tokens in the store (never printed); the hub uses them, refreshes on a 401 with
/// rotation persisted, keeps the newest refresh token across an abort
/// right after a rotation (kill -9 at the crash point) and across a plain
/// kill -9; a revoked grant fails the run once, clearly, without retries.
#[tokio::test]
async fn connect_then_rotate_across_kill_9_then_revoke() {
    let server = AuthServer::start().await;
    let cfg = config(&server, &AUTHORIZATION_CODE.replace("URL", &server.url));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    // Before `connect`, a run fails saying what to do.
    let hub = Hub::start(options(&cfg, &data)).await;
    let run = one_run(&hub, 1).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert!(
        run["error"]
            .as_str()
            .unwrap()
            .contains("run `switchboard connect crm` once"),
        "{run}"
    );
    drop(hub);

    let out = connect(&cfg, &data, None, &server).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stdout(&out).contains("connected `crm`"), "{}", stdout(&out));
    for t in server.all_tokens() {
        assert!(!stdout(&out).contains(&t) && !stderr(&out).contains(&t));
    }
    assert_eq!(server.requests("authorization_code"), 1);
    assert!(
        stdout(&out).contains("tokens stored in the store"),
        "{}",
        stdout(&out)
    );
    assert!(!data.join("oauth/crm.json").exists(), "no token file");
    // The refresh token the store holds, as the state listing shows it.
    let stored_refresh = |hub: Option<&Hub>| -> String {
        let v = stored(&data, None, hub).unwrap();
        v["refresh_token"].as_str().unwrap().to_string()
    };
    let live = || fingerprint(&server.with(|s| s.live_refresh.clone().unwrap()));
    let r1 = stored_refresh(None);
    assert_eq!(r1, live());

    // The hub uses the stored access token: no token request.
    let mut hub = Hub::start(options(&cfg, &data)).await;
    let run = one_run(&hub, 2).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(server.requests("refresh_token"), 0);

    // Expired: one 401, one refresh, rotation stored before use.
    server.expire_access();
    let run = one_run(&hub, 3).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(server.requests("refresh_token"), 1);
    let r2 = stored_refresh(Some(&hub));
    assert_ne!(r1, r2);
    assert_eq!(r2, live());
    hub.kill(); // SIGKILL

    // Abort right after the next rotation is persisted, before its token is used.
    server.expire_access();
    let mut opts = options(&cfg, &data);
    opts.env
        .push(("SWITCHBOARD_CRASH_AT".into(), "oauth.persisted:1".into()));
    let mut hub = Hub::start(opts).await;
    // The answer races the abort (the run starts once the event is
    // durable), so it may not arrive; the event is stored either way.
    let raw = serde_json::to_vec(&ticket_event(4, "Hello", "bob@example.com")).unwrap();
    let mut req = hub
        .http
        .post(format!("{}/hooks/zendesk", hub.url))
        .body(raw.clone());
    for (k, v) in zendesk_headers(&raw, ZENDESK_WEBHOOK_SECRET) {
        req = req.header(k, v);
    }
    let _ = req.send().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while hub.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the hub did not abort");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    hub.kill();
    let r3 = stored_refresh(None);
    assert_ne!(
        r3, r2,
        "the rotated refresh token was stored before the abort"
    );
    assert_eq!(r3, live());

    // After the restart the interrupted run finishes with the stored token.
    // (The aborted hub held the refresh lease: the next refresh waits for
    // it to expire, the token request's timeout (3s) + 5s.)
    let hub = Hub::start(options(&cfg, &data)).await;
    let (_, page) = hub.api("/api/runs?limit=10").await;
    let interrupted = page["items"][0]["id"].as_str().unwrap().to_string();
    let run = hub.wait_run(&interrupted).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    server.expire_access();
    let run = one_run(&hub, 5).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(
        server.with(|s| s.spent_reuse),
        0,
        "a spent refresh token was never sent again"
    );

    // The user revokes the app: the run fails once, clearly, not retried,
    // and the next run fails without asking the endpoint again.
    server.revoke();
    let before = server.requests("refresh_token");
    let run = one_run(&hub, 6).await;
    assert_eq!(run["status"], "failed", "{run}");
    let error = run["error"].as_str().unwrap();
    assert!(
        error.contains("refused the refresh token of `crm`")
            && error.contains("re-connect with `switchboard connect crm`"),
        "{error}"
    );
    assert_eq!(run["steps"][0]["attempts"], 1, "{run}");
    assert_eq!(server.requests("refresh_token"), before + 1);
    let run = one_run(&hub, 7).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(server.requests("refresh_token"), before + 1, "fails fast");

    // Re-connecting while the hub holds the (sled) store: `connect` hands
    // the tokens over in the token file; the hub's next call moves them
    // into the store and uses the new grant.
    let out = connect(&cfg, &data, None, &server).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let run = one_run(&hub, 8).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert!(
        !data.join("oauth/crm.json").exists(),
        "moved into the store"
    );
    assert_eq!(stored_refresh(Some(&hub)), live());
}

/// A token endpoint answering an HTML page fails the run at once (not
/// retried, `check token_url`); one answering 500 is retried like an
/// outage and the run ends `dead` with the status; a wrong client secret
/// is `invalid_client`, not retried.
#[tokio::test]
async fn bad_token_endpoints_fail_the_step_clearly() {
    let server = AuthServer::start().await;
    let cfg = config(&server, CLIENT_CREDENTIALS);
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(options(&cfg, &dir.path().join("data"))).await;

    server.with(|s| s.mode = Mode::Html);
    let run = one_run(&hub, 1).await;
    assert_eq!(run["status"], "failed", "{run}");
    let error = run["error"].as_str().unwrap();
    assert!(
        error.contains("answered an HTML page (HTTP 200)"),
        "{error}"
    );
    assert!(error.contains("check `token_url`"), "{error}");
    assert_eq!(server.requests("client_credentials"), 1);

    server.with(|s| s.mode = Mode::Error500);
    let run = one_run(&hub, 2).await;
    assert_eq!(run["status"], "dead", "{run}");
    assert!(
        run["error"].as_str().unwrap().contains("answered HTTP 500"),
        "{run}"
    );
    assert_eq!(run["steps"][0]["attempts"], 2, "{run}");
    assert_eq!(
        server.with(|s| s.api_ok + s.api_401),
        0,
        "the API was never called"
    );

    let mut opts = options(&cfg, &dir.path().join("data2"));
    opts.env.push((
        "SWITCHBOARD_SECRET_CRM_CLIENT_SECRET".into(),
        "wrong-secret".into(),
    ));
    drop(hub);
    let hub = Hub::start(opts).await;
    server.with(|s| s.mode = Mode::Normal);
    let run = one_run(&hub, 3).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert!(
        run["error"]
            .as_str()
            .unwrap()
            .contains("refused the client credentials of `crm`"),
        "{run}"
    );
}

/// `check` locates every problem of an `oauth2` section; a missing
/// `client_secret` is an error there, and an unset one is the usual
/// missing-secret error.
#[test]
fn check_locates_oauth2_problems() {
    let server_url = "https://crm.example.com";
    let cfg = Config::connectors_only();
    let write_crm = |auth: &str| {
        cfg.connector(
            "crm",
            &format!(
                "name: crm\nbase_url: {server_url}\nsecrets: [client_secret]\nauth:\n{auth}actions:\n  echo:\n    method: POST\n    path: /api/echo\n"
            ),
        )
    };
    cfg.recipe(
        "sync",
        "name: sync\non: { connector: zendesk, event: ticket.created }\nsteps:\n  - id: echo\n    call: crm.echo\n",
    );
    let fails = |cfg: &Config| {
        let out = cfg
            .command("check")
            .env("SWITCHBOARD_SECRET_CRM_CLIENT_SECRET", "x-secret")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
        stderr(&out)
    };
    let file = write_crm(
        "  type: oauth2\n  grant: client_credentials\n  token_url: /oauth/token\n  client_id: id\n",
    );
    let err = fails(&cfg);
    assert!(
        err.contains(&format!("{}:5:3: missing `client_secret`", file.display())),
        "{err}"
    );
    write_crm(
        "  type: oauth2\n  grant: authorization_code\n  token_url: not a url\n  client_id: id\n  \
         client_secret: \"{{ secrets.client_secret }}\"\n  scopes: [\"a b\"]\n  redirect_uri: https://example.com/cb\n",
    );
    let err = fails(&cfg);
    for want in [
        ":7:14: invalid `token_url`",
        ":10:12: invalid scope `a b`",
        ":11:17: invalid `redirect_uri` `https://example.com/cb`",
        ":5:3: `grant: authorization_code` needs `authorize_url`",
    ] {
        assert!(err.contains(want), "{want}: {err}");
    }
    write_crm("  type: oauth2\n  grant: jwt_bearer\n  token_url: /t\n  client_id: id\n  subject: me@example.com\n");
    let err = fails(&cfg);
    assert!(
        err.contains(":5:3: `grant: jwt_bearer` needs `private_key`"),
        "{err}"
    );
    write_crm(
        "  type: oauth2\n  grant: client_credentials\n  token_url: /t\n  client_id: id\n  \
         client_secret: \"{{ secrets.client_secret }}\"\n  private_key: x\n",
    );
    let err = fails(&cfg);
    assert!(
        err.contains(":10:16: `private_key` is for `grant: jwt_bearer`"),
        "{err}"
    );
    write_crm("  type: oauth2\n  grant: password\n  token_url: /t\n  client_id: id\n");
    let err = fails(&cfg);
    assert!(err.contains(":6:10: unknown variant `password`"), "{err}");
    write_crm(
        "  type: oauth2\n  grant: client_credentials\n  token_url: /t\n  client_id: id\n  \
         client_secret: \"{{ secrets.client_secret }}\"\n  authorize_url: https://x.example/a\n",
    );
    let err = fails(&cfg);
    assert!(
        err.contains(":10:18: `authorize_url` is for `grant: authorization_code`"),
        "{err}"
    );
    // Declared but not set: the missing-secret error, with the variable.
    write_crm(
        "  type: oauth2\n  grant: client_credentials\n  token_url: /t\n  client_id: id\n  \
         client_secret: \"{{ secrets.client_secret }}\"\n",
    );
    let out = cfg.check();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("SWITCHBOARD_SECRET_CRM_CLIENT_SECRET"),
        "{}",
        stderr(&out)
    );
    let out = cfg
        .command("check")
        .env("SWITCHBOARD_SECRET_CRM_CLIENT_SECRET", "x-secret")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // The README's HubSpot example is a valid section.
    write_crm(
        "  type: oauth2\n  grant: authorization_code\n  authorize_url: https://app.hubspot.com/oauth/authorize\n  \
         token_url: /oauth/v3/token\n  client_auth: body\n  client_id: 3f2a-your-app-id\n  \
         client_secret: \"{{ secrets.client_secret }}\"\n  \
         scopes: [crm.objects.contacts.read, crm.objects.contacts.write]\n  redirect_uri: http://localhost:8976/callback\n",
    );
    let out = cfg
        .command("check")
        .env("SWITCHBOARD_SECRET_CRM_CLIENT_SECRET", "x-secret")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// The client secret and every token the server issued never reach the
/// logs (trace level), the data dir outside the store, the admin API's run
/// records, step errors or state listing (API and CLI), though the API
/// echoes the Authorization header and the 401 answer too; only the
/// store's token record holds them.
#[tokio::test]
async fn no_token_or_client_secret_reaches_logs_store_or_api() {
    let server = AuthServer::start().await;
    let cfg = config(&server, CLIENT_CREDENTIALS);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("hub.log");
    let mut opts = options(&cfg, &data);
    opts.env.push(("SWITCHBOARD_LOG".into(), "trace".into()));
    opts.log_file = Some(log.clone());
    let mut hub = Hub::start(opts).await;
    let ok = one_run(&hub, 1).await;
    assert_eq!(ok["status"], "succeeded", "{ok}");
    assert!(
        ok["steps"][0]["output"]["authorization"] == "Bearer ***",
        "{ok}"
    );
    // The API refuses every token: one refresh, a second 401, the step
    // fails with the echo of the header in its record.
    server.with(|s| s.reject_all = true);
    let failed = one_run(&hub, 2).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(server.requests("client_credentials"), 2);
    assert!(failed.to_string().contains("Bearer ***"), "{failed}");
    let mut shown = Vec::new();
    for run in [&ok, &failed] {
        let (_, r) = hub
            .api(&format!("/api/runs/{}", run["id"].as_str().unwrap()))
            .await;
        shown.push(r.to_string());
    }
    let (status, listed) = hub.api("/api/state?namespace=switchboard:oauth").await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["items"][0]["key"], "crm", "{listed}");
    shown.push(listed.to_string());
    let (_, one) = hub.api("/api/state/switchboard:oauth/crm").await;
    assert!(
        one["items"][0]["value"]["access_token"]
            .as_str()
            .unwrap()
            .starts_with("*** sha256:"),
        "{one}"
    );
    shown.push(one.to_string());
    // Not writable through the API: `connect` writes tokens.
    let put = hub
        .http
        .put(format!("{}/api/state/switchboard:oauth/crm", hub.url))
        .bearer_auth(&hub.token)
        .json(&json!({"value": {"access_token": "planted"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 400);
    let cli = hub.cli(&["state", "list"]);
    assert!(
        stdout(&cli).contains("switchboard:oauth"),
        "{}",
        stdout(&cli)
    );
    shown.push(stdout(&cli));
    hub.kill();
    let cli = command(&["state", "list", "--json", "--data"])
        .arg(&data)
        .envs(test_store(&data).map(|u| ("SWITCHBOARD_STORE", u)))
        .output()
        .unwrap();
    assert!(
        stdout(&cli).contains("switchboard:oauth"),
        "{}",
        stdout(&cli)
    );
    shown.push(stdout(&cli));
    let mut secrets = server.all_tokens();
    secrets.push(CLIENT_SECRET.into());
    let b64 =
        base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"));
    secrets.push(b64);
    let mut haystacks: Vec<(String, Vec<u8>)> = shown
        .into_iter()
        .map(|s| ("the run via the API".to_string(), s.into_bytes()))
        .collect();
    haystacks.push(("the log".into(), std::fs::read(&log).unwrap()));
    let mut stack = vec![data.clone()];
    while let Some(p) = stack.pop() {
        for entry in std::fs::read_dir(&p).unwrap() {
            let path = entry.unwrap().path();
            if path == data.join("store") && test_store(&data).is_none() {
                continue; // the store: the one place tokens live
            }
            if path.is_dir() {
                stack.push(path);
            } else {
                haystacks.push((path.display().to_string(), std::fs::read(&path).unwrap()));
            }
        }
    }
    assert!(haystacks.len() > 3);
    for (name, bytes) in &haystacks {
        for s in &secrets {
            let found = bytes.windows(s.len()).any(|w| w == s.as_bytes());
            assert!(!found, "{name} holds `{s}`");
        }
    }
}

/// A user who denies access on the consent screen: `connect` says so,
/// exits 1 and stores nothing; nothing is asked of the token endpoint.
#[tokio::test]
async fn connect_refused_by_the_user_stores_nothing() {
    let server = AuthServer::start().await;
    server.with(|s| s.deny = true);
    let cfg = config(&server, &AUTHORIZATION_CODE.replace("URL", &server.url));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = connect(&cfg, &data, None, &server).await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("the app refused the authorization (access_denied: The user denied access); not connected"),
        "{}",
        stderr(&out)
    );
    assert!(!data.join("oauth/crm.json").exists());
    assert_eq!(stored(&data, None, None), None);
    assert_eq!(server.requests("authorization_code"), 0);
}

/// A node of two on one PostgreSQL schema: the test's connector and
/// recipe, a data dir of its own, 50 workers.
async fn pg_node(cfg: &Config, dir: &std::path::Path, db: &str, name: &str) -> Hub {
    let mut opts = options(cfg, &dir.join(name));
    opts.args = vec![
        "--workers".into(),
        "50".into(),
        "--store".into(),
        db.to_string(),
    ];
    Hub::start(opts).await
}

/// Post `n` tickets to each hub at once; every run succeeds.
async fn all_succeed(hubs: &[&Hub], first: u64, n: u64) {
    let posted = futures_util::future::join_all(
        hubs.iter()
            .enumerate()
            .map(|(i, h)| post_tickets(h, first + i as u64 * n, n)),
    )
    .await;
    for (hub, runs) in hubs.iter().zip(posted) {
        for id in &runs {
            let run = hub.wait_run(id).await;
            assert_eq!(run["status"], "succeeded", "{run}");
        }
    }
}

/// Two nodes on one PostgreSQL share one client-credentials token: 2 × 50
/// concurrent steps with no token anywhere make one token request (the
/// refresh lease in the store is the single flight across nodes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_postgres_make_one_token_request() {
    let db = PgSchema::fresh();
    let server = AuthServer::start().await;
    server.with(|s| s.latency = Duration::from_millis(300));
    let cfg = config(&server, CLIENT_CREDENTIALS);
    let dir = tempfile::tempdir().unwrap();
    let a = pg_node(&cfg, dir.path(), &db.url, "a").await;
    let b = pg_node(&cfg, dir.path(), &db.url, "b").await;
    all_succeed(&[&a, &b], 1, 50).await;
    assert_eq!(server.with(|s| s.api_ok), 100);
    assert_eq!(
        server.requests("client_credentials"),
        1,
        "one token for both nodes"
    );
    let saved = stored(&dir.path().join("a"), Some(&db.url), None).unwrap();
    let issued = server.with(|s| s.issued_access.clone());
    assert_eq!(saved["access_token"], fingerprint(&issued[0]), "{saved}");
    drop((a, b));
    db.drop_now();
}

/// Two nodes on one PostgreSQL and one `connect` (written to the store):
/// both use its token; after it expires, 2 × 50 concurrent steps make one
/// refresh; a rotation made by node A is what node B spends next (strict
/// rotation at the server: a spent refresh token is never sent again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_postgres_share_one_grant_and_its_rotations() {
    let db = PgSchema::fresh();
    let server = AuthServer::start().await;
    server.with(|s| s.latency = Duration::from_millis(300));
    let cfg = config(&server, &AUTHORIZATION_CODE.replace("URL", &server.url));
    let dir = tempfile::tempdir().unwrap();
    let out = connect(&cfg, &dir.path().join("a"), Some(&db.url), &server).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("tokens stored in the store"),
        "{}",
        stdout(&out)
    );
    let a = pg_node(&cfg, dir.path(), &db.url, "a").await;
    let b = pg_node(&cfg, dir.path(), &db.url, "b").await;

    // Node B was never connected: it reads the grant from the store.
    let run = one_run(&b, 1).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(server.requests("refresh_token"), 0);

    // Expired under both: one refresh for 100 steps on two nodes.
    server.expire_access();
    all_succeed(&[&a, &b], 10, 50).await;
    assert_eq!(
        server.requests("refresh_token"),
        1,
        "one refresh for both nodes"
    );

    // A rotates; B takes A's new access token from the store (its own was
    // refused), then, once that expires too, spends the refresh token A
    // stored.
    server.expire_access();
    let run = one_run(&a, 200).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(server.requests("refresh_token"), 2);
    let run = one_run(&b, 201).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(server.requests("refresh_token"), 2);
    server.expire_access();
    let run = one_run(&b, 202).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(server.requests("refresh_token"), 3);
    assert_eq!(
        server.with(|s| s.spent_reuse),
        0,
        "no spent refresh token was sent"
    );
    let saved = stored(&dir.path().join("b"), Some(&db.url), None).unwrap();
    let live = server.with(|s| s.live_refresh.clone().unwrap());
    assert_eq!(saved["refresh_token"], fingerprint(&live), "{saved}");
    drop((a, b));
    db.drop_now();
}

const JWT_BEARER: &str = "  type: oauth2\n  grant: jwt_bearer\n  token_url: /oauth/token\n  \
    client_id: sb@project.iam.gserviceaccount.com\n  private_key: \"{{ secrets.private_key }}\"\n  \
    key_id: key-1\n  scopes: [\"tickets:read\", \"tickets:write\"]\n";

/// The JWT-bearer grant (RFC 7523, as Google service accounts use it): the
/// hub signs an RS256 assertion with the connector's private key, which the
/// server verifies with the public key (and would refuse if one byte
/// changed); the token it answers serves every later call. A key that is
/// not one fails the run at once, saying so, without a request.
#[tokio::test]
async fn jwt_bearer_assertions_are_signed_with_the_service_account_key() {
    let server = AuthServer::start().await;
    let cfg = config(&server, JWT_BEARER);
    let file = cfg.connectors.join("crm.yaml");
    let text = std::fs::read_to_string(&file).unwrap().replace(
        "secrets: [client_secret]",
        "secrets: [client_secret, private_key]",
    );
    write(&file, &text);
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(&cfg, &dir.path().join("data"));
    opts.env.push((
        "SWITCHBOARD_SECRET_CRM_PRIVATE_KEY".into(),
        JWT_PRIVATE_KEY.into(),
    ));
    let hub = Hub::start(opts).await;
    for id in [1, 2] {
        let run = one_run(&hub, id).await;
        assert_eq!(run["status"], "succeeded", "{run}");
    }
    assert_eq!(
        server.requests(JWT_GRANT),
        1,
        "the token serves the second run"
    );
    let (claims, assertion) = server.with(|s| (s.jwt_claims.clone(), s.assertions[0].clone()));
    assert_eq!(claims.len(), 1, "the assertion verified");
    assert!(claims[0].get("sub").is_none(), "{}", claims[0]);
    // The server's check can fail: one changed claim breaks the signature.
    let parts: Vec<&str> = assertion.split('.').collect();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let forged = String::from_utf8(b64.decode(parts[1]).unwrap())
        .unwrap()
        .replace(SERVICE_ACCOUNT, "mallory@example.com");
    let forged = format!("{}.{}.{}", parts[0], b64.encode(forged), parts[2]);
    assert_eq!(
        verify_assertion(&forged, &format!("{}/oauth/token", server.url)),
        Err("bad signature".to_string())
    );
    drop(hub);

    // Not a key: the run fails at once, naming the problem, not the value.
    let mut opts = options(&cfg, &dir.path().join("data2"));
    opts.env.push((
        "SWITCHBOARD_SECRET_CRM_PRIVATE_KEY".into(),
        "not-a-key-Canary".into(),
    ));
    let hub = Hub::start(opts).await;
    let run = one_run(&hub, 3).await;
    assert_eq!(run["status"], "failed", "{run}");
    let error = run["error"].as_str().unwrap();
    assert!(
        error.contains("the `private_key` of `crm` cannot sign: not a PEM key"),
        "{error}"
    );
    assert!(!run.to_string().contains("not-a-key-Canary"), "{run}");
    assert_eq!(run["steps"][0]["attempts"], 1, "{run}");
    assert_eq!(server.requests(JWT_GRANT), 1, "nothing sent");
}
