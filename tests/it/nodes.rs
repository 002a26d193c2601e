//! Several `switchboard serve` nodes on one PostgreSQL (a schema of the
//! test's own in the `test` database): duplicate deliveries across nodes,
//! kill -9 of a node mid-load, a schedule slot and a wait with three nodes,
//! PostgreSQL unavailable for 10 s under load (through a TCP proxy the
//! test owns), and an idle node taking a run another node queued at once.
//! A child of `durability`: the same sink, load and helpers.

use super::*;

/// One cluster test at a time: three nodes hold up to 3 × 18 connections,
/// and PostgreSQL's default `max_connections` is 100.
static CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A node of the cluster: the setup's connectors and recipes, the
/// database's schema, a data dir of its own (its admin token file).
async fn node(setup: &Setup, db: &str, name: &str, extra: &[&str]) -> Hub {
    let mut opts = setup.options(extra);
    opts.args.extend(["--store".to_string(), db.to_string()]);
    opts.data = Some(setup.dir.path().join(name));
    Hub::start(opts).await
}

/// Every run in the database, through one node's admin API.
async fn runs_of(hub: &Hub) -> HashMap<String, Value> {
    all_runs(hub).await
}

/// POST one signed body to `url` with a delivery id header.
async fn post_delivery(http: &reqwest::Client, url: &str, body: &Value, id: &str) -> (u16, Value) {
    let raw = serde_json::to_vec(body).unwrap();
    let resp = http
        .post(format!("{url}/hooks/sink"))
        .header("Content-Type", "application/json")
        .header("X-Signature", hmac_hex(SIGNING_KEY, &raw))
        .header("X-Delivery", id)
        .body(raw)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_duplicate_deliveries_across_three_nodes_store_one_event() {
    let _cluster = CLUSTER.lock().await;
    let db = PgSchema::fresh();
    let sink = Sink::start(|_, _| Reply::ok()).await;
    let setup = Setup::new(&sink, RETRY, &recipe("", &["a"]));
    // The sink connector with a delivery id.
    let conn = connector(RETRY).replace(
        "  event_type: { path: \"$.type\" }",
        "  event_type: { path: \"$.type\" }\n  event_id: { header: X-Delivery }",
    );
    write(&setup.dir.path().join("connectors/sink.yaml"), &conn);
    let nodes = [
        node(&setup, &db.url, "n1", &[]).await,
        node(&setup, &db.url, "n2", &[]).await,
        node(&setup, &db.url, "n3", &[]).await,
    ];
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    let http = reqwest::Client::new();
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..48)
        .map(|_| {
            let (http, urls, next) = (http.clone(), urls.clone(), next.clone());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= 1000 {
                        return answers;
                    }
                    let url = &urls[i % urls.len()];
                    answers.push(post_delivery(&http, url, &event(7, 0), "dup-1").await);
                }
            })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.extend(t.await.unwrap());
    }
    assert_eq!(answers.len(), 1000);
    let first = answers[0].1["event_id"].as_str().unwrap().to_string();
    for (status, body) in &answers {
        assert!((200..300).contains(status), "{status} {body}");
        assert_eq!(body["event_id"], first.as_str(), "{body}");
    }
    let (_, stats) = nodes[2].api("/api/store/stats").await;
    assert_eq!(stats["counts"]["events"], 1, "{stats}");
    let runs = runs_of(&nodes[0]).await;
    assert_eq!(runs.len(), 1, "one set of runs");
    let id = runs.keys().next().unwrap().clone();
    nodes[1].wait_run(&id).await;
    assert_eq!(sink.by_key().len(), 1, "one effect");
    drop(nodes);
    db.drop_now();
}

