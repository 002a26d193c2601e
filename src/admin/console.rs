//! The admin API as typed calls: [`Console`] is what `/api` serves as JSON
//! and what the dashboard renders as HTML, so the two cannot disagree.
//!
//! Besides the event and run queries of [`queries`] it answers the
//! summaries an operator looks at first: activity per minute, runs by
//! status, dead letters, queue depth, each connector's breaker and limits,
//! each recipe's trigger, last run and success rate, and whether the files
//! on disk still load. Summaries read only the window they show (the last
//! hour or day, at most [`MAX_SCAN`] records) and never a body, so they stay
//! fast on a large store. It never writes, except retries (through the
//! engine, which wakes the workers).

use super::queries::{self, EventView, EventsQuery, Listing, QueryError, RetriedRuns, RunsQuery};
use super::AdminState;
use crate::engine::{Catalog, LoadOptions};
use crate::secret::Secret;
use crate::store::{Event, Run, RunHead, RunStatus};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use utoipa::{IntoParams, ToSchema};

/// Most dead letters the overview counts one by one.
pub const DEAD_LETTERS_SHOWN: usize = 1_000;

/// Most records a summary reads; beyond, it says `truncated`.
pub const MAX_SCAN: usize = 200_000;

/// The window of a summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Range {
    /// The last 60 minutes, per minute.
    #[default]
    Hour,
    /// The last 24 hours, per 15 minutes.
    Day,
}

/// `?range=hour|day` (default `hour`).
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RangeQuery {
    /// `hour` (per minute) or `day` (per 15 minutes).
    #[serde(default)]
    #[param(inline)]
    pub range: Range,
}

impl Range {
    pub fn span_ms(self) -> i64 {
        match self {
            Range::Hour => 3_600_000,
            Range::Day => 86_400_000,
        }
    }
    pub fn bucket_ms(self) -> i64 {
        match self {
            Range::Hour => 60_000,
            Range::Day => 900_000,
        }
    }
}

/// `GET /api/overview`: what the hub did over the last hour or day.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Overview {
    /// When it was computed (ms).
    pub now: i64,
    pub range: Range,
    /// Width of one bucket (ms).
    pub bucket_ms: i64,
    /// Oldest first; the last one is the current, partial bucket.
    pub buckets: Vec<Bucket>,
    /// Events and runs in the window.
    pub events: usize,
    pub runs: usize,
    /// Runs created in the window, by their status now (every status, zeros included).
    pub runs_by_status: Vec<StatusCount>,
    /// Dead runs, of any age: they wait for a person. Counted up to
    /// [`DEAD_LETTERS_SHOWN`]; beyond, `dead_letters_more` is set.
    pub dead_letters: usize,
    pub dead_letters_more: bool,
    /// Runs waiting or in flight (the whole queue).
    pub queue_depth: usize,
    pub max_queue: usize,
    pub connectors: Vec<ConnectorView>,
    /// More than [`MAX_SCAN`] events or runs in the window: counts cover the newest ones.
    pub truncated: bool,
}

/// Activity in one bucket of an [`Overview`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Bucket {
    /// Its start (ms).
    pub start: i64,
    pub events: usize,
    /// Runs created in it.
    pub runs: usize,
    /// Of those, runs that are failed or dead now.
    pub failed: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StatusCount {
    pub status: RunStatus,
    pub count: usize,
}

/// A connector as the admin API shows it: its webhook checks (names, never
/// a secret) and what its limits are doing now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ConnectorView {
    pub name: String,
    pub base_url: String,
    pub actions: Vec<String>,
    /// How its webhooks are checked; `None`: it takes no webhooks.
    pub webhook: Option<WebhookView>,
    pub limits: LimitUsage,
}

/// What a connector's limits are doing now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LimitUsage {
    /// Rate slots taken (in flight, or within a window of their end) of `rate_max`.
    pub rate_in_use: Option<usize>,
    pub rate_max: Option<usize>,
    /// The rate's window (ms).
    pub rate_per_ms: Option<u64>,
    /// Calls in flight of `concurrency_max`.
    pub concurrency_in_use: Option<usize>,
    pub concurrency_max: Option<usize>,
    pub breaker: BreakerView,
}

