//! 100,000 waiting runs in the store (issue 14): what they cost.
//!
//! Store level, with the sled backend `serve` uses (same cache bound):
//! - RSS of this process before and after parking 100,000 runs, each with a
//!   `wait_for` correlation key and a `cancel_on` key (RSS over idle);
//! - the cost of storing an incoming event with two probes
//!   (`insert_event_matching`) in a store where 0 runs wait vs one where
//!   100,000 wait on other keys, in alternating rounds (so machine load hits
//!   both alike), without and with a group commit every 16 events — the
//!   indexed lookup must not grow with waiting runs;
//! - the cost of a worker's `lease` of due runs while the 100,000 wait in
//!   the future (the timer path the workers poll).
//!
//! Run: `cargo bench --bench waits`. It prints the figures; BENCHMARKS.md
//! records one run. `WAITS_EXIT_PARKED=1` exits right after parking without
//! dropping the store, so a heap profiler (`heaptrack`) reports what is live
//! with 100,000 runs waiting as "leaked".

use std::time::Instant;
use switchboard::store::sled::SledStore;
use switchboard::store::{new_id, Event, Listen, Store};
use waiting::corr;

mod waiting;

const WAITING: usize = 100_000;
const PROBES: usize = 2_000;
const ROUNDS: usize = 10;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn event(delivery: Option<String>, now: i64) -> Event {
    Event {
        id: new_id(now),
        connector: "zendesk".into(),
        event_type: Some("ticket.updated".into()),
        delivery_id: delivery,
        received_at: now,
        body: serde_json::json!({"ticket": {"id": 1, "status": "open"}}),
        runs: vec![],
        origin: Default::default(),
        replay: None,
    }
}

/// Store `n` events, with two probes each (keys that match nothing) or
/// none, and a group commit (the store's `flush`: one sled batch and one
/// log sync) every `group` events (0: none; the writes stay in the group,
/// as a request's do until its group commits); µs per event.
fn probe_cost(s: &SledStore, tag: &str, n: usize, group: usize, with_probes: bool) -> f64 {
    let now = 1_800_000_000_000i64;
    let start = Instant::now();
    for i in 0..n {
        let e = event(Some(format!("p{tag}-{i}-{with_probes}")), now);
        let probes = [
            corr(Listen::Wake, &format!("miss-{i}"), "sla\0reply"),
            corr(Listen::Cancel, &format!("miss-{i}"), "sla"),
        ];
        let probes = if with_probes { &probes[..] } else { &[] };
        s.insert_event_matching(&e, &[], probes, now)
            .expect("insert");
        if group > 0 && i % group == group - 1 {
            s.flush().expect("flush");
        }
    }
    let us = start.elapsed().as_secs_f64() * 1e6 / n as f64;
    s.flush().expect("flush"); // the rest of the group, not timed
    us
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The cost of storing an event in `none` (0 waiting) and in `loaded`
/// (100,000 waiting), measured in alternating rounds so that a change of
/// machine load hits both alike: the median µs per event of each, and the
/// median of the rounds' ratios.
fn compare(
    none: &SledStore,
    loaded: &SledStore,
    label: &str,
    group: usize,
    with_probes: bool,
) -> (f64, f64, f64) {
    let (mut a, mut b, mut r) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let tag = format!("{label}{round}");
        let x = probe_cost(none, &tag, PROBES / ROUNDS, group, with_probes);
        let y = probe_cost(loaded, &tag, PROBES / ROUNDS, group, with_probes);
        a.push(x);
        b.push(y);
        r.push(y / x);
    }
    let (a, b, r) = (median(a), median(b), median(r));
    println!(
        "store an event, {label}: 0 waiting {a:.1} µs, {WAITING} waiting {b:.1} µs: {r:.2}x (median of {ROUNDS} alternating rounds)"
    );
    (a, b, r)
}

fn open(dir: &std::path::Path, cache: u64) -> SledStore {
    SledStore::open_with_cache(dir, cache).expect("open store")
}

fn main() {
    // CACHE_MIB: another bound on sled's page cache than serve's (CACHE_BYTES).
    let cache = std::env::var("CACHE_MIB")
        .ok()
        .and_then(|m| m.parse::<u64>().ok())
        .map_or(switchboard::store::sled::CACHE_BYTES, |m| m << 20);
    println!("sled cache bound: {} MiB", cache >> 20);
    let now = 1_800_000_000_000i64;
    // Two stores: `none` stays without waiting runs, `loaded` gets 100,000.
    let (dir_none, dir_loaded) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let none = open(dir_none.path(), cache);
    let s = open(dir_loaded.path(), cache);
    // Warm up both stores and the allocator, then measure the idle baseline.
    probe_cost(&none, "warm", PROBES, 0, true);
    probe_cost(&s, "warm", PROBES, 0, true);
    std::thread::sleep(std::time::Duration::from_secs(1));
    let rss_idle = rss_kib();

    let e = event(None, now);
    s.insert_event(&e, &[]).expect("event");
    let start = Instant::now();
    waiting::park_waiting(&s, &e, now, WAITING);
    let park_secs = start.elapsed().as_secs_f64();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let rss_waiting = rss_kib();
    println!("parked {WAITING} runs in {park_secs:.1} s");
    println!(
        "RSS idle {} MiB, with {WAITING} waiting {} MiB: +{:.1} MiB",
        rss_idle / 1024,
        rss_waiting / 1024,
        (rss_waiting as f64 - rss_idle as f64) / 1024.0
    );
    if std::env::var_os("WAITS_EXIT_PARKED").is_some() {
        // For a heap profiler: exit without dropping the stores, so what is
        // live now (with 100,000 waiting) is reported as not freed.
        for d in [dir_none.path(), dir_loaded.path()] {
            std::fs::remove_dir_all(d).expect("remove the stores");
        }
        std::process::exit(0);
    }

    compare(&none, &s, "2 probes, no commit", 0, true);
    compare(&none, &s, "no probes, no commit", 0, false);
    compare(&none, &s, "2 probes, a group commit every 16", 16, true);
    std::thread::sleep(std::time::Duration::from_secs(2));
    let rss_later = rss_kib();
    println!(
        "RSS after {} more events in each store: {} MiB (+{:.1} MiB over idle)",
        3 * PROBES,
        rss_later / 1024,
        (rss_later as f64 - rss_idle as f64) / 1024.0
    );

    // A worker's lease with nothing due while 100,000 runs wait.
    let start = Instant::now();
    for _ in 0..PROBES {
        assert!(s.lease(now + 1_000, 300_000, 1).expect("lease").is_empty());
    }
    let lease_us = start.elapsed().as_secs_f64() * 1e6 / PROBES as f64;
    // And one match among them: wakes exactly that run.
    let hit = event(Some("hit".into()), now + 4);
    let (_, m) = s
        .insert_event_matching(
            &hit,
            &[],
            &[corr(Listen::Wake, "ticket-77777", "sla\0reply")],
            now + 4,
        )
        .expect("insert");
    assert_eq!(m.woken.len(), 1);
    println!("lease with nothing due among {WAITING} waiting: {lease_us:.1} µs");
}
