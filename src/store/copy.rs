//! `switchboard store copy --from data --to postgres://…`: move a sled
//! store, stopped, into an empty PostgreSQL database, for a team that
//! outgrows one node. Events, runs (with the queue each one's status
//! implies: waiting runs keep their time and correlation keys, concurrency
//! slots their order), recipe state, schedule cursors, replay keys and
//! cancel requests; then counted on both sides.
//!
//! Must never: write into a database that already holds events or runs
//! (two histories would mix), or report success when a count differs.

use super::pg::PgStore;
use super::sled::SledStore;
use super::{Counts, Page, Store};
use std::collections::HashSet;

/// What was copied: the source's counts, found equal in the target.
#[derive(Debug, Clone, PartialEq)]
pub struct Copied {
    pub counts: Counts,
    pub state_entries: u64,
    pub schedule_cursors: usize,
}

/// Copy everything `from` holds into `to` (which must be empty), at `now`
/// (a run leased in `from` is due at `now` in `to`).
pub fn sled_to_pg(
    from: &SledStore,
    to: &PgStore,
    now: i64,
    mut progress: impl FnMut(u64),
) -> Result<Copied, String> {
    let e = |e: super::StoreError| e.to_string();
    let there = to.stats(false).map_err(e)?.counts;
    if there.events > 0 || there.runs_total() > 0 {
        return Err(format!(
            "the database already holds {} events and {} runs: copy into an empty one",
            there.events,
            there.runs_total()
        ));
    }
    let mut seen: HashSet<String> = HashSet::new();
    let mut page = Page {
        limit: 500,
        before: None,
    };
    let mut events = 0;
    loop {
        let batch = from.events(&page).map_err(e)?;
        for event in &batch {
            let mut runs = Vec::new();
            let mut cancels = Vec::new();
            for id in &event.runs {
                if !seen.insert(id.clone()) {
                    continue; // a debounced run, listed by several events
                }
                let Some(run) = from.run(id).map_err(e)? else {
                    continue;
                };
                if let Some(reason) = from.cancel_requested(id).map_err(e)? {
                    cancels.push((id.clone(), reason));
                }
                runs.push(run);
            }
            to.import(event, &runs, &cancels, now).map_err(e)?;
            events += 1;
            if events % 1000 == 0 {
                progress(events);
            }
        }
        match batch.last() {
            Some(last) if batch.len() >= page.limit => page.before = Some(last.id.clone()),
            _ => break,
        }
    }
    let state = from.state_raw().map_err(e)?;
    to.import_state(&state).map_err(e)?;
    let cursors = from.schedule_cursors().map_err(e)?;
    for (recipe, slot) in &cursors {
        to.set_schedule_cursor(recipe, *slot).map_err(e)?;
    }
    to.flush().map_err(e)?;
    // Verified by counting both sides.
    let (a, b) = (from.stats(false).map_err(e)?, to.stats(false).map_err(e)?);
    if a.counts != b.counts || a.state_entries != b.state_entries {
        return Err(format!(
            "the copy differs from the source: source {:?} with {} state entries, copy {:?} with {}",
            a.counts, a.state_entries, b.counts, b.state_entries
        ));
    }
    Ok(Copied {
        counts: b.counts,
        state_entries: b.state_entries,
        schedule_cursors: cursors.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::{self, Pg};
    use crate::store::state::{StateKey, StateOp};
    use crate::store::{Correlation, Event, Listen, Parked, RunStatus};
    use serde_json::json;

    fn event(n: usize) -> Event {
        conformance::event(Some(&format!("d{n}")))
    }

    #[test]
    fn a_sled_store_copied_to_postgres_holds_and_does_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let sled = SledStore::open(dir.path()).unwrap();
        let key = Correlation {
            listen: Listen::Wake,
            connector: "zendesk".into(),
            event_type: "ticket.updated".into(),
            key: "42".into(),
            tag: "r\0wait".into(),
        };
        // 1,200 events: finished, queued, leased and one waiting run.
        let mut waiting = String::new();
        for n in 0..1200 {
            let mut e = event(n);
            let r = conformance::run(&e, 1000);
            e.runs = vec![r.id.clone()];
            sled.insert_event(&e, std::slice::from_ref(&r)).unwrap();
            if n % 3 == 0 {
                continue; // stays queued
            }
            let mut leased = sled.lease(1000, 60_000, 1).unwrap().remove(0);
            if n == 1 {
                let prev = leased.due_at;
                leased.status = RunStatus::Waiting;
                leased.due_at = 9_000_000;
                leased.parked = Some(Parked {
                    step: "wait".into(),
                    until: 9_000_000,
                    since: 1000,
                    keys: vec![key.clone()],
                    woken_by: None,
                });
                sled.park(&leased, prev).unwrap();
                waiting = leased.id;
            } else if n % 3 == 1 {
                leased.status = RunStatus::Succeeded;
                sled.finish_run(&leased).unwrap();
            } // else: left running (a stopped hub's lease)
        }
        let counter = StateOp::Incr {
            key: StateKey::new("ns", "tickets").unwrap(),
            by: 5,
            window_ms: Some(3_600_000),
            ttl_ms: None,
        };
        sled.apply_state(&counter, 1000, &mut |_| None).unwrap();
        sled.set_schedule_cursor("daily", 123_000).unwrap();
        sled.flush().unwrap();

        let db = Pg::new();
        let pg = crate::store::pg::PgStore::open(&db.url).unwrap();
        let copied = sled_to_pg(&sled, &pg, 2000, |_| {}).unwrap();
        assert_eq!(copied.counts.events, 1200);
        assert_eq!(copied.counts.status(RunStatus::Succeeded), 399);
        assert_eq!(copied.counts.status(RunStatus::Waiting), 1);
        assert_eq!((copied.state_entries, copied.schedule_cursors), (1, 1));
        // Not twice.
        assert!(sled_to_pg(&sled, &pg, 2000, |_| {})
            .unwrap_err()
            .contains("already holds"));
        // The copy behaves: dedupe, the queue (leased runs due now), the
        // waiting run's key, state, the cursor.
        assert!(matches!(
            pg.insert_event(&event(5), &[]).unwrap(),
            crate::store::Inserted::Duplicate { .. }
        ));
        let due = pg.lease(2000, 60_000, 2000).unwrap();
        assert_eq!(due.len(), 400 + 400, "queued and formerly leased runs");
        let (_, m) = pg
            .insert_event_matching(&event(9999), &[], &[key], 3000)
            .unwrap();
        assert_eq!(m.woken, vec![waiting]);
        let got = pg
            .state_get(&StateKey::new("ns", "tickets").unwrap(), 1000)
            .unwrap();
        assert_eq!(got[0].value, json!(5));
        assert_eq!(pg.schedule_cursor("daily").unwrap(), Some(123_000));
        drop(pg);
        drop(db);
    }
}
