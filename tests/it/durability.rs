//! Durable execution under faults, through the real binary: kill -9 and
//! SIGTERM mid-load, 503 / 429 + `Retry-After`, dead letters and `runs retry`,
//! rate and concurrency limits, a dropped connection after the side effect,
//! per-key ordering, the circuit breaker and `/readyz` back-pressure.
//!
//! The far end is [`Sink`]: a raw HTTP/1.1 server (so it can drop a
//! connection after reading a request) that records when each request arrived
//! and was answered, with its `Idempotency-Key`, and answers from a script.
//! Times are lower bounds only ("not before Retry-After"); everything else is
//! counts and states.

use crate::utils::*;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const SIGNING_KEY: &str = "sink-signing-key-0123456789";
/// Slack for comparing the hub's millisecond wall-clock schedule with the
/// sink's monotonic clock.
const CLOCK_SLACK: Duration = Duration::from_millis(5);

// ---------------------------------------------------------------- the sink

/// One request the sink read.
#[derive(Debug, Clone)]
struct Call {
    path: String,
    key: Option<String>,
    body: Value,
    /// When the whole request had been read.
    at: Instant,
    /// Just before the answer was written (or the connection dropped).
    answered: Option<Instant>,
    /// The status answered; `None` while in flight or when dropped.
    status: Option<u16>,
}

impl Call {
    fn seq(&self) -> i64 {
        self.body["seq"].as_i64().unwrap_or(-1)
    }
}

/// How the sink answers one request.
#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    delay: Duration,
    /// Wait for [`Sink::release`] before answering.
    hold: bool,
    /// Close the connection without answering (after recording the call).
    drop: bool,
}

impl Reply {
    fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            delay: Duration::ZERO,
            hold: false,
            drop: false,
        }
    }
    fn ok() -> Reply {
        Reply::status(200)
    }
    fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }
    fn delay(mut self, d: Duration) -> Reply {
        self.delay = d;
        self
    }
    fn held(mut self) -> Reply {
        self.hold = true;
        self
    }
    fn dropped() -> Reply {
        Reply {
            drop: true,
            ..Reply::ok()
        }
    }
}

/// Decides the answer to a call, given every earlier call.
type Script = Arc<dyn Fn(&Call, &[Call]) -> Reply + Send + Sync>;

struct SinkState {
    calls: Vec<Call>,
    script: Script,
}

#[derive(Clone)]
struct Sink {
    state: Arc<Mutex<SinkState>>,
    gate: Arc<tokio::sync::watch::Sender<bool>>,
    url: String,
}

impl Sink {
    async fn start(script: impl Fn(&Call, &[Call]) -> Reply + Send + Sync + 'static) -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sink = Sink {
            state: Arc::new(Mutex::new(SinkState {
                calls: Vec::new(),
                script: Arc::new(script),
            })),
            gate: Arc::new(tokio::sync::watch::channel(false).0),
            url: format!("http://{}", listener.local_addr().unwrap()),
        };
        let s = sink.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(s.clone().serve(stream));
            }
        });
        sink
    }

    fn set_script(&self, script: impl Fn(&Call, &[Call]) -> Reply + Send + Sync + 'static) {
        self.state.lock().unwrap().script = Arc::new(script);
    }

    /// Let every held answer (and every later one) go.
    fn release(&self) {
        self.gate.send_replace(true);
    }

    fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    fn calls_to(&self, path: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.path == path)
            .collect()
    }

    /// Calls per Idempotency-Key.
    fn by_key(&self) -> HashMap<String, Vec<Call>> {
        let mut m: HashMap<String, Vec<Call>> = HashMap::new();
        for c in self.calls() {
            m.entry(
                c.key
                    .clone()
                    .expect("every call carries an Idempotency-Key"),
            )
            .or_default()
            .push(c);
        }
        m
    }

    /// One connection: requests one after another (keep-alive).
    async fn serve(self, stream: TcpStream) {
        let mut conn = BufReader::new(stream);
        while let Some((path, headers, body)) = read_request(&mut conn).await {
            let call = Call {
                path,
                key: headers.get("idempotency-key").cloned(),
                body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                at: Instant::now(),
                answered: None,
                status: None,
            };
            let (index, reply) = {
                let mut st = self.state.lock().unwrap();
                let reply = (st.script.clone())(&call, &st.calls);
                st.calls.push(call);
                (st.calls.len() - 1, reply)
            };
            if reply.hold {
                let mut gate = self.gate.subscribe();
                let _ = gate.wait_for(|open| *open).await;
            }
            if !reply.delay.is_zero() {
                tokio::time::sleep(reply.delay).await;
            }
            let answered = Instant::now();
            {
                let mut st = self.state.lock().unwrap();
                st.calls[index].answered = Some(answered);
                if !reply.drop {
                    st.calls[index].status = Some(reply.status);
                }
            }
            if reply.drop {
                // The side effect happened; the caller never hears about it.
                return;
            }
            let body = r#"{"ok":true}"#;
            let mut head = format!(
                "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
                reply.status,
                axum::http::StatusCode::from_u16(reply.status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("Status"),
                body.len()
            );
            for (k, v) in &reply.headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            head.push_str(body);
            if conn.get_mut().write_all(head.as_bytes()).await.is_err() {
                return;
            }
        }
    }
}

