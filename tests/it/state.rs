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
