//! Wiring for `switchboard serve`: load the catalog, open the store, start
//! the workers and the HTTP server, and stop them in order.

use crate::admin::{self, console::Console, AdminState};
use crate::connector::SecretSource;
use crate::dashboard::{self, DashboardConfig};
use crate::engine::{
    poller, reload, retention, scheduler, worker, Catalog, Engine, EngineConfig, LoadOptions,
};
use crate::ingress::{self, IngressState};
use crate::listener::{self, ConnectionLimits};
use crate::secret::Secret;
use crate::store::{pg::PgStore, reopen::Reopening, sled::SledStore, Backend, Store};
use crate::yaml::LoadError;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Everything `serve` needs; built by the CLI from flags and environment.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    pub connectors_dir: PathBuf,
    pub recipes_dir: PathBuf,
    /// Secrets file; default `<data_dir>/secrets.yaml`.
    pub secrets_file: Option<PathBuf>,
    pub body_limit: usize,
    pub workers: usize,
    /// Admin API token; when unset, one is generated and kept in `<data_dir>/admin-token`.
    pub admin_token: Option<String>,
    pub allow_internal: Vec<String>,
    pub public_url: Option<String>,
    /// How long in-flight steps may take to finish after a shutdown signal.
    pub shutdown_grace: Duration,
    /// Run-queue depth above which `/readyz` reports overloaded.
    pub max_queue: usize,
    /// Delete events and their finished runs older than this (`None`: keep all).
    pub retention: Option<Duration>,
    /// Above `max_queue`, answer webhooks 503 + `Retry-After` instead of
    /// storing them (off by default: some senders never retry).
    pub backpressure: bool,
    /// Timeouts and the connection cap of the HTTP listener.
    pub connections: ConnectionLimits,
    /// Serve `/metrics` without the admin token.
    pub metrics_public: bool,
    /// Start the demo sandbox ([`crate::sandbox`]) and point the shipped
    /// connectors at it; without a secrets file, use the demo secrets.
    pub demo: bool,
    /// How often to look for changed connector and recipe files and reload
    /// them (`None`: only on SIGHUP or `POST /api/catalog/reload`).
    pub watch: Option<Duration>,
    /// `--store`: a `postgres://` URL or a sled directory (`None`: sled in
    /// `<data_dir>/store`).
    pub store: Option<String>,
    /// `--store-pool`: connections each node's PostgreSQL pool holds at most.
    pub store_pool: usize,
    /// Polls (`CONNECTOR.POLL`) whose first run turns every item it finds
    /// into an event (`--backfill`).
    pub backfill: Vec<String>,
    /// How long a webhook's answer may wait for a free worker (`--handoff-wait`).
    pub handoff_wait: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Load(Vec<LoadError>),
    #[error("{0}")]
    Setup(String),
}

impl ServeConfig {
    /// The defaults, stated once: the CLI's flags default to these too.
    pub const DEFAULT_LISTEN: &'static str = "127.0.0.1:8080";
    pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;
    pub const DEFAULT_WORKERS: usize = crate::engine::DEFAULT_WORKERS;
    pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 10;
    pub const DEFAULT_MAX_QUEUE: usize = 10_000;
    pub const DEFAULT_WATCH: Duration = Duration::from_secs(1);
    pub const DEFAULT_STORE_POOL: usize = crate::store::pg::DEFAULT_POOL;

