//! Timer precision under load (issue 14): how late does a wait fire while
//! 1,000 events/s arrive and 100,000 other runs wait?
//!
//! In-process hub (the engine `serve` builds: 16 workers, the sled store
//! with its cache bound, the system clock), no HTTP in front:
//! - 100,000 runs are parked in the store, due in an hour, each with a
//!   `wait_for` and a `cancel_on` key (as `bench/waits.rs` parks them);
//! - a load task accepts 1,000 events/s for a recipe with one `set` step;
//! - every 50 ms a `timer` event starts a run that waits until 1 s later
//!   (`wait_until`) and then records a value;
//! - lateness = the resumed run's `woke_at` (the engine clock when a worker
//!   resumed it) minus the time it waited for.
//!
//! Run: `cargo bench --bench timers` (`SECONDS=30` by default). It prints
//! p50 / p99 / max lateness, the events accepted per second and RSS.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchboard::connector::SecretSource;
use switchboard::engine::{worker, Catalog, Engine, EngineConfig, Incoming, LoadOptions};
use switchboard::store::sled::SledStore;
use switchboard::store::{new_id, now_ms, Event, RunStatus, Store};

mod waiting;

const WAITING: usize = 100_000;
const EVENTS_PER_SEC: u64 = 1_000;
const TIMER_EVERY: Duration = Duration::from_millis(50);
const TIMER_WAIT_MS: i64 = 1_000;

const BUSY: &str = r#"name: busy
on: { connector: zendesk, event: ticket.updated }
steps:
  - id: note
    set: { id: "{{ event.ticket.id }}" }
"#;

const TIMER: &str = r#"name: timer
on: { connector: zendesk, event: ticket.created }
steps:
  - id: pause
    wait_until: "{{ event.until }}"
  - id: done
    set: { woke_at: "{{ steps.pause.woke_at }}" }
"#;

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

fn park_many(s: &SledStore, now: i64) {
    let e = Event {
        id: new_id(now),
        connector: "zendesk".into(),
        event_type: Some("ticket.updated".into()),
        delivery_id: None,
        received_at: now,
        body: serde_json::json!({"ticket": {"id": 1}}),
        runs: vec![],
        origin: Default::default(),
        replay: None,
    };
    s.insert_event(&e, &[]).expect("event");
    waiting::park_waiting(s, &e, now, WAITING);
}

fn incoming(event_type: &str, body: serde_json::Value) -> Incoming {
    Incoming {
        connector: "zendesk".into(),
        event_type: Some(event_type.into()),
        delivery_id: None,
        body,
        origin: Default::default(),
        replay: None,
    }
}

fn main() {
    let seconds: u64 = std::env::var("SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let dir = tempfile::tempdir().expect("temp dir");
    let recipes = dir.path().join("recipes");
    std::fs::create_dir_all(&recipes).expect("recipes dir");
    std::fs::write(recipes.join("busy.yaml"), BUSY).expect("write");
    std::fs::write(recipes.join("timer.yaml"), TIMER).expect("write");
    let catalog = Catalog::load(&LoadOptions {
        connectors_dir: std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("connectors"),
        recipes_dir: recipes,
        secrets: SecretSource::from_env(std::iter::empty()).with_placeholders(),
        allow_internal: vec![],
    })
    .expect("catalog");
    let rss_start = rss_mib();
    let sled = SledStore::open(&dir.path().join("store")).expect("open store");
    let parking = Instant::now();
    park_many(&sled, now_ms());
    println!(
        "parked {WAITING} runs in {:.1} s; RSS {rss_start:.0} -> {:.0} MiB",
        parking.elapsed().as_secs_f64(),
        rss_mib()
    );
    let store: Arc<dyn Store> = Arc::new(sled);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let engine = Engine::new(catalog, store.clone(), EngineConfig::default()).expect("engine");
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let tasks = worker::spawn(&engine, shutdown);
        let accepted = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let end = started + Duration::from_secs(seconds);

        // 1,000 events/s, each accepted concurrently (they share group commits).
        let load = {
            let (engine, accepted) = (engine.clone(), accepted.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / EVENTS_PER_SEC));
                let mut n = 0u64;
                while Instant::now() < end {
                    tick.tick().await;
                    n += 1;
                    let (engine, accepted) = (engine.clone(), accepted.clone());
                    tokio::spawn(async move {
                        let body = serde_json::json!({"type": "ticket.updated", "ticket": {"id": n}});
                        if engine.accept(incoming("ticket.updated", body)).await.is_ok() {
                            accepted.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                }
            })
        };
        // A timer every 50 ms, due 1 s after it is set.
        let mut timers = Vec::new();
        let mut tick = tokio::time::interval(TIMER_EVERY);
        let mut rss_peak: f64 = 0.0;
        while Instant::now() + Duration::from_millis(TIMER_WAIT_MS as u64) < end {
            tick.tick().await;
            let until = now_ms() + TIMER_WAIT_MS;
            let at = jiff::Timestamp::from_millisecond(until).expect("time").to_string();
            let body = serde_json::json!({"type": "ticket.created", "until": at});
            match engine.accept(incoming("ticket.created", body)).await {
                Ok(a) => timers.push((a.runs[0].clone(), until)),
                Err(e) => eprintln!("timer event refused: {e}"),
            }
            rss_peak = rss_peak.max(rss_mib());
        }
        load.await.expect("load task");
        let rate = accepted.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
        // Let the last timers fire.
        tokio::time::sleep(Duration::from_millis(TIMER_WAIT_MS as u64 + 2_000)).await;
        let mut late: Vec<i64> = Vec::new();
        let mut unfinished = 0;
        for (id, until) in &timers {
            let run = store.run(id).expect("read").expect("run");
            let woke = run
                .steps
                .iter()
                .find(|s| s.id == "pause")
                .and_then(|s| s.output["woke_at"].as_i64());
            match (run.status, woke) {
                (RunStatus::Succeeded, Some(w)) => late.push(w - until),
                _ => unfinished += 1,
            }
        }
        late.sort_unstable();
        let pct = |p: f64| late[((late.len() as f64 * p).ceil() as usize).clamp(1, late.len()) - 1];
        println!("events accepted: {rate:.0}/s over {seconds} s; RSS peak {rss_peak:.0} MiB");
        if late.is_empty() {
            println!("no timer fired ({unfinished} unfinished)");
        } else {
            println!(
                "timer lateness over {} timers ({unfinished} unfinished): p50 {} ms, p99 {} ms, max {} ms, min {} ms",
                late.len(),
                pct(0.50),
                pct(0.99),
                late[late.len() - 1],
                late[0]
            );
        }
        stop.send(true).ok();
        for t in tasks {
            let _ = t.await;
        }
    });
}
