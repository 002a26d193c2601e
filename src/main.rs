//! The `switchboard` command: parse arguments, set up logging, call the library.

use clap::{Args, Parser, Subcommand};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use switchboard::engine::{dry_run, Catalog};
use switchboard::server::{self, ServeConfig, ServeError};
use switchboard::store::{sled::SledStore, Page, Retried, RunFilter, Store};

#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Self-hosted integration hub for support operations"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Dirs {
    /// Data directory: the embedded store, the admin token, `secrets.yaml`.
    #[arg(long, env = "SWITCHBOARD_DATA", default_value = "data")]
    data: PathBuf,
    /// Connector files.
    #[arg(long, env = "SWITCHBOARD_CONNECTORS", default_value = "connectors")]
    connectors: PathBuf,
    /// Recipe files.
    #[arg(long, env = "SWITCHBOARD_RECIPES", default_value = "recipes")]
    recipes: PathBuf,
    /// Secrets file (default: <data>/secrets.yaml). Environment variables
    /// SWITCHBOARD_SECRET_<CONNECTOR>_<NAME> take precedence.
    #[arg(long, env = "SWITCHBOARD_SECRETS")]
    secrets: Option<PathBuf>,
    /// Connectors allowed to call loopback/private addresses (`*` for all), e.g. for local mocks.
    #[arg(
        long = "allow-internal",
        env = "SWITCHBOARD_ALLOW_INTERNAL",
        value_delimiter = ','
    )]
    allow_internal: Vec<String>,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    dirs: Dirs,
    #[arg(long, env = "SWITCHBOARD_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,
    /// Largest webhook body in bytes.
    #[arg(long, env = "SWITCHBOARD_BODY_LIMIT", default_value_t = 1024 * 1024)]
    body_limit: usize,
    /// Concurrent run executors.
    #[arg(long, env = "SWITCHBOARD_WORKERS", default_value_t = 16)]
    workers: usize,
    /// Public base URL senders use (for schemes that sign the URL, e.g. HubSpot v3).
    #[arg(long, env = "SWITCHBOARD_PUBLIC_URL")]
    public_url: Option<String>,
    /// Seconds in-flight steps may take to finish after SIGTERM/SIGINT.
    #[arg(long, default_value_t = 10)]
    shutdown_grace: u64,
    /// Run-queue depth above which /readyz answers 503 (webhooks are still accepted).
    #[arg(long, env = "SWITCHBOARD_MAX_QUEUE", default_value_t = 10_000)]
    max_queue: usize,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub.
    Serve(ServeArgs),
    /// Validate every connector and recipe; exit status 1 on any error.
    Check {
        #[command(flatten)]
        dirs: Dirs,
    },
    /// Run the recipes' `tests:` with mocked connectors; exit status 1 if any fails.
    ///
    /// No call leaves the process, so no secret is needed: a secret that is
    /// not set is replaced by a placeholder.
    Test(TestArgs),
    /// Inspect runs.
    Runs {
        #[command(subcommand)]
        cmd: ListShow,
    },
    /// Inspect events.
    Events {
        #[command(subcommand)]
        cmd: ListShow,
    },
    /// Inspect and edit recipe state (values, window counters, rotations).
    State {
        #[command(subcommand)]
        cmd: StateCmd,
    },
}

#[derive(Subcommand)]
enum StateCmd {
    /// Live entries, ordered by kind, namespace and key.
    List {
        /// Only this namespace (a recipe's name unless its steps name another).
        #[arg(long)]
        namespace: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Only after this cursor (the `next` of a previous page).
        #[arg(long)]
        after: Option<String>,
        #[command(flatten)]
        src: Source,
    },
    /// Every entry of one key.
    Get {
        namespace: String,
        key: String,
        #[command(flatten)]
        src: Source,
    },
    /// Write a value: JSON (`3`, `true`, `{"a": 1}`), anything else is a string.
    Set {
        namespace: String,
        key: String,
        value: String,
        /// Expire after this long (`30s`, `1h`, `7d`).
        #[arg(long)]
        ttl: Option<String>,
        #[command(flatten)]
        src: Source,
    },
    /// Remove a key (its value, window counter and rotation).
    Delete {
        namespace: String,
        key: String,
        #[command(flatten)]
        src: Source,
    },
}

