//! The `switchboard` command: parse arguments, set up logging, call the
//! library, print. Thin by design: serving, checking and testing are library
//! calls; `runs` and `events` ([`inspect`]) and `state` ([`state`]) call the
//! library's admin queries and render their typed answers ([`render`]).

mod alloc;
mod connect;
mod demo;
mod docs;
mod inspect;
mod render;
mod replay;
mod state;
mod store;

use clap::{Args, Parser, Subcommand};
use inspect::{EventsCmd, RunsCmd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use switchboard::engine::{dry_run, Catalog};
use switchboard::server::{self, ServeConfig, ServeError};

/// jemalloc instead of glibc's malloc: less CPU per event for ~2 MiB of
/// idle RSS (ARCHITECTURE.md, "Decisions"); [`alloc`] says what it adds.
#[global_allocator]
static GLOBAL: alloc::Jemalloc = alloc::Jemalloc;

/// jemalloc's options, read by jemalloc itself before `main` from this
/// symbol (`malloc_conf` under the `_rjem_` prefix `tikv-jemalloc-sys`
/// builds with); `_RJEM_MALLOC_CONF` in the environment overrides them.
/// `background_thread:true`: a jemalloc thread hands freed pages back to the
/// system as they age (10 s), also while the hub is idle; without it a page
/// went back only when its arena allocated again, so an idle hub kept
/// whatever it had freed. With sled's 8 MiB cache: peak RSS under W1 71–72
/// instead of 91–92 MiB, no W1 throughput lost (ARCHITECTURE.md,
/// "Decisions"; BENCHMARKS.md, "100,000 waiting runs"). It returns only
/// pages no block uses: the threads' caches of freed blocks are [`alloc`]'s.
/// The name is the one jemalloc links against, hence `export_name`; the
/// value is a pointer to a NUL-terminated string, which `&[u8; N]` is.
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: &[u8; 23] = b"background_thread:true\0";

#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Self-hosted integration hub for support operations"
)]
struct Cli {
    /// Log lines as `text` (no colours unless stderr is a terminal) or `json`
    /// (one object per line, fields at the top level). Level: SWITCHBOARD_LOG.
    #[arg(long, global = true, env = "SWITCHBOARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
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
    /// Where events and runs are stored: a `postgres://user@host/db` URL
    /// (several nodes may share it; migrations are applied at start) or a
    /// directory for the embedded store (default: <data>/store).
    #[arg(long, env = "SWITCHBOARD_STORE", hide_env_values = true)]
    store: Option<String>,
    /// With a `postgres://` store: connections this node's pool holds at
    /// most (it opens 2 more of its own). Keep nodes × (this + 2) below the
    /// database's `max_connections`.
    #[arg(long, env = "SWITCHBOARD_STORE_POOL", default_value_t = ServeConfig::DEFAULT_STORE_POOL as u16,
          value_parser = clap::value_parser!(u16).range(1..))]
    store_pool: u16,
    /// Address and port of the webhooks, the admin API and /metrics (`127.0.0.1:0`: any free port).
    #[arg(long, env = "SWITCHBOARD_LISTEN", default_value = ServeConfig::DEFAULT_LISTEN)]
    listen: String,
    /// Largest webhook body in bytes.
    #[arg(long, env = "SWITCHBOARD_BODY_LIMIT", default_value_t = ServeConfig::DEFAULT_BODY_LIMIT)]
    body_limit: usize,
    /// Concurrent run executors.
    #[arg(long, env = "SWITCHBOARD_WORKERS", default_value_t = ServeConfig::DEFAULT_WORKERS)]
    workers: usize,
    /// Public base URL senders use (for schemes that sign the URL, e.g. HubSpot v3).
    #[arg(long, env = "SWITCHBOARD_PUBLIC_URL")]
    public_url: Option<String>,
    /// Seconds in-flight steps may take to finish after SIGTERM/SIGINT.
    #[arg(long, env = "SWITCHBOARD_SHUTDOWN_GRACE", default_value_t = ServeConfig::DEFAULT_SHUTDOWN_GRACE_SECS)]
    shutdown_grace: u64,
    /// Run-queue depth above which /readyz answers 503 (webhooks are still accepted).
    #[arg(long, env = "SWITCHBOARD_MAX_QUEUE", default_value_t = ServeConfig::DEFAULT_MAX_QUEUE)]
    max_queue: usize,
    /// Delete events, with their finished runs, older than this (`30d`,
    /// `12h`; `off` keeps everything). Unfinished runs and dead letters are
    /// kept, with their events, until they are handled.
    #[arg(long, env = "SWITCHBOARD_RETENTION", default_value = "30d", value_parser = parse_retention)]
    retention: Retention,
    /// Answer webhooks 503 + Retry-After while the run queue is deeper than
    /// --max-queue (off by default: some senders never retry; see README).
    #[arg(long, env = "SWITCHBOARD_BACKPRESSURE")]
    backpressure: bool,
    /// Make the first run of this poll (`CONNECTOR.POLL`) turn every item
    /// it finds into an event, instead of its `first_run:` (repeatable).
    /// A poll that has run before is not changed.
    #[arg(
        long = "backfill",
        env = "SWITCHBOARD_BACKFILL",
        value_delimiter = ',',
        value_name = "CONNECTOR.POLL"
    )]
    backfill: Vec<String>,
    /// With every worker busy, how long a webhook's answer may wait for one
    /// to take its run before the run goes to the queue instead (`0s`:
    /// never wait). Paces senders to the rate runs are done.
    #[arg(long, env = "SWITCHBOARD_HANDOFF_WAIT", default_value = "500ms", value_parser = humantime::parse_duration)]
    handoff_wait: Duration,
    /// A request head must be complete within this of its first byte, e.g.
    /// `10s`.
    #[arg(long, env = "SWITCHBOARD_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_timeout)]
    header_timeout: Duration,
    /// How long a connection may wait for a request (its first, or its next
    /// when kept alive), e.g. `2m`. Keep it above the idle timeout of the senders' HTTP pools and
    /// of any proxy in front (60-90 s are common): a request sent on a
    /// connection as the hub closes it gets no answer.
    #[arg(long, env = "SWITCHBOARD_IDLE_TIMEOUT", default_value = "2m", value_parser = parse_timeout)]
    idle_timeout: Duration,
    /// A request body must arrive within this after its head, e.g. `30s`.
    #[arg(long, env = "SWITCHBOARD_BODY_TIMEOUT", default_value = "30s", value_parser = parse_timeout)]
    body_timeout: Duration,
    /// Connections served at once (default: half the open-file limit, 16 .. 4096).
    #[arg(long, env = "SWITCHBOARD_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Serve /metrics without the admin token (default: the token is needed).
    #[arg(long, env = "SWITCHBOARD_METRICS_PUBLIC")]
    metrics_public: bool,
    /// Offline demo: start built-in stand-ins for the vendor APIs the shipped
    /// connectors call (HubSpot, Zendesk, DeepL, Slack, Freshdesk, Stripe,
    /// SendGrid) on loopback and point those connectors at them (demo
    /// secrets unless --secrets is given). Then try `switchboard demo send`.
    #[arg(long, env = "SWITCHBOARD_DEMO")]
    demo: bool,
    /// How often to look for changed connector and recipe files (e.g. `1s`);
    /// a change that passes `check` is used for new events, one that fails
    /// is logged and the hub keeps the last good files. `off`: reload only
    /// on SIGHUP.
    #[arg(long, env = "SWITCHBOARD_WATCH", default_value = "1s", value_parser = parse_watch)]
    watch: Watch,
}

