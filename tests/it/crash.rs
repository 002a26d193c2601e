//! Crash safety of the write path: the hub is aborted at random points of
//! its write path (`SWITCHBOARD_CRASH_AT`, a hook compiled into debug
//! builds only, see `src/crash.rs`) 200 times on one data dir, then started
//! once more without it. Nothing acknowledged may be lost, and no step whose
//! success was recorded may be called again.
//!
//! The far end answers every call with its own number (`{"n": 17}`), which
//! becomes the step's recorded output. "No succeeded step runs twice" is then
//! exact: for every step key, the recorded call must be the last one the far
//! end saw with that key (a call in flight at a crash may repeat; a recorded
//! one may not).

use crate::utils::*;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use rand::Rng;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SIGNING_KEY: &str = "crash-signing-key-0123456789";
const CRASHES: usize = 200;
/// Where a life may end (see `src/crash.rs`).
const POINTS: &[&str] = &["group.apply", "group.flush", "group.answer", "step.called"];

/// Calls per Idempotency-Key, numbered in arrival order (from 1).
type Calls = Arc<Mutex<HashMap<String, Vec<u64>>>>;

async fn far_end() -> (String, Calls) {
    let calls: Calls = Arc::default();
    let counter = Arc::new(Mutex::new(0u64));
    let app =
        axum::Router::new()
            .route(
                "/a",
                axum::routing::post(
                    |State((calls, counter)): State<(Calls, Arc<Mutex<u64>>)>,
                     headers: HeaderMap| async move {
                        let key = headers
                            .get("idempotency-key")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        let n = {
                            let mut c = counter.lock().unwrap();
                            *c += 1;
                            *c
                        };
                        calls.lock().unwrap().entry(key).or_default().push(n);
                        Json(json!({ "n": n }))
                    },
                ),
            )
            .with_state((calls.clone(), counter));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, calls)
}

/// One life of the hub: started on the shared data dir, maybe with a crash point.
struct Life {
    child: Child,
    url: Option<String>,
}

impl Life {
    fn start(dir: &std::path::Path, sink: &str, crash_at: Option<String>) -> Life {
        let mut cmd = Command::new(bin());
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--workers", "4"])
            .arg("--data")
            .arg(dir.join("data"))
            .arg("--connectors")
            .arg(dir.join("connectors"))
            .arg("--recipes")
            .arg(dir.join("recipes"))
            .args(["--allow-internal", "sink"])
            .env("SWITCHBOARD_ADMIN_TOKEN", "test-admin-token")
            .env("SWITCHBOARD_LOG", "error")
            .env("SWITCHBOARD_BASE_URL_SINK", sink)
            .env("SWITCHBOARD_SECRET_SINK_SIGNING_KEY", SIGNING_KEY)
            .env_remove("SWITCHBOARD_CRASH_AT")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(c) = crash_at {
            cmd.env("SWITCHBOARD_CRASH_AT", c);
        }
        let mut child = cmd.spawn().expect("start switchboard");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(u) = line.strip_prefix("switchboard listening on ") {
                    let _ = tx.send(u.to_string());
                }
            }
        });
        // A crash during start-up closes stdout: no address.
        let url = rx.recv_timeout(Duration::from_secs(30)).ok();
        Life { child, url }
    }

    fn dead(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn setup(dir: &std::path::Path) {
    write(
        &dir.join("connectors/sink.yaml"),
        r#"name: sink
base_url: http://127.0.0.1:1
secrets: [signing_key]
timeout: 5s
retry: { attempts: 20, backoff: 20ms, max_backoff: 100ms }
circuit_breaker: { failures: 0 }
webhook:
  signature: { scheme: hmac, secret: signing_key, header: X-Signature }
  event_type: { path: "$.type" }
  event_id: { path: "$.id" }
actions:
  a:
    inputs: { n: {} }
    method: POST
    path: /a
    body: { n: "{{ input.n }}" }
"#,
    );
    write(
        &dir.join("recipes/crash.yaml"),
        r#"name: crash
on: { connector: sink, event: ping }
steps:
  - id: one
    call: sink.a
    with: { n: "{{ event.id }}" }
  - id: two
    call: sink.a
    with: { n: "{{ event.id }}" }
"#,
    );
}

/// POST one small signed event; the answer, or `None` if the hub is gone.
async fn post(http: &reqwest::Client, url: &str, id: &str) -> Option<(u16, Value)> {
    let raw = serde_json::to_vec(&json!({"type": "ping", "id": id})).unwrap();
    let resp = http
        .post(format!("{url}/hooks/sink"))
        .header("Content-Type", "application/json")
        .header("X-Signature", hmac_hex(SIGNING_KEY, &raw))
        .body(raw)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.json().await.ok()?))
}

