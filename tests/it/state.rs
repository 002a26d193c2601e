//! Recipe state through the binary: `state:` and `assign:` steps under
//! concurrency and kill -9, and the `state` CLI / `/api/state` admin API.

use crate::utils::*;
use serde_json::{json, Value};

/// `switchboard state …` against a hub (through its admin API); stdout.
fn state_cli(hub: &Hub, args: &[&str]) -> String {
    let mut all = vec!["state"];
    all.extend_from_slice(args);
    let out = hub.cli(&all);
    assert!(out.status.success(), "state {args:?}: {}", stderr(&out));
    stdout(&out)
}

async fn api(hub: &Hub, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = hub
        .http
        .request(method, format!("{}{path}", hub.url))
        .bearer_auth(&hub.token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn state_is_listed_and_edited_through_the_cli_and_the_admin_api() {
    let hub = Hub::start(Config::connectors_only().options()).await;
    // The CLI writes through the running hub's API (the hub holds the store).
    let out = state_cli(
        &hub,
        &[
            "set",
            "support",
            "welcome:bob@example.com",
            "true",
            "--ttl",
            "1h",
        ],
    );
    assert!(
        out.contains("welcome:bob@example.com  true  expires"),
        "{out}"
    );
    state_cli(&hub, &["set", "support", "a/b c", r#"{"n": 1}"#]);
    state_cli(&hub, &["set", "other", "k", "plain text"]);

    let page = hub.items("/api/state?namespace=support").await;
    let keys: Vec<&str> = page.iter().map(|e| e["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["a/b c", "welcome:bob@example.com"]);
    assert_eq!(page[0]["value"], json!({"n": 1}));
    assert!(page[1]["expires_at"].is_i64());
    let listed = state_cli(&hub, &["list"]);
    assert_eq!(listed.lines().count(), 3, "{listed}");
    assert!(listed.contains("other  k  \"plain text\""), "{listed}");

    // A key with a slash is one path segment, percent-encoded.
    let (status, one) = hub.api("/api/state/support/a%2Fb%20c").await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["items"][0]["value"], json!({"n": 1}));
    let shown = state_cli(&hub, &["get", "support", "a/b c", "--json"]);
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["items"][0]["kind"], "value");

    // The admin API writes too; bad input is refused and changes nothing.
    let (status, _) = api(
        &hub,
        reqwest::Method::PUT,
        "/api/state/other/k",
        Some(json!({"value": 7, "ttl": "soon"})),
    )
    .await;
    assert_eq!(status, 400);
    let (status, body) = api(
        &hub,
        reqwest::Method::PUT,
        "/api/state/other/k",
        Some(json!({"value": 7})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(hub.items("/api/state/other/k").await[0]["value"], json!(7));
    let (status, _) = api(&hub, reqwest::Method::DELETE, "/api/state/other/k", None).await;
    assert_eq!(status, 200);
    let (status, _) = api(&hub, reqwest::Method::DELETE, "/api/state/other/k", None).await;
    assert_eq!(status, 404);
    let out = hub.cli(&["state", "delete", "other", "k"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no state `k` in namespace `other`"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        state_cli(&hub, &["delete", "support", "a/b c"]).trim(),
        "deleted"
    );
    assert_eq!(hub.items("/api/state").await.len(), 1);

    // Pages.
    for i in 0..5 {
        state_cli(&hub, &["set", "paged", &format!("k{i}"), "1"]);
    }
    let (_, p1) = hub.api("/api/state?namespace=paged&limit=3").await;
    assert_eq!(p1["items"].as_array().unwrap().len(), 3);
    let next = p1["next"].as_str().unwrap();
    let (_, p2) = hub
        .api(&format!("/api/state?namespace=paged&limit=3&after={next}"))
        .await;
    let keys: Vec<&str> = p2["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["k3", "k4"]);

    // Behind the token.
    let resp = hub
        .http
        .get(format!("{}/api/state", hub.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
}

/// Post `n` ticket events, `parallel` at a time; every one must be accepted.
/// Returns the run ids, in the order of the events' numbers.
async fn post_many(hub: &Hub, n: usize, parallel: usize) -> Vec<String> {
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(parallel));
    // Distinct bodies across calls: the same signed body again within the
    // timestamp's second would be refused as a replay.
    let nonce: u32 = rand::random();
    let mut tasks = Vec::new();
    for i in 0..n {
        let (http, url, gate) = (hub.http.clone(), hub.url.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await.unwrap();
            let subject = format!("hello {nonce}");
            let raw =
                serde_json::to_vec(&ticket_event(i as u64, &subject, "r@example.com")).unwrap();
            let mut req = http.post(format!("{url}/hooks/zendesk")).body(raw.clone());
            for (k, v) in zendesk_headers(&raw, ZENDESK_WEBHOOK_SECRET) {
                req = req.header(k, v);
            }
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status().as_u16(), 202);
            let body: Value = resp.json().await.unwrap();
            body["runs"][0].as_str().unwrap().to_string()
        }));
    }
    let mut runs = Vec::new();
    for t in tasks {
        runs.push(t.await.unwrap());
    }
    runs
}

/// Wait for every run to finish; their records.
async fn wait_all(hub: &Hub, runs: &[String]) -> Vec<Value> {
    let mut out = Vec::new();
    for id in runs {
        out.push(hub.wait_run(id).await);
    }
    out
}

#[tokio::test]
async fn a_thousand_concurrent_increments_count_exactly_a_thousand() {
    let config = Config::connectors_only();
    config.recipe(
        "count",
        r#"
name: count
on: { connector: zendesk, event: ticket.created }
steps:
  - id: windowed
    state: { incr: all-tickets, window: 1h }
  - id: total
    state: { incr: "total", namespace: shared }
"#,
    );
    let hub = Hub::start(config.options()).await;
    let runs = post_many(&hub, 1000, 64).await;
    let done = wait_all(&hub, &runs).await;
    // Each run saw its own count: 1 … 1000, each once (no lost update, no double).
    let mut seen: Vec<i64> = done
        .iter()
        .map(|r| {
            assert_eq!(r["status"], "succeeded", "{r}");
            r["steps"][0]["output"]["count"].as_i64().unwrap()
        })
        .collect();
    seen.sort();
    assert_eq!(seen, (1..=1000).collect::<Vec<i64>>());
    let windowed = hub.items("/api/state/count/all-tickets").await;
    assert_eq!(
        (windowed[0]["kind"].clone(), windowed[0]["value"].clone()),
        (json!("counter"), json!(1000))
    );
    assert_eq!(
        hub.items("/api/state/shared/total").await[0]["value"],
        json!(1000)
    );
}

#[tokio::test]
async fn round_robin_over_three_agents_gives_each_a_third_of_300_concurrent_runs() {
    let config = Config::connectors_only();
    config.recipe(
        "assign",
        r#"
name: assign
on: { connector: zendesk, event: ticket.created }
vars:
  agents:
    - { id: 1, name: alice }
    - { id: 2, name: bob, away: true }
    - { id: 3, name: carol }
    - { id: 4, name: dave }
steps:
  - id: pick
    assign:
      from: "{{ vars.agents }}"
      skip:
        - "$.agent.away": { equals: true }
"#,
    );
    let hub = Hub::start(config.options()).await;
    let runs = post_many(&hub, 300, 64).await;
    let mut per_agent = std::collections::BTreeMap::new();
    for r in wait_all(&hub, &runs).await {
        assert_eq!(r["status"], "succeeded", "{r}");
        let name = r["steps"][0]["output"]["agent"]["name"]
            .as_str()
            .unwrap()
            .to_string();
        *per_agent.entry(name).or_insert(0) += 1;
    }
    assert_eq!(
        per_agent.into_iter().collect::<Vec<_>>(),
        [
            ("alice".to_string(), 100),
            ("carol".to_string(), 100),
            ("dave".to_string(), 100)
        ]
    );
}

#[tokio::test]
async fn kill_9_after_a_state_step_does_not_count_twice() {
    let slow = MockApi::start(vec![Route {
        delay: std::time::Duration::from_secs(120),
        ..route(
            reqwest::Method::PUT,
            "/api/v2/tickets/",
            200,
            json!({"ticket": {"id": 7}}),
        )
    }])
    .await;
    let config = Config::connectors_only();
    config.recipe(
        "count-then-note",
        r#"
name: count-then-note
on: { connector: zendesk, event: ticket.created }
steps:
  - id: count
    state: { incr: "tickets:{{ event.ticket.requester.email }}", window: 24h }
  - id: note
    call: zendesk.add_internal_note
    with:
      ticket_id: "{{ event.ticket.id }}"
      body: "ticket number {{ steps.count.count }} in 24 h"
"#,
    );
    let data = config.dir.path().join("data");
    let opts = |url: &str| HubOptions {
        data: Some(data.clone()),
        ..config.options().base_url("zendesk", url)
    };
    let mut hub = Hub::start(opts(&slow.url)).await;
    let (status, body) = hub
        .post_zendesk(&ticket_event(7, "hi", "bob@example.com"))
        .await;
    assert_eq!(status, 202, "{body}");
    let run_id = body["runs"][0].as_str().unwrap().to_string();
    // The note's call is in flight (after the state step): kill -9 now.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while slow.received().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the note was never called"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    hub.kill();

    let fast = MockApi::start(vec![route(
        reqwest::Method::PUT,
        "/api/v2/tickets/",
        200,
        json!({"ticket": {"id": 7}}),
    )])
    .await;
    let hub = Hub::start(opts(&fast.url)).await;
    let run = hub.wait_run(&run_id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    // The resumed run replayed the recorded count and sent the same note.
    assert_eq!(run["steps"][0]["output"]["count"], 1, "{run}");
    let sent = fast.calls("/api/v2/tickets/7");
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].json()["ticket"]["comment"]["body"],
        "ticket number 1 in 24 h"
    );
    let counter = hub
        .items("/api/state/count-then-note/tickets:bob@example.com")
        .await;
    assert_eq!(counter[0]["value"], 1, "counted once across the kill");
    // And the counter goes on from there.
    let (_, body) = hub
        .post_zendesk(&ticket_event(8, "again", "bob@example.com"))
        .await;
    let run = hub.wait_run(body["runs"][0].as_str().unwrap()).await;
    assert_eq!(run["steps"][0]["output"]["count"], 2, "{run}");
}

#[tokio::test]
async fn least_loaded_assignment_counts_concurrent_picks_and_respects_capacity() {
    let config = Config::connectors_only();
    config.recipe(
        "least",
        r#"
name: least
on: { connector: zendesk, event: ticket.created }
steps:
  - id: pick
    assign:
      from: [alice, bob, carol]
      strategy: least_loaded
      namespace: agents
      load: { key: "open:{{ agent }}" }
      capacity: 12
"#,
    );
    let hub = Hub::start(config.options()).await;
    // Alice already has 5 open tickets; the others none.
    state_cli(&hub, &["set", "agents", "open:alice", "5"]);
    let runs = post_many(&hub, 31, 16).await;
    let done = wait_all(&hub, &runs).await;
    let mut picked = std::collections::BTreeMap::new();
    let mut failed = Vec::new();
    for r in &done {
        match r["status"].as_str() {
            Some("succeeded") => {
                *picked
                    .entry(
                        r["steps"][0]["output"]["agent"]
                            .as_str()
                            .unwrap()
                            .to_string(),
                    )
                    .or_insert(0) += 1
            }
            _ => failed.push(r["error"].as_str().unwrap_or_default().to_string()),
        }
    }
    // 5 + 31 = 36 = 3 × 12: every agent ends at its capacity, no pick lost.
    assert_eq!(
        picked.into_iter().collect::<Vec<_>>(),
        [
            ("alice".to_string(), 7),
            ("bob".to_string(), 12),
            ("carol".to_string(), 12)
        ],
        "{failed:?}"
    );
    for agent in ["alice", "bob", "carol"] {
        let e = hub.items(&format!("/api/state/agents/open:{agent}")).await;
        assert_eq!(e[0]["value"], 12, "{agent}");
    }
    // Everyone is at capacity now: the next run fails and says why.
    let runs = post_many(&hub, 1, 1).await;
    let run = hub.wait_run(&runs[0]).await;
    assert_eq!(run["status"], "failed");
    let error = run["error"].as_str().unwrap();
    assert!(
        error.contains("no agent available: all 3 skipped")
            && error.contains("at capacity (load 12 ≥ 12)"),
        "{error}"
    );
}