/// Load spread round robin over the nodes, as a load balancer does: event
/// `i` goes to node `i % n`; a node that does not answer 2xx (killed) gets
/// it sent to the next one. Records which node acknowledged each event.
struct Spread {
    acked: Arc<Mutex<Vec<(usize, Acked)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Spread {
    fn start(urls: Vec<String>, from: usize, n: usize, parallel: usize) -> Spread {
        let acked: Arc<Mutex<Vec<(usize, Acked)>>> = Arc::default();
        let next = Arc::new(AtomicUsize::new(0));
        let http = reqwest::Client::new();
        let tasks = (0..parallel)
            .map(|_| {
                let (acked, next, http, urls) =
                    (acked.clone(), next.clone(), http.clone(), urls.clone());
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= n {
                            return;
                        }
                        let seq = from + i;
                        let body = event(seq as u64, seq);
                        for attempt in 0.. {
                            assert!(attempt < 200, "event {seq} never acknowledged");
                            let node = (i + attempt) % urls.len();
                            match post(&http, &urls[node], &body).await {
                                Some((s, v)) if (200..300).contains(&s) => {
                                    acked.lock().unwrap().push((
                                        node,
                                        Acked {
                                            seq,
                                            event_id: v["event_id"].as_str().unwrap().to_string(),
                                            runs: serde_json::from_value(v["runs"].clone())
                                                .unwrap(),
                                        },
                                    ));
                                    break;
                                }
                                _ => tokio::time::sleep(Duration::from_millis(10)).await,
                            }
                        }
                    }
                })
            })
            .collect();
        Spread { acked, tasks }
    }

    async fn wait_acked_by(&self, node: usize, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = self
                .acked
                .lock()
                .unwrap()
                .iter()
                .filter(|a| a.0 == node)
                .count();
            if got >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {node} acknowledged only {got}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn join(self) -> Vec<Acked> {
        for t in self.tasks {
            t.await.unwrap();
        }
        let acked = self
            .acked
            .lock()
            .unwrap()
            .iter()
            .map(|a| a.1.clone())
            .collect();
        acked
    }
}

