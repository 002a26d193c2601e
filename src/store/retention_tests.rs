//! Retention on the sled store: what goes, what stays, in bounded chunks.

use super::*;
use crate::store::sled::SledStore;
use crate::store::{new_id, Event, Inserted, Page, ReplayGuard, Run, RunFilter, Store};
use serde_json::json;

fn event(at: i64, delivery: &str) -> Event {
    Event {
        id: new_id(at),
        connector: "zendesk".into(),
        event_type: Some("ticket.created".into()),
        delivery_id: Some(delivery.into()),
        received_at: at,
        body: json!({"big": "x".repeat(1000)}),
        runs: vec![],
        origin: Default::default(),
        replay: Some(ReplayGuard {
            key: format!("sig-{delivery}"),
            window_ms: None,
        }),
    }
}

fn run(e: &Event, at: i64) -> Run {
    Run {
        id: new_id(at),
        event_id: e.id.clone(),
        recipe: "r".into(),
        status: RunStatus::Queued,
        created_at: at,
        updated_at: at,
        finished_at: None,
        steps: vec![],
        error: None,
        reason: None,
        due_at: at,
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

/// Store an event at `at` with one run, leased and finished as `status`
/// (`None`: left queued).
fn stored(s: &SledStore, at: i64, delivery: &str, status: Option<RunStatus>) -> (Event, Run) {
    let mut e = event(at, delivery);
    let r = run(&e, at);
    e.runs = vec![r.id.clone()];
    assert_eq!(
        s.insert_event(&e, std::slice::from_ref(&r)).unwrap(),
        Inserted::New
    );
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

#[test]
fn old_finished_events_go_with_their_runs_and_keys_and_the_rest_stays() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(dir.path()).unwrap();
    let day = 86_400_000;
    let t0 = 1_700_000_000_000;
    let mut old = Vec::new();
    for i in 0..10 {
        old.push(stored(
            &s,
            t0 + i,
            &format!("old{i}"),
            Some(RunStatus::Succeeded),
        ));
    }
    let failed = stored(&s, t0 + 20, "failed", Some(RunStatus::Failed));
    let dead = stored(&s, t0 + 21, "dead", Some(RunStatus::Dead));
    let queued = stored(&s, t0 + 22, "queued", None);
    let young = stored(&s, t0 + 2 * day, "young", Some(RunStatus::Succeeded));

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
            &RunFilter {
                recipe: Some("r".into()),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(listed.len(), 3);

    // Their dedupe and replay keys went too: the same delivery is new now
    // (the window is past every sender's retries); the kept ones still refuse.
    let again = event(t0 + 2 * day, "old3");
    assert_eq!(s.insert_event(&again, &[]).unwrap(), Inserted::New);
    let mut replayed = event(t0 + 2 * day, "other");
    replayed.replay = Some(ReplayGuard {
        key: "sig-old4".into(),
        window_ms: None,
    });
    assert_eq!(s.insert_event(&replayed, &[]).unwrap(), Inserted::New);
    assert!(matches!(
        s.insert_event(&event(t0 + 2 * day, "dead"), &[]).unwrap(),
        Inserted::Duplicate { .. }
    ));

    // The dead letter is handled (retried, then succeeds): the next pass takes it.
    s.retry_run(&dead.1.id, t0 + 2 * day).unwrap();
    let mut leased = s.lease(t0 + 2 * day, 1_000, 5).unwrap();
    leased.retain(|r| r.id == dead.1.id);
    let mut r = leased.remove(0);
    r.status = RunStatus::Succeeded;
    s.finish_run(&r).unwrap();
    let x = s.expire(cutoff, 100).unwrap();
    assert_eq!((x.events, x.kept, x.cycle_done), (1, 1, true));
    assert!(s.event(&dead.0.id).unwrap().is_none());
}
