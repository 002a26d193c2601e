//! Several `switchboard serve` nodes on one PostgreSQL (a schema of the
//! test's own in the `test` database): duplicate deliveries across nodes,
//! kill -9 of a node mid-load, a schedule slot and a wait with three nodes,
//! and PostgreSQL cut off under load (through a TCP proxy the test owns).
//! A child of `durability`: the same sink, load and helpers.

use super::*;

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

/// One wave of load: `per_node` events to each node, `seq` from `from`;
/// node `victim` is killed (kill -9) once `kill_at` of its own were
/// acknowledged. The acknowledged events of every node.
async fn wave(
    nodes: &mut [Hub],
    per_node: usize,
    from: usize,
    victim: usize,
    kill_at: usize,
) -> Vec<Acked> {
    static FROM: AtomicUsize = AtomicUsize::new(0);
    FROM.store(from, Ordering::SeqCst);
    let body: fn(usize) -> Value = |i| {
        let seq = FROM.load(Ordering::SeqCst) + i;
        event(seq as u64, seq)
    };
    let loads: Vec<Load> = nodes
        .iter()
        .map(|n| Load::start(&n.url, per_node, 8, body))
        .collect();
    loads[victim].wait_acked(kill_at).await;
    nodes[victim].kill(); // SIGKILL, mid-run
    loads[victim].stop();
    let mut acked = Vec::new();
    for l in loads {
        acked.extend(l.join().await);
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_node_mid_load_twice_loses_nothing_and_each_step_acts_once() {
    const PER_NODE: usize = 300;
    let db = PgSchema::fresh();
    let sink = Sink::start(|_, _| Reply::ok().delay(Duration::from_millis(2))).await;
    let setup = Setup::new(&sink, RETRY, &recipe("", &["a", "b"]));
    let args = ["--workers", "4"];
    let mut nodes = vec![
        node(&setup, &db.url, "n1", &args).await,
        node(&setup, &db.url, "n2", &args).await,
        node(&setup, &db.url, "n3", &args).await,
    ];
    // Wave 1: events round robin over three nodes; node 1 is killed mid-run
    // and restarted. The others take over its runs (leased by a node that
    // is gone: due again at once) and everything drains.
    let mut acked = wave(&mut nodes, PER_NODE, 0, 0, PER_NODE / 3).await;
    nodes[0] = node(&setup, &db.url, "n1", &args).await;
    wait_drained(&nodes[2], Duration::from_secs(90)).await;
    // Wave 2: node 2 is killed mid-run. (Between the waves the backlog
    // drains: a run a killed node held, even one waiting in its hand-off
    // channel, counts a start; a second kill of the node running it then
    // would fail it by the poison-run guard, as on one node.)
    acked.extend(wave(&mut nodes, PER_NODE, 10_000, 1, PER_NODE / 3).await);
    assert!(acked.len() > PER_NODE * 2, "{}", acked.len());
    let live = &nodes[2];
    wait_drained(live, Duration::from_secs(90)).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cut_off_under_load_answers_503_loses_nothing_and_recovers_without_restart() {
    let db = PgSchema::fresh();
    let proxy = Proxy::start().await;
    let url = db
        .url
        .replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port));
    let sink = Sink::start(|_, _| Reply::ok()).await;
    let setup = Setup::new(&sink, RETRY, &recipe("", &["a"]));
    let hub = node(&setup, &url, "n1", &[]).await;
    let http = reqwest::Client::new();
    let mut acked = Vec::new();
    let mut refused = 0;
    let mut seq = 0usize;
    let send = |seq: usize| {
        let (http, url) = (http.clone(), hub.url.clone());
        async move { post(&http, &url, &event(seq as u64, seq)).await }
    };
    // Before, during and after the cut: 100 events each.
    for phase in 0..3 {
        if phase == 1 {
            proxy.set_cut(true);
        }
        if phase == 2 {
            proxy.set_cut(false);
        }
        let mut during = Vec::new();
        for _ in 0..100 {
            during.push(send(seq));
            seq += 1;
        }
        for answer in futures_util::future::join_all(during).await {
            match answer {
                Some((s, v)) if (200..300).contains(&s) => acked.push(v),
                Some((503, _)) => refused += 1,
                other => panic!("{other:?}"),
            }
        }
        if phase == 1 {
            assert!(refused > 0, "the cut was noticed");
            let (status, _) = hub.api("/readyz").await;
            assert_eq!(status, 503, "not ready while the database is away");
        }
    }
    // After the cut the node recovers by itself: later webhooks are stored.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((s, v)) = send(seq).await {
            seq += 1;
            if (200..300).contains(&s) {
                acked.push(v);
                break;
            }
        }
        assert!(Instant::now() < deadline, "no recovery");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_drained(&hub, Duration::from_secs(60)).await;
    for a in &acked {
        let id = a["runs"][0].as_str().unwrap();
        let run = hub.wait_run(id).await;
        assert_eq!(run["status"], "succeeded", "{run}");
    }
    drop(hub);
    db.drop_now();
}