/// A circuit breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum BreakerView {
    /// `failures: 0`: never opens.
    Off,
    /// Calls go; it opens after `opens_after` consecutive retryable failures.
    Closed { failures: u32, opens_after: u32 },
    /// No call goes for `probe_in_ms` more; then one call probes.
    Open { probe_in_ms: u64 },
    /// The probe is in flight.
    HalfOpen,
}

impl From<crate::connector::limits::LimitUsage> for LimitUsage {
    fn from(u: crate::connector::limits::LimitUsage) -> LimitUsage {
        use crate::connector::limits::BreakerView as B;
        LimitUsage {
            rate_in_use: u.rate_in_use,
            rate_max: u.rate_max,
            rate_per_ms: u.rate_per_ms,
            concurrency_in_use: u.concurrency_in_use,
            concurrency_max: u.concurrency_max,
            breaker: match u.breaker {
                B::Off => BreakerView::Off,
                B::Closed {
                    failures,
                    opens_after,
                } => BreakerView::Closed {
                    failures,
                    opens_after,
                },
                B::Open { probe_in_ms } => BreakerView::Open { probe_in_ms },
                B::HalfOpen => BreakerView::HalfOpen,
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WebhookView {
    /// The signature scheme (`zendesk`, `stripe`, `none`…).
    pub signature: String,
    /// Whether the scheme signs a timestamp (stale deliveries are refused).
    pub signs_timestamp: bool,
    /// The header the delivery id is read from, if any.
    pub delivery_id_header: Option<String>,
    /// Where the event type is read (`header X-…`, `body $.type`).
    pub event_type: Option<String>,
}

/// `GET /api/recipes`: one loaded recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RecipeSummary {
    pub name: String,
    pub file: String,
    /// `connector` / `event` of its trigger (`schedule` / the recipe's name for a schedule).
    pub connector: String,
    pub event: String,
    /// The cron expression of `on: { schedule }`.
    pub schedule: Option<String>,
    pub steps: usize,
    /// Its newest run of the last 24 h.
    pub last_run: Option<RunHead>,
    /// Runs created in the last 24 h, by final outcome so far.
    pub runs_24h: usize,
    pub succeeded_24h: usize,
    pub failed_24h: usize,
    pub dead_24h: usize,
    /// Succeeded / (succeeded + failed + dead) over 24 h; `None` without a finished run.
    pub success_rate_24h: Option<f64>,
}

/// `GET /api/recipes/{name}`: a recipe with its file as it is on disk now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RecipeDetail {
    pub summary: RecipeSummary,
    /// The file's text (read-only).
    pub yaml: Option<String>,
    /// Why the file could not be read, if it could not.
    pub yaml_error: Option<String>,
}

/// `GET /api/check`: do the connector and recipe files on disk still load?
/// (The hub keeps running the set it loaded at start.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FileCheck {
    /// `file:line:column: message`, as `switchboard check` prints them.
    pub problems: Vec<String>,
    /// Whether files could be checked at all (the hub knows its directories).
    pub checked: bool,
}

/// `GET /api/catalog`: the connectors and recipes the hub runs, and
/// whether the files on disk are those (see README "Changing recipes
/// while the hub runs").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CatalogView {
    /// Version of the files loaded (a hash of the connector and recipe files).
    pub version: String,
    /// When they were loaded (ms).
    pub loaded_at: i64,
    /// Reloads that replaced the catalog since the hub started.
    pub reloads: u64,
    /// True when the last reload failed: the hub runs the last good files,
    /// not those on disk.
    pub stale: bool,
    /// Since when the failing files are on disk (ms), when stale.
    pub stale_since: Option<i64>,
    /// `file:line:column: message` of the failing files, when stale.
    pub errors: Vec<String>,
    /// Each loaded recipe with its version (what `runs show` names).
    pub recipes: Vec<RecipeVersion>,
    /// Recipe versions replaced by a reload and kept for the unfinished
    /// runs that started with them (`name@version`).
    pub kept: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RecipeVersion {
    pub name: String,
    pub version: String,
}

/// `POST /api/catalog/reload`: what a reload did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReloadAnswer {
    /// `installed` (the files are in use), `unchanged`, or `failed` (the
    /// last good files stay; `errors` says why).
    pub outcome: String,
    /// The files version that was loaded or that failed.
    pub version: String,
    /// Recipes whose version changed, added or removed.
    pub changed: Vec<String>,
    pub errors: Vec<String>,
}

/// The admin API as typed calls over one hub.
#[derive(Clone)]
pub struct Console {
    state: AdminState,
}

