//! The W1 sink (the "CRM"): answers every POST 200, counts them, and records
//! when each ticket id ≥ 1 000 000 arrived (the ids `w1load` sends), so the
//! driver can compute end-to-end latency. wrk's fixed body (ticket 123) is
//! only counted.
//!
//! - `POST <anything>`   count (+ record); answer `{"ok":true}`
//! - `GET /_count`       the count since start, as text
//! - `GET /_records`     `ticket recv_unix_ns` lines, then forget them
//!
//! Usage: sink LISTEN_ADDR [THREADS]   (default 1 runtime thread: it must stay
//! cheap next to the system under test on a 2-core machine)

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::get;
use axum::Router;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// First ticket id that is recorded.
const RECORD_FROM: u64 = 1_000_000;

#[derive(Default)]
struct Sink {
    count: AtomicU64,
    /// A std Mutex: nothing async happens while it is held.
    records: Mutex<HashMap<u64, u64>>,
}

/// The `"ticket":<n>` value of a compact or spaced JSON body, without a full parse.
fn ticket(body: &[u8]) -> Option<u64> {
    let key = b"\"ticket\"";
    let at = body.windows(key.len()).position(|w| w == key)? + key.len();
    let rest = &body[at..];
    let digits: Vec<u8> = rest
        .iter()
        .skip_while(|b| matches!(b, b' ' | b':' | b'"'))
        .take_while(|b| b.is_ascii_digit())
        .copied()
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

async fn receive(State(s): State<Arc<Sink>>, body: Bytes) -> &'static str {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    s.count.fetch_add(1, Ordering::Relaxed);
    if let Some(t) = ticket(&body).filter(|&t| t >= RECORD_FROM) {
        s.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(t)
            .or_insert(now);
    }
    "{\"ok\":true}"
}

async fn count(State(s): State<Arc<Sink>>) -> String {
    s.count.load(Ordering::Relaxed).to_string()
}

async fn records(State(s): State<Arc<Sink>>) -> String {
    let taken = std::mem::take(&mut *s.records.lock().unwrap_or_else(|e| e.into_inner()));
    let mut out = String::with_capacity(taken.len() * 28);
    for (t, ns) in taken {
        out.push_str(&format!("{t} {ns}\n"));
    }
    out
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let listen = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:9100".into());
    let threads: usize = args.get(2).and_then(|t| t.parse().ok()).unwrap_or(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let sink = Arc::new(Sink::default());
        let router = Router::new()
            .route("/_count", get(count))
            .route("/_records", get(records))
            .fallback(receive)
            .with_state(sink);
        let listener = tokio::net::TcpListener::bind(&listen).await.expect("bind");
        axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .expect("serve");
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_ticket() {
        assert_eq!(
            super::ticket(br#"{"email":"a","name":"b","ticket":1000001}"#),
            Some(1000001)
        );
        assert_eq!(
            super::ticket(br#"{"ticket": "1000002", "x": 1}"#),
            Some(1000002)
        );
        assert_eq!(super::ticket(br#"{"email":"a"}"#), None);
    }
}
