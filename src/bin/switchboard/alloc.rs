//! The global allocator: jemalloc, and what keeps a hub that has gone idle
//! from holding the blocks its threads freed while it was busy.
//!
//! jemalloc gives each thread a cache of freed blocks (its *tcache*) and
//! trims it only as that thread allocates again, so a thread that goes idle
//! after a burst keeps its cache for good: 11 MiB of a hub that had just
//! parked 100,000 runs, 9 of them on sled's seven `sled-io` threads
//! (BENCHMARKS.md, "100,000 waiting runs"). Two rules give it back:
//!
//! - a thread of ours flushes its cache when it runs out of work
//!   ([`idle`]: the runtime's workers as they park, the group-commit
//!   threads before they block), if it freed anything since its last flush
//!   and that was a second ago or more; first it frees the sled nodes it
//!   left to crossbeam-epoch, which would otherwise stay allocated while it
//!   idles;
//! - sled's I/O threads, which we cannot hook, run without a cache: each
//!   turns its own off on its first free ([`Jemalloc`]'s `dealloc`). Their
//!   frees (log writes, sled's epoch garbage) then go to the arenas at once.
//!
//! Blocks flushed become free pages in their arena, which jemalloc's
//! background thread hands back to the system as they age (`main.rs`,
//! `MALLOC_CONF`).

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::ffi::{c_void, CStr};

/// jemalloc, with the one check `dealloc` makes per thread (module docs).
pub struct Jemalloc;

thread_local! {
    /// Whether this thread's first free has been seen (and, for a sled I/O
    /// thread, its cache turned off). A `const`-initialised `Cell` without a
    /// destructor: reading it allocates nothing and works at thread exit too.
    static SEEN: Cell<bool> = const { Cell::new(false) };
    /// `thread.deallocated` at this thread's last flush ([`idle`]).
    static FLUSHED_AT: Cell<u64> = const { Cell::new(0) };
    /// When this thread last flushed ([`MIN_GAP`]).
    static LAST_FLUSH: Cell<Option<std::time::Instant>> = const { Cell::new(None) };
}

/// Threads whose caches nobody would flush: sled's pool of I/O threads
/// (seven of them never exit), named `sled-io-N` by sled.
const UNCACHED_THREADS: &[u8] = b"sled-io-";

unsafe impl GlobalAlloc for Jemalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        tikv_jemallocator::Jemalloc.alloc(layout)
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        tikv_jemallocator::Jemalloc.alloc_zeroed(layout)
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !SEEN.get() {
            first_free();
        }
        tikv_jemallocator::Jemalloc.dealloc(ptr, layout)
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        tikv_jemallocator::Jemalloc.realloc(ptr, layout, new_size)
    }
}

/// A thread's first free: turn its cache off if it is one of
/// [`UNCACHED_THREADS`]. Allocates nothing (it runs inside the allocator).
#[cold]
fn first_free() {
    SEEN.set(true);
    let mut name = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes, NUL included.
    let got = unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) };
    if got == 0 && name.starts_with(UNCACHED_THREADS) {
        set_tcache(false);
    }
}

/// Turn the calling thread's cache on or off (off flushes it); false if
/// jemalloc refused.
fn set_tcache(on: bool) -> bool {
    write(c"thread.tcache.enabled", on)
}

/// Bytes this thread has freed so far (jemalloc counts them for its own
/// bookkeeping, with or without statistics).
fn freed_by_thread() -> u64 {
    read(c"thread.deallocated").unwrap_or(0)
}

/// Hand the calling thread's cached freed blocks back to their arenas;
/// false if jemalloc refused (e.g. the thread runs without a cache).
fn flush() -> bool {
    // SAFETY: a control that takes and returns nothing.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            c"thread.tcache.flush".as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        ) == 0
    }
}

/// Read jemalloc's control `name`, whose value is a `T` (`bool`, `u64`:
/// the types jemalloc documents for the controls used here).
fn read<T: Copy + Default>(name: &CStr) -> Option<T> {
    let mut v = T::default();
    let mut len = size_of::<T>();
    // SAFETY: reads a value of `len` bytes into a `T` of that size.
    let r = unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr(),
            (&raw mut v).cast::<c_void>(),
            &mut len,
            std::ptr::null_mut(),
            0,
        )
    };
    (r == 0).then_some(v)
}

/// Write `v` to jemalloc's control `name`, whose value is a `T`; false if
/// jemalloc refused.
fn write<T: Copy>(name: &CStr, mut v: T) -> bool {
    // SAFETY: writes a value of `size_of::<T>()` bytes from a `T`.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            (&raw mut v).cast::<c_void>(),
            size_of::<T>(),
        ) == 0
    }
}

/// The calling thread has run out of work: if it freed anything since its
/// last flush and that flush is [`MIN_GAP`] old, free the sled nodes it
/// left to crossbeam-epoch (`store::release_thread_garbage`: up to a bag
/// of them, which nothing else frees while the thread idles), then flush
/// its cache, which now holds them too. A busy thread runs out of work many
/// times a second; flushing at each of those costs W1 throughput, as
/// `tcache:false` did (BENCHMARKS.md).
pub fn idle() {
    flush_if_due();
}

/// At most one flush a second per thread. A thread whose last idle moment
/// came sooner than that after its previous flush keeps what it cached in
/// between: the group-commit threads call again after an idle second
/// (`store::set_thread_idle_hook`); a runtime worker parked for good does
/// not (BENCHMARKS.md, "100,000 waiting runs").
const MIN_GAP: std::time::Duration = std::time::Duration::from_secs(1);

/// [`idle`], saying whether it flushed.
fn flush_if_due() -> bool {
    let freed = freed_by_thread();
    if freed == FLUSHED_AT.get() {
        return false;
    }
    let now = std::time::Instant::now();
    if LAST_FLUSH
        .get()
        .is_some_and(|last| now.duration_since(last) < MIN_GAP)
    {
        return false;
    }
    FLUSHED_AT.set(freed);
    LAST_FLUSH.set(Some(now));
    switchboard::store::release_thread_garbage();
    flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcache_enabled() -> bool {
        read(c"thread.tcache.enabled").expect("jemalloc answers")
    }

    /// On a thread named `name`: free something, then report whether its
    /// cache is on, and what `idle` then does.
    fn on_thread(name: &str) -> (bool, bool, bool) {
        std::thread::Builder::new()
            .name(name.into())
            .spawn(|| {
                drop(std::hint::black_box(vec![0u8; 100]));
                let cached = tcache_enabled();
                let flushed = flush_if_due();
                // Nothing freed since (and too soon): nothing to do.
                let again = flush_if_due();
                (cached, flushed, again)
            })
            .unwrap()
            .join()
            .unwrap()
    }

    #[test]
    fn an_idle_thread_flushes_its_cache_once() {
        assert_eq!(on_thread("worker"), (true, true, false));
    }

    #[test]
    fn sled_io_threads_run_without_a_cache() {
        // jemalloc refuses to flush a cache the thread does not have.
        assert_eq!(on_thread("sled-io-3"), (false, false, false));
    }
}