    /// A configuration with every default, for these directories.
    pub fn new(data_dir: PathBuf, connectors_dir: PathBuf, recipes_dir: PathBuf) -> ServeConfig {
        ServeConfig {
            data_dir,
            connectors_dir,
            recipes_dir,
            secrets_file: None,
            body_limit: Self::DEFAULT_BODY_LIMIT,
            workers: Self::DEFAULT_WORKERS,
            admin_token: None,
            allow_internal: Vec::new(),
            public_url: None,
            shutdown_grace: Duration::from_secs(Self::DEFAULT_SHUTDOWN_GRACE_SECS),
            max_queue: Self::DEFAULT_MAX_QUEUE,
            retention: Some(crate::engine::retention::DEFAULT_RETENTION),
            store: None,
            store_pool: Self::DEFAULT_STORE_POOL,
            backpressure: false,
            connections: ConnectionLimits::default(),
            metrics_public: false,
            demo: false,
            watch: Some(Self::DEFAULT_WATCH),
            backfill: Vec::new(),
            handoff_wait: crate::engine::DEFAULT_HANDOFF_WAIT,
        }
    }

    pub fn load_options(&self) -> Result<LoadOptions, ServeError> {
        let secrets_file = self
            .secrets_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("secrets.yaml"));
        let secrets = SecretSource::load(&secrets_file)
            .map_err(|e| ServeError::Load(vec![e]))?
            .with_token_dir(self.data_dir.join("oauth"));
        Ok(LoadOptions {
            connectors_dir: self.connectors_dir.clone(),
            recipes_dir: self.recipes_dir.clone(),
            secrets,
            allow_internal: self.allow_internal.clone(),
        })
    }
}

/// A hub ready to serve: catalog loaded and checked, store open, token set.
pub struct Prepared {
    config: ServeConfig,
    /// What the catalog was loaded from, for reloads.
    files: LoadOptions,
    engine: Arc<Engine>,
    token: Secret,
    /// The demo sandbox's port, bound (`--demo`).
    sandbox: Option<std::net::TcpListener>,
}

/// `--demo`: bind the sandbox on loopback and point the connectors it
/// stands in for at it. Only they may reach an internal address (the
/// sandbox's), and only at their base URL: a request's URL never leaves it.
fn demo_options(
    config: &ServeConfig,
    opts: &mut LoadOptions,
) -> Result<std::net::TcpListener, ServeError> {
    let setup =
        |e: std::io::Error| ServeError::Setup(format!("cannot start the demo sandbox: {e}"));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(setup)?;
    listener.set_nonblocking(true).map_err(setup)?;
    let origin = format!("http://{}", listener.local_addr().map_err(setup)?);
    if config.secrets_file.is_none() {
        opts.secrets = SecretSource::load_text(
            Path::new("docs/demo-secrets.yaml (built in)"),
            crate::sandbox::DEMO_SECRETS,
        )
        .map_err(|e| ServeError::Load(vec![e]))?;
    }
    let mut secrets = std::mem::take(&mut opts.secrets);
    for (name, _) in crate::sandbox::CONNECTORS {
        if let Some(url) = crate::sandbox::base_url(&origin, name) {
            secrets = secrets.with_base_url(name, url);
        }
        opts.allow_internal.push(name.to_string());
    }
    opts.secrets = secrets;
    tracing::info!(sandbox = %origin, connectors = ?crate::sandbox::CONNECTORS.iter().map(|c| c.0).collect::<Vec<_>>(),
        "demo: these connectors call the built-in sandbox; nothing leaves this machine");
    Ok(listener)
}

/// Load and check everything `serve` needs, before any port is bound.
pub fn prepare(config: ServeConfig) -> Result<Prepared, ServeError> {
    let mut opts = config.load_options()?;
    let sandbox = if config.demo {
        Some(demo_options(&config, &mut opts)?)
    } else {
        None
    };
    let catalog = Catalog::load(&opts).map_err(ServeError::Load)?;
    let files = opts.clone();
    for w in &catalog.warnings {
        tracing::warn!("{w}");
    }
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        ServeError::Setup(format!("cannot create {}: {e}", config.data_dir.display()))
    })?;
    // The data dir and the store's files, created just now, are private.
    let store = open_store(
        &Backend::parse(config.store.as_deref(), &config.data_dir),
        config.store_pool,
    )?;
    make_private(&config.data_dir).map_err(|e| {
        ServeError::Setup(format!(
            "cannot make {} private: {e}",
            config.data_dir.display()
        ))
    })?;
    let token = admin_token(&config)?;
    tracing::info!(
        connectors = catalog.connectors.by_name.len(),
        recipes = catalog.recipes.len(),
        "catalog loaded"
    );
    let engine = Engine::new(
        catalog,
        store,
        EngineConfig {
            workers: config.workers,
            retention: config.retention,
            backfill: config.backfill.clone(),
            handoff_wait: config.handoff_wait,
            ..EngineConfig::default()
        },
    )
    .map_err(ServeError::Setup)?;
    Ok(Prepared {
        config,
        files,
        engine,
        token,
        sandbox,
    })
}

