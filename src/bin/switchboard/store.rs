//! `switchboard store ...`: what the store holds.
//!
//! Answered by the store itself when no hub holds it, else by the running
//! hub's admin API (`GET /api/store/stats`), like `runs` and `events`.

use crate::inspect::{print, Hub, Source};
use crate::render;
use clap::Subcommand;
use serde::Serialize;
use std::process::ExitCode;
use switchboard::store::{pg, pg::PgStore, sled::SledStore, Backend, StoreStats};

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
        /// Also count keys and bytes by key prefix (a full scan): the live
        /// data against the bytes on disk, and what each kind of key costs.
        #[arg(long)]
        keys: bool,
    },
    /// Give disk space back: rewrite a stopped hub's embedded store into a
    /// fresh one and swap it in.
    ///
    /// The store's file never shrinks by itself: it stays at the largest
    /// size it ever had (retention's freed space is reused, not returned).
    /// This copies every key into `<store>/compact.tmp`, checks the copy
    /// (every key and value, and the counts) and swaps it in; a crash at
    /// any point leaves the old or the new store, complete, and the next
    /// start finishes or drops the swap. Needs free disk about the size of
    /// the live data (`store stats --keys`). Stop the hub first: the store
    /// has one owner.
    Compact {
        #[arg(long, env = "SWITCHBOARD_DATA", default_value = "data")]
        data: std::path::PathBuf,
        /// The store directory, if not `<data>/store`.
        #[arg(long, env = "SWITCHBOARD_STORE", hide_env_values = true)]
        store: Option<String>,
    },
    /// Copy a stopped hub's embedded store into an empty PostgreSQL database.
    ///
    /// Events, runs with their queue (waiting runs keep their time and keys,
    /// runs a stopped hub had leased are due at once), recipe state, schedule
    /// cursors; then both sides are counted and must agree (exit status 1 if
    /// not). Stop the hub first: the embedded store has one owner.
    Copy {
        /// The data directory (or its `store` directory) of the embedded store.
        #[arg(long, default_value = "data")]
        from: std::path::PathBuf,
        /// The database: `postgres://user@host/db` (migrated if needed).
        #[arg(long)]
        to: String,
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
    keys: bool,
}

pub async fn store(cmd: StoreCmd) -> ExitCode {
    match cmd {
        StoreCmd::Copy { from, to } => copy(&from, &to),
        StoreCmd::Migrate { store } => {
            let Backend::Postgres(url) = Backend::parse(Some(&store), std::path::Path::new(""))
            else {
                eprintln!("error: --store must be a postgres:// URL (sled needs no migration)");
                return ExitCode::FAILURE;
            };
            match PgStore::migrate(&url) {
                Ok(applied) if applied.is_empty() => {
                    println!(
                        "schema up to date (version {})",
                        pg::schema::MIGRATIONS.len()
                    );
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
        StoreCmd::Compact { data, store } => compact(&data, store.as_deref()),
        StoreCmd::Stats { src, scan, keys } => {
            let answer: Result<StoreStats, String> = match Hub::open(&src) {
                Hub::Store(s) => (|| {
                    let mut st = s.stats(scan).map_err(|e| e.to_string())?;
                    if keys {
                        st.keys = s
                            .key_usage()
                            .map_err(|e| e.to_string())?
                            .ok_or(switchboard::store::NO_KEY_USAGE)?;
                    }
                    Ok(st)
                })(),
                Hub::Api(api) => {
                    api.get(&["api", "store", "stats"], &ScanQuery { scan, keys })
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

fn copy(from: &std::path::Path, to: &str) -> ExitCode {
    let Backend::Postgres(url) = Backend::parse(Some(to), std::path::Path::new("")) else {
        eprintln!("error: --to must be a postgres:// URL");
        return ExitCode::FAILURE;
    };
    let dir = if from.join("store").is_dir() {
        from.join("store")
    } else {
        from.to_path_buf()
    };
    if !dir.join("conf").exists() {
        eprintln!("error: no embedded store in {}", from.display());
        return ExitCode::FAILURE;
    }
    let source = match SledStore::open(&dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "error: cannot open {}: {e} (is a hub still running on it?)",
                dir.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let target = match PgStore::open(&url) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let now = switchboard::store::now_ms();
    match switchboard::store::copy::sled_to_pg(&source, &target, now, |n| {
        eprintln!("{n} events copied");
    }) {
        Ok(c) => {
            println!(
                "copied {} events, {} runs ({} unfinished), {} state entries, {} schedule cursors; counts verified",
                c.counts.events,
                c.counts.runs_total(),
                c.counts.queue_depth + c.counts.status(switchboard::store::RunStatus::Waiting),
                c.state_entries,
                c.schedule_cursors
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn compact(data: &std::path::Path, store: Option<&str>) -> ExitCode {
    let Backend::Sled(dir) = Backend::parse(store, data) else {
        eprintln!(
            "error: compaction is for the embedded store (PostgreSQL gives space back with VACUUM)"
        );
        return ExitCode::FAILURE;
    };
    if !dir.join("conf").exists() {
        eprintln!("error: no embedded store in {}", dir.display());
        return ExitCode::FAILURE;
    }
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    match switchboard::store::compact::compact(&dir, |n| eprintln!("{n} keys copied")) {
        Ok(c) => {
            println!(
                "compacted {}: {:.1} MiB -> {:.1} MiB in {:.1} s; {} keys ({:.1} MiB of keys and values) copied and verified: {} events, {} runs ({} unfinished), {} state entries",
                dir.display(),
                mib(c.bytes_before),
                mib(c.bytes_after),
                c.elapsed.as_secs_f64(),
                c.keys,
                mib(c.data_bytes),
                c.counts.events,
                c.counts.runs_total(),
                c.counts.queue_depth + c.counts.status(switchboard::store::RunStatus::Waiting),
                c.state_entries,
            );
            ExitCode::SUCCESS
        }
        Err(switchboard::store::StoreError::InUse(_)) => {
            eprintln!(
                "error: the store in {} is in use: stop the hub first (compaction needs the store to itself; nothing was changed)",
                dir.display()
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!(
                "error: compaction of {} failed, the store is unchanged: {e}",
                dir.display()
            );
            ExitCode::FAILURE
        }
    }
}
