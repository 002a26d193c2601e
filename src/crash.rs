//! Crash points for the crash-safety test: `SWITCHBOARD_CRASH_AT=<point>:<n>`
//! aborts the process the `n`-th time execution reaches `point` (several
//! separated by commas). Compiled only into debug builds (what `cargo test`
//! runs); in a release build [`point`] is an empty inline function and the
//! variable is ignored.
//!
//! The points sit where a crash is most interesting for durability:
//! - `group.apply`: the group commit took its waiters, nothing applied yet;
//! - `group.flush`: the group's batch is applied to sled, not yet flushed;
//! - `group.answer`: flushed, no waiter answered yet (durable, unacknowledged);
//! - `step.called`: a call returned, its record not yet durable;
//! - `oauth.answered` / `oauth.persisted`: an OAuth2 token endpoint answered,
//!   before / after the new tokens were written to the token file.
//!
//! `std::process::abort` ends the process at once, like `kill -9`: no
//! destructor runs, nothing is flushed on the way out.

/// Abort here if `SWITCHBOARD_CRASH_AT` asks for it (debug builds only).
#[cfg(debug_assertions)]
pub fn point(name: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    /// (point, abort at this hit, hits so far).
    static PLAN: OnceLock<Vec<(String, u64, AtomicU64)>> = OnceLock::new();
    let plan = PLAN.get_or_init(|| {
        std::env::var("SWITCHBOARD_CRASH_AT")
            .unwrap_or_default()
            .split(',')
            .filter_map(|p| {
                let (name, n) = p.trim().rsplit_once(':')?;
                Some((name.to_string(), n.parse().ok()?, AtomicU64::new(0)))
            })
            .collect()
    });
    for (p, at, hits) in plan {
        if p == name && hits.fetch_add(1, Ordering::SeqCst) + 1 == *at {
            eprintln!("switchboard: crash point {name} reached ({at}): aborting");
            std::process::abort();
        }
    }
}

/// Release builds carry no crash points.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn point(_name: &str) {}
