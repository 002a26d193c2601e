//! 100,000 waiting runs in the store (issue 14): what they cost.
//!
//! Store level, with the sled backend `serve` uses (same cache bound):
//! - RSS of this process before and after parking 100,000 runs, each with a
//!   `wait_for` correlation key and a `cancel_on` key (RSS over idle);
//! - the cost of storing an incoming event with one probe
//!   (`insert_event_matching`) when 0 runs wait vs when 100,000 wait on
//!   other keys — the indexed lookup must not grow with waiting runs;
//! - the cost of a worker's `lease` of due runs while the 100,000 wait in
//!   the future (the timer path the workers poll).
//!
//! Run: `cargo bench --bench waits`. It prints the figures; BENCHMARKS.md
//! records one run.

use std::time::Instant;
use switchboard::store::sled::SledStore;
use switchboard::store::{new_id, Event, Listen, Store};
use waiting::corr;

mod waiting;

const WAITING: usize = 100_000;
const PROBES: usize = 2_000;

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

/// Store `PROBES` events, with two probes each (keys that match nothing)
/// or none; µs per event.
fn probe_cost(s: &SledStore, now: i64, with_probes: bool) -> f64 {
    let start = Instant::now();
    for i in 0..PROBES {
        let e = event(Some(format!("p{now}-{i}-{with_probes}")), now);
        let probes = [
            corr(Listen::Wake, &format!("miss-{i}"), "sla\0reply"),
            corr(Listen::Cancel, &format!("miss-{i}"), "sla"),
        ];
        let probes = if with_probes { &probes[..] } else { &[] };
        s.insert_event_matching(&e, &[], probes, now)
            .expect("insert");
    }
    start.elapsed().as_secs_f64() * 1e6 / PROBES as f64
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    // CACHE_MIB: another bound on sled's page cache than serve's 32 MiB.
    let cache = std::env::var("CACHE_MIB")
        .ok()
        .and_then(|m| m.parse::<u64>().ok())
        .map_or(switchboard::store::sled::CACHE_BYTES, |m| m << 20);
    let s = SledStore::open_with_cache(dir.path(), cache).expect("open store");
    println!("sled cache bound: {} MiB", cache >> 20);
    let now = 1_800_000_000_000i64;
    // Warm up the store and the allocator, then measure the idle baseline.
    probe_cost(&s, now, true); // warm-up
    s.flush().expect("flush");
    let rss_idle = rss_kib();
    let base_plain = probe_cost(&s, now + 1, false);
    let base_probed = probe_cost(&s, now + 1, true);

    let e = event(None, now);
    s.insert_event(&e, &[]).expect("event");
    let start = Instant::now();
    waiting::park_waiting(&s, &e, now, WAITING);
    let park_secs = start.elapsed().as_secs_f64();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let rss_waiting = rss_kib();

    let loaded_plain = probe_cost(&s, now + 2, false);
    let loaded_probed = probe_cost(&s, now + 2, true);
    // Once more after those 4,000 writes: memory sled freed only when later
    // operations advance its epochs (crossbeam-epoch) shows up here.
    s.flush().expect("flush");
    std::thread::sleep(std::time::Duration::from_secs(2));
    let rss_later = rss_kib();

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

    println!("parked {WAITING} runs in {park_secs:.1} s");
    println!(
        "RSS idle {} MiB, with {WAITING} waiting {} MiB: +{:.1} MiB",
        rss_idle / 1024,
        rss_waiting / 1024,
        (rss_waiting as f64 - rss_idle as f64) / 1024.0
    );
    println!(
        "RSS after 4,000 more events: {} MiB (+{:.1} MiB over idle)",
        rss_later / 1024,
        (rss_later as f64 - rss_idle as f64) / 1024.0
    );
    println!(
        "store an event, 0 waiting: {base_plain:.1} µs without probes, {base_probed:.1} µs with 2 probes"
    );
    println!(
        "store an event, {WAITING} waiting: {loaded_plain:.1} µs without probes, {loaded_probed:.1} µs with 2 probes"
    );
    println!(
        "with {WAITING} waiting / with 0: {:.2}x with probes, {:.2}x without",
        loaded_probed / base_probed,
        loaded_plain / base_plain
    );
    println!("lease with nothing due among {WAITING} waiting: {lease_us:.1} µs");
}
