//! Flow steps through the binary: `set`, `switch`, `for_each` and `stop` in
//! one run; a kill -9 in the middle of a `for_each` resumes by replaying the
//! recorded items (none is called again).

use crate::utils::*;
use axum::http::Method;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const FANOUT: &str = r#"
name: fanout
on: { connector: zendesk, event: ticket.created }
steps:
  - id: prep
    set:
      count: "{{ event.ticket.related | length }}"
  - id: route
    switch:
      - when: [ { "$.event.ticket.subject": { matches: "(?i)spam" } } ]
        steps:
          - stop: { reason: "spam from {{ event.ticket.requester.email }}", status: skipped }
      - else:
          - id: tag
            call: zendesk.add_tags
            with: { ticket_id: "{{ event.ticket.id }}", tags: ["related-{{ steps.prep.count }}"] }
  - id: each
    for_each: "{{ event.ticket.related }}"
    as: other
    steps:
      - id: note
        call: zendesk.add_internal_note
        with: { ticket_id: "{{ other }}", body: "{{ other_index + 1 }} of {{ steps.prep.count }}: see {{ event.ticket.id }}" }
  - id: done
    stop: { reason: "noted {{ steps.each | length }} related tickets" }
  - id: never
    call: zendesk.add_tags
    with: { ticket_id: "{{ event.ticket.id }}", tags: [never] }
"#;

fn ticket(subject: &str, related: &[u64]) -> Value {
    json!({
        "type": "ticket.created",
        "ticket": {"id": 7, "subject": subject, "related": related,
                   "requester": {"email": "bob@example.com"}}
    })
}

fn config() -> Config {
    let cfg = Config::connectors_only();
    cfg.recipe("fanout", FANOUT);
    cfg
}