impl Console {
    pub fn new(state: AdminState) -> Console {
        Console { state }
    }

    /// Is `given` the admin token? (Constant time; an empty one never is.)
    pub fn token_matches(&self, given: &str) -> bool {
        token_matches(&self.state.token, given)
    }

    /// Now, by the hub's clock (ms).
    pub fn now_ms(&self) -> i64 {
        self.state.engine.now_ms()
    }

    fn store(&self) -> &dyn crate::store::Store {
        &**self.state.engine.store()
    }

    fn catalog(&self) -> Arc<Catalog> {
        self.state.engine.catalog()
    }

    pub fn events(&self, q: &EventsQuery) -> Result<Listing<Event>, QueryError> {
        let catalog = self.catalog();
        let connectors: Vec<&str> = catalog
            .connectors
            .by_name
            .keys()
            .map(String::as_str)
            .collect();
        queries::find_events(self.store(), q, &connectors)
    }

    pub fn event(&self, id: &str) -> Result<EventView, QueryError> {
        queries::event(self.store(), id)
    }

    pub fn runs(&self, q: &RunsQuery) -> Result<Listing<Run>, QueryError> {
        queries::runs(self.store(), q)
    }

    pub fn run(&self, id: &str) -> Result<Run, QueryError> {
        queries::run(self.store(), id)
    }

    /// A failed or dead run resumes at its failed step.
    pub fn retry(&self, id: &str) -> Result<RetriedRuns, QueryError> {
        queries::retried(id, self.state.engine.retry(id)?)
    }

    /// Every failed or dead run of a recipe resumes.
    pub fn retry_recipe(&self, recipe: &str) -> Result<RetriedRuns, QueryError> {
        if self.catalog().recipe(recipe).is_none() {
            return Err(QueryError::NotFound {
                kind: "recipe",
                id: recipe.to_string(),
            });
        }
        let retried = self.state.engine.retry_recipe(recipe)?;
        Ok(RetriedRuns { retried })
    }

    pub fn queue_depth(&self) -> Result<usize, QueryError> {
        Ok(self.state.engine.queue_depth()?)
    }

    pub fn max_queue(&self) -> usize {
        self.state.max_queue
    }

    pub fn overview(&self, range: Range) -> Result<Overview, QueryError> {
        let now = self.now_ms();
        let bucket_ms = range.bucket_ms();
        let first = (now - range.span_ms()) / bucket_ms * bucket_ms + bucket_ms;
        let n = ((now - first) / bucket_ms + 1).max(1) as usize;
        let mut buckets: Vec<Bucket> = (0..n)
            .map(|i| Bucket {
                start: first + i as i64 * bucket_ms,
                events: 0,
                runs: 0,
                failed: 0,
            })
            .collect();
        let slot = |t: i64| {
            usize::try_from((t - first) / bucket_ms)
                .ok()
                .filter(|&i| i < n)
        };
        let times = self.store().event_times(first, MAX_SCAN + 1)?;
        let heads = self.store().run_heads(first, MAX_SCAN + 1)?;
        let truncated = times.len() > MAX_SCAN || heads.len() > MAX_SCAN;
        for t in times.iter().take(MAX_SCAN) {
            if let Some(i) = slot(*t) {
                buckets[i].events += 1;
            }
        }
        let mut by_status: BTreeMap<&str, usize> = BTreeMap::new();
        for h in heads.iter().take(MAX_SCAN) {
            if let Some(i) = slot(h.created_at) {
                buckets[i].runs += 1;
                buckets[i].failed += usize::from(h.status.is_failure());
            }
            *by_status.entry(queries::status_name(h.status)).or_default() += 1;
        }
        // Through the store's status index: reads only dead runs.
        let dead = self.store().runs(
            &crate::store::Page {
                limit: DEAD_LETTERS_SHOWN + 1,
                before: None,
            },
            &crate::store::RunFilter {
                status: Some(RunStatus::Dead),
                recipe: None,
                failures: false,
            },
        )?;
        let runs_by_status = queries::status_names()
            .iter()
            .filter_map(|name| {
                let status = queries::parse_status(name).ok()?;
                Some(StatusCount {
                    status,
                    count: by_status.get(name).copied().unwrap_or(0),
                })
            })
            .collect();
        Ok(Overview {
            now,
            range,
            bucket_ms,
            events: buckets.iter().map(|b| b.events).sum(),
            runs: buckets.iter().map(|b| b.runs).sum(),
            dead_letters: dead.len().min(DEAD_LETTERS_SHOWN),
            dead_letters_more: dead.len() > DEAD_LETTERS_SHOWN,
            buckets,
            runs_by_status,
            queue_depth: self.queue_depth()?,
            max_queue: self.state.max_queue,
            connectors: self.connectors(),
            truncated,
        })
    }

