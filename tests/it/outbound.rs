//! Outbound calls: a failing, slow or unreachable far end fails its step,
//! not the hub; internal addresses are refused unless allowed.

use crate::utils::*;
use axum::http::Method;
use serde_json::{json, Value};
use std::time::Duration;

/// Files for a recipe calling the `echo` connector on every new ticket. One
/// attempt only: a retryable failure makes the run `dead` at once.
fn echo_config(timeout: &str) -> Config {
    let cfg = Config::connectors_only();
    cfg.connector(
        "echo",
        &format!(
            r#"name: echo
base_url: https://echo.example.com
timeout: {timeout}
retry: {{ attempts: 1 }}
actions:
  send:
    inputs:
      text: {{}}
    method: POST
    path: /send
    body:
      text: "{{{{ input.text }}}}"
    output:
      ok: "$.ok"
"#
        ),
    );
    cfg.recipe(
        "echo-ticket",
        r#"name: echo-ticket
on: { connector: zendesk, event: ticket.created }
steps:
  - id: send
    call: echo.send
    with:
      text: "ticket {{ event.ticket.id }}"
"#,
    );
    cfg
}

/// Post a ticket and return its one (finished) run's one step.
async fn echo_step(hub: &Hub, ticket: u64) -> (Value, Value) {
    let (status, accepted) = hub
        .post_zendesk(&ticket_event(ticket, "Hello", "bob@example.com"))
        .await;
    assert_eq!(status, 202, "{accepted}");
    let runs = hub
        .finished_runs(accepted["event_id"].as_str().unwrap())
        .await;
    assert_eq!(runs.len(), 1);
    let step = runs[0]["steps"][0].clone();
    assert_eq!(step["id"], "send", "{}", runs[0]);
    assert_eq!(step["input"], json!({"text": format!("ticket {ticket}")}));
    (runs[0].clone(), step)
}

/// The hub is still healthy and takes the next webhook.
async fn assert_still_serving(hub: &Hub) {
    let health = hub
        .http
        .get(format!("{}/healthz", hub.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let (status, body) = hub
        .post_zendesk(&json!({"type": "ticket.deleted", "ticket": {"id": 1}}))
        .await;
    assert_eq!(status, 202, "{body}");
}

#[tokio::test]
async fn a_500_answer_fails_the_step_with_its_excerpt() {
    let cfg = echo_config("5s");
    let echo = MockApi::start(vec![route(
        Method::POST,
        "/send",
        500,
        json!({"error": "database is down"}),
    )])
    .await;
    let hub = Hub::start(cfg.options().base_url("echo", &echo.url)).await;
    let (run, step) = echo_step(&hub, 11).await;
    assert_eq!(run["status"], "dead", "{run}");
    assert_eq!(step["status"], "failed");
    assert_eq!(step["http_status"], 500);
    assert_eq!(
        step["error"], r#"HTTP 500: {"error":"database is down"}"#,
        "{step}"
    );
    assert_eq!(
        run["error"],
        r#"step `send` (echo.send) failed after 1 attempts: HTTP 500: {"error":"database is down"}"#
    );
    assert_eq!(step["attempts"], 1);
    assert_eq!(echo.calls("/send").len(), 1);
    assert_still_serving(&hub).await;
}

#[tokio::test]
async fn a_call_slower_than_the_timeout_fails_as_timed_out() {
    let cfg = echo_config("1s");
    let mut slow = route(Method::POST, "/send", 200, json!({"ok": true}));
    slow.delay = Duration::from_secs(5);
    let echo = MockApi::start(vec![slow]).await;
    let hub = Hub::start(cfg.options().base_url("echo", &echo.url)).await;
    let (run, step) = echo_step(&hub, 12).await;
    assert_eq!(run["status"], "dead", "{run}");
    assert_eq!(step["status"], "failed");
    assert_eq!(step["error"], "timed out after 1s", "{step}");
    assert_eq!(step["http_status"], Value::Null);
    let took = step["duration_ms"].as_u64().unwrap();
    assert!((1000..4000).contains(&took), "{took} ms");
    assert_eq!(echo.calls("/send").len(), 1);
    assert_still_serving(&hub).await;
}

#[tokio::test]
async fn a_refused_connection_fails_the_step() {
    let cfg = echo_config("5s");
    // A port nobody listens on any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let hub = Hub::start(
        cfg.options()
            .base_url("echo", &format!("http://127.0.0.1:{port}")),
    )
    .await;
    let (run, step) = echo_step(&hub, 13).await;
    assert_eq!(run["status"], "dead", "{run}");
    assert_eq!(step["status"], "failed");
    let err = step["error"].as_str().unwrap();
    assert!(err.starts_with("connection failed: "), "{err}");
    assert!(err.to_lowercase().contains("refused"), "{err}");
    assert_still_serving(&hub).await;
}

#[tokio::test]
async fn internal_addresses_are_refused_unless_allowed() {
    let cfg = echo_config("5s");
    let echo = MockApi::start(vec![route(Method::POST, "/send", 200, json!({"ok": true}))]).await;
    let hub = Hub::start(HubOptions {
        allow_internal: false,
        ..cfg.options().base_url("echo", &echo.url)
    })
    .await;
    let (run, step) = echo_step(&hub, 14).await;
    // Not retryable: failed, not dead.
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(step["status"], "failed");
    assert_eq!(
        step["error"],
        "refused: 127.0.0.1 is an internal address; allow it with --allow-internal echo",
        "{step}"
    );
    assert!(echo.received().is_empty(), "{:?}", echo.received());
    assert_still_serving(&hub).await;
}

/// Slack answers HTTP 200 `{"ok": false}` when it refuses a message: the
/// shipped `slack.post_message` declares `fail_when`, so the step fails
/// with Slack's reason and is not retried (it is no outage).
#[tokio::test]
async fn a_200_answer_that_says_ok_false_fails_the_step() {
    let cfg = Config::connectors_only();
    cfg.recipe(
        "notify",
        r##"name: notify
on: { connector: zendesk, event: ticket.created }
steps:
  - id: post
    call: slack.post_message
    with: { channel: "#nowhere", text: "ticket {{ event.ticket.id }}" }
"##,
    );
    let slack = MockApi::start(vec![route(
        Method::POST,
        "/chat.postMessage",
        200,
        json!({"ok": false, "error": "channel_not_found"}),
    )])
    .await;
    let hub = Hub::start(cfg.options().base_url("slack", &slack.url)).await;
    let (status, accepted) = hub
        .post_zendesk(&ticket_event(13, "Hello", "bob@example.com"))
        .await;
    assert_eq!(status, 202, "{accepted}");
    let runs = hub
        .finished_runs(accepted["event_id"].as_str().unwrap())
        .await;
    let run = &runs[0];
    assert_eq!(run["status"], "failed", "{run}");
    let step = &run["steps"][0];
    assert_eq!(step["status"], "failed");
    assert_eq!(step["http_status"], 200);
    assert_eq!(step["attempts"], 1, "not retried: {step}");
    let error = step["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with(
            "a success status, but the answer says the call failed: `$.ok` is false, not true: channel_not_found"
        ),
        "{error}"
    );
    assert_eq!(slack.calls("/chat.postMessage").len(), 1);
}
