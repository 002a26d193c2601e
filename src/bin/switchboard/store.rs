//! `switchboard store ...`: what the store holds.
//!
//! Answered by the store itself when no hub holds it, else by the running
//! hub's admin API (`GET /api/store/stats`), like `runs` and `events`.

use crate::inspect::{print, Hub, Source};
use crate::render;
use clap::Subcommand;
use serde::Serialize;
use std::process::ExitCode;
use switchboard::store::{pg, pg::PgStore, Backend, StoreStats};

#[derive(Subcommand)]
pub enum StoreCmd {
    /// Counts (events, runs by status, queue depth, state entries) and bytes on disk.
    ///
    /// The counts come from counters kept with the records (no scan). With
    /// --scan, everything is also recounted from the records and the index
    /// checked; the exit status is 1 if they disagree.
    Stats {
        #[command(flatten)]
        src: Source,
        /// Recount by a full scan of the records (slow on a big store).
        #[arg(long)]
        scan: bool,
    },
    /// Create or upgrade the PostgreSQL schema (`serve` does it at start too).
    ///
    /// Applies the numbered migrations the database lacks, in order, each in
    /// its own transaction; nodes starting at once take turns.
    Migrate {
        /// The database: `postgres://user@host/db`.
        #[arg(long, env = "SWITCHBOARD_STORE", hide_env_values = true)]
        store: String,
    },
}

#[derive(Serialize)]
struct ScanQuery {
    scan: bool,
}

pub async fn store(cmd: StoreCmd) -> ExitCode {
    match cmd {
        StoreCmd::Migrate { store } => {
            let Backend::Postgres(url) = Backend::parse(Some(&store), std::path::Path::new("")) else {
                eprintln!("error: --store must be a postgres:// URL (sled needs no migration)");
                return ExitCode::FAILURE;
            };
            match PgStore::migrate(&url) {
                Ok(applied) if applied.is_empty() => {
                    println!("schema up to date (version {})", pg::schema::MIGRATIONS.len());
                    ExitCode::SUCCESS
                }
                Ok(applied) => {
                    let v: Vec<String> = applied.iter().map(|v| v.to_string()).collect();
                    println!("applied migrations {}", v.join(", "));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        StoreCmd::Stats { src, scan } => {
            let answer: Result<StoreStats, String> = match Hub::open(&src) {
                Hub::Store(s) => s.stats(scan).map_err(|e| e.to_string()),
                Hub::Api(api) => {
                    api.get(&["api", "store", "stats"], &ScanQuery { scan })
                        .await
                }
            };
            let agree = answer.as_ref().is_ok_and(|s| {
                s.problems.is_empty() && s.scanned.as_ref().is_none_or(|c| *c == s.counts)
            });
            let code = print(&src, answer, render::store_stats);
            if code == ExitCode::SUCCESS && !agree {
                eprintln!("error: the counters disagree with a full scan of the records");
                return ExitCode::FAILURE;
            }
            code
        }
    }
}
