//! Reloading the catalog while the hub runs: on SIGHUP, when the files of
//! the connectors or recipes directory change (polled, debounced), or on
//! `POST /api/catalog/reload`.
//!
//! A reload loads and checks every file as `serve` does at start
//! (`Catalog::load`). If that passes, the new catalog replaces the current
//! one in one pointer swap ([`Catalogs::install`]): every event is matched
//! against exactly one catalog (the one it read when it arrived), and
//! nothing in flight is dropped. If it fails, the last good catalog stays,
//! the errors are logged with their `file:line:column` and the status says
//! *stale* until a reload passes ([`CatalogStatus`], `/readyz`,
//! `GET /api/catalog`).
//!
//! **A run keeps its version.** A run stores the version of its recipe it
//! started with (`Run::version`, `Recipe::version`). A worker executes it
//! with the catalog that has that version of the recipe: the current one,
//! or one a reload replaced and kept ([`Catalogs::for_run`]), so a run never
//! mixes two versions' steps — also a run parked in a wait for days. A
//! replaced catalog is kept while an unfinished run (queued, running,
//! retrying, waiting) needs one of its recipe versions; each reload drops
//! those no run needs any more ([`Catalogs::prune`]). Only memory holds
//! them: after a restart only the files on disk are loaded, and a run whose
//! version is gone either starts on the loaded version (it has not executed
//! a step yet) or fails with a message saying so ([`VersionGone`]).
//!
//! The watcher polls rather than subscribing to inotify: hashing the ~20
//! small files costs well under a millisecond a second, needs no crate,
//! and also works on bind mounts and network filesystems where file events
//! do not arrive. A change is acted on once two looks one interval apart
//! agree (an editor's save, a `git checkout`, settle first).

use super::catalog::files_version;
use super::{Catalog, Engine, LoadOptions};
use crate::store::{self, Page, Run, RunFilter, RunStatus};
use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::watch;

/// The catalogs of a running hub: the current one and the replaced ones
/// unfinished runs still need.
#[derive(Debug)]
pub struct Catalogs {
    /// Read once per event and once per run execution; written by a reload.
    /// A std RwLock: held only to clone or swap the `Arc`.
    current: RwLock<Arc<Catalog>>,
    /// Replaced catalogs that have a recipe version no newer catalog has,
    /// newest first.
    retired: Mutex<Vec<Arc<Catalog>>>,
    status: Mutex<CatalogStatus>,
    /// Reloads one at a time (SIGHUP, the watcher and the API may coincide).
    reloading: tokio::sync::Mutex<()>,
}

/// What `/readyz` and `GET /api/catalog` say about the catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogStatus {
    /// The loaded catalog's files version (`Catalog::version`).
    pub version: String,
    /// When it was loaded (ms).
    pub loaded_at: i64,
    /// Reloads that replaced the catalog since the start.
    pub reloads: u64,
    /// The last reload failed: the files on disk are not what runs.
    pub stale: Option<Stale>,
}

/// A failed reload: the last good catalog is still in use.
#[derive(Debug, Clone, PartialEq)]
pub struct Stale {
    /// When the failing files were first seen (ms).
    pub since: i64,
    /// The files version that failed.
    pub files: String,
    /// `file:line:column: message`, as `switchboard check` prints them.
    pub errors: Vec<String>,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq)]
pub enum Reloaded {
    /// The new catalog is in use; the recipes whose version changed, were
    /// added or removed.
    Installed {
        version: String,
        changed: Vec<String>,
    },
    /// The files are those of the loaded catalog; nothing was loaded.
    Unchanged { version: String },
    /// The files have errors; the last good catalog stays.
    Failed { files: String, errors: Vec<String> },
}

/// A run whose recipe version is loaded in no catalog (the hub restarted
/// after a reload changed its recipe, or the recipe was removed) and that
/// already executed steps of it: it is not continued on another version.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionGone {
    pub message: String,
}

