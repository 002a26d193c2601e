//! The index and counters agree with a full scan of the records after any
//! sequence of store operations (a property test), and listings through the
//! index equal listings by filtering every record.

use crate::store::conformance;
use crate::store::sled::SledStore;
use crate::store::{
    new_id, ConcurrencySlot, Correlation, DebounceSlot, Event, Listen, Page, Parked, Run,
    RunFilter, RunStatus, Store,
};
use proptest::prelude::*;

const RECIPES: [&str; 3] = ["a", "b", "c"];

#[derive(Debug, Clone)]
enum Op {
    /// An event (delivery id from a small set, so some are duplicates)
    /// starting runs of these recipes; a run may have a debounce or
    /// concurrency key.
    Insert {
        delivery: Option<u8>,
        runs: Vec<(usize, u8)>,
        probe: Option<(bool, u8)>,
    },
    Lease(usize),
    /// Finish the n-th running run with a final status.
    Finish(usize, usize),
    Park(usize, u8),
    Reschedule(usize),
    Checkpoint(usize),
    Retry(usize),
    Release,
    /// A retention chunk of 3 events, with a window of n ops.
    Expire(i64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (
            proptest::option::of(0u8..6),
            proptest::collection::vec((0usize..3, 0u8..4), 0..3),
            proptest::option::of((any::<bool>(), 0u8..3)),
        )
            .prop_map(|(delivery, runs, probe)| Op::Insert { delivery, runs, probe }),
        2 => (1usize..4).prop_map(Op::Lease),
        2 => (0usize..4, 0usize..5).prop_map(|(i, s)| Op::Finish(i, s)),
        1 => (0usize..4, 0u8..3).prop_map(|(i, k)| Op::Park(i, k)),
        1 => (0usize..4).prop_map(Op::Reschedule),
        1 => (0usize..4).prop_map(Op::Checkpoint),
        1 => (0usize..8).prop_map(Op::Retry),
        1 => Just(Op::Release),
        1 => (0i64..30).prop_map(Op::Expire),
    ]
}

fn corr(listen: Listen, key: u8, recipe: &str) -> Correlation {
    Correlation {
        listen,
        connector: "zendesk".into(),
        event_type: "ticket.updated".into(),
        key: key.to_string(),
        tag: match listen {
            Listen::Wake => format!("{recipe}\0w"),
            Listen::Cancel => recipe.to_string(),
        },
    }
}

fn run_of(event: &Event, recipe: &str, now: i64, kind: u8) -> Run {
    let mut r = conformance::run(event, if kind == 1 { now + 50 } else { now });
    r.recipe = recipe.into();
    r.concurrency = (kind == 2).then(|| ConcurrencySlot {
        key: format!("{recipe}\0k"),
        limit: 1,
        seq: 0,
    });
    r.debounce = (kind == 1).then(|| DebounceSlot {
        key: format!("{recipe}\0d"),
        quiet_ms: 50,
        max_ms: 500,
        first_at: now,
        events: 0,
    });
    r
}

/// Apply `ops`; the store's own lease/finish rules decide what each does.
fn play(s: &SledStore, ops: &[Op]) {
    let mut now = 1_000_000i64;
    let mut running: Vec<Run> = Vec::new();
    for op in ops {
        now += 7;
        match op {
            Op::Insert {
                delivery,
                runs,
                probe,
            } => {
                let mut e = conformance::event(delivery.map(|d| format!("d{d}")).as_deref());
                e.id = new_id(now);
                e.received_at = now;
                let runs: Vec<Run> = runs
                    .iter()
                    .map(|(r, kind)| run_of(&e, RECIPES[*r], now, *kind))
                    .collect();
                e.runs = runs.iter().map(|r| r.id.clone()).collect();
                let probes: Vec<Correlation> = probe
                    .iter()
                    .flat_map(|(wake, key)| {
                        let listen = if *wake { Listen::Wake } else { Listen::Cancel };
                        RECIPES.iter().map(move |r| corr(listen, *key, r))
                    })
                    .collect();
                s.insert_event_matching(&e, &runs, &probes, now).unwrap();
            }
            // Leases never expire here: a worker that outlives its lease is
            // another story (its late finish leaves a queue entry behind).
            Op::Lease(n) => running.extend(s.lease(now, 1_000_000_000, *n).unwrap()),
            Op::Finish(i, st) => {
                if *i < running.len() {
                    let mut r = running.remove(*i);
                    r.status = [
                        RunStatus::Succeeded,
                        RunStatus::Failed,
                        RunStatus::Dead,
                        RunStatus::Skipped,
                        RunStatus::Cancelled,
                    ][*st];
                    r.updated_at = now;
                    r.finished_at = Some(now);
                    s.finish_run(&r).unwrap();
                }
            }
            Op::Park(i, key) => {
                if *i < running.len() {
                    let mut r = running.remove(*i);
                    let prev = r.due_at;
                    r.status = RunStatus::Waiting;
                    r.due_at = now + 40;
                    r.parked = Some(Parked {
                        step: "w".into(),
                        until: now + 40,
                        since: now,
                        keys: vec![
                            corr(Listen::Wake, *key, &r.recipe),
                            corr(Listen::Cancel, *key, &r.recipe),
                        ],
                        woken_by: None,
                    });
                    s.park(&r, prev).unwrap();
                }
            }
            Op::Reschedule(i) => {
                if *i < running.len() {
                    let mut r = running.remove(*i);
                    let prev = r.due_at;
                    r.status = RunStatus::Retrying;
                    r.due_at = now + 30;
                    s.reschedule(&r, prev).unwrap();
                }
            }
            Op::Checkpoint(i) => {
                if let Some(r) = running.get_mut(*i) {
                    r.updated_at = now;
                    r.starts = 1;
                    s.save_run(r).unwrap();
                }
            }
            Op::Retry(i) => {
                let failed = s
                    .runs(
                        &Page {
                            limit: 10,
                            before: None,
                        },
                        &RunFilter {
                            failures: true,
                            ..Default::default()
                        },
                    )
                    .unwrap();
                if let Some(r) = failed.get(*i) {
                    s.retry_run(&r.id, now).unwrap();
                }
            }
            Op::Release => {
                s.release_leases(now).unwrap();
                running.clear();
            }
            Op::Expire(window) => {
                let before: Vec<Run> = listed(s, &RunFilter::default())
                    .iter()
                    .map(|id| s.run(id).unwrap().unwrap())
                    .collect();
                s.expire(now - window * 7, 3).unwrap();
                for r in before {
                    let kept = !r.status.is_final() || r.status == RunStatus::Dead;
                    if kept {
                        assert!(s.run(&r.id).unwrap().is_some(), "{r:?} deleted");
                        assert!(s.event(&r.event_id).unwrap().is_some(), "event of {r:?}");
                    }
                }
            }
        }
    }
}

