//! `switchboard store compact`: give a sled store's disk space back.
//!
//! sled reuses the space retention frees but keeps its file at its
//! high-water mark (BENCHMARKS.md, "Disk with retention on"). Compaction
//! copies every key of every tree into a fresh sled store inside the store
//! directory (`compact.tmp/`), checks the copy (every key and value hashed
//! on both sides, and the counters), and swaps sled's files in. Offline:
//! the store must not be open anywhere else (a running hub keeps
//! `switchboard.lock`, and compaction takes it for its whole length).
//!
//! **The swap, and why a crash at any point leaves a complete store.**
//! 1. The copy is written, flushed, closed, reopened and checked, then
//!    every file of it and its directories are fsynced. A crash before 2
//!    leaves the old store untouched: the next open deletes `compact.tmp/`.
//! 2. `compact.done` lists the copy's files; it is written to a temporary
//!    name, fsynced and renamed (then the directory fsynced), so it exists
//!    whole or not at all. From here on the copy is the store.
//! 3. Roll forward: each listed file is renamed from `compact.tmp/` over
//!    its place in the store directory (one atomic rename each), then every
//!    file the old store had and the copy has not (old snapshots and blobs)
//!    is deleted, the directory fsynced, `compact.tmp/` removed, and last
//!    `compact.done` removed.
//!
//! Every step of 3 can be done again: a file already moved is no longer in
//! `compact.tmp/`, a file already deleted is gone. Opening a store takes
//! `switchboard.lock` first and, if `compact.done` exists, finishes step 3
//! before sled sees the directory ([`recover`]), so sled never opens a mix
//! of old and new files.
//!
//! One thing is not copied byte for byte: sled's id generator restarts in a
//! fresh store, so the copy's `g/seq` is set past every sequence the old
//! store handed out, and concurrency slots keep arrival order.
//!
//! Must never: touch the store's own files before `compact.done` is
//! durable, or let sled open a directory that still has `compact.done`.

use super::sled::{sled_config, SledStore, SEQ_BASE};
use super::{Counts, Result, Store, StoreError};
use fs2::FileExt;
use sha2::{Digest, Sha256};
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Locked by whoever has the store open.
pub const LOCK_FILE: &str = "switchboard.lock";
/// The fresh copy, while it is built.
const NEW_DIR: &str = "compact.tmp";
/// The copy is complete: its files, one a line (a directory ends in `/`).
const MARKER: &str = "compact.done";
const MARKER_TMP: &str = "compact.done.tmp";
/// sled's page cache while copying (the copy reads each key once).
const CACHE_BYTES: u64 = 64 << 20;
/// Keys and values per sled batch of the copy.
const BATCH_BYTES: usize = 8 << 20;

/// What a compaction did.
#[derive(Debug, Clone, PartialEq)]
pub struct Compacted {
    /// The store's files before and after.
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Keys copied (every tree) and their keys' and values' bytes.
    pub keys: u64,
    pub data_bytes: u64,
    /// What the store holds, found equal on both sides.
    pub counts: Counts,
    pub state_entries: u64,
    pub elapsed: Duration,
}

fn fs_err(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let at = format!("{what} {}", path.display());
    move |e| StoreError::Io(format!("{at}: {e}"))
}