impl Catalogs {
    pub fn new(catalog: Catalog, now: i64) -> Catalogs {
        Catalogs {
            status: Mutex::new(CatalogStatus {
                version: catalog.version.clone(),
                loaded_at: now,
                reloads: 0,
                stale: None,
            }),
            current: RwLock::new(Arc::new(catalog)),
            retired: Mutex::new(Vec::new()),
            reloading: tokio::sync::Mutex::new(()),
        }
    }

    /// The catalog new events are matched against.
    pub fn current(&self) -> Arc<Catalog> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn status(&self) -> CatalogStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The versions of replaced catalogs still kept, newest first, each
    /// with the recipes (`name@version`) it is kept for.
    pub fn retired(&self) -> Vec<(String, Vec<String>)> {
        let current = self.current();
        self.retired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|c| {
                let only = c
                    .recipes
                    .iter()
                    .filter(|r| !has_version(&current, &r.name, &r.version))
                    .map(|r| format!("{}@{}", r.name, r.version))
                    .collect();
                (c.version.clone(), only)
            })
            .collect()
    }

    /// The recipe versions kept for unfinished runs (`name@version`, each once).
    pub fn kept(&self) -> Vec<String> {
        let all: BTreeSet<String> = self.retired().into_iter().flat_map(|(_, r)| r).collect();
        all.into_iter().collect()
    }

    /// The catalog to execute `run` with: the one holding the version of
    /// its recipe it started with. A run without a version (stored before
    /// versions existed) or whose version is gone but that has not executed
    /// a step yet gets the current catalog, and `run.version` is set to the
    /// loaded recipe's.
    pub fn for_run(&self, run: &mut Run) -> Result<Arc<Catalog>, VersionGone> {
        let current = self.current();
        let Some(version) = run.version.clone() else {
            run.version = current.recipe(&run.recipe).map(|r| r.version.clone());
            return Ok(current);
        };
        if has_version(&current, &run.recipe, &version) {
            return Ok(current);
        }
        let kept = self
            .retired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|c| has_version(c, &run.recipe, &version))
            .cloned();
        if let Some(c) = kept {
            return Ok(c);
        }
        // Begun before: a record, a pending retry, a wait, or an earlier
        // execution that may have made a call it did not get to record
        // (leasing counts starts: this execution is the first if it is 1).
        let started = !run.steps.is_empty()
            || run.pending.is_some()
            || run.parked.is_some()
            || run.starts > 1;
        match current.recipe(&run.recipe) {
            Some(r) if !started => {
                tracing::info!(run = %run.id, recipe = %run.recipe, from = %version, to = %r.version,
                    "run had not started; it runs the loaded version of its recipe");
                run.version = Some(r.version.clone());
                Ok(current)
            }
            Some(r) => Err(VersionGone {
                message: format!(
                    "recipe `{}` changed from version {version} (which this run started with) to {} \
                     and version {version} is no longer loaded (the hub restarted since, or the run \
                     had failed when the change was loaded); its steps are not continued on another \
                     version. See what it did with `switchboard runs show {}`, and what the new \
                     version would do with `switchboard replay --recipe {} --events {}`",
                    run.recipe, r.version, run.id, run.recipe, run.event_id
                ),
            }),
            None => Err(VersionGone {
                message: format!(
                    "recipe `{}` is not loaded (version {version}, which this run started with, is gone)",
                    run.recipe
                ),
            }),
        }
    }

    /// Make `catalog` the current one; keep the replaced one if it has a
    /// recipe version the new one has not. The recipes that changed.
    pub fn install(&self, catalog: Catalog, now: i64) -> Vec<String> {
        let new = Arc::new(catalog);
        let old = std::mem::replace(
            &mut *self.current.write().unwrap_or_else(|p| p.into_inner()),
            new.clone(),
        );
        let mut changed: BTreeSet<String> = BTreeSet::new();
        for r in &old.recipes {
            if !has_version(&new, &r.name, &r.version) {
                changed.insert(r.name.clone());
            }
        }
        for r in &new.recipes {
            if old.recipe(&r.name).is_none() {
                changed.insert(r.name.clone());
            }
        }
        let keep = old
            .recipes
            .iter()
            .any(|r| !has_version(&new, &r.name, &r.version));
        if keep {
            self.retired
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(0, old);
        }
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        status.version = new.version.clone();
        status.loaded_at = now;
        status.reloads += 1;
        status.stale = None;
        changed.into_iter().collect()
    }

    /// Drop the replaced catalogs no unfinished run needs: read the
    /// versions of every queued, running, retrying and waiting run of the
    /// recipes they are kept for (through the store's status index).
    pub fn prune(&self, store: &dyn store::Store) -> Result<usize, store::StoreError> {
        let current = self.current();
        let kept: Vec<Arc<Catalog>> = self
            .retired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if kept.is_empty() {
            return Ok(0);
        }
        let names: BTreeSet<&str> = kept
            .iter()
            .flat_map(|c| c.recipes.iter())
            .filter(|r| !has_version(&current, &r.name, &r.version))
            .map(|r| r.name.as_str())
            .collect();
        let mut needed: HashSet<(String, String)> = HashSet::new();
        for name in names {
            for status in [
                RunStatus::Queued,
                RunStatus::Running,
                RunStatus::Retrying,
                RunStatus::Waiting,
            ] {
                let filter = RunFilter {
                    status: Some(status),
                    recipe: Some(name.to_string()),
                    failures: false,
                };
                let mut page = Page {
                    limit: 1_000,
                    before: None,
                };
                loop {
                    let runs = store.runs(&page, &filter)?;
                    for r in &runs {
                        if let Some(v) = &r.version {
                            needed.insert((r.recipe.clone(), v.clone()));
                        }
                    }
                    match runs.last() {
                        Some(last) if runs.len() == page.limit => {
                            page.before = Some(last.id.clone())
                        }
                        _ => break,
                    }
                }
            }
        }
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        let before = retired.len();
        // Only catalogs seen by the scan are judged; one retired meanwhile
        // stays until the next prune.
        retired.retain(|c| {
            !kept.iter().any(|k| Arc::ptr_eq(k, c))
                || c.recipes.iter().any(|r| {
                    needed.contains(&(r.name.clone(), r.version.clone()))
                        && !has_version(&current, &r.name, &r.version)
                })
        });
        Ok(before - retired.len())
    }

    fn set_stale(&self, files: &str, errors: &[String], now: i64) {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        let since = match &status.stale {
            Some(s) if s.files == files => s.since,
            _ => now,
        };
        status.stale = Some(Stale {
            since,
            files: files.to_string(),
            errors: errors.to_vec(),
        });
    }
}

