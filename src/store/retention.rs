//! Retention for the sled store: events older than the window are deleted
//! with their runs, the runs' index keys and counters, and the event's
//! dedupe (`d/`) and replay (`p/`) keys — in bounded chunks, each one
//! atomic batch under the store lock, so ingest waits at most one chunk.
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
/// nothing keeps. The caller holds the store lock.
pub fn expire(kv: &Overlay, from: &mut Vec<u8>, cutoff: i64, max: usize) -> Result<Expired> {
    let end = format!("e/{}", super::id_floor(cutoff)).into_bytes();
    let start = if from.is_empty() {
        Bound::Included(b"e/".to_vec())
    } else {
        Bound::Excluded(from.clone())
    };
    let mut out = Expired::default();
    let mut batch = Batch::default();
    let mut ix = Index::new(kv);
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
        let mut runs = Vec::new();
        let mut keep = false;
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
                keep = true;
                break;
            }
            runs.push(run);
        }
        if keep {
            out.kept += 1;
            continue;
        }
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
        batch.remove(k);
        ix.event_removed();
        out.events += 1;
    }
    out.cycle_done = examined < max;
    *from = if out.cycle_done {
        Vec::new()
    } else {
        last.unwrap_or_default()
    };
    ix.commit(&mut batch)?;
    kv.write(batch).map_err(io)?;
    Ok(out)
}
