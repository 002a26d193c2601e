//! Bad webhook input is refused with a clear JSON error and changes nothing;
//! odd but valid input (unknown event types, redeliveries, form bodies) is
//! stored as documented.

use crate::utils::*;
use axum::http::Method;
use serde_json::{json, Value};
use std::time::{Duration, SystemTime};

/// Nothing was stored or started, and no far-end API was called.
async fn assert_unchanged(hub: &Hub, mock: &MockApi) {
    assert_eq!(hub.items("/api/events").await, Vec::<Value>::new());
    assert_eq!(hub.items("/api/runs").await, Vec::<Value>::new());
    assert!(mock.received().is_empty(), "{:?}", mock.received());
}

fn confirm_ticket() -> Value {
    ticket_event(7, "Confirmation mail never came", "bob@example.com")
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Headers without `name`.
fn without(headers: Vec<(String, String)>, name: &str) -> Vec<(String, String)> {
    headers.into_iter().filter(|(k, _)| k != name).collect()
}

#[tokio::test]
async fn wrong_secret_is_refused_without_leaking_it() {
    let (hub, mock) = quiet_hub(HubOptions::default()).await;
    let raw = serde_json::to_vec(&confirm_ticket()).unwrap();
    let resp = hub
        .http
        .post(format!("{}/hooks/zendesk", hub.url))
        .headers(header_map(&zendesk_headers(&raw, "not-the-secret")))
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let text = resp.text().await.unwrap();
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["error"], "invalid_signature", "{body}");
    assert_eq!(body["check"], "signature_mismatch", "{body}");
    assert_eq!(
        body["message"],
        "signature in X-Zendesk-Webhook-Signature does not match the request signed with any configured secret"
    );
    assert!(!text.contains(ZENDESK_WEBHOOK_SECRET), "{text}");
    assert!(!text.contains("not-the-secret"), "{text}");
    assert_unchanged(&hub, &mock).await;
}

fn header_map(headers: &[(String, String)]) -> reqwest::header::HeaderMap {
    headers
        .iter()
        .map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap()))
        .collect()
}

#[tokio::test]
async fn missing_signature_is_refused() {
    let (hub, mock) = quiet_hub(HubOptions::default()).await;
    let raw = serde_json::to_vec(&confirm_ticket()).unwrap();
    let headers = without(
        zendesk_headers(&raw, ZENDESK_WEBHOOK_SECRET),
        "X-Zendesk-Webhook-Signature",
    );
    let (status, body) = hub.post("zendesk", &headers, &raw).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "invalid_signature");
    assert_eq!(body["check"], "signature_missing");
    assert_eq!(
        body["message"],
        "signature header X-Zendesk-Webhook-Signature is missing"
    );
    assert_unchanged(&hub, &mock).await;
}

#[tokio::test]
async fn stale_timestamps_are_refused_both_ways() {
    let (hub, mock) = quiet_hub(HubOptions::default()).await;
    let raw = serde_json::to_vec(&confirm_ticket()).unwrap();
    let six_minutes = Duration::from_secs(360);
    for (ts, way) in [
        (SystemTime::now() - six_minutes, "old"),
        (SystemTime::now() + six_minutes, "in the future"),
    ] {
        let headers = zendesk_headers_at(&raw, ZENDESK_WEBHOOK_SECRET, &rfc3339(ts));
        let (status, body) = hub.post("zendesk", &headers, &raw).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"], "invalid_signature");
        assert_eq!(body["check"], "timestamp_stale", "{body}");
        let msg = body["message"].as_str().unwrap();
        assert!(
            msg.starts_with("timestamp in X-Zendesk-Webhook-Signature-Timestamp is 3"),
            "{msg}"
        );
        assert!(
            msg.ends_with(&format!("s {way}, beyond the 300 s tolerance")),
            "{msg}"
        );
    }
    assert_unchanged(&hub, &mock).await;
}

