//! Test helpers: start the real `switchboard` binary on a free port with its
//! own data dir, fake far-end APIs (an axum server that records every request
//! and answers from a script), and sign webhooks like the senders do.

#![allow(dead_code)]

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The repository root (where connectors/ and recipes/ are).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Secrets for every shipped connector.
pub const ZENDESK_WEBHOOK_SECRET: &str = "zendesk-signing-secret";
pub const FRESHDESK_WEBHOOK_TOKEN: &str = "freshdesk-token-5b2e9c";
pub const TYPEFORM_WEBHOOK_SECRET: &str = "typeform-signing-secret";
pub const WUFOO_HANDSHAKE_KEY: &str = "wufoo-handshake-key";
/// A Standard Webhooks secret: `whsec_` + base64 of the key bytes.
pub const APP_WEBHOOK_SECRET: &str = "whsec_c3dpdGNoYm9hcmQtYXBwLWtleQ==";
pub const SLACK_SIGNING_SECRET: &str = "slack-signing-secret";

pub fn test_secrets() -> Vec<(String, String)> {
    [
        ("ZENDESK_EMAIL", "agent@example.com"),
        ("ZENDESK_API_TOKEN", "zd-api-token-123"),
        ("ZENDESK_WEBHOOK_SECRET", ZENDESK_WEBHOOK_SECRET),
        (
            "HUBSPOT_TOKEN",
            "pat-na1-00000000-0000-0000-0000-000000000000",
        ),
        ("DEEPL_AUTH_KEY", "00000000-0000-0000-0000-000000000000:fx"),
        ("SLACK_BOT_TOKEN", "xoxb-0000-0000-test"),
        ("FRESHDESK_API_KEY", "fd-api-key-123"),
        ("FRESHDESK_WEBHOOK_TOKEN", FRESHDESK_WEBHOOK_TOKEN),
        ("STRIPE_SECRET_KEY", "sk_test_0000000000000000000000000"),
        ("STRIPE_WEBHOOK_SECRET", "whsec_stripe-test"),
        ("SENDGRID_API_KEY", "SG.test-key.0000"),
        ("TYPEFORM_WEBHOOK_SECRET", TYPEFORM_WEBHOOK_SECRET),
        ("TYPEFORM_RESPONSES_API_TOKEN", "tfp_test_token_123"),
        ("TYPEFORM_RESPONSES_FORM_ID", "f0rm1D"),
        ("WUFOO_HANDSHAKE_KEY", WUFOO_HANDSHAKE_KEY),
        ("APP_WEBHOOK_SECRET", APP_WEBHOOK_SECRET),
        (
            "GOOGLE_TRANSLATE_API_KEY",
            "AIzaSyTest-google-translate-key",
        ),
        ("SLACK_COMMANDS_SIGNING_SECRET", SLACK_SIGNING_SECRET),
    ]
    .iter()
    .map(|(k, v)| (format!("SWITCHBOARD_SECRET_{k}"), v.to_string()))
    .collect()
}

/// The PostgreSQL database the tests use (trust auth on the machine's server).
pub fn test_pg() -> String {
    std::env::var("SWITCHBOARD_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A schema of its own in the test database; `url` connects to it.
pub struct PgSchema {
    pub name: String,
    pub url: String,
}

impl PgSchema {
    /// The schema named `name` (created if missing), marked with this
    /// process's id so a later test process drops it once we are gone.
    pub fn named(name: &str) -> PgSchema {
        off_runtime(|| {
            let mut c = postgres::Client::connect(&test_pg(), postgres::NoTls)
                .expect("PostgreSQL at 127.0.0.1:5432, database test (SWITCHBOARD_TEST_PG)");
            drop_schemas_of_finished_runs(&mut c);
            c.batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {name}; COMMENT ON SCHEMA {name} IS 'switchboard test pid {}'",
                std::process::id()
            ))
            .unwrap();
        });
        let base = test_pg();
        let sep = if base.contains('?') { '&' } else { '?' };
        PgSchema {
            name: name.to_string(),
            url: format!("{base}{sep}options=-csearch_path%3D{name}"),
        }
    }

    /// A fresh schema, dropped with this value.
    pub fn fresh() -> PgSchema {
        use rand::Rng;
        let n: u64 = rand::rng().random();
        PgSchema::named(&format!("sbt_{n:016x}"))
    }

    pub fn drop_now(&self) {
        off_runtime(|| {
            if let Ok(mut c) = postgres::Client::connect(&test_pg(), postgres::NoTls) {
                let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
            }
        });
    }
}

