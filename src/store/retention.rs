//! Retention for the sled store: events older than the window are deleted
//! with their runs, the runs' index keys and counters, and the event's
//! dedupe (`d/`) and replay (`p/`) keys — in bounded chunks, each one
//! atomic batch. A chunk reads its old records first, without the store
//! lock (they are cold: sled reads them from disk), and takes the lock
//! only to check the candidates again and write the batch, so ingest waits
//! at most one chunk's re-check of warm records.
//!
//! Kept whatever their age, with their event: runs not finished (queued,
//! running, retrying, waiting) and dead letters (`dead`, until a person
//! retries them and they finish). An event whose debounced run moved on to
//! a newer event goes without it (the run is deleted with that event).
//! Recipe state is not retention's business (its values expire by TTL).
//!
//! Restart-safe by construction: nothing is remembered but a cursor in
//! memory; a pass after a restart starts from the oldest event again.
//! Must never: delete a run that is not final or is dead, or a key that
//! now belongs to another event.

use super::index::{Index, IndexedRun};
use super::overlay::{Batch, Overlay};
use super::{Result, RunStatus, StoreError};
use std::ops::Bound;

/// What one chunk did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expired {
    pub events: usize,
    pub runs: usize,
    /// Old events kept for a run not finished or dead.
    pub kept: usize,
    /// This chunk reached the window: the next starts from the oldest event.
    pub cycle_done: bool,
}

/// The parts of an event retention needs (the body is skipped).
#[derive(serde::Deserialize)]
struct EventHead {
    id: String,
    connector: String,
    #[serde(default)]
    delivery_id: Option<String>,
    #[serde(default)]
    runs: Vec<String>,
    #[serde(default)]
    replay: Option<super::ReplayGuard>,
}

fn io(e: sled::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

fn decode<T: serde::de::DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        detail: e.to_string(),
    })
}

/// Look at up to `max` events older than `cutoff` (ms), from `from` (the
/// last key a previous chunk looked at; empty: the oldest), and delete those
/// nothing keeps. The caller serialises chunks (it holds `from`); `lock`
/// takes the store lock, which is held only for the re-check and the write.
pub fn expire<G>(
    kv: &Overlay,
    lock: impl FnOnce() -> G,
    from: &mut Vec<u8>,
    cutoff: i64,
    max: usize,
) -> Result<Expired> {
    let (mut out, candidates) = look(kv, from, cutoff, max)?;
    {
        let _held = lock();
        delete(kv, candidates, &mut out)?;
    }
    // Into the tree now, as a batch of its own (a few hundred keys). Left
    // in the overlay on a hub with no group commits (the load stopped),
    // a pass's chunks piled up to the overlay's bound and went to sled as
    // one batch of ~65,000 removals, whose replaced nodes took RSS from
    // 50 to 500-680 MiB (BENCHMARKS.md, "Retention after the load stops").
    kv.apply().map_err(io)?;
    Ok(out)
}

/// An old event retention found deletable without the store lock.
struct Candidate {
    key: Vec<u8>,
    event: EventHead,
}

/// Without the store lock: read the chunk's events and their runs (old
/// records, often cold in sled's cache) and keep those that look
/// deletable. Ingest does not wait for these reads; [`delete`] checks
/// again under the lock, where the records are warm.
fn look(
    kv: &Overlay,
    from: &mut Vec<u8>,
    cutoff: i64,
    max: usize,
) -> Result<(Expired, Vec<Candidate>)> {
    let end = format!("e/{}", super::id_floor(cutoff)).into_bytes();
    let start = if from.is_empty() {
        Bound::Included(b"e/".to_vec())
    } else {
        Bound::Excluded(from.clone())
    };
    let mut out = Expired::default();
    let mut candidates = Vec::new();
    let mut examined = 0;
    let mut last = None;
    for item in kv.range((start, Bound::Excluded(end))) {
        if examined >= max {
            break;
        }
        examined += 1;
        let (k, v) = item.map_err(io)?;
        last = Some(k.to_vec());
        let event: EventHead = decode(&k, &v)?;
        if deletable_runs(kv, &event)?.is_some() {
            candidates.push(Candidate {
                key: k.to_vec(),
                event,
            });
        } else {
            out.kept += 1;
        }
    }
    out.cycle_done = examined < max;
    *from = if out.cycle_done {
        Vec::new()
    } else {
        last.unwrap_or_default()
    };
    Ok((out, candidates))
}

/// Under the store lock: check each candidate again (a run may have been
/// retried, a `d/` or `p/` key taken by a newer event since [`look`]; an
/// event record never changes, and only retention deletes one) and delete
/// it with its runs and keys in one batch, counters adjusted.
fn delete(kv: &Overlay, candidates: Vec<Candidate>, out: &mut Expired) -> Result<()> {
    let mut batch = Batch::default();
    let mut ix = Index::new(kv);
    for Candidate { key, event } in candidates {
        let Some(runs) = deletable_runs(kv, &event)? else {
            out.kept += 1;
            continue;
        };
        for run in &runs {
            ix.remove_run(&mut batch, &run.recipe, &run.id)?;
        }
        out.runs += runs.len();
        if let Some(d) = &event.delivery_id {
            let dk = format!("d/{}\0{d}", event.connector).into_bytes();
            if kv.get(&dk).map_err(io)?.as_deref() == Some(event.id.as_bytes()) {
                batch.remove(dk);
            }
        }
        if let Some(r) = &event.replay {
            let pk = format!("p/{}\0{}", event.connector, r.key).into_bytes();
            let mine = kv
                .get(&pk)
                .map_err(io)?
                .is_some_and(|v| v.split(|b| *b == 0).next() == Some(event.id.as_bytes()));
            if mine {
                batch.remove(pk);
            }
        }
        batch.remove(key);
        ix.event_removed();
        out.events += 1;
    }
    ix.commit(&mut batch)?;
    kv.write(batch).map_err(io)?;
    Ok(())
}

/// The runs that go with `event`, or `None` if one keeps it (not final, or
/// dead). A debounced run that took a newer event goes with that one.
fn deletable_runs(kv: &Overlay, event: &EventHead) -> Result<Option<Vec<IndexedRun>>> {
    let mut runs = Vec::new();
    for id in &event.runs {
        let rk = format!("r/{id}");
        let Some(rv) = kv.get(rk.as_bytes()).map_err(io)? else {
            continue;
        };
        let run: IndexedRun = decode(rk.as_bytes(), &rv)?;
        if run.event_id != event.id {
            continue; // a debounced run that took a newer event
        }
        if !run.status.is_final() || run.status == RunStatus::Dead {
            return Ok(None);
        }
        runs.push(run);
    }
    Ok(Some(runs))
}
