//! The embedded store: one sled tree, records as JSON under prefixed keys.
//!
//! Key layout (also in ARCHITECTURE.md):
//! - `e/<event id>` → [`Event`]
//! - `d/<connector>\0<delivery id>` → event id (refuses a second delivery)
//! - `r/<run id>` → [`Run`]
//! - `q/<due ms, 8 bytes big-endian><run id>` → empty (`p` for a parked run):
//!   the run queue, in due order
//! - `k/<recipe>\0<key>\0<seq, 8 bytes big-endian>` → run id: unfinished runs of a
//!   concurrency key, in arrival order
//! - `b/<recipe>\0<key>` → run id: the debounced run of a key that has not started
//! - `s/<recipe>` → last schedule slot handled (ms, 8 bytes big-endian)
//! - `w/<connector>\0<event type>\0<key>\0<run id>` → listener tag: a run
//!   waiting for an event (`wait_for`); `c/…` the same for `cancel_on`
//! - `x/<run id>` → reason: a cancelling event arrived while the run was
//!   leased; its worker ends it at the next step boundary
//! - `ir/`, `is/`, `iq/`, `#/` → run index keys and counters (see [`super::index`])
//! - `v/`, `n/`, `a/<namespace>\0<key>` → recipe state (values, window
//!   counters, rotations; see [`super::state`])
//!
//! Ids are time-ordered, so `e/` and `r/` scan newest-first in reverse.
//! Multi-key writes go through one `Batch`, which sled applies atomically.

use super::index::{self, Index};
use super::overlay::{Batch, Overlay};
use super::state::{self, Kv, StateEntry, StateKey, StateOp, StateOutput, Write};
use super::{
    ConcurrencySlot, Event, Inserted, Listen, Page, Result, Retried, Run, RunFilter, RunHead,
    RunStatus, Store, StoreError, Swept,
};
use std::ops::Bound;
use std::path::Path;
use std::sync::Mutex;

/// The value of a parked run's queue entry (`wait`, `wait_for`): due like any
/// other entry, but not counted in the queue depth, so 100,000 waiting runs
/// do not make `/readyz` report overload. Every other entry's value is empty.
const PARKED: &[u8] = b"p";

/// sled's page cache defaults to 1 GiB and keeps what ingest wrote: 220 MiB
/// RSS after 10 s of W1 load. Recent records are what workers read, so
/// 32 MiB costs no throughput (BENCHMARKS.md).
pub const CACHE_BYTES: u64 = 32 << 20;

pub struct SledStore {
    db: sled::Db,
    /// The tree `switchboard`, with the writes of the group not yet
    /// flushed in front of it: every read and write goes through it.
    kv: Overlay,
    /// Serialises read-check-write sequences (dedupe, lease, finish). A std
    /// Mutex: nothing async happens while it is held.
    lock: Mutex<()>,
    /// Serialises recipe state operations (read, decide, write one batch),
    /// apart from `lock` so state steps do not wait for leases.
    state_lock: Mutex<()>,
    /// Where the next expiry sweep starts (a raw key; empty: from the start).
    sweep_from: Mutex<Vec<u8>>,
    /// Where the next retention chunk starts (an `e/` key; empty: the oldest).
    expire_from: Mutex<Vec<u8>>,
}

/// Reads of [`state::apply`]: the tree with the group's pending writes.
struct OverlayKv<'a>(&'a Overlay);

impl Kv for OverlayKv<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.0.get(key).map_err(io)?.map(|v| v.to_vec()))
    }
}

/// The first key after every key starting with `prefix`.
pub(super) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut e = prefix.to_vec();
    while let Some(last) = e.pop() {
        if last < u8::MAX {
            e.push(last + 1);
            return e;
        }
    }
    vec![u8::MAX; prefix.len() + 1]
}

fn io(e: sled::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

fn queue_key(due: i64, run_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + 8 + run_id.len());
    k.extend_from_slice(b"q/");
    k.extend_from_slice(&(due.max(0) as u64).to_be_bytes());
    k.extend_from_slice(run_id.as_bytes());
    k
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| StoreError::Io(e.to_string()))
}

fn decode<T: serde::de::DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        detail: e.to_string(),
    })
}

fn slot_prefix(key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + key.len());
    k.extend_from_slice(b"k/");
    k.extend_from_slice(key.as_bytes());
    k.push(0);
    k
}

fn slot_key(key: &str, seq: u64) -> Vec<u8> {
    let mut k = slot_prefix(key);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn debounce_key(key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + key.len());
    k.extend_from_slice(b"b/");
    k.extend_from_slice(key.as_bytes());
    k
}

/// `w/` (wake) or `c/` (cancel) + `<connector>\0<event type>\0<key>\0`: a
/// probe's prefix; the run id follows in a listed entry.
fn correlation_prefix(c: &super::Correlation) -> Vec<u8> {
    let kind: &[u8] = match c.listen {
        super::Listen::Wake => b"w/",
        super::Listen::Cancel => b"c/",
    };
    let mut k = Vec::with_capacity(8 + c.connector.len() + c.event_type.len() + c.key.len());
    k.extend_from_slice(kind);
    for part in [&c.connector, &c.event_type, &c.key] {
        k.extend_from_slice(part.as_bytes());
        k.push(0);
    }
    k
}

fn correlation_key(c: &super::Correlation, run_id: &str) -> Vec<u8> {
    let mut k = correlation_prefix(c);
    k.extend_from_slice(run_id.as_bytes());
    k
}

/// `x/<run id>`: a cancelling event arrived while the run was leased.
fn cancel_key(run_id: &str) -> Vec<u8> {
    format!("x/{run_id}").into_bytes()
}

/// List `run` under its lifetime `cancel_on` keys (into `batch`).
fn list_cancel_keys(batch: &mut Batch, run: &Run) {
    for c in &run.listening {
        batch.insert(correlation_key(c, &run.id), c.tag.as_bytes());
    }
}

/// Remove `run`'s lifetime `cancel_on` keys and a pending cancel request.
fn unlist_cancel_keys(batch: &mut Batch, run: &Run) {
    for c in &run.listening {
        batch.remove(correlation_key(c, &run.id));
    }
    batch.remove(cancel_key(&run.id));
}

/// The index listings that hold exactly the runs `filter` keeps; `None`:
/// no filter, list `r/`.
fn index_prefixes(filter: &RunFilter) -> Option<Vec<Vec<u8>>> {
    let statuses: Vec<RunStatus> = match (filter.status, filter.failures) {
        (Some(s), failures) if !failures || s.is_failure() => vec![s],
        (Some(_), _) => return Some(Vec::new()), // nothing matches
        (None, true) => vec![RunStatus::Failed, RunStatus::Dead],
        (None, false) => Vec::new(),
    };
    match (&filter.recipe, statuses.is_empty()) {
        (None, true) => None,
        (Some(r), true) => Some(vec![index::recipe_prefix(r)]),
        (None, false) => Some(statuses.into_iter().map(index::status_prefix).collect()),
        (Some(r), false) => Some(
            statuses
                .into_iter()
                .map(|s| index::recipe_status_prefix(r, s))
                .collect(),
        ),
    }
}