#[derive(Args)]
struct TestArgs {
    /// (`--allow-internal` has no effect here: nothing is sent.)
    #[command(flatten)]
    dirs: Dirs,
    /// Recipes to test (default: all).
    #[arg(value_name = "NAME")]
    names: Vec<String>,
}

#[derive(Subcommand)]
enum ListShow {
    /// Newest first.
    List {
        #[command(flatten)]
        src: Source,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Only older than this id (the `next` cursor of a previous page).
        #[arg(long)]
        before: Option<String>,
        /// Runs only: queued, running, succeeded, failed.
        #[arg(long)]
        status: Option<String>,
        /// Runs only: recipe name.
        #[arg(long)]
        recipe: Option<String>,
    },
    Show {
        id: String,
        #[command(flatten)]
        src: Source,
    },
    /// Runs only: put a failed or dead run back in the queue (`retry ID`), or
    /// every failed one of a recipe (`retry --recipe NAME --failed`). It
    /// resumes at the failed step; completed steps are not repeated.
    Retry {
        id: Option<String>,
        #[arg(long, requires = "failed", conflicts_with = "id")]
        recipe: Option<String>,
        /// With --recipe: all failed and dead runs of it.
        #[arg(long, requires = "recipe")]
        failed: bool,
        #[command(flatten)]
        src: Source,
    },
}

#[derive(Args)]
struct Source {
    #[arg(long, env = "SWITCHBOARD_DATA", default_value = "data")]
    data: PathBuf,
    /// Admin API of a running hub; used when the store is held by it.
    #[arg(long, env = "SWITCHBOARD_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    #[arg(long, env = "SWITCHBOARD_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SWITCHBOARD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Check { dirs } => check(dirs),
            Command::Test(args) => test(args),
            Command::Runs { cmd } => inspect("runs", cmd).await,
            Command::Events { cmd } => inspect("events", cmd).await,
            Command::State { cmd } => state(cmd).await,
        }
    })
}