/// Read one HTTP/1.1 request with a Content-Length body; `None` at EOF or on garbage.
async fn read_request(
    conn: &mut BufReader<TcpStream>,
) -> Option<(String, HashMap<String, String>, Vec<u8>)> {
    let mut line = String::new();
    if conn.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let path = line.split_whitespace().nth(1)?.to_string();
    let mut headers = HashMap::new();
    loop {
        line.clear();
        if conn.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':')?;
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    conn.read_exact(&mut body).await.ok()?;
    Some((path, headers, body))
}

/// Most calls in flight at once (between being read and being answered).
fn max_overlap<'a>(calls: impl IntoIterator<Item = &'a Call>) -> usize {
    let mut edges = Vec::new();
    for c in calls {
        edges.push((c.at, 1i32));
        edges.push((c.answered.expect("every call was answered"), -1));
    }
    // At the same instant an end comes before a start.
    edges.sort();
    let (mut now, mut max) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        max = max.max(now);
    }
    max as usize
}

/// Most calls whose arrival falls in one window `[t, t + per)`.
fn max_in_window(calls: &[Call], per: Duration) -> usize {
    let mut at: Vec<Instant> = calls.iter().map(|c| c.at).collect();
    at.sort();
    (0..at.len())
        .map(|i| at[i..].iter().take_while(|t| **t - at[i] < per).count())
        .max()
        .unwrap_or(0)
}

// ------------------------------------------------------ hub configuration

/// The connector every test uses; `policy` holds its `retry:` / `limits:` /
/// `circuit_breaker:` lines.
fn connector(policy: &str) -> String {
    format!(
        r#"name: sink
base_url: http://127.0.0.1:1
secrets: [signing_key]
timeout: 5s
{policy}
webhook:
  signature: {{ scheme: hmac, secret: signing_key, header: X-Signature }}
  event_type: {{ path: "$.type" }}
actions:
  a:
    inputs: {{ ticket: {{}}, seq: {{}} }}
    method: POST
    path: /a
    body: {{ ticket: "{{{{ input.ticket }}}}", seq: "{{{{ input.seq }}}}" }}
  b:
    inputs: {{ ticket: {{}}, seq: {{}} }}
    method: POST
    path: /b
    body: {{ ticket: "{{{{ input.ticket }}}}", seq: "{{{{ input.seq }}}}" }}
"#
    )
}

/// Fast retries; the breaker off, since most tests fail on purpose.
const RETRY: &str =
    "retry: { attempts: 4, backoff: 50ms, max_backoff: 200ms }\ncircuit_breaker: { failures: 0 }";

/// A recipe `durable` on `ticket.updated` calling `sink.<action>` per step.
fn recipe(extra: &str, actions: &[&str]) -> String {
    let mut r = format!(
        "name: durable\non: {{ connector: sink, event: ticket.updated }}\n{extra}\nsteps:\n"
    );
    for (i, a) in actions.iter().enumerate() {
        r.push_str(&format!(
            "  - id: step{}\n    call: sink.{a}\n    with: {{ ticket: \"{{{{ event.ticket.id }}}}\", seq: \"{{{{ event.seq }}}}\" }}\n",
            i + 1
        ));
    }
    r
}

/// Connectors, recipes and a data dir that outlives hub restarts.
struct Setup {
    dir: tempfile::TempDir,
    sink: Sink,
}

impl Setup {
    fn new(sink: &Sink, policy: &str, recipe: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("connectors/sink.yaml"), &connector(policy));
        write(&dir.path().join("recipes/durable.yaml"), recipe);
        Setup {
            dir,
            sink: sink.clone(),
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn options(&self, args: &[&str]) -> HubOptions {
        HubOptions {
            connectors: self.dir.path().join("connectors"),
            recipes: self.dir.path().join("recipes"),
            env: vec![
                ("SWITCHBOARD_BASE_URL_SINK".into(), self.sink.url.clone()),
                (
                    "SWITCHBOARD_SECRET_SINK_SIGNING_KEY".into(),
                    SIGNING_KEY.into(),
                ),
            ],
            args: args.iter().map(|a| a.to_string()).collect(),
            data: Some(self.data()),
            ..HubOptions::default()
        }
    }

    async fn start(&self, args: &[&str]) -> Hub {
        Hub::start(self.options(args)).await
    }
}

fn event(ticket: u64, seq: usize) -> Value {
    json!({"type": "ticket.updated", "ticket": {"id": ticket}, "seq": seq})
}

/// An acknowledged (2xx) webhook.
#[derive(Debug, Clone)]
struct Acked {
    seq: usize,
    event_id: String,
    runs: Vec<String>,
}

/// POST a signed event; `None` when the hub could not be reached.
async fn post(http: &reqwest::Client, url: &str, body: &Value) -> Option<(u16, Value)> {
    let raw = serde_json::to_vec(body).unwrap();
    let resp = http
        .post(format!("{url}/hooks/sink"))
        .header("Content-Type", "application/json")
        .header("X-Signature", hmac_hex(SIGNING_KEY, &raw))
        .body(raw)
        .send()
        .await
        .ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.json().await.unwrap_or(Value::Null)))
}

