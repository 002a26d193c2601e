//! Retention in the background: every tick, delete events (with their
//! runs and keys) older than the window, in chunks of [`CHUNK`] events,
//! each its own short batch under the store lock, and after each chunk a
//! pause as long as the chunk took, so ingest gets the store lock and at
//! least half the time between chunks (see `store::retention` for what is
//! kept: unfinished runs and dead letters, with their events). Back to
//! back, 256-event chunks stalled ingest for a whole pass: each held the
//! lock ~11 ms, and the next began as soon as the last ended (e2e p50 of
//! events sent during a pass 186 ms; BENCHMARKS.md).
//! A pass stops after [`CHUNKS`] chunks; if it stopped short of the
//! window, the next starts after [`BACKLOG_PAUSE`] instead of a full tick,
//! so retention keeps up with any ingest the store can take (a full tick
//! between capped passes deleted at most 341 events/s: at 1,000/s the
//! store grew without bound).
//!
//! Nothing is flushed here: a deletion lost in a crash is done again by
//! the next pass, so a pass needs no fsync of its own (the next group
//! commit makes it durable). Must never: hold the store for a whole pass.

use super::Engine;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The default window (`serve --retention`).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// Events one chunk looks at (one batch, one hold of the store lock).
pub const CHUNK: usize = 64;
/// Chunks per tick: a tick deletes at most `CHUNK * CHUNKS` (10,240)
/// events, so a backlog of old events (retention turned on for a full
/// store) is worked off over several ticks rather than in one long burst.
pub const CHUNKS: usize = 160;
/// Longest time between two ticks.
const MAX_TICK: Duration = Duration::from_secs(30);
/// Time between a pass that stopped at its budget with old events left
/// and the next pass: ingest gets the store between bursts, and retention
/// still deletes up to `CHUNK * CHUNKS` events a second.
pub const BACKLOG_PAUSE: Duration = Duration::from_secs(1);

/// Start the retention task if the engine has a window.
pub fn spawn(
    engine: &Arc<Engine>,
    shutdown: watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    let window = engine.config.retention?;
    let engine = engine.clone();
    Some(tokio::spawn(async move {
        engine.retain(window, shutdown).await
    }))
}

impl Engine {
    async fn retain(self: Arc<Self>, window: Duration, shutdown: watch::Receiver<bool>) {
        // A quarter of the window (so an event outlives it by at most a
        // quarter), at most 30 s, at least 50 ms.
        let tick = (window / 4).clamp(Duration::from_millis(50), MAX_TICK);
        passes(tick, shutdown, || {
            let store = self.store.clone();
            let cutoff = self.now_ms() - window.as_millis() as i64;
            async move {
                match tokio::task::spawn_blocking(move || store.expire(cutoff, CHUNK)).await {
                    Ok(Ok(x)) => Some(x),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "retention: deleting old events failed");
                        None
                    }
                    Err(_) => None,
                }
            }
        })
        .await
    }
}

/// The passes of retention until shutdown: each pass calls `chunk` up to
/// [`CHUNKS`] times (`None`: it failed, end the pass), pausing after each
/// as long as it took, and waits a `tick`
/// after a pass that reached the window, [`BACKLOG_PAUSE`] after one that
/// stopped at its budget.
async fn passes<F, Fut>(tick: Duration, mut shutdown: watch::Receiver<bool>, mut chunk: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<crate::store::retention::Expired>>,
{
    let mut wait = tick;
    while !*shutdown.borrow() {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
        let started = tokio::time::Instant::now();
        let (mut events, mut runs, mut chunks) = (0, 0, 0);
        let mut backlog = false;
        for i in 0..CHUNKS {
            let took = tokio::time::Instant::now();
            let Some(x) = chunk().await else { break };
            events += x.events;
            runs += x.runs;
            chunks += 1;
            if x.cycle_done {
                break;
            }
            backlog = i + 1 == CHUNKS;
            if *shutdown.borrow() {
                return;
            }
            // Yield to ingest: at most half of the pass holds the store.
            tokio::time::sleep(took.elapsed()).await;
        }
        wait = if backlog { BACKLOG_PAUSE } else { tick };
        if events > 0 {
            // One line a pass (at most one a second): when passes run and
            // what they cost, next to the latency they may add.
            tracing::info!(
                events,
                runs,
                chunks,
                backlog,
                ms = started.elapsed().as_millis() as u64,
                "retention pass"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::retention::Expired;
    use std::cell::Cell;
    use std::rc::Rc;

    /// Retention keeps up with an ingest of 1,000 events a second over a
    /// 5-minute window (a 75 s tick: 75,000 new old events a tick, seven
    /// times what one pass may delete).
    #[tokio::test(start_paused = true)]
    async fn passes_keep_up_with_an_ingest_above_one_pass_a_tick() {
        const RATE: u64 = 1_000; // events a second
        let tick = Duration::from_secs(75);
        let t0 = tokio::time::Instant::now();
        // Events older than the window are those sent more than 300 s ago;
        // `deleted` of them are gone.
        let deleted = Rc::new(Cell::new(0u64));
        let old = move || (t0.elapsed().as_secs()).saturating_sub(300) * RATE;
        let (stop, shutdown) = watch::channel(false);
        let d = deleted.clone();
        let task = passes(tick, shutdown, move || {
            let d = d.clone();
            async move {
                let left = old() - d.get();
                let n = left.min(CHUNK as u64);
                d.set(d.get() + n);
                Some(Expired {
                    events: n as usize,
                    cycle_done: n < CHUNK as u64,
                    ..Expired::default()
                })
            }
        });
        let check = async {
            // After an hour, what is left older than the window is at most
            // what arrives between two passes.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            let left = old() - deleted.get();
            stop.send(true).unwrap();
            left
        };
        let ((), left) = tokio::join!(task, check);
        assert!(
            left <= tick.as_secs() * RATE,
            "{left} old events left after an hour"
        );
        assert!(
            deleted.get() >= (3600 - 300 - 75) * RATE,
            "{}",
            deleted.get()
        );
    }
}