/// The blocking PostgreSQL client runs a runtime of its own: never on a
/// test's runtime thread.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join().unwrap())
}

/// Drop test schemas whose test process has ended (a schema that lives as
/// long as a data dir cannot be dropped by a value: hubs restart on it).
fn drop_schemas_of_finished_runs(c: &mut postgres::Client) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let rows = c
            .query(
                "SELECT nspname, obj_description(oid, 'pg_namespace') FROM pg_namespace
                 WHERE nspname LIKE 'sbt\\_%'",
                &[],
            )
            .unwrap_or_default();
        for r in rows {
            let (name, comment): (String, Option<String>) = (r.get(0), r.get(1));
            let pid = comment
                .as_deref()
                .and_then(|c| c.strip_prefix("switchboard test pid "))
                .and_then(|p| p.parse::<u32>().ok());
            let gone = pid.is_none_or(|p| !Path::new(&format!("/proc/{p}")).exists());
            if gone {
                let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"));
            }
        }
    });
}

/// `--store` for a hub: with `SWITCHBOARD_TEST_STORE=postgres` every hub
/// of the suite runs on PostgreSQL, in a schema named after its data dir
/// (so a restarted hub finds its store again, as with sled); unset, sled.
fn store_for(opts: &HubOptions, data: &Path) -> Option<String> {
    if opts.args.iter().any(|a| a == "--store") {
        return None;
    }
    test_store(data)
}

/// The PostgreSQL store a hub on `data` runs on under
/// `SWITCHBOARD_TEST_STORE=postgres` (for commands beside it); else `None`.
pub fn test_store(data: &Path) -> Option<String> {
    if std::env::var("SWITCHBOARD_TEST_STORE").as_deref() != Ok("postgres") {
        return None;
    }
    use sha2::Digest;
    let h = hex::encode(&Sha256::digest(data.to_string_lossy().as_bytes())[..8]);
    Some(PgSchema::named(&format!("sbt_{h}")).url)
}

/// How to start a hub.
#[derive(Clone)]
pub struct HubOptions {
    pub connectors: PathBuf,
    pub recipes: PathBuf,
    /// Extra environment (base URLs, secrets); `test_secrets()` are always set
    /// unless overridden here.
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
    pub data: Option<PathBuf>,
    /// Pass `--allow-internal *` so connectors may call the mocks on 127.0.0.1.
    pub allow_internal: bool,
    /// Start the hub with this open-file limit (through `prlimit`).
    pub nofile: Option<u64>,
    /// Write the hub's stderr (its logs) to this file instead of the test's.
    pub log_file: Option<PathBuf>,
}

impl Default for HubOptions {
    fn default() -> Self {
        HubOptions {
            connectors: repo().join("connectors"),
            recipes: repo().join("recipes"),
            env: Vec::new(),
            args: Vec::new(),
            data: None,
            allow_internal: true,
            nofile: None,
            log_file: None,
        }
    }
}

impl HubOptions {
    /// Point a connector at a mock.
    pub fn base_url(mut self, connector: &str, url: &str) -> Self {
        self.env.push((
            format!("SWITCHBOARD_BASE_URL_{}", connector.to_uppercase()),
            url.to_string(),
        ));
        self
    }
}

/// A running hub process; killed on drop.
pub struct Hub {
    pub child: Child,
    pub url: String,
    pub data: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub token: String,
    pub http: reqwest::Client,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_switchboard")
}

