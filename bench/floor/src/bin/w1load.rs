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

struct Outcome {
    ticket: u64,
    sent_unix_ns: u64,
    latency_us: u64,
    ok: bool,
    error: bool,
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
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("x-signature-256", sig.as_str())
                    .body(body.clone())
                    .send()
                    .await;
                let (ok, error) = match r {
                    Ok(resp) => {
                        let ok = resp.status().is_success();
                        (ok, resp.bytes().await.is_err())
                    }
                    Err(_) => (false, true),
                };
                Outcome {
                    ticket: if first == 0 { 0 } else { first + i as u64 },
                    sent_unix_ns,
                    latency_us: t0.elapsed().as_micros() as u64,
                    ok,
                    error,
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

    let mut lat: Vec<u64> = out.iter().filter(|o| o.ok).map(|o| o.latency_us).collect();
    lat.sort_unstable();
    let ok = lat.len();
    let errors = out.iter().filter(|o| o.error).count();
    let sent: HashMap<u64, u64> = out
        .iter()
        .filter(|o| o.ok)
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
        "W1LOAD {{\"sent\":{n},\"ok\":{ok},\"not_ok\":{},\"errors\":{errors},\"elapsed_s\":{:.3},\"rate\":{:.1},\
\"ans_p50_us\":{},\"ans_p90_us\":{},\"ans_p99_us\":{},\"ans_max_us\":{},\
\"delivered\":{},\"missing\":{},\"e2e_p50_us\":{},\"e2e_p90_us\":{},\"e2e_p99_us\":{},\"e2e_max_us\":{},\"drain_ms\":{drain_ms}}}",
        n - ok,
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
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::Mutex;

    fn unix_ns() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_nanos() as u64
    }

    /// What the sender tasks leave for the reporter.
    #[derive(Default)]
    struct Shared {
        /// Send time (unix ns) of event i; 0 until sent.
        sent: Vec<AtomicU64>,
        /// Answers completed since the last report: (done ns, µs, ok).
        answers: Mutex<Vec<(u64, u64, bool)>>,
        done: AtomicUsize,
    }

    fn line(buf: &mut Vec<u64>) -> (u64, u64, u64) {
        buf.sort_unstable();
        (
            pct(buf, 50.0),
            pct(buf, 99.0),
            buf.last().copied().unwrap_or(0),
        )
    }

    struct Totals {
        ok: usize,
        not_ok: usize,
        delivered: usize,
        ans: Vec<u64>,
        e2e: Vec<u64>,
    }

    /// Collect what happened since the last report, print it, write records.
    async fn report(
        client: &reqwest::Client,
        sink: &str,
        shared: &Shared,
        t_s: f64,
        out: &mut Option<std::io::BufWriter<std::fs::File>>,
        totals: &mut Totals,
    ) {
        let answers = std::mem::take(&mut *shared.answers.lock().expect("lock"));
        let records = sink_records(client, sink).await;
        let mut ans: Vec<u64> = answers.iter().filter(|a| a.2).map(|a| a.1).collect();
        let not_ok = answers.iter().filter(|a| !a.2).count();
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
            for (done, us, ok) in &answers {
                writeln!(f, "a {done} {us} {}", *ok as u8).expect("records file");
            }
            f.flush().expect("records file");
        }
        let (a50, a99, amax) = line(&mut ans);
        let (e50, e99, emax) = line(&mut e2e);
        println!(
            "W1LOAD_TICK {{\"t_s\":{t_s:.1},\"ok\":{},\"not_ok\":{not_ok},\"ans_p50_us\":{a50},\"ans_p99_us\":{a99},\"ans_max_us\":{amax},\
\"delivered\":{},\"e2e_p50_us\":{e50},\"e2e_p99_us\":{e99},\"e2e_max_us\":{emax}}}",
            ans.len(),
            e2e.len(),
        );
        totals.ok += ans.len();
        totals.not_ok += not_ok;
        totals.delivered += e2e.len();
        totals.ans.extend(ans);
        totals.e2e.extend(e2e);
    }

    pub async fn run(a: &Args, secret: Vec<u8>, head: String, tail: String) {
        let n = (a.rate * a.duration).round() as usize;
        let shared = Arc::new(Shared {
            sent: (0..n).map(|_| AtomicU64::new(0)).collect(),
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
            not_ok: 0,
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
                    shared.sent[i].store(unix_ns(), Ordering::Release);
                    let _permit = sem.acquire_owned().await.expect("semaphore");
                    let r = client
                        .post(url.as_str())
                        .header("content-type", "application/json")
                        .header("x-signature-256", sig)
                        .body(body)
                        .send()
                        .await;
                    let ok = match r {
                        Ok(resp) => resp.status().is_success() && resp.bytes().await.is_ok(),
                        Err(_) => false,
                    };
                    let us = t0.elapsed().as_micros() as u64;
                    if !ok {
                        shared.sent[i].store(0, Ordering::Release);
                    }
                    shared
                        .answers
                        .lock()
                        .expect("lock")
                        .push((unix_ns(), us, ok));
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
        // Every answer, then every delivery (or the drain time is up).
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
        let (a50, a99, amax) = line(&mut totals.ans);
        let (e50, e99, emax) = line(&mut totals.e2e);
        println!(
            "W1LOAD {{\"sent\":{n},\"ok\":{},\"not_ok\":{},\"unanswered\":{},\"elapsed_s\":{:.3},\"rate\":{:.1},\
\"ans_p50_us\":{a50},\"ans_p99_us\":{a99},\"ans_max_us\":{amax},\
\"delivered\":{},\"missing\":{},\"e2e_p50_us\":{e50},\"e2e_p99_us\":{e99},\"e2e_max_us\":{emax}}}",
            totals.ok,
            totals.not_ok,
            n - totals.ok - totals.not_ok,
            elapsed.as_secs_f64(),
            n as f64 / elapsed.as_secs_f64(),
            totals.delivered,
            totals.ok.saturating_sub(totals.delivered),
        );
    }
}
