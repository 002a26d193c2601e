//! Reloading connectors and recipes while the hub runs: SIGHUP and the file
//! watcher, mid-traffic (no event lost, no run mixing two versions' steps),
//! a broken edit (the last good catalog stays, reported stale with the
//! error's location), and a restart that leaves a parked run's version gone.

use crate::utils::*;
use axum::http::Method;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A recipe whose every call says which version made it; a ticket with
/// subject `hold` parks between the two calls until its `ticket.updated`.
fn versioned(v: &str) -> String {
    format!(
        r#"name: versioned
on: {{ connector: zendesk, event: ticket.created }}
steps:
  - id: first
    call: slack.post_message
    with: {{ channel: C1, text: "{v} first {{{{ event.ticket.id }}}}" }}
  - id: hold
    if: [ {{ "$.event.ticket.subject": {{ equals: hold }} }} ]
    wait_for: {{ event: ticket.updated, key: "{{{{ event.ticket.id }}}}", timeout: 1h }}
  - id: second_{v}
    call: slack.post_message
    with: {{ channel: C1, text: "{v} second {{{{ event.ticket.id }}}}" }}
"#
    )
}

fn slack_ok() -> Vec<Route> {
    vec![route(
        Method::POST,
        "/chat.postMessage",
        200,
        json!({"ok": true, "channel": "C1", "ts": "1.0"}),
    )]
}

fn ticket(id: u64, subject: &str) -> Value {
    json!({"type": "ticket.created", "ticket": {"id": id, "subject": subject}})
}

/// The texts Slack received, by ticket id, in order.
fn texts_by_ticket(api: &MockApi) -> BTreeMap<u64, Vec<String>> {
    let mut out: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for r in api.calls("/chat.postMessage") {
        let form: std::collections::HashMap<String, String> =
            serde_urlencoded::from_bytes(&r.body).unwrap();
        let text = form["text"].clone();
        let id = text.rsplit(' ').next().unwrap().parse().unwrap();
        out.entry(id).or_default().push(text);
    }
    out
}

