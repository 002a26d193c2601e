//! The scheduler: turns cron slots of `on: { schedule }` recipes into
//! events.
//!
//! Each slot is accepted like a webhook delivery of the pseudo-connector
//! `schedule` (event type: the recipe's name) with the delivery id
//! `<recipe>@<slot ms>`, so the store's dedupe makes a slot fire **once**,
//! also when the hub restarts in the middle of handling it. `s/<recipe>`
//! remembers the last slot handled, to tell a missed slot from one never
//! due: on the first start of a recipe nothing in the past fires; after
//! downtime the latest missed slot fires once (`missed: latest`, default) or
//! none does (`missed: skip`). Nothing waits in memory but the next sleep.

use super::{Engine, Incoming};
use crate::recipe::config::Missed;
use crate::recipe::trigger::SCHEDULE_CONNECTOR;
use crate::time::{self, Schedule};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Longest the scheduler sleeps before looking again (so a stepped wall
/// clock is noticed without waiting for a far slot).
const MAX_SLEEP: Duration = Duration::from_secs(30);

/// Start the scheduler; it stops when `shutdown` turns true. It looks at
/// the catalog each round, so a reload that adds, changes or removes a
/// schedule takes effect within one round (at most [`MAX_SLEEP`]; a reload
/// wakes it at once).
pub fn spawn(
    engine: &Arc<Engine>,
    shutdown: watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    let engine = engine.clone();
    Some(tokio::spawn(async move { engine.schedule(shutdown).await }))
}

impl Engine {
    /// The schedule entries of the current catalog: `(recipe, schedule,
    /// last slot handled)`, keeping the cursors already in `entries`.
    fn schedule_entries(
        &self,
        entries: &[(String, Schedule, i64)],
    ) -> Vec<(String, Schedule, i64)> {
        let start = self.now_ms();
        let mut out = Vec::new();
        for r in &self.catalog().recipes {
            let Some(t) = &r.schedule else { continue };
            if let Some((_, _, cursor)) = entries.iter().find(|(n, s, _)| {
                *n == r.name
                    && s.pattern == t.schedule.pattern
                    && s.zone_name == t.schedule.zone_name
            }) {
                out.push((r.name.clone(), t.schedule.clone(), *cursor));
                continue;
            }
            let stored = match self.store.schedule_cursor(&r.name) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(recipe = %r.name, error = %e, "cannot read the schedule cursor; the recipe's schedule is off");
                    continue;
                }
            };
            let cursor = match (stored, t.missed) {
                // First start: slots before it were never due.
                (None, _) => start,
                (Some(c), Missed::Skip) => c.max(start),
                (Some(c), Missed::Latest) => c,
            };
            if stored != Some(cursor) {
                if let Err(e) = self.store.set_schedule_cursor(&r.name, cursor) {
                    tracing::warn!(recipe = %r.name, error = %e, "cannot write the schedule cursor");
                }
            }
            out.push((r.name.clone(), t.schedule.clone(), cursor));
        }
        out
    }

    async fn schedule(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut entries = self.schedule_entries(&[]);
        let mut version = self.catalog().version.clone();
        while !*shutdown.borrow() {
            let loaded = self.catalog().version.clone();
            if loaded != version {
                entries = self.schedule_entries(&entries);
                version = loaded;
            }
            let now = self.now_ms();
            for (name, schedule, cursor) in &mut entries {
                let Some(slot) = schedule.latest_at_or_before(now) else {
                    continue;
                };
                if slot <= *cursor {
                    continue;
                }
                match self.fire(name, schedule, slot).await {
                    Ok(()) => {
                        *cursor = slot;
                        if let Err(e) = self.store.set_schedule_cursor(name, slot) {
                            tracing::warn!(recipe = %name, error = %e, "cannot write the schedule cursor");
                        }
                    }
                    // Not moved on: the next round tries the slot again (dedupe keeps it once).
                    Err(e) => {
                        tracing::error!(recipe = %name, slot, error = %e, "schedule slot not stored")
                    }
                }
            }
            let now = self.now_ms();
            let next = entries
                .iter()
                .filter_map(|(_, s, _)| s.next_after(now))
                .min()
                .unwrap_or(now + MAX_SLEEP.as_millis() as i64);
            // By the engine's clock, so a virtual clock moves schedules too.
            let until = next.clamp(now + 1, now + MAX_SLEEP.as_millis() as i64);
            tokio::select! {
                _ = self.sleep_until(until) => {}
                _ = self.reloaded.notified() => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Accept slot `slot` of recipe `name` as an event.
    async fn fire(&self, name: &str, schedule: &Schedule, slot: i64) -> Result<(), String> {
        let at = jiff::Timestamp::from_millisecond(slot).map_err(|e| e.to_string())?;
        let local = time::zone(&schedule.zone_name)
            .map(|z| time::rfc3339(&at.to_zoned(z)))
            .map_err(|e| e.0)?;
        let body = json!({
            "schedule": schedule.pattern,
            "timezone": schedule.zone_name,
            "slot": time::rfc3339(&at.to_zoned(jiff::tz::TimeZone::UTC)),
            "slot_ms": slot,
            "local": local,
        });
        let accepted = self
            .accept(Incoming {
                connector: SCHEDULE_CONNECTOR.to_string(),
                event_type: Some(name.to_string()),
                delivery_id: Some(format!("{name}@{slot}")),
                body,
                origin: crate::store::Origin::Schedule,
                replay: None,
            })
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(recipe = %name, slot, event = %accepted.event_id, duplicate = accepted.duplicate, runs = accepted.runs.len(), "schedule slot");
        Ok(())
    }
}