/// Open the store `serve` runs on, its stale leases released.
fn open_store(backend: &Backend, pool: usize) -> Result<Arc<dyn Store>, ServeError> {
    let released_by = |store: &dyn Store| -> Result<(), ServeError> {
        let released = store
            .release_leases(crate::store::now_ms())
            .map_err(|e| ServeError::Setup(e.to_string()))?;
        if released > 0 {
            tracing::info!(
                runs = released,
                "resuming runs interrupted by the last stop"
            );
        }
        Ok(())
    };
    match backend {
        Backend::Sled(dir) => {
            let store = SledStore::open(dir).map_err(|e| {
                ServeError::Setup(format!(
                    "cannot open the store in {}: {e} (is another switchboard running on it?)",
                    dir.display()
                ))
            })?;
            // One node owns a sled store, so every lease found at start-up is stale.
            released_by(&store)?;
            // After a write error (a full disk) the store reopens itself once space is back.
            let dir = dir.clone();
            Ok(Arc::new(Reopening::new(
                Arc::new(store),
                Box::new(move || Ok(Arc::new(SledStore::open(&dir)?) as Arc<dyn Store>)),
            )))
        }
        Backend::Postgres(url) => {
            // Migrations are applied here; the pool reconnects by itself, so
            // no `Reopening` around it. Only leases of nodes that are gone
            // are released: other nodes may be running.
            let store = PgStore::open_pooled(url, pool).map_err(|e| {
                ServeError::Setup(format!(
                    "cannot open the store at {}: {e}",
                    backend.describe()
                ))
            })?;
            tracing::info!(store = %backend.describe(), node = %store.node_id(), "PostgreSQL store");
            released_by(&store)?;
            Ok(Arc::new(store))
        }
    }
}

/// Load, then run the hub on `listener` until `shutdown` completes.
pub async fn run(
    config: ServeConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    prepare(config)?.serve(listener, shutdown).await
}

