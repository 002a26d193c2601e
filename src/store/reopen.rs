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

use super::state::{StateEntry, StateKey, StateOp, StateOutput};
use super::{
    Event, Inserted, Page, Result, Retried, Run, RunFilter, RunHead, Store, StoreError, StoreStats,
    Swept,
};
use std::sync::{Arc, Mutex, RwLock};
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
}

impl Reopening {
    /// Wrap an open backend; `open` opens it again after an I/O error.
    pub fn new(store: Arc<dyn Store>, open: Open) -> Reopening {
        Reopening {
            open,
            current: RwLock::new(Some(store)),
            broken: Mutex::new(None),
        }
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
        self.with(|s| s.insert_event_matching(event, runs, probes, now))
    }
    fn park(&self, run: &Run, previous_due: i64) -> Result<()> {
        self.with(|s| s.park(run, previous_due))
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
        self.with(|s| s.lease(now, lease_ms, max))
    }
    fn save_run(&self, run: &Run) -> Result<()> {
        self.with(|s| s.save_run(run))
    }
    fn finish_run(&self, run: &Run) -> Result<()> {
        self.with(|s| s.finish_run(run))
    }
    fn reschedule(&self, run: &Run, previous_due: i64) -> Result<()> {
        self.with(|s| s.reschedule(run, previous_due))
    }
    fn retry_run(&self, id: &str, now: i64) -> Result<Retried> {
        self.with(|s| s.retry_run(id, now))
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
    fn key_usage(&self) -> Result<Option<Vec<super::KeyUsage>>> {
        self.with(|s| s.key_usage())
    }
    fn expire(&self, cutoff: i64, max: usize) -> Result<super::retention::Expired> {
        self.with(|s| s.expire(cutoff, max))
    }
    fn next_due(&self) -> Result<Option<i64>> {
        self.with(|s| s.next_due())
    }
    fn schedule_cursor(&self, recipe: &str) -> Result<Option<i64>> {
        self.with(|s| s.schedule_cursor(recipe))
    }
    fn set_schedule_cursor(&self, recipe: &str, slot: i64) -> Result<()> {
        self.with(|s| s.set_schedule_cursor(recipe, slot))
    }
    fn apply_state(
        &self,
        op: &StateOp,
        now: i64,
        checkpoint: &mut dyn FnMut(&StateOutput) -> Option<Run>,
    ) -> Result<StateOutput> {
        self.with(|s| s.apply_state(op, now, checkpoint))
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
