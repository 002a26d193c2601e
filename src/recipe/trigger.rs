//! A recipe's trigger (`on:`): a connector's event (pushed to its webhook,
//! or found by one of its `polls:`), or a cron schedule.
//!
//! A schedule is matched like any event: each slot becomes an event of the
//! pseudo-connector [`SCHEDULE_CONNECTOR`] whose event type is the recipe's
//! name, so the index, the recipe's `if`, debounce and the rest apply
//! unchanged, and the slot's delivery id `<recipe>@<slot ms>` makes the
//! store's dedupe fire it once (`engine::scheduler`).

use super::config::{Missed, Trigger};
use crate::connector::Connectors;
use crate::time::Schedule;
use crate::yaml::{LoadError, SourceMap};

/// The connector name schedule events are stored under; no connector may use it.
pub const SCHEDULE_CONNECTOR: &str = "schedule";

/// A compiled schedule trigger.
#[derive(Debug, Clone)]
pub struct ScheduleTrigger {
    pub schedule: Schedule,
    pub missed: Missed,
}

/// The compiled trigger: what the index matches (`connector`, `event`), and
/// the schedule when it is one.
pub struct Compiled {
    pub connector: String,
    pub event: String,
    pub schedule: Option<ScheduleTrigger>,
}

/// Check and compile `on:` of recipe `name`.
pub fn compile(
    name: &str,
    on: &Trigger,
    map: &SourceMap,
    connectors: &Connectors,
    errors: &mut Vec<LoadError>,
) -> Option<Compiled> {
    if let Some(pattern) = &on.schedule {
        for (field, set) in [
            ("connector", on.connector.is_some()),
            ("event", on.event.is_some()),
        ] {
            if set {
                errors.push(map.error_at_key(
                    &format!("/on/{field}"),
                    format!("`on:` has a `schedule`, so it takes no `{field}` (a recipe has one trigger)"),
                ));
            }
        }
        if connectors.get(SCHEDULE_CONNECTOR).is_some() {
            errors.push(map.error(
                "/on/schedule",
                format!("a connector is named `{SCHEDULE_CONNECTOR}`, the name schedule events use: rename that connector"),
            ));
        }
        let zone_ptr = "/on/timezone";
        return match Schedule::parse(pattern, on.timezone.as_deref()) {
            Ok(schedule) => Some(Compiled {
                connector: SCHEDULE_CONNECTOR.to_string(),
                event: name.to_string(),
                schedule: Some(ScheduleTrigger {
                    schedule,
                    missed: on.missed.unwrap_or_default(),
                }),
            }),
            Err(e) => {
                let ptr = if e.0.starts_with("unknown time zone") {
                    zone_ptr
                } else {
                    "/on/schedule"
                };
                errors.push(map.error(ptr, e.0));
                None
            }
        };
    }
    for (field, set) in [
        ("timezone", on.timezone.is_some()),
        ("missed", on.missed.is_some()),
    ] {
        if set {
            errors.push(map.error_at_key(
                &format!("/on/{field}"),
                format!("`{field}` belongs to a `schedule:` trigger"),
            ));
        }
    }
    let (Some(connector), Some(event)) = (&on.connector, &on.event) else {
        errors.push(map.error(
            "/on",
            "`on:` needs `connector` and `event` (a webhook event) or `schedule` (a cron expression)",
        ));
        return None;
    };
    match connectors.get(connector) {
        None => {
            let mut names: Vec<&String> = connectors.by_name.keys().collect();
            names.sort();
            let names: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
            errors.push(map.error(
                "/on/connector",
                format!(
                    "unknown connector `{connector}`, expected one of {}",
                    if names.is_empty() {
                        "(none are defined)".to_string()
                    } else {
                        names.join(", ")
                    }
                ),
            ));
        }
        // A connector without a webhook makes only its polls' events.
        Some(c) if c.webhook.is_none() && c.poll_for(event).is_none() => {
            if c.polls.is_empty() {
                errors.push(map.error(
                    "/on/connector",
                    format!(
                        "connector `{}` has no `webhook:` section and no `polls:`, so it sends no events",
                        c.name
                    ),
                ))
            } else {
                let types: Vec<&str> = c.polls.values().map(|p| p.event_type.as_str()).collect();
                let hint = crate::yaml::did_you_mean(event, types.iter().copied())
                    .map(|t| format!("; did you mean `{t}`?"))
                    .unwrap_or_default();
                errors.push(map.error(
                    "/on/event",
                    format!(
                        "connector `{}` has no `webhook:` section; its polls make {} events{hint}",
                        c.name,
                        types
                            .iter()
                            .map(|t| format!("`{t}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ))
            }
        }
        Some(_) => {}
    }
    Some(Compiled {
        connector: connector.clone(),
        event: event.clone(),
        schedule: None,
    })
}