fn sled_err(e: sled::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

/// Take `dir/switchboard.lock` (creating the directory): the store is ours
/// until the file is closed. Fails at once if another process has it.
pub fn lock(dir: &Path) -> Result<File> {
    fs::create_dir_all(dir).map_err(fs_err("cannot create", dir))?;
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(fs_err("cannot open", &path))?;
    file.try_lock_exclusive()
        .map_err(|_| StoreError::InUse(dir.display().to_string()))?;
    Ok(file)
}

/// Finish a compaction a crash interrupted, or drop its unfinished copy.
/// The caller holds the lock. Returns whether a compaction was finished.
pub fn recover(dir: &Path) -> Result<bool> {
    if dir.join(MARKER).exists() {
        roll_forward(dir)?;
        tracing::warn!(store = %dir.display(), "finished a compaction that was interrupted");
        return Ok(true);
    }
    // Before the marker the old store was never touched.
    let stale = dir.join(MARKER_TMP);
    if stale.exists() {
        fs::remove_file(&stale).map_err(fs_err("cannot remove", &stale))?;
    }
    let new = dir.join(NEW_DIR);
    if new.exists() {
        fs::remove_dir_all(&new).map_err(fs_err("cannot remove", &new))?;
    }
    Ok(false)
}

/// Compact the store in `dir` (see the module doc). `progress` hears the
/// number of keys copied so far, every 100,000.
pub fn compact(dir: &Path, mut progress: impl FnMut(u64)) -> Result<Compacted> {
    let start = Instant::now();
    if !dir.join("conf").exists() {
        return Err(StoreError::Io(format!(
            "no embedded store in {}",
            dir.display()
        )));
    }
    let lock = Arc::new(lock(dir)?);
    recover(dir)?;
    // Whoever had the store open has let go of our lock; sled's threads
    // may hold its own a moment longer.
    wait_closed(dir)?;
    let new_dir = dir.join(NEW_DIR);
    let old = SledStore::open_locked(dir, CACHE_BYTES, lock.clone())?;
    let result = copy_and_check(&old, &new_dir, lock.clone(), &mut progress);
    let (copied, bytes_after) = match result {
        Ok(r) => r,
        Err(e) => {
            drop(old);
            // The old store is whole; the copy goes.
            let _ = fs::remove_dir_all(&new_dir);
            return Err(e);
        }
    };
    let bytes_before = old.db.size_on_disk().map_err(sled_err)?;
    drop(old);
    wait_closed(dir)?;
    crate::crash::point("compact.copied");

    // 2: the marker, whole or not at all.
    let mut list = String::new();
    for (rel, is_dir) in files(&new_dir)? {
        list.push_str(&rel);
        if is_dir {
            list.push('/');
        }
        list.push('\n');
    }
    let tmp = dir.join(MARKER_TMP);
    let mut f = File::create(&tmp).map_err(fs_err("cannot create", &tmp))?;
    std::io::Write::write_all(&mut f, list.as_bytes()).map_err(fs_err("cannot write", &tmp))?;
    f.sync_all().map_err(fs_err("cannot sync", &tmp))?;
    drop(f);
    fs::rename(&tmp, dir.join(MARKER)).map_err(fs_err("cannot rename", &tmp))?;
    sync_dir(dir)?;
    crate::crash::point("compact.marked");

    // 3.
    roll_forward(dir)?;
    drop(lock);
    Ok(Compacted {
        bytes_before,
        bytes_after,
        elapsed: start.elapsed(),
        ..copied
    })
}

/// Copy `old` into a fresh store in `new_dir`, close it, reopen and check
/// it, fsync it. Returns what was copied and the copy's size.
fn copy_and_check(
    old: &SledStore,
    new_dir: &Path,
    lock: Arc<File>,
    progress: &mut impl FnMut(u64),
) -> Result<(Compacted, u64)> {
    if new_dir.exists() {
        fs::remove_dir_all(new_dir).map_err(fs_err("cannot remove", new_dir))?;
    }
    old.flush()?;
    let before = old.stats(false)?;
    let seq_base = {
        let new = sled_config(new_dir, CACHE_BYTES).open().map_err(sled_err)?;
        let mut names = old.db.tree_names();
        names.sort();
        let (mut keys, mut batch, mut in_batch) = (0u64, sled::Batch::default(), 0usize);
        for name in &names {
            let from = old.db.open_tree(name).map_err(sled_err)?;
            let to = new.open_tree(name).map_err(sled_err)?;
            for item in from.iter() {
                let (k, v) = item.map_err(sled_err)?;
                in_batch += k.len() + v.len();
                batch.insert(k, v);
                keys += 1;
                if keys % 100_000 == 0 {
                    progress(keys);
                }
                if in_batch >= BATCH_BYTES {
                    to.apply_batch(std::mem::take(&mut batch))
                        .map_err(sled_err)?;
                    in_batch = 0;
                }
            }
            to.apply_batch(std::mem::take(&mut batch))
                .map_err(sled_err)?;
            in_batch = 0;
        }
        // Past every sequence the old store handed out (its generator
        // resumes above all of them after a restart).
        let seq_base = old.seq_base() + old.db.generate_id().map_err(sled_err)? + 1;
        new.open_tree("switchboard")
            .and_then(|t| t.insert(SEQ_BASE, &seq_base.to_be_bytes()[..]))
            .map_err(sled_err)?;
        new.flush().map_err(sled_err)?;
        seq_base
    };
    wait_closed(new_dir)?;

    // Reopened: what a restart will find.
    let (want_keys, want_bytes, want) = digest(&old.db)?;
    let copy = SledStore::open_locked(new_dir, CACHE_BYTES, lock)?;
    let after = copy.stats(false)?;
    let (keys, data_bytes, got) = digest(&copy.db)?;
    if (keys, data_bytes, got) != (want_keys, want_bytes, want) {
        return Err(StoreError::Io(format!(
            "the copy differs from the store: {keys} keys ({data_bytes} bytes) against {want_keys} ({want_bytes} bytes)"
        )));
    }
    if after.counts != before.counts || after.state_entries != before.state_entries {
        return Err(StoreError::Io(format!(
            "the copy's counts differ: {:?} with {} state entries against {:?} with {}",
            after.counts, after.state_entries, before.counts, before.state_entries
        )));
    }
    if copy.seq_base() != seq_base {
        return Err(StoreError::Io("the copy lost its sequence floor".into()));
    }
    let bytes_after = after.bytes_on_disk;
    drop(copy);
    wait_closed(new_dir)?;
    for (rel, is_dir) in files(new_dir)? {
        let p = new_dir.join(&rel);
        if is_dir {
            sync_dir(&p)?;
        } else {
            File::open(&p)
                .and_then(|f| f.sync_all())
                .map_err(fs_err("cannot sync", &p))?;
        }
    }
    sync_dir(new_dir)?;
    Ok((
        Compacted {
            bytes_before: 0,
            bytes_after: 0,
            keys,
            data_bytes,
            counts: before.counts,
            state_entries: before.state_entries,
            elapsed: Duration::ZERO,
        },
        bytes_after,
    ))
}

/// Every key and value of every tree (but `g/seq`) hashed in order: keys,
/// their keys' and values' bytes, the hash.
fn digest(db: &sled::Db) -> Result<(u64, u64, [u8; 32])> {
    let mut names = db.tree_names();
    names.sort();
    let (mut keys, mut bytes, mut h) = (0u64, 0u64, Sha256::new());
    for name in &names {
        let tree = db.open_tree(name).map_err(sled_err)?;
        h.update((name.len() as u64).to_be_bytes());
        h.update(name);
        for item in tree.iter() {
            let (k, v) = item.map_err(sled_err)?;
            if k == SEQ_BASE && name.as_ref() == b"switchboard" {
                continue;
            }
            keys += 1;
            bytes += (k.len() + v.len()) as u64;
            h.update((k.len() as u64).to_be_bytes());
            h.update(&k);
            h.update((v.len() as u64).to_be_bytes());
            h.update(&v);
        }
    }
    Ok((keys, bytes, h.finalize().into()))
}

/// Step 3 of the module doc: move the copy's files in, delete the old
/// store's others, remove the copy's directory and the marker.
fn roll_forward(dir: &Path) -> Result<()> {
    let marker = dir.join(MARKER);
    let list = fs::read_to_string(&marker).map_err(fs_err("cannot read", &marker))?;
    let new_dir = dir.join(NEW_DIR);
    let mut keep: std::collections::HashSet<PathBuf> = std::collections::HashSet::new();
    for line in list.lines().filter(|l| !l.is_empty()) {
        let (rel, is_dir) = match line.strip_suffix('/') {
            Some(d) => (PathBuf::from(d), true),
            None => (PathBuf::from(line), false),
        };
        let to = dir.join(&rel);
        if is_dir {
            fs::create_dir_all(&to).map_err(fs_err("cannot create", &to))?;
        } else {
            let from = new_dir.join(&rel);
            if from.exists() {
                fs::rename(&from, &to).map_err(fs_err("cannot move", &from))?;
                crate::crash::point("compact.moving");
            }
        }
        // Moved now or before: if a listed file is in neither place,
        // something else changed the directory; better not to open it.
        if !to.exists() {
            return Err(StoreError::Io(format!(
                "{} lists {}, which is in neither {} nor {}: the store needs a look before it is opened",
                marker.display(),
                rel.display(),
                new_dir.display(),
                dir.display()
            )));
        }
        keep.insert(rel);
    }
    for name in [LOCK_FILE, MARKER, NEW_DIR] {
        keep.insert(PathBuf::from(name));
    }
    // What the old store had and the copy has not (deepest first).
    let mut old: Vec<(String, bool)> = files(dir)?;
    old.reverse();
    for (rel, is_dir) in old {
        let rel_path = PathBuf::from(&rel);
        if keep.contains(&rel_path) || rel_path.starts_with(NEW_DIR) {
            continue;
        }
        let p = dir.join(&rel_path);
        if is_dir {
            fs::remove_dir_all(&p).map_err(fs_err("cannot remove", &p))?;
        } else {
            fs::remove_file(&p).map_err(fs_err("cannot remove", &p))?;
        }
    }
    for (rel, is_dir) in files(dir)? {
        if is_dir && !PathBuf::from(&rel).starts_with(NEW_DIR) {
            sync_dir(&dir.join(rel))?;
        }
    }
    sync_dir(dir)?;
    crate::crash::point("compact.cleaned");
    if new_dir.exists() {
        fs::remove_dir_all(&new_dir).map_err(fs_err("cannot remove", &new_dir))?;
    }
    fs::remove_file(&marker).map_err(fs_err("cannot remove", &marker))?;
    sync_dir(dir)
}

/// Every file and directory under `root`, relative, parents before their
/// contents.
fn files(root: &Path) -> Result<Vec<(String, bool)>> {
    let mut out = Vec::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let here = root.join(&rel);
        let mut entries: Vec<_> = fs::read_dir(&here)
            .map_err(fs_err("cannot list", &here))?
            .collect::<std::io::Result<_>>()
            .map_err(fs_err("cannot list", &here))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let r = rel.join(e.file_name());
            let is_dir = e
                .file_type()
                .map_err(fs_err("cannot stat", &e.path()))?
                .is_dir();
            out.push((r.to_string_lossy().into_owned(), is_dir));
            if is_dir {
                todo.push(r);
            }
        }
    }
    Ok(out)
}

