//! Open-loop, fixed-rate W1 driver (wrk2 is not in Debian).
//!
//! Sends request i at `start + i / rate` whatever the answers do, each event
//! with its own ticket id (1 000 000 + i) and signature, so the sink's records
//! give end-to-end latency per event: sink receive time − send time. Answer
//! latency runs from the moment the driver dispatched the request (including
//! any wait for a free connection, so a slow server cannot hide its queue),
//! not from the 1 ms-granular timer tick, which would add up to 1 ms to
//! everything.
//!
//! Usage:
//!   w1load URL EVENT_JSON [--rate 1000] [--duration 10] [--warmup 2]
//!          [--conns 64] [--sink http://127.0.0.1:9100] [--drain 60]
//!          [--interval SECS --records FILE]
//! Secret from W1_SECRET (default "s3cret"). Prints one line `W1LOAD {json}`.
//!
//! A request that is not answered 2xx is one of three cases, counted apart so
//! a report says which side failed: answered with another status
//! (`statuses`, by status), no answer because the send or the connection
//! failed (`errors`, by kind: reqwest's stage and the innermost cause, e.g.
//! `request: connection closed before message completed`), or no answer yet
//! when the driver stops (`unanswered`, soak only; the fixed-count mode waits
//! for every request). Each of them also gets a `W1LOAD_FAIL {json}` line
//! (ticket, send and end time), so it can be found in the hub's log.
//!
//! With `--interval` (the soak, `bench/soak.sh`) it runs for as long as asked
//! without holding every body in memory: each body is built and signed just
//! before it is sent (a few µs, before the send time is taken), the sink's
//! records are collected every SECS seconds and one line `W1LOAD_TICK {json}`
//! is printed per interval (answers completed and events delivered in it,
//! their p50/p99). `--records FILE` gets one line per answer,
//! `a <done_unix_ns> <answer_us> <ok 0|1>`, and per delivery,
//! `e <recv_unix_ns> <e2e_us>`, for any later cut (per minute, during
//! retention passes).

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Semaphore;

const FIRST_TICKET: u64 = 1_000_000;

struct Args {
    url: String,
    event: String,
    rate: f64,
    duration: f64,
    warmup: f64,
    conns: usize,
    sink: String,
    drain: f64,
    interval: f64,
    records: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        url: String::new(),
        event: String::new(),
        rate: 1000.0,
        duration: 10.0,
        warmup: 2.0,
        conns: 64,
        sink: "http://127.0.0.1:9100".into(),
        drain: 60.0,
        interval: 0.0,
        records: None,
    };
    let mut pos = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        let mut val = || it.next().expect("option value");
        match x.as_str() {
            "--rate" => a.rate = val().parse().expect("--rate"),
            "--duration" => a.duration = val().parse().expect("--duration"),
            "--warmup" => a.warmup = val().parse().expect("--warmup"),
            "--conns" => a.conns = val().parse().expect("--conns"),
            "--sink" => a.sink = val(),
            "--drain" => a.drain = val().parse().expect("--drain"),
            "--interval" => a.interval = val().parse().expect("--interval"),
            "--records" => a.records = Some(val()),
            _ => pos.push(x),
        }
    }
    assert!(pos.len() == 2, "usage: w1load URL EVENT_JSON [options]");
    a.url = pos[0].clone();
    a.event = pos[1].clone();
    a
}

fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// Answered 2xx, and the body was read.
    Ok,
    /// Answered with another status.
    Status(u16),
    /// No answer: the send, the connection or the body read failed.
    Failed(String),
}

impl End {
    /// Send `req` and read its answer.
    async fn of(req: reqwest::RequestBuilder) -> End {
        match req.send().await {
            Ok(resp) => {
                let status = resp.status();
                match resp.bytes().await {
                    Err(e) => End::Failed(format!("{} (after {status})", error_kind(&e))),
                    Ok(_) if status.is_success() => End::Ok,
                    Ok(_) => End::Status(status.as_u16()),
                }
            }
            Err(e) => End::Failed(error_kind(&e)),
        }
    }

    fn is_ok(&self) -> bool {
        *self == End::Ok
    }
}

