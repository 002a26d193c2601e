//! A store that heals itself after a write error.
//!
//! sled makes an I/O error sticky: once a write failed (a full disk), every
//! later call fails too, even after the space is back. [`Reopening`] wraps a
//! backend and, after an I/O error, drops it and opens it again (at most
//! once per [`RETRY_EVERY`]) until opening and a flush succeed. Nothing
//! acknowledged is lost: what was acknowledged was flushed, and reopening
//! recovers exactly the flushed state. Until it has recovered, every call
//! fails fast with the last error and [`Store::healthy`] says why, so
//! `/readyz` answers 503 naming the store.
//!
//! It also reopens a healthy backend on purpose, to give back memory
//! ([`Reopening::reopen_if_idle`]): sled keeps what it paged in and wrote
//! (its node cache, node copies, per-page state) for as long as it is open,
//! about 50 MiB after 100,000 events, while the same store opened afresh
//! holds only its page table (BENCHMARKS.md, "100,000 waiting runs"). A
//! planned reopen runs between calls: every call holds `calls` shared, the
//! reopen holds it exclusively, flushes (so every write made so far is
//! applied and durable, including those of writers still waiting for their
//! group commit), drops the backend and opens it again. Calls meanwhile
//! wait; none fails and none is lost.

use super::state::{StateEntry, StateKey, StateOp, StateOutput};
use super::{
    Event, Inserted, Page, Result, Retried, Run, RunFilter, RunHead, Store, StoreError, StoreStats,
    Swept,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

/// Least time between two attempts to reopen.
pub const RETRY_EVERY: Duration = Duration::from_millis(500);

type Open = Box<dyn Fn() -> Result<Arc<dyn Store>> + Send + Sync>;

pub struct Reopening {
    open: Open,
    /// The open backend; `None` while it is being (or could not be) reopened.
    current: RwLock<Option<Arc<dyn Store>>>,
    /// The error that broke the backend and when we last tried to reopen.
    broken: Mutex<Option<(String, Instant)>>,
    /// Held shared by every call for its whole length, exclusively by a
    /// planned reopen, so that one runs between calls.
    calls: RwLock<()>,
    /// Write calls since the backend was (re)opened.
    writes: AtomicU64,
    /// When the last write call began.
    last_write: Mutex<Instant>,
}

/// When [`Reopening::reopen_if_idle`] reopens: after this many write calls
/// since the last open and this long without one.
#[derive(Clone, Copy, Debug)]
pub struct ReopenPolicy {
    pub writes: u64,
    pub idle: Duration,
}

impl Reopening {
    /// Wrap an open backend; `open` opens it again after an I/O error.
    pub fn new(store: Arc<dyn Store>, open: Open) -> Reopening {
        Reopening {
            open,
            current: RwLock::new(Some(store)),
            broken: Mutex::new(None),
            calls: RwLock::new(()),
            writes: AtomicU64::new(0),
            last_write: Mutex::new(Instant::now()),
        }
    }

    /// Reopen the backend if `policy` says so (enough writes since the last
    /// open, none for a while); returns whether it did. Waits for calls in
    /// flight; calls made meanwhile wait for it.
    pub fn reopen_if_idle(&self, policy: ReopenPolicy) -> Result<bool> {
        let idle = |r: &Reopening| {
            r.writes.load(Ordering::Relaxed) >= policy.writes
                && lock(&r.last_write).elapsed() >= policy.idle
        };
        if !idle(self) {
            return Ok(false);
        }
        let _all = self.calls.write().unwrap_or_else(|p| p.into_inner());
        if !idle(self) || lock(&self.broken).is_some() {
            return Ok(false); // written meanwhile, or the error path owns it
        }
        self.reopen_now()?;
        Ok(true)
    }

    /// Flush, drop and reopen the backend; the caller holds `calls`
    /// exclusively, so no call is in flight and ours is the only handle.
    fn reopen_now(&self) -> Result<()> {
        let started = Instant::now();
        let writes = self.writes.swap(0, Ordering::Relaxed);
        let old = self
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(old) = old {
            if let Err(e) = old.flush() {
                // Keep it: the error path deals with a broken backend.
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(old);
                return Err(e);
            }
        }
        // sled's I/O threads may hold the old files (and their lock) for a
        // moment after the drop: try again for a while before giving up.
        let mut reopened = (self.open)().and_then(|s| s.flush().map(|_| s));
        while reopened.is_err() && started.elapsed() < OPEN_PATIENCE {
            std::thread::sleep(Duration::from_millis(10));
            reopened = (self.open)().and_then(|s| s.flush().map(|_| s));
        }
        match reopened {
            Ok(s) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(s);
                if let Some(release) = RELEASE_FREED.get() {
                    release();
                }
                tracing::info!(
                    writes,
                    ms = started.elapsed().as_millis() as u64,
                    "store reopened to release memory"
                );
                Ok(())
            }
            Err(e) => {
                // Closed and not reopened: the error path retries.
                tracing::error!(error = %e, "store could not be reopened");
                *lock(&self.broken) = Some((e.to_string(), Instant::now()));
                Err(e)
            }
        }
    }

    /// Run `f`, a call that writes, on the backend.
    fn write<T>(&self, f: impl FnOnce(&dyn Store) -> Result<T>) -> Result<T> {
        self.wrote();
        self.with(f)
    }

    fn wrote(&self) {
        self.writes.fetch_add(1, Ordering::Relaxed);
        *lock(&self.last_write) = Instant::now();
    }

    fn backend(&self) -> Result<Arc<dyn Store>> {
        let mut broken = self.broken.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((why, last_try)) = broken.as_mut() {
            if last_try.elapsed() < RETRY_EVERY {
                return Err(StoreError::Io(format!("store unavailable: {why}")));
            }
            *last_try = Instant::now();
            // Drop our handle first: the backend holds a file lock until
            // every handle is gone (a call in flight may delay that; the
            // next attempt then succeeds).
            self.current
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            let reopened = (self.open)().and_then(|s| s.flush().map(|_| s));
            match reopened {
                Ok(s) => {
                    tracing::warn!(after = %why, "store reopened after a write error");
                    *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(s);
                    *broken = None;
                }
                Err(e) => {
                    *why = e.to_string();
                    return Err(StoreError::Io(format!("store unavailable: {why}")));
                }
            }
        }
        drop(broken);
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| StoreError::Io("store unavailable: reopening".into()))
    }

    /// Run `f` on the backend; an I/O error marks it broken.
    fn with<T>(&self, f: impl FnOnce(&dyn Store) -> Result<T>) -> Result<T> {
        let _call = self.calls.read().unwrap_or_else(|p| p.into_inner());
        let store = self.backend()?;
        let result = f(&*store);
        if let Err(StoreError::Io(why)) = &result {
            let mut broken = self.broken.lock().unwrap_or_else(|p| p.into_inner());
            if broken.is_none() {
                tracing::error!(error = %why, "store write failed; reopening it once space is back");
                *broken = Some((why.clone(), Instant::now()));
            }
        }
        result
    }
}

