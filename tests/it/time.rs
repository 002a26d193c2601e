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
    tests_pass(&cfg, 3);
}

/// `switchboard test` exits 0 with `n` passed tests.
fn tests_pass(cfg: &Config, n: usize) {
    let out = cfg.command("test").output().unwrap();
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        stdout(&out).contains(&format!("{n} passed, 0 failed")),
        "{text}"
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

/// Poll `f` every 50 ms until it gives `Some`, or fail after `secs`.
async fn poll<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(t) = f().await {
            return t;
        }
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The `text` of every form-encoded `chat.postMessage` the mock received.
fn slack_texts(api: &MockApi) -> Vec<String> {
    api.calls("/chat.postMessage")
        .iter()
        .map(|r| {
            let form: std::collections::HashMap<String, String> =
                serde_urlencoded::from_bytes(&r.body).unwrap();
            form["text"].clone()
        })
        .collect()
}

fn slack_ok() -> Vec<Route> {
    vec![route(
        axum::http::Method::POST,
        "/chat.postMessage",
        200,
        serde_json::json!({"ok": true, "channel": "C1", "ts": "1.0"}),
    )]
}

#[tokio::test]
async fn a_schedule_slot_fires_once_across_a_kill_and_restart() {
    let api = MockApi::start(slack_ok()).await;
    let cfg = Config::connectors_only();
    cfg.recipe(
        "tick",
        r#"name: tick
on: { schedule: "*/2 * * * * *", timezone: Europe/Berlin }
steps:
  - call: slack.post_message
    with: { channel: C1, text: "{{ event.slot_ms }}" }
"#,
    );
    let data = cfg.dir.path().join("data");
    let opts = HubOptions {
        data: Some(data.clone()),
        ..cfg.options().base_url("slack", &api.url)
    };
    let mut hub = Hub::start(opts.clone()).await;
    let first = poll(15, "a first slot", || async {
        hub.items("/api/events").await.into_iter().next()
    })
    .await;
    // Reads see a write before its group is flushed (ARCHITECTURE.md, "Write
    // path"); a run only starts after its event is durable, so a started run
    // is what says the slot was stored.
    let first_run = first["runs"][0].as_str().unwrap().to_string();
    poll(15, "the first slot's run started", || async {
        let (_, run) = hub.api(&format!("/api/runs/{first_run}")).await;
        (run["status"] != "queued").then_some(())
    })
    .await;
    hub.kill(); // SIGKILL, right after the slot was stored
    assert_eq!(first["connector"], "schedule");
    let first_slot = first["body"]["slot_ms"].as_i64().unwrap();
    assert_eq!(
        first["delivery_id"],
        format!("tick@{first_slot}"),
        "{first}"
    );

    let hub = Hub::start(opts).await;
    // A later slot fires after the restart; every stored slot's run finishes.
    let events = poll(15, "a slot after the restart", || async {
        let events = hub.items("/api/events").await;
        events
            .iter()
            .any(|e| e["body"]["slot_ms"].as_i64() > Some(first_slot))
            .then_some(events)
    })
    .await;
    for e in &events {
        for r in e["runs"].as_array().unwrap() {
            let run = hub.wait_run(r.as_str().unwrap()).await;
            assert_eq!(run["status"], "succeeded", "{run}");
        }
    }
    // Each slot is one event with one run and one effect: nothing fired twice.
    // Slots stored since the first listing are waited for too.
    let events = hub.items("/api/events").await;
    for e in &events {
        for r in e["runs"].as_array().unwrap() {
            hub.wait_run(r.as_str().unwrap()).await;
        }
    }
    let mut slots: Vec<i64> = events
        .iter()
        .map(|e| e["body"]["slot_ms"].as_i64().unwrap())
        .collect();
    slots.sort();
    let n = slots.len();
    slots.dedup();
    assert_eq!(slots.len(), n, "a slot stored twice: {events:?}");
    assert!(slots.contains(&first_slot));
    assert!(slots.iter().all(|s| s % 2000 == 0), "{slots:?}");
    for e in &events {
        assert_eq!(e["runs"].as_array().unwrap().len(), 1, "{e}");
    }
    // The kill may land while a slot's call is in flight: that call is made
    // again after the restart (at-least-once calls), with the same
    // Idempotency-Key. A second *effect* would be a second key for one slot.
    let mut effects: Vec<(String, String)> = api
        .calls("/chat.postMessage")
        .iter()
        .map(|r| {
            let form: std::collections::HashMap<String, String> =
                serde_urlencoded::from_bytes(&r.body).unwrap();
            let key = r.header("idempotency-key").unwrap_or_default().to_string();
            (form["text"].clone(), key)
        })
        .collect();
    effects.sort();
    effects.dedup();
    let mut texts: Vec<String> = effects.iter().map(|(t, _)| t.clone()).collect();
    let calls = texts.len();
    texts.dedup();
    assert_eq!(texts.len(), calls, "a slot with two effects: {effects:?}");
    let mut want: Vec<String> = slots.iter().map(|s| s.to_string()).collect();
    want.sort();
    // Calls of slots stored after we listed them may follow; those listed all called.
    assert!(
        want.iter().all(|w| texts.contains(w)),
        "{want:?} vs {texts:?}"
    );
}

#[tokio::test]
async fn a_burst_of_ten_events_for_one_key_makes_one_run_with_the_last_event() {
    let api = MockApi::start(slack_ok()).await;
    let cfg = Config::connectors_only();
    cfg.recipe(
        "sync",
        r#"name: sync
on: { connector: zendesk, event: ticket.updated }
debounce: { key: "{{ event.ticket.id }}", quiet: 1500ms, max: 1m }
steps:
  - call: slack.post_message
    with: { channel: C1, text: "{{ event.ticket.id }} {{ event.ticket.subject }}" }
"#,
    );
    let hub = Hub::start(cfg.options().base_url("slack", &api.url)).await;
    let update = |id: u64, subject: &str| serde_json::json!({"type": "ticket.updated", "ticket": {"id": id, "subject": subject}});
    let mut run_ids = Vec::new();
    for i in 1..=10 {
        let (status, body) = hub.post_zendesk(&update(7, &format!("edit {i}"))).await;
        assert_eq!(status, 202, "{body}");
        run_ids.push(body["runs"][0].as_str().unwrap().to_string());
    }
    // Another key in the same burst has its own run.
    let (_, other) = hub.post_zendesk(&update(8, "other")).await;
    run_ids.dedup();
    assert_eq!(run_ids.len(), 1, "every event of the burst names one run");
    let run = hub.wait_run(&run_ids[0]).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    hub.wait_run(other["runs"][0].as_str().unwrap()).await;
    let mut texts = slack_texts(&api);
    texts.sort();
    assert_eq!(texts, vec!["7 edit 10".to_string(), "8 other".to_string()]);

    // After the run started, a new event of the key makes a new run.
    let (_, later) = hub.post_zendesk(&update(7, "later")).await;
    let later_id = later["runs"][0].as_str().unwrap();
    assert_ne!(later_id, run_ids[0]);
    let run = hub.wait_run(later_id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(slack_texts(&api).len(), 3);

    // Events whose key does not render are not folded into one run.
    let keyless = |s: &str| serde_json::json!({"type": "ticket.updated", "ticket": {"subject": s}});
    let (_, a) = hub.post_zendesk(&keyless("no id 1")).await;
    let (_, b) = hub.post_zendesk(&keyless("no id 2")).await;
    assert_ne!(a["runs"][0], b["runs"][0], "{a} {b}");
}

#[test]
fn bad_schedules_and_debounce_durations_are_check_errors_with_positions() {
    let cfg = Config::connectors_only();
    let f1 = cfg.recipe(
        "a",
        r#"name: a
on:
  schedule: "0 25 * * MON-FRI"
steps:
  - call: slack.post_message
    with: { channel: C1, text: hi }
"#,
    );
    let f2 = cfg.recipe(
        "b",
        r#"name: b
on: { schedule: "0 9 * * *", timezone: Europe/Berln }
steps:
  - call: slack.post_message
    with: { channel: C1, text: hi }
"#,
    );
    let f3 = cfg.recipe(
        "c",
        r#"name: c
on: { connector: zendesk, event: ticket.updated }
debounce:
  key: "{{ event.ticket.id }}"
  quiet: 30 parsecs
  max: 400d
steps:
  - call: slack.post_message
    with: { channel: C1, text: hi }
"#,
    );
    let err = check_fails(&cfg);
    for want in [
        format!(
            "{}:3:13: invalid cron expression `0 25 * * MON-FRI`",
            f1.display()
        ),
        format!("{}:2:40: unknown time zone `Europe/Berln`", f2.display()),
        format!("{}:5:10: invalid duration `30 parsecs`", f3.display()),
        format!(
            "{}:6:8: duration `400d` is longer than the maximum of 366d",
            f3.display()
        ),
    ] {
        assert!(err.contains(&want), "missing {want:?} in\n{err}");
    }
}

#[tokio::test]
async fn a_durable_wait_survives_kill_9_and_fires_once_after_restart() {
    let api = MockApi::start(slack_ok()).await;
    let cfg = Config::connectors_only();
    cfg.recipe(
        "follow-up",
        r#"name: follow-up
on: { connector: zendesk, event: ticket.created }
steps:
  - id: pause
    wait: 2s
  - call: slack.post_message
    with: { channel: C1, text: "follow up {{ event.ticket.id }} at {{ 'due' if steps.pause.woke_at >= steps.pause.until else 'early' }}" }
"#,
    );
    let data = cfg.dir.path().join("data");
    let opts = HubOptions {
        data: Some(data),
        ..cfg.options().base_url("slack", &api.url)
    };
    let mut hub = Hub::start(opts.clone()).await;
    let (status, body) = hub.post_zendesk(&ticket_event(11, "Hi", "a@b.c")).await;
    assert_eq!(status, 202, "{body}");
    let id = body["runs"][0].as_str().unwrap().to_string();
    let run = hub.wait_status(&id, "waiting").await;
    assert!(run["due_at"].as_i64().unwrap() > run["created_at"].as_i64().unwrap());
    assert_eq!(run["parked"]["step"], "pause", "{run}");
    // It is listed as waiting.
    let waiting = hub.items("/api/runs?status=waiting").await;
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    hub.kill(); // SIGKILL while it waits
    assert!(api.received().is_empty());

    let hub = Hub::start(opts).await;
    let run = hub.wait_run(&id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(slack_texts(&api), vec!["follow up 11 at due".to_string()]);
    let pause = &run["steps"][0];
    assert_eq!(pause["id"], "pause");
    assert!(pause["output"]["woke_at"].as_i64() >= pause["output"]["until"].as_i64());
}

const SLA: &str = r#"name: sla
on: { connector: zendesk, event: ticket.created }
steps:
  - id: reply
    wait_for:
      event: ticket.updated
      key: "{{ event.ticket.id }}"
      if:
        - "$.event.ticket.status": { equals: solved }
      timeout: 3s
  - call: slack.post_message
    with:
      channel: C1
      text: "{{ event.ticket.id }} timed_out={{ 'yes' if steps.reply.timed_out else 'no' }} by={{ steps.reply.event.ticket.subject if steps.reply.event else '-' }}"
"#;

#[tokio::test]
async fn wait_for_resumes_on_the_matching_event_and_times_out_otherwise() {
    let api = MockApi::start(slack_ok()).await;
    let cfg = Config::connectors_only();
    cfg.recipe("sla", SLA);
    let hub = Hub::start(cfg.options().base_url("slack", &api.url)).await;
    let created = |id: u64| serde_json::json!({"type": "ticket.created", "ticket": {"id": id}});
    let updated = |id: u64, status: &str, subject: &str| serde_json::json!({"type": "ticket.updated", "ticket": {"id": id, "status": status, "subject": subject}});
    let (_, a) = hub.post_zendesk(&created(1)).await;
    let (_, b) = hub.post_zendesk(&created(2)).await;
    let (a, b) = (
        a["runs"][0].as_str().unwrap(),
        b["runs"][0].as_str().unwrap(),
    );
    hub.wait_status(a, "waiting").await;
    hub.wait_status(b, "waiting").await;
    // Other ticket, and the right ticket failing the `if`: no wake.
    hub.post_zendesk(&updated(3, "solved", "other")).await;
    hub.post_zendesk(&updated(1, "open", "not yet")).await;
    hub.post_zendesk(&updated(1, "solved", "agent reply")).await;
    let run = hub.wait_run(a).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let out = &run["steps"][0]["output"];
    assert_eq!(out["timed_out"], false, "{run}");
    assert_eq!(out["event"]["ticket"]["subject"], "agent reply");
    let run = hub.wait_run(b).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["steps"][0]["output"]["timed_out"], true, "{run}");
    let mut texts = slack_texts(&api);
    texts.sort();
    assert_eq!(
        texts,
        vec![
            "1 timed_out=no by=agent reply".to_string(),
            "2 timed_out=yes by=-".to_string()
        ]
    );
}

#[tokio::test]
async fn cancel_on_cancels_only_the_runs_it_matches() {
    let api = MockApi::start(slack_ok()).await;
    let cfg = Config::connectors_only();
    cfg.recipe(
        "nudge",
        r#"name: nudge
on: { connector: zendesk, event: ticket.created }
cancel_on:
  - event: ticket.updated
    key: "{{ event.ticket.id }}"
    if:
      - "$.event.ticket.via": { equals: customer }
steps:
  - wait: 1h
  - call: slack.post_message
    with: { channel: C1, text: "nudge {{ event.ticket.id }}" }
"#,
    );
    let hub = Hub::start(cfg.options().base_url("slack", &api.url)).await;
    let created = |id: u64| serde_json::json!({"type": "ticket.created", "ticket": {"id": id}});
    let updated = |id: u64, via: &str| serde_json::json!({"type": "ticket.updated", "ticket": {"id": id, "via": via}});
    let (_, a) = hub.post_zendesk(&created(1)).await;
    let (_, b) = hub.post_zendesk(&created(2)).await;
    let (a, b) = (
        a["runs"][0].as_str().unwrap(),
        b["runs"][0].as_str().unwrap(),
    );
    hub.wait_status(a, "waiting").await;
    hub.wait_status(b, "waiting").await;
    hub.post_zendesk(&updated(1, "agent")).await; // the `if` does not hold
    let (_, cancel) = hub.post_zendesk(&updated(1, "customer")).await;
    let run = hub.wait_status(a, "cancelled").await;
    let reason = run["reason"].as_str().unwrap();
    assert!(
        reason.contains(cancel["event_id"].as_str().unwrap()),
        "{run}"
    );
    let (_, other) = hub.api(&format!("/api/runs/{b}")).await;
    assert_eq!(other["status"], "waiting", "{other}");
    assert!(api.received().is_empty());
}

#[test]
fn bad_waits_are_check_errors_with_positions() {
    let cfg = Config::connectors_only();
    let f = cfg.recipe(
        "w",
        r#"name: w
on: { connector: zendesk, event: ticket.created }
cancel_on:
  - { event: ticket.updated, connector: nowhere, key: "{{ event.ticket.id }}" }
steps:
  - wait: 3 fortnights
  - wait: 400d
  - wait_until: "next monday"
  - wait_for: { event: ticket.updated, key: "{{ event.ticket.id }}", timeout: 0s }
  - wait_for: { event: ticket.updated, key: "{{ event.ticket.id }}", match: "{{ steps.x }}", timeout: 1h }
"#,
    );
    let err = check_fails(&cfg);
    let f = f.display();
    for want in [
        format!("{f}:4:41: unknown connector `nowhere`"),
        format!("{f}:6:11: invalid duration `3 fortnights`"),
        format!("{f}:7:11: duration `400d` is longer than the maximum of 366d"),
        format!("{f}:8:17: cannot read `next monday` as a date-time"),
        format!("{f}:9:79: duration `0s` must be longer than zero"),
        format!("{f}:10:77: unknown step id `x`"),
    ] {
        assert!(err.contains(&want), "missing {want:?} in\n{err}");
    }
}

/// The SLA recipe with a story per test: virtual time, nothing waits.
const SLA_STORIES: &str = r#"name: sla
on: { connector: zendesk, event: ticket.created }
cancel_on:
  - event: ticket.updated
    key: "{{ event.ticket.id }}"
    if: [ { "$.event.ticket.status": { equals: deleted } } ]
steps:
  - id: reply
    wait_for:
      event: ticket.updated
      key: "{{ event.ticket.id }}"
      if: [ { "$.event.ticket.status": { equals: solved } } ]
      timeout: 12h
  - id: escalate
    if: [ { "$.steps.reply.timed_out": { equals: true } } ]
    call: slack.post_message
    with: { channel: C1, text: "{{ event.ticket.id }} has no reply since {{ steps.reply.until | default(now()) }}" }
tests:
  - name: a reply within 12 h means no escalation
    now: "2025-12-01T09:00:00Z"
    event: { type: ticket.created, ticket: { id: 5 } }
    then:
      - advance: 2h
      - event: { type: ticket.updated, ticket: { id: 6, status: solved } }
      - event: { type: ticket.updated, ticket: { id: 5, status: open } }
      - event: { type: ticket.updated, ticket: { id: 5, status: solved } }
    expect_calls: []
  - name: no reply in 12 h escalates
    now: "2025-12-01T09:00:00Z"
    event: { type: ticket.created, ticket: { id: 5 } }
    then:
      - advance: 11h
      - event: { type: ticket.updated, ticket: { id: 5, status: open } }
      - advance: 1h
    mock: { slack.post_message: { ok: true } }
    expect_calls: [slack.post_message]
    expect_inputs:
      escalate: { text: "5 has no reply since 2025-12-01T21:00:00Z" }
  - name: before the timeout it is still waiting
    now: "2025-12-01T09:00:00Z"
    event: { type: ticket.created, ticket: { id: 5 } }
    then: [ { advance: 11h } ]
    expect_calls: []
    expect_status: waiting
  - name: a deleted ticket cancels the wait
    event: { type: ticket.created, ticket: { id: 5 } }
    then:
      - event: { type: ticket.updated, ticket: { id: 5, status: deleted } }
      - advance: 1d
    expect_calls: []
    expect_status: cancelled
"#;

#[test]
fn recipe_tests_tell_a_story_on_virtual_time() {
    let cfg = Config::connectors_only();
    cfg.recipe("sla", SLA_STORIES);
    // 12 h of story on the test's virtual clock: nothing here waits.
    tests_pass(&cfg, 4);

    // A wrong expectation about the story fails.
    cfg.recipe(
        "sla",
        &SLA_STORIES.replace("then: [ { advance: 11h } ]", "then: [ { advance: 13h } ]"),
    );
    let out = cfg.command("test").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(
        text.contains("FAIL sla › before the timeout it is still waiting")
            && text.contains("calls: expected []"),
        "{text}"
    );
}

#[test]
fn a_bad_story_is_a_check_error() {
    let cfg = Config::connectors_only();
    let f = cfg.recipe(
        "s",
        r#"name: s
on: { connector: zendesk, event: ticket.created }
steps:
  - wait: 1h
tests:
  - name: t
    event: { type: ticket.created }
    then:
      - advance: soon
      - { advance: 1h, event: {} }
      - event: { type: x }
        connector: slack
    expect_calls: []
"#,
    );
    let err = check_fails(&cfg);
    let f = f.display();
    for want in [
        format!("{f}:9:18: invalid duration `soon`"),
        format!("{f}:10:9: a `then:` step is `{{ advance: 12h }}` or `{{ event: {{...}} }}`"),
        format!("{f}:12:20: connector `slack` does not exist or has no `webhook:` section"),
    ] {
        assert!(err.contains(&want), "missing {want:?} in\n{err}");
    }
}

/// The first YAML block of the README after `heading` that starts with `start`.
fn readme_block(heading: &str, start: &str) -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let from = readme.find(heading).unwrap_or_else(|| panic!("{heading}"));
    readme[from..]
        .split("```yaml\n")
        .skip(1)
        .map(|b| &b[..b.find("```").unwrap()])
        .find(|b| b.starts_with(start))
        .unwrap_or_else(|| panic!("no block `{start}` after {heading}"))
        .to_string()
}

#[test]
fn the_readme_time_examples_check_and_pass_their_tests() {
    let cfg = Config::connectors_only();
    let time = "### Time, dates and business hours";
    write(
        &cfg.recipes.join("_shared.yaml"),
        &readme_block(time, "calendars:"),
    );
    cfg.recipe("after-hours", &readme_block(time, "name: after-hours"));
    cfg.recipe(
        "digest",
        &readme_block("### Schedules", "name: morning-digest"),
    );
    let waiting = "### Waiting";
    let sla = readme_block(waiting, "name: first-reply-sla");
    let tests = readme_block(
        "## Testing recipes",
        "tests:\n  - name: a reply within 12 h",
    );
    cfg.recipe("sla", &format!("{sla}{tests}"));
    cfg.recipe(
        "follow-up",
        &readme_block(waiting, "name: follow-up-after-3-days"),
    );
    let out = cfg.check();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    tests_pass(&cfg, 4);
}

#[test]
fn a_computed_wait_beyond_the_maximum_fails_the_step() {
    let cfg = Config::connectors_only();
    cfg.recipe(
        "later",
        r#"name: later
on: { connector: zendesk, event: ticket.created }
steps:
  - id: until
    wait_until: "{{ event.ticket.due }}"
  - call: slack.post_message
    with: { channel: C1, text: "due" }
tests:
  - name: two years ahead is refused
    now: "2025-12-01T09:00:00Z"
    event: { type: ticket.created, ticket: { id: 1, due: "2027-12-01T09:00:00Z" } }
    expect_calls: []
    expect_status: failed
  - name: a past time does not wait
    now: "2025-12-01T09:00:00Z"
    event: { type: ticket.created, ticket: { id: 1, due: "2025-11-01T09:00:00Z" } }
    mock: { slack.post_message: { ok: true } }
    expect_calls: [slack.post_message]
  - name: a time that is not one fails
    event: { type: ticket.created, ticket: { id: 1, due: "soonish" } }
    expect_calls: []
    expect_status: failed
  - name: within the maximum it waits
    now: "2025-12-01T09:00:00Z"
    event: { type: ticket.created, ticket: { id: 1, due: "2026-06-01T09:00:00Z" } }
    then: [ { advance: 100d } ]
    expect_calls: []
    expect_status: waiting
"#,
    );
    tests_pass(&cfg, 4);
}

/// Waits until `event.until`, then records a value (no call: nothing to mock).
const WAIT_UNTIL: &str = r#"name: later
on: { connector: zendesk, event: ticket.created }
steps:
  - id: pause
    wait_until: "{{ event.until }}"
  - id: done
    set: { woke_at: "{{ steps.pause.woke_at }}" }
"#;

/// A parked run comes due at its time and a worker leases it then, by the
/// engine's clock: on a virtual clock no real time passes, so no poll can
/// fire it, only the worker's wake-up at the earliest due time. An earlier
/// time parked after a later one fires first.
#[tokio::test]
async fn a_parked_run_wakes_a_worker_at_its_due_time_on_virtual_time() {
    use std::sync::Arc;
    use switchboard::connector::SecretSource;
    use switchboard::engine::{worker, Catalog, Engine, EngineConfig, Incoming, LoadOptions};
    use switchboard::store::{sled::SledStore, RunStatus, Store};
    use switchboard::time::VirtualClock;

    let cfg = Config::connectors_only();
    cfg.recipe("later", WAIT_UNTIL);
    let catalog = Catalog::load(&LoadOptions {
        connectors_dir: cfg.connectors.clone(),
        recipes_dir: cfg.recipes.clone(),
        secrets: SecretSource::from_env(test_secrets()),
        allow_internal: vec![],
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
    // 2030-01-01T00:00:00Z, far from the OS clock, which nothing may read.
    let t0: i64 = 1_893_456_000_000;
    let clock = VirtualClock::at(t0);
    let engine = Engine::new(
        catalog,
        store.clone(),
        EngineConfig {
            workers: 2,
            clock: Arc::new(clock.clone()),
            ..EngineConfig::default()
        },
    )
    .unwrap();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let tasks = worker::spawn(&engine, shutdown);
    let park = |until: &str| {
        let engine = engine.clone();
        let body = serde_json::json!({"type": "ticket.created", "until": until});
        async move {
            let accepted = engine
                .accept(Incoming {
                    connector: "zendesk".into(),
                    event_type: Some("ticket.created".into()),
                    delivery_id: None,
                    body,
                    origin: Default::default(),
                    replay: None,
                })
                .await
                .unwrap();
            accepted.runs[0].clone()
        }
    };
    let status = |id: &str| store.run(id).unwrap().unwrap().status;
    let far = park("2030-01-01T02:00:00Z").await;
    poll(20, "the far run parks", || async {
        (status(&far) == RunStatus::Waiting).then_some(())
    })
    .await;
    let near = park("2030-01-01T01:00:00Z").await;
    poll(20, "the near run parks", || async {
        (status(&near) == RunStatus::Waiting).then_some(())
    })
    .await;

    // An hour ahead: an idle worker's safety net (60 s of the same clock)
    // does not reach it, and a sleep on the OS timer would not end within
    // the poll's deadline.
    clock.advance(3_600_000);
    poll(
        20,
        "the near run resumes when the clock reaches its time",
        || async { (status(&near) == RunStatus::Succeeded).then_some(()) },
    )
    .await;
    let run = store.run(&near).unwrap().unwrap();
    assert_eq!(run.steps[1].output["woke_at"], t0 + 3_600_000, "{run:?}");
    assert_eq!(status(&far), RunStatus::Waiting);

    clock.advance(3_600_000);
    poll(20, "the far run resumes at its time", || async {
        (status(&far) == RunStatus::Succeeded).then_some(())
    })
    .await;
    let run = store.run(&far).unwrap().unwrap();
    assert_eq!(run.steps[1].output["woke_at"], t0 + 7_200_000, "{run:?}");
    stop.send(true).unwrap();
    for t in tasks {
        t.await.unwrap();
    }
}

const RELAY: &str = r#"name: relay
on: { connector: zendesk, event: ticket.created }
cancel_on:
  - event: ticket.updated
    key: "{{ event.ticket.id }}"
steps:
  - id: first
    call: slack.post_message
    with: { channel: C1, text: "first {{ event.ticket.id }}" }
  - id: second
    call: slack.post_message
    with: { channel: C1, text: "second {{ event.ticket.id }}" }
"#;

/// `cancel_on` also ends a run that is not parked: a running run at its
/// next step boundary (the call in flight completes and is recorded, the
/// next step never starts).
#[tokio::test]
async fn cancel_on_ends_a_running_run_at_its_next_step_boundary() {
    let hold = std::sync::Arc::new(tokio::sync::Notify::new());
    let api = MockApi::start(vec![Route {
        hold: Some(hold.clone()),
        ..slack_ok().remove(0)
    }])
    .await;
    let cfg = Config::connectors_only();
    cfg.recipe("relay", RELAY);
    let hub = Hub::start(cfg.options().base_url("slack", &api.url)).await;
    let (_, a) = hub
        .post_zendesk(&serde_json::json!({"type": "ticket.created", "ticket": {"id": 1}}))
        .await;
    let a = a["runs"][0].as_str().unwrap().to_string();
    // The first call is in flight, held by the mock.
    poll(20, "the first call arrives", || async {
        (!api.received().is_empty()).then_some(())
    })
    .await;
    let (_, run) = hub.api(&format!("/api/runs/{a}")).await;
    assert_eq!(run["status"], "running", "{run}");
    let (_, cancel) = hub
        .post_zendesk(&serde_json::json!({"type": "ticket.updated", "ticket": {"id": 1}}))
        .await;
    hold.notify_one();
    let run = hub.wait_status(&a, "cancelled").await;
    let reason = run["reason"].as_str().unwrap();
    assert!(
        reason.contains(cancel["event_id"].as_str().unwrap()),
        "{run}"
    );
    // The step in flight is recorded; the next one never ran.
    let steps: Vec<_> = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].clone())
        .collect();
    assert_eq!(steps, vec![serde_json::json!("first")], "{run}");
    assert_eq!(slack_texts(&api), vec!["first 1".to_string()]);
}

/// A run between attempts (retrying) or not started (queued) is not
/// executing: a cancelling event ends it at once, its queue entry with it.
#[tokio::test]
async fn cancel_on_ends_a_retrying_run_at_once() {
    let api = MockApi::start(vec![route(
        axum::http::Method::POST,
        "/chat.postMessage",
        503,
        serde_json::json!({"ok": false}),
    )])
    .await;
    let cfg = Config::connectors_only();
    cfg.recipe("relay", RELAY);
    let hub = Hub::start(cfg.options().base_url("slack", &api.url)).await;
    let (_, a) = hub
        .post_zendesk(&serde_json::json!({"type": "ticket.created", "ticket": {"id": 2}}))
        .await;
    let a = a["runs"][0].as_str().unwrap().to_string();
    hub.wait_status(&a, "retrying").await;
    // Another ticket's update cancels nothing.
    hub.post_zendesk(&serde_json::json!({"type": "ticket.updated", "ticket": {"id": 3}}))
        .await;
    let (_, cancel) = hub
        .post_zendesk(&serde_json::json!({"type": "ticket.updated", "ticket": {"id": 2}}))
        .await;
    let run = hub.wait_status(&a, "cancelled").await;
    assert!(
        run["reason"]
            .as_str()
            .unwrap()
            .contains(cancel["event_id"].as_str().unwrap()),
        "{run}"
    );
    // Nothing of it is left in the queue.
    let (_, health) = hub.api("/api/runs?status=retrying").await;
    assert!(health["items"].as_array().unwrap().is_empty(), "{health}");
}

/// A story event acts only on the run under test: it wakes its `wait_for`
/// but starts no run of its own, although it matches this recipe's trigger
/// (else the test would see a third note, the new run's "seen").
const SEEN_TWICE: &str = r#"name: seen-twice
on: { connector: zendesk, event: ticket.updated }
steps:
  - id: seen
    call: zendesk.add_internal_note
    with: { ticket_id: "{{ event.ticket.id }}", body: "seen" }
  - id: again
    wait_for: { event: ticket.updated, key: "{{ event.ticket.id }}", timeout: 1h }
  - id: more
    call: zendesk.add_internal_note
    with: { ticket_id: "{{ event.ticket.id }}", body: "updated again" }
tests:
  - name: the story's event wakes this run and starts none
    event: { type: ticket.updated, ticket: { id: 5 } }
    then:
      - event: { type: ticket.updated, ticket: { id: 5 } }
    mock: { zendesk.add_internal_note: { id: 5 } }
    expect_calls: [zendesk.add_internal_note, zendesk.add_internal_note]
    expect_inputs:
      more: { body: "updated again" }
"#;

#[test]
fn story_events_act_only_on_the_run_under_test() {
    let cfg = Config::connectors_only();
    cfg.recipe("seen-twice", SEEN_TWICE);
    tests_pass(&cfg, 1);
    // Expecting the calls a second run would add fails.
    cfg.recipe(
        "seen-twice",
        &SEEN_TWICE.replace(
            "expect_calls: [zendesk.add_internal_note, zendesk.add_internal_note]",
            "expect_calls: [zendesk.add_internal_note, zendesk.add_internal_note, zendesk.add_internal_note]",
        ),
    );
    let out = cfg.command("test").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
}

/// Two recipes on one trigger that set the same field through an update
/// action: `check` warns at the later one (by name); different fields, an
/// adding action, or an update after a wait do not warn.
#[test]
fn check_warns_when_two_recipes_update_the_same_field_on_one_event() {
    let recipe = |name: &str, fields: &str, before: &str| {
        format!(
            r#"name: {name}
on: {{ connector: zendesk, event: ticket.created }}
steps:
{before}  - id: update
    call: zendesk.update_ticket
    with:
      ticket_id: "{{{{ event.ticket.id }}}}"
      fields: {fields}
  - id: note
    call: zendesk.add_internal_note
    with: {{ ticket_id: "{{{{ event.ticket.id }}}}", body: "{name}" }}
"#
        )
    };
    let cfg = Config::connectors_only();
    cfg.recipe(
        "assign",
        &recipe("assign", "{ group_id: 1, assignee_id: 2 }", ""),
    );
    let f = cfg.recipe(
        "escalate",
        &recipe("escalate", "{ group_id: 9, priority: urgent }", ""),
    );
    cfg.recipe(
        "prioritise",
        &recipe("prioritise", "{ priority: high }", "  - wait: 1h\n"),
    );
    cfg.recipe("tag", &recipe("tag", "{ type: incident }", ""));
    let out = cfg.check();
    assert!(out.status.success(), "{}", stderr(&out));
    let all = format!("{}{}", stdout(&out), stderr(&out));
    let want = format!(
        "{}:4:5: warning: recipes `assign` and `escalate` both set `fields.group_id` through `zendesk.update_ticket` on `zendesk` `ticket.created` events; runs of different recipes are not ordered, so the last call wins.",
        f.display()
    );
    assert!(all.contains(&want), "{want}\nin\n{all}");
    // One warning: `tag` sets other fields, `prioritise` updates after a
    // wait, and notes are added, not set.
    assert_eq!(all.matches("warning: recipes").count(), 1, "{all}");
}
