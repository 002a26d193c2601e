//! Shared by `bench/waits.rs` and `bench/timers.rs`: SLA-style runs parked
//! in the store, each with a `wait_for` key and a `cancel_on` key.

use switchboard::store::sled::SledStore;
use switchboard::store::{new_id, Correlation, Event, Listen, Parked, Run, RunStatus, Store};

/// A correlation on Zendesk's `ticket.updated`.
pub fn corr(listen: Listen, key: &str, tag: &str) -> Correlation {
    Correlation {
        listen,
        connector: "zendesk".into(),
        event_type: "ticket.updated".into(),
        key: key.into(),
        tag: tag.into(),
    }
}

/// Park `n` runs of event `e`, due in an hour (one ms apart), with a group
/// commit (`flush`) every `WAITS_GROUP` runs (default 100, a group of
/// concurrent writers in `serve`; 10,000 was the default before 2026-11-30).
pub fn park_waiting(s: &SledStore, e: &Event, now: i64, n: usize) {
    let group: usize = std::env::var("WAITS_GROUP")
        .ok()
        .and_then(|g| g.parse().ok())
        .unwrap_or(100)
        .max(1);
    for i in 0..n {
        let until = now + 3_600_000 + i as i64;
        let run = Run {
            id: new_id(now),
            event_id: e.id.clone(),
            recipe: "sla".into(),
            status: RunStatus::Waiting,
            created_at: now,
            updated_at: now,
            finished_at: None,
            steps: vec![],
            error: None,
            reason: None,
            due_at: until,
            pending: None,
            round: 0,
            concurrency: None,
            debounce: None,
            starts: 0,
            listening: vec![],
            version: None,
            parked: Some(Parked {
                step: "reply".into(),
                until,
                since: now,
                keys: vec![
                    corr(Listen::Wake, &format!("ticket-{i}"), "sla\0reply"),
                    corr(Listen::Cancel, &format!("ticket-{i}"), "sla"),
                ],
                woken_by: None,
            }),
        };
        s.park(&run, until).expect("park");
        if i % group == group - 1 {
            s.flush().expect("flush");
        }
    }
    s.flush().expect("flush");
}