    /// Every loaded connector, sorted by name.
    pub fn connectors(&self) -> Vec<ConnectorView> {
        let now = std::time::Instant::now();
        let mut connectors = self
            .catalog()
            .connectors
            .by_name
            .values()
            .filter(|c| c.name != crate::recipe::trigger::SCHEDULE_CONNECTOR)
            .map(|c| ConnectorView {
                name: c.name.clone(),
                base_url: c.base_url.clone(),
                actions: c.actions.keys().cloned().collect(),
                webhook: c.webhook.as_ref().map(|w| WebhookView {
                    signature: w.verifier.config().name().to_string(),
                    signs_timestamp: w.verifier.signs_timestamp(),
                    delivery_id_header: w.verifier.delivery_id_header().map(str::to_string),
                    event_type: w.event_type.as_ref().map(|f| match f {
                        crate::connector::Field::Header(h) => format!("header {h}"),
                        crate::connector::Field::Path(p) => format!("body {}", p.as_str()),
                        crate::connector::Field::Value(v) => format!("always `{v}`"),
                    }),
                }),
                limits: c.limits.usage(now).into(),
            })
            .collect::<Vec<_>>();
        connectors.sort_by(|a, b| a.name.cmp(&b.name));
        connectors
    }

    /// Every poll of the loaded connectors with its status, and any other
    /// poll with a stored status.
    pub fn polls(&self) -> Result<Vec<queries::PollView>, QueryError> {
        queries::polls(self.store(), Some(&self.catalog()), self.now_ms())
    }

