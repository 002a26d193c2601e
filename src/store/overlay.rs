//! The group's batch: writes made since the last flush, kept in memory and
//! visible to every read at once, applied to sled as **one** batch by the
//! next flush (the group commit).
//!
//! Why: sled 0.34 seals its log buffer before and after every
//! `apply_batch`, so each batch becomes its own `pwrite` + `sync_file_range`
//! on a sled I/O thread (BENCHMARKS.md, "Why so many writes"). Writing each
//! request's batch here instead, and applying the whole group with one
//! `apply_batch` right before the flush, makes sled's log writes scale with
//! groups, not with requests, and keeps the request path to a map insert.
//!
//! Atomicity is unchanged or stronger: a request's writes enter the overlay
//! together (one [`Batch`] under the overlay lock), and the group is applied
//! as one sled batch, which sled recovers whole or not at all. Nothing is
//! acknowledged before the flush that applies it returns, so a crash loses
//! only unacknowledged writes, whole requests at a time.
//!
//! Reads: [`Overlay::get`] looks in the overlay first, then the tree;
//! scans merge the overlay's entries in the range with the tree's, the
//! overlay shadowing the tree (a removal hides the tree's key). A group
//! being moved into the tree is taken out of `pending` at once and stays
//! readable in `applying` until the tree holds it, so writers are not held
//! up by an apply, and a read sees each key in one of the three places,
//! never in none.

use sled::IVec;
use std::collections::BTreeMap;
use std::iter::Peekable;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

/// Writes past this many keys are moved into the tree (without a flush)
/// before more are added, so a caller that never flushes cannot grow the
/// overlay without bound. Only whole requests are moved.
const MAX_KEYS: usize = 65_536;

/// One request's writes, applied together (the shape of `sled::Batch`).
#[derive(Default)]
pub struct Batch {
    writes: Vec<(IVec, Option<IVec>)>,
}

impl Batch {
    pub fn insert(&mut self, key: impl Into<IVec>, value: impl Into<IVec>) {
        self.writes.push((key.into(), Some(value.into())));
    }

    pub fn remove(&mut self, key: impl Into<IVec>) {
        self.writes.push((key.into(), None));
    }
}

type Writes = BTreeMap<IVec, Option<IVec>>;

pub struct Overlay {
    tree: sled::Tree,
    /// Key → new value (`None`: removed), since the last apply. A std
    /// Mutex: nothing async happens while it is held.
    pending: Mutex<Writes>,
    /// The group being moved into the tree right now (empty between
    /// applies). Reads look here after `pending` and before the tree, so
    /// writers go on adding to `pending` while a group is applied.
    applying: Mutex<Arc<Writes>>,
    /// One apply at a time, so groups reach the tree in order.
    apply_turn: Mutex<()>,
}