/// Every run matching `filter`, newest first, through the store's pages.
fn listed(s: &SledStore, filter: &RunFilter) -> Vec<String> {
    let mut out = Vec::new();
    let mut page = Page {
        limit: 3,
        before: None,
    };
    loop {
        let runs = s.runs(&page, filter).unwrap();
        let Some(last) = runs.last() else { break };
        page.before = Some(last.id.clone());
        out.extend(runs.into_iter().map(|r| r.id));
    }
    out
}

fn check(s: &SledStore) {
    let stats = s.stats(true).unwrap();
    assert_eq!(stats.problems, Vec::<String>::new());
    assert_eq!(Some(&stats.counts), stats.scanned.as_ref());
    assert_eq!(s.queue_depth().unwrap() as u64, stats.counts.queue_depth);
    let all = listed(s, &RunFilter::default());
    let every: Vec<Run> = all.iter().map(|id| s.run(id).unwrap().unwrap()).collect();
    let statuses = super::STATUSES.iter().map(|s| Some(*s)).chain([None]);
    for status in statuses {
        for recipe in RECIPES.iter().map(|r| Some(r.to_string())).chain([None]) {
            for failures in [false, true] {
                let filter = RunFilter {
                    status,
                    recipe: recipe.clone(),
                    failures,
                };
                let want: Vec<String> = every
                    .iter()
                    .filter(|r| filter.matches(r))
                    .map(|r| r.id.clone())
                    .collect();
                assert_eq!(listed(s, &filter), want, "{filter:?}");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn counters_and_index_equal_a_full_scan(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        play(&s, &ops);
        check(&s);
    }
}

/// 20 events with 40 runs in a store at `dir`, some leased and finished,
/// flushed and closed.
fn write_20_events_and_40_runs(dir: &std::path::Path) {
    let s = SledStore::open(dir).unwrap();
    let ops: Vec<Op> = (0..40)
        .map(|i| match i % 4 {
            0 | 1 => Op::Insert {
                delivery: None,
                runs: vec![(i % 3, 0), (1, 0)],
                probe: None,
            },
            2 => Op::Lease(2),
            _ => Op::Finish(0, i % 5),
        })
        .collect();
    play(&s, &ops);
    s.flush().unwrap();
}

#[test]
fn a_store_without_an_index_is_indexed_when_opened() {
    let dir = tempfile::tempdir().unwrap();
    write_20_events_and_40_runs(dir.path());
    // As a store written before the index existed: no index keys, no counters.
    {
        let db = crate::store::sled::reopened(|| sled::open(dir.path()));
        let tree = db.open_tree("switchboard").unwrap();
        for prefix in [&b"ir/"[..], b"is/", b"iq/", b"#/"] {
            for k in tree.scan_prefix(prefix).keys() {
                tree.remove(k.unwrap()).unwrap();
            }
        }
        db.flush().unwrap();
    }
    let s = crate::store::sled::reopened(|| SledStore::open(dir.path()));
    let stats = s.stats(true).unwrap();
    assert_eq!(stats.counts.events, 20);
    assert_eq!(stats.counts.runs_total(), 40);
    check(&s);
}

#[test]
fn a_store_of_index_version_1_is_indexed_again_when_opened() {
    let dir = tempfile::tempdir().unwrap();
    write_20_events_and_40_runs(dir.path());
    // As version 1 left it: an `ir/<recipe>\0<run id>` key per run holding
    // its status code, and one key per count instead of `#/counts`.
    {
        let db = crate::store::sled::reopened(|| sled::open(dir.path()));
        let tree = db.open_tree("switchboard").unwrap();
        for item in tree.scan_prefix(b"r/") {
            let (_, v) = item.unwrap();
            let run: Run = serde_json::from_slice(&v).unwrap();
            let key = [
                b"ir/".as_slice(),
                run.recipe.as_bytes(),
                b"\0",
                run.id.as_bytes(),
            ]
            .concat();
            tree.insert(key, &[super::code(run.status)][..]).unwrap();
        }
        tree.remove(b"#/counts").unwrap();
        tree.insert(b"#/events", &7u64.to_be_bytes()[..]).unwrap();
        tree.insert(b"#/index", b"1").unwrap();
        db.flush().unwrap();
    }
    let s = crate::store::sled::reopened(|| SledStore::open(dir.path()));
    let stats = s.stats(true).unwrap();
    assert_eq!(stats.counts.events, 20);
    assert_eq!(stats.counts.runs_total(), 40);
    check(&s);
}