fn has_version(c: &Catalog, recipe: &str, version: &str) -> bool {
    c.recipe(recipe).is_some_and(|r| r.version == version)
}

/// How a hub reloads.
#[derive(Debug, Clone)]
pub struct ReloadConfig {
    /// Where the files are, with the secrets `serve` started with.
    pub files: LoadOptions,
    /// How often the watcher looks at the files; `None`: no watcher (SIGHUP
    /// and the API still reload).
    pub watch: Option<Duration>,
    /// The secrets file SIGHUP reads again (`None`: keep `files.secrets`,
    /// e.g. the demo's built-in ones).
    pub secrets_file: Option<std::path::PathBuf>,
}

impl Engine {
    /// The catalog state: current, kept, stale.
    pub fn catalogs(&self) -> &Catalogs {
        &self.catalogs
    }

    /// Load the files and, if they check, use them for new events. With
    /// `force` false, files identical to the loaded catalog's (or to the
    /// last failed attempt's) are not loaded again.
    pub async fn reload(
        self: &Arc<Self>,
        opts: &LoadOptions,
        force: bool,
    ) -> Result<Reloaded, String> {
        let _one = self.catalogs.reloading.lock().await;
        let engine = self.clone();
        let opts = opts.clone();
        tokio::task::spawn_blocking(move || engine.reload_blocking(&opts, force))
            .await
            .map_err(|e| format!("the reload stopped: {e}"))
    }