/// Posts `n` events, `parallel` at a time, in the background; records the acknowledged ones.
struct Load {
    acked: Arc<Mutex<Vec<Acked>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(url: &str, n: usize, parallel: usize, body: fn(usize) -> Value) -> Load {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicUsize::new(0));
        let http = reqwest::Client::new();
        let tasks = (0..parallel)
            .map(|_| {
                let (acked, stop, next, http) =
                    (acked.clone(), stop.clone(), next.clone(), http.clone());
                let url = url.to_string();
                tokio::spawn(async move {
                    loop {
                        let seq = next.fetch_add(1, Ordering::SeqCst);
                        if seq >= n || stop.load(Ordering::SeqCst) {
                            return;
                        }
                        if let Some((status, v)) = post(&http, &url, &body(seq)).await {
                            if (200..300).contains(&status) {
                                acked.lock().unwrap().push(Acked {
                                    seq,
                                    event_id: v["event_id"].as_str().unwrap().to_string(),
                                    runs: serde_json::from_value(v["runs"].clone()).unwrap(),
                                });
                            }
                        }
                    }
                })
            })
            .collect();
        Load { acked, stop, tasks }
    }

    fn acked_count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    async fn wait_acked(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.acked_count() < n {
            assert!(
                Instant::now() < deadline,
                "only {} events acknowledged",
                self.acked_count()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stop posting; posts already sent still count.
    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Wait for the posters to end; the acknowledged events.
    async fn join(self) -> Vec<Acked> {
        for t in self.tasks {
            t.await.unwrap();
        }
        let acked = self.acked.lock().unwrap().clone();
        acked
    }
}

/// Post `n` events and wait for every answer; all must be acknowledged.
async fn post_all(hub: &Hub, n: usize, parallel: usize, body: fn(usize) -> Value) -> Vec<Acked> {
    let acked = Load::start(&hub.url, n, parallel, body).join().await;
    assert_eq!(acked.len(), n, "every webhook is acknowledged");
    acked
}

// ------------------------------------------------------------ hub helpers

/// Every run in the store, by id.
async fn all_runs(hub: &Hub) -> HashMap<String, Value> {
    let mut runs = HashMap::new();
    let mut path = "/api/runs?limit=500".to_string();
    loop {
        let (status, page) = hub.api(&path).await;
        assert_eq!(status, 200, "{page}");
        for r in page["items"].as_array().unwrap() {
            runs.insert(r["id"].as_str().unwrap().to_string(), r.clone());
        }
        match page["next"].as_str() {
            Some(next) => path = format!("/api/runs?limit=500&before={next}"),
            None => return runs,
        }
    }
}

async fn queue_depth(hub: &Hub) -> u64 {
    let (status, q) = hub.api("/api/queue").await;
    assert_eq!(status, 200, "{q}");
    q["queue_depth"].as_u64().unwrap()
}

/// Wait until the run queue is empty: every run finished.
async fn wait_drained(hub: &Hub, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let depth = queue_depth(hub).await;
        if depth == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{depth} runs still queued after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The store's counters equal a full scan of its records, and its index
/// keys are exactly those of the records (`GET /api/store/stats?scan=true`).
async fn assert_counters_agree_with_a_scan(hub: &Hub) -> Value {
    let (status, stats) = hub.api("/api/store/stats?scan=true").await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["counts"], stats["scanned"], "{stats}");
    assert!(stats.get("problems").is_none(), "{stats}");
    stats
}

async fn api_post(hub: &Hub, path: &str) -> (u16, Value) {
    let resp = hub
        .http
        .post(format!("{}{path}", hub.url))
        .bearer_auth(&hub.token)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Every acknowledged event's runs succeeded, and each of their steps reached
/// the sink: every (run, step) key at least once.
fn assert_acked_runs_succeeded(
    acked: &[Acked],
    runs: &HashMap<String, Value>,
    keys: &HashMap<String, Vec<Call>>,
    steps: &[&str],
) {
    for a in acked {
        assert_eq!(a.runs.len(), 1, "{a:?}");
        for id in &a.runs {
            let run = runs
                .get(id)
                .unwrap_or_else(|| panic!("acknowledged run {id} lost"));
            assert_eq!(run["status"], "succeeded", "{run}");
            for s in steps {
                assert!(
                    keys.contains_key(&format!("{id}:{s}")),
                    "{id}:{s} never reached the sink"
                );
            }
        }
    }
}

fn history_statuses(step: &Value) -> Vec<Value> {
    step["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["http_status"].clone())
        .collect()
}

// ------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_load_loses_no_acknowledged_event_and_repeats_at_most_the_steps_in_flight() {
    const EVENTS: usize = 2000;
    const WORKERS: usize = 8;
    let sink = Sink::start(|_, _| Reply::ok()).await;
    let setup = Setup::new(&sink, RETRY, &recipe("", &["a", "b"]));
    let mut hub = setup.start(&["--workers", "8"]).await;

    let load = Load::start(&hub.url, EVENTS, 32, |i| event(i as u64, i));
    load.wait_acked(EVENTS / 2).await;
    let calls_before_kill = sink.calls().len();
    hub.kill(); // SIGKILL
    load.stop();
    let acked = load.join().await;
    assert!(
        acked.len() >= EVENTS / 2 && acked.len() < EVENTS,
        "{}",
        acked.len()
    );
    assert!(calls_before_kill > 0, "the hub was processing when killed");

    let hub = setup.start(&["--workers", "8"]).await;
    // What the kill left: counters written in the records' own batches
    // still equal a full scan (before and after the backlog drains).
    let stats = assert_counters_agree_with_a_scan(&hub).await;
    assert!(stats["counts"]["events"].as_u64().unwrap() >= acked.len() as u64);
    wait_drained(&hub, Duration::from_secs(40)).await;
    let stats = assert_counters_agree_with_a_scan(&hub).await;
    let runs = all_runs(&hub).await;
    assert_eq!(stats["counts"]["runs"]["succeeded"], runs.len(), "{stats}");
    let keys = sink.by_key();
    assert_acked_runs_succeeded(&acked, &runs, &keys, &["step1", "step2"]);
    // Stored but unacknowledged events (the answer was lost in the kill) ran too.
    for run in runs.values() {
        assert_eq!(run["status"], "succeeded", "{run}");
    }
    // Exactly one key per step of every run, and no key of anything else.
    let expected: HashSet<String> = runs
        .keys()
        .flat_map(|id| [format!("{id}:step1"), format!("{id}:step2")])
        .collect();
    let seen: HashSet<String> = keys.keys().cloned().collect();
    assert_eq!(seen, expected);
    // Only a call in flight at the kill (its record not yet durable) may be
    // repeated: one per worker at most, and only once.
    let repeated: Vec<_> = keys.iter().filter(|(_, c)| c.len() > 1).collect();
    assert!(
        repeated.len() <= WORKERS,
        "{} keys called more than once",
        repeated.len()
    );
    assert!(repeated.iter().all(|(_, c)| c.len() == 2), "{repeated:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_503_then_429_after_its_retry_after_then_succeed() {
    // Per step key: 503, then 429 with Retry-After: 1, then 200.
    let sink =
        Sink::start(
            |call, earlier| match earlier.iter().filter(|c| c.key == call.key).count() {
                0 => Reply::status(503),
                1 => Reply::status(429).header("Retry-After", "1"),
                _ => Reply::ok(),
            },
        )
        .await;
    let setup = Setup::new(&sink, RETRY, &recipe("", &["a"]));
    let hub = setup.start(&[]).await;
    let acked = post_all(&hub, 5, 5, |i| event(i as u64, i)).await;

    for a in &acked {
        let run = hub.wait_run(&a.runs[0]).await;
        assert_eq!(run["status"], "succeeded", "{run}");
        let step = &run["steps"][0];
        assert_eq!(step["attempts"], 3, "{step}");
        assert_eq!(
            history_statuses(step),
            vec![json!(503), json!(429), json!(200)]
        );
        assert_eq!(step["http_status"], 200);

        let calls = &sink.by_key()[&format!("{}:step1", a.runs[0])];
        let statuses: Vec<_> = calls.iter().map(|c| c.status).collect();
        assert_eq!(statuses, vec![Some(503), Some(429), Some(200)]);
        let after_429 = calls[2].at.duration_since(calls[1].answered.unwrap());
        assert!(
            after_429 + CLOCK_SLACK >= Duration::from_secs(1),
            "retried {after_429:?} after a 429 with Retry-After: 1"
        );
    }
    assert_eq!(sink.calls().len(), 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_that_never_succeeds_is_dead_lettered_and_runs_retry_resumes_at_it() {
    // step1 (/a) succeeds; step2 (/b) fails until the far end recovers.
    let sink = Sink::start(|call, _| match call.path.as_str() {
        "/b" => Reply::status(500),
        _ => Reply::ok(),
    })
    .await;
    let setup = Setup::new(&sink, RETRY, &recipe("", &["a", "b"]));
    let hub = setup.start(&[]).await;
    let acked = post_all(&hub, 2, 1, |i| event(i as u64, i)).await;
    let (one, two) = (acked[0].runs[0].clone(), acked[1].runs[0].clone());

    for id in [&one, &two] {
        let run = hub.wait_run(id).await;
        assert_eq!(run["status"], "dead", "{run}");
        assert_eq!(run["steps"][0]["status"], "succeeded");
        let step2 = &run["steps"][1];
        assert_eq!(
            (&step2["id"], &step2["status"], &step2["attempts"]),
            (&json!("step2"), &json!("failed"), &json!(4))
        );
        assert_eq!(history_statuses(step2), vec![json!(500); 4]);
        assert!(
            run["error"].as_str().unwrap().contains("after 4 attempts"),
            "{run}"
        );
    }
    let out = hub.cli(&["runs", "list", "--status", "dead"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listed = stdout(&out);
    assert!(listed.contains(&one) && listed.contains(&two), "{listed}");
    assert_eq!(
        listed.lines().filter(|l| l.contains(" dead ")).count(),
        2,
        "{listed}"
    );

    // The far end recovers: retry one run by id, then the recipe's failed ones.
    sink.set_script(|_, _| Reply::ok());
    let out = hub.cli(&["runs", "retry", &one]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("1 run(s) queued again\n{one}\n"));
    let out = hub.cli(&["runs", "retry", "--recipe", "durable", "--failed"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("1 run(s) queued again\n{two}\n"));

    for id in [&one, &two] {
        let run = hub.wait_run(id).await;
        assert_eq!(run["status"], "succeeded", "{run}");
        let step2 = &run["steps"][1];
        assert_eq!(step2["attempts"], 5, "{step2}");
        let rounds: Vec<_> = step2["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["round"].clone())
            .collect();
        assert_eq!(
            rounds,
            vec![json!(0), json!(0), json!(0), json!(0), json!(1)]
        );
        // step1 ran once; step2 four times, then once more.
        let keys = sink.by_key();
        assert_eq!(keys[&format!("{id}:step1")].len(), 1);
        assert_eq!(keys[&format!("{id}:step2")].len(), 5);
    }
    assert_eq!(sink.calls_to("/a").len(), 2);

    let (status, body) = api_post(&hub, &format!("/api/runs/{one}/retry")).await;
    assert_eq!(status, 409, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_and_concurrency_limits_hold_at_the_far_end_under_a_burst() {
    const EVENTS: usize = 70;
    let sink = Sink::start(|_, _| Reply::ok().delay(Duration::from_millis(100))).await;
    let policy = format!("{RETRY}\nlimits: {{ rate: 20/1s, concurrency: 3 }}");
    let setup = Setup::new(&sink, &policy, &recipe("", &["a"]));
    let hub = setup.start(&["--workers", "8"]).await;
    let acked = post_all(&hub, EVENTS, 35, |i| event(i as u64, i)).await;

    wait_drained(&hub, Duration::from_secs(30)).await;
    let runs = all_runs(&hub).await;
    assert_acked_runs_succeeded(&acked, &runs, &sink.by_key(), &["step1"]);
    let calls = sink.calls();
    assert_eq!(calls.len(), EVENTS);
    assert!(
        max_overlap(&calls) <= 3,
        "{} calls in flight at once",
        max_overlap(&calls)
    );
    let window = max_in_window(&calls, Duration::from_secs(1));
    assert!(window <= 20, "{window} calls arrived within one second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_answer_is_retried_with_the_same_key_and_the_side_effect_happens_once() {
    // The first request of a key performs the side effect, then the
    // connection drops; a repeat of the key is answered from the first.
    let sink = Sink::start(|call, earlier| {
        if earlier.iter().any(|c| c.key == call.key) {
            Reply::ok()
        } else {
            Reply::dropped()
        }
    })
    .await;
    let setup = Setup::new(&sink, RETRY, &recipe("", &["a"]));
    let hub = setup.start(&[]).await;
    let acked = post_all(&hub, 3, 3, |i| event(i as u64, i)).await;

    for a in &acked {
        let run = hub.wait_run(&a.runs[0]).await;
        assert_eq!(run["status"], "succeeded", "{run}");
        let step = &run["steps"][0];
        assert_eq!(
            history_statuses(step),
            vec![Value::Null, json!(200)],
            "{step}"
        );
        let first = &step["history"][0]["error"];
        assert!(
            first.as_str().unwrap().starts_with("connection failed"),
            "{step}"
        );
        let calls = &sink.by_key()[&format!("{}:step1", a.runs[0])];
        assert_eq!(
            calls.iter().map(|c| c.status).collect::<Vec<_>>(),
            vec![None, Some(200)]
        );
    }
    // Counting by key, one side effect per run.
    let effects: HashSet<_> = sink.calls().into_iter().map(|c| c.key).collect();
    assert_eq!(effects.len(), acked.len());
    assert_eq!(sink.calls().len(), 2 * acked.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_of_one_ticket_run_one_at_a_time_in_arrival_order() {
    const UPDATES: usize = 100;
    const TICKET: u64 = 42;
    let sink = Sink::start(|_, _| Reply::ok().delay(Duration::from_millis(2))).await;
    let setup = Setup::new(
        &sink,
        RETRY,
        &recipe(
            "concurrency: { key: \"{{ event.ticket.id }}\", limit: 1 }",
            &["a", "b"],
        ),
    );
    let hub = setup.start(&["--workers", "8"]).await;
    let mut acked = post_all(&hub, UPDATES, 25, |i| event(TICKET, i)).await;
    // Another ticket is not held up behind them.
    let (status, other) = post(&hub.http, &hub.url, &event(7, 1000)).await.unwrap();
    assert_eq!(status, 202, "{other}");

    wait_drained(&hub, Duration::from_secs(40)).await;
    let runs = all_runs(&hub).await;
    assert_acked_runs_succeeded(&acked, &runs, &sink.by_key(), &["step1", "step2"]);
    assert_eq!(runs.len(), UPDATES + 1);

    let calls: Vec<Call> = sink
        .calls()
        .into_iter()
        .filter(|c| c.body["ticket"] == TICKET)
        .collect();
    // Arrival order is the order of the event ids (time-ordered, monotonic).
    acked.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    let expected: Vec<(i64, &str)> = acked
        .iter()
        .flat_map(|a| [(a.seq as i64, "/a"), (a.seq as i64, "/b")])
        .collect();
    let got: Vec<(i64, &str)> = calls.iter().map(|c| (c.seq(), c.path.as_str())).collect();
    assert_eq!(got, expected);
    assert_eq!(max_overlap(&calls), 1);
    let other_call = sink
        .calls()
        .into_iter()
        .find(|c| c.body["ticket"] == 7)
        .unwrap();
    assert!(
        other_call.at < calls.last().unwrap().at,
        "ticket 7 waited behind ticket 42"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_load_exits_cleanly_and_loses_nothing() {
    const EVENTS: usize = 600;
    let sink = Sink::start(|_, _| Reply::ok().delay(Duration::from_millis(5))).await;
    let setup = Setup::new(&sink, RETRY, &recipe("", &["a", "b"]));
    let mut hub = setup
        .start(&["--workers", "8", "--shutdown-grace", "5"])
        .await;

    let load = Load::start(&hub.url, EVENTS, 16, |i| event(i as u64, i));
    load.wait_acked(EVENTS / 3).await;
    let sent = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(hub.child.id().to_string())
        .status()
        .unwrap();
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = hub.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running after the grace period"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
    load.stop();
    let acked = load.join().await;
    assert!(acked.len() < EVENTS, "the hub stopped accepting");

    let hub = setup.start(&["--workers", "8"]).await;
    wait_drained(&hub, Duration::from_secs(30)).await;
    let runs = all_runs(&hub).await;
    let keys = sink.by_key();
    assert_acked_runs_succeeded(&acked, &runs, &keys, &["step1", "step2"]);
    for run in runs.values() {
        assert_eq!(run["status"], "succeeded", "{run}");
    }
    // In-flight steps finished and were recorded before the exit: no call repeated.
    assert_eq!(keys.len(), 2 * runs.len());
    let repeated: Vec<_> = keys
        .iter()
        .filter(|(_, c)| c.len() > 1)
        .map(|(k, _)| k)
        .collect();
    assert!(repeated.is_empty(), "{repeated:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_circuit_breaker_stops_calls_for_its_cooldown_then_runs_complete() {
    const EVENTS: usize = 5;
    // The first three calls fail, later ones succeed.
    let sink = Sink::start(|_, earlier| {
        if earlier.len() < 3 {
            Reply::status(500)
        } else {
            Reply::ok()
        }
    })
    .await;
    // Concurrency 1: no call is already on its way when the breaker opens.
    let policy = "retry: { attempts: 4, backoff: 50ms, max_backoff: 200ms }\n\
                  limits: { concurrency: 1 }\n\
                  circuit_breaker: { failures: 3, cooldown: 1s }";
    let setup = Setup::new(&sink, policy, &recipe("", &["a"]));
    let hub = setup.start(&[]).await;
    let acked = post_all(&hub, EVENTS, EVENTS, |i| event(i as u64, i)).await;

    let mut attempts = 0;
    for a in &acked {
        let run = hub.wait_run(&a.runs[0]).await;
        assert_eq!(run["status"], "succeeded", "{run}");
        attempts += run["steps"][0]["attempts"].as_u64().unwrap();
    }
    let calls = sink.calls();
    assert_eq!(calls.len(), EVENTS + 3);
    assert_eq!(
        attempts,
        calls.len() as u64,
        "an open breaker spends no attempt"
    );
    let statuses: Vec<_> = calls.iter().map(|c| c.status.unwrap()).collect();
    assert_eq!(statuses[..4], [500, 500, 500, 200]);
    let quiet = calls[3].at.duration_since(calls[2].answered.unwrap());
    assert!(
        quiet + CLOCK_SLACK >= Duration::from_secs(1),
        "a call {quiet:?} after the third failure, inside the 1s cool-down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_reports_overload_while_webhooks_are_still_accepted() {
    const EVENTS: usize = 12;
    // Every call waits until released: the queue cannot drain.
    let sink = Sink::start(|_, _| Reply::ok().held()).await;
    let setup = Setup::new(&sink, RETRY, &recipe("", &["a"]));
    let hub = setup.start(&["--max-queue", "5", "--workers", "4"]).await;

    let ready = |hub: &Hub| {
        let req = hub.http.get(format!("{}/readyz", hub.url));
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let mut body = resp.json::<Value>().await.unwrap();
            // The catalog's own status is the reload tests' business.
            let catalog = body.as_object_mut().unwrap().remove("catalog").unwrap();
            assert_eq!(catalog["status"], "current", "{catalog}");
            (status, body)
        }
    };
    assert_eq!(
        ready(&hub).await,
        (
            200,
            json!({"status": "ready", "queue_depth": 0, "max_queue": 5})
        )
    );
    let acked = post_all(&hub, EVENTS, 4, |i| event(i as u64, i)).await;
    assert_eq!(
        acked.len(),
        EVENTS,
        "webhooks are accepted while overloaded"
    );

    let (status, body) = ready(&hub).await;
    assert_eq!(
        (status, &body["status"]),
        (503, &json!("overloaded")),
        "{body}"
    );
    assert_eq!(body["queue_depth"], EVENTS);
    let (_, queue) = hub.api("/api/queue").await;
    assert_eq!(
        queue,
        json!({"queue_depth": EVENTS, "max_queue": 5, "overloaded": true})
    );

    sink.release();
    wait_drained(&hub, Duration::from_secs(20)).await;
    assert_eq!(
        ready(&hub).await,
        (
            200,
            json!({"status": "ready", "queue_depth": 0, "max_queue": 5})
        )
    );
    let runs = all_runs(&hub).await;
    assert_acked_runs_succeeded(&acked, &runs, &sink.by_key(), &["step1"]);
}

/// Poll `GET /api/store/stats` until `done` holds (or fail after `limit`).
async fn wait_stats(hub: &Hub, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let (status, stats) = hub.api("/api/store/stats").await;
        assert_eq!(status, 200, "{stats}");
        if done(&stats) {
            return stats;
        }
        assert!(Instant::now() < deadline, "still {stats} after {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_finished_events_and_keeps_unfinished_runs_and_dead_letters() {
    // Ticket 100 always fails (a dead letter after 4 attempts), ticket 200's
    // call hangs until released (a run still running); the rest succeed.
    let sink = Sink::start(|c, _| match c.body["ticket"].as_u64() {
        Some(100) => Reply::status(503),
        Some(200) => Reply::ok().held(),
        _ => Reply::ok(),
    })
    .await;
    let setup = Setup::new(&sink, RETRY, &recipe("", &["a"]));
    let hub = setup.start(&["--retention", "1s"]).await;
    let mut posted = Vec::new();
    for (i, ticket) in [100, 200].into_iter().chain(1..=20).enumerate() {
        let (status, body) = post(&hub.http, &hub.url, &event(ticket, i)).await.unwrap();
        assert_eq!(status, 202, "{body}");
        posted.push((ticket, body["event_id"].as_str().unwrap().to_string()));
    }
    // Within a few passes only the dead letter and the running run are
    // left, each with its event.
    let stats = wait_stats(&hub, Duration::from_secs(30), |s| {
        s["counts"]["events"] == 2 && s["counts"]["runs"]["dead"] == 1
    })
    .await;
    assert_eq!(stats["counts"]["runs"]["running"], 1, "{stats}");
    assert_eq!(stats["counts"]["runs"]["succeeded"], 0, "{stats}");
    let stats = assert_counters_agree_with_a_scan(&hub).await;
    assert_eq!(stats["counts"]["events"], 2, "{stats}");
    let (_, dead) = hub.api("/api/runs?status=dead").await;
    let dead = &dead["items"][0];
    assert_eq!(
        dead["event_id"].as_str(),
        Some(posted[0].1.as_str()),
        "{dead}"
    );
    let (status, _) = hub.api(&format!("/api/events/{}", posted[0].1)).await;
    assert_eq!(status, 200, "the dead letter's event is kept");
    let (status, _) = hub.api(&format!("/api/events/{}", posted[5].1)).await;
    assert_eq!(status, 404, "an old finished event is gone");

    // The held call answers: its run finishes and goes at the next pass.
    sink.release();
    wait_stats(&hub, Duration::from_secs(30), |s| {
        s["counts"]["events"] == 1 && s["counts"]["runs"]["running"] == 0
    })
    .await;
    assert_counters_agree_with_a_scan(&hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_at_its_rate_limit_holds_no_worker_and_delays_no_other_connector() {
    const SLOW: usize = 1000;
    const QUICK: usize = 20;
    let sink = Sink::start(|_, _| Reply::ok()).await;
    // `sink.a` may be called once a second; `quick.b` (same far end) has no limits.
    let policy = format!("{RETRY}\nlimits: {{ rate: 1/1s }}");
    let setup = Setup::new(&sink, &policy, &recipe("", &["a"]));
    write(
        &setup.dir.path().join("connectors/quick.yaml"),
        "name: quick\nbase_url: http://127.0.0.1:1\nactions:\n  b:\n    inputs: { ticket: {}, seq: {} }\n    method: POST\n    path: /b\n    body: { ticket: \"{{ input.ticket }}\", seq: \"{{ input.seq }}\" }\n",
    );
    write(
        &setup.dir.path().join("recipes/quick.yaml"),
        "name: quick\non: { connector: sink, event: ticket.created }\nsteps:\n  - id: step1\n    call: quick.b\n    with: { ticket: \"{{ event.ticket.id }}\", seq: \"{{ event.seq }}\" }\n",
    );
    let mut opts = setup.options(&["--workers", "4"]);
    opts.env
        .push(("SWITCHBOARD_BASE_URL_QUICK".into(), sink.url.clone()));
    let hub = Hub::start(opts).await;

    // A thousand runs queue up behind the slow connector's limit ...
    post_all(&hub, SLOW, 16, |i| event(i as u64, i)).await;
    // ... then runs of the other connector arrive.
    let quick = post_all(
        &hub,
        QUICK,
        4,
        |i| json!({"type": "ticket.created", "ticket": {"id": 100_000 + i}, "seq": i}),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    for a in &quick {
        loop {
            let (_, run) = hub.api(&format!("/api/runs/{}", a.runs[0])).await;
            if run["status"] == "succeeded" {
                break;
            }
            assert!(Instant::now() < deadline, "{run}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Every quick run finished while nearly all slow runs still wait: the
    // slow connector's limit held no worker.
    let slow_done = sink.calls_to("/a").len();
    assert_eq!(sink.calls_to("/b").len(), QUICK);
    assert!(
        slow_done < SLOW / 10,
        "{slow_done} slow calls made before the quick runs were done"
    );
    // The slow runs still wait (in the queue, not in workers), and none was
    // called beyond its limit.
    let window = max_in_window(&sink.calls_to("/a"), Duration::from_secs(1));
    assert!(window <= 1, "{window} slow calls within one second");
    let unfinished = all_runs(&hub)
        .await
        .values()
        .filter(|r| r["recipe"] == "durable" && r["status"] != "succeeded")
        .count();
    assert!(
        unfinished >= SLOW - SLOW / 10,
        "{unfinished} slow runs unfinished"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_answers_503_with_retry_after_above_max_queue_and_stores_nothing_then() {
    // Every call waits until released: the queue cannot drain.
    let sink = Sink::start(|_, _| Reply::ok().held()).await;
    let setup = Setup::new(&sink, RETRY, &recipe("", &["a"]));
    let hub = setup
        .start(&["--max-queue", "3", "--backpressure", "--workers", "2"])
        .await;
    let http = reqwest::Client::new();
    let raw = |i: usize| serde_json::to_vec(&event(i as u64, i)).unwrap();
    let mut acked = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    // Accepted until the sampled depth passes the bound, then refused.
    let refused = loop {
        let body = raw(acked.len());
        let resp = http
            .post(format!("{}/hooks/sink", hub.url))
            .header("Content-Type", "application/json")
            .header("X-Signature", hmac_hex(SIGNING_KEY, &body))
            .body(body)
            .send()
            .await
            .unwrap();
        if resp.status() == 503 {
            break resp;
        }
        assert_eq!(resp.status(), 202);
        let v: Value = resp.json().await.unwrap();
        acked.push(v["event_id"].as_str().unwrap().to_string());
        assert!(Instant::now() < deadline, "never refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(acked.len() > 3, "refused at {} queued", acked.len());
    assert_eq!(refused.headers()["retry-after"], "5");
    // A refused delivery stored nothing: only the acknowledged events exist.
    let (_, events) = hub.api("/api/events?limit=500").await;
    let stored: HashSet<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(stored, acked.iter().map(String::as_str).collect());
    // Once the queue drains, webhooks are accepted again.
    sink.release();
    wait_drained(&hub, Duration::from_secs(20)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _) = post(&http, &hub.url, &event(9_999, 9_999)).await.unwrap();
        if status == 202 {
            break;
        }
        assert_eq!(status, 503);
        assert!(Instant::now() < deadline, "still refused after draining");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_worker_busy_an_answer_waits_for_one_up_to_the_handoff_wait() {
    // One worker, held by its call: 1 run in it and 256 in the hand-off
    // (its capacity) fill it; the next webhook's answer waits for a worker.
    const FULL: usize = 257;
    let sink = Sink::start(|_, _| Reply::ok().held()).await;
    let setup = Setup::new(&sink, RETRY, &recipe("", &["a"]));
    let hub = setup
        .start(&["--workers", "1", "--handoff-wait", "1h"])
        .await;
    post_all(&hub, FULL, 8, |i| event(i as u64, i)).await;
    let http = reqwest::Client::new();
    let url = hub.url.clone();
    let waiting = tokio::spawn(async move { post(&http, &url, &event(9_999, 9_999)).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "answered with every worker busy");
    assert_eq!(sink.calls().len(), 1);
    // A worker frees up: the answer comes, and every run is done.
    sink.release();
    let (status, accepted) = waiting.await.unwrap().unwrap();
    assert_eq!(status, 202, "{accepted}");
    wait_drained(&hub, Duration::from_secs(60)).await;
    assert_eq!(sink.calls().len(), FULL + 1);
    drop(hub);

    // `--handoff-wait 0s`: never wait; the runs a worker cannot take go
    // to the store's queue, and every webhook is answered at once.
    let sink = Sink::start(|_, _| Reply::ok().held()).await;
    let setup = Setup::new(&sink, RETRY, &recipe("", &["a"]));
    let hub = setup
        .start(&["--workers", "1", "--handoff-wait", "0s"])
        .await;
    post_all(&hub, FULL + 40, 8, |i| event(i as u64, i)).await;
    assert!(queue_depth(&hub).await >= 40);
    assert_eq!(sink.calls().len(), 1);
    sink.release();
    wait_drained(&hub, Duration::from_secs(60)).await;
    assert_eq!(sink.calls().len(), FULL + 40);
}

/// Several nodes on one PostgreSQL: the same sink and helpers.
#[path = "nodes.rs"]
mod nodes;