impl Prepared {
    /// Serve on `listener` until `shutdown` completes, then stop in order.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let Prepared {
            config,
            files,
            engine,
            token,
            sandbox,
        } = self;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        if let Some(listener) = sandbox {
            let listener = tokio::net::TcpListener::from_std(listener)
                .map_err(|e| ServeError::Setup(format!("cannot start the demo sandbox: {e}")))?;
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                let stopped = async move {
                    let _ = stop.wait_for(|s| *s).await;
                };
                if let Err(e) = crate::sandbox::serve(listener, stopped).await {
                    tracing::error!(error = %e, "the demo sandbox stopped");
                }
            });
        }
        let mut workers = worker::spawn(&engine, stop_rx.clone());
        workers.extend(retention::spawn(&engine, stop_rx.clone()));
        let backpressure = config.backpressure.then(|| {
            let gauge = Arc::new(ingress::Backpressure::new(config.max_queue));
            workers.push(tokio::spawn(
                gauge.clone().sample(engine.clone(), stop_rx.clone()),
            ));
            gauge
        });
        workers.extend(scheduler::spawn(&engine, stop_rx.clone()));
        // SIGHUP reads the secrets file again, except in the demo (its
        // sandbox URLs are set on the secrets loaded at start).
        let secrets_file = (!config.demo).then(|| {
            config
                .secrets_file
                .clone()
                .unwrap_or_else(|| config.data_dir.join("secrets.yaml"))
        });
        workers.push(reload::spawn(
            &engine,
            reload::ReloadConfig {
                files: files.clone(),
                watch: config.watch,
                secrets_file,
            },
            stop_rx.clone(),
        ));
        workers.extend(poller::spawn(&engine, stop_rx.clone()));
        workers.extend(scheduler::spawn(&engine, stop_rx));
        let admin_state = AdminState {
            engine: engine.clone(),
            token,
            max_queue: config.max_queue,
            metrics_public: config.metrics_public,
            files: Some(Arc::new(files)),
        };
        let app = ingress::router(IngressState {
            engine: engine.clone(),
            body_limit: config.body_limit,
            public_url: config.public_url.clone(),
            backpressure,
        })
        .merge(dashboard::router(
            Console::new(admin_state.clone()),
            DashboardConfig::for_public_url(config.public_url.as_deref()),
        ))
        .merge(admin::router(admin_state));
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "listening");
        }
        listener::serve(
            listener,
            app,
            config.connections.clone(),
            shutdown,
            config.shutdown_grace,
        )
        .await;

        // Stop taking runs; let the ones in flight finish their step, up to the grace period.
        let _ = stop_tx.send(true);
        let all = futures_util::future::join_all(workers);
        if tokio::time::timeout(config.shutdown_grace, all)
            .await
            .is_err()
        {
            tracing::warn!("workers still busy at the end of the grace period; their runs resume at the next start");
        }
        engine
            .store()
            .flush()
            .map_err(|e| ServeError::Setup(e.to_string()))?;
        Ok(())
    }
}

/// The admin token: from config, else from `<data>/admin-token`, else a new random one written there.
fn admin_token(config: &ServeConfig) -> Result<Secret, ServeError> {
    if let Some(t) = &config.admin_token {
        check_token_strength(t)?;
        return Ok(Secret::new(t.clone()));
    }
    let path = token_path(&config.data_dir);
    if let Ok(t) = std::fs::read_to_string(&path) {
        if !t.trim().is_empty() {
            check_token_strength(t.trim())?;
            tracing::info!(path = %path.display(), "admin token read from file");
            return Ok(Secret::new(t.trim().to_string()));
        }
    }
    let token: String = hex::encode(rand::random::<[u8; 32]>());
    write_private(&path, &token)
        .map_err(|e| ServeError::Setup(format!("cannot write {}: {e}", path.display())))?;
    tracing::info!(path = %path.display(), "generated an admin token; the admin API needs `Authorization: Bearer <token in that file>`");
    Ok(Secret::new(token))
}

/// Shortest admin token accepted (a generated one has 64 hex digits).
pub const MIN_TOKEN_LEN: usize = 16;

/// Refuse a guessable admin token: too short, or one character repeated.
fn check_token_strength(token: &str) -> Result<(), ServeError> {
    let distinct: std::collections::BTreeSet<char> = token.chars().collect();
    if token.chars().count() < MIN_TOKEN_LEN || distinct.len() < 4 {
        return Err(ServeError::Setup(format!(
            "the admin token (SWITCHBOARD_ADMIN_TOKEN or <data>/admin-token) is too weak: \
             use at least {MIN_TOKEN_LEN} characters, e.g. `openssl rand -hex 32`, \
             or unset it to have one generated"
        )));
    }
    Ok(())
}

/// Make the data dir 0700 and what is in it 0600 (files) / 0700 (dirs):
/// it holds every event body, step record and the admin token. Files the
/// store creates later sit behind the 0700 directory.
fn make_private(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                make_private(&entry.path())?;
            } else if meta.is_file() {
                std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o600))?;
            }
        }
    }
    Ok(())
}

pub fn token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin-token")
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}