fn cursor_key(recipe: &str) -> Vec<u8> {
    format!("s/{recipe}").into_bytes()
}

impl SledStore {
    /// Wake or cancel the runs listed under `probes` (into `batch`): a
    /// waiting run wakes or ends; a queued or retrying one ends; a running
    /// one gets a cancel request (`x/`) its worker reads at the next step.
    fn match_waiting(
        &self,
        batch: &mut Batch,
        ix: &mut Index<'_>,
        event_id: &str,
        probes: &[super::Correlation],
        now: i64,
    ) -> Result<super::Matched> {
        let mut matched = super::Matched::default();
        let mut done = std::collections::HashSet::new();
        for probe in probes {
            let prefix = correlation_prefix(probe);
            for item in self.kv.scan_prefix(&prefix) {
                let (k, tag) = item.map_err(io)?;
                if tag.as_ref() != probe.tag.as_bytes() {
                    continue;
                }
                let id = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                if !done.insert(id.clone()) {
                    continue;
                }
                let Some(mut run) = self.get::<Run>(format!("r/{id}").as_bytes())? else {
                    batch.remove(k); // a stale entry
                    continue;
                };
                let reason = format!(
                    "cancelled by event {event_id} ({} {})",
                    probe.connector, probe.event_type
                );
                match (run.status, probe.listen) {
                    (RunStatus::Waiting, _) => {}
                    // Not executing: it ends now, its queue entry with it.
                    (RunStatus::Queued | RunStatus::Retrying, Listen::Cancel) => {
                        batch.remove(queue_key(run.due_at, &id));
                        if let Some(d) = &run.debounce {
                            let key = debounce_key(&d.key);
                            if self.kv.get(&key).map_err(io)?.as_deref() == Some(id.as_bytes()) {
                                batch.remove(key);
                            }
                        }
                        unlist_cancel_keys(batch, &run);
                        run.status = RunStatus::Cancelled;
                        run.finished_at = Some(now);
                        run.updated_at = now;
                        run.reason = Some(reason);
                        self.release_slot(batch, ix, &mut run, now)?;
                        ix.put_run(batch, &run, encode(&run)?)?;
                        matched.cancelled.push(id);
                        continue;
                    }
                    // Executing: its worker ends it at the next step boundary.
                    (RunStatus::Running, Listen::Cancel) => {
                        batch.insert(cancel_key(&id), reason.into_bytes());
                        matched.cancelling.push(id);
                        continue;
                    }
                    _ => {
                        batch.remove(k); // finished, or a wake key of a run not waiting
                        continue;
                    }
                }
                let Some(mut parked) = run.parked.take() else {
                    batch.remove(k);
                    continue;
                };
                for c in &parked.keys {
                    batch.remove(correlation_key(c, &id));
                }
                batch.remove(queue_key(run.due_at, &id));
                run.updated_at = now;
                match probe.listen {
                    Listen::Wake => {
                        parked.keys.clear();
                        parked.woken_by = Some(event_id.to_string());
                        run.parked = Some(parked);
                        run.status = RunStatus::Queued;
                        run.due_at = now;
                        batch.insert(queue_key(now, &id), &[][..]);
                        // Back to its lifetime keys (a park key may have been one).
                        list_cancel_keys(batch, &run);
                        matched.woken.push(id.clone());
                    }
                    Listen::Cancel => {
                        run.status = RunStatus::Cancelled;
                        run.finished_at = Some(now);
                        run.reason = Some(reason);
                        unlist_cancel_keys(batch, &run);
                        self.release_slot(batch, ix, &mut run, now)?;
                        matched.cancelled.push(id.clone());
                    }
                }
                ix.put_run(batch, &run, encode(&run)?)?;
            }
        }
        Ok(matched)
    }

    /// Free a finishing run's concurrency slot and wake the runs now at the
    /// front of its key (into `batch`).
    fn release_slot(
        &self,
        batch: &mut Batch,
        ix: &mut Index<'_>,
        run: &mut Run,
        now: i64,
    ) -> Result<()> {
        let Some(slot) = run.concurrency.take() else {
            return Ok(());
        };
        batch.remove(slot_key(&slot.key, slot.seq));
        for item in self
            .kv
            .scan_prefix(&slot_prefix(&slot.key))
            .take(slot.limit as usize + 1)
        {
            let (_, v) = item.map_err(io)?;
            let id = String::from_utf8_lossy(&v).into_owned();
            if id == run.id {
                continue;
            }
            if let Some(mut next) = self.get::<Run>(format!("r/{id}").as_bytes())? {
                if next.status == RunStatus::Queued && next.due_at > now {
                    batch.remove(queue_key(next.due_at, &id));
                    next.due_at = now;
                    batch.insert(queue_key(now, &id), &[][..]);
                    ix.put_run(batch, &next, encode(&next)?)?;
                }
            }
        }
        Ok(())
    }

    /// The run a debounce key points at, if it has not started yet.
    fn pending_debounce(&self, key: &[u8]) -> Result<Option<Run>> {
        let Some(id) = self.kv.get(key).map_err(io)? else {
            return Ok(None);
        };
        let run: Option<Run> = self.get(&[b"r/".as_slice(), &id].concat())?;
        Ok(run.filter(|r| r.status == RunStatus::Queued && r.debounce.is_some()))
    }