fn hup(hub: &Hub) {
    let ok = std::process::Command::new("kill")
        .arg("-HUP")
        .arg(hub.child.id().to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -HUP");
}

/// Poll `/api/catalog` until `done` holds.
async fn catalog_until(hub: &Hub, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, c) = hub.api("/api/catalog").await;
        assert_eq!(status, 200, "{c}");
        if done(&c) {
            return c;
        }
        assert!(Instant::now() < deadline, "{what}: {c}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn recipe_version(catalog: &Value) -> String {
    catalog["recipes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "versioned")
        .unwrap()["version"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn wait_status(hub: &Hub, id: &str, want: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, run) = hub.api(&format!("/api/runs/{id}")).await;
        if run["status"] == want {
            return run;
        }
        assert!(Instant::now() < deadline, "run {id} not {want}: {run}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn sighup_mid_traffic_loses_no_event_and_no_run_mixes_versions() {
    let api = MockApi::start(slack_ok()).await;
    let cfg = Config::connectors_only();
    let file = cfg.recipe("versioned", &versioned("v1"));
    let mut opts = cfg.options().base_url("slack", &api.url);
    opts.args = vec!["--watch".into(), "off".into()];
    let hub = std::sync::Arc::new(Hub::start(opts).await);
    let v1 = recipe_version(&hub.api("/api/catalog").await.1);

    // A run of v1 parks in its wait: it must finish with v1's steps.
    let (status, parked) = hub.post_zendesk(&ticket(1, "hold")).await;
    assert_eq!(status, 202, "{parked}");
    let parked = parked["runs"][0].as_str().unwrap().to_string();
    wait_status(&hub, &parked, "waiting").await;

    // Traffic from four senders while the recipe flips v2, v1, v2 by SIGHUP.
    const PER_SENDER: u64 = 60;
    let senders: Vec<_> = (0..4u64)
        .map(|s| {
            let hub = hub.clone();
            tokio::spawn(async move {
                let mut accepted = Vec::new();
                for i in 0..PER_SENDER {
                    let id = 1000 + s * PER_SENDER + i;
                    let (status, a) = hub.post_zendesk(&ticket(id, "go")).await;
                    assert_eq!(status, 202, "{a}");
                    accepted.push((id, a["event_id"].as_str().unwrap().to_string()));
                }
                accepted
            })
        })
        .collect();
    let mut versions = vec![v1.clone()];
    for v in ["v2", "v1", "v2"] {
        write(&file, &versioned(v));
        hup(&hub);
        let before = versions.last().unwrap().clone();
        let c = catalog_until(&hub, "the SIGHUP reload", |c| recipe_version(c) != before).await;
        assert_eq!(c["stale"], false, "{c}");
        versions.push(recipe_version(&c));
    }
    let v2 = versions[1].clone();
    assert_ne!(v1, v2);
    assert_eq!(versions, [v1.clone(), v2.clone(), v1.clone(), v2.clone()]);
    let mut accepted = Vec::new();
    for s in senders {
        accepted.extend(s.await.unwrap());
    }
    assert_eq!(accepted.len(), 4 * PER_SENDER as usize);

    // Every event is stored with exactly one run, and every run finished
    // with both calls of the version it names.
    let mut by_version: BTreeMap<String, usize> = BTreeMap::new();
    for (ticket_id, event_id) in &accepted {
        let runs = hub.finished_runs(event_id).await;
        assert_eq!(runs.len(), 1, "event {event_id}: {runs:?}");
        let run = &runs[0];
        assert_eq!(run["status"], "succeeded", "{run}");
        let version = run["version"].as_str().unwrap().to_string();
        let v = if version == v1 { "v1" } else { "v2" };
        assert!(version == v1 || version == v2, "{run}");
        let ids: Vec<&str> = run["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap())
            .collect();
        let second = format!("second_{v}");
        assert_eq!(ids, ["first", "hold", second.as_str()], "{run}");
        *by_version.entry(v.to_string()).or_default() += 1;
        let _ = ticket_id;
    }
    let texts = texts_by_ticket(&api);
    for (ticket_id, _) in &accepted {
        let t = &texts[ticket_id];
        assert_eq!(t.len(), 2, "{t:?}");
        let v = &t[0][..2];
        assert_eq!(
            *t,
            [
                format!("{v} first {ticket_id}"),
                format!("{v} second {ticket_id}")
            ],
            "one version per run"
        );
    }
    let (_, stats) = hub.api("/api/store/stats").await;
    assert_eq!(
        stats["counts"]["events"],
        accepted.len() as u64 + 1,
        "{stats}"
    );
    println!("runs by version: {by_version:?}");

    // The parked run wakes under v2 and ends with v1's second step.
    assert_eq!(recipe_version(&hub.api("/api/catalog").await.1), v2);
    let (_, c) = hub.api("/api/catalog").await;
    assert_eq!(c["kept"], json!([format!("versioned@{v1}")]), "{c}");
    let (status, _) = hub
        .post_zendesk(&json!({"type": "ticket.updated", "ticket": {"id": 1}}))
        .await;
    assert_eq!(status, 202);
    let run = wait_status(&hub, &parked, "succeeded").await;
    assert_eq!(run["version"], v1.as_str(), "{run}");
    assert_eq!(
        texts_by_ticket(&api)[&1],
        ["v1 first 1".to_string(), "v1 second 1".to_string()]
    );
    // Nothing needs v1 any more: the next reload drops it.
    write(&file, &versioned("v3"));
    hup(&hub);
    // (Dropping follows the install: wait for both.)
    catalog_until(&hub, "the v3 reload dropping v1", |c| {
        recipe_version(c) != v2 && c["kept"] == json!([])
    })
    .await;
}

#[tokio::test]
async fn a_broken_edit_keeps_the_last_good_files_and_says_stale_until_fixed() {
    let api = MockApi::start(slack_ok()).await;
    let cfg = Config::connectors_only();
    let file = cfg.recipe("versioned", &versioned("v1"));
    let mut opts = cfg.options().base_url("slack", &api.url);
    opts.args = vec!["--watch".into(), "50ms".into()];
    let hub = Hub::start(opts).await;
    let v1 = recipe_version(&hub.api("/api/catalog").await.1);

    // A typo in an action: the watcher finds it, the hub keeps v1.
    write(
        &file,
        &versioned("v2").replace("slack.post_message", "slack.post_mesage"),
    );
    let c = catalog_until(&hub, "the broken edit", |c| c["stale"] == true).await;
    let errors = c["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{c}");
    let at = format!("{}:5:11: ", file.display());
    assert!(
        errors[0].as_str().unwrap().starts_with(&at),
        "{} at {at}",
        errors[0]
    );
    assert!(errors[0].as_str().unwrap().contains("post_message"), "{c}");
    assert_eq!(recipe_version(&c), v1);
    let ready = hub
        .http
        .get(format!("{}/readyz", hub.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200, "a stale catalog still serves");
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["catalog"]["status"], "stale", "{ready}");
    assert_eq!(ready["catalog"]["errors"], c["errors"]);

    // Events still run the last good version.
    let (_, a) = hub.post_zendesk(&ticket(5, "go")).await;
    let run = hub.wait_run(a["runs"][0].as_str().unwrap()).await;
    assert_eq!(run["version"], v1.as_str(), "{run}");
    assert_eq!(texts_by_ticket(&api)[&5][0], "v1 first 5");

    // The fix is picked up by the watcher; the stale report goes.
    write(&file, &versioned("v2"));
    let c = catalog_until(&hub, "the fixed edit", |c| c["stale"] == false).await;
    assert_ne!(recipe_version(&c), v1);
    assert_eq!(c["reloads"], 1, "{c}");
    let (_, a) = hub.post_zendesk(&ticket(6, "go")).await;
    let run = hub.wait_run(a["runs"][0].as_str().unwrap()).await;
    assert_eq!(run["version"], recipe_version(&c).as_str(), "{run}");
    assert_eq!(
        texts_by_ticket(&api)[&6],
        ["v2 first 6".to_string(), "v2 second 6".to_string()]
    );
    let (_, ready) = hub.api("/readyz").await;
    assert_eq!(ready["catalog"]["status"], "current", "{ready}");

    // The API reloads on request, and reports a failure without applying it.
    std::fs::write(&file, "name: [").unwrap();
    let resp = hub
        .http
        .post(format!("{}/api/catalog/reload", hub.url))
        .bearer_auth(&hub.token)
        .send()
        .await
        .unwrap();
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["outcome"], "failed", "{answer}");
    assert!(
        answer["errors"][0]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}:2:1: invalid YAML", file.display())),
        "{answer}"
    );
}

#[tokio::test]
async fn after_a_restart_a_parked_run_whose_version_is_gone_fails_saying_so() {
    let api = MockApi::start(slack_ok()).await;
    let cfg = Config::connectors_only();
    let file = cfg.recipe("versioned", &versioned("v1"));
    let data = cfg.dir.path().join("data");
    let mut opts = cfg.options().base_url("slack", &api.url);
    opts.args = vec!["--watch".into(), "off".into()];
    opts.data = Some(data);
    let mut hub = Hub::start(opts.clone()).await;
    let (_, a) = hub.post_zendesk(&ticket(1, "hold")).await;
    let parked = a["runs"][0].as_str().unwrap().to_string();
    let run = wait_status(&hub, &parked, "waiting").await;
    let v1 = run["version"].as_str().unwrap().to_string();
    hub.kill();

    // Restarted with v2 on disk: v1 is gone; its run is not continued on v2.
    write(&file, &versioned("v2"));
    let hub = Hub::start(opts).await;
    let (_, a) = hub
        .post_zendesk(&json!({"type": "ticket.updated", "ticket": {"id": 1}}))
        .await;
    assert_eq!(a["runs"], json!([]));
    let run = wait_status(&hub, &parked, "failed").await;
    let error = run["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("changed from version {v1}")),
        "{error}"
    );
    assert_eq!(texts_by_ticket(&api)[&1], ["v1 first 1".to_string()]);
}