/// Poll a run until its status is one of `done`.
async fn wait_status(hub: &Hub, id: &str, done: &[&str]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, run) = hub.api(&format!("/api/runs/{id}")).await;
        if run["status"].as_str().is_some_and(|s| done.contains(&s)) {
            return run;
        }
        assert!(Instant::now() < deadline, "run {id}: {run}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn step_ids(run: &Value) -> Vec<(String, String)> {
    run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_string(),
                s["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn set_switch_for_each_and_stop_in_one_run() {
    let mock = MockApi::start(vec![route(Method::PUT, "/api/v2/tickets/", 200, json!({}))]).await;
    let hub = Hub::start(config().options().base_url("zendesk", &mock.url)).await;

    let (status, accepted) = hub
        .post_zendesk(&ticket("Printer on fire", &[101, 102, 103]))
        .await;
    assert_eq!(status, 202, "{accepted}");
    let run_id = accepted["runs"][0].as_str().unwrap().to_string();
    let run = wait_status(&hub, &run_id, &["succeeded", "failed", "dead"]).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["reason"], "noted 3 related tickets");
    assert_eq!(
        step_ids(&run),
        [
            ("prep", "succeeded"),
            ("route", "succeeded"),
            ("route.else.tag", "succeeded"),
            ("each", "succeeded"),
            ("each[0].note", "succeeded"),
            ("each[1].note", "succeeded"),
            ("each[2].note", "succeeded"),
            ("done", "succeeded"),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    assert_eq!(run["steps"][0]["output"], json!({"count": 3}));
    assert_eq!(run["steps"][3]["input"], json!([101, 102, 103]));

    // The calls, each with the Idempotency-Key of its path (the loop index in it).
    let calls: Vec<(String, Option<String>, Value)> = mock
        .received()
        .iter()
        .map(|r| {
            (
                r.path.clone(),
                r.header("Idempotency-Key").map(str::to_string),
                r.json(),
            )
        })
        .collect();
    assert_eq!(calls.len(), 4, "{calls:?}");
    assert_eq!(calls[0].0, "/api/v2/tickets/7/tags");
    assert_eq!(calls[0].2, json!({"tags": ["related-3"]}));
    for (i, other) in [101, 102, 103].iter().enumerate() {
        let (path, key, body) = &calls[i + 1];
        assert_eq!(path, &format!("/api/v2/tickets/{other}"));
        assert_eq!(
            key.as_deref(),
            Some(format!("{run_id}:each[{i}].note").as_str())
        );
        assert_eq!(
            body["ticket"]["comment"]["body"],
            format!("{} of 3: see 7", i + 1)
        );
    }

    // The other branch: a stop that skips the run, with its reason; nothing called.
    let (_, accepted) = hub.post_zendesk(&ticket("SPAM: cheap pills", &[1])).await;
    let run = wait_status(
        &hub,
        accepted["runs"][0].as_str().unwrap(),
        &["skipped", "succeeded", "failed"],
    )
    .await;
    assert_eq!(run["status"], "skipped", "{run}");
    assert_eq!(run["reason"], "spam from bob@example.com");
    assert_eq!(mock.received().len(), 4, "the skipped run called nothing");
    let (_, listed) = hub.api("/api/runs?status=skipped").await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1, "{listed}");

    // A list that is not one fails the run at the loop, naming what it got.
    let mut bad = ticket("Printer", &[]);
    bad["ticket"]["related"] = json!("101,102");
    let (_, accepted) = hub.post_zendesk(&bad).await;
    let run = hub.wait_run(accepted["runs"][0].as_str().unwrap()).await;
    assert_eq!(run["status"], "failed");
    assert_eq!(
        run["error"],
        "step `each` (for_each) failed: `for_each` needs a list, got a string"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_a_for_each_resumes_without_repeating_recorded_items() {
    // The first hub's far end hangs on the third item: the hub is killed
    // while that call is in flight.
    let mut hang = route(Method::PUT, "/api/v2/tickets/103", 200, json!({}));
    hang.delay = Duration::from_secs(60);
    let first = MockApi::start(vec![
        hang,
        route(Method::PUT, "/api/v2/tickets/", 200, json!({})),
    ])
    .await;
    let cfg = config();
    let data = cfg.dir.path().join("data");
    let opts = HubOptions {
        data: Some(data),
        ..cfg.options()
    };
    let mut hub = Hub::start(opts.clone().base_url("zendesk", &first.url)).await;
    let (status, accepted) = hub
        .post_zendesk(&ticket("Printer", &[101, 102, 103, 104]))
        .await;
    assert_eq!(status, 202);
    let run_id = accepted["runs"][0].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while first.calls("/api/v2/tickets/103").is_empty() {
        assert!(Instant::now() < deadline, "the third item was never called");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    hub.kill(); // SIGKILL, the third item's call in flight

    let second = MockApi::start(vec![route(Method::PUT, "/api/v2/tickets/", 200, json!({}))]).await;
    let hub = Hub::start(opts.base_url("zendesk", &second.url)).await;
    let run = hub.wait_run(&run_id).await;
    assert_eq!(run["status"], "succeeded", "{run}");

    let paths =
        |m: &MockApi| -> Vec<String> { m.received().iter().map(|r| r.path.clone()).collect() };
    assert_eq!(
        paths(&first),
        [
            "/api/v2/tickets/7/tags",
            "/api/v2/tickets/101",
            "/api/v2/tickets/102",
            "/api/v2/tickets/103"
        ]
    );
    // Only the call in flight at the kill is made again (same key), then the rest.
    assert_eq!(
        paths(&second),
        ["/api/v2/tickets/103", "/api/v2/tickets/104"]
    );
    let key = |m: &MockApi, p: &str| m.calls(p)[0].header("Idempotency-Key").map(str::to_string);
    assert_eq!(
        key(&first, "/api/v2/tickets/103"),
        key(&second, "/api/v2/tickets/103")
    );
    assert_eq!(
        key(&second, "/api/v2/tickets/103").as_deref(),
        Some(format!("{run_id}:each[2].note").as_str())
    );
    let ids: Vec<String> = step_ids(&run).into_iter().map(|(id, _)| id).collect();
    assert_eq!(
        ids,
        [
            "prep",
            "route",
            "route.else.tag",
            "each",
            "each[0].note",
            "each[1].note",
            "each[2].note",
            "each[3].note",
            "done"
        ]
    );
}