/// A signed JSON body of exactly `len` bytes.
fn padded_ticket(len: usize) -> Vec<u8> {
    let head = br#"{"type":"ticket.deleted","pad":""#;
    let mut raw = head.to_vec();
    raw.resize(len - 2, b'x');
    raw.extend_from_slice(br#""}"#);
    assert_eq!(raw.len(), len);
    serde_json::from_slice::<Value>(&raw).unwrap();
    raw
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused_with_or_without_length() {
    let (hub, mock) = quiet_hub(HubOptions {
        args: vec!["--body-limit".into(), "1024".into()],
        ..HubOptions::default()
    })
    .await;
    let too_big = padded_ticket(1025);
    let headers = zendesk_headers(&too_big, ZENDESK_WEBHOOK_SECRET);

    // With a Content-Length.
    let (status, body) = hub.post("zendesk", &headers, &too_big).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(
        body,
        json!({"error": "too_large", "message": "body larger than 1024 bytes"})
    );

    // Chunked, no Content-Length: the limit holds while reading.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        too_big.chunks(300).map(|c| Ok(c.to_vec())).collect();
    let resp = hub
        .http
        .post(format!("{}/hooks/zendesk", hub.url))
        .headers(header_map(&headers))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "too_large", "{body}");
    assert_unchanged(&hub, &mock).await;

    // Exactly at the limit is fine.
    let at_limit = padded_ticket(1024);
    let headers = zendesk_headers(&at_limit, ZENDESK_WEBHOOK_SECRET);
    let (status, body) = hub.post("zendesk", &headers, &at_limit).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(hub.items("/api/events").await.len(), 1);
}

#[tokio::test]
async fn malformed_json_names_line_and_column() {
    let (hub, mock) = quiet_hub(HubOptions::default()).await;
    let raw = b"{\"type\": \"ticket.created\",\n \"ticket\": }\n";
    let headers = zendesk_headers(raw, ZENDESK_WEBHOOK_SECRET);
    let (status, body) = hub.post("zendesk", &headers, raw).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "bad_request");
    let msg = body["message"].as_str().unwrap();
    assert!(
        msg.starts_with("malformed JSON at line 2 column 12: "),
        "{msg}"
    );
    assert_unchanged(&hub, &mock).await;
}

#[tokio::test]
async fn unknown_connectors_and_connectors_without_webhooks_are_404() {
    let (hub, mock) = quiet_hub(HubOptions::default()).await;
    let raw = serde_json::to_vec(&confirm_ticket()).unwrap();
    let headers = zendesk_headers(&raw, ZENDESK_WEBHOOK_SECRET);
    for name in ["nope", "hubspot"] {
        let (status, body) = hub.post(name, &headers, &raw).await;
        assert_eq!(status, 404, "{name}: {body}");
        assert_eq!(
            body,
            json!({"error": "not_found", "message": format!("no webhook connector named `{name}`")})
        );
    }
    assert_unchanged(&hub, &mock).await;
}

#[tokio::test]
async fn unknown_event_type_is_stored_without_runs() {
    let (hub, mock) = quiet_hub(HubOptions::default()).await;
    let event = json!({"type": "ticket.deleted", "ticket": {"id": 9}});
    let (status, accepted) = hub.post_zendesk(&event).await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["runs"], json!([]));
    assert_eq!(accepted["duplicate"], false);
    let id = accepted["event_id"].as_str().unwrap();
    let (status, stored) = hub.api(&format!("/api/events/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(stored["connector"], "zendesk");
    assert_eq!(stored["event_type"], "ticket.deleted");
    assert_eq!(stored["body"], event);
    assert_eq!(stored["runs"], json!([]));
    assert_eq!(hub.items("/api/runs").await, Vec::<Value>::new());
    assert!(mock.received().is_empty());
}

#[tokio::test]
async fn a_redelivery_is_answered_with_the_first_event_and_starts_nothing() {
    let contact = json!({"total": 1, "results": [{"id": "42", "properties": {
        "email": "bob@example.com", "lifecyclestage": "customer", "plan": "starter"}}]});
    let hubspot = MockApi::start(vec![route(
        Method::POST,
        "/crm/v3/objects/contacts/search",
        200,
        contact,
    )])
    .await;
    let zendesk = MockApi::start(vec![route(
        Method::PUT,
        "/api/v2/tickets/7",
        200,
        json!({"ticket": {"id": 7}}),
    )])
    .await;
    let (hub, mock) = quiet_hub(
        HubOptions::default()
            .base_url("hubspot", &hubspot.url)
            .base_url("zendesk", &zendesk.url),
    )
    .await;
    let raw = serde_json::to_vec(&confirm_ticket()).unwrap();
    let headers = zendesk_headers(&raw, ZENDESK_WEBHOOK_SECRET);

    let (status, first) = hub.post("zendesk", &headers, &raw).await;
    assert_eq!(status, 202, "{first}");
    assert_eq!(first["duplicate"], false);
    // resend-confirmation and crm-enrichment match this English ticket.
    assert_eq!(first["runs"].as_array().unwrap().len(), 2, "{first}");
    let runs = hub.finished_runs(first["event_id"].as_str().unwrap()).await;
    for run in &runs {
        assert_eq!(run["status"], "succeeded", "{run}");
    }

    let (status, second) = hub.post("zendesk", &headers, &raw).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["event_id"], first["event_id"]);
    assert_eq!(second["runs"], first["runs"]);
    assert_eq!(second["duplicate"], true);

    // Runs are stored with their event, so a second start would show here at once.
    assert_eq!(hub.items("/api/events").await.len(), 1);
    assert_eq!(hub.items("/api/runs").await.len(), 2);
    // One contact search per recipe; one note (crm-enrichment; the customer
    // is confirmed, so resend-confirmation stops after the search).
    assert_eq!(hubspot.calls("/crm/v3/objects/contacts/search").len(), 2);
    assert_eq!(hubspot.received().len(), 2, "{:?}", hubspot.received());
    assert_eq!(zendesk.received().len(), 1, "{:?}", zendesk.received());
    assert!(mock.received().is_empty(), "{:?}", mock.received());
}

