//! Secondary keys and counters of the sled store, so queue depth, counts
//! and filtered run listings cost no scan of the records.
//!
//! Every write of a run record goes through [`Index::put_run`] (or
//! [`Index::remove_run`]) into the **same batch** as the record; the
//! counters' new values go into that batch too ([`Index::commit`]). A batch
//! is applied whole or not at all, so after a crash (kill -9 at any point)
//! the keys and counters describe exactly the records that survived.
//!
//! Keys (also in ARCHITECTURE.md "Store key layout"):
//! - `is/<status code><run id>` → empty: the status listing;
//! - `iq/<recipe>\0<status code><run id>` → empty: the recipe + status
//!   listing, and merged over the statuses the recipe listing;
//! - `#/counts` → every count, u64 big-endian each: events, then runs by
//!   status in [`STATUSES`] order (one key, so a group commit writes the
//!   counts once, not once per count it changes);
//! - `#/index` → version of this layout; a store without it (made before
//!   the index existed, or whose rebuild was interrupted) is indexed once
//!   when it is opened, and so is one of version 1 ([`rebuild`]).
//!
//! The indexed status of a run is the status in its stored record: every
//! write of a record goes through [`Index::put_run`] under the store's
//! lock, so record and keys never disagree. (Version 1 kept it in an
//! `ir/<recipe>\0<run id>` key as well: one more sled write per status
//! change, and one key per count, `#/events` and `#/runs/<status>`:
//! BENCHMARKS.md "Fewer keys per run".)
//!
//! Counters are read-modify-written, so every batch that changes one is
//! built and applied under the store's lock (the sled backend's `lock`).
//! Must never: change a record, or be written outside its record's batch.

use super::overlay::{Batch, Overlay};
use super::{Result, Run, RunStatus, StoreError};
use std::collections::HashMap;
use std::ops::Bound;

/// Every status, in counter order.
pub const STATUSES: [RunStatus; 9] = [
    RunStatus::Queued,
    RunStatus::Running,
    RunStatus::Retrying,
    RunStatus::Succeeded,
    RunStatus::Failed,
    RunStatus::Dead,
    RunStatus::Waiting,
    RunStatus::Cancelled,
    RunStatus::Skipped,
];

/// Version of the layout above, in `#/index`.
const VERSION: &[u8] = b"2";
const VERSION_KEY: &[u8] = b"#/index";
const COUNTS: &[u8] = b"#/counts";

/// One byte per status, in keys.
pub fn code(s: RunStatus) -> u8 {
    match s {
        RunStatus::Queued => b'q',
        RunStatus::Running => b'r',
        RunStatus::Retrying => b't',
        RunStatus::Succeeded => b's',
        RunStatus::Failed => b'f',
        RunStatus::Dead => b'd',
        RunStatus::Waiting => b'w',
        RunStatus::Cancelled => b'c',
        RunStatus::Skipped => b'k',
    }
}

fn slot(s: RunStatus) -> usize {
    STATUSES.iter().position(|x| *x == s).unwrap_or(0)
}

pub fn status_name(s: RunStatus) -> &'static str {
    match s {
        RunStatus::Queued => "queued",
        RunStatus::Running => "running",
        RunStatus::Retrying => "retrying",
        RunStatus::Succeeded => "succeeded",
        RunStatus::Failed => "failed",
        RunStatus::Dead => "dead",
        RunStatus::Waiting => "waiting",
        RunStatus::Cancelled => "cancelled",
        RunStatus::Skipped => "skipped",
    }
}

/// The prefixes of a recipe's runs: one `iq/` range per status, merged by
/// [`newest_ids`].
pub fn recipe_prefixes(recipe: &str) -> Vec<Vec<u8>> {
    STATUSES
        .iter()
        .map(|s| recipe_status_prefix(recipe, *s))
        .collect()
}

/// `is/<code>`: the prefix of the runs in one status.
pub fn status_prefix(s: RunStatus) -> Vec<u8> {
    vec![b'i', b's', b'/', code(s)]
}

/// `iq/<recipe>\0<code>`: the prefix of a recipe's runs in one status.
pub fn recipe_status_prefix(recipe: &str, s: RunStatus) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + recipe.len());
    k.extend_from_slice(b"iq/");
    k.extend_from_slice(recipe.as_bytes());
    k.push(0);
    k.push(code(s));
    k
}

fn with_id(mut prefix: Vec<u8>, id: &str) -> Vec<u8> {
    prefix.extend_from_slice(id.as_bytes());
    prefix
}

