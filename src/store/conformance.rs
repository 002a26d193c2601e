//! The behaviour every backend must show, written once over `&dyn Store`
//! and run against each: sled in a temp dir, PostgreSQL in a schema of its
//! own (created for the test, dropped after it) of the `test` database at
//! 127.0.0.1:5432 (`SWITCHBOARD_TEST_PG` overrides the URL), so the tests
//! run in parallel. The `matrix!` at the bottom names each test once and
//! makes one `#[test]` per backend; `pg_nodes` adds what only several nodes
//! on one database can show (two `PgStore`s are two nodes).

use super::state::{StateKey, StateOp, StateOutput};
use super::{
    new_id, Correlation, Event, Inserted, Listen, Page, Parked, ReplayGuard, Retried, Run,
    RunStatus, StepRecord, StepStatus, Store,
};
use serde_json::json;
use std::sync::Arc;

/// A place a store lives in for one test; opened again to check durability.
pub(crate) trait Backend {
    fn open(&self) -> Arc<dyn Store>;
}

pub(crate) struct Sled(tempfile::TempDir);

impl Sled {
    pub(crate) fn new() -> Sled {
        Sled(tempfile::tempdir().unwrap())
    }
}

impl Backend for Sled {
    fn open(&self) -> Arc<dyn Store> {
        let dir = self.0.path().to_path_buf();
        Arc::new(super::sled::reopened(|| super::sled::SledStore::open(&dir)))
    }
}

/// A schema of its own in the test database, dropped with this value.
pub(crate) struct Pg {
    pub(crate) url: String,
    admin: String,
    schema: String,
}

impl Pg {
    pub(crate) fn new() -> Pg {
        let admin = std::env::var("SWITCHBOARD_TEST_PG")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let schema = format!("sbt_{:016x}", rand::random::<u64>());
        let mut c = postgres::Client::connect(&admin, postgres::NoTls)
            .expect("PostgreSQL at 127.0.0.1:5432, database test (SWITCHBOARD_TEST_PG)");
        c.batch_execute(&format!("CREATE SCHEMA {schema}")).unwrap();
        let sep = if admin.contains('?') { '&' } else { '?' };
        Pg {
            url: format!("{admin}{sep}options=-csearch_path%3D{schema}"),
            admin,
            schema,
        }
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        if let Ok(mut c) = postgres::Client::connect(&self.admin, postgres::NoTls) {
            let _ = c.batch_execute(&format!("DROP SCHEMA {} CASCADE", self.schema));
        }
    }
}

impl Backend for Pg {
    fn open(&self) -> Arc<dyn Store> {
        Arc::new(super::pg::PgStore::open(&self.url).unwrap())
    }
}

pub(super) fn event(delivery: Option<&str>) -> Event {
    Event {
        id: new_id(1000),
        connector: "zendesk".into(),
        event_type: Some("ticket.created".into()),
        delivery_id: delivery.map(str::to_string),
        received_at: 1000,
        body: json!({"a": 1, "nul": "a\u{0}b"}),
        runs: vec![],
        replay: None,
        origin: Default::default(),
    }
}

pub(super) fn run(event: &Event, due: i64) -> Run {
    Run {
        id: new_id(1000),
        event_id: event.id.clone(),
        recipe: "r".into(),
        status: RunStatus::Queued,
        created_at: 1000,
        updated_at: 1000,
        finished_at: None,
        steps: vec![],
        error: None,
        reason: None,
        due_at: due,
        pending: None,
        round: 0,
        concurrency: None,
        debounce: None,
        parked: None,
        starts: 0,
        listening: vec![],
        version: None,
    }
}

fn step(id: &str, status: StepStatus) -> StepRecord {
    StepRecord {
        input: json!({}),
        http_status: Some(200),
        output: json!({}),
        duration_ms: 1,
        attempts: 3,
        ..StepRecord::new(id, "c.a".into(), status, 0)
    }
}

fn insert(s: &dyn Store, e: &Event, runs: &[Run]) {
    let mut e = e.clone();
    e.runs = runs.iter().map(|r| r.id.clone()).collect();
    assert_eq!(s.insert_event(&e, runs).unwrap(), Inserted::New);
}

fn dedupes_by_delivery_id_and_survives_reopen(b: &dyn Backend) {
    let e = event(Some("d1"));
    {
        let s = b.open();
        assert_eq!(s.insert_event(&e, &[]).unwrap(), Inserted::New);
        let again = event(Some("d1"));
        assert_eq!(
            s.insert_event(&again, &[]).unwrap(),
            Inserted::Duplicate {
                event_id: e.id.clone()
            }
        );
        assert!(
            s.event(&again.id).unwrap().is_none(),
            "a duplicate is not stored"
        );
        // Another connector's same id, and events without an id, are new.
        let mut other = event(Some("d1"));
        other.connector = "hubspot".into();
        assert_eq!(s.insert_event(&other, &[]).unwrap(), Inserted::New);
        assert_eq!(s.insert_event(&event(None), &[]).unwrap(), Inserted::New);
        assert_eq!(s.insert_event(&event(None), &[]).unwrap(), Inserted::New);
        s.flush().unwrap();
    }
    let s = b.open();
    assert_eq!(s.event(&e.id).unwrap().unwrap(), e);
    assert_eq!(s.event_by_delivery("zendesk", "d1").unwrap().unwrap(), e);
    assert_eq!(s.stats(false).unwrap().counts.events, 4);
}

