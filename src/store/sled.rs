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
//! - `is/`, `iq/`, `#/` → run index keys and counts (see [`super::index`])
//! - `v/`, `n/`, `a/<namespace>\0<key>` → recipe state (values, window
//!   counters, rotations; see [`super::state`])
//!
//! - `g/seq` → added to sled's id generator for the `k/` sequence (set by
//!   [`super::compact`], whose fresh store restarts sled's generator)
//!
//! Ids are time-ordered, so `e/` and `r/` scan newest-first in reverse.
//! Multi-key writes go through one `Batch`, which sled applies atomically.
//!
//! The directory also holds `switchboard.lock`, locked by whoever has the
//! store open (before sled's own lock, and also while a compaction swaps
//! sled's files, see [`super::compact`]).

use super::index::{self, Index};
use super::overlay::{Batch, Overlay};
use super::state::{self, Kv, StateEntry, StateKey, StateOp, StateOutput, Write};
use super::{
    ConcurrencySlot, Event, Heard, Inserted, Page, Result, Retried, Run, RunFilter, RunHead,
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
/// 8 MiB, then 4 MiB, cost no W1 throughput seen, and it is most of what a
/// hub that has just written 100,000 runs holds: 32 MiB took 2–2.5× that
/// in RSS; 8 → 4 MiB took 100,000 just-parked runs from +22 to +18 MiB
/// (BENCHMARKS.md, "100,000 waiting runs").
pub const CACHE_BYTES: u64 = 4 << 20;

pub struct SledStore {
    pub(super) db: sled::Db,
    /// `switchboard.lock`, held while the store is open: a compaction
    /// (which replaces sled's files) and a hub exclude each other by it.
    _lock: std::sync::Arc<std::fs::File>,
    /// sled's one data file (`db`), which holds its log: synced after each
    /// flush (see [`SledStore::sync`]).
    data_file: std::fs::File,
    /// Added to sled's id generator for concurrency slot sequences (`g/seq`).
    seq_base: u64,
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

/// The key of the id generator's floor (see the module doc).
pub(super) const SEQ_BASE: &[u8] = b"g/seq";

/// The file in a store directory that holds sled's log and pages.
const DATA_FILE: &str = "db";

/// How every sled store of ours is opened (the store itself, and a
/// compaction's fresh copy).
pub(super) fn sled_config(dir: &Path, cache_bytes: u64) -> sled::Config {
    let flush_ms = std::env::var("SWITCHBOARD_SLED_FLUSH_MS")
        .ok()
        .and_then(|m| m.parse::<u64>().ok())
        .filter(|m| *m > 0);
    sled::Config::new()
        .path(dir)
        .mode(sled::Mode::HighThroughput)
        // Durability comes from explicit flushes (group commit), not a timer.
        .flush_every_ms(flush_ms)
        .cache_capacity(cache_bytes)
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
        (Some(r), true) => Some(index::recipe_prefixes(r)),
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
                let due = run.due_at;
                let (keys, woken) = match run.hear(probe, event_id, now) {
                    Heard::Stale => {
                        batch.remove(k);
                        continue;
                    }
                    Heard::Cancelling(reason) => {
                        batch.insert(cancel_key(&id), reason.into_bytes());
                        matched.cancelling.push(id);
                        continue;
                    }
                    Heard::Woken { keys } => (keys, true),
                    Heard::Cancelled { keys } => (keys, false),
                };
                for c in &keys {
                    batch.remove(correlation_key(c, &id));
                }
                batch.remove(queue_key(due, &id));
                if woken {
                    batch.insert(queue_key(now, &id), &[][..]);
                    // Back to its lifetime keys (a park key may have been one).
                    list_cancel_keys(batch, &run);
                    matched.woken.push(id);
                } else {
                    if let Some(d) = &run.debounce {
                        let key = debounce_key(&d.key);
                        if self.kv.get(&key).map_err(io)?.as_deref() == Some(id.as_bytes()) {
                            batch.remove(key);
                        }
                    }
                    unlist_cancel_keys(batch, &run);
                    self.release_slot(batch, ix, &mut run, now)?;
                    matched.cancelled.push(id);
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
        Ok(run.filter(Run::debounce_pending))
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
    /// `SWITCHBOARD_SLED_CACHE_MIB` sets another bound on sled's page cache
    /// than [`CACHE_BYTES`] (README, "Memory").
    pub fn open(dir: &Path) -> Result<SledStore> {
        let cache = std::env::var("SWITCHBOARD_SLED_CACHE_MIB")
            .ok()
            .and_then(|m| m.parse::<u64>().ok())
            .map_or(CACHE_BYTES, |m| m.max(1) << 20);
        SledStore::open_with_cache(dir, cache)
    }

    /// [`SledStore::open`] with another bound on sled's page cache
    /// (benchmarks compare bounds; `serve` uses [`CACHE_BYTES`]).
    ///
    /// Takes `switchboard.lock` first, then finishes a compaction that a
    /// crash interrupted ([`super::compact::recover`]), then opens sled.
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<SledStore> {
        let lock = super::compact::lock(dir)?;
        super::compact::recover(dir)?;
        SledStore::open_locked(dir, cache_bytes, std::sync::Arc::new(lock))
    }

    /// Open sled in `dir` for a caller that holds `lock` (a compaction
    /// opens the store and its copy under the store's one lock).
    pub(super) fn open_locked(
        dir: &Path,
        cache_bytes: u64,
        lock: std::sync::Arc<std::fs::File>,
    ) -> Result<SledStore> {
        let db = sled_config(dir, cache_bytes).open().map_err(io)?;
        let tree = db.open_tree("switchboard").map_err(io)?;
        index::rebuild(&tree)?;
        let seq_base = tree
            .get(SEQ_BASE)
            .map_err(io)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(0, u64::from_be_bytes);
        let data_path = dir.join(DATA_FILE);
        let data_file = std::fs::File::open(&data_path)
            .map_err(|e| StoreError::Io(format!("{}: {e}", data_path.display())))?;
        Ok(SledStore {
            db,
            _lock: lock,
            data_file,
            seq_base,
            kv: Overlay::new(tree),
            lock: Mutex::new(()),
            state_lock: Mutex::new(()),
            sweep_from: Mutex::new(Vec::new()),
            expire_from: Mutex::new(Vec::new()),
        })
    }

    /// What `g/seq` holds (0 in a store never compacted).
    pub(super) fn seq_base(&self) -> u64 {
        self.seq_base
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
                if guard.replays(event.received_at, at) {
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
            // Copied only when the store fills in its debounce or concurrency part.
            let mut run = std::borrow::Cow::Borrowed(run);
            if let Some(d) = run
                .debounce
                .is_some()
                .then(|| run.to_mut().debounce.as_mut())
                .flatten()
            {
                let key = debounce_key(&d.key);
                if let Some(mut p) = self.pending_debounce(&key)? {
                    // The burst goes on: the pending run takes this event.
                    batch.remove(queue_key(p.due_at, &p.id));
                    p.absorb(&event.id, d);
                    batch.insert(queue_key(p.due_at, &p.id), &[][..]);
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
            if let Some(slot) = run
                .concurrency
                .is_some()
                .then(|| run.to_mut().concurrency.as_mut())
                .flatten()
            {
                // Arrival order within the key: a sequence from the store.
                slot.seq = self.seq_base + self.db.generate_id().map_err(io)?;
                batch.insert(slot_key(&slot.key, slot.seq), run.id.as_bytes());
            }
            list_cancel_keys(&mut batch, &run);
            ix.put_run(&mut batch, &run, encode(&*run)?)?;
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
        self.prepare_sync()?;
        self.sync()
    }

    fn prepare_sync(&self) -> Result<()> {
        // The group's writes become one sled batch ...
        self.kv.apply().map(|_| ()).map_err(io)
    }

    fn sync(&self) -> Result<()> {
        // ... and every batch applied so far one log flush. sled writes its
        // log with `sync_file_range` on Linux, which neither saves a grown
        // file's size nor empties the disk's write cache: enough for a
        // killed process, not for a machine that loses power. `fdatasync`
        // on the same file does both.
        crate::crash::point("group.flush");
        self.db.flush().map_err(io)?;
        self.data_file
            .sync_data()
            .map_err(|e| StoreError::Io(format!("syncing the store's data file: {e}")))
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
            run.lease_until(now, lease_ms, turn);
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
        // Under the lock even when the status stays (a checkpoint): the
        // indexed status is the stored record's, so no write may change a
        // record between another's read of it and its write.
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
        unlist_cancel_keys(&mut batch, run);
        let mut ix = Index::new(&self.kv);
        // Copied only to take its concurrency slot out (most runs have none).
        let mut finished = std::borrow::Cow::Borrowed(run);
        if run.concurrency.is_some() {
            self.release_slot(&mut batch, &mut ix, finished.to_mut(), run.updated_at)?;
        }
        ix.put_run(&mut batch, &finished, encode(&*finished)?)?;
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
        // The leased runs are the `running` ones of the index, each with its
        // queue entry at its lease's end. Reading only those keeps start-up
        // from paging in every waiting run: a scan of all future queue
        // entries read 100,000 parked records into sled's cache
        // (BENCHMARKS.md, "100,000 waiting runs").
        let _g = self.guard();
        let mut batch = Batch::default();
        let mut ix = Index::new(&self.kv);
        let mut n = 0;
        let running = self
            .kv
            .scan_prefix(&index::status_prefix(RunStatus::Running))
            .map(|item| item.map(|(k, _)| String::from_utf8_lossy(&k[4..]).into_owned()))
            .collect::<sled::Result<Vec<String>>>()
            .map_err(io)?;
        let mut unlisted = false;
        for id in running {
            let Some(mut run) = self.get::<Run>(format!("r/{id}").as_bytes())? else {
                continue;
            };
            // Only leases still in force: an expired one is due already.
            if run.status != RunStatus::Running || run.due_at <= now {
                continue;
            }
            let lease = queue_key(run.due_at, &id);
            if self.kv.get(&lease).map_err(io)?.is_none() {
                unlisted = true; // not where it should be: the scan below
                continue;
            }
            batch.remove(lease);
            run.due_at = now;
            batch.insert(queue_key(now, &id), &[][..]);
            ix.put_run(&mut batch, &run, encode(&run)?)?;
            n += 1;
        }
        if unlisted {
            // Every future entry but the parked ones (a parked run is not
            // leased), as before the index named the running runs.
            for item in self.kv.range((
                Bound::Included(queue_key(now + 1, "")),
                Bound::Excluded(b"q0".to_vec()),
            )) {
                let (k, v) = item.map_err(io)?;
                if v.as_ref() == PARKED {
                    continue;
                }
                let id = String::from_utf8_lossy(&k[10..]).into_owned();
                let Some(mut run) = self.get::<Run>(format!("r/{id}").as_bytes())? else {
                    batch.remove(k);
                    continue;
                };
                if run.status == RunStatus::Running && queue_key(run.due_at, &id) != k.as_ref() {
                    batch.remove(k);
                    run.due_at = now;
                    batch.insert(queue_key(now, &id), &[][..]);
                    ix.put_run(&mut batch, &run, encode(&run)?)?;
                    n += 1;
                }
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
        let counts = index::read_counts(&self.kv)?;
        let count = |s| index::count_of(&counts, s);
        let backlog =
            count(RunStatus::Queued) + count(RunStatus::Running) + count(RunStatus::Retrying);
        Ok(crate::store::QueueCounts {
            backlog: backlog as usize,
            parked: count(RunStatus::Waiting) as usize,
        })
    }

    fn expire(&self, cutoff: i64, max: usize) -> Result<super::retention::Expired> {
        // `from` serialises chunks; the store lock is taken inside, only
        // for the re-check and the write (the reads happen before it).
        let mut from = self.expire_from.lock().unwrap_or_else(|p| p.into_inner());
        super::retention::expire(&self.kv, || self.guard(), &mut from, cutoff, max)
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
            keys: Vec::new(),
        })
    }

    fn key_usage(&self) -> Result<Option<Vec<super::KeyUsage>>> {
        let mut by: std::collections::BTreeMap<Vec<u8>, super::KeyUsage> = Default::default();
        for item in self.kv.range((Bound::Unbounded, Bound::Unbounded)) {
            let (k, v) = item.map_err(io)?;
            let end = k.iter().position(|b| *b == b'/').map_or(k.len(), |i| i + 1);
            let u = by.entry(k[..end].to_vec()).or_default();
            u.keys += 1;
            u.key_bytes += k.len() as u64;
            u.value_bytes += v.len() as u64;
        }
        Ok(Some(
            by.into_iter()
                .map(|(p, u)| super::KeyUsage {
                    prefix: String::from_utf8_lossy(&p).into_owned(),
                    ..u
                })
                .collect(),
        ))
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
            // Its record under the store lock (taken after `state_lock`,
            // never the other way round), as every record write.
            let _g = self.guard();
            let mut ix = Index::new(&self.kv);
            ix.put_run(&mut batch, &run, encode(&run)?)?;
            ix.commit(&mut batch)?;
            return self.kv.write(batch).map_err(io).map(|()| out);
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
    //! What only the sled store shows. The behaviour every backend shares
    //! is in `conformance.rs`, which runs on sled too.
    use super::*;
    use crate::store::conformance::{self, event, run, Backend};
    use std::sync::Arc;

    /// The store a conformance test writes to, kept for a look at its keys.
    struct Kept(Arc<SledStore>);

    impl Backend for Kept {
        fn open(&self) -> Arc<dyn Store> {
            self.0.clone()
        }
    }

    /// The file `sync` makes durable is the one sled writes its log to:
    /// a flush of new writes grows it (a wrong name would sync nothing).
    #[test]
    fn sync_covers_the_file_sled_writes() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let synced = s.data_file.metadata().unwrap();
        assert_eq!(
            synced.ino(),
            std::fs::metadata(dir.path().join(DATA_FILE)).unwrap().ino()
        );
        let before = synced.len();
        for _ in 0..200 {
            let e = event(None);
            s.insert_event(&e, &[run(&e, 1000)]).unwrap();
        }
        s.flush().unwrap();
        assert!(s.data_file.metadata().unwrap().len() > before);
    }

    #[test]
    fn a_woken_or_cancelled_run_leaves_no_correlation_key() {
        let dir = tempfile::tempdir().unwrap();
        let kept = Kept(Arc::new(SledStore::open(dir.path()).unwrap()));
        conformance::a_matching_event_wakes_or_cancels_waiting_runs_in_its_batch(&kept);
        let s = &kept.0;
        assert_eq!(
            s.kv.scan_prefix(b"w/").count() + s.kv.scan_prefix(b"c/").count(),
            0,
            "no correlation key is left"
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

    /// Retention reads a chunk without the store lock and checks it again
    /// under the lock: a failed run retried in between keeps its event.
    #[test]
    fn a_run_retried_while_retention_reads_keeps_its_event() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let mut stored = Vec::new();
        for _ in 0..2 {
            let mut e = event(None);
            let r = run(&e, 10);
            e.runs = vec![r.id.clone()];
            s.insert_event(&e, &[r]).unwrap();
            let mut r = s.lease(10, 60_000, 10).unwrap().remove(0);
            r.status = RunStatus::Failed;
            r.finished_at = Some(20);
            s.finish_run(&r).unwrap();
            stored.push((e, r));
        }
        let cutoff = super::super::id_time(&stored[1].0.id).unwrap() + 1;
        let retried = &stored[0].1.id;
        let mut from = Vec::new();
        let x = super::super::retention::expire(
            &s.kv,
            || {
                assert!(matches!(s.retry_run(retried, 30), Ok(Retried::Queued(_))));
                s.guard()
            },
            &mut from,
            cutoff,
            64,
        )
        .unwrap();
        assert_eq!((x.events, x.runs, x.kept), (1, 1, 1));
        // The chunk is in the tree, not left for a group commit: on an idle
        // hub the overlay would gather a whole pass and apply it at once.
        assert_eq!(s.kv.pending_len(), 0);
        assert!(s.event(&stored[0].0.id).unwrap().is_some());
        assert_eq!(s.run(retried).unwrap().unwrap().status, RunStatus::Queued);
        assert!(s.event(&stored[1].0.id).unwrap().is_none());
        let stats = s.stats(true).unwrap();
        assert_eq!(stats.problems, Vec::<String>::new());
        assert_eq!(Some(&stats.counts), stats.scanned.as_ref());
    }
}
