//! `switchboard store compact` through the binary: a stopped hub's store
//! with finished, waiting and retrying runs and recipe state is compacted
//! and the hub resumes every run; a hub that is running is not compacted
//! under; a crash at each point of the swap (debug-build crash points)
//! leaves a complete store that the next open (and start-up) finishes.
//! Always on sled (`--store` given), whatever `SWITCHBOARD_TEST_STORE` says.

use crate::utils::*;
use reqwest::Method;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Three recipes on every new ticket: one that succeeds at once, one that
/// counts the ticket in recipe state and then waits, one whose call the
/// far end refuses with 503 (retried).
fn config() -> Config {
    let cfg = Config::connectors_only();
    cfg.recipe(
        "greet",
        r#"name: greet
on: { connector: zendesk, event: ticket.created }
steps:
  - call: slack.post_message
    with: { channel: C1, text: "hello {{ event.ticket.id }}" }
"#,
    );
    cfg.recipe(
        "follow-up",
        r#"name: follow-up
on: { connector: zendesk, event: ticket.created }
steps:
  - id: count
    state: { incr: tickets }
  - id: pause
    wait: 3s
  - call: slack.post_message
    with: { channel: C1, text: "follow up {{ event.ticket.id }} n={{ steps.count.count }}" }
"#,
    );
    cfg.recipe(
        "note",
        r#"name: note
on: { connector: zendesk, event: ticket.created }
steps:
  - call: zendesk.add_internal_note
    with: { ticket_id: "{{ event.ticket.id }}", body: "noted" }
"#,
    );
    cfg
}

fn slack_ok() -> Vec<Route> {
    vec![route(
        Method::POST,
        "/chat.postMessage",
        200,
        json!({"ok": true, "channel": "C1", "ts": "1.0"}),
    )]
}

fn zendesk(status: u16) -> Vec<Route> {
    vec![route(
        Method::PUT,
        "/api/v2/tickets/",
        status,
        json!({"ticket": {"id": 1}}),
    )]
}

fn options(cfg: &Config, data: &Path, slack: &MockApi, zd: &MockApi) -> HubOptions {
    HubOptions {
        data: Some(data.to_path_buf()),
        args: vec![
            "--store".into(),
            data.join("store").to_string_lossy().into_owned(),
        ],
        ..cfg
            .options()
            .base_url("slack", &slack.url)
            .base_url("zendesk", &zd.url)
    }
}

/// `switchboard store <args> --data <data>` with no hub to ask.
fn store_cmd(data: &Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = command(&["store"]);
    cmd.args(args).arg("--data").arg(data);
    for (k, v) in env {
        cmd.env(k, v);
    }
    output_within(cmd, Duration::from_secs(120))
}

