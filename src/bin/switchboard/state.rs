//! `switchboard state …`: on the store directly when no hub holds it, else
//! through the admin API; both run the same queries (`admin::state`).

use crate::inspect::{print, Hub, Source};
use crate::render;
use clap::Subcommand;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::process::ExitCode;
use switchboard::admin::state::{self as q, StatePage};
use switchboard::store::{self, state::StateEntry, Store};

#[derive(Subcommand)]
pub enum StateCmd {
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

/// The entries of one key, as the admin API answers them.
#[derive(Debug, Serialize, Deserialize)]
pub struct Entries {
    pub items: Vec<StateEntry>,
}

/// The answer to a delete.
#[derive(Debug, Serialize, Deserialize)]
pub struct Deleted {
    pub deleted: bool,
}

#[derive(Serialize)]
struct ListQuery<'a> {
    limit: usize,
    namespace: Option<&'a str>,
    after: Option<&'a str>,
}

pub async fn state(cmd: StateCmd) -> ExitCode {
    let now = store::now_ms();
    match cmd {
        StateCmd::List {
            namespace,
            limit,
            after,
            src,
        } => {
            let answer: Result<StatePage, String> = match Hub::open(&src) {
                Hub::Store(s) => q::list(&*s, namespace.as_deref(), after.as_deref(), limit, now)
                    .map_err(|e| e.to_string()),
                Hub::Api(api) => {
                    let query = ListQuery {
                        limit,
                        namespace: namespace.as_deref(),
                        after: after.as_deref(),
                    };
                    api.get(&["api", "state"], &query).await
                }
            };
            print(&src, answer, render::state_page)
        }
        StateCmd::Get {
            namespace,
            key,
            src,
        } => {
            let answer = match Hub::open(&src) {
                Hub::Store(s) => q::show(&*s, &namespace, &key, now)
                    .map(|items| Entries { items })
                    .map_err(|e| e.to_string()),
                Hub::Api(api) => api.get(&["api", "state", &namespace, &key], &()).await,
            };
            print(&src, answer, render::state_entries)
        }
        StateCmd::Set {
            namespace,
            key,
            value,
            ttl,
            src,
        } => {
            let value = cli_value(&value);
            let answer = match Hub::open(&src) {
                Hub::Store(s) => ttl
                    .as_deref()
                    .map(q::parse_ttl)
                    .transpose()
                    .and_then(|ttl| q::set(&*s, &namespace, &key, value, ttl, now))
                    .map(|items| Entries { items })
                    .map_err(|e| e.to_string())
                    .and_then(|v| flushed(&*s, v)),
                Hub::Api(api) => {
                    match api.request(reqwest::Method::PUT, &["api", "state", &namespace, &key]) {
                        Ok(req) => {
                            api.send(req.json(&json!({ "value": value, "ttl": ttl })))
                                .await
                        }
                        Err(e) => Err(e),
                    }
                }
            };
            print(&src, answer, render::state_entries)
        }
        StateCmd::Delete {
            namespace,
            key,
            src,
        } => {
            let answer = match Hub::open(&src) {
                Hub::Store(s) => match q::delete(&*s, &namespace, &key, now) {
                    Ok(true) => flushed(&*s, Deleted { deleted: true }),
                    Ok(false) => Err(q::QueryError::NotFound(format!(
                        "no state `{key}` in namespace `{namespace}`"
                    ))
                    .to_string()),
                    Err(e) => Err(e.to_string()),
                },
                Hub::Api(api) => match api
                    .request(reqwest::Method::DELETE, &["api", "state", &namespace, &key])
                {
                    Ok(req) => api.send(req).await,
                    Err(e) => Err(e),
                },
            };
            print(&src, answer, render::deleted)
        }
    }
}

/// `answer` once the store's writes are durable.
fn flushed<T>(store: &dyn Store, answer: T) -> Result<T, String> {
    store.flush().map_err(|e| e.to_string())?;
    Ok(answer)
}

/// A value given on the command line: JSON if it parses, else the text.
fn cli_value(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}