const FORMS_SECRET: &str = "forms-signing-key-0123456789";

#[tokio::test]
async fn form_bodies_become_objects_that_recipes_read() {
    let cfg = Config::connectors_only();
    cfg.connector(
        "forms",
        r#"name: forms
base_url: https://forms.example.com
secrets: [signing_key]
timeout: 5s
webhook:
  signature: { scheme: hmac, secret: signing_key, header: X-Signature, prefix: "sha256=" }
  event_type: { value: form.submitted }
actions:
  notify:
    inputs:
      text: {}
      tags: {}
    method: POST
    path: /notify
    body:
      text: "{{ input.text }}"
      tags: "{{ input.tags }}"
"#,
    );
    cfg.recipe(
        "form-notify",
        r#"name: form-notify
on: { connector: forms, event: form.submitted }
steps:
  - id: notify
    call: forms.notify
    with:
      text: "{{ event.name }} wrote: {{ event.message }}"
      tags: "{{ event.tag }}"
"#,
    );
    let forms = MockApi::start(vec![route(
        Method::POST,
        "/notify",
        200,
        json!({"ok": true}),
    )])
    .await;
    let mut opts = cfg.options().base_url("forms", &forms.url);
    opts.env.push((
        "SWITCHBOARD_SECRET_FORMS_SIGNING_KEY".into(),
        FORMS_SECRET.into(),
    ));
    let hub = Hub::start(opts).await;

    let raw = b"name=Ann+Lee&message=hello%20world%21&tag=a&tag=b";
    let sig = format!("sha256={}", hmac_hex(FORMS_SECRET, raw));
    let form_headers = |sig: &str| {
        vec![
            (
                "Content-Type".to_string(),
                "application/x-www-form-urlencoded".to_string(),
            ),
            ("X-Signature".to_string(), sig.to_string()),
        ]
    };

    // Signed with another key: refused.
    let bad = format!("sha256={}", hmac_hex("other-key", raw));
    let (status, body) = hub.post("forms", &form_headers(&bad), raw).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["check"], "signature_mismatch");
    assert_eq!(hub.items("/api/events").await, Vec::<Value>::new());

    let (status, accepted) = hub.post("forms", &form_headers(&sig), raw).await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["event_id"].as_str().unwrap();
    let (_, event) = hub.api(&format!("/api/events/{id}")).await;
    assert_eq!(event["event_type"], "form.submitted");
    assert_eq!(
        event["body"],
        json!({"name": "Ann Lee", "message": "hello world!", "tag": ["a", "b"]})
    );
    let runs = hub.finished_runs(id).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["recipe"], "form-notify");
    assert_eq!(runs[0]["status"], "succeeded", "{}", runs[0]);
    let calls = forms.calls("/notify");
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0].json(),
        json!({"text": "Ann Lee wrote: hello world!", "tags": ["a", "b"]})
    );
}
