//! Timers: when the next queued run comes due, and waking a worker then.
//!
//! Waits, retries, debounced runs and expired leases are queue entries with
//! a due time in the store; nothing waits in memory for them. An idle worker
//! sleeps until the earliest due time in the queue, by the engine's clock
//! (so a virtual clock in tests moves it, with no real time passing), and is
//! woken early when a run is stored due before that time
//! ([`Engine::queued_at`]). So a run due at T is leased at T, not on the
//! next poll.
//!
//! The hand-shake, without a lock: an idle worker registers for a wake-up,
//! sets [`Timer::sleeping_until`] to "unknown" (`i64::MAX`), reads the
//! queue's earliest due time and only then lowers `sleeping_until` to what
//! it will sleep until. A writer stores its entry first and then compares
//! its due time with `sleeping_until`. Either the writer sees "unknown" or a
//! later time and wakes the workers, or the worker's read of the queue came
//! after the writer's entry and found it. An early wake-up is harmless (the
//! worker looks at the queue again).

use super::Engine;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// Longest an idle worker sleeps before looking at the queue again, by the
/// engine's clock: a safety net for an entry stored without a wake-up (a
/// run whose concurrency turn has not come is re-queued at its lease's end)
/// and for a wall clock stepped forward. Not how timers fire: the
/// virtual-time test in `tests/it/time.rs` waits an hour of clock time.
pub(crate) const MAX_IDLE: Duration = Duration::from_secs(60);

/// How soon a worker looks again after the store failed to answer.
const AFTER_ERROR: Duration = Duration::from_millis(500);

#[derive(Debug)]
pub(crate) struct Timer {
    /// The time idle workers sleep until (ms, engine clock); `i64::MAX`
    /// while one of them is reading the queue.
    sleeping_until: AtomicI64,
}

impl Default for Timer {
    fn default() -> Self {
        Timer {
            sleeping_until: AtomicI64::new(i64::MAX),
        }
    }
}

impl Engine {
    /// A queue entry due at `due` (engine clock) was just stored: wake the
    /// idle workers if they sleep past it.
    pub(crate) fn queued_at(&self, due: i64) {
        if due < self.timer.sleeping_until.load(Ordering::SeqCst) {
            self.wake.notify_waiters();
        }
    }

    /// Until when an idle worker sleeps: the queue's earliest due time (at
    /// most [`MAX_IDLE`] ahead). Call after registering for a wake-up.
    pub(crate) fn idle_until(&self) -> i64 {
        self.timer.sleeping_until.store(i64::MAX, Ordering::SeqCst);
        let now = self.now_ms();
        let until = match self.store.next_due() {
            Ok(Some(due)) => due.min(now + MAX_IDLE.as_millis() as i64),
            Ok(None) => now + MAX_IDLE.as_millis() as i64,
            Err(e) => {
                tracing::error!(error = %e, "reading the queue failed");
                now + AFTER_ERROR.as_millis() as i64
            }
        };
        self.timer.sleeping_until.fetch_min(until, Ordering::SeqCst);
        until
    }

    /// Sleep until `at` by the engine's clock: the runtime's timer for the
    /// OS clock, a wake-up on each move for a virtual one.
    pub(crate) async fn sleep_until(&self, at: i64) {
        let clock = &*self.config.clock;
        loop {
            let now = clock.now_ms();
            if now >= at {
                return;
            }
            let mut virtual_clock = false;
            std::future::poll_fn(|cx| {
                // Registered before the second look, so a move in between wakes us.
                virtual_clock = clock.wake_on_move(cx.waker());
                if virtual_clock && clock.now_ms() < at {
                    std::task::Poll::Pending
                } else {
                    std::task::Poll::Ready(())
                }
            })
            .await;
            if !virtual_clock {
                tokio::time::sleep(Duration::from_millis((at - now) as u64)).await;
            }
        }
    }
}