/// `--watch`: an interval, or `off`.
#[derive(Clone, Copy)]
struct Watch(Option<Duration>);

fn parse_watch(s: &str) -> Result<Watch, String> {
    match s.trim() {
        "off" | "none" => Ok(Watch(None)),
        d => match humantime::parse_duration(d) {
            Ok(d) if !d.is_zero() => Ok(Watch(Some(d))),
            Ok(_) => Err("use `off` to not watch the files".into()),
            Err(e) => Err(format!("{e} (expected e.g. `1s`, or `off`)")),
        },
    }
}

/// A connection timeout: 0 would close every connection before its first
/// request, so it is refused.
fn parse_timeout(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s.trim()) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("a timeout of 0 would close every connection at once".into()),
        Err(e) => Err(format!("{e} (expected e.g. `10s`, `2m`)")),
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub.
    Serve(ServeArgs),
    /// Validate every connector and recipe; exit status 1 on any error.
    Check {
        #[command(flatten)]
        dirs: Dirs,
        /// Check without the real secrets (a recipes repository's CI): a
        /// secret that is not set is replaced by a placeholder, as `test` does.
        #[arg(long)]
        no_secrets: bool,
    },
    /// Run the recipes' `tests:` with mocked connectors; exit status 1 if any fails.
    ///
    /// No call leaves the process, so no secret is needed: a secret that is
    /// not set is replaced by a placeholder.
    Test(TestArgs),
    /// Print the JSON Schema of a file format, for editors
    /// (`# yaml-language-server: $schema=…`) and other tools.
    Schema {
        /// Which files: `recipe` (recipes/NAME.yaml), `shared`
        /// (recipes/_shared.yaml) or `connector` (connectors/NAME.yaml).
        #[arg(value_enum)]
        kind: SchemaKind,
    },
    /// Print README's generated parts (Markdown, each between its markers):
    /// the field reference of the file formats (from the same types and doc
    /// comments as `schema`), the condition operators and the template
    /// filters, tests and functions (from the lists the code checks against).
    Docs,
    /// Inspect and retry runs.
    Runs {
        #[command(subcommand)]
        cmd: RunsCmd,
    },
    /// Inspect events.
    Events {
        #[command(subcommand)]
        cmd: EventsCmd,
    },
    /// Connector polls: next slot, cursor, last success, last error.
    Polls {
        #[command(flatten)]
        src: inspect::Source,
    },
    /// Inspect and edit recipe state (values, window counters, rotations).
    State {
        #[command(subcommand)]
        cmd: state::StateCmd,
    },
    /// The offline quick start: `demo send` posts a signed sample ticket to
    /// a hub started with `serve --demo`.
    Demo {
        #[command(subcommand)]
        cmd: demo::DemoCmd,
    },
    /// Connect an OAuth2 connector once: open the printed URL, grant
    /// access; the tokens are stored in the hub's store, shared by every
    /// node on it (never printed).
    Connect(connect::ConnectArgs),
    /// What a recipe as its file is now would have done for stored events,
    /// against what ran: a dry run (no call leaves the process, nothing is
    /// written), calls answered from the original runs' records.
    Replay(replay::ReplayArgs),
    /// What the store holds: counts and bytes on disk.
    Store {
        #[command(subcommand)]
        cmd: store::StoreCmd,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SchemaKind {
    Recipe,
    Shared,
    Connector,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    switchboard::store::set_thread_idle_hook(alloc::idle);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(alloc::idle)
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
            Command::Check { dirs, no_secrets } => check(dirs, no_secrets),
            Command::Test(args) => test(args),
            Command::Schema { kind } => schema(kind),
            Command::Docs => {
                print!("{}", docs::all());
                ExitCode::SUCCESS
            }
            Command::Runs { cmd } => inspect::runs(cmd).await,
            Command::Events { cmd } => inspect::events(cmd).await,
            Command::Polls { src } => inspect::polls(src).await,
            Command::State { cmd } => state::state(cmd).await,
            Command::Demo { cmd } => demo::demo(cmd).await,
            Command::Store { cmd } => store::store(cmd).await,
            Command::Connect(args) => connect::connect(args).await,
            Command::Replay(args) => replay::replay(args).await,
        }
    })
}