fn serve_config(dirs: Dirs) -> ServeConfig {
    ServeConfig {
        data_dir: dirs.data,
        connectors_dir: dirs.connectors,
        recipes_dir: dirs.recipes,
        secrets_file: dirs.secrets,
        body_limit: 1024 * 1024,
        workers: 16,
        admin_token: std::env::var("SWITCHBOARD_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()),
        allow_internal: dirs.allow_internal,
        public_url: None,
        shutdown_grace: Duration::from_secs(10),
        max_queue: 10_000,
    }
}

async fn serve(args: ServeArgs) -> ExitCode {
    let listen = args.listen.clone();
    let config = ServeConfig {
        body_limit: args.body_limit,
        workers: args.workers,
        public_url: args.public_url,
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
        max_queue: args.max_queue,
        ..serve_config(args.dirs)
    };
    let started = async {
        // Check everything before taking the port.
        let prepared = server::prepare(config)?;
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .map_err(|e| ServeError::Setup(format!("cannot listen on {listen}: {e}")))?;
        if let Ok(addr) = listener.local_addr() {
            // A stable line for scripts and tests that start the hub on port 0.
            println!("switchboard listening on http://{addr}");
        }
        prepared.serve(listener, shutdown_signal()).await
    };
    match started.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(ServeError::Load(errors)) => {
            for e in &errors {
                eprintln!("{e}");
            }
            eprintln!(
                "error: {} problem(s) in connectors/recipes; not starting",
                errors.len()
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}

fn check(dirs: Dirs) -> ExitCode {
    let config = serve_config(dirs);
    let opts = match config.load_options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    match Catalog::load(&opts) {
        Ok(catalog) => {
            for w in &catalog.warnings {
                eprintln!("{w}");
            }
            println!(
                "ok: {} connector(s), {} recipe(s)",
                catalog.connectors.by_name.len(),
                catalog.recipes.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            eprintln!("error: {} problem(s) found", errors.len());
            ExitCode::FAILURE
        }
    }
}

fn test(args: TestArgs) -> ExitCode {
    let config = serve_config(args.dirs);
    let mut opts = match config.load_options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    // Nothing is sent, so connectors load without their credentials.
    opts.secrets = opts.secrets.with_placeholders();
    let catalog = match Catalog::load(&opts) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            eprintln!("error: {} problem(s) found", errors.len());
            return ExitCode::FAILURE;
        }
    };
    for w in &catalog.warnings {
        eprintln!("{w}");
    }
    if let Some(n) = args
        .names
        .iter()
        .find(|n| catalog.recipe(n.as_str()).is_none())
    {
        eprintln!("error: no recipe named `{n}`");
        return ExitCode::FAILURE;
    }
    let mut recipes: Vec<_> = catalog
        .recipes
        .iter()
        .filter(|r| args.names.is_empty() || args.names.contains(&r.name))
        .collect();
    recipes.sort_by(|a, b| a.name.cmp(&b.name));
    let (mut passed, mut failed) = (0, 0);
    let mut untested = Vec::new();
    for r in &recipes {
        if r.tests.is_empty() {
            untested.push(r.name.as_str());
        }
        for t in &r.tests {
            let diffs = dry_run::run_test(&catalog, r, t);
            if diffs.is_empty() {
                passed += 1;
                println!("ok   {} › {}", r.name, t.name);
            } else {
                failed += 1;
                println!("FAIL {} › {}", r.name, t.name);
                for d in diffs {
                    println!("     {}", d.replace('\n', "\n     "));
                }
            }
        }
    }
    println!();
    if !untested.is_empty() {
        println!("no tests: {}", untested.join(", "));
    }
    println!(
        "{passed} passed, {failed} failed ({} recipe(s))",
        recipes.len()
    );
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Read from the store directly when no hub holds it; otherwise through the admin API.
async fn inspect(kind: &str, cmd: ListShow) -> ExitCode {
    let (src, path, query) = match &cmd {
        ListShow::List {
            src,
            limit,
            before,
            status,
            recipe,
        } => {
            let mut q = vec![("limit", limit.to_string())];
            q.extend(before.clone().map(|b| ("before", b)));
            q.extend(status.clone().map(|s| ("status", s)));
            q.extend(recipe.clone().map(|r| ("recipe", r)));
            (src, format!("/api/{kind}"), q)
        }
        ListShow::Show { id, src } => (src, format!("/api/{kind}/{id}"), vec![]),
        ListShow::Retry {
            id, recipe, src, ..
        } => {
            if kind != "runs" {
                eprintln!("error: only runs can be retried");
                return ExitCode::FAILURE;
            }
            match (id, recipe) {
                (Some(id), _) => (src, format!("/api/runs/{id}/retry"), vec![]),
                (None, Some(r)) => (
                    src,
                    "/api/runs/retry".to_string(),
                    vec![("recipe", r.clone())],
                ),
                (None, None) => {
                    eprintln!("error: give a run id, or --recipe NAME --failed");
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    let result = match open_store(&src.data) {
        Some(store) => from_store(&*store, kind, &cmd),
        None => from_api(src, &path, &query, matches!(cmd, ListShow::Retry { .. })).await,
    };
    match result {
        Ok(v) => {
            if src.json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                match cmd {
                    ListShow::Retry { .. } => {
                        let ids = v["retried"].as_array().cloned().unwrap_or_default();
                        println!("{} run(s) queued again", ids.len());
                        for id in ids {
                            println!("{}", s(&id));
                        }
                    }
                    _ => print!("{}", render(kind, &v, matches!(cmd, ListShow::List { .. }))),
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn open_store(data: &Path) -> Option<Box<dyn Store>> {
    let dir = data.join("store");
    if !dir.exists() {
        return None;
    }
    SledStore::open(&dir)
        .ok()
        .map(|s| Box::new(s) as Box<dyn Store>)
}

fn from_store(store: &dyn Store, kind: &str, cmd: &ListShow) -> Result<Value, String> {
    let e = |e: switchboard::store::StoreError| e.to_string();
    let now = switchboard::store::now_ms();
    match (kind, cmd) {
        (_, ListShow::Retry { id: Some(id), .. }) => match store.retry_run(id, now).map_err(e)? {
            Retried::Queued(run) => Ok(serde_json::json!({"retried": [run.id]})),
            Retried::NotFound => Err(format!("no run {id}")),
            Retried::NotFailed(st) => Err(format!(
                "run {id} is {}; only failed or dead runs can be retried",
                serde_json::to_value(st).unwrap_or_default()
            )),
        },
        (
            _,
            ListShow::Retry {
                recipe: Some(r), ..
            },
        ) => {
            let ids = switchboard::store::retry_failed(store, r, now).map_err(e)?;
            Ok(serde_json::json!({"retried": ids}))
        }
        (
            "runs",
            ListShow::List {
                limit,
                before,
                status,
                recipe,
                ..
            },
        ) => {
            let filter = RunFilter {
                status: status
                    .as_deref()
                    .map(switchboard::admin::parse_status)
                    .transpose()
                    .map_err(|e| e.to_string())?,
                recipe: recipe.clone(),
                failures: false,
            };
            let page = Page {
                limit: *limit,
                before: before.clone(),
            };
            Ok(serde_json::json!({"items": store.runs(&page, &filter).map_err(e)?}))
        }
        ("events", ListShow::List { limit, before, .. }) => {
            let page = Page {
                limit: *limit,
                before: before.clone(),
            };
            Ok(serde_json::json!({"items": store.events(&page).map_err(e)?}))
        }
        ("runs", ListShow::Show { id, .. }) => store
            .run(id)
            .map_err(e)?
            .map(|r| serde_json::to_value(r).unwrap_or_default())
            .ok_or_else(|| format!("no run {id}")),
        (_, ListShow::Show { id, .. }) => {
            let ev = store
                .event(id)
                .map_err(e)?
                .ok_or_else(|| format!("no event {id}"))?;
            let runs: Vec<Value> = ev
                .runs
                .iter()
                .filter_map(|r| store.run(r).ok().flatten())
                .map(|r| serde_json::json!({"id": r.id, "recipe": r.recipe, "status": r.status, "error": r.error}))
                .collect();
            let mut v = serde_json::to_value(&ev).unwrap_or_default();
            v["runs"] = Value::Array(runs);
            Ok(v)
        }
        _ => Err("unknown listing".into()),
    }
}

fn admin_token(src: &Source) -> Result<String, String> {
    match &src.token {
        Some(t) => Ok(t.clone()),
        None => std::fs::read_to_string(server::token_path(&src.data))
            .map(|t| t.trim().to_string())
            .map_err(|_| {
                format!(
                    "the store in {} is in use and no admin token was given (--token or SWITCHBOARD_ADMIN_TOKEN)",
                    src.data.display()
                )
            }),
    }
}

async fn from_api(
    src: &Source,
    path: &str,
    query: &[(&str, String)],
    post: bool,
) -> Result<Value, String> {
    let url = format!("{}{path}", src.url.trim_end_matches('/'));
    let client = reqwest::Client::new();
    let req = if post {
        client.post(url)
    } else {
        client.get(url)
    };
    send(src, req.query(query)).await
}

/// Send an admin API request; the JSON answer, or its message.
async fn send(src: &Source, req: reqwest::RequestBuilder) -> Result<Value, String> {
    let resp = req
        .bearer_auth(admin_token(src)?)
        .send()
        .await
        .map_err(|e| format!("cannot reach the hub at {}: {e}", src.url))?;
    let status = resp.status();
    let body: Value = resp.json().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(body["message"]
            .as_str()
            .unwrap_or("request failed")
            .to_string());
    }
    Ok(body)
}

/// `switchboard state …`: on the store directly when no hub holds it, else
/// through the admin API; both run the same queries (`admin::state`).
async fn state(cmd: StateCmd) -> ExitCode {
    use switchboard::admin::state as q;
    let now = switchboard::store::now_ms();
    let (src, ns_key) = match &cmd {
        StateCmd::List { src, .. } => (src, None),
        StateCmd::Get {
            src,
            namespace,
            key,
        }
        | StateCmd::Set {
            src,
            namespace,
            key,
            ..
        }
        | StateCmd::Delete {
            src,
            namespace,
            key,
        } => (src, Some((namespace, key))),
    };
    let result: Result<Value, String> = match open_store(&src.data) {
        Some(store) => {
            let store = &*store;
            let r = match &cmd {
                StateCmd::List {
                    namespace,
                    limit,
                    after,
                    ..
                } => q::list(store, namespace.as_deref(), after.as_deref(), *limit, now)
                    .map(|p| serde_json::to_value(p).unwrap_or_default()),
                StateCmd::Get { namespace, key, .. } => q::show(store, namespace, key, now)
                    .map(|items| serde_json::json!({ "items": items })),
                StateCmd::Set {
                    namespace,
                    key,
                    value,
                    ttl,
                    ..
                } => ttl
                    .as_deref()
                    .map(q::parse_ttl)
                    .transpose()
                    .and_then(|ttl| q::set(store, namespace, key, cli_value(value), ttl, now))
                    .map(|items| serde_json::json!({ "items": items })),
                StateCmd::Delete { namespace, key, .. } => q::delete(store, namespace, key, now)
                    .and_then(|deleted| {
                        if deleted {
                            Ok(serde_json::json!({ "deleted": true }))
                        } else {
                            Err(q::QueryError::NotFound(format!(
                                "no state `{key}` in namespace `{namespace}`"
                            )))
                        }
                    }),
            };
            let flushed = store.flush().map_err(|e| e.to_string());
            r.map_err(|e| e.to_string())
                .and_then(|v| flushed.map(|_| v))
        }
        None => {
            let mut url = match reqwest::Url::parse(&src.url) {
                Ok(u) => u,
                Err(e) => {
                    eprintln!("error: --url {}: {e}", src.url);
                    return ExitCode::FAILURE;
                }
            };
            if let Ok(mut segs) = url.path_segments_mut() {
                segs.pop_if_empty().extend(["api", "state"]);
                if let Some((ns, key)) = ns_key {
                    // Each one segment, percent-encoded (a key may hold `/`).
                    segs.extend([ns.as_str(), key.as_str()]);
                }
            }
            let client = reqwest::Client::new();
            let req = match &cmd {
                StateCmd::List {
                    namespace,
                    limit,
                    after,
                    ..
                } => {
                    let mut query = vec![("limit", limit.to_string())];
                    query.extend(namespace.clone().map(|n| ("namespace", n)));
                    query.extend(after.clone().map(|a| ("after", a)));
                    client.get(url).query(&query)
                }
                StateCmd::Get { .. } => client.get(url),
                StateCmd::Set { value, ttl, .. } => client
                    .put(url)
                    .json(&serde_json::json!({ "value": cli_value(value), "ttl": ttl })),
                StateCmd::Delete { .. } => client.delete(url),
            };
            send(src, req).await
        }
    };
    match result {
        Ok(v) if src.json => {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Ok(v) => {
            if v["deleted"] == true {
                println!("deleted");
            }
            let items = v["items"].as_array().cloned().unwrap_or_default();
            for e in &items {
                let mut line = format!(
                    "{:<9} {}  {}  {}",
                    s(&e["kind"]),
                    s(&e["namespace"]),
                    s(&e["key"]),
                    e["value"]
                );
                if let Some(w) = e["window_ms"].as_u64() {
                    line += &format!(
                        "  (in the last {})",
                        humantime::format_duration(Duration::from_millis(w))
                    );
                }
                if e["expires_at"].is_i64() {
                    line += &format!("  expires {}", time(&e["expires_at"]));
                }
                println!("{line}");
            }
            if matches!(cmd, StateCmd::List { .. }) {
                if items.is_empty() {
                    println!("no state");
                }
                if let Some(next) = v["next"].as_str() {
                    println!("more: --after {next}");
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A value given on the command line: JSON if it parses, else the text.
fn cli_value(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

fn time(ms: &Value) -> String {
    ms.as_i64()
        .and_then(|ms| std::time::UNIX_EPOCH.checked_add(Duration::from_millis(ms as u64)))
        .map(|t| humantime::format_rfc3339_millis(t).to_string())
        .unwrap_or_default()
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Text for people; `--json` gives the full records.
fn render(kind: &str, v: &Value, list: bool) -> String {
    let mut out = String::new();
    if list {
        let items = v["items"].as_array().cloned().unwrap_or_default();
        for i in &items {
            if kind == "runs" {
                out += &format!(
                    "{}  {:<10} {:<28} {}  steps:{}  {}\n",
                    s(&i["id"]),
                    s(&i["status"]),
                    s(&i["recipe"]),
                    time(&i["created_at"]),
                    i["steps"].as_array().map_or(0, Vec::len),
                    i["error"]
                        .as_str()
                        .or(i["pending"]["error"].as_str())
                        .unwrap_or("")
                );
            } else {
                out += &format!(
                    "{}  {:<10} {:<24} {}  runs:{}\n",
                    s(&i["id"]),
                    s(&i["connector"]),
                    s(&i["event_type"]),
                    time(&i["received_at"]),
                    i["runs"].as_array().map_or(0, Vec::len)
                );
            }
        }
        if items.is_empty() {
            out += &format!("no {kind}\n");
        }
        return out;
    }
    let pretty = |v: &Value| {
        serde_json::to_string_pretty(v)
            .unwrap_or_default()
            .replace('\n', "\n      ")
    };
    if kind == "runs" {
        out += &format!(
            "run     {}\nrecipe  {}\nevent   {}\nstatus  {}\ncreated {}\n",
            s(&v["id"]),
            s(&v["recipe"]),
            s(&v["event_id"]),
            s(&v["status"]),
            time(&v["created_at"])
        );
        if let Some(e) = v["error"].as_str() {
            out += &format!("error   {e}\n");
        }
        if v["status"] == "retrying" {
            out += &format!("next    {}\n", time(&v["due_at"]));
        }
        let mut steps = v["steps"].as_array().cloned().unwrap_or_default();
        steps.extend(v.get("pending").cloned());
        for (n, st) in steps.iter().enumerate() {
            out += &format!(
                "\n{}. {} ({})  {}  HTTP {}  {} ms  attempts {}\n",
                n + 1,
                s(&st["id"]),
                s(&st["call"]),
                s(&st["status"]),
                s(&st["http_status"]),
                s(&st["duration_ms"]),
                s(&st["attempts"])
            );
            out += &format!("   input:  {}\n", pretty(&st["input"]));
            if let Some(r) = st.get("request") {
                out += &format!("   request: {} {}\n", s(&r["method"]), s(&r["url"]));
            }
            out += &format!("   output: {}\n", pretty(&st["output"]));
            if let Some(e) = st["error"].as_str() {
                out += &format!("   error:  {e}\n");
            }
            let history = st["history"].as_array().cloned().unwrap_or_default();
            if history.len() > 1 {
                for (i, a) in history.iter().enumerate() {
                    out += &format!(
                        "   attempt {}: {}  HTTP {}  {} ms  {}\n",
                        i + 1,
                        time(&a["at"]),
                        s(&a["http_status"]),
                        s(&a["duration_ms"]),
                        a["error"].as_str().unwrap_or("ok")
                    );
                }
            }
        }
    } else {
        out += &format!(
            "event     {}\nconnector {}\ntype      {}\ndelivery  {}\nreceived  {}\n",
            s(&v["id"]),
            s(&v["connector"]),
            s(&v["event_type"]),
            s(&v["delivery_id"]),
            time(&v["received_at"])
        );
        for r in v["runs"].as_array().cloned().unwrap_or_default() {
            out += &format!(
                "run       {}  {}  {}\n",
                s(&r["id"]),
                s(&r["recipe"]),
                s(&r["status"])
            );
        }
        out += &format!("body      {}\n", pretty(&v["body"]));
    }
    out
}
