//! Disk per event with retention on, and space sled gives back (issue 15).
//!
//! Store level, with the sled backend and cache bound `serve` uses; each
//! event is the W1 body (`bench/w1/event.json`, ~1 KiB) with one run that
//! succeeded with one call step, written as the hub writes them (the event
//! with its run in one batch, then the run's finish), a flush every 500
//! events (the group commit), on a virtual clock of 1 event per ms.
//!
//! - **steady**: 1,000,000 events with a retention window of 200,000
//!   events (200 s of virtual time), a retention pass (`Store::expire`,
//!   chunks of 256 as the hub does) every 1,000 events: the store's size on
//!   disk every 100,000 events, and bytes per live event.
//! - **reclaim**: 1,000,000 events without retention, then a retention
//!   pass down to the newest 100,000: size before and after, then 100,000
//!   more events: does sled reuse the freed space? Then a reopen, an idle
//!   wait (`RETENTION_IDLE_S`, for sled's segment cleaner when
//!   `SWITCHBOARD_SLED_FLUSH_MS` turns its flusher on), and
//!   `store compact`: the size after it and its time.
//!
//! Run: `cargo bench --bench retention` (about 5 minutes on 2 cores). It
//! prints the figures; BENCHMARKS.md records one run. `RETENTION_EVENTS`
//! scales it (the window stays a fifth), `RETENTION_PART=steady` or
//! `=reclaim` runs one half.

use serde_json::Value;
use std::time::Instant;
use switchboard::store::sled::SledStore;
use switchboard::store::{new_id, Event, Run, RunStatus, StepRecord, StepStatus, Store};

const T0: i64 = 1_750_000_000_000;

fn body() -> Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/bench/w1/event.json"))
        .expect("bench/w1/event.json");
    serde_json::from_str(&text).expect("W1 event JSON")
}

/// Store event `i` (at `T0 + i` ms) with one run, and finish the run.
fn put(s: &SledStore, body: &Value, i: i64) {
    let now = T0 + i;
    let mut e = Event {
        id: new_id(now),
        connector: "w1".into(),
        event_type: Some("ticket.created".into()),
        delivery_id: Some(format!("d{i}")),
        received_at: now,
        body: body.clone(),
        runs: vec![],
        origin: Default::default(),
        replay: None,
    };
    let mut r = Run {
        id: new_id(now),
        event_id: e.id.clone(),
        recipe: "w1".into(),
        status: RunStatus::Running,
        created_at: now,
        updated_at: now,
        finished_at: None,
        steps: vec![],
        error: None,
        reason: None,
        due_at: now + 300_000,
        pending: None,
        round: 0,
        concurrency: None,
        debounce: None,
        parked: None,
        starts: 1,
        listening: vec![],
        version: None,
    };
    e.runs.push(r.id.clone());
    s.insert_event(&e, std::slice::from_ref(&r))
        .expect("insert");
    r.steps.push(StepRecord {
        id: "crm".into(),
        call: "w1.crm".into(),
        status: StepStatus::Succeeded,
        input: serde_json::json!({"email": "customer@example.com", "ticket": 12345}),
        request: Some(
            serde_json::json!({"method": "POST", "url": "http://127.0.0.1:9/crm", "status": 200}),
        ),
        http_status: Some(200),
        output: serde_json::json!({"ok": true}),
        error: None,
        started_at: now,
        duration_ms: 1,
        attempts: 1,
        history: vec![],
    });
    r.status = RunStatus::Succeeded;
    r.finished_at = Some(now);
    s.finish_run(&r).expect("finish");
}