/// What went wrong with a send, without the URL: reqwest's stage and the
/// innermost cause (hyper's "connection closed before message completed",
/// an `io::ErrorKind` such as `ConnectionReset`, ...).
fn error_kind(e: &reqwest::Error) -> String {
    let stage = if e.is_connect() {
        "connect"
    } else if e.is_timeout() {
        "timeout"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else if e.is_request() {
        "request"
    } else {
        "other"
    };
    let mut cause: &(dyn std::error::Error + 'static) = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    match cause.downcast_ref::<std::io::Error>() {
        Some(io) => format!("{stage}: {:?}: {io}", io.kind()),
        None => format!("{stage}: {cause}"),
    }
}

/// Not-ok answers and failed sends, by status and by kind.
#[derive(Default)]
struct Failures {
    statuses: std::collections::BTreeMap<u16, usize>,
    errors: std::collections::BTreeMap<String, usize>,
}

impl Failures {
    /// Count `end` (if it is not ok) and print its `W1LOAD_FAIL` line.
    fn add(&mut self, ticket: u64, sent_unix_ns: u64, latency_us: u64, end: &End) {
        let what = match end {
            End::Ok => return,
            End::Status(s) => {
                *self.statuses.entry(*s).or_default() += 1;
                serde_json::json!({ "status": s })
            }
            End::Failed(kind) => {
                *self.errors.entry(kind.clone()).or_default() += 1;
                serde_json::json!({ "error": kind })
            }
        };
        println!(
            "W1LOAD_FAIL {}",
            serde_json::json!({
                "ticket": ticket, "sent_unix_ns": sent_unix_ns,
                "end_unix_ns": sent_unix_ns + latency_us * 1000, "us": latency_us, "what": what,
            })
        );
    }

    fn merge(&mut self, other: Failures) {
        for (k, n) in other.statuses {
            *self.statuses.entry(k).or_default() += n;
        }
        for (k, n) in other.errors {
            *self.errors.entry(k).or_default() += n;
        }
    }

    fn count(&self) -> usize {
        self.statuses.values().sum::<usize>() + self.errors.values().sum::<usize>()
    }

    /// `"not_ok":N,"statuses":{..},"errors":{..}` (no braces around).
    fn json_fields(&self) -> String {
        let statuses: serde_json::Map<String, serde_json::Value> = self
            .statuses
            .iter()
            .map(|(k, n)| (k.to_string(), (*n).into()))
            .collect();
        format!(
            "\"not_ok\":{},\"statuses\":{},\"errors\":{}",
            self.count(),
            serde_json::Value::Object(statuses),
            serde_json::json!(self.errors),
        )
    }
}

struct Outcome {
    ticket: u64,
    sent_unix_ns: u64,
    latency_us: u64,
    end: End,
}

/// Send `bodies` at `rate`; ticket ids are `first + i` (0 = not recorded).
async fn drive(
    client: &reqwest::Client,
    url: &str,
    bodies: Arc<Vec<(Vec<u8>, String)>>,
    rate: f64,
    conns: usize,
    first: u64,
) -> (Vec<Outcome>, Duration) {
    let n = bodies.len();
    let sem = Arc::new(Semaphore::new(conns));
    let unix0 = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut next = 0usize;
    while next < n {
        let now = Instant::now();
        while next < n && start + Duration::from_secs_f64(next as f64 / rate) <= now {
            let i = next;
            next += 1;
            let (client, url, bodies, sem) =
                (client.clone(), url.to_string(), bodies.clone(), sem.clone());
            tasks.spawn(async move {
                let t0 = Instant::now();
                let sent_unix_ns = unix0 + (t0 - start).as_nanos() as u64;
                let _permit = sem.acquire_owned().await.expect("semaphore");
                let (body, sig) = &bodies[i];
                let end = End::of(
                    client
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("x-signature-256", sig.as_str())
                        .body(body.clone()),
                )
                .await;
                Outcome {
                    ticket: if first == 0 { 0 } else { first + i as u64 },
                    sent_unix_ns,
                    latency_us: t0.elapsed().as_micros() as u64,
                    end,
                }
            });
        }
        if next < n {
            tokio::time::sleep_until((start + Duration::from_secs_f64(next as f64 / rate)).into())
                .await;
        }
    }
    let mut out = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        out.push(r.expect("task"));
    }
    (out, start.elapsed())
}