/// One wave of load: `n` events spread over the nodes, `seq` from `from`;
/// node `victim` is killed (kill -9) once it acknowledged `kill_at`, and
/// its share goes to the others. Every event is acknowledged by some node.
async fn wave(
    nodes: &mut [Hub],
    n: usize,
    from: usize,
    victim: usize,
    kill_at: usize,
) -> Vec<Acked> {
    let urls = nodes.iter().map(|h| h.url.clone()).collect();
    let load = Spread::start(urls, from, n, 8 * nodes.len());
    load.wait_acked_by(victim, kill_at).await;
    nodes[victim].kill(); // SIGKILL, mid-run
    let acked = load.join().await;
    assert_eq!(acked.len(), n, "every event acknowledged by a node");
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_node_mid_load_twice_loses_nothing_and_each_step_acts_once() {
    let _cluster = CLUSTER.lock().await;
    // 3,000 events in two waves of 1,500, round robin over three nodes.
    const WAVE: usize = 1_500;
    let db = PgSchema::fresh();
    let sink = Sink::start(|_, _| Reply::ok().delay(Duration::from_millis(2))).await;
    let setup = Setup::new(&sink, RETRY, &recipe("", &["a", "b"]));
    let args = ["--workers", "4"];
    let mut nodes = vec![
        node(&setup, &db.url, "n1", &args).await,
        node(&setup, &db.url, "n2", &args).await,
        node(&setup, &db.url, "n3", &args).await,
    ];
    // Wave 1: node 1 is killed mid-run and restarted. The others take over
    // its runs (leased by a node that is gone: due again at once) and
    // everything drains.
    let mut acked = wave(&mut nodes, WAVE, 0, 0, WAVE / 9).await;
    nodes[0] = node(&setup, &db.url, "n1", &args).await;
    wait_drained(&nodes[2], Duration::from_secs(120)).await;
    // Wave 2: node 2 is killed mid-run. (Between the waves the backlog
    // drains: a run a killed node held, even one waiting in its hand-off
    // channel, counts a start; a second kill of the node running it then
    // would fail it by the poison-run guard, as on one node.)
    acked.extend(wave(&mut nodes, WAVE, 10_000, 1, WAVE / 9).await);
    assert_eq!(acked.len(), 2 * WAVE);
    let live = &nodes[2];
    wait_drained(live, Duration::from_secs(120)).await;
    let runs = runs_of(live).await;
    let keys = sink.by_key();
    assert_acked_runs_succeeded(&acked, &runs, &keys, &["step1", "step2"]);
    // Stored but unacknowledged events (the answer was lost in the kill) ran too.
    for run in runs.values() {
        assert_eq!(run["status"], "succeeded", "{run}");
    }
    // Each step acted once by its key: exactly the keys of the stored runs.
    let expected: HashSet<String> = runs
        .keys()
        .flat_map(|id| [format!("{id}:step1"), format!("{id}:step2")])
        .collect();
    let seen: HashSet<String> = keys.keys().cloned().collect();
    assert_eq!(seen, expected);
    // A repeat is only a call in flight on a killed node (4 workers each).
    let repeated = keys.values().filter(|c| c.len() > 1).count();
    assert!(repeated <= 8, "{repeated} keys called more than once");
    drop(nodes);
    db.drop_now();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_slot_and_a_wait_fire_once_with_three_nodes() {
    let _cluster = CLUSTER.lock().await;
    let db = PgSchema::fresh();
    let sink = Sink::start(|_, _| Reply::ok()).await;
    let setup = Setup::new(&sink, RETRY, &recipe("", &["a"]));
    write(
        &setup.dir.path().join("recipes/tick.yaml"),
        r#"name: tick
on: { schedule: "* * * * * *" }
steps:
  - call: sink.a
    with: { ticket: "{{ event.slot_ms }}", seq: 0 }
  - wait: 2s
  - call: sink.b
    with: { ticket: "{{ event.slot_ms }}", seq: 1 }
"#,
    );
    let nodes = [
        node(&setup, &db.url, "n1", &[]).await,
        node(&setup, &db.url, "n2", &[]).await,
        node(&setup, &db.url, "n3", &[]).await,
    ];
    // Let a few slots pass with all three nodes scheduling them.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let b = sink.calls_to("/b").len();
        if b >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "only {b} waits ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events = nodes[0].items("/api/events").await;
    let mut slots: Vec<String> = events
        .iter()
        .map(|e| e["delivery_id"].as_str().unwrap().to_string())
        .collect();
    let n = slots.len();
    slots.sort();
    slots.dedup();
    assert_eq!(slots.len(), n, "a slot stored twice");
    for e in &events {
        assert_eq!(e["runs"].as_array().unwrap().len(), 1, "{e}");
    }
    // One effect per slot before the wait and one after it, by key and by slot.
    for path in ["/a", "/b"] {
        let calls = sink.calls_to(path);
        let mut tickets: Vec<String> = calls.iter().map(|c| c.body["ticket"].to_string()).collect();
        let keys: HashSet<_> = calls.iter().map(|c| c.key.clone()).collect();
        let total = tickets.len();
        tickets.sort();
        tickets.dedup();
        assert_eq!(
            tickets.len(),
            total,
            "{path}: a slot acted twice: {calls:?}"
        );
        assert_eq!(keys.len(), total, "{path}: a key repeated");
    }
    drop(nodes);
    db.drop_now();
}

/// A TCP proxy to PostgreSQL the test can cut: while cut, it refuses new
/// connections and closes the open ones.
struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    async fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (c, cs) = (cut.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if c.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut out) = TcpStream::connect("127.0.0.1:5432").await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                cs.lock().unwrap().push(task.abort_handle());
            }
        });
        Proxy { port, cut, conns }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
        if cut {
            for c in self.conns.lock().unwrap().drain(..) {
                c.abort();
            }
        }
    }
}