/// Make a directory's entries (renames, new and removed files) durable.
fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(fs_err("cannot sync", dir))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Wait until sled has let go of the store in `dir`: its background
/// threads hold the data file's lock a moment after the last handle goes,
/// and may still write until then.
fn wait_closed(dir: &Path) -> Result<()> {
    let path = dir.join("db");
    for _ in 0..500 {
        let f = File::open(&path).map_err(fs_err("cannot open", &path))?;
        if f.try_lock_exclusive().is_ok() {
            let _ = FileExt::unlock(&f);
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(StoreError::Io(format!(
        "sled did not close {} within 10 s",
        dir.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::{event, run};
    use crate::store::sled::reopened;
    use crate::store::{Inserted, RunStatus};

    /// A store with finished, queued and leased runs, a concurrency key
    /// and state, compacted: the same keys, and a later run of the key
    /// sorts after the ones already waiting.
    #[test]
    fn a_compacted_store_holds_the_same_and_keeps_slot_order() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("store");
        let mut kept_ids = Vec::new();
        {
            let s = SledStore::open(&d).unwrap();
            for n in 0..300 {
                let mut e = event(Some(&format!("d{n}")));
                let mut r = run(&e, 1000);
                if n % 10 == 0 {
                    r.concurrency = Some(crate::store::ConcurrencySlot {
                        key: "r\0k".into(),
                        limit: 1,
                        seq: 0,
                    });
                }
                e.runs = vec![r.id.clone()];
                s.insert_event(&e, &[r]).unwrap();
                kept_ids.push(e.id.clone());
            }
            for mut r in s.lease(1000, 60_000, 100).unwrap() {
                r.status = RunStatus::Succeeded;
                s.finish_run(&r).unwrap();
            }
            s.flush().unwrap();
        }
        let before = reopened(|| SledStore::open(&d)).stats(true).unwrap();
        let c = reopened(|| compact(&d, |_| {})).clone();
        assert_eq!(c.counts, before.counts);
        assert_eq!(c.counts.events, 300);
        assert!(!d.join(NEW_DIR).exists() && !d.join(MARKER).exists());

        let s = reopened(|| SledStore::open(&d));
        let after = s.stats(true).unwrap();
        assert_eq!(after.counts, before.counts);
        assert!(after.problems.is_empty(), "{:?}", after.problems);
        // Dedupe still answers from the copy.
        assert!(matches!(
            s.insert_event(&event(Some("d7")), &[]).unwrap(),
            Inserted::Duplicate { .. }
        ));
        // A new run of the concurrency key queues behind the old ones.
        let mut e = event(Some("new"));
        let mut r = run(&e, 1000);
        r.concurrency = Some(crate::store::ConcurrencySlot {
            key: "r\0k".into(),
            limit: 1,
            seq: 0,
        });
        e.runs = vec![r.id.clone()];
        s.insert_event(&e, &[r]).unwrap();
        s.flush().unwrap();
        let slots: Vec<Vec<u8>> =
            s.db.open_tree("switchboard")
                .unwrap()
                .scan_prefix(b"k/")
                .map(|i| i.unwrap().1.to_vec())
                .collect();
        let newest = s.event(&e.id).unwrap().unwrap().runs[0].clone();
        assert_eq!(slots.last().unwrap(), newest.as_bytes(), "{slots:?}");
    }

    /// A copy a crash left without its marker is dropped at the next
    /// open, and the old store opens as it was. (Crashes after the marker
    /// are tested through the binary: tests/it/durability.rs.)
    #[test]
    fn a_copy_without_its_marker_is_dropped_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("store");
        {
            let s = SledStore::open(&d).unwrap();
            for n in 0..50 {
                let e = event(Some(&format!("d{n}")));
                s.insert_event(&e, &[]).unwrap();
            }
            s.flush().unwrap();
        }
        let stray = d.join(NEW_DIR);
        fs::create_dir_all(stray.join("blobs")).unwrap();
        fs::write(stray.join("db"), b"half a copy").unwrap();
        let s = reopened(|| SledStore::open(&d));
        assert!(!stray.exists());
        assert_eq!(s.stats(false).unwrap().counts.events, 50);
    }

    #[test]
    fn a_store_open_elsewhere_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("store");
        let s = SledStore::open(&d).unwrap();
        s.flush().unwrap();
        let e = compact(&d, |_| {}).unwrap_err();
        assert!(matches!(e, StoreError::InUse(_)), "{e}");
        drop(s);
    }
}