fn io(e: sled::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

/// The counts in `#/counts`: events, then runs by status in [`STATUSES`]
/// order (absent: all 0).
pub fn read_counts(kv: &Overlay) -> Result<[u64; 10]> {
    let mut counts = [0u64; 10];
    if let Some(v) = kv.get(COUNTS).map_err(io)? {
        if v.len() != 80 {
            return Err(StoreError::Corrupt {
                key: "#/counts".into(),
                detail: format!("{} bytes, expected 80", v.len()),
            });
        }
        for (c, b) in counts.iter_mut().zip(v.chunks_exact(8)) {
            *c = u64::from_be_bytes(b.try_into().unwrap_or_default());
        }
    }
    Ok(counts)
}

fn encode_counts(counts: &[u64; 10]) -> Vec<u8> {
    counts.iter().flat_map(|c| c.to_be_bytes()).collect()
}

/// How many runs are in status `s` by the counts.
pub fn count_of(counts: &[u64; 10], s: RunStatus) -> u64 {
    counts[1 + slot(s)]
}

/// The index changes of one batch: which runs it writes (so a second write
/// of the same run in the batch sees the first) and the counter deltas.
pub struct Index<'a> {
    kv: &'a Overlay,
    written: HashMap<String, Option<RunStatus>>,
    events: i64,
    runs: [i64; 9],
}

impl<'a> Index<'a> {
    pub fn new(kv: &'a Overlay) -> Index<'a> {
        Index {
            kv,
            written: HashMap::new(),
            events: 0,
            runs: [0; 9],
        }
    }

    /// The run's status as indexed: its stored record's (this batch's
    /// writes first).
    pub fn status(&self, id: &str) -> Result<Option<RunStatus>> {
        if let Some(s) = self.written.get(id) {
            return Ok(*s);
        }
        let key = with_id(b"r/".to_vec(), id);
        let Some(v) = self.kv.get(&key).map_err(io)? else {
            return Ok(None);
        };
        let head: StatusOnly = serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
            key: String::from_utf8_lossy(&key).into_owned(),
            detail: e.to_string(),
        })?;
        Ok(Some(head.status))
    }

    /// Write `run`'s record and its index keys into `batch`.
    pub fn put_run(&mut self, batch: &mut Batch, run: &Run, record: Vec<u8>) -> Result<()> {
        let old = self.status(&run.id)?;
        batch.insert(with_id(b"r/".to_vec(), &run.id), record);
        if old == Some(run.status) {
            return Ok(());
        }
        if let Some(old) = old {
            self.unindex(batch, &run.recipe, &run.id, old);
        }
        batch.insert(with_id(status_prefix(run.status), &run.id), &[][..]);
        batch.insert(
            with_id(recipe_status_prefix(&run.recipe, run.status), &run.id),
            &[][..],
        );
        self.runs[slot(run.status)] += 1;
        self.written.insert(run.id.clone(), Some(run.status));
        Ok(())
    }

    /// Remove a run's record and its index keys (retention).
    pub fn remove_run(&mut self, batch: &mut Batch, recipe: &str, id: &str) -> Result<()> {
        if let Some(old) = self.status(id)? {
            self.unindex(batch, recipe, id, old);
        }
        batch.remove(with_id(b"r/".to_vec(), id));
        self.written.insert(id.to_string(), None);
        Ok(())
    }

    fn unindex(&mut self, batch: &mut Batch, recipe: &str, id: &str, old: RunStatus) {
        batch.remove(with_id(status_prefix(old), id));
        batch.remove(with_id(recipe_status_prefix(recipe, old), id));
        self.runs[slot(old)] -= 1;
    }

    pub fn event_added(&mut self) {
        self.events += 1;
    }

    pub fn event_removed(&mut self) {
        self.events -= 1;
    }

    /// Put the counts' new values into `batch`, if they changed.
    pub fn commit(self, batch: &mut Batch) -> Result<()> {
        if self.events == 0 && self.runs.iter().all(|d| *d == 0) {
            return Ok(());
        }
        let mut counts = read_counts(self.kv)?;
        let deltas = std::iter::once(self.events).chain(self.runs);
        for (c, d) in counts.iter_mut().zip(deltas) {
            *c = c.saturating_add_signed(d);
        }
        batch.insert(COUNTS, encode_counts(&counts));
        Ok(())
    }
}

/// The status of a stored run (the rest of the record is skipped unparsed).
#[derive(serde::Deserialize)]
struct StatusOnly {
    status: RunStatus,
}

/// What a run's listing needs from its record (the rest is skipped unparsed).
#[derive(serde::Deserialize)]
pub struct IndexedRun {
    pub id: String,
    pub recipe: String,
    pub status: RunStatus,
    /// The event it runs for (a debounced run moves to its newest event).
    #[serde(default)]
    pub event_id: String,
}