fn a_replay_inside_its_window_is_a_duplicate(b: &dyn Backend) {
    let s = b.open();
    let guarded = |at: i64| {
        let mut e = event(None);
        e.id = new_id(at);
        e.received_at = at;
        e.replay = Some(ReplayGuard {
            key: "body:abc".into(),
            window_ms: Some(1_000),
        });
        e
    };
    let first = guarded(10_000);
    assert_eq!(s.insert_event(&first, &[]).unwrap(), Inserted::New);
    assert_eq!(
        s.insert_event(&guarded(10_500), &[]).unwrap(),
        Inserted::Duplicate {
            event_id: first.id.clone()
        }
    );
    let later = guarded(11_000);
    assert_eq!(s.insert_event(&later, &[]).unwrap(), Inserted::New);
    assert_eq!(
        s.insert_event(&guarded(11_999), &[]).unwrap(),
        Inserted::Duplicate { event_id: later.id }
    );
}

fn queue_leases_expire_and_finish_dequeues(b: &dyn Backend) {
    let s = b.open();
    let e = event(None);
    let r = run(&e, 1000);
    insert(&*s, &e, std::slice::from_ref(&r));
    assert_eq!(s.queue_depth().unwrap(), 1);
    assert_eq!(s.next_due().unwrap(), Some(1000));
    assert!(s.lease(999, 100, 10).unwrap().is_empty(), "not due yet");
    let leased = s.lease(1000, 100, 10).unwrap();
    assert_eq!(leased.len(), 1);
    assert_eq!(
        (leased[0].status, leased[0].starts),
        (RunStatus::Running, 1)
    );
    assert!(s.lease(1050, 100, 10).unwrap().is_empty(), "leased");
    let again = s.lease(1100, 100, 10).unwrap();
    assert_eq!(again.len(), 1, "the lease expired: due again");
    assert_eq!(again[0].starts, 2);
    let mut done = again[0].clone();
    done.status = RunStatus::Succeeded;
    done.steps.push(step("a", StepStatus::Succeeded));
    s.finish_run(&done).unwrap();
    assert_eq!(s.queue_depth().unwrap(), 0);
    assert_eq!(s.next_due().unwrap(), None);
    assert_eq!(s.run(&done.id).unwrap().unwrap(), done);
    let stats = s.stats(true).unwrap();
    assert_eq!(stats.counts.status(RunStatus::Succeeded), 1);
    assert_eq!(stats.scanned.as_ref(), Some(&stats.counts));
    assert!(stats.problems.is_empty(), "{:?}", stats.problems);
}

fn a_run_finished_after_its_lease_expired_is_not_leased_again(b: &dyn Backend) {
    let s = b.open();
    let e = event(None);
    insert(&*s, &e, &[run(&e, 1000)]);
    let first = s.lease(1000, 100, 10).unwrap();
    assert_eq!(s.lease(1100, 100, 10).unwrap().len(), 1);
    let mut done = first[0].clone();
    done.status = RunStatus::Succeeded;
    s.finish_run(&done).unwrap();
    assert!(s.lease(1300, 100, 10).unwrap().is_empty());
    assert_eq!(
        s.run(&done.id).unwrap().unwrap().status,
        RunStatus::Succeeded
    );
    assert_eq!(s.queue_depth().unwrap(), 0);
}