    fn reload_blocking(&self, opts: &LoadOptions, force: bool) -> Reloaded {
        let files = files_version(opts);
        let status = self.catalogs.status();
        if !force {
            let failed_same = status.stale.as_ref().is_some_and(|s| s.files == files);
            if files == status.version || failed_same {
                return Reloaded::Unchanged { version: files };
            }
        }
        match Catalog::load(opts) {
            Err(errors) => {
                let errors: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
                for e in &errors {
                    tracing::error!("{e}");
                }
                tracing::error!(files = %files, problems = errors.len(),
                    "catalog reload failed; the last good catalog stays in use (catalog stale)");
                self.catalogs.set_stale(&files, &errors, self.now_ms());
                Reloaded::Failed { files, errors }
            }
            Ok(catalog) => {
                for w in &catalog.warnings {
                    tracing::warn!("{w}");
                }
                let version = catalog.version.clone();
                let recipes = catalog.recipes.len();
                let changed = self.catalogs.install(catalog, self.now_ms());
                tracing::info!(version = %version, recipes, changed = ?changed, "catalog reloaded");
                // New schedules, and due times of the new catalog's runs.
                self.wake.notify_waiters();
                self.reloaded.notify_waiters();
                match self.catalogs.prune(&**self.store()) {
                    Ok(n) if n > 0 => {
                        tracing::info!(dropped = n, "replaced catalogs no run needs dropped")
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot list unfinished runs; replaced catalogs kept")
                    }
                }
                Reloaded::Installed { version, changed }
            }
        }
    }
}

/// Start the reloader: SIGHUP (Unix) and, with `config.watch`, the file
/// watcher. Stops when `shutdown` turns true.
pub fn spawn(
    engine: &Arc<Engine>,
    config: ReloadConfig,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let engine = engine.clone();
    // Registered before this returns (not in the task), so a SIGHUP sent
    // once the hub is up never meets the default action (exit).
    #[cfg(unix)]
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; reload through the files or the API");
            None
        }
    };
    tokio::spawn(async move {
        let mut opts = config.files.clone();
        // The version seen at the last look, to act once two looks agree.
        let mut seen: Option<String> = None;
        loop {
            let tick = async {
                match config.watch {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(unix)]
            let signal = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let signal = std::future::pending::<Option<()>>();
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(()) = signal => {
                    tracing::info!("SIGHUP: reloading connectors and recipes");
                    if let Some(path) = &config.secrets_file {
                        match crate::connector::SecretSource::load(path) {
                            Ok(s) => opts.secrets = s,
                            Err(e) => tracing::error!("{e}; the secrets loaded before stay"),
                        }
                    }
                    report(engine.reload(&opts, true).await);
                }
                _ = tick => {
                    let o = opts.clone();
                    let Ok(now) = tokio::task::spawn_blocking(move || files_version(&o)).await else {
                        continue;
                    };
                    let status = engine.catalogs().status();
                    let settled = seen.as_deref() == Some(now.as_str());
                    seen = Some(now.clone());
                    let failed = status.stale.as_ref().is_some_and(|s| s.files == now);
                    if settled && now != status.version && !failed {
                        tracing::info!(files = %now, "connector or recipe files changed: reloading");
                        report(engine.reload(&opts, false).await);
                    }
                }
            }
        }
    })
}

fn report(r: Result<Reloaded, String>) {
    if let Err(e) = r {
        tracing::error!(error = %e, "catalog reload");
    }
}