fn expire_all(s: &SledStore, cutoff: i64) -> usize {
    let mut n = 0;
    loop {
        let x = s.expire(cutoff, 256).expect("expire");
        n += x.events;
        if x.cycle_done {
            return n;
        }
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn size(s: &SledStore) -> u64 {
    s.flush().expect("flush");
    s.stats(false).expect("stats").bytes_on_disk
}

fn main() {
    let total: i64 = std::env::var("RETENTION_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let window = total / 5;
    let body = body();
    println!(
        "events: {total}, body {} bytes of JSON",
        serde_json::to_string(&body).unwrap().len()
    );

    // RETENTION_PART=steady or =reclaim runs one half only.
    let part = std::env::var("RETENTION_PART").unwrap_or_default();
    if part != "reclaim" {
        steady(&body, total, window);
    }
    if part != "steady" {
        reclaim(&body, total, window);
    }
}

/// Steady state with retention.
fn steady(body: &Value, total: i64, window: i64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = SledStore::open(dir.path()).expect("open");
    let start = Instant::now();
    let mut worst_pass = std::time::Duration::ZERO;
    println!("steady: window {window} events");
    for i in 0..total {
        put(&s, body, i);
        if i % 500 == 499 {
            s.flush().expect("flush");
        }
        if i % 1000 == 999 {
            let pass = Instant::now();
            expire_all(&s, T0 + i - window);
            worst_pass = worst_pass.max(pass.elapsed());
        }
        if (i + 1) % (total / 10) == 0 {
            let bytes = size(&s);
            let live = s.stats(false).expect("stats").counts.events;
            println!(
                "  after {:>8} events: {:>7.1} MiB on disk, {live} live events, {:.0} bytes/live event ({:.0} s)",
                i + 1,
                mib(bytes),
                bytes as f64 / live.max(1) as f64,
                start.elapsed().as_secs_f64()
            );
        }
    }
    println!("  slowest retention pass (1,000 events' worth, chunks of 256): {worst_pass:?}");
}

/// Reclaim after the fact.
fn reclaim(body: &Value, total: i64, window: i64) {
    let start = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let s = SledStore::open(dir.path()).expect("open");
    for i in 0..total {
        put(&s, body, i);
        if i % 500 == 499 {
            s.flush().expect("flush");
        }
    }
    let full = size(&s);
    println!(
        "reclaim: {total} events, no retention: {:.1} MiB ({:.0} bytes/event, {:.0} s)",
        mib(full),
        full as f64 / total as f64,
        start.elapsed().as_secs_f64()
    );
    let pass = Instant::now();
    let deleted = expire_all(&s, T0 + total - window / 2);
    let after = size(&s);
    println!(
        "  retention pass deleted {deleted} events in {:.1} s: {:.1} MiB on disk",
        pass.elapsed().as_secs_f64(),
        mib(after)
    );
    for i in total..total + window / 2 {
        put(&s, body, i);
        if i % 500 == 499 {
            s.flush().expect("flush");
        }
    }
    let refill = size(&s);
    println!(
        "  {} more events after it: {:.1} MiB on disk",
        window / 2,
        mib(refill)
    );
    // sled truncates free segments at the end of its file and moves live
    // pages out of the last segments when half of them are free; does a
    // reopen (its recovery) give more back?
    drop(s);
    let s = reopen(dir.path());
    println!("  after a reopen: {:.1} MiB on disk", mib(size(&s)));
    // With sled's flusher on (SWITCHBOARD_SLED_FLUSH_MS), its segment
    // cleaner works while the store is idle: what is left after a while?
    let idle: u64 = std::env::var("RETENTION_IDLE_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if idle > 0 {
        std::thread::sleep(std::time::Duration::from_secs(idle));
        println!("  after {idle} s idle: {:.1} MiB on disk", mib(size(&s)));
    }
    drop(s);
    // `switchboard store compact`.
    let c = switchboard::store::compact::compact(dir.path(), |_| {}).expect("compact");
    println!(
        "  compacted: {:.1} MiB -> {:.1} MiB in {:.1} s ({} keys, {:.1} MiB of keys and values)",
        mib(c.bytes_before),
        mib(c.bytes_after),
        c.elapsed.as_secs_f64(),
        c.keys,
        mib(c.data_bytes)
    );
    let s = reopen(dir.path());
    println!(
        "  reopened after compaction: {:.1} MiB on disk, {} events",
        mib(size(&s)),
        s.stats(false).expect("stats").counts.events
    );
}

/// Open a store just dropped (sled's threads let go of it a moment later).
fn reopen(dir: &std::path::Path) -> SledStore {
    for _ in 0..200 {
        if let Ok(s) = SledStore::open(dir) {
            return s;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    SledStore::open(dir).expect("reopen")
}