/// `store stats --scan --keys --json` of a stopped hub's store: its counts
/// agree with a full scan, and its key prefixes (but `g/`, which only a
/// compacted store has) with their counts and bytes.
fn stats(data: &Path) -> (Value, Vec<Value>) {
    let out = store_cmd(data, &["stats", "--scan", "--keys", "--json"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(s["counts"], s["scanned"], "{s}");
    assert!(s.get("problems").is_none(), "{s}");
    let keys = s["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["prefix"] != "g/")
        .cloned()
        .collect();
    (
        json!({"counts": s["counts"], "state_entries": s["state_entries"]}),
        keys,
    )
}

async fn wait_counts(hub: &Hub, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let (_, s) = hub.api("/api/store/stats").await;
        if done(&s["counts"]["runs"]) {
            return s;
        }
        assert!(Instant::now() < deadline, "not reached: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A stopped hub's data dir: `n` tickets, each with a succeeded run, a
/// waiting run that counted it, and a retrying (or running) run.
async fn stopped_hub_with_work(cfg: &Config, n: u64) -> (PathBuf, MockApi, MockApi) {
    let slack = MockApi::start(slack_ok()).await;
    let zd = MockApi::start(zendesk(503)).await;
    let data = cfg.dir.path().join("data");
    let mut hub = Hub::start(options(cfg, &data, &slack, &zd)).await;
    for id in 0..n {
        let (status, body) = hub.post_zendesk(&ticket_event(id, "Hi", "a@b.c")).await;
        assert_eq!(status, 202, "{body}");
    }
    wait_counts(&hub, Duration::from_secs(30), |r| {
        r["succeeded"] == n
            && r["waiting"] == n
            && r["retrying"].as_u64().unwrap() + r["running"].as_u64().unwrap() == n
    })
    .await;
    hub.kill(); // SIGKILL: leases, waits and retries as a crash leaves them
    (data, slack, zd)
}

#[tokio::test]
async fn a_compacted_store_keeps_events_runs_state_and_queue_and_the_hub_resumes() {
    let cfg = config();
    let (data, _, _) = stopped_hub_with_work(&cfg, 20).await;
    let (before, keys_before) = stats(&data);
    assert_eq!(before["counts"]["events"], 20, "{before}");

    let out = store_cmd(&data, &["compact"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("copied and verified"),
        "{}",
        stdout(&out)
    );
    let (after, keys_after) = stats(&data);
    assert_eq!(after, before);
    assert_eq!(keys_after, keys_before);
    assert!(!data.join("store/compact.tmp").exists());
    assert!(!data.join("store/compact.done").exists());

    // The hub starts on it: the waiting runs wake and post with the count
    // each took before, the retried notes go through now.
    let slack = MockApi::start(slack_ok()).await;
    let zd = MockApi::start(zendesk(200)).await;
    let hub = Hub::start(options(&cfg, &data, &slack, &zd)).await;
    wait_counts(&hub, Duration::from_secs(60), |r| r["succeeded"] == 60).await;
    let mut counts: Vec<u64> = slack
        .calls("/chat.postMessage")
        .iter()
        .filter_map(|c| {
            let form: std::collections::HashMap<String, String> =
                serde_urlencoded::from_bytes(&c.body).ok()?;
            form.get("text")?.split("n=").nth(1)?.parse().ok()
        })
        .collect();
    counts.sort();
    assert_eq!(counts, (1..=20).collect::<Vec<u64>>());
    assert_eq!(zd.calls("/api/v2/tickets/").len(), 20);
    // State goes on from where it was.
    let counter = hub.items("/api/state/follow-up/tickets").await;
    assert_eq!(counter[0]["value"], 20, "{counter:?}");
}

#[tokio::test]
async fn compact_refuses_a_store_a_hub_is_running_on() {
    let cfg = config();
    let slack = MockApi::start(slack_ok()).await;
    let zd = MockApi::start(zendesk(200)).await;
    let data = cfg.dir.path().join("data");
    let hub = Hub::start(options(&cfg, &data, &slack, &zd)).await;
    let (status, _) = hub.post_zendesk(&ticket_event(1, "Hi", "a@b.c")).await;
    assert_eq!(status, 202);

    let out = store_cmd(&data, &["compact"], &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("is in use: stop the hub first") && err.contains("nothing was changed"),
        "{err}"
    );
    assert!(!data.join("store/compact.tmp").exists());
    // The hub did not notice.
    let (status, _) = hub.post_zendesk(&ticket_event(2, "Hi", "a@b.c")).await;
    assert_eq!(status, 202);
    let (_, s) = hub.api("/api/store/stats").await;
    assert_eq!(s["counts"]["events"], 2, "{s}");
}

/// A crash at each point of a compaction: the next open finds a complete
/// store with the same keys (the old one before the marker, the new one
/// after it) and no leftovers; a hub started on one resumes its runs.
#[tokio::test]
async fn a_crash_at_any_point_of_a_compaction_leaves_a_complete_store() {
    let cfg = config();
    let (data, _, _) = stopped_hub_with_work(&cfg, 10).await;
    let (before, keys_before) = stats(&data);
    let points = [
        "compact.copied:1",
        "compact.marked:1",
        "compact.moving:1",
        "compact.moving:2",
        "compact.cleaned:1",
    ];
    let mut resumed = None;
    for point in points {
        let tmp = tempfile::tempdir().unwrap();
        let copy = tmp.path().join("data");
        copy_tree(&data, &copy);
        let out = store_cmd(&copy, &["compact"], &[("SWITCHBOARD_CRASH_AT", point)]);
        assert!(!out.status.success(), "{point}: did not crash");
        assert!(
            stderr(&out).contains("crash point"),
            "{point}: {}",
            stderr(&out)
        );
        let after_marker = point != "compact.copied:1";
        assert_eq!(
            copy.join("store/compact.done").exists(),
            after_marker,
            "{point}: the marker decides"
        );
        // The next open finishes (or drops) the swap.
        let (after, keys_after) = stats(&copy);
        assert_eq!(after, before, "{point}");
        assert_eq!(keys_after, keys_before, "{point}");
        assert!(!copy.join("store/compact.tmp").exists(), "{point}");
        assert!(!copy.join("store/compact.done").exists(), "{point}");
        if point == "compact.moving:2" {
            resumed = Some((tmp, copy));
        }
    }

    // Start-up recovers too: crash again, then start the hub on it.
    let (_tmp, copy) = resumed.unwrap();
    let out = store_cmd(
        &copy,
        &["compact"],
        &[("SWITCHBOARD_CRASH_AT", "compact.moving:2")],
    );
    assert!(!out.status.success());
    assert!(copy.join("store/compact.done").exists());
    let slack = MockApi::start(slack_ok()).await;
    let zd = MockApi::start(zendesk(200)).await;
    let hub = Hub::start(options(&cfg, &copy, &slack, &zd)).await;
    wait_counts(&hub, Duration::from_secs(60), |r| r["succeeded"] == 30).await;
    assert!(!copy.join("store/compact.done").exists());
    assert_eq!(zd.calls("/api/v2/tickets/").len(), 10);
}

/// `from` with everything under it, copied to `to`.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let dest = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_tree(&path, &dest);
        } else {
            std::fs::copy(&path, &dest).unwrap();
        }
    }
}