async fn sink_records(client: &reqwest::Client, sink: &str) -> HashMap<u64, u64> {
    let mut m = HashMap::new();
    if let Ok(r) = client.get(format!("{sink}/_records")).send().await {
        if let Ok(text) = r.text().await {
            for line in text.lines() {
                let mut p = line.split(' ');
                if let (Some(Ok(t)), Some(Ok(ns))) =
                    (p.next().map(str::parse), p.next().map(str::parse))
                {
                    m.insert(t, ns);
                }
            }
        }
    }
    m
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a = args();
    let secret = std::env::var("W1_SECRET")
        .unwrap_or_else(|_| "s3cret".into())
        .into_bytes();
    let template = std::fs::read(&a.event).expect("event file");
    let text = String::from_utf8(template.clone()).expect("utf-8 event");
    // The first `"id":123` is the ticket's id (see make-event.py).
    let at = text.find("\"id\":123").expect("event.json has \"id\":123");
    let (head, tail) = (&text[..at], &text[at + "\"id\":123".len()..]);
    if a.interval > 0.0 {
        return soak::run(&a, secret, head.to_string(), tail.to_string()).await;
    }
    let n = (a.rate * a.duration).round() as usize;
    let bodies: Vec<(Vec<u8>, String)> = (0..n)
        .map(|i| {
            let b = format!("{head}\"id\":{}{tail}", FIRST_TICKET + i as u64).into_bytes();
            let s = sign(&secret, &b);
            (b, s)
        })
        .collect();
    let warm_n = (a.rate * a.warmup).round() as usize;
    let warm = Arc::new(vec![(template.clone(), sign(&secret, &template)); warm_n]);

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(a.conns)
        .tcp_nodelay(true)
        .build()
        .expect("client");
    if warm_n > 0 {
        drive(&client, &a.url, warm, a.rate, a.conns, 0).await;
    }
    sink_records(&client, &a.sink).await; // forget anything recorded before
    let (out, elapsed) = drive(
        &client,
        &a.url,
        Arc::new(bodies),
        a.rate,
        a.conns,
        FIRST_TICKET,
    )
    .await;
    let answered = Instant::now();

    let mut lat: Vec<u64> = out
        .iter()
        .filter(|o| o.end.is_ok())
        .map(|o| o.latency_us)
        .collect();
    lat.sort_unstable();
    let ok = lat.len();
    let mut failures = Failures::default();
    for o in &out {
        failures.add(o.ticket, o.sent_unix_ns, o.latency_us, &o.end);
    }
    let sent: HashMap<u64, u64> = out
        .iter()
        .filter(|o| o.end.is_ok())
        .map(|o| (o.ticket, o.sent_unix_ns))
        .collect();

    // Wait until the sink has every answered event (or the drain time is up).
    let mut got: HashMap<u64, u64> = HashMap::new();
    let deadline = answered + Duration::from_secs_f64(a.drain);
    loop {
        got.extend(sink_records(&client, &a.sink).await);
        let have = sent.keys().filter(|t| got.contains_key(t)).count();
        if have >= sent.len() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drain_ms = answered.elapsed().as_millis();
    let mut e2e: Vec<u64> = sent
        .iter()
        .filter_map(|(t, s)| got.get(t).map(|r| r.saturating_sub(*s) / 1000))
        .collect();
    e2e.sort_unstable();
    println!(
        "W1LOAD {{\"sent\":{n},\"ok\":{ok},{},\"elapsed_s\":{:.3},\"rate\":{:.1},\
\"ans_p50_us\":{},\"ans_p90_us\":{},\"ans_p99_us\":{},\"ans_max_us\":{},\
\"delivered\":{},\"missing\":{},\"e2e_p50_us\":{},\"e2e_p90_us\":{},\"e2e_p99_us\":{},\"e2e_max_us\":{},\"drain_ms\":{drain_ms}}}",
        failures.json_fields(),
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        pct(&lat, 50.0),
        pct(&lat, 90.0),
        pct(&lat, 99.0),
        lat.last().copied().unwrap_or(0),
        e2e.len(),
        sent.len() - e2e.len(),
        pct(&e2e, 50.0),
        pct(&e2e, 90.0),
        pct(&e2e, 99.0),
        e2e.last().copied().unwrap_or(0),
    );
}

/// `--interval`: a long run, reported per interval (see the top of the file).
mod soak {
    use super::*;
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
    use std::sync::Mutex;

    fn unix_ns() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_nanos() as u64
    }

    /// Where request i is (`Shared::stage`).
    const WAITING: u8 = 0; // spawned, waiting for one of the `--conns` permits
    const SENDING: u8 = 1; // sent or being sent, no answer yet
    const DONE: u8 = 2; // its end is in `Shared::answers`

    /// What the sender tasks leave for the reporter.
    #[derive(Default)]
    struct Shared {
        /// Send time (unix ns) of event i; 0 until sent, and again 0 if it
        /// was not answered 2xx.
        sent: Vec<AtomicU64>,
        /// Where each request is; a request never spawned stays `WAITING`
        /// with `sent` 0.
        stage: Vec<AtomicU8>,
        /// Ends since the last report.
        answers: Mutex<Vec<Ended>>,
        done: AtomicUsize,
    }

    /// Request i's end: (i, send ns, done ns, µs, end).
    type Ended = (usize, u64, u64, u64, End);

    fn line(buf: &mut [u64]) -> (u64, u64, u64) {
        buf.sort_unstable();
        (
            pct(buf, 50.0),
            pct(buf, 99.0),
            buf.last().copied().unwrap_or(0),
        )
    }

    struct Totals {
        ok: usize,
        failures: Failures,
        delivered: usize,
        ans: Vec<u64>,
        e2e: Vec<u64>,
    }

    /// Collect what happened since the last report, print it, write records.
    /// The answers are taken after the last await, so an answer is either in
    /// this report or left for the next: none is lost between the two.
    async fn report(
        client: &reqwest::Client,
        sink: &str,
        shared: &Shared,
        t_s: f64,
        out: &mut Option<std::io::BufWriter<std::fs::File>>,
        totals: &mut Totals,
    ) {
        let records = sink_records(client, sink).await;
        let answers = std::mem::take(&mut *shared.answers.lock().expect("lock"));
        let mut ans: Vec<u64> = answers
            .iter()
            .filter(|a| a.4.is_ok())
            .map(|a| a.3)
            .collect();
        let mut failures = Failures::default();
        for (i, sent, _, us, end) in &answers {
            failures.add(FIRST_TICKET + *i as u64, *sent, *us, end);
        }
        let mut e2e = Vec::with_capacity(records.len());
        for (ticket, recv) in &records {
            let Some(i) = ticket.checked_sub(FIRST_TICKET) else {
                continue;
            };
            let Some(sent) = shared.sent.get(i as usize) else {
                continue;
            };
            let sent = sent.load(Ordering::Acquire);
            if sent == 0 {
                continue;
            }
            let us = recv.saturating_sub(sent) / 1000;
            e2e.push(us);
            if let Some(f) = out.as_mut() {
                writeln!(f, "e {recv} {us}").expect("records file");
            }
        }
        if let Some(f) = out.as_mut() {
            for (_, _, done, us, end) in &answers {
                writeln!(f, "a {done} {us} {}", end.is_ok() as u8).expect("records file");
            }
            f.flush().expect("records file");
        }
        let (a50, a99, amax) = line(&mut ans);
        let (e50, e99, emax) = line(&mut e2e);
        println!(
            "W1LOAD_TICK {{\"t_s\":{t_s:.1},\"ok\":{},{},\"ans_p50_us\":{a50},\"ans_p99_us\":{a99},\"ans_max_us\":{amax},\
\"delivered\":{},\"e2e_p50_us\":{e50},\"e2e_p99_us\":{e99},\"e2e_max_us\":{emax}}}",
            ans.len(),
            failures.json_fields(),
            e2e.len(),
        );
        totals.ok += ans.len();
        totals.failures.merge(failures);
        totals.delivered += e2e.len();
        totals.ans.extend(ans);
        totals.e2e.extend(e2e);
    }

    pub async fn run(a: &Args, secret: Vec<u8>, head: String, tail: String) {
        let n = (a.rate * a.duration).round() as usize;
        let shared = Arc::new(Shared {
            sent: (0..n).map(|_| AtomicU64::new(0)).collect(),
            stage: (0..n).map(|_| AtomicU8::new(WAITING)).collect(),
            ..Shared::default()
        });
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(a.conns)
            .tcp_nodelay(true)
            .build()
            .expect("client");
        let mut out = a
            .records
            .as_ref()
            .map(|p| std::io::BufWriter::new(std::fs::File::create(p).expect("records file")));
        sink_records(&client, &a.sink).await; // forget anything recorded before
        let sem = Arc::new(Semaphore::new(a.conns));
        let (head, tail, secret, url) = (
            Arc::new(head),
            Arc::new(tail),
            Arc::new(secret),
            Arc::new(a.url.clone()),
        );
        let start = Instant::now();
        let every = Duration::from_secs_f64(a.interval);
        let mut next_report = start + every;
        let mut totals = Totals {
            ok: 0,
            failures: Failures::default(),
            delivered: 0,
            ans: Vec::new(),
            e2e: Vec::new(),
        };
        let mut next = 0usize;
        while next < n {
            let now = Instant::now();
            while next < n && start + Duration::from_secs_f64(next as f64 / a.rate) <= now {
                let i = next;
                next += 1;
                let (client, url, sem, shared) =
                    (client.clone(), url.clone(), sem.clone(), shared.clone());
                let (head, tail, secret) = (head.clone(), tail.clone(), secret.clone());
                tokio::spawn(async move {
                    let body =
                        format!("{head}\"id\":{}{tail}", FIRST_TICKET + i as u64).into_bytes();
                    let sig = sign(&secret, &body);
                    let t0 = Instant::now();
                    let sent = unix_ns();
                    shared.sent[i].store(sent, Ordering::Release);
                    let _permit = sem.acquire_owned().await.expect("semaphore");
                    shared.stage[i].store(SENDING, Ordering::Release);
                    let end = End::of(
                        client
                            .post(url.as_str())
                            .header("content-type", "application/json")
                            .header("x-signature-256", sig)
                            .body(body),
                    )
                    .await;
                    let us = t0.elapsed().as_micros() as u64;
                    if !end.is_ok() {
                        shared.sent[i].store(0, Ordering::Release);
                    }
                    shared
                        .answers
                        .lock()
                        .expect("lock")
                        .push((i, sent, unix_ns(), us, end));
                    shared.stage[i].store(DONE, Ordering::Release);
                    shared.done.fetch_add(1, Ordering::Release);
                });
            }
            if Instant::now() >= next_report {
                let t = (next_report - start).as_secs_f64();
                report(&client, &a.sink, &shared, t, &mut out, &mut totals).await;
                next_report += every;
            }
            if next < n {
                let due = start + Duration::from_secs_f64(next as f64 / a.rate);
                tokio::time::sleep_until(due.min(next_report).into()).await;
            }
        }
        let elapsed = start.elapsed();
        // Every answer, then every delivery (or the drain time is up). Nothing
        // awaits between the report and the check: `done` and what the report
        // took agree.
        let deadline = Instant::now() + Duration::from_secs_f64(a.drain);
        loop {
            tokio::time::sleep_until(next_report.min(deadline).into()).await;
            let t = (Instant::now() - start).as_secs_f64();
            report(&client, &a.sink, &shared, t, &mut out, &mut totals).await;
            next_report += every;
            let answered = shared.done.load(Ordering::Acquire) == n;
            if (answered && totals.delivered >= totals.ok) || Instant::now() >= deadline {
                break;
            }
        }
        // The third case: requests with no answer when the driver stops.
        let stop = unix_ns();
        let mut unanswered = 0usize;
        let mut waiting = 0usize;
        for (i, stage) in shared.stage.iter().enumerate() {
            let stage = stage.load(Ordering::Acquire);
            if stage == DONE {
                continue;
            }
            unanswered += 1;
            waiting += (stage == WAITING) as usize;
            let sent = shared.sent[i].load(Ordering::Acquire);
            println!(
                "W1LOAD_FAIL {}",
                serde_json::json!({
                    "ticket": FIRST_TICKET + i as u64, "sent_unix_ns": sent,
                    "what": { "unanswered": if stage == WAITING { "waiting for a connection" } else { "sent" },
                              "for_us": stop.saturating_sub(sent) / 1000 },
                })
            );
        }
        let (a50, a99, amax) = line(&mut totals.ans);
        let (e50, e99, emax) = line(&mut totals.e2e);
        println!(
            "W1LOAD {{\"sent\":{n},\"ok\":{},{},\"unanswered\":{unanswered},\"unanswered_waiting\":{waiting},\"elapsed_s\":{:.3},\"rate\":{:.1},\
\"ans_p50_us\":{a50},\"ans_p99_us\":{a99},\"ans_max_us\":{amax},\
\"delivered\":{},\"missing\":{},\"e2e_p50_us\":{e50},\"e2e_p99_us\":{e99},\"e2e_max_us\":{emax}}}",
            totals.ok,
            totals.failures.json_fields(),
            elapsed.as_secs_f64(),
            n as f64 / elapsed.as_secs_f64(),
            totals.delivered,
            totals.ok.saturating_sub(totals.delivered),
        );
        assert_eq!(
            totals.ok + totals.failures.count() + unanswered,
            n,
            "every request is ok, not ok or unanswered"
        );
    }
}