/// Logs go to stderr (stdout is for what a command prints). Their fields
/// are ids, statuses and timings; secrets and bodies are never logged.
fn init_logs(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("SWITCHBOARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}

fn serve_config(dirs: Dirs) -> ServeConfig {
    ServeConfig {
        secrets_file: dirs.secrets,
        admin_token: std::env::var("SWITCHBOARD_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()),
        allow_internal: dirs.allow_internal,
        ..ServeConfig::new(dirs.data, dirs.connectors, dirs.recipes)
    }
}

/// `--retention`: a duration, or `off`.
#[derive(Clone, Copy)]
struct Retention(Option<Duration>);

fn parse_retention(s: &str) -> Result<Retention, String> {
    match s.trim() {
        "off" | "none" => Ok(Retention(None)),
        d => match humantime::parse_duration(d) {
            Ok(d) if !d.is_zero() => Ok(Retention(Some(d))),
            Ok(_) => {
                Err("a retention of 0 would delete every event; use `off` to keep them".into())
            }
            Err(e) => Err(format!("{e} (expected e.g. `30d`, `12h`, or `off`)")),
        },
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
        retention: args.retention.0,
        metrics_public: args.metrics_public,
        demo: args.demo,
        watch: args.watch.0,
        backpressure: args.backpressure,
        store: args.store,
        store_pool: usize::from(args.store_pool),
        backfill: args.backfill,
        handoff_wait: args.handoff_wait,
        connections: switchboard::listener::ConnectionLimits {
            header_timeout: args.header_timeout,
            idle_timeout: args.idle_timeout,
            body_timeout: args.body_timeout,
            max_connections: args
                .max_connections
                .unwrap_or_else(switchboard::listener::default_max_connections),
        },
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

fn schema(kind: SchemaKind) -> ExitCode {
    let schema = match kind {
        SchemaKind::Recipe => switchboard::recipe::config::schema(),
        SchemaKind::Shared => switchboard::recipe::shared::schema(),
        SchemaKind::Connector => switchboard::connector::config::schema(),
    };
    match serde_json::to_string_pretty(&schema) {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check(dirs: Dirs, no_secrets: bool) -> ExitCode {
    let config = serve_config(dirs);
    let mut opts = match config.load_options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if no_secrets {
        opts.secrets = opts.secrets.with_placeholders();
    }
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
            // The process ends here: freeing 10,000 recipes one allocation
            // at a time was a tenth of `check`'s CPU (BENCHMARKS.md, "10,000
            // loaded recipes"); the OS takes the memory back at once.
            std::mem::forget(catalog);
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
    // Named recipes run even when another file has an error: the others'
    // errors are reported, not fatal. Without names, every error is.
    let (catalog, errors) = Catalog::load_lenient(&opts);
    let missing = args
        .names
        .iter()
        .find(|n| catalog.recipe(n.as_str()).is_none());
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("{e}");
        }
        if args.names.is_empty() || missing.is_some() {
            eprintln!("error: {} problem(s) found", errors.len());
            return ExitCode::FAILURE;
        }
        eprintln!(
            "note: {} problem(s) in other files; testing {} anyway",
            errors.len(),
            args.names.join(", ")
        );
    }
    for w in &catalog.warnings {
        eprintln!("{w}");
    }
    if let Some(n) = missing {
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