impl Hub {
    pub async fn start(opts: HubOptions) -> Hub {
        let (tmp, data) = match &opts.data {
            Some(d) => (None, d.clone()),
            None => {
                let t = tempfile::tempdir().unwrap();
                let d = t.path().join("data");
                (Some(t), d)
            }
        };
        let token = "test-admin-token".to_string();
        let store = store_for(&opts, &data);
        let mut cmd = match opts.nofile {
            None => Command::new(bin()),
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("--").arg(bin());
                c
            }
        };
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data")
            .arg(&data)
            .arg("--connectors")
            .arg(&opts.connectors)
            .arg("--recipes")
            .arg(&opts.recipes)
            .args(if opts.allow_internal {
                &["--allow-internal", "*"][..]
            } else {
                &[]
            })
            .args(&opts.args)
            .args(store.iter().flat_map(|url| ["--store", url.as_str()]))
            .env_remove("SWITCHBOARD_ALLOW_INTERNAL")
            .env_remove("SWITCHBOARD_STORE")
            .env("SWITCHBOARD_ADMIN_TOKEN", &token)
            .env(
                "SWITCHBOARD_LOG",
                std::env::var("SWITCHBOARD_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(match &opts.log_file {
                Some(f) => Stdio::from(std::fs::File::create(f).unwrap()),
                None => Stdio::inherit(),
            });
        for (k, v) in test_secrets().into_iter().chain(opts.env.clone()) {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start switchboard");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(u) = line.strip_prefix("switchboard listening on ") {
                    let _ = tx.send(u.to_string());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("hub printed its address");
        let hub = Hub {
            child,
            url,
            data,
            _tmp: tmp,
            token,
            http: reqwest::Client::new(),
        };
        hub.wait_healthy().await;
        hub
    }

