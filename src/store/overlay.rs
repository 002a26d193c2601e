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
//! overlay shadowing the tree (a removal hides the tree's key). The overlay
//! lock is held while a group is moved into the tree, so a read sees each
//! key either still in the overlay or already in the tree, never neither.

use sled::IVec;
use std::collections::BTreeMap;
use std::iter::Peekable;
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};

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

pub struct Overlay {
    tree: sled::Tree,
    /// Key → new value (`None`: removed), since the last apply. A std
    /// Mutex: nothing async happens while it is held.
    pending: Mutex<BTreeMap<IVec, Option<IVec>>>,
}

type Range = (Bound<Vec<u8>>, Bound<Vec<u8>>);

impl Overlay {
    pub fn new(tree: sled::Tree) -> Overlay {
        Overlay {
            tree,
            pending: Mutex::new(BTreeMap::new()),
        }
    }

    fn pending(&self) -> MutexGuard<'_, BTreeMap<IVec, Option<IVec>>> {
        // A panic while holding it leaves whole batches: safe to take.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The value of `key`, as the last write (applied or not) left it.
    pub fn get(&self, key: &[u8]) -> sled::Result<Option<IVec>> {
        if let Some(v) = self.pending().get(key) {
            return Ok(v.clone());
        }
        self.tree.get(key)
    }

    /// Add one request's writes; they become visible to reads at once and
    /// durable with the next flush.
    pub fn write(&self, batch: Batch) -> sled::Result<()> {
        let mut pending = self.pending();
        if pending.len() + batch.writes.len() > MAX_KEYS {
            self.apply_locked(&mut pending)?;
        }
        for (k, v) in batch.writes {
            pending.insert(k, v);
        }
        Ok(())
    }

    /// Move every pending write into the tree as one atomic sled batch.
    /// Returns how many keys it wrote.
    pub fn apply(&self) -> sled::Result<usize> {
        let mut pending = self.pending();
        self.apply_locked(&mut pending)
    }

    fn apply_locked(&self, pending: &mut BTreeMap<IVec, Option<IVec>>) -> sled::Result<usize> {
        if pending.is_empty() {
            return Ok(0);
        }
        let n = pending.len();
        let mut batch = sled::Batch::default();
        for (k, v) in std::mem::take(pending) {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        self.tree.apply_batch(batch)?;
        Ok(n)
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
        self.pending()
            .range::<[u8], _>(bounds)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
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
}