fn retry_run_requeues_only_failures_and_resumes_at_the_failed_step(b: &dyn Backend) {
    let s = b.open();
    let e = event(None);
    let r = run(&e, 10);
    insert(&*s, &e, std::slice::from_ref(&r));
    assert_eq!(
        s.retry_run(&r.id, 20).unwrap(),
        Retried::NotFailed(RunStatus::Queued)
    );
    assert_eq!(s.retry_run("nope", 20).unwrap(), Retried::NotFound);
    let mut leased = s.lease(10, 1000, 1).unwrap().remove(0);
    leased.steps = vec![
        step("s", StepStatus::Succeeded),
        step("t", StepStatus::Failed),
    ];
    leased.status = RunStatus::Dead;
    s.finish_run(&leased).unwrap();
    assert_eq!(s.queue_depth().unwrap(), 0);
    let failures = s
        .runs(
            &Page {
                limit: 10,
                before: None,
            },
            &super::RunFilter {
                failures: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(failures.len(), 1);
    let Retried::Queued(again) = s.retry_run(&r.id, 30).unwrap() else {
        panic!()
    };
    assert_eq!(again.steps.len(), 1, "the completed step is kept");
    assert_eq!(again.pending.as_ref().unwrap().attempts, 3, "history kept");
    assert_eq!(
        (again.status, again.round, again.due_at),
        (RunStatus::Queued, 1, 30)
    );
    assert_eq!(s.lease(30, 1000, 5).unwrap().len(), 1);
}

fn corr(listen: Listen, key: &str, tag: &str) -> Correlation {
    Correlation {
        listen,
        connector: "zendesk".into(),
        event_type: "ticket.updated".into(),
        key: key.into(),
        tag: tag.into(),
    }
}

/// Park a fresh run of `e` listed under `keys`, waiting until `until`.
fn parked(s: &dyn Store, e: &Event, keys: Vec<Correlation>, until: i64) -> Run {
    let r = run(e, 10);
    s.insert_event(e, std::slice::from_ref(&r)).unwrap();
    let mut leased = s.lease(10, 1000, 10).unwrap().remove(0);
    assert_eq!(leased.id, r.id);
    let prev = leased.due_at;
    leased.status = RunStatus::Waiting;
    leased.due_at = until;
    leased.parked = Some(Parked {
        step: "wait".into(),
        until,
        since: 10,
        keys,
        woken_by: None,
    });
    s.park(&leased, prev).unwrap();
    leased
}

pub(super) fn a_matching_event_wakes_or_cancels_waiting_runs_in_its_batch(b: &dyn Backend) {
    use Listen::{Cancel, Wake};
    let s = b.open();
    let a = parked(
        &*s,
        &event(None),
        vec![corr(Wake, "42", "r\0w"), corr(Cancel, "42", "r")],
        5000,
    );
    let bb = parked(
        &*s,
        &event(None),
        vec![corr(Wake, "43", "r\0w"), corr(Cancel, "43", "r")],
        5000,
    );
    assert_eq!(s.lease(100, 1000, 10).unwrap().len(), 0, "waiting, not due");
    assert_eq!(s.queue_depth().unwrap(), 0, "waiting runs are not backlog");
    assert_eq!(s.queue_counts().unwrap().parked, 2);
    let (_, m) = s
        .insert_event_matching(
            &event(Some("x1")),
            &[],
            &[corr(Wake, "44", "r\0w"), corr(Wake, "42", "q\0w")],
            100,
        )
        .unwrap();
    assert_eq!(
        m,
        super::Matched::default(),
        "another key or tag matches nothing"
    );
    let hit = event(Some("x2"));
    let (_, m) = s
        .insert_event_matching(&hit, &[], &[corr(Wake, "42", "r\0w")], 200)
        .unwrap();
    assert_eq!(m.woken, vec![a.id.clone()]);
    let woke = s.run(&a.id).unwrap().unwrap();
    assert_eq!((woke.status, woke.due_at), (RunStatus::Queued, 200));
    assert_eq!(
        s.queue_depth().unwrap(),
        1,
        "the woken run is backlog again"
    );
    assert_eq!(woke.parked.unwrap().woken_by, Some(hit.id.clone()));
    let (_, m) = s
        .insert_event_matching(&event(Some("x3")), &[], &[corr(Cancel, "42", "r")], 300)
        .unwrap();
    assert!(m.cancelled.is_empty(), "its cancel key went with the wake");
    let (ins, m) = s
        .insert_event_matching(&event(Some("x2")), &[], &[corr(Cancel, "43", "r")], 300)
        .unwrap();
    assert!(matches!(ins, Inserted::Duplicate { .. }));
    assert!(
        m.cancelled.is_empty(),
        "a duplicate delivery matches nothing"
    );
    let (_, m) = s
        .insert_event_matching(&event(Some("x4")), &[], &[corr(Cancel, "43", "r")], 400)
        .unwrap();
    assert_eq!(m.cancelled, vec![bb.id.clone()]);
    let gone = s.run(&bb.id).unwrap().unwrap();
    assert_eq!(gone.status, RunStatus::Cancelled);
    assert!(gone.reason.unwrap().contains("cancelled by event"));
    let leased = s.lease(10_000, 1000, 10).unwrap();
    assert_eq!(
        leased.iter().map(|r| &r.id).collect::<Vec<_>>(),
        vec![&a.id]
    );
    // No key is left: the same events again match nothing.
    let (_, m) = s
        .insert_event_matching(
            &event(Some("x5")),
            &[],
            &[
                corr(Wake, "42", "r\0w"),
                corr(Cancel, "43", "r"),
                corr(Wake, "43", "r\0w"),
            ],
            500,
        )
        .unwrap();
    assert_eq!(m, super::Matched::default());
}

fn a_timed_out_wait_is_no_longer_listed(b: &dyn Backend) {
    let s = b.open();
    let a = parked(
        &*s,
        &event(None),
        vec![corr(Listen::Wake, "42", "r\0w")],
        500,
    );
    let leased = s.lease(500, 1000, 10).unwrap();
    assert_eq!(leased[0].id, a.id);
    assert_eq!(leased[0].status, RunStatus::Running);
    let (_, m) = s
        .insert_event_matching(
            &event(Some("x")),
            &[],
            &[corr(Listen::Wake, "42", "r\0w")],
            600,
        )
        .unwrap();
    assert!(
        m.woken.is_empty(),
        "the timer won; the event does not wake it again"
    );
}

fn a_running_run_is_asked_to_stop_by_a_cancelling_event(b: &dyn Backend) {
    let s = b.open();
    let e = event(None);
    let mut r = run(&e, 10);
    r.listening = vec![corr(Listen::Cancel, "7", "r")];
    insert(&*s, &e, std::slice::from_ref(&r));
    let leased = s.lease(10, 1000, 1).unwrap().remove(0);
    assert_eq!(s.cancel_requested(&r.id).unwrap(), None);
    let (_, m) = s
        .insert_event_matching(
            &event(Some("c")),
            &[],
            &[corr(Listen::Cancel, "7", "r")],
            20,
        )
        .unwrap();
    assert_eq!(m.cancelling, vec![r.id.clone()]);
    assert!(s.cancel_requested(&r.id).unwrap().is_some());
    let mut done = leased;
    done.status = RunStatus::Cancelled;
    s.finish_run(&done).unwrap();
    assert_eq!(
        s.cancel_requested(&r.id).unwrap(),
        None,
        "removed with the finish"
    );
}

fn a_concurrency_key_runs_its_runs_one_at_a_time_in_order(b: &dyn Backend) {
    let s = b.open();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let e = event(None);
        let mut r = run(&e, 10);
        r.concurrency = Some(super::ConcurrencySlot {
            key: "r\0ticket-1".into(),
            limit: 1,
            seq: 0,
        });
        insert(&*s, &e, std::slice::from_ref(&r));
        ids.push(r.id);
    }
    let leased = s.lease(10, 60_000, 10).unwrap();
    assert_eq!(
        leased.iter().map(|r| &r.id).collect::<Vec<_>>(),
        vec![&ids[0]]
    );
    assert!(
        s.lease(20, 60_000, 10).unwrap().is_empty(),
        "the others wait their turn"
    );
    let mut done = leased[0].clone();
    done.status = RunStatus::Succeeded;
    done.updated_at = 30;
    s.finish_run(&done).unwrap();
    // Finishing makes the next one due at once, not at its lease's end.
    let next = s.lease(30, 60_000, 10).unwrap();
    assert_eq!(
        next.iter().map(|r| &r.id).collect::<Vec<_>>(),
        vec![&ids[1]]
    );
}

fn a_debounced_burst_is_one_run_with_the_newest_event(b: &dyn Backend) {
    let s = b.open();
    let slot = |first_at| super::DebounceSlot {
        key: "r\0ticket-9".into(),
        quiet_ms: 100,
        max_ms: 1_000,
        first_at,
        events: 0,
    };
    let e1 = event(None);
    let mut r1 = run(&e1, 1_100);
    r1.debounce = Some(slot(1_000));
    insert(&*s, &e1, std::slice::from_ref(&r1));
    let mut e2 = event(None);
    e2.id = new_id(1_050);
    let mut r2 = run(&e2, 1_150);
    r2.debounce = Some(slot(1_050));
    e2.runs = vec![r2.id.clone()];
    assert_eq!(
        s.insert_event(&e2, std::slice::from_ref(&r2)).unwrap(),
        Inserted::New
    );
    assert!(s.run(&r2.id).unwrap().is_none(), "no second run");
    let stored = s.event(&e2.id).unwrap().unwrap();
    assert_eq!(
        stored.runs,
        vec![r1.id.clone()],
        "the event lists the pending run"
    );
    let pending = s.run(&r1.id).unwrap().unwrap();
    assert_eq!(
        (pending.event_id.as_str(), pending.due_at),
        (e2.id.as_str(), 1_150)
    );
    assert_eq!(pending.debounce.unwrap().events, 2);
    let leased = s.lease(1_150, 60_000, 10).unwrap();
    assert_eq!(leased.len(), 1);
    // Started: the next event of the key makes a new run.
    let mut e3 = event(None);
    e3.id = new_id(1_200);
    let mut r3 = run(&e3, 1_300);
    r3.debounce = Some(slot(1_200));
    insert(&*s, &e3, std::slice::from_ref(&r3));
    assert!(s.run(&r3.id).unwrap().is_some());
}

fn pages_newest_first(b: &dyn Backend) {
    let s = b.open();
    let mut ids = vec![];
    for i in 0..5 {
        let mut e = event(None);
        e.id = new_id(1000 + i);
        s.insert_event(&e, &[]).unwrap();
        ids.push(e.id);
    }
    let page = |before: Option<String>| {
        s.events(&Page { limit: 2, before })
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(page(None), vec![ids[4].clone(), ids[3].clone()]);
    assert_eq!(
        page(Some(ids[3].clone())),
        vec![ids[2].clone(), ids[1].clone()]
    );
    assert_eq!(s.event_times(0, 3).unwrap().len(), 3);
}

/// A delivery at `at` with a replay key of its own (`sig-<delivery>`).
fn delivery(at: i64, delivery: &str) -> Event {
    let mut e = event(Some(delivery));
    e.id = new_id(at);
    e.received_at = at;
    e.replay = Some(ReplayGuard {
        key: format!("sig-{delivery}"),
        window_ms: None,
    });
    e
}

/// [`delivery`] with one run, stored, then leased and finished as `status`
/// (`None`: left queued).
fn stored(s: &dyn Store, at: i64, d: &str, status: Option<RunStatus>) -> (Event, Run) {
    let e = delivery(at, d);
    let r = run(&e, at);
    insert(s, &e, std::slice::from_ref(&r));
    if let Some(status) = status {
        // (An older queued run may be leased too: it stays unfinished.)
        let mut leased = s.lease(at, 1_000_000, 10).unwrap();
        leased.retain(|l| l.id == r.id);
        let mut leased = leased.remove(0);
        leased.status = status;
        leased.finished_at = Some(at);
        s.finish_run(&leased).unwrap();
    }
    (e, r)
}

fn retention_takes_old_finished_events_with_their_runs_and_keys_in_chunks(b: &dyn Backend) {
    let s = b.open();
    let day = 86_400_000;
    let mut old = Vec::new();
    for i in 0..10 {
        let at = super::now_ms();
        old.push(stored(
            &*s,
            at,
            &format!("old{i}"),
            Some(RunStatus::Succeeded),
        ));
    }
    let failed = stored(&*s, super::now_ms(), "failed", Some(RunStatus::Failed));
    let dead = stored(&*s, super::now_ms(), "dead", Some(RunStatus::Dead));
    let queued = stored(&*s, super::now_ms(), "queued", None);
    // Ids are monotonic in the process (`new_id`), so the window is placed
    // after the newest id made: whatever time other tests' ids carry.
    let t0 = super::id_time(&queued.0.id).unwrap();
    let young = stored(&*s, t0 + 2 * day, "young", Some(RunStatus::Succeeded));

    // A window of one day, 4 events a chunk: the cursor carries on.
    let cutoff = t0 + 2 * day - day / 2;
    let mut chunks = Vec::new();
    loop {
        let x = s.expire(cutoff, 4).unwrap();
        chunks.push(x);
        if x.cycle_done {
            break;
        }
    }
    assert!(chunks.len() >= 3, "{chunks:?}");
    assert!(chunks.iter().all(|c| c.events <= 4));
    assert_eq!(chunks.iter().map(|c| c.events).sum::<usize>(), 11);
    assert_eq!(chunks.iter().map(|c| c.runs).sum::<usize>(), 11);
    assert_eq!(chunks.iter().map(|c| c.kept).sum::<usize>(), 2);

    for (e, r) in old.iter().chain([&failed]) {
        assert!(s.event(&e.id).unwrap().is_none());
        assert!(s.run(&r.id).unwrap().is_none());
    }
    for (e, r) in [&dead, &queued, &young] {
        assert!(s.event(&e.id).unwrap().is_some());
        assert!(s.run(&r.id).unwrap().is_some());
    }
    let stats = s.stats(true).unwrap();
    assert_eq!(stats.problems, Vec::<String>::new());
    assert_eq!(Some(&stats.counts), stats.scanned.as_ref());
    assert_eq!(stats.counts.events, 3);
    assert_eq!(stats.counts.status(RunStatus::Dead), 1);
    let listed = s
        .runs(
            &Page {
                limit: 50,
                before: None,
            },
            &super::RunFilter {
                recipe: Some("r".into()),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(listed.len(), 3);

    // Their dedupe and replay keys went too: the same delivery is new now
    // (the window is past every sender's retries); the kept ones still refuse.
    let at = t0 + 2 * day;
    let again = delivery(at, "old3");
    assert_eq!(s.insert_event(&again, &[]).unwrap(), Inserted::New);
    let mut replayed = delivery(at, "other");
    replayed.replay = Some(ReplayGuard {
        key: "sig-old4".into(),
        window_ms: None,
    });
    assert_eq!(s.insert_event(&replayed, &[]).unwrap(), Inserted::New);
    assert!(matches!(
        s.insert_event(&delivery(at, "dead"), &[]).unwrap(),
        Inserted::Duplicate { .. }
    ));

    // The dead letter is handled (retried, then succeeds): the next pass takes it.
    s.retry_run(&dead.1.id, at).unwrap();
    let mut leased = s.lease(at, 1_000, 5).unwrap();
    leased.retain(|r| r.id == dead.1.id);
    let mut r = leased.remove(0);
    r.status = RunStatus::Succeeded;
    s.finish_run(&r).unwrap();
    let x = s.expire(cutoff, 100).unwrap();
    assert_eq!((x.events, x.kept, x.cycle_done), (1, 1, true));
    assert!(s.event(&dead.0.id).unwrap().is_none());
}

fn key(k: &str) -> StateKey {
    StateKey::new("ns", k).unwrap()
}

fn op_incr(k: &str, window_ms: Option<i64>) -> StateOp {
    StateOp::Incr {
        key: key(k),
        by: 1,
        window_ms,
        ttl_ms: None,
    }
}

fn state_change_and_checkpoint_are_one_write(b: &dyn Backend) {
    let e = event(None);
    let r = run(&e, 10);
    {
        let s = b.open();
        insert(&*s, &e, std::slice::from_ref(&r));
        let out = s
            .apply_state(&op_incr("tickets", Some(86_400_000)), 1_000, &mut |out| {
                let mut run = r.clone();
                let mut rec = step("count", StepStatus::Succeeded);
                rec.output = out.to_json();
                run.steps.push(rec);
                Some(run)
            })
            .unwrap();
        assert_eq!(out, StateOutput::Count { count: 1 });
        s.flush().unwrap();
    }
    let s = b.open();
    let saved = s.run(&r.id).unwrap().unwrap();
    assert_eq!(saved.steps[0].output, json!({"count": 1}));
    let entries = s.state_get(&key("tickets"), 2_000).unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].value, json!(1));
}

fn concurrent_increments_lose_nothing(b: &dyn Backend) {
    let s = b.open();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let s = s.clone();
            std::thread::spawn(move || {
                for _ in 0..40 {
                    s.apply_state(&op_incr("plain", None), 5, &mut |_| None)
                        .unwrap();
                    s.apply_state(&op_incr("window", Some(60_000)), 5, &mut |_| None)
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let read = StateOp::Incr {
        key: key("window"),
        by: 0,
        window_ms: Some(60_000),
        ttl_ms: None,
    };
    assert_eq!(
        s.apply_state(&read, 5, &mut |_| None).unwrap(),
        StateOutput::Count { count: 320 }
    );
    assert_eq!(
        s.apply_state(&StateOp::Get(key("plain")), 5, &mut |_| None)
            .unwrap(),
        StateOutput::Value {
            found: true,
            value: json!(320)
        }
    );
}

fn round_robin_hands_out_consecutive_slots(b: &dyn Backend) {
    let s = b.open();
    let assign = StateOp::Assign(super::state::Assign {
        rotation: key("rr"),
        agents: vec!["a".into(), "b".into(), "c".into()],
        skipped: vec![None, None, None],
        strategy: super::state::Strategy::RoundRobin,
        loads: None,
        capacity: None,
    });
    let picks: Vec<String> = (0..6)
        .map(
            |_| match s.apply_state(&assign, 5, &mut |_| None).unwrap() {
                StateOutput::Assigned { index, .. } => index.to_string(),
                other => panic!("{other:?}"),
            },
        )
        .collect();
    assert_eq!(picks, ["0", "1", "2", "0", "1", "2"]);
}

fn expired_state_is_hidden_then_swept_in_bounded_passes(b: &dyn Backend) {
    let s = b.open();
    for i in 0..25 {
        let set = StateOp::Set {
            key: key(&format!("k{i:02}")),
            value: json!(i),
            ttl_ms: (i % 2 == 1).then_some(1_000),
        };
        s.apply_state(&set, 0, &mut |_| None).unwrap();
    }
    s.apply_state(&op_incr("c", Some(10_000)), 0, &mut |_| None)
        .unwrap();
    assert_eq!(s.state_entries(None, None, 100, 999).unwrap().len(), 26);
    assert_eq!(s.state_entries(None, None, 100, 1_000).unwrap().len(), 14);
    assert_eq!(
        s.apply_state(&StateOp::Get(key("k01")), 1_000, &mut |_| None)
            .unwrap(),
        StateOutput::Value {
            found: false,
            value: serde_json::Value::Null
        }
    );
    assert_eq!(
        s.stats(false).unwrap().state_entries,
        25,
        "the read of k01 removed it"
    );
    let (mut removed, mut cycle) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let swept = s.sweep_state(20_000, 10).unwrap();
        removed.push(swept.removed);
        cycle.push(swept.cycle_done);
    }
    assert_eq!(cycle, [false, false, true]);
    assert_eq!(removed.iter().sum::<usize>(), 11 + 1, "{removed:?}");
    assert!(removed.iter().all(|n| *n <= 10));
    assert_eq!(s.stats(false).unwrap().state_entries, 13);
}

fn state_lists_by_namespace_in_pages(b: &dyn Backend) {
    let s = b.open();
    for ns in ["a", "b"] {
        for k in ["x", "y", "z"] {
            let set = StateOp::Set {
                key: StateKey::new(ns, k).unwrap(),
                value: json!(k),
                ttl_ms: None,
            };
            s.apply_state(&set, 0, &mut |_| None).unwrap();
        }
    }
    let counter = StateOp::Incr {
        key: StateKey::new("b", "x").unwrap(),
        by: 1,
        window_ms: Some(1_000),
        ttl_ms: None,
    };
    s.apply_state(&counter, 0, &mut |_| None).unwrap();
    let names: Vec<String> = s
        .state_entries(Some("b"), None, 100, 0)
        .unwrap()
        .iter()
        .map(|e| format!("{:?}:{}", e.kind, e.key))
        .collect();
    assert_eq!(names, ["Counter:x", "Value:x", "Value:y", "Value:z"]);
    let mut all = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = s.state_entries(None, after.as_deref(), 3, 0).unwrap();
        let Some(last) = page.last() else { break };
        after = Some(super::state::parse_cursor(&last.cursor).unwrap());
        all.extend(page);
    }
    assert_eq!(all.len(), 7);
    let deleted = s
        .apply_state(
            &StateOp::Delete(StateKey::new("b", "x").unwrap()),
            0,
            &mut |_| None,
        )
        .unwrap();
    assert_eq!(deleted, StateOutput::Deleted { deleted: true });
    assert_eq!(s.state_entries(Some("b"), None, 100, 0).unwrap().len(), 2);
}

fn schedule_cursors_are_kept(b: &dyn Backend) {
    let s = b.open();
    assert_eq!(s.schedule_cursor("daily").unwrap(), None);
    s.set_schedule_cursor("daily", 1_700_000_000_000).unwrap();
    s.set_schedule_cursor("daily", 1_700_000_060_000).unwrap();
    s.flush().unwrap();
    drop(s);
    assert_eq!(
        b.open().schedule_cursor("daily").unwrap(),
        Some(1_700_000_060_000)
    );
}

macro_rules! matrix {
    ($($name:ident),* $(,)?) => {
        mod sled_backend {
            $( #[test] fn $name() { super::$name(&super::Sled::new()); } )*
        }
        mod pg_backend {
            $( #[test] fn $name() { super::$name(&super::Pg::new()); } )*
        }
    };
}

matrix!(
    dedupes_by_delivery_id_and_survives_reopen,
    a_replay_inside_its_window_is_a_duplicate,
    queue_leases_expire_and_finish_dequeues,
    a_run_finished_after_its_lease_expired_is_not_leased_again,
    retry_run_requeues_only_failures_and_resumes_at_the_failed_step,
    a_matching_event_wakes_or_cancels_waiting_runs_in_its_batch,
    a_timed_out_wait_is_no_longer_listed,
    a_running_run_is_asked_to_stop_by_a_cancelling_event,
    a_concurrency_key_runs_its_runs_one_at_a_time_in_order,
    a_debounced_burst_is_one_run_with_the_newest_event,
    pages_newest_first,
    retention_takes_old_finished_events_with_their_runs_and_keys_in_chunks,
    state_change_and_checkpoint_are_one_write,
    concurrent_increments_lose_nothing,
    round_robin_hands_out_consecutive_slots,
    expired_state_is_hidden_then_swept_in_bounded_passes,
    state_lists_by_namespace_in_pages,
    schedule_cursors_are_kept,
);

/// Several nodes on one database: two `PgStore`s are two nodes.
mod pg_nodes {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn concurrent_duplicate_deliveries_on_two_nodes_store_one_event() {
        let db = Pg::new();
        let nodes = [db.open(), db.open()];
        let answers: Vec<Inserted> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..16)
                .map(|t| {
                    let s = nodes[t % 2].clone();
                    scope.spawn(move || {
                        (0..25)
                            .map(|_| {
                                let e = event(Some("same"));
                                let r = run(&e, 10);
                                s.insert_event(&e, &[r]).unwrap()
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let new = answers.iter().filter(|a| **a == Inserted::New).count();
        assert_eq!(new, 1, "{answers:?}");
        let first = nodes[0]
            .event_by_delivery("zendesk", "same")
            .unwrap()
            .unwrap();
        for a in answers.iter().filter(|a| **a != Inserted::New) {
            assert_eq!(
                *a,
                Inserted::Duplicate {
                    event_id: first.id.clone()
                }
            );
        }
        let stats = nodes[1].stats(false).unwrap();
        assert_eq!((stats.counts.events, stats.counts.runs_total()), (1, 1));
    }

    #[test]
    fn two_nodes_leasing_at_once_never_take_the_same_run() {
        let db = Pg::new();
        let nodes = [db.open(), db.open()];
        let mut all = Vec::new();
        for _ in 0..200 {
            let e = event(None);
            let r = run(&e, 10);
            all.push(r.id.clone());
            insert(&*nodes[0], &e, &[r]);
        }
        let leased: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|t| {
                    let s = nodes[t % 2].clone();
                    scope.spawn(move || {
                        let mut got = Vec::new();
                        loop {
                            let batch = s.lease(10, 60_000, 3).unwrap();
                            if batch.is_empty() {
                                return got;
                            }
                            got.extend(batch.into_iter().map(|r| r.id));
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        assert_eq!(leased.len(), all.len(), "each run leased exactly once");
        let unique: HashSet<_> = leased.iter().collect();
        assert_eq!(unique.len(), all.len());
    }

    /// The next due time `rx` hears of (panics after 20 s of silence).
    fn heard(rx: &mut tokio::sync::mpsc::UnboundedReceiver<i64>) -> i64 {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if let Ok(due) = rx.try_recv() {
                return due;
            }
            assert!(std::time::Instant::now() < deadline, "no wake-up heard");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn a_node_hears_of_runs_other_nodes_queue_and_listens_again_after_its_connection_dies() {
        let db = Pg::new();
        let (a, b) = (db.open(), db.open());
        let mut rx = b.watch_queue().expect("PostgreSQL nodes hear each other");
        assert_eq!(
            heard(&mut rx),
            i64::MIN,
            "listening: look at the queue once"
        );
        let e = event(None);
        insert(&*a, &e, &[run(&e, 1234)]);
        assert_eq!(heard(&mut rx), 1234, "a run a queued");
        // Not news for b: a run a leased for its own worker, and b's own run
        // (notifications arrive in commit order, so the next one heard
        // shows these two were not sent to b).
        let e = event(None);
        let mut handed = run(&e, 600_000);
        handed.status = RunStatus::Running;
        insert(&*a, &e, &[handed]);
        let e = event(None);
        let own = run(&e, 10);
        insert(&*b, &e, std::slice::from_ref(&own));
        let mut failed = b.lease(10, 60_000, 1).unwrap().remove(0);
        assert_eq!(failed.id, own.id);
        failed.status = RunStatus::Failed;
        b.finish_run(&failed).unwrap();
        assert!(matches!(
            a.retry_run(&own.id, 4321).unwrap(),
            Retried::Queued(_)
        ));
        assert_eq!(heard(&mut rx), 4321, "a retry on a");
        // The listening connection dies (a restart, a cut): b listens again
        // and, having maybe missed something, says to look at the queue.
        let mut admin = postgres::Client::connect(&db.admin, postgres::NoTls).unwrap();
        let killed = admin
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE query LIKE 'LISTEN %' AND query LIKE '%' || $1 || '%'",
                &[&db.schema],
            )
            .unwrap();
        assert_eq!(killed.len(), 1, "b's listening connection");
        assert_eq!(heard(&mut rx), i64::MIN, "listening again");
        let e = event(None);
        insert(&*a, &e, &[run(&e, 99)]);
        assert_eq!(heard(&mut rx), 99);
    }

    #[test]
    fn one_retention_chunk_runs_at_a_time_across_nodes() {
        let db = Pg::new();
        let s = db.open();
        let e = event(None);
        insert(&*s, &e, &[]);
        // After the event's id, whatever time other tests' ids carry.
        let cutoff = super::super::id_time(&e.id).unwrap() + 1;
        // Another node's chunk holds the retention lock: this tick skips.
        let mut other = postgres::Client::connect(&db.url, postgres::NoTls).unwrap();
        let mut chunk = other.transaction().unwrap();
        let lock = super::super::pg::retention_lock(&db.schema);
        chunk
            .execute("SELECT pg_advisory_xact_lock($1)", &[&lock])
            .unwrap();
        let skipped = s.expire(cutoff, 10).unwrap();
        assert_eq!((skipped.events, skipped.cycle_done), (0, true));
        assert!(s.event(&e.id).unwrap().is_some());
        chunk.rollback().unwrap();
        let x = s.expire(cutoff, 10).unwrap();
        assert_eq!(x.events, 1, "{x:?}");
        assert!(s.event(&e.id).unwrap().is_none());
    }

    #[test]
    fn runs_leased_by_a_node_that_is_gone_come_due_at_once_and_a_live_nodes_do_not() {
        let db = Pg::new();
        let (a, b) = (db.open(), db.open());
        for _ in 0..3 {
            let e = event(None);
            insert(&*a, &e, &[run(&e, 10)]);
        }
        assert_eq!(a.lease(10, 3_600_000, 2).unwrap().len(), 2);
        assert_eq!(b.lease(10, 3_600_000, 1).unwrap().len(), 1);
        // Both alive: nothing is released, nothing is due.
        assert_eq!(b.release_leases(20).unwrap(), 0);
        assert!(b.lease(20, 3_600_000, 10).unwrap().is_empty());
        // Node a stops (its connections close, as when the process is killed).
        drop(a);
        assert_eq!(b.release_leases(30).unwrap(), 2, "a's two leases");
        let resumed = b.lease(30, 3_600_000, 10).unwrap();
        assert_eq!(resumed.len(), 2);
        assert!(
            resumed.iter().all(|r| r.starts == 2),
            "a start counted again"
        );
    }
}