/// One webhook's answer: status and `Retry-After` (`Err`: no answer, and
/// why).
async fn post_answer(
    http: &reqwest::Client,
    url: &str,
    body: &Value,
) -> Result<(u16, Option<String>, Value), String> {
    let raw = serde_json::to_vec(body).unwrap();
    let resp = http
        .post(format!("{url}/hooks/sink"))
        .header("Content-Type", "application/json")
        .header("X-Signature", hmac_hex(SIGNING_KEY, &raw))
        .body(raw)
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    Ok((
        status,
        retry_after,
        resp.json().await.unwrap_or(Value::Null),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unavailable_for_10_s_under_load_answers_503_loses_nothing_and_recovers_without_restart(
) {
    let _cluster = CLUSTER.lock().await;
    let db = PgSchema::fresh();
    let proxy = Proxy::start().await;
    let url = db
        .url
        .replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port));
    let sink = Sink::start(|_, _| Reply::ok()).await;
    let setup = Setup::new(&sink, RETRY, &recipe("", &["a"]));
    let hub = node(&setup, &url, "n1", &[]).await;
    // Load all along: 8 senders post until told to stop; each answer is
    // kept with whether the database was cut when it came.
    let stop = Arc::new(AtomicBool::new(false));
    let cut = Arc::new(AtomicBool::new(false));
    type Answer = (bool, Result<(u16, Option<String>, Value), String>);
    let answers: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let next = Arc::new(AtomicUsize::new(0));
    // A sender drops an idle connection before the hub does (its idle
    // keep-alive limit is the 10 s header timeout), as well-behaved clients
    // do: otherwise a request can go out on a connection the hub is closing
    // at that instant, and never reach it.
    let http = reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let senders: Vec<_> = (0..8)
        .map(|_| {
            let (stop, cut, answers, next, http, url) = (
                stop.clone(),
                cut.clone(),
                answers.clone(),
                next.clone(),
                http.clone(),
                hub.url.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let seq = next.fetch_add(1, Ordering::SeqCst);
                    let answer = post_answer(&http, &url, &event(seq as u64, seq)).await;
                    let refused = !matches!(&answer, Ok((s, _, _)) if (200..300).contains(s));
                    answers
                        .lock()
                        .unwrap()
                        .push((cut.load(Ordering::SeqCst), answer));
                    if refused {
                        // A sender waits a little before trying again.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            })
        })
        .collect();
    let acked = |answers: &[Answer]| {
        answers
            .iter()
            .filter(|(_, a)| matches!(a, Ok((s, _, _)) if (200..300).contains(s)))
            .count()
    };
    let wait_acked = |n: usize| {
        let answers = answers.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while acked(&answers.lock().unwrap()) < n {
                assert!(
                    Instant::now() < deadline,
                    "only {} acknowledged",
                    acked(&answers.lock().unwrap())
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_acked(200).await;
    // PostgreSQL is unavailable for 10 s: connections cut, new ones refused.
    cut.store(true, Ordering::SeqCst);
    proxy.set_cut(true);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (status, ready) = hub.api("/readyz").await;
    assert_eq!(status, 503, "not ready while the database is away: {ready}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = acked(&answers.lock().unwrap());
    proxy.set_cut(false);
    cut.store(false, Ordering::SeqCst);
    // Recovery without a restart: the same load is acknowledged again.
    wait_acked(before + 200).await;
    stop.store(true, Ordering::SeqCst);
    for s in senders {
        s.await.unwrap();
    }
    let answers = std::mem::take(&mut *answers.lock().unwrap());
    let mut refused_while_cut = 0;
    let mut acked_runs = Vec::new();
    for (during_cut, answer) in &answers {
        match answer {
            Ok((s, _, v)) if (200..300).contains(s) => {
                acked_runs.push(v["runs"][0].as_str().unwrap().to_string())
            }
            Ok((503, retry_after, v)) => {
                assert!(retry_after.is_some(), "503 without Retry-After: {v}");
                refused_while_cut += usize::from(*during_cut);
            }
            other => panic!("every webhook is answered 2xx or 503: {other:?}"),
        }
    }
    assert!(
        refused_while_cut > 0,
        "webhooks are refused while the database is away"
    );
    wait_drained(&hub, Duration::from_secs(60)).await;
    let runs = runs_of(&hub).await;
    for id in &acked_runs {
        let run = runs
            .get(id)
            .unwrap_or_else(|| panic!("acknowledged run {id} lost"));
        assert_eq!(run["status"], "succeeded", "{run}");
    }
    drop(hub);
    db.drop_now();
}

/// `ticket` of a call as the sink read it (a string or a number).
fn ticket_of(c: &Call) -> String {
    c.body["ticket"].to_string().trim_matches('"').to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_queued_on_a_busy_node_is_taken_at_once_by_an_idle_one() {
    let _cluster = CLUSTER.lock().await;
    let db = PgSchema::fresh();
    // Ticket 2 is held until the end: node A's only worker stays busy with
    // it. Ticket 1 fails (400, not retried) until `fixed`.
    let fixed = Arc::new(AtomicBool::new(false));
    let f = fixed.clone();
    let sink = Sink::start(move |c, _| match ticket_of(c).as_str() {
        "2" => Reply::ok().held(),
        _ if f.load(Ordering::SeqCst) => Reply::ok(),
        _ => Reply::status(400),
    })
    .await;
    let setup = Setup::new(&sink, RETRY, &recipe("", &["a"]));
    // The held call must outlast the test (the connector's 5 s would free A).
    let conn = connector(RETRY).replace("timeout: 5s", "timeout: 300s");
    write(&setup.dir.path().join("connectors/sink.yaml"), &conn);
    let args = ["--workers", "1"];
    let a = node(&setup, &db.url, "a", &args).await;
    let b = node(&setup, &db.url, "b", &args).await;
    let http = reqwest::Client::new();
    let (status, failing) = post(&http, &a.url, &event(1, 0)).await.unwrap();
    assert_eq!(status, 202, "{failing}");
    let failing = failing["runs"][0].as_str().unwrap().to_string();
    assert_eq!(a.wait_run(&failing).await["status"], "failed");
    let (status, held) = post(&http, &a.url, &event(2, 1)).await.unwrap();
    assert_eq!(status, 202, "{held}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sink.calls().iter().any(|c| ticket_of(c) == "2") {
        assert!(Instant::now() < deadline, "ticket 2 never reached the sink");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A's worker is held. The far end is fixed and the run retried on A:
    // queued in the database, it can only run on B, whose worker is idle
    // (sleeping until its 60 s look at the queue, unless told).
    fixed.store(true, Ordering::SeqCst);
    let (status, body) = api_post(&a, &format!("/api/runs/{failing}/retry")).await;
    assert_eq!(status, 200, "{body}");
    // Well before B's own look at the queue (60 s after it went idle).
    let run = b.wait_run(&failing).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let calls = sink.calls();
    let hold = calls.iter().find(|c| ticket_of(c) == "2").unwrap();
    assert!(hold.answered.is_none(), "A's worker was busy all along");
    assert_eq!(calls.iter().filter(|c| ticket_of(c) == "1").count(), 2);
    sink.release();
    let run = a.wait_run(held["runs"][0].as_str().unwrap()).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    drop((a, b));
    db.drop_now();
}

/// `store stats` on PostgreSQL: the counts, read directly and through a
/// node's API; `--keys` (the embedded store's key breakdown) is refused
/// with why, not answered with an empty table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_stats_on_postgres_counts_and_refuses_keys() {
    let db = PgSchema::fresh();
    let sink = Sink::start(|_, _| Reply::ok()).await;
    let setup = Setup::new(&sink, RETRY, &recipe("", &["a"]));
    let hub = node(&setup, &db.url, "n1", &[]).await;
    let (status, body) = post(&reqwest::Client::new(), &hub.url, &event(1, 0))
        .await
        .unwrap();
    assert_eq!(status, 202, "{body}");
    hub.wait_run(body["runs"][0].as_str().unwrap()).await;

    let direct = ["store", "stats", "--json", "--store", db.url.as_str()];
    let out = hub.cli(&direct);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let stats: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["counts"]["events"], 1, "{stats}");
    assert_eq!(stats.get("keys"), None, "{stats}");
    let (status, api) = hub.api("/api/store/stats").await;
    assert_eq!(status, 200, "{api}");
    assert_eq!(api["counts"], stats["counts"]);

    let out = hub.cli(&[&direct[..], &["--keys"]].concat());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("`--keys` counts the keys of the embedded store"),
        "{}",
        stderr(&out)
    );
    let (status, refused) = hub.api("/api/store/stats?keys=true").await;
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("this store is PostgreSQL"),
        "{refused}"
    );
}