    async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.http.get(format!("{}/healthz", self.url)).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "hub did not become healthy");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// POST a webhook; returns status and JSON body (Null if not JSON).
    pub async fn post(
        &self,
        connector: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> (u16, Value) {
        let resp = self.send(connector, headers, body).await;
        let status = resp.status().as_u16();
        let body = resp.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// POST a webhook; the whole answer.
    pub async fn send(
        &self,
        connector: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> reqwest::Response {
        let mut req = self
            .http
            .post(format!("{}/hooks/{connector}", self.url))
            .body(body.to_vec());
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        req.send().await.expect("post webhook")
    }

    /// POST a Zendesk-signed JSON webhook.
    pub async fn post_zendesk(&self, body: &Value) -> (u16, Value) {
        let raw = serde_json::to_vec(body).unwrap();
        self.post(
            "zendesk",
            &zendesk_headers(&raw, ZENDESK_WEBHOOK_SECRET),
            &raw,
        )
        .await
    }

    /// GET an admin API path with the token.
    pub async fn api(&self, path: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("admin api");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Poll a run until it is finished (succeeded / failed / dead / skipped / cancelled).
    pub async fn wait_run(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, run) = self.api(&format!("/api/runs/{id}")).await;
            if matches!(
                run["status"].as_str(),
                Some("succeeded" | "failed" | "dead" | "skipped" | "cancelled")
            ) {
                return run;
            }
            assert!(Instant::now() < deadline, "run {id} did not finish: {run}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Run the CLI against this hub's data dir (through its admin API).
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin())
            .args(args)
            .arg("--data")
            .arg(&self.data)
            .arg("--url")
            .arg(&self.url)
            .env("SWITCHBOARD_ADMIN_TOKEN", &self.token)
            .output()
            .unwrap()
    }

    /// `switchboard demo send` to this hub, with the test secrets.
    pub fn demo_send(&self) -> std::process::Output {
        Command::new(bin())
            .args(["demo", "send", "--url", &self.url, "--data"])
            .arg(&self.data)
            .envs(test_secrets())
            .env("SWITCHBOARD_ADMIN_TOKEN", &self.token)
            .output()
            .unwrap()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.kill();
    }
}

fn hmac_b64(secret: &str, parts: &[&[u8]]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    for p in parts {
        mac.update(p);
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Headers Zendesk sends: base64 HMAC-SHA256 of timestamp + body.
pub fn zendesk_headers(body: &[u8], secret: &str) -> Vec<(String, String)> {
    let ts = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    zendesk_headers_at(body, secret, &ts)
}

pub fn zendesk_headers_at(body: &[u8], secret: &str, ts: &str) -> Vec<(String, String)> {
    vec![
        ("Content-Type".into(), "application/json".into()),
        (
            "X-Zendesk-Webhook-Signature".into(),
            hmac_b64(secret, &[ts.as_bytes(), body]),
        ),
        ("X-Zendesk-Webhook-Signature-Timestamp".into(), ts.into()),
        (
            "X-Zendesk-Webhook-Invocation-Id".into(),
            format!("inv-{}", rand::random::<u64>()),
        ),
    ]
}

/// Headers Slack sends with a form `body`: `v0=` and the hex HMAC-SHA256
/// of `v0:{timestamp}:{body}`.
pub fn slack_headers(body: &str, secret: &str) -> Vec<(String, String)> {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let sig = hmac_hex(secret, format!("v0:{ts}:{body}").as_bytes());
    vec![
        (
            "Content-Type".into(),
            "application/x-www-form-urlencoded".into(),
        ),
        ("X-Slack-Request-Timestamp".into(), ts),
        ("X-Slack-Signature".into(), format!("v0={sig}")),
    ]
}

/// A new-ticket event as the documented Zendesk trigger payload sends it.
pub fn ticket_event(id: u64, subject: &str, email: &str) -> Value {
    json!({
        "type": "ticket.created",
        "ticket": {
            "id": id,
            "subject": subject,
            "description": "Hi, I never got the e-mail.",
            "requester": {"email": email, "name": "Bob Smith"},
            "priority": "normal",
            "locale": "en-US"
        }
    })
}

/// One request a mock received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A scripted answer: the first route whose method and path prefix match answers.
#[derive(Clone)]
pub struct Route {
    pub method: Method,
    pub path_prefix: String,
    pub status: u16,
    pub body: Value,
    /// Wait this long before answering (for timeouts).
    pub delay: Duration,
    /// Answer only once this is notified (one permit per request): the test
    /// decides when a call in flight returns.
    pub hold: Option<Arc<tokio::sync::Notify>>,
}

pub fn route(method: Method, path_prefix: &str, status: u16, body: Value) -> Route {
    Route {
        method,
        path_prefix: path_prefix.to_string(),
        status,
        body,
        delay: Duration::ZERO,
        hold: None,
    }
}

#[derive(Default)]
struct MockInner {
    routes: Vec<Route>,
    received: Vec<Received>,
}

/// An in-process fake of a far-end API on 127.0.0.1.
#[derive(Clone)]
pub struct MockApi {
    inner: Arc<Mutex<MockInner>>,
    pub url: String,
}

impl MockApi {
    pub async fn start(routes: Vec<Route>) -> MockApi {
        let inner = Arc::new(Mutex::new(MockInner {
            routes,
            received: Vec::new(),
        }));
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        MockApi { inner, url }
    }

    /// Answer from now on with `routes` instead.
    pub fn set_routes(&self, routes: Vec<Route>) {
        self.inner.lock().unwrap().routes = routes;
    }

    pub fn received(&self) -> Vec<Received> {
        self.inner.lock().unwrap().received.clone()
    }

    /// Requests whose path starts with `prefix`.
    pub fn calls(&self, prefix: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.path.starts_with(prefix))
            .collect()
    }
}

async fn handle(
    State(inner): State<Arc<Mutex<MockInner>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let route = {
        let mut g = inner.lock().unwrap();
        g.received.push(Received {
            method: method.to_string(),
            path: uri.path().to_string(),
            query: uri.query().map(str::to_string),
            headers,
            body,
        });
        g.routes
            .iter()
            .find(|r| r.method == method && uri.path().starts_with(&r.path_prefix))
            .cloned()
    };
    match route {
        Some(r) => {
            if !r.delay.is_zero() {
                tokio::time::sleep(r.delay).await;
            }
            if let Some(hold) = &r.hold {
                hold.notified().await;
            }
            (StatusCode::from_u16(r.status).unwrap(), axum::Json(r.body)).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": "no route"})),
        )
            .into_response(),
    }
}

/// Write a file, creating its directory.
pub fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// Copy the files of `from` (not recursive) into `to`, creating it.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
}

/// A temporary copy of the shipped connectors/ and recipes/, to break or extend.
pub struct Config {
    pub dir: tempfile::TempDir,
    pub connectors: PathBuf,
    pub recipes: PathBuf,
}

impl Config {
    /// Copies of the shipped connectors and recipes.
    pub fn shipped() -> Config {
        let c = Config::connectors_only();
        copy_dir(&repo().join("recipes"), &c.recipes);
        c
    }

    /// Copies of the shipped connectors and an empty recipes dir.
    pub fn connectors_only() -> Config {
        let dir = tempfile::tempdir().unwrap();
        let connectors = dir.path().join("connectors");
        let recipes = dir.path().join("recipes");
        copy_dir(&repo().join("connectors"), &connectors);
        std::fs::create_dir_all(&recipes).unwrap();
        Config {
            dir,
            connectors,
            recipes,
        }
    }

    pub fn connector(&self, name: &str, yaml: &str) -> PathBuf {
        let p = self.connectors.join(format!("{name}.yaml"));
        write(&p, yaml);
        p
    }

    pub fn recipe(&self, name: &str, yaml: &str) -> PathBuf {
        let p = self.recipes.join(format!("{name}.yaml"));
        write(&p, yaml);
        p
    }

    /// Hub options serving these files.
    pub fn options(&self) -> HubOptions {
        HubOptions {
            connectors: self.connectors.clone(),
            recipes: self.recipes.clone(),
            ..HubOptions::default()
        }
    }

    /// `switchboard <sub> --connectors .. --recipes .. --data <tmp>` with the test secrets.
    pub fn command(&self, sub: &str) -> Command {
        let mut cmd = command(&[sub]);
        cmd.arg("--data")
            .arg(self.dir.path().join("data"))
            .arg("--connectors")
            .arg(&self.connectors)
            .arg("--recipes")
            .arg(&self.recipes);
        cmd
    }

    /// `switchboard check` on these files.
    pub fn check(&self) -> std::process::Output {
        self.command("check").output().unwrap()
    }
}

/// The binary with `args`, the test secrets set and no other SWITCHBOARD_ settings inherited.
pub fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("SWITCHBOARD_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("SWITCHBOARD_LOG", "warn");
    for (k, v) in test_secrets() {
        cmd.env(k, v);
    }
    cmd
}

/// Run `cmd` to its end, killing it if it runs longer than `limit`.
pub fn output_within(mut cmd: Command, limit: Duration) -> std::process::Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{cmd:?} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

pub fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Hex HMAC-SHA256, as the generic `hmac` scheme checks by default.
pub fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The one run an accepted webhook started.
pub fn only_run(accepted: &Value) -> String {
    let runs = accepted["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 1, "{accepted}");
    runs[0].as_str().expect("run id").to_string()
}

impl Hub {
    /// Poll run `id` until its status is `status` (20 s deadline).
    pub async fn wait_status(&self, id: &str, status: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, run) = self.api(&format!("/api/runs/{id}")).await;
            if run["status"] == status {
                return run;
            }
            assert!(Instant::now() < deadline, "run {id} is not {status}: {run}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The `items` of an admin API listing.
    pub async fn items(&self, path: &str) -> Vec<Value> {
        let (status, page) = self.api(path).await;
        assert_eq!(status, 200, "{path}: {page}");
        page["items"].as_array().cloned().unwrap_or_default()
    }

    /// The runs started for an event, each waited for until it finished.
    pub async fn finished_runs(&self, event_id: &str) -> Vec<Value> {
        let (status, event) = self.api(&format!("/api/events/{event_id}")).await;
        assert_eq!(status, 200, "{event}");
        let mut runs = Vec::new();
        for r in event["runs"].as_array().cloned().unwrap_or_default() {
            runs.push(self.wait_run(r["id"].as_str().unwrap()).await);
        }
        runs
    }
}

/// A mock that answers 404 to everything, used as every shipped connector's
/// base URL so a call that should not happen is recorded.
pub async fn quiet_hub(mut opts: HubOptions) -> (Hub, MockApi) {
    let mock = MockApi::start(Vec::new()).await;
    for name in [
        "hubspot",
        "zendesk",
        "deepl",
        "slack",
        "freshdesk",
        "stripe",
        "sendgrid",
        "google_translate",
        "slack_commands",
    ] {
        let var = format!("SWITCHBOARD_BASE_URL_{}", name.to_uppercase());
        if !opts.env.iter().any(|(k, _)| *k == var) {
            opts = opts.base_url(name, &mock.url);
        }
    }
    (Hub::start(opts).await, mock)
}