type Range = (Bound<Vec<u8>>, Bound<Vec<u8>>);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one leaves whole batches: safe to take.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Overlay {
    pub fn new(tree: sled::Tree) -> Overlay {
        Overlay {
            tree,
            pending: Mutex::new(BTreeMap::new()),
            applying: Mutex::new(Arc::new(BTreeMap::new())),
            apply_turn: Mutex::new(()),
        }
    }

    /// The value of `key`, as the last write (applied or not) left it.
    pub fn get(&self, key: &[u8]) -> sled::Result<Option<IVec>> {
        // A key moves pending → applying → tree, and is looked for in that
        // order, so a read finds it wherever it is on the way.
        if let Some(v) = lock(&self.pending).get(key) {
            return Ok(v.clone());
        }
        if let Some(v) = lock(&self.applying).get(key) {
            return Ok(v.clone());
        }
        self.tree.get(key)
    }

    /// Add one request's writes; they become visible to reads at once and
    /// durable with the next flush.
    pub fn write(&self, batch: Batch) -> sled::Result<()> {
        if lock(&self.pending).len() + batch.writes.len() > MAX_KEYS {
            self.apply()?;
        }
        let mut pending = lock(&self.pending);
        for (k, v) in batch.writes {
            pending.insert(k, v);
        }
        Ok(())
    }

    /// Move every pending write into the tree as one atomic sled batch.
    /// Returns how many keys it wrote. Writers are not held up meanwhile:
    /// the group is taken out of `pending` at once and read from `applying`
    /// until the tree has it.
    pub fn apply(&self) -> sled::Result<usize> {
        let turn = lock(&self.apply_turn);
        let group = {
            let mut pending = lock(&self.pending);
            if pending.is_empty() {
                return Ok(0);
            }
            let group = Arc::new(std::mem::take(&mut *pending));
            // Still under the pending lock: no read sees the group in neither.
            *lock(&self.applying) = group.clone();
            group
        };
        let mut batch = sled::Batch::default();
        for (k, v) in group.iter() {
            match v {
                Some(v) => batch.insert(k.clone(), v.clone()),
                None => batch.remove(k.clone()),
            }
        }
        let applied = self.tree.apply_batch(batch);
        if applied.is_err() {
            // Not in the tree: keep the group readable and retried by the
            // next apply, under any newer writes of the same keys.
            let mut pending = lock(&self.pending);
            for (k, v) in group.iter() {
                pending.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        *lock(&self.applying) = Arc::new(BTreeMap::new());
        let n = group.len();
        drop((group, turn));
        applied?;
        collect_garbage(n);
        Ok(n)
    }

    /// Writes not yet in the tree.
    #[cfg(test)]
    pub fn pending_len(&self) -> usize {
        lock(&self.pending).len()
    }

    /// Entries in `range`, in key order.
    pub fn range(&self, range: Range) -> Merged<sled::Iter> {
        let over = self.snapshot(&range);
        Merged {
            tree: self.tree.range(range).peekable(),
            over: over.into_iter().peekable(),
            rev: false,
        }
    }

    /// Entries in `range`, in reverse key order.
    pub fn range_rev(&self, range: Range) -> Merged<std::iter::Rev<sled::Iter>> {
        let mut over = self.snapshot(&range);
        over.reverse();
        Merged {
            tree: self.tree.range(range).rev().peekable(),
            over: over.into_iter().peekable(),
            rev: true,
        }
    }

    /// Entries whose key starts with `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: &[u8]) -> Merged<sled::Iter> {
        self.range((
            Bound::Included(prefix.to_vec()),
            match prefix_end(prefix) {
                Some(end) => Bound::Excluded(end),
                None => Bound::Unbounded,
            },
        ))
    }

    /// The overlay's entries in `range` (a group's worth: small).
    fn snapshot(&self, range: &Range) -> Vec<(IVec, Option<IVec>)> {
        let bounds: (Bound<&[u8]>, Bound<&[u8]>) = (as_slice(&range.0), as_slice(&range.1));
        if let (Bound::Included(s) | Bound::Excluded(s), Bound::Included(e) | Bound::Excluded(e)) =
            bounds
        {
            if s > e {
                return Vec::new();
            }
        }
        let pending = lock(&self.pending);
        let applying = lock(&self.applying).clone();
        let mut merged: Writes = applying
            .range::<[u8], _>(bounds)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, v) in pending.range::<[u8], _>(bounds) {
            merged.insert(k.clone(), v.clone());
        }
        merged.into_iter().collect()
    }
}

/// Free the tree nodes that applying `keys` writes replaced.
///
/// sled replaces a node by a new copy on every write and hands the old one
/// to crossbeam-epoch, which frees garbage only while threads pin: at most
/// 8 bags of 64 every 128 pins of a thread. A group applied as one batch
/// replaces about a node per key under a single pin, so without help the
/// garbage outgrows collection and stays until later reads pin often
/// enough: 100,000 parked runs left 1.3 GB of old nodes live
/// (BENCHMARKS.md, "100,000 waiting runs"). Each pin + flush here advances
/// the epoch if no other thread holds an older one and frees up to 8 bags;
/// two rounds per 512 keys (a split replaces more than one node) plus the
/// two epochs a bag must age.
fn collect_garbage(keys: usize) {
    for _ in 0..keys / 256 + 3 {
        crossbeam_epoch::pin().flush();
    }
}