    /// The loaded recipes' names, sorted (no store read).
    pub fn recipe_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .catalog()
            .recipes
            .iter()
            .map(|r| r.name.clone())
            .collect();
        names.sort();
        names
    }

    /// Every loaded recipe, by name, with its last 24 h.
    pub fn recipes(&self) -> Result<Vec<RecipeSummary>, QueryError> {
        let since = self.now_ms() - Range::Day.span_ms();
        let heads = self.store().run_heads(since, MAX_SCAN)?;
        let mut recipes: Vec<RecipeSummary> = self
            .catalog()
            .recipes
            .iter()
            .map(|r| RecipeSummary {
                name: r.name.clone(),
                file: r.file.display().to_string(),
                connector: r.connector.clone(),
                event: r.event.clone(),
                schedule: r
                    .schedule
                    .as_ref()
                    .map(|s| format!("{} ({})", s.schedule.pattern, s.schedule.zone_name)),
                steps: r.steps.len(),
                last_run: None,
                runs_24h: 0,
                succeeded_24h: 0,
                failed_24h: 0,
                dead_24h: 0,
                success_rate_24h: None,
            })
            .collect();
        recipes.sort_by(|a, b| a.name.cmp(&b.name));
        for h in heads {
            let Ok(i) = recipes.binary_search_by(|r| r.name.as_str().cmp(&h.recipe)) else {
                continue;
            };
            let r = &mut recipes[i];
            r.runs_24h += 1;
            match h.status {
                RunStatus::Succeeded => r.succeeded_24h += 1,
                RunStatus::Failed => r.failed_24h += 1,
                RunStatus::Dead => r.dead_24h += 1,
                _ => {}
            }
            if r.last_run.is_none() {
                r.last_run = Some(h); // newest first
            }
        }
        for r in &mut recipes {
            let finished = r.succeeded_24h + r.failed_24h + r.dead_24h;
            r.success_rate_24h = (finished > 0).then(|| r.succeeded_24h as f64 / finished as f64);
        }
        Ok(recipes)
    }

    pub fn recipe(&self, name: &str) -> Result<RecipeDetail, QueryError> {
        let summary = self
            .recipes()?
            .into_iter()
            .find(|r| r.name == name)
            .ok_or_else(|| QueryError::NotFound {
                kind: "recipe",
                id: name.to_string(),
            })?;
        let (yaml, yaml_error) = match std::fs::read_to_string(&summary.file) {
            Ok(text) => (Some(text), None),
            Err(e) => (None, Some(format!("cannot read {}: {e}", summary.file))),
        };
        Ok(RecipeDetail {
            summary,
            yaml,
            yaml_error,
        })
    }

    /// The loaded catalog, and whether the last reload failed.
    pub fn catalog_view(&self) -> CatalogView {
        let catalogs = self.state.engine.catalogs();
        let status = catalogs.status();
        let mut recipes: Vec<RecipeVersion> = self
            .catalog()
            .recipes
            .iter()
            .map(|r| RecipeVersion {
                name: r.name.clone(),
                version: r.version.clone(),
            })
            .collect();
        recipes.sort_by(|a, b| a.name.cmp(&b.name));
        CatalogView {
            version: status.version,
            loaded_at: status.loaded_at,
            reloads: status.reloads,
            stale: status.stale.is_some(),
            stale_since: status.stale.as_ref().map(|s| s.since),
            errors: status.stale.map(|s| s.errors).unwrap_or_default(),
            recipes,
            kept: catalogs.kept(),
        }
    }

    /// Load the files now (as SIGHUP does, without reading secrets again).
    pub async fn reload(&self) -> ReloadAnswer {
        use crate::engine::reload::Reloaded;
        let Some(opts) = self.state.files.clone() else {
            return ReloadAnswer {
                outcome: "failed".into(),
                version: String::new(),
                changed: Vec::new(),
                errors: vec!["this hub does not know its files".into()],
            };
        };
        match self.state.engine.reload(&opts, true).await {
            Ok(Reloaded::Installed { version, changed }) => ReloadAnswer {
                outcome: "installed".into(),
                version,
                changed,
                errors: Vec::new(),
            },
            Ok(Reloaded::Unchanged { version }) => ReloadAnswer {
                outcome: "unchanged".into(),
                version,
                changed: Vec::new(),
                errors: Vec::new(),
            },
            Ok(Reloaded::Failed { files, errors }) => ReloadAnswer {
                outcome: "failed".into(),
                version: files,
                changed: Vec::new(),
                errors,
            },
            Err(e) => ReloadAnswer {
                outcome: "failed".into(),
                version: String::new(),
                changed: Vec::new(),
                errors: vec![e],
            },
        }
    }

    /// What `q.recipe` as its file is on disk now would have done for the
    /// stored events (see [`super::replay`]): the files are loaded with
    /// placeholder secrets (no call is made), off the async threads.
    pub async fn replay(
        &self,
        q: super::replay::ReplayQuery,
    ) -> Result<super::replay::ReplayPage, super::replay::ReplayError> {
        use super::replay::{self, ReplayError, StoreHistory};
        let Some(opts) = self.state.files.clone() else {
            return Err(ReplayError::Bad("this hub does not know its files".into()));
        };
        let store = self.state.engine.store().clone();
        let now = self.now_ms();
        tokio::task::spawn_blocking(move || {
            let mut opts = (*opts).clone();
            opts.secrets = opts.secrets.with_placeholders();
            let (catalog, errors) = Catalog::load_lenient(&opts);
            if catalog.recipe(&q.recipe).is_none() && !errors.is_empty() {
                let list: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
                return Err(ReplayError::Bad(format!(
                    "no recipe `{}` loads from the files on disk: {}",
                    q.recipe,
                    list.join("; ")
                )));
            }
            replay::replay(&StoreHistory(&*store), &catalog, &q, now)
        })
        .await
        .unwrap_or_else(|e| Err(ReplayError::Source(format!("the replay stopped: {e}"))))
    }

    /// Load the connector and recipe files as `switchboard check` would
    /// (off the async threads: a large set takes a while).
    pub async fn check_files(&self) -> FileCheck {
        let Some(opts) = self.state.files.clone() else {
            return FileCheck {
                problems: Vec::new(),
                checked: false,
            };
        };
        let problems = tokio::task::spawn_blocking(move || match Catalog::load(&opts) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
        })
        .await
        .unwrap_or_else(|e| vec![format!("the check stopped: {e}")]);
        FileCheck {
            problems,
            checked: true,
        }
    }
}

/// Where `serve` loaded its files from, to check them again on request.
pub type Files = Option<Arc<LoadOptions>>;

pub(super) fn token_matches(token: &Secret, given: &str) -> bool {
    !given.is_empty() && bool::from(given.as_bytes().ct_eq(token.expose().as_bytes()))
}