/// The policy `serve` uses: [`REOPEN_AFTER_WRITES`] writes, then
/// `SWITCHBOARD_SLED_REOPEN_IDLE` seconds without one (default
/// [`REOPEN_IDLE`]; `0`: never reopen to release memory).
pub fn policy_from_env() -> Option<ReopenPolicy> {
    let idle = match std::env::var("SWITCHBOARD_SLED_REOPEN_IDLE") {
        Ok(v) => Duration::from_secs(v.trim().parse::<u64>().ok()?),
        Err(_) => REOPEN_IDLE,
    };
    (!idle.is_zero()).then_some(ReopenPolicy {
        writes: REOPEN_AFTER_WRITES,
        idle,
    })
}

static RELEASE_FREED: OnceLock<fn()> = OnceLock::new();

/// What hands freed memory back to the system after a planned reopen. The
/// `switchboard` binary sets glibc's `malloc_trim` (this library has no
/// unsafe code): without it the reopen frees sled's state inside the
/// process but glibc keeps the pages (BENCHMARKS.md).
pub fn set_release_freed(f: fn()) {
    let _ = RELEASE_FREED.set(f);
}

/// How long a planned reopen keeps trying to open the store again.
const OPEN_PATIENCE: Duration = Duration::from_secs(5);

/// Write calls after which an idle store is reopened to release memory.
pub const REOPEN_AFTER_WRITES: u64 = 10_000;
/// How long without a write counts as idle.
pub const REOPEN_IDLE: Duration = Duration::from_secs(10);

