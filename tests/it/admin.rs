//! The admin API: every `/api` route needs the token; pages are newest first.

use crate::utils::*;
use serde_json::{json, Value};

#[tokio::test]
async fn admin_api_needs_the_token_and_pages_newest_first() {
    let (hub, _mock) = quiet_hub(HubOptions::default()).await;
    let events_url = format!("{}/api/events", hub.url);
    for req in [
        hub.http.get(&events_url),
        hub.http.get(&events_url).bearer_auth("wrong-token"),
        hub.http.get(format!("{}/api/runs", hub.url)),
        hub.http
            .get(&events_url)
            .header("Authorization", hub.token.as_str()),
    ] {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401);
        assert_eq!(
            resp.headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer")
        );
        let body: Value = resp.json().await.unwrap();
        assert_eq!(
            body,
            json!({"error": "unauthorized", "message": "missing or wrong admin token"})
        );
    }
    let health = hub
        .http
        .get(format!("{}/healthz", hub.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    let mut ids = Vec::new();
    for n in 0..3 {
        let (status, accepted) = hub
            .post_zendesk(&json!({"type": "ticket.deleted", "n": n}))
            .await;
        assert_eq!(status, 202);
        ids.push(accepted["event_id"].as_str().unwrap().to_string());
    }
    let (_, first) = hub.api("/api/events?limit=2").await;
    let page: Vec<_> = first["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(page, vec![ids[2].as_str(), ids[1].as_str()], "{first}");
    assert_eq!(first["next"], ids[1].as_str());
    let (_, second) = hub
        .api(&format!("/api/events?limit=2&before={}", ids[1]))
        .await;
    let page: Vec<_> = second["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(page, vec![ids[0].as_str()], "{second}");
    assert_eq!(
        second["items"][0]["body"],
        json!({"type": "ticket.deleted", "n": 0})
    );
    assert_eq!(second["next"], Value::Null);
}