/// Index a store that has no index, an interrupted one or one of another
/// version (1 had `ir/` keys too): drop what is there, index every run,
/// count events, then write the version — last, so an interruption means
/// a rebuild from scratch at the next open. Runs before anything else
/// writes (at open).
pub fn rebuild(tree: &sled::Tree) -> Result<()> {
    if tree.get(VERSION_KEY).map_err(io)?.as_deref() == Some(VERSION) {
        return Ok(());
    }
    for prefix in [&b"ir/"[..], b"is/", b"iq/", b"#/"] {
        let mut batch = sled::Batch::default();
        for item in tree.scan_prefix(prefix) {
            batch.remove(item.map_err(io)?.0);
        }
        tree.apply_batch(batch).map_err(io)?;
    }
    let mut counts = [0u64; 9];
    let mut batch = sled::Batch::default();
    let mut in_batch = 0;
    for item in tree.scan_prefix(b"r/") {
        let (k, v) = item.map_err(io)?;
        let run: IndexedRun = serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
            key: String::from_utf8_lossy(&k).into_owned(),
            detail: e.to_string(),
        })?;
        batch.insert(with_id(status_prefix(run.status), &run.id), &[][..]);
        batch.insert(
            with_id(recipe_status_prefix(&run.recipe, run.status), &run.id),
            &[][..],
        );
        counts[slot(run.status)] += 1;
        in_batch += 1;
        if in_batch == 1000 {
            tree.apply_batch(std::mem::take(&mut batch)).map_err(io)?;
            in_batch = 0;
        }
    }
    let mut all = [0u64; 10];
    all[0] = tree.scan_prefix(b"e/").count() as u64;
    all[1..].copy_from_slice(&counts);
    batch.insert(COUNTS, encode_counts(&all));
    batch.insert(VERSION_KEY, VERSION);
    tree.apply_batch(batch).map_err(io)
}

/// Run ids under `prefixes` (each `<prefix><run id>`), newest first, older
/// than `before`: the listings merged by id (ids sort by time).
pub fn newest_ids(
    kv: &Overlay,
    prefixes: &[Vec<u8>],
    before: Option<&str>,
) -> impl Iterator<Item = Result<String>> {
    let mut iters: Vec<_> = prefixes
        .iter()
        .map(|p| {
            let end = match before {
                Some(b) => with_id(p.clone(), b),
                None => super::sled::prefix_end(p),
            };
            let len = p.len();
            kv.range_rev((Bound::Included(p.clone()), Bound::Excluded(end)))
                .map(move |item| {
                    item.map_err(io)
                        .map(|(k, _)| String::from_utf8_lossy(&k[len..]).into_owned())
                })
                .peekable()
        })
        .collect();
    std::iter::from_fn(move || {
        // The iterator whose next id is the newest; an error comes first.
        let mut best: Option<(usize, String)> = None;
        for (i, it) in iters.iter_mut().enumerate() {
            match it.peek() {
                None => {}
                Some(Err(_)) => return it.next(),
                Some(Ok(id)) if best.as_ref().is_none_or(|(_, b)| id > b) => {
                    best = Some((i, id.clone()));
                }
                Some(Ok(_)) => {}
            }
        }
        best.and_then(|(i, _)| iters[i].next())
    })
}

/// The counts `#/counts` holds.
pub fn counted(kv: &Overlay) -> Result<super::Counts> {
    let counts = read_counts(kv)?;
    let mut c = super::Counts {
        events: counts[0],
        ..Default::default()
    };
    for s in STATUSES {
        c.runs
            .insert(status_name(s).to_string(), count_of(&counts, s));
    }
    c.queue_depth = [RunStatus::Queued, RunStatus::Running, RunStatus::Retrying]
        .iter()
        .map(|s| c.status(*s))
        .sum();
    Ok(c)
}

/// Count everything by a full scan of the records, and check the index
/// keys against them: (counts, problems found). O(n): for `store stats
/// --scan` and tests.
pub fn audit(kv: &Overlay) -> Result<(super::Counts, Vec<String>)> {
    let mut c = super::Counts::default();
    for s in STATUSES {
        c.runs.insert(status_name(s).to_string(), 0);
    }
    let mut problems = Vec::new();
    let mut expected = std::collections::BTreeSet::new();
    for item in kv.scan_prefix(b"r/") {
        let (k, v) = item.map_err(io)?;
        let run: IndexedRun = serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
            key: String::from_utf8_lossy(&k).into_owned(),
            detail: e.to_string(),
        })?;
        *c.runs
            .entry(status_name(run.status).to_string())
            .or_default() += 1;
        let is = with_id(status_prefix(run.status), &run.id);
        let iq = with_id(recipe_status_prefix(&run.recipe, run.status), &run.id);
        for k in [&is, &iq] {
            if kv.get(k).map_err(io)?.is_none() {
                problems.push(format!(
                    "run {}: {} missing",
                    run.id,
                    String::from_utf8_lossy(&k[..3])
                ));
            }
        }
        expected.extend([is, iq]);
    }
    // `ir/` is version 1's: any left is stale too.
    for prefix in [&b"ir/"[..], b"is/", b"iq/"] {
        for item in kv.scan_prefix(prefix) {
            let (k, _) = item.map_err(io)?;
            if !expected.contains(k.as_ref()) {
                problems.push(format!("stale index key {}", String::from_utf8_lossy(&k)));
            }
        }
    }
    c.events = kv.scan_prefix(b"e/").count() as u64;
    for item in kv.scan_prefix(b"q/") {
        let (_, v) = item.map_err(io)?;
        c.queue_depth += u64::from(v.as_ref() != b"p");
    }
    Ok((c, problems))
}

#[cfg(test)]
#[path = "index_tests.rs"]
mod tests;
