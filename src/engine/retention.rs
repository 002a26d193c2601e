//! Retention in the background: every tick, delete events (with their
//! runs and keys) older than the window, in chunks of [`CHUNK`] events,
//! each its own short batch under the store lock, yielding between chunks
//! so ingest never waits for more than one (see `store::retention` for
//! what is kept: unfinished runs and dead letters, with their events).
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
pub const CHUNK: usize = 256;
/// Chunks per tick: a tick deletes at most `CHUNK * CHUNKS` events, so a
/// backlog of old events (retention turned on for a full store) is worked
/// off over several ticks rather than in one long burst.
pub const CHUNKS: usize = 40;
/// Longest time between two ticks.
const MAX_TICK: Duration = Duration::from_secs(30);

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
    async fn retain(self: Arc<Self>, window: Duration, mut shutdown: watch::Receiver<bool>) {
        // A quarter of the window (so an event outlives it by at most a
        // quarter), at most 30 s, at least 50 ms.
        let tick = (window / 4).clamp(Duration::from_millis(50), MAX_TICK);
        while !*shutdown.borrow() {
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = shutdown.changed() => return,
            }
            let cutoff = self.now_ms() - window.as_millis() as i64;
            let (mut events, mut runs) = (0, 0);
            for _ in 0..CHUNKS {
                let store = self.store.clone();
                let chunk = tokio::task::spawn_blocking(move || store.expire(cutoff, CHUNK)).await;
                match chunk {
                    Ok(Ok(x)) => {
                        events += x.events;
                        runs += x.runs;
                        if x.cycle_done {
                            break;
                        }
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "retention: deleting old events failed");
                        break;
                    }
                    Err(_) => break,
                }
                if *shutdown.borrow() {
                    return;
                }
            }
            if events > 0 {
                tracing::debug!(events, runs, "retention: old events deleted");
            }
        }
    }
}
