//! `switchboard runs ...`, `switchboard events ...` and `switchboard polls`.
//!
//! When no hub holds the store, the library's admin queries run on it
//! directly; otherwise the same queries are asked of the running hub's admin
//! API. Either way the answer is one of the query layer's typed values,
//! printed as JSON (`--json`) or by [`crate::render`].
//!
//! Adding a subcommand: a variant in [`RunsCmd`] or [`EventsCmd`] (or a new
//! enum), one arm that says which query it is in both places, and a render
//! function.

use crate::render;
use clap::{Args, Subcommand};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use switchboard::admin::queries::{self, PageQuery, RetriedRuns, RunsQuery};
use switchboard::server;
use switchboard::store::{self, pg::PgStore, sled::SledStore, Backend, Store};

#[derive(Subcommand)]
pub enum RunsCmd {
    /// Newest first.
    List {
        #[command(flatten)]
        src: Source,
        #[command(flatten)]
        page: PageArgs,
        /// Only runs with this status.
        #[arg(long, help = status_help())]
        status: Option<String>,
        /// Only runs of this recipe.
        #[arg(long)]
        recipe: Option<String>,
    },
    Show {
        id: String,
        #[command(flatten)]
        src: Source,
    },
    /// Put a failed or dead run back in the queue (`retry ID`), or every
    /// failed one of a recipe (`retry --recipe NAME --failed`). It resumes at
    /// the failed step; completed steps are not repeated.
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

#[derive(Subcommand)]
pub enum EventsCmd {
    /// Newest first.
    List {
        #[command(flatten)]
        src: Source,
        #[command(flatten)]
        page: PageArgs,
    },
    Show {
        id: String,
        #[command(flatten)]
        src: Source,
    },
}

#[derive(Args)]
pub struct PageArgs {
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Only older than this id (the `next` cursor of a previous page).
    #[arg(long)]
    before: Option<String>,
}

impl PageArgs {
    fn query(self) -> PageQuery {
        PageQuery {
            limit: Some(self.limit),
            before: self.before,
        }
    }
}

/// Where the answers come from, and how they are printed.
#[derive(Args)]
pub struct Source {
    #[arg(long, env = "SWITCHBOARD_DATA", default_value = "data")]
    pub data: PathBuf,
    /// The store a hub runs on (`serve --store`): a `postgres://` URL is
    /// read directly, also while hubs run on it.
    #[arg(long, env = "SWITCHBOARD_STORE", hide_env_values = true)]
    pub store: Option<String>,
    /// Admin API of a running hub; used when the store is held by it.
    #[arg(long, env = "SWITCHBOARD_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    #[arg(long, env = "SWITCHBOARD_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

fn status_help() -> String {
    format!(
        "Only runs with this status: {}",
        queries::status_names().join(", ")
    )
}

pub async fn runs(cmd: RunsCmd) -> ExitCode {
    match cmd {
        RunsCmd::List {
            src,
            page,
            status,
            recipe,
        } => {
            let page = page.query();
            let q = RunsQuery {
                limit: page.limit,
                before: page.before,
                status,
                recipe,
            };
            let answer = match Hub::open(&src) {
                Hub::Store(s) => queries::runs(&*s, &q).map_err(|e| e.to_string()),
                Hub::Api(api) => api.get(&["api", "runs"], &q).await,
            };
            print(&src, answer, render::runs)
        }
        RunsCmd::Show { id, src } => {
            let answer = match Hub::open(&src) {
                Hub::Store(s) => queries::run(&*s, &id).map_err(|e| e.to_string()),
                Hub::Api(api) => api.get(&["api", "runs", &id], &()).await,
            };
            print(&src, answer, render::run)
        }
        RunsCmd::Retry {
            id, recipe, src, ..
        } => {
            let now = store::now_ms();
            let answer = match (id, recipe, Hub::open(&src)) {
                (Some(id), _, Hub::Store(s)) => s
                    .retry_run(&id, now)
                    .map_err(queries::QueryError::from)
                    .and_then(|outcome| queries::retried(&id, outcome))
                    .map_err(|e| e.to_string()),
                (Some(id), _, Hub::Api(api)) => api.post(&["api", "runs", &id, "retry"], &()).await,
                (None, Some(recipe), Hub::Store(s)) => store::retry_failed(&*s, &recipe, now)
                    .map(|retried| RetriedRuns { retried })
                    .map_err(|e| e.to_string()),
                (None, Some(recipe), Hub::Api(api)) => {
                    api.post(&["api", "runs", "retry"], &[("recipe", recipe)])
                        .await
                }
                (None, None, _) => Err("give a run id, or --recipe NAME --failed".to_string()),
            };
            print(&src, answer, render::retried)
        }
    }
}

pub async fn events(cmd: EventsCmd) -> ExitCode {
    match cmd {
        EventsCmd::List { src, page } => {
            let q = page.query();
            let answer = match Hub::open(&src) {
                Hub::Store(s) => queries::events(&*s, &q).map_err(|e| e.to_string()),
                Hub::Api(api) => api.get(&["api", "events"], &q).await,
            };
            print(&src, answer, render::events)
        }
        EventsCmd::Show { id, src } => {
            let answer = match Hub::open(&src) {
                Hub::Store(s) => queries::event(&*s, &id).map_err(|e| e.to_string()),
                Hub::Api(api) => api.get(&["api", "events", &id], &()).await,
            };
            print(&src, answer, render::event)
        }
    }
}

/// `switchboard polls`: from the running hub (with what its files say), or
/// from the store alone (the stored status of each poll that ran).
pub async fn polls(src: Source) -> ExitCode {
    let answer = match Hub::open(&src) {
        Hub::Store(s) => queries::polls(&*s, None, store::now_ms()).map_err(|e| e.to_string()),
        Hub::Api(api) => api.get(&["api", "polls"], &()).await,
    };
    print(&src, answer, render::polls)
}

/// The answer as JSON or text, or the error; the exit status.
pub(crate) fn print<T: Serialize>(
    src: &Source,
    answer: Result<T, String>,
    text: fn(&T) -> String,
) -> ExitCode {
    match answer {
        Ok(v) if src.json => {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Ok(v) => {
            print!("{}", text(&v));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Who answers: the store itself when no hub holds it, else the hub's admin API.
pub(crate) enum Hub<'a> {
    Store(Box<dyn Store>),
    Api(Api<'a>),
}

impl<'a> Hub<'a> {
    pub(crate) fn open(src: &'a Source) -> Hub<'a> {
        match open_store(&src.data, src.store.as_deref()) {
            Some(store) => Hub::Store(store),
            None => Hub::Api(Api { src }),
        }
    }
}

fn open_store(data: &Path, store: Option<&str>) -> Option<Box<dyn Store>> {
    match Backend::parse(store, data) {
        Backend::Postgres(url) => match PgStore::open(&url) {
            Ok(s) => Some(Box::new(s)),
            Err(e) => {
                eprintln!("error: {e}");
                None
            }
        },
        Backend::Sled(dir) => {
            if !dir.exists() {
                return None;
            }
            SledStore::open(&dir)
                .ok()
                .map(|s| Box::new(s) as Box<dyn Store>)
        }
    }
}

/// The admin API of a running hub.
pub(crate) struct Api<'a> {
    pub(crate) src: &'a Source,
}

impl Api<'_> {
    pub(crate) async fn get<T: DeserializeOwned>(
        &self,
        path: &[&str],
        query: &impl Serialize,
    ) -> Result<T, String> {
        self.send(self.request(reqwest::Method::GET, path)?.query(query))
            .await
    }

    pub(crate) async fn post<T: DeserializeOwned>(
        &self,
        path: &[&str],
        query: &impl Serialize,
    ) -> Result<T, String> {
        self.send(self.request(reqwest::Method::POST, path)?.query(query))
            .await
    }

    /// A request to the hub's `path`, each segment percent-encoded on its
    /// own (a state key may hold `/`).
    pub(crate) fn request(
        &self,
        method: reqwest::Method,
        path: &[&str],
    ) -> Result<reqwest::RequestBuilder, String> {
        let src = self.src;
        let mut url =
            reqwest::Url::parse(&src.url).map_err(|e| format!("--url {}: {e}", src.url))?;
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().extend(path);
        }
        Ok(reqwest::Client::new().request(method, url))
    }

    /// Send an admin API request: its typed answer, or its error message.
    pub(crate) async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, String> {
        let src = self.src;
        let token = match &src.token {
            Some(t) => t.clone(),
            None => std::fs::read_to_string(server::token_path(&src.data))
                .map(|t| t.trim().to_string())
                .map_err(|_| {
                    format!(
                        "the store in {} is in use and no admin token was given (--token or SWITCHBOARD_ADMIN_TOKEN)",
                        src.data.display()
                    )
                })?,
        };
        let resp = req
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| format!("cannot reach the hub at {}: {e}", src.url))?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(body["message"]
                .as_str()
                .unwrap_or("request failed")
                .to_string());
        }
        serde_json::from_value(body).map_err(|e| format!("unexpected answer from the hub: {e}"))
    }
}
