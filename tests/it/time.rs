//! Time in recipes: business-hours calendars from `recipes/_shared.yaml`,
//! time functions in templates, and their bad input as `check` errors.
//! Recipe tests pin the clock with `now:`, so nothing here depends on when
//! it runs.

use crate::utils::*;

const SHARED: &str = r#"calendars:
  support-eu:
    timezone: Europe/Berlin
    hours:
      mon-fri: "09:00-17:00"
    holidays: ["2025-12-25"]
"#;

/// Leave a note saying when the team answers, only outside business hours.
const AFTER_HOURS: &str = r#"name: after-hours
on: { connector: zendesk, event: ticket.created }
if:
  - not: { within_business_hours: support-eu }
steps:
  - id: note
    call: zendesk.add_internal_note
    with:
      ticket_id: "{{ event.ticket.id }}"
      body: "Opened {{ event.ticket.created_at | in_tz('Europe/Berlin') | weekday }}; we answer by {{ next_business_open('support-eu') | format_date('%A %H:%M') }}"
tests:
  - name: friday evening
    now: "2025-12-05T19:00:00+01:00"
    event: { type: ticket.created, ticket: { id: 3, created_at: "2025-12-05T18:59:00Z" } }
    mock: { zendesk.add_internal_note: { id: 3 } }
    expect_calls: [zendesk.add_internal_note]
    expect_inputs:
      note: { body: "Opened Friday; we answer by Monday 09:00" }
  - name: christmas eve
    now: "2025-12-24T18:00:00+01:00"
    event: { type: ticket.created, ticket: { id: 4, created_at: "2025-12-24T17:00:00Z" } }
    mock: { zendesk.add_internal_note: { id: 4 } }
    expect_calls: [zendesk.add_internal_note]
    expect_inputs:
      note: { body: "Opened Wednesday; we answer by Friday 09:00" }
  - name: during business hours nothing happens
    now: "2025-12-01T10:00:00+01:00"
    event: { type: ticket.created, ticket: { id: 5, created_at: "2025-12-01T09:00:00Z" } }
    expect_calls: []
    expect_status: skipped
"#;

#[test]
fn business_hours_and_time_functions_in_recipe_tests() {
    let cfg = Config::connectors_only();
    write(&cfg.recipes.join("_shared.yaml"), SHARED);
    cfg.recipe("after-hours", AFTER_HOURS);
    let out = cfg.command("test").output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("3 passed, 0 failed"),
        "{}",
        stdout(&out)
    );
}

/// `check` over the files; asserts exit 1 and returns stderr.
fn check_fails(cfg: &Config) -> String {
    let out = cfg.check();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    stderr(&out)
}

#[test]
fn unknown_calendars_are_check_errors_with_positions() {
    let cfg = Config::connectors_only();
    write(&cfg.recipes.join("_shared.yaml"), SHARED);
    let file = cfg.recipe(
        "bad",
        r#"name: bad
on: { connector: zendesk, event: ticket.created }
if:
  - within_business_hours: support-us
steps:
  - call: zendesk.add_internal_note
    with:
      ticket_id: "{{ event.ticket.id }}"
      body: "by {{ next_business_open('support-apac') }}"
"#,
    );
    let err = check_fails(&cfg);
    let f = file.display();
    assert!(
        err.contains(&format!(
            "{f}:4:28: unknown calendar `support-us`, expected one of the `calendars:` in recipes/_shared.yaml (`support-eu`)"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("{f}:9:13: unknown calendar `support-apac`")),
        "{err}"
    );
}

#[test]
fn bad_calendars_are_check_errors_with_positions() {
    let cfg = Config::connectors_only();
    let shared = cfg.recipes.join("_shared.yaml");
    write(
        &shared,
        r#"calendars:
  support-eu:
    timezone: Europe/Berln
    hours: { mon-fri: "09:00-17:00" }
  support-us:
    timezone: America/New_York
    hours: { mon-fri: "9 to 5" }
"#,
    );
    let err = check_fails(&cfg);
    let f = shared.display();
    assert!(
        err.contains(&format!(
            "{f}:3:15: calendar `support-eu`: unknown time zone `Europe/Berln`"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{f}:7:23: calendar `support-us`: invalid hours `9 to 5`"
        )),
        "{err}"
    );
}

#[test]
fn a_bad_test_clock_is_a_check_error() {
    let cfg = Config::connectors_only();
    let file = cfg.recipe(
        "r",
        r#"name: r
on: { connector: zendesk, event: ticket.created }
steps:
  - call: zendesk.add_internal_note
    with: { ticket_id: 1, body: "at {{ now() }}" }
tests:
  - name: t
    now: "next tuesday"
    event: { type: ticket.created }
    expect_calls: [zendesk.add_internal_note]
"#,
    );
    let err = check_fails(&cfg);
    assert!(
        err.contains(&format!(
            "{}:8:10: cannot read `next tuesday` as a date-time",
            file.display()
        )),
        "{err}"
    );
}