    /// Is this run among the first `limit` unfinished runs of its key?
    fn has_turn(&self, slot: &ConcurrencySlot) -> Result<bool> {
        for item in self
            .kv
            .scan_prefix(&slot_prefix(&slot.key))
            .take(slot.limit.max(1) as usize)
        {
            let (k, _) = item.map_err(io)?;
            if k.as_ref() == slot_key(&slot.key, slot.seq).as_slice() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Open (or create) the store in `dir`. Fails if another process has it open.
    pub fn open(dir: &Path) -> Result<SledStore> {
        SledStore::open_with_cache(dir, CACHE_BYTES)
    }

    /// [`SledStore::open`] with another bound on sled's page cache
    /// (benchmarks compare bounds; `serve` uses [`CACHE_BYTES`]).
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<SledStore> {
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            // Durability comes from explicit flushes (group commit), not a timer.
            .flush_every_ms(None)
            .cache_capacity(cache_bytes)
            .open()
            .map_err(io)?;
        let tree = db.open_tree("switchboard").map_err(io)?;
        index::rebuild(&tree)?;
        Ok(SledStore {
            db,
            kv: Overlay::new(tree),
            lock: Mutex::new(()),
            state_lock: Mutex::new(()),
            sweep_from: Mutex::new(Vec::new()),
            expire_from: Mutex::new(Vec::new()),
        })
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        // A panic while holding the lock leaves no half-written state (batches
        // are atomic), so a poisoned lock is safe to take.
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>> {
        match self.kv.get(key).map_err(io)? {
            None => Ok(None),
            Some(v) => decode(key, &v).map(Some),
        }
    }

    fn page<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &str,
        page: &Page,
        keep: impl Fn(&T) -> bool,
    ) -> Result<Vec<T>> {
        let start = prefix.as_bytes().to_vec();
        let end = match &page.before {
            Some(b) => format!("{prefix}{b}").into_bytes(),
            None => {
                let mut e = start.clone();
                if let Some(last) = e.last_mut() {
                    *last += 1;
                }
                e
            }
        };
        let mut out = Vec::new();
        for item in self
            .kv
            .range_rev((Bound::Included(start), Bound::Excluded(end)))
        {
            let (k, v) = item.map_err(io)?;
            let t: T = decode(&k, &v)?;
            if keep(&t) {
                out.push(t);
                if out.len() >= page.limit.max(1) {
                    break;
                }
            }
        }
        Ok(out)
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        // Writes never flushed were never acknowledged; still, a closing
        // store (a CLI command, a test) keeps them, as sled keeps its own.
        if let Err(e) = self.kv.apply() {
            tracing::warn!(error = %e, "writes not applied when the store closed");
        }
    }
}

impl Store for SledStore {
    fn insert_event(&self, event: &Event, runs: &[Run]) -> Result<Inserted> {
        self.insert_event_matching(event, runs, &[], 0)
            .map(|(i, _)| i)
    }

    fn insert_event_matching(
        &self,
        event: &Event,
        runs: &[Run],
        probes: &[super::Correlation],
        now: i64,
    ) -> Result<(Inserted, super::Matched)> {
        let _g = self.guard();
        let dedupe_key = event
            .delivery_id
            .as_ref()
            .map(|d| format!("d/{}\0{d}", event.connector).into_bytes());
        if let Some(k) = &dedupe_key {
            if let Some(existing) = self.kv.get(k).map_err(io)? {
                return Ok((
                    Inserted::Duplicate {
                        event_id: String::from_utf8_lossy(&existing).into_owned(),
                    },
                    super::Matched::default(),
                ));
            }
        }
        // A replay of a signed delivery: `p/` holds `<event id>\0<received ms>`.
        let replay_key = event
            .replay
            .as_ref()
            .map(|r| format!("p/{}\0{}", event.connector, r.key).into_bytes());
        if let (Some(k), Some(guard)) = (&replay_key, &event.replay) {
            if let Some(seen) = self.kv.get(k).map_err(io)? {
                let seen = String::from_utf8_lossy(&seen).into_owned();
                let (first, at) = seen.split_once('\0').unwrap_or((seen.as_str(), "0"));
                let at: i64 = at.parse().unwrap_or(0);
                if guard
                    .window_ms
                    .is_none_or(|w| event.received_at.saturating_sub(at) < w)
                {
                    return Ok((
                        Inserted::Duplicate {
                            event_id: first.to_string(),
                        },
                        super::Matched::default(),
                    ));
                }
            }
        }
        let mut batch = Batch::default();
        if let Some(k) = dedupe_key {
            batch.insert(k, event.id.as_bytes());
        }
        if let Some(k) = replay_key {
            batch.insert(
                k,
                format!("{}\0{}", event.id, event.received_at).into_bytes(),
            );
        }
        let mut ix = Index::new(&self.kv);
        let mut event = std::borrow::Cow::Borrowed(event);
        for run in runs {
            let mut run = run.clone();
            if let Some(d) = &mut run.debounce {
                let key = debounce_key(&d.key);
                if let Some(pending) = self.pending_debounce(&key)? {
                    // The burst goes on: the pending run takes this event.
                    let mut p = pending;
                    let first = p.debounce.as_ref().map_or(d.first_at, |x| x.first_at);
                    let due = (d.first_at + d.quiet_ms).min(first + d.max_ms);
                    batch.remove(queue_key(p.due_at, &p.id));
                    batch.insert(queue_key(due, &p.id), &[][..]);
                    p.due_at = due;
                    p.event_id = event.id.clone();
                    p.updated_at = d.first_at;
                    if let Some(pd) = &mut p.debounce {
                        pd.events += 1;
                    }
                    ix.put_run(&mut batch, &p, encode(&p)?)?;
                    for id in &mut event.to_mut().runs {
                        if *id == run.id {
                            id.clone_from(&p.id);
                        }
                    }
                    continue;
                }
                d.events = 1;
                batch.insert(key, run.id.as_bytes());
            }
            if let Some(slot) = &mut run.concurrency {
                // Arrival order within the key: a sequence from the store.
                slot.seq = self.db.generate_id().map_err(io)?;
                batch.insert(slot_key(&slot.key, slot.seq), run.id.as_bytes());
            }
            list_cancel_keys(&mut batch, &run);
            ix.put_run(&mut batch, &run, encode(&run)?)?;
            batch.insert(queue_key(run.due_at, &run.id), &[][..]);
        }
        batch.insert(format!("e/{}", event.id).into_bytes(), encode(&*event)?);
        ix.event_added();
        let matched = self.match_waiting(&mut batch, &mut ix, &event.id, probes, now)?;
        ix.commit(&mut batch)?;
        self.kv.write(batch).map_err(io)?;
        Ok((Inserted::New, matched))
    }

    fn flush(&self) -> Result<()> {
        // The group's writes become one sled batch, then one log flush.
        self.kv.apply().map_err(io)?;
        crate::crash::point("group.flush");
        self.db.flush().map(|_| ()).map_err(io)
    }

    fn event(&self, id: &str) -> Result<Option<Event>> {
        self.get(format!("e/{id}").as_bytes())
    }

    fn events(&self, page: &Page) -> Result<Vec<Event>> {
        self.page("e/", page, |_| true)
    }

    fn run(&self, id: &str) -> Result<Option<Run>> {
        self.get(format!("r/{id}").as_bytes())
    }

    fn runs(&self, page: &Page, filter: &RunFilter) -> Result<Vec<Run>> {
        let Some(prefixes) = index_prefixes(filter) else {
            return self.page("r/", page, |r| filter.matches(r));
        };
        // Through the index: only runs that match are read.
        let mut out = Vec::new();
        for id in index::newest_ids(&self.kv, &prefixes, page.before.as_deref()) {
            let id = id?;
            if let Some(run) = self.run(&id)? {
                // The record decides (a checkpoint racing an expired
                // lease may leave its index key behind for a moment).
                if filter.matches(&run) {
                    out.push(run);
                    if out.len() >= page.limit.max(1) {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    fn event_times(&self, since: i64, max: usize) -> Result<Vec<i64>> {
        // Keys only: an event id carries its time, so no body is decoded.
        let from = format!("e/{}", super::id_floor(since)).into_bytes();
        let mut out = Vec::new();
        for item in self
            .kv
            .range_rev((Bound::Included(from), Bound::Excluded(b"e0".to_vec())))
        {
            if out.len() >= max {
                break;
            }
            let (k, _) = item.map_err(io)?;
            if let Some(t) = super::id_time(&String::from_utf8_lossy(&k[2..])) {
                out.push(t);
            }
        }
        Ok(out)
    }

    fn run_heads(&self, since: i64, max: usize) -> Result<Vec<RunHead>> {
        // A `RunHead` picks four fields; serde skips the step records.
        let from = format!("r/{}", super::id_floor(since)).into_bytes();
        let mut out = Vec::new();
        for item in self
            .kv
            .range_rev((Bound::Included(from), Bound::Excluded(b"r0".to_vec())))
        {
            if out.len() >= max {
                break;
            }
            let (k, v) = item.map_err(io)?;
            out.push(decode(&k, &v)?);
        }
        Ok(out)
    }

    fn event_by_delivery(&self, connector: &str, delivery_id: &str) -> Result<Option<Event>> {
        let key = format!("d/{connector}\0{delivery_id}");
        match self.kv.get(key.as_bytes()).map_err(io)? {
            None => Ok(None),
            Some(id) => self.event(&String::from_utf8_lossy(&id)),
        }
    }

    fn lease(&self, now: i64, lease_ms: i64, max: usize) -> Result<Vec<Run>> {
        let _g = self.guard();
        let mut out = Vec::new();
        let mut batch = Batch::default();
        let mut ix = Index::new(&self.kv);
        for item in self.kv.range((
            Bound::Included(queue_key(0, "")),
            Bound::Excluded(queue_key(now + 1, "")),
        )) {
            if out.len() >= max {
                break;
            }
            let (k, _) = item.map_err(io)?;
            let id = String::from_utf8_lossy(&k[10..]).into_owned();
            batch.remove(k);
            let Some(mut run) = self.get::<Run>(format!("r/{id}").as_bytes())? else {
                continue; // a queue entry without a run: drop it
            };
            if run.status.is_final() {
                // Left by a worker that finished the run after its lease
                // expired and the run was leased again: drop it.
                continue;
            }
            if run.status == RunStatus::Waiting {
                // Its time came: an event can no longer wake or cancel it.
                if let Some(p) = &run.parked {
                    for c in &p.keys {
                        batch.remove(correlation_key(c, &run.id));
                    }
                }
                // Still cancellable while it runs (a park key may have been one).
                list_cancel_keys(&mut batch, &run);
            }
            if let Some(d) = &run.debounce {
                // Started: later events of the key make a new run.
                let key = debounce_key(&d.key);
                if self.kv.get(&key).map_err(io)?.as_deref() == Some(run.id.as_bytes()) {
                    batch.remove(key);
                }
            }
            let turn = match &run.concurrency {
                Some(slot) => self.has_turn(slot)?,
                None => true,
            };
            if turn {
                run.status = RunStatus::Running;
                run.starts += 1;
            }
            // Not its turn: park it until a run ahead of it finishes (which
            // makes it due again); the lease time is the safety net.
            run.due_at = now + lease_ms;
            run.updated_at = now;
            batch.insert(queue_key(run.due_at, &run.id), &[][..]);
            ix.put_run(&mut batch, &run, encode(&run)?)?;
            if turn {
                out.push(run);
            }
        }
        ix.commit(&mut batch)?;
        self.kv.write(batch).map_err(io)?;
        Ok(out)
    }

    fn save_run(&self, run: &Run) -> Result<()> {
        // A checkpoint keeps the run's status (running): no index key or
        // counter changes, so no lock. Otherwise, the indexed way.
        let ix = Index::new(&self.kv);
        if ix.status(&run.recipe, &run.id)? == Some(run.status) {
            let mut batch = Batch::default();
            batch.insert(format!("r/{}", run.id).into_bytes(), encode(run)?);
            return self.kv.write(batch).map_err(io);
        }
        let _g = self.guard();
        let mut batch = Batch::default();
        let mut ix = Index::new(&self.kv);
        ix.put_run(&mut batch, run, encode(run)?)?;
        ix.commit(&mut batch)?;
        self.kv.write(batch).map_err(io)
    }

    fn finish_run(&self, run: &Run) -> Result<()> {
        let _g = self.guard();
        let mut batch = Batch::default();
        batch.remove(queue_key(run.due_at, &run.id));
        let mut finished = run.clone();
        unlist_cancel_keys(&mut batch, run);
        let mut ix = Index::new(&self.kv);
        self.release_slot(&mut batch, &mut ix, &mut finished, run.updated_at)?;
        ix.put_run(&mut batch, &finished, encode(&finished)?)?;
        ix.commit(&mut batch)?;
        self.kv.write(batch).map_err(io)
    }

    fn park(&self, run: &Run, previous_due: i64) -> Result<()> {
        let _g = self.guard();
        let mut batch = Batch::default();
        batch.remove(queue_key(previous_due, &run.id));
        // Marked: a parked run is not backlog (see `queue_depth`).
        batch.insert(queue_key(run.due_at, &run.id), PARKED);
        if let Some(p) = &run.parked {
            for c in &p.keys {
                batch.insert(correlation_key(c, &run.id), c.tag.as_bytes());
            }
        }
        let mut ix = Index::new(&self.kv);
        ix.put_run(&mut batch, run, encode(run)?)?;
        ix.commit(&mut batch)?;
        self.kv.write(batch).map_err(io)
    }

    fn reschedule(&self, run: &Run, previous_due: i64) -> Result<()> {
        let _g = self.guard();
        let mut batch = Batch::default();
        batch.remove(queue_key(previous_due, &run.id));
        batch.insert(queue_key(run.due_at, &run.id), &[][..]);
        let mut ix = Index::new(&self.kv);
        ix.put_run(&mut batch, run, encode(run)?)?;
        ix.commit(&mut batch)?;
        self.kv.write(batch).map_err(io)
    }

    fn retry_run(&self, id: &str, now: i64) -> Result<Retried> {
        let _g = self.guard();
        let Some(mut run) = self.get::<Run>(format!("r/{id}").as_bytes())? else {
            return Ok(Retried::NotFound);
        };
        if !run.status.is_failure() {
            return Ok(Retried::NotFailed(run.status));
        }
        run.requeue_for_retry(now);
        let mut batch = Batch::default();
        batch.insert(queue_key(now, &run.id), &[][..]);
        list_cancel_keys(&mut batch, &run);
        let mut ix = Index::new(&self.kv);
        ix.put_run(&mut batch, &run, encode(&run)?)?;
        ix.commit(&mut batch)?;
        self.kv.write(batch).map_err(io)?;
        Ok(Retried::Queued(Box::new(run)))
    }

    fn release_leases(&self, now: i64) -> Result<usize> {
        let _g = self.guard();
        let mut batch = Batch::default();
        let mut ix = Index::new(&self.kv);
        let mut n = 0;
        for item in self.kv.range((
            Bound::Included(queue_key(now + 1, "")),
            Bound::Excluded(b"q0".to_vec()),
        )) {
            let (k, _) = item.map_err(io)?;
            let id = String::from_utf8_lossy(&k[10..]).into_owned();
            let Some(mut run) = self.get::<Run>(format!("r/{id}").as_bytes())? else {
                batch.remove(k);
                continue;
            };
            // Only leases: a run waiting for a later time keeps its time.
            if run.status == RunStatus::Running {
                batch.remove(k);
                run.due_at = now;
                batch.insert(queue_key(now, &id), &[][..]);
                ix.put_run(&mut batch, &run, encode(&run)?)?;
                n += 1;
            }
        }
        ix.commit(&mut batch)?;
        self.kv.write(batch).map_err(io)?;
        Ok(n)
    }

    fn cancel_requested(&self, run_id: &str) -> Result<Option<String>> {
        Ok(self
            .kv
            .get(&cancel_key(run_id))
            .map_err(io)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    fn queue_depth(&self) -> Result<usize> {
        Ok(self.queue_counts()?.backlog)
    }

    fn queue_counts(&self) -> Result<crate::store::QueueCounts> {
        // Every unfinished run has one queue entry; a waiting run's is
        // parked (not backlog). So the backlog is what the counters hold
        // for the other unfinished statuses, and the parked ones are the
        // waiting runs: no scan.
        let count = |s| index::read_counter(&self.kv, &index::counter_key(s));
        let backlog =
            count(RunStatus::Queued)? + count(RunStatus::Running)? + count(RunStatus::Retrying)?;
        Ok(crate::store::QueueCounts {
            backlog: backlog as usize,
            parked: count(RunStatus::Waiting)? as usize,
        })
    }

    fn expire(&self, cutoff: i64, max: usize) -> Result<super::retention::Expired> {
        let mut from = self.expire_from.lock().unwrap_or_else(|p| p.into_inner());
        let _g = self.guard();
        super::retention::expire(&self.kv, &mut from, cutoff, max)
    }

    fn stats(&self, scan: bool) -> Result<super::StoreStats> {
        // A scan holds the lock: every write that changes a counter or an
        // index key waits, so the counts and the records are one snapshot.
        let _g = scan.then(|| self.guard());
        let counts = index::counted(&self.kv)?;
        let mut state_entries = 0;
        for prefix in [&b"v/"[..], b"n/", b"a/"] {
            state_entries += self.kv.scan_prefix(prefix).count() as u64;
        }
        let (scanned, problems) = if scan {
            let (c, p) = index::audit(&self.kv)?;
            (Some(c), p)
        } else {
            (None, Vec::new())
        };
        Ok(super::StoreStats {
            counts,
            state_entries,
            bytes_on_disk: self.db.size_on_disk().map_err(io)?,
            scanned,
            problems,
        })
    }

    fn apply_state(
        &self,
        op: &StateOp,
        now: i64,
        checkpoint: &mut dyn FnMut(&StateOutput) -> Option<Run>,
    ) -> Result<StateOutput> {
        // Poisoning is harmless: a batch is applied whole or not at all.
        let _g = self.state_lock.lock().unwrap_or_else(|p| p.into_inner());
        let (out, writes) = state::apply(op, now, &OverlayKv(&self.kv))?;
        let mut batch = Batch::default();
        for w in writes {
            match w {
                Write::Put(k, v) => batch.insert(k, v),
                Write::Remove(k) => batch.remove(k),
            }
        }
        if let Some(run) = checkpoint(&out) {
            let ix = Index::new(&self.kv);
            if ix.status(&run.recipe, &run.id)? == Some(run.status) {
                // A checkpoint keeps the run's status: no index change.
                batch.insert(format!("r/{}", run.id).into_bytes(), encode(&run)?);
            } else {
                // Counters change under the store lock (taken after
                // `state_lock`, never the other way round).
                let _g = self.guard();
                let mut ix = Index::new(&self.kv);
                ix.put_run(&mut batch, &run, encode(&run)?)?;
                ix.commit(&mut batch)?;
                return self.kv.write(batch).map_err(io).map(|()| out);
            }
        }
        self.kv.write(batch).map_err(io)?;
        Ok(out)
    }

    fn state_entries(
        &self,
        namespace: Option<&str>,
        after: Option<&[u8]>,
        limit: usize,
        now: i64,
    ) -> Result<Vec<StateEntry>> {
        let mut out = Vec::new();
        for prefix in state::list_prefixes(namespace) {
            let end = prefix_end(&prefix);
            let start = match after {
                Some(a) if a >= prefix.as_slice() => Bound::Excluded(a.to_vec()),
                _ => Bound::Included(prefix.clone()),
            };
            if matches!(&start, Bound::Excluded(a) if *a >= end) {
                continue;
            }
            for item in self.kv.range((start, Bound::Excluded(end))) {
                let (k, v) = item.map_err(io)?;
                if let Some(e) = state::entry(&k, &v, now)? {
                    out.push(e);
                    if out.len() >= limit.max(1) {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    fn state_get(&self, key: &StateKey, now: i64) -> Result<Vec<StateEntry>> {
        let mut out = Vec::new();
        for raw in state::raw_keys(key) {
            if let Some(v) = self.kv.get(&raw).map_err(io)? {
                out.extend(state::entry(&raw, &v, now)?);
            }
        }
        Ok(out)
    }

    fn sweep_state(&self, now: i64, max: usize) -> Result<Swept> {
        let mut from = self.sweep_from.lock().unwrap_or_else(|p| p.into_inner());
        let mut examined = 0;
        let mut expired = Vec::new();
        let mut last: Option<Vec<u8>> = None;
        // Values and counters expire; rotations do not.
        'scan: for prefix in [&b"n/"[..], &b"v/"[..]] {
            let end = prefix_end(prefix);
            let start = if from.as_slice() >= prefix && *from < end {
                Bound::Excluded(from.clone())
            } else if from.as_slice() < prefix {
                Bound::Included(prefix.to_vec())
            } else {
                continue;
            };
            for item in self.kv.range((start, Bound::Excluded(end))) {
                if examined >= max {
                    break 'scan;
                }
                let (k, v) = item.map_err(io)?;
                examined += 1;
                if state::expired(&k, &v, now)? {
                    expired.push(k.to_vec());
                }
                last = Some(k.to_vec());
            }
        }
        // A full pass ends: the next sweep starts over.
        let cycle_done = examined < max;
        *from = if cycle_done {
            Vec::new()
        } else {
            last.unwrap_or_default()
        };
        drop(from);
        let _g = self.state_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = Batch::default();
        let mut removed = 0;
        for k in expired {
            // Looked at again under the lock: a step may have renewed it.
            if let Some(v) = self.kv.get(&k).map_err(io)? {
                if state::expired(&k, &v, now)? {
                    batch.remove(k);
                    removed += 1;
                }
            }
        }
        self.kv.write(batch).map_err(io)?;
        Ok(Swept {
            removed,
            cycle_done,
        })
    }

    fn schedule_cursor(&self, recipe: &str) -> Result<Option<i64>> {
        Ok(self
            .kv
            .get(&cursor_key(recipe))
            .map_err(io)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(i64::from_be_bytes))
    }

    fn set_schedule_cursor(&self, recipe: &str, slot: i64) -> Result<()> {
        let mut batch = Batch::default();
        batch.insert(cursor_key(recipe), &slot.to_be_bytes()[..]);
        self.kv.write(batch).map_err(io)
    }

    fn next_due(&self) -> Result<Option<i64>> {
        match self.kv.scan_prefix(b"q/").next() {
            None => Ok(None),
            Some(item) => {
                let (k, _) = item.map_err(io)?;
                let mut b = [0u8; 8];
                b.copy_from_slice(&k[2..10]);
                Ok(Some(u64::from_be_bytes(b) as i64))
            }
        }
    }
}

/// Raw reads for `switchboard store copy` (a sled store moved to PostgreSQL).
impl SledStore {
    /// Every recipe state entry as stored: its raw key and record.
    pub fn state_raw(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        for prefix in [&b"v/"[..], b"n/", b"a/"] {
            for item in self.kv.scan_prefix(prefix) {
                let (k, v) = item.map_err(io)?;
                out.push((k.to_vec(), v.to_vec()));
            }
        }
        Ok(out)
    }

    /// Every schedule cursor: (recipe, last slot handled).
    pub fn schedule_cursors(&self) -> Result<Vec<(String, i64)>> {
        let mut out = Vec::new();
        for item in self.kv.scan_prefix(b"s/") {
            let (k, v) = item.map_err(io)?;
            if let Ok(b) = <[u8; 8]>::try_from(v.as_ref()) {
                out.push((
                    String::from_utf8_lossy(&k[2..]).into_owned(),
                    i64::from_be_bytes(b),
                ));
            }
        }
        Ok(out)
    }
}

/// Opens again a store a test just dropped: sled's background flusher
/// holds the directory's lock for a moment after the last handle goes, so an
/// immediate reopen can fail with `WouldBlock`. (A restarted process never
/// meets this: the lock dies with the old process.)
#[cfg(test)]
pub(crate) fn reopened<T, E: std::fmt::Debug>(
    mut open: impl FnMut() -> std::result::Result<T, E>,
) -> T {
    for _ in 0..200 {
        match open() {
            Ok(v) => return v,
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(25)),
        }
    }
    open().unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{new_id, StepRecord, StepStatus};
    use serde_json::json;

    fn event(delivery: Option<&str>) -> Event {
        Event {
            id: new_id(1000),
            connector: "zendesk".into(),
            event_type: Some("ticket.created".into()),
            delivery_id: delivery.map(str::to_string),
            received_at: 1000,
            body: json!({"a": 1}),
            runs: vec![],
            origin: Default::default(),
            replay: None,
        }
    }

    fn run(event: &Event, due: i64) -> Run {
        Run {
            id: new_id(1000),
            event_id: event.id.clone(),
            recipe: "r".into(),
            status: RunStatus::Queued,
            created_at: 1000,
            updated_at: 1000,
            finished_at: None,
            steps: vec![],
            error: None,
            reason: None,
            due_at: due,
            pending: None,
            round: 0,
            concurrency: None,
            debounce: None,
            parked: None,
            starts: 0,
            listening: vec![],
            version: None,
        }
    }

    #[test]
    fn dedupes_by_delivery_id_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let e = event(Some("d1"));
        {
            let s = SledStore::open(dir.path()).unwrap();
            assert_eq!(s.insert_event(&e, &[]).unwrap(), Inserted::New);
            let again = event(Some("d1"));
            assert_eq!(
                s.insert_event(&again, &[]).unwrap(),
                Inserted::Duplicate {
                    event_id: e.id.clone()
                }
            );
            assert!(
                s.event(&again.id).unwrap().is_none(),
                "duplicate must not be stored"
            );
            s.flush().unwrap();
        }
        let s = reopened(|| SledStore::open(dir.path()));
        assert_eq!(s.event(&e.id).unwrap().unwrap(), e);
    }

    #[test]
    fn queue_leases_expire_and_finish_dequeues() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let e = event(None);
        let r = run(&e, 1000);
        s.insert_event(&e, std::slice::from_ref(&r)).unwrap();
        assert_eq!(s.queue_depth().unwrap(), 1);
        assert!(s.lease(999, 100, 10).unwrap().is_empty(), "not due yet");
        let leased = s.lease(1000, 100, 10).unwrap();
        assert_eq!(leased.len(), 1);
        assert_eq!(leased[0].status, RunStatus::Running);
        assert!(s.lease(1050, 100, 10).unwrap().is_empty(), "leased");
        // The lease expires: the run is due again.
        let again = s.lease(1100, 100, 10).unwrap();
        assert_eq!(again.len(), 1);
        let mut done = again[0].clone();
        done.status = RunStatus::Succeeded;
        done.steps.push(StepRecord {
            id: "a".into(),
            call: "c.a".into(),
            status: crate::store::StepStatus::Succeeded,
            input: json!({}),
            request: None,
            http_status: Some(200),
            output: json!({}),
            error: None,
            started_at: 0,
            duration_ms: 1,
            attempts: 1,
            history: vec![],
        });
        s.finish_run(&done).unwrap();
        assert_eq!(s.queue_depth().unwrap(), 0);
        assert_eq!(s.run(&done.id).unwrap().unwrap(), done);
    }

    #[test]
    fn a_run_finished_after_its_lease_expired_is_not_leased_again() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let e = event(None);
        let r = run(&e, 1000);
        s.insert_event(&e, std::slice::from_ref(&r)).unwrap();
        let first = s.lease(1000, 100, 10).unwrap();
        // The first worker is slow: its lease expires, a second worker leases it.
        assert_eq!(s.lease(1100, 100, 10).unwrap().len(), 1);
        // The first worker finishes with its own copy (its due time).
        let mut done = first[0].clone();
        done.status = RunStatus::Succeeded;
        s.finish_run(&done).unwrap();
        // The second lease's queue entry is left; it must not revive the run.
        assert!(s.lease(1300, 100, 10).unwrap().is_empty());
        let stored = s.run(&done.id).unwrap().unwrap();
        assert_eq!(stored.status, RunStatus::Succeeded);
        assert_eq!(s.queue_depth().unwrap(), 0);
    }

    #[test]
    fn retry_run_requeues_only_failures_and_resumes_at_the_failed_step() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let e = event(None);
        let r = run(&e, 10);
        s.insert_event(&e, std::slice::from_ref(&r)).unwrap();
        assert_eq!(
            s.retry_run(&r.id, 20).unwrap(),
            Retried::NotFailed(RunStatus::Queued)
        );
        assert_eq!(s.retry_run("nope", 20).unwrap(), Retried::NotFound);
        let mut leased = s.lease(10, 1000, 1).unwrap().remove(0);
        let step = |status| crate::store::StepRecord {
            id: "s".into(),
            call: "c.a".into(),
            status,
            input: json!({}),
            request: None,
            http_status: None,
            output: json!(null),
            error: None,
            started_at: 0,
            duration_ms: 0,
            attempts: 3,
            history: vec![],
        };
        leased.steps = vec![
            step(crate::store::StepStatus::Succeeded),
            step(crate::store::StepStatus::Failed),
        ];
        leased.status = RunStatus::Dead;
        s.finish_run(&leased).unwrap();
        assert_eq!(s.queue_depth().unwrap(), 0);
        let Retried::Queued(again) = s.retry_run(&r.id, 30).unwrap() else {
            panic!()
        };
        assert_eq!(again.steps.len(), 1, "the completed step is kept");
        assert_eq!(again.pending.as_ref().unwrap().attempts, 3, "history kept");
        assert_eq!(
            (again.status, again.round, again.due_at),
            (RunStatus::Queued, 1, 30)
        );
        assert_eq!(s.lease(30, 1000, 5).unwrap().len(), 1);
    }

    fn corr(listen: crate::store::Listen, key: &str, tag: &str) -> crate::store::Correlation {
        crate::store::Correlation {
            listen,
            connector: "zendesk".into(),
            event_type: "ticket.updated".into(),
            key: key.into(),
            tag: tag.into(),
        }
    }

    /// Park a fresh run of `e` listed under `keys`, waiting until `until`.
    fn parked(s: &SledStore, e: &Event, keys: Vec<crate::store::Correlation>, until: i64) -> Run {
        let mut r = run(e, 10);
        s.insert_event(e, std::slice::from_ref(&r)).unwrap();
        let mut leased = s.lease(10, 1000, 10).unwrap().remove(0);
        assert_eq!(leased.id, r.id);
        let prev = leased.due_at;
        leased.status = RunStatus::Waiting;
        leased.due_at = until;
        leased.parked = Some(crate::store::Parked {
            step: "wait".into(),
            until,
            since: 10,
            keys,
            woken_by: None,
        });
        s.park(&leased, prev).unwrap();
        r = leased;
        r
    }

    #[test]
    fn a_matching_event_wakes_or_cancels_waiting_runs_in_its_batch() {
        use crate::store::Listen::{Cancel, Wake};
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let e = event(None);
        s.insert_event(&e, &[]).unwrap();
        let a = parked(
            &s,
            &e,
            vec![corr(Wake, "42", "r\0w"), corr(Cancel, "42", "r")],
            5000,
        );
        let b = parked(
            &s,
            &e,
            vec![corr(Wake, "43", "r\0w"), corr(Cancel, "43", "r")],
            5000,
        );
        assert_eq!(s.lease(100, 1000, 10).unwrap().len(), 0, "waiting, not due");
        assert_eq!(s.queue_depth().unwrap(), 0, "waiting runs are not backlog");
        // Another key, or another listener's tag, matches nothing.
        let other = event(Some("x1"));
        let (_, m) = s
            .insert_event_matching(
                &other,
                &[],
                &[corr(Wake, "44", "r\0w"), corr(Wake, "42", "q\0w")],
                100,
            )
            .unwrap();
        assert_eq!(m, crate::store::Matched::default());
        // The match wakes `a` only: queued now, woken by the event, keys gone.
        let hit = event(Some("x2"));
        let (_, m) = s
            .insert_event_matching(&hit, &[], &[corr(Wake, "42", "r\0w")], 200)
            .unwrap();
        assert_eq!(m.woken, vec![a.id.clone()]);
        let woke = s.run(&a.id).unwrap().unwrap();
        assert_eq!((woke.status, woke.due_at), (RunStatus::Queued, 200));
        assert_eq!(
            s.queue_depth().unwrap(),
            1,
            "the woken run is backlog again"
        );
        assert_eq!(woke.parked.unwrap().woken_by, Some(hit.id.clone()));
        // Its cancel key went with it: a cancelling event no longer finds it.
        let (_, m) = s
            .insert_event_matching(&event(Some("x3")), &[], &[corr(Cancel, "42", "r")], 300)
            .unwrap();
        assert!(m.cancelled.is_empty());
        // A duplicate delivery matches nothing.
        let (ins, m) = s
            .insert_event_matching(&event(Some("x2")), &[], &[corr(Cancel, "43", "r")], 300)
            .unwrap();
        assert!(matches!(ins, Inserted::Duplicate { .. }));
        assert!(m.cancelled.is_empty());
        // `b` is cancelled and leaves the queue.
        let (_, m) = s
            .insert_event_matching(&event(Some("x4")), &[], &[corr(Cancel, "43", "r")], 400)
            .unwrap();
        assert_eq!(m.cancelled, vec![b.id.clone()]);
        let gone = s.run(&b.id).unwrap().unwrap();
        assert_eq!(gone.status, RunStatus::Cancelled);
        assert!(gone.reason.unwrap().contains("cancelled by event"));
        let leased = s.lease(10_000, 1000, 10).unwrap();
        assert_eq!(
            leased.iter().map(|r| &r.id).collect::<Vec<_>>(),
            vec![&a.id]
        );
        assert_eq!(
            s.kv.scan_prefix(b"w/").count() + s.kv.scan_prefix(b"c/").count(),
            0,
            "no correlation key is left"
        );
    }

    #[test]
    fn a_timed_out_wait_is_no_longer_listed() {
        use crate::store::Listen::Wake;
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let e = event(None);
        s.insert_event(&e, &[]).unwrap();
        let a = parked(&s, &e, vec![corr(Wake, "42", "r\0w")], 500);
        let leased = s.lease(500, 1000, 10).unwrap();
        assert_eq!(leased[0].id, a.id);
        assert_eq!(leased[0].status, RunStatus::Running);
        let (_, m) = s
            .insert_event_matching(&event(Some("x")), &[], &[corr(Wake, "42", "r\0w")], 600)
            .unwrap();
        assert!(
            m.woken.is_empty(),
            "the timer won; the event does not wake it again"
        );
    }

    #[test]
    fn release_leases_makes_leased_runs_due_now() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let e = event(None);
        s.insert_event(&e, &[run(&e, 10)]).unwrap();
        assert_eq!(s.lease(10, 60_000, 10).unwrap().len(), 1);
        assert_eq!(s.release_leases(20).unwrap(), 1);
        assert_eq!(s.next_due().unwrap(), Some(20));
        assert_eq!(s.lease(20, 60_000, 10).unwrap().len(), 1);
    }

    #[test]
    fn pages_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let mut ids = vec![];
        for i in 0..5 {
            let mut e = event(None);
            e.id = new_id(1000 + i);
            s.insert_event(&e, &[]).unwrap();
            ids.push(e.id);
        }
        let p1 = s
            .events(&Page {
                limit: 2,
                before: None,
            })
            .unwrap();
        assert_eq!(
            p1.iter().map(|e| &e.id).collect::<Vec<_>>(),
            vec![&ids[4], &ids[3]]
        );
        let p2 = s
            .events(&Page {
                limit: 2,
                before: Some(ids[3].clone()),
            })
            .unwrap();
        assert_eq!(
            p2.iter().map(|e| &e.id).collect::<Vec<_>>(),
            vec![&ids[2], &ids[1]]
        );
    }

    fn key(k: &str) -> StateKey {
        StateKey::new("ns", k).unwrap()
    }

    fn op_incr(k: &str, window_ms: Option<i64>) -> StateOp {
        StateOp::Incr {
            key: key(k),
            by: 1,
            window_ms,
            ttl_ms: None,
        }
    }

    #[test]
    fn state_change_and_checkpoint_are_one_write() {
        let dir = tempfile::tempdir().unwrap();
        let e = event(None);
        let r = run(&e, 10);
        {
            let s = SledStore::open(dir.path()).unwrap();
            s.insert_event(&e, std::slice::from_ref(&r)).unwrap();
            let out = s
                .apply_state(&op_incr("tickets", Some(86_400_000)), 1_000, &mut |out| {
                    let mut run = r.clone();
                    run.steps.push(StepRecord {
                        id: "count".into(),
                        call: "state".into(),
                        status: StepStatus::Succeeded,
                        input: json!({}),
                        request: None,
                        http_status: None,
                        output: out.to_json(),
                        error: None,
                        started_at: 1_000,
                        duration_ms: 0,
                        attempts: 1,
                        history: vec![],
                    });
                    Some(run)
                })
                .unwrap();
            assert_eq!(out, StateOutput::Count { count: 1 });
            s.flush().unwrap();
        }
        let s = reopened(|| SledStore::open(dir.path()));
        let saved = s.run(&r.id).unwrap().unwrap();
        assert_eq!(saved.steps[0].output, json!({"count": 1}));
        let entries = s.state_get(&key("tickets"), 2_000).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].value, json!(1));
    }

    #[test]
    fn concurrent_increments_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(SledStore::open(dir.path()).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for _ in 0..250 {
                        s.apply_state(&op_incr("plain", None), 5, &mut |_| None)
                            .unwrap();
                        s.apply_state(&op_incr("window", Some(60_000)), 5, &mut |_| None)
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let read = StateOp::Incr {
            key: key("window"),
            by: 0,
            window_ms: Some(60_000),
            ttl_ms: None,
        };
        assert_eq!(
            s.apply_state(&read, 5, &mut |_| None).unwrap(),
            StateOutput::Count { count: 2000 }
        );
        assert_eq!(
            s.apply_state(&StateOp::Get(key("plain")), 5, &mut |_| None)
                .unwrap(),
            StateOutput::Value {
                found: true,
                value: json!(2000)
            }
        );
    }

    #[test]
    fn expired_state_is_hidden_then_swept_in_bounded_passes() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        for i in 0..25 {
            let set = StateOp::Set {
                key: key(&format!("k{i:02}")),
                value: json!(i),
                // Odd keys live 1 s, even keys forever.
                ttl_ms: (i % 2 == 1).then_some(1_000),
            };
            s.apply_state(&set, 0, &mut |_| None).unwrap();
        }
        s.apply_state(&op_incr("c", Some(10_000)), 0, &mut |_| None)
            .unwrap();
        assert_eq!(s.state_entries(None, None, 100, 999).unwrap().len(), 26);
        let live = s.state_entries(None, None, 100, 1_000).unwrap();
        assert_eq!(
            live.len(),
            14,
            "odd keys expired, counter still inside its window"
        );
        assert_eq!(
            s.apply_state(&StateOp::Get(key("k01")), 1_000, &mut |_| None)
                .unwrap(),
            StateOutput::Value {
                found: false,
                value: serde_json::Value::Null
            }
        );
        // Expired entries are still stored until a sweep (or a read) removes them.
        let stored = |s: &SledStore| s.kv.scan_prefix(b"v/").count();
        assert_eq!(stored(&s), 24, "the read of k01 removed it");
        // Each pass looks at 10 entries at most; a full cycle removes the rest.
        let (mut removed, mut cycle) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            let swept = s.sweep_state(20_000, 10).unwrap();
            removed.push(swept.removed);
            cycle.push(swept.cycle_done);
        }
        assert_eq!(cycle, [false, false, true]);
        assert_eq!(removed.iter().sum::<usize>(), 11 + 1, "{removed:?}");
        assert!(removed.iter().all(|n| *n <= 10));
        assert_eq!(stored(&s), 13);
        assert_eq!(s.kv.scan_prefix(b"n/").count(), 0);
    }

    #[test]
    fn state_lists_by_namespace_in_pages() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        for ns in ["a", "b"] {
            for k in ["x", "y", "z"] {
                let set = StateOp::Set {
                    key: StateKey::new(ns, k).unwrap(),
                    value: json!(k),
                    ttl_ms: None,
                };
                s.apply_state(&set, 0, &mut |_| None).unwrap();
            }
        }
        let counter = StateOp::Incr {
            key: StateKey::new("b", "x").unwrap(),
            by: 1,
            window_ms: Some(1_000),
            ttl_ms: None,
        };
        s.apply_state(&counter, 0, &mut |_| None).unwrap();
        let b = s.state_entries(Some("b"), None, 100, 0).unwrap();
        let names: Vec<String> = b
            .iter()
            .map(|e| format!("{:?}:{}", e.kind, e.key))
            .collect();
        assert_eq!(names, ["Counter:x", "Value:x", "Value:y", "Value:z"]);
        let mut all = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = s.state_entries(None, after.as_deref(), 3, 0).unwrap();
            let Some(last) = page.last() else { break };
            after = Some(state::parse_cursor(&last.cursor).unwrap());
            all.extend(page);
        }
        assert_eq!(all.len(), 7);
        let deleted = s
            .apply_state(
                &StateOp::Delete(StateKey::new("b", "x").unwrap()),
                0,
                &mut |_| None,
            )
            .unwrap();
        assert_eq!(deleted, StateOutput::Deleted { deleted: true });
        assert_eq!(s.state_entries(Some("b"), None, 100, 0).unwrap().len(), 2);
    }
}
