//! `switchboard replay` and `GET /api/replay`: a changed recipe replayed over
//! stored events — new runs, runs that no longer start, changed inputs,
//! calls it would make — through a running hub's API and on the store
//! directly; no call leaves the process and nothing is written.

use crate::utils::*;
use axum::http::Method;
use serde_json::{json, Value};
use std::collections::BTreeMap;

const V1: &str = r#"name: greet
on: { connector: zendesk, event: ticket.created }
if: [ { "$.event.ticket.subject": { matches: "(?i)hello" } } ]
steps:
  - id: post
    call: slack.post_message
    with: { channel: C1, text: "hello {{ event.ticket.id }}" }
"#;

/// Starts on subjects beginning with hello or other (so "urgent hello" no
/// longer starts and "other" newly does), says it louder, and tags.
const V2: &str = r#"name: greet
on: { connector: zendesk, event: ticket.created }
if: [ { "$.event.ticket.subject": { matches: "(?i)^(hello|other)" } } ]
steps:
  - id: post
    call: slack.post_message
    with: { channel: C1, text: "hello {{ event.ticket.id }}!" }
  - id: tag
    call: zendesk.add_tags
    with: { ticket_id: "{{ event.ticket.id }}", tags: [greeted] }
"#;

fn ticket(id: u64, subject: &str) -> Value {
    json!({"type": "ticket.created", "ticket": {"id": id, "subject": subject}})
}

/// Items of a replay page by ticket id (read from the event through the API).
fn by_verdict(page: &Value) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for item in page["items"].as_array().unwrap() {
        out.entry(item["verdict"].as_str().unwrap().to_string())
            .or_default()
            .push(item.clone());
    }
    out
}