/// A thread that asks `store` to [`Reopening::reopen_if_idle`] every few
/// seconds, for as long as the store exists.
pub fn reopen_when_idle(store: &Arc<Reopening>, policy: ReopenPolicy) {
    let store = Arc::downgrade(store);
    let every = policy
        .idle
        .clamp(Duration::from_millis(100), Duration::from_secs(5));
    let spawned = std::thread::Builder::new()
        .name("store-reopen".into())
        .spawn(move || loop {
            std::thread::sleep(every);
            let Some(store) = store.upgrade() else { return };
            if let Err(e) = store.reopen_if_idle(policy) {
                tracing::warn!(error = %e, "store not reopened");
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no store-reopen thread: sled's memory is not released");
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Store for Reopening {
    fn healthy(&self) -> Result<()> {
        self.with(|s| s.healthy())
    }
    fn insert_event_matching(
        &self,
        event: &Event,
        runs: &[Run],
        probes: &[super::Correlation],
        now: i64,
    ) -> Result<(Inserted, super::Matched)> {
        self.write(|s| s.insert_event_matching(event, runs, probes, now))
    }
    fn park(&self, run: &Run, previous_due: i64) -> Result<()> {
        self.write(|s| s.park(run, previous_due))
    }
    fn flush(&self) -> Result<()> {
        self.with(|s| s.flush())
    }
    fn prepare_sync(&self) -> Result<()> {
        self.with(|s| s.prepare_sync())
    }
    fn sync(&self) -> Result<()> {
        self.with(|s| s.sync())
    }
    fn event(&self, id: &str) -> Result<Option<Event>> {
        self.with(|s| s.event(id))
    }
    fn events(&self, page: &Page) -> Result<Vec<Event>> {
        self.with(|s| s.events(page))
    }
    fn run(&self, id: &str) -> Result<Option<Run>> {
        self.with(|s| s.run(id))
    }
    fn runs(&self, page: &Page, filter: &RunFilter) -> Result<Vec<Run>> {
        self.with(|s| s.runs(page, filter))
    }
    fn event_times(&self, since: i64, max: usize) -> Result<Vec<i64>> {
        self.with(|s| s.event_times(since, max))
    }
    fn run_heads(&self, since: i64, max: usize) -> Result<Vec<RunHead>> {
        self.with(|s| s.run_heads(since, max))
    }
    fn event_by_delivery(&self, connector: &str, delivery_id: &str) -> Result<Option<Event>> {
        self.with(|s| s.event_by_delivery(connector, delivery_id))
    }
    fn lease(&self, now: i64, lease_ms: i64, max: usize) -> Result<Vec<Run>> {
        let leased = self.with(|s| s.lease(now, lease_ms, max))?;
        if !leased.is_empty() {
            self.wrote();
        }
        Ok(leased)
    }
    fn save_run(&self, run: &Run) -> Result<()> {
        self.write(|s| s.save_run(run))
    }
    fn finish_run(&self, run: &Run) -> Result<()> {
        self.write(|s| s.finish_run(run))
    }
    fn reschedule(&self, run: &Run, previous_due: i64) -> Result<()> {
        self.write(|s| s.reschedule(run, previous_due))
    }
    fn retry_run(&self, id: &str, now: i64) -> Result<Retried> {
        self.write(|s| s.retry_run(id, now))
    }
    fn release_leases(&self, now: i64) -> Result<usize> {
        self.with(|s| s.release_leases(now))
    }
    fn cancel_requested(&self, run_id: &str) -> Result<Option<String>> {
        self.with(|s| s.cancel_requested(run_id))
    }
    fn queue_depth(&self) -> Result<usize> {
        self.with(|s| s.queue_depth())
    }
    fn queue_counts(&self) -> Result<super::QueueCounts> {
        self.with(|s| s.queue_counts())
    }
    fn stats(&self, scan: bool) -> Result<StoreStats> {
        self.with(|s| s.stats(scan))
    }
    fn key_usage(&self) -> Result<Vec<super::KeyUsage>> {
        self.with(|s| s.key_usage())
    }
    fn expire(&self, cutoff: i64, max: usize) -> Result<super::retention::Expired> {
        let expired = self.with(|s| s.expire(cutoff, max))?;
        if expired.events > 0 {
            self.wrote();
        }
        Ok(expired)
    }
    fn next_due(&self) -> Result<Option<i64>> {
        self.with(|s| s.next_due())
    }
    fn schedule_cursor(&self, recipe: &str) -> Result<Option<i64>> {
        self.with(|s| s.schedule_cursor(recipe))
    }
    fn set_schedule_cursor(&self, recipe: &str, slot: i64) -> Result<()> {
        self.write(|s| s.set_schedule_cursor(recipe, slot))
    }
    fn apply_state(
        &self,
        op: &StateOp,
        now: i64,
        checkpoint: &mut dyn FnMut(&StateOutput) -> Option<Run>,
    ) -> Result<StateOutput> {
        self.write(|s| s.apply_state(op, now, checkpoint))
    }
    fn state_entries(
        &self,
        namespace: Option<&str>,
        after: Option<&[u8]>,
        limit: usize,
        now: i64,
    ) -> Result<Vec<StateEntry>> {
        self.with(|s| s.state_entries(namespace, after, limit, now))
    }
    fn state_get(&self, key: &StateKey, now: i64) -> Result<Vec<StateEntry>> {
        self.with(|s| s.state_get(key, now))
    }
    fn sweep_state(&self, now: i64, max: usize) -> Result<Swept> {
        self.with(|s| s.sweep_state(now, max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sled::SledStore;
    use crate::store::{Event, Run};

    fn reopening(dir: &std::path::Path) -> Arc<Reopening> {
        let d = dir.to_path_buf();
        Arc::new(Reopening::new(
            Arc::new(SledStore::open(dir).unwrap()),
            Box::new(move || Ok(Arc::new(SledStore::open(&d)?) as Arc<dyn Store>)),
        ))
    }

    fn event(id: &str) -> Event {
        Event {
            id: id.into(),
            delivery_id: Some(id.into()),
            ..crate::store::conformance::event(None)
        }
    }

    #[test]
    fn reopening_under_concurrent_writes_loses_nothing() {
        // Writers insert and flush events (as the group commit does) while
        // another thread reopens the store as often as it can: every write
        // must succeed (calls wait for a reopen, none fails) and every
        // event must be there after the last reopen.
        let dir = tempfile::tempdir().unwrap();
        let store = reopening(dir.path());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reopener = {
            let (store, stop) = (store.clone(), stop.clone());
            std::thread::spawn(move || {
                let every = ReopenPolicy {
                    writes: 0,
                    idle: Duration::ZERO,
                };
                let mut n = 0;
                while !stop.load(Ordering::Acquire) {
                    n += usize::from(store.reopen_if_idle(every).unwrap());
                }
                n
            })
        };
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let mut ids = Vec::new();
                    for i in 0..150 {
                        let id = format!("e{w}-{i:04}");
                        store.insert_event(&event(&id), &[] as &[Run]).unwrap();
                        if i % 3 == 0 {
                            store.flush().unwrap();
                        }
                        ids.push(id);
                    }
                    ids
                })
            })
            .collect();
        let ids: Vec<String> = writers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        stop.store(true, Ordering::Release);
        let reopened = reopener.join().unwrap();
        assert!(reopened > 1, "the store was reopened {reopened} times");
        store.flush().unwrap();
        drop(store);
        let store = reopening(dir.path());
        for id in &ids {
            assert!(store.event(id).unwrap().is_some(), "{id} lost");
        }
    }

    #[test]
    fn only_an_idle_store_that_was_written_to_is_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let store = reopening(dir.path());
        let policy = ReopenPolicy {
            writes: 2,
            idle: Duration::from_millis(50),
        };
        store.insert_event(&event("e1"), &[] as &[Run]).unwrap();
        assert!(
            !store.reopen_if_idle(policy).unwrap(),
            "one write is not enough"
        );
        store.insert_event(&event("e2"), &[] as &[Run]).unwrap();
        assert!(
            !store.reopen_if_idle(policy).unwrap(),
            "just written: not idle"
        );
        std::thread::sleep(Duration::from_millis(60));
        assert!(store.reopen_if_idle(policy).unwrap());
        assert!(
            !store.reopen_if_idle(policy).unwrap(),
            "the count starts again"
        );
        assert!(store.event("e2").unwrap().is_some());
    }
}