async fn api(http: &reqwest::Client, url: &str, path: &str) -> Value {
    let resp = http
        .get(format!("{url}{path}"))
        .bearer_auth("test-admin-token")
        .send()
        .await
        .expect("admin api");
    assert_eq!(resp.status(), 200, "{path}");
    resp.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_crashes_in_the_write_path_lose_no_acknowledged_event_and_repeat_no_recorded_step() {
    let (sink, calls) = far_end().await;
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut rng = rand::rng();
    // Delivery id → event id, for every acknowledged delivery.
    let mut acked: HashMap<String, String> = HashMap::new();
    let mut next_event = 0usize;
    let started = Instant::now();
    let mut crashed = 0;
    while crashed < CRASHES {
        let point = POINTS[rng.random_range(0..POINTS.len())];
        let at = rng.random_range(1..=3);
        let mut life = Life::start(dir.path(), &sink, Some(format!("{point}:{at}")));
        if let Some(url) = life.url.clone() {
            // Three senders, a handful of events each, until the hub dies.
            let mut senders = Vec::new();
            for _ in 0..3 {
                let ids: Vec<String> = (0..4)
                    .map(|_| {
                        next_event += 1;
                        format!("ev{next_event}")
                    })
                    .collect();
                let (http, url) = (http.clone(), url.clone());
                senders.push(tokio::spawn(async move {
                    let mut ok = Vec::new();
                    for id in ids {
                        match post(&http, &url, &id).await {
                            Some((s, v)) if (200..300).contains(&s) => {
                                ok.push((id, v["event_id"].as_str().unwrap().to_string()))
                            }
                            Some((s, v)) => panic!("{s} {v}"),
                            None => break,
                        }
                    }
                    ok
                }));
            }
            for s in senders {
                for (id, event) in s.await.unwrap() {
                    if let Some(first) = acked.insert(id.clone(), event.clone()) {
                        assert_eq!(first, event, "{id} acknowledged as two events");
                    }
                }
            }
            // Give the workers a moment to reach the point.
            let deadline = Instant::now() + Duration::from_millis(150);
            while !life.dead() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        if life.dead() {
            crashed += 1;
        }
        life.kill();
    }
    assert!(!acked.is_empty());
    let crashing = started.elapsed();

    // The last life, without crash points: everything acknowledged finishes.
    let mut life = Life::start(dir.path(), &sink, None);
    let url = life.url.clone().expect("the hub starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut retried = HashSet::new();
    let runs = loop {
        let mut runs: HashMap<String, Value> = HashMap::new();
        let mut path = "/api/runs?limit=500".to_string();
        loop {
            let page = api(&http, &url, &path).await;
            for r in page["items"].as_array().unwrap() {
                runs.insert(r["id"].as_str().unwrap().to_string(), r.clone());
            }
            match page["next"].as_str() {
                Some(next) => path = format!("/api/runs?limit=500&before={next}"),
                None => break,
            }
        }
        // A run that was executing at two crashes in a row is failed by the
        // poison-run guard (documented); a person retries it.
        for (id, r) in &runs {
            if r["status"] == "failed"
                && r["error"]
                    .as_str()
                    .unwrap_or("")
                    .contains("poison-run guard")
                && retried.insert(id.clone())
            {
                let resp = http
                    .post(format!("{url}/api/runs/{id}/retry"))
                    .bearer_auth("test-admin-token")
                    .send()
                    .await
                    .unwrap();
                assert!(resp.status().is_success());
            }
        }
        if runs.values().all(|r| r["status"] == "succeeded") {
            break runs;
        }
        assert!(Instant::now() < deadline, "runs not finished: {:?}", {
            let mut s: Vec<_> = runs
                .values()
                .filter(|r| r["status"] != "succeeded")
                .map(|r| format!("{} {} {}", r["id"], r["status"], r["error"]))
                .collect();
            s.truncate(5);
            s
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // No acknowledged event lost: each is stored, with its run.
    for (delivery, event_id) in &acked {
        let ev = api(&http, &url, &format!("/api/events/{event_id}")).await;
        assert_eq!(ev["id"], event_id.as_str(), "{delivery}");
        let ids = ev["runs"].as_array().unwrap();
        assert_eq!(ids.len(), 1, "{ev}");
        assert!(runs.contains_key(ids[0]["id"].as_str().unwrap()), "{ev}");
    }
    // No recorded step called again: its recorded call is the last of its key.
    let calls = calls.lock().unwrap().clone();
    let mut repeated = 0;
    for (id, run) in &runs {
        for step in run["steps"].as_array().unwrap() {
            let key = format!("{id}:{}", step["id"].as_str().unwrap());
            let seen = calls
                .get(&key)
                .unwrap_or_else(|| panic!("{key} never called"));
            assert_eq!(
                step["output"]["n"].as_u64(),
                seen.last().copied(),
                "{key}: called again after its success was recorded ({seen:?})"
            );
            repeated += seen.len() - 1;
        }
    }
    life.kill();
    eprintln!(
        "{CRASHES} crashes in {crashing:.1?}, {} events acknowledged, {} runs, {repeated} calls repeated (in flight at a crash), {:.1?} in all",
        acked.len(),
        runs.len(),
        started.elapsed()
    );
}