#[tokio::test]
async fn replay_shows_what_a_change_would_have_done_and_sends_and_writes_nothing() {
    let slack = MockApi::start(vec![route(
        Method::POST,
        "/chat.postMessage",
        200,
        json!({"ok": true, "channel": "C1", "ts": "1.0"}),
    )])
    .await;
    let cfg = Config::connectors_only();
    cfg.recipe("greet", V1);
    let data = cfg.dir.path().join("data");
    let mut opts = cfg.options().base_url("slack", &slack.url);
    opts.args = vec!["--watch".into(), "off".into()];
    opts.data = Some(data.clone());
    let (mut hub, quiet) = quiet_hub(opts).await;
    let mut events = BTreeMap::new();
    for (id, subject) in [(1, "hello there"), (2, "urgent hello"), (3, "other")] {
        let (status, a) = hub.post_zendesk(&ticket(id, subject)).await;
        assert_eq!(status, 202, "{a}");
        let event_id = a["event_id"].as_str().unwrap().to_string();
        for run in hub.finished_runs(&event_id).await {
            assert_eq!(run["status"], "succeeded", "{run}");
        }
        events.insert(event_id, id);
    }
    assert_eq!(slack.received().len(), 2);
    let (_, stats_before) = hub.api("/api/store/stats").await;

    // The change, in a checkout of its own.
    let change = tempfile::tempdir().unwrap();
    write(&change.path().join("greet.yaml"), V2);
    let (url, token) = (hub.url.clone(), hub.token.clone());
    let replay = |extra: &[&str]| {
        let mut cmd = command(&["replay", "--recipe", "greet"]);
        cmd.arg("--recipes")
            .arg(change.path())
            .arg("--connectors")
            .arg(&cfg.connectors)
            .arg("--data")
            .arg(&data)
            .arg("--url")
            .arg(&url)
            .args(extra)
            .env("SWITCHBOARD_ADMIN_TOKEN", &token);
        cmd.output().unwrap()
    };

    // Through the running hub's API (it holds the store).
    let out = replay(&["--since", "1h", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let page: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(page["scanned"], 3, "{page}");
    assert_eq!(page["next"], Value::Null);
    let v = by_verdict(&page);
    let ticket_of = |item: &Value| events[item["event_id"].as_str().unwrap()];
    // 1: same trigger, other text, and a call it would make.
    let changed = &v["changed"];
    assert_eq!(changed.len(), 1, "{page}");
    assert_eq!(ticket_of(&changed[0]), 1);
    assert_eq!(
        changed[0]["changes"],
        json!([
            {"step": "post", "change": "inputs", "call": "slack.post_message",
             "before": {"channel": "C1", "text": "hello 1"},
             "after": {"channel": "C1", "text": "hello 1!"}},
            {"step": "tag", "change": "would_call", "call": "zendesk.add_tags",
             "before": null, "after": {"ticket_id": 1, "tags": ["greeted"]}},
        ]),
        "{page}"
    );
    assert_eq!(changed[0]["before"]["steps"], json!(["post"]));
    assert_eq!(changed[0]["after"]["steps"], json!(["post", "tag"]));
    assert_eq!(changed[0]["after"]["status"], "succeeded");
    // 2: no longer starts; 3: starts now, both calls not made.
    assert_eq!(ticket_of(&v["no_longer_starts"][0]), 2, "{page}");
    assert_eq!(v["no_longer_starts"][0]["after"], Value::Null);
    let new = &v["new_run"];
    assert_eq!(ticket_of(&new[0]), 3, "{page}");
    assert_eq!(new[0]["before"], Value::Null);
    let kinds: Vec<&str> = new[0]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["change"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["would_call", "would_call"], "{page}");
    assert!(!v.contains_key("unchanged"), "{page}");

    // Paged: one event per page, newest first, the cursor in `next`.
    let mut seen = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let mut args = vec!["--since", "1h", "--limit", "1", "--json"];
        if let Some(b) = &before {
            args.extend(["--before", b.as_str()]);
        }
        let out = replay(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        let page: Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert!(page["items"].as_array().unwrap().len() <= 1);
        for item in page["items"].as_array().unwrap() {
            seen.push(ticket_of(item));
        }
        match page["next"].as_str() {
            Some(n) => before = Some(n.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, [3, 2, 1]);

    // The hub's own files through the API: nothing changed.
    let (status, page) = hub.api("/api/replay?recipe=greet&since=1h").await;
    assert_eq!(status, 200, "{page}");
    let v = by_verdict(&page);
    assert_eq!(v.keys().collect::<Vec<_>>(), ["unchanged"], "{page}");
    assert_eq!(v["unchanged"].len(), 2, "{page}");
    let (status, _) = hub.api("/api/replay?recipe=nope").await;
    assert_eq!(status, 404);

    // No call left, nothing was written.
    assert_eq!(slack.received().len(), 2);
    assert!(quiet.received().is_empty(), "{:?}", quiet.received().len());
    let (_, stats_after) = hub.api("/api/store/stats").await;
    assert_eq!(stats_before["counts"], stats_after["counts"]);

    // On the store itself (no hub), by event ids, as text.
    hub.kill();
    let one = events.iter().find(|(_, t)| **t == 1).unwrap().0.clone();
    let three = events.iter().find(|(_, t)| **t == 3).unwrap().0.clone();
    let out = replay(&["--events", &one, &three]);
    let text = stdout(&out);
    assert!(out.status.success(), "{}{text}", stderr(&out));
    for want in [
        "unchanged 0, changed 1, new runs 1, no longer start 0".to_string(),
        format!("event {one} (ticket.created): changed"),
        "  ~ post (slack.post_message): inputs {\"channel\":\"C1\",\"text\":\"hello 1\"} -> {\"channel\":\"C1\",\"text\":\"hello 1!\"}".to_string(),
        "  + tag: would call zendesk.add_tags with {\"tags\":[\"greeted\"],\"ticket_id\":1} (not made: no recorded answer)".to_string(),
        format!("event {three} (ticket.created): new run"),
    ] {
        assert!(text.contains(&want), "{want}\nin\n{text}");
    }
}