fn as_slice(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(v) => Bound::Included(v.as_slice()),
        Bound::Excluded(v) => Bound::Excluded(v.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// The first key after every key starting with `prefix` (`None`: no end).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut e = prefix.to_vec();
    while let Some(last) = e.pop() {
        if last < u8::MAX {
            e.push(last + 1);
            return Some(e);
        }
    }
    None
}

/// The tree's entries merged with the overlay's, the overlay shadowing the tree.
pub struct Merged<I: Iterator<Item = sled::Result<(IVec, IVec)>>> {
    tree: Peekable<I>,
    over: Peekable<std::vec::IntoIter<(IVec, Option<IVec>)>>,
    /// Keys come in descending order.
    rev: bool,
}

impl<I: Iterator<Item = sled::Result<(IVec, IVec)>>> Iterator for Merged<I> {
    type Item = sled::Result<(IVec, IVec)>;

    fn next(&mut self) -> Option<Self::Item> {
        use std::cmp::Ordering;
        loop {
            // Which side comes first: the overlay (true) or the tree.
            let overlay_first = match (self.tree.peek(), self.over.peek()) {
                (None, None) => return None,
                (Some(Err(_)), _) | (Some(_), None) => return self.tree.next(),
                (None, Some(_)) => true,
                (Some(Ok((tk, _))), Some((ok, _))) => {
                    let ord = ok.as_ref().cmp(tk.as_ref());
                    match if self.rev { ord.reverse() } else { ord } {
                        Ordering::Less => true,
                        Ordering::Greater => false,
                        Ordering::Equal => {
                            // Shadowed: the overlay's write is newer.
                            self.tree.next();
                            true
                        }
                    }
                }
            };
            if overlay_first {
                match self.over.next() {
                    Some((k, Some(v))) => return Some(Ok((k, v))),
                    Some((_, None)) => continue, // removed
                    None => return None,
                }
            }
            return self.tree.next();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys<I: Iterator<Item = sled::Result<(IVec, IVec)>>>(it: I) -> Vec<String> {
        it.map(|r| {
            let (k, v) = r.unwrap();
            format!(
                "{}={}",
                String::from_utf8_lossy(&k),
                String::from_utf8_lossy(&v)
            )
        })
        .collect()
    }

    #[test]
    fn reads_see_pending_writes_over_the_tree_until_applied() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree("t").unwrap();
        for k in ["a/1", "a/2", "a/4", "b/1"] {
            tree.insert(k, "tree").unwrap();
        }
        let o = Overlay::new(tree.clone());
        let mut b = Batch::default();
        b.insert("a/3", "new");
        b.insert("a/2", "new");
        b.remove("a/4");
        b.insert("a/0", "new");
        o.write(b).unwrap();
        let expect = ["a/0=new", "a/1=tree", "a/2=new", "a/3=new"];
        assert_eq!(keys(o.scan_prefix(b"a/")), expect);
        let mut rev: Vec<_> = expect.to_vec();
        rev.reverse();
        let all = (
            Bound::Included(b"a/".to_vec()),
            Bound::Excluded(b"a0".to_vec()),
        );
        assert_eq!(keys(o.range_rev(all.clone())), rev);
        assert_eq!(o.get(b"a/4").unwrap(), None);
        assert_eq!(o.get(b"a/2").unwrap().as_deref(), Some(&b"new"[..]));
        assert_eq!(tree.get(b"a/3").unwrap(), None, "not in the tree yet");
        assert_eq!(o.apply().unwrap(), 4);
        assert_eq!(keys(o.scan_prefix(b"a/")), expect, "the same after apply");
        assert_eq!(tree.get(b"a/4").unwrap(), None);
        assert_eq!(tree.get(b"a/3").unwrap().as_deref(), Some(&b"new"[..]));
        assert_eq!(o.apply().unwrap(), 0);
    }

    #[test]
    fn a_written_key_stays_readable_while_groups_are_applied() {
        // A writer publishes how far it got; a reader must find every key up
        // to there, in the overlay, the group being applied or the tree,
        // while another thread keeps applying groups.
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let o = Arc::new(Overlay::new(db.open_tree("t").unwrap()));
        let written = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let applier = {
            let (o, done) = (o.clone(), done.clone());
            std::thread::spawn(move || {
                let mut applied = 0;
                while !done.load(Ordering::Acquire) {
                    applied += o.apply().unwrap();
                }
                applied + o.apply().unwrap()
            })
        };
        let checked = Arc::new(AtomicUsize::new(0));
        let reader = {
            let (o, written, done, checked) =
                (o.clone(), written.clone(), done.clone(), checked.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Acquire) {
                    let n = written.load(Ordering::Acquire);
                    if n == 0 {
                        continue;
                    }
                    let key = format!("k/{:06}", n - 1);
                    assert!(o.get(key.as_bytes()).unwrap().is_some(), "{key} lost");
                    let seen = o.scan_prefix(b"k/").count();
                    assert!(seen >= n, "a scan saw {seen} of {n} keys");
                    checked.fetch_add(1, Ordering::Release);
                }
            })
        };
        const N: usize = 3_000;
        for i in 0..N {
            let mut b = Batch::default();
            b.insert(format!("k/{i:06}").into_bytes(), "v");
            o.write(b).unwrap();
            written.store(i + 1, Ordering::Release);
            if i == N / 2 {
                // The reader checks at least once while writes and applies
                // go on, however the threads are scheduled (a loaded
                // machine once ran every write before the reader's first
                // turn).
                while checked.load(Ordering::Acquire) == 0 && !reader.is_finished() {
                    std::thread::yield_now();
                }
            }
        }
        done.store(true, Ordering::Release);
        reader.join().unwrap();
        assert!(checked.load(Ordering::Acquire) > 0);
        assert_eq!(applier.join().unwrap(), N);
        assert_eq!(o.scan_prefix(b"k/").count(), N);
    }
}
