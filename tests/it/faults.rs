//! Faults injected below the hub: a store that fails writes. The webhook is
//! answered 503 with Retry-After and nothing is half-written.

use crate::utils::*;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use switchboard::connector::SecretSource;
use switchboard::engine::{Catalog, Engine, EngineConfig, LoadOptions};
use switchboard::ingress::{self, IngressState};
use switchboard::store::state::{StateEntry, StateKey, StateOp, StateOutput};
use switchboard::store::{
    self, sled::SledStore, Event, Inserted, Page, Run, RunFilter, Store, StoreError,
};
use tower::ServiceExt;

/// A sled store whose writes or flushes fail while a switch is on.
struct FaultyStore {
    inner: SledStore,
    fail_writes: AtomicBool,
    fail_flush: AtomicBool,
}

fn disk_full() -> StoreError {
    StoreError::Io("No space left on device (os error 28)".into())
}

impl Store for FaultyStore {
    fn insert_event(&self, event: &Event, runs: &[Run]) -> store::Result<Inserted> {
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(disk_full());
        }
        self.inner.insert_event(event, runs)
    }
    fn insert_event_matching(
        &self,
        event: &Event,
        runs: &[Run],
        probes: &[store::Correlation],
        now: i64,
    ) -> store::Result<(Inserted, store::Matched)> {
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(disk_full());
        }
        self.inner.insert_event_matching(event, runs, probes, now)
    }
    fn park(&self, run: &Run, previous_due: i64) -> store::Result<()> {
        self.inner.park(run, previous_due)
    }
    fn flush(&self) -> store::Result<()> {
        if self.fail_flush.load(Ordering::SeqCst) {
            return Err(disk_full());
        }
        self.inner.flush()
    }
    fn event(&self, id: &str) -> store::Result<Option<Event>> {
        self.inner.event(id)
    }
    fn events(&self, page: &Page) -> store::Result<Vec<Event>> {
        self.inner.events(page)
    }
    fn run(&self, id: &str) -> store::Result<Option<Run>> {
        self.inner.run(id)
    }
    fn runs(&self, page: &Page, filter: &RunFilter) -> store::Result<Vec<Run>> {
        self.inner.runs(page, filter)
    }
    fn stats(&self, scan: bool) -> store::Result<store::StoreStats> {
        self.inner.stats(scan)
    }
    fn expire(&self, cutoff: i64, max: usize) -> store::Result<store::retention::Expired> {
        self.inner.expire(cutoff, max)
    }
    fn lease(&self, now: i64, lease_ms: i64, max: usize) -> store::Result<Vec<Run>> {
        self.inner.lease(now, lease_ms, max)
    }
    fn save_run(&self, run: &Run) -> store::Result<()> {
        self.inner.save_run(run)
    }
    fn finish_run(&self, run: &Run) -> store::Result<()> {
        self.inner.finish_run(run)
    }
    fn reschedule(&self, run: &Run, previous_due: i64) -> store::Result<()> {
        self.inner.reschedule(run, previous_due)
    }
    fn retry_run(&self, id: &str, now: i64) -> store::Result<store::Retried> {
        self.inner.retry_run(id, now)
    }
    fn release_leases(&self, now: i64) -> store::Result<usize> {
        self.inner.release_leases(now)
    }
    fn cancel_requested(&self, run_id: &str) -> store::Result<Option<String>> {
        self.inner.cancel_requested(run_id)
    }
    fn queue_depth(&self) -> store::Result<usize> {
        self.inner.queue_depth()
    }
    fn next_due(&self) -> store::Result<Option<i64>> {
        self.inner.next_due()
    }
    fn schedule_cursor(&self, recipe: &str) -> store::Result<Option<i64>> {
        self.inner.schedule_cursor(recipe)
    }
    fn set_schedule_cursor(&self, recipe: &str, slot: i64) -> store::Result<()> {
        self.inner.set_schedule_cursor(recipe, slot)
    }
    fn apply_state(
        &self,
        op: &StateOp,
        now: i64,
        checkpoint: &mut dyn FnMut(&StateOutput) -> Option<Run>,
    ) -> store::Result<StateOutput> {
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(disk_full());
        }
        self.inner.apply_state(op, now, checkpoint)
    }
    fn state_entries(
        &self,
        namespace: Option<&str>,
        after: Option<&[u8]>,
        limit: usize,
        now: i64,
    ) -> store::Result<Vec<StateEntry>> {
        self.inner.state_entries(namespace, after, limit, now)
    }
    fn state_get(&self, key: &StateKey, now: i64) -> store::Result<Vec<StateEntry>> {
        self.inner.state_get(key, now)
    }
    fn sweep_state(&self, now: i64, max: usize) -> store::Result<store::Swept> {
        self.inner.sweep_state(now, max)
    }
}

fn request(body: &serde_json::Value) -> Request<Body> {
    let raw = serde_json::to_vec(body).unwrap();
    let mut req = Request::post("/hooks/zendesk");
    for (k, v) in zendesk_headers(&raw, ZENDESK_WEBHOOK_SECRET) {
        req = req.header(k, v);
    }
    req.body(Body::from(raw)).unwrap()
}

#[tokio::test]
async fn a_store_that_cannot_write_gets_503_and_keeps_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let faulty = Arc::new(FaultyStore {
        inner: SledStore::open(dir.path()).unwrap(),
        fail_writes: AtomicBool::new(true),
        fail_flush: AtomicBool::new(false),
    });
    let catalog = Catalog::load(&LoadOptions {
        connectors_dir: repo().join("connectors"),
        recipes_dir: repo().join("recipes"),
        secrets: SecretSource::from_env(test_secrets()),
        allow_internal: vec![],
    })
    .unwrap();
    let store: Arc<dyn Store> = faulty.clone();
    // No workers: this test is about ingest only.
    let engine = Engine::new(catalog, store, EngineConfig::default()).unwrap();
    let app = ingress::router(IngressState {
        engine: engine.clone(),
        body_limit: 1 << 20,
        public_url: None,
        backpressure: None,
    });

    let event = ticket_event(1, "Setup mail never came", "bob@example.com");
    let resp = app.clone().oneshot(request(&event)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "5");
    let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("\"unavailable\""), "{text}");
    assert!(
        !text.contains("No space left"),
        "internal detail leaked: {text}"
    );
    let all = Page {
        limit: 100,
        before: None,
    };
    assert!(faulty.events(&all).unwrap().is_empty());
    assert!(faulty.runs(&all, &RunFilter::default()).unwrap().is_empty());
    assert_eq!(faulty.queue_depth().unwrap(), 0);

    // A failing flush is answered 503 too: the sender retries.
    faulty.fail_writes.store(false, Ordering::SeqCst);
    faulty.fail_flush.store(true, Ordering::SeqCst);
    let resp = app.clone().oneshot(request(&event)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);

    // The disk recovers: the next delivery is stored with its runs. (A
    // different one: the same signed delivery again within the second would
    // be a replay of the event written before the failed flush.)
    faulty.fail_flush.store(false, Ordering::SeqCst);
    let event = ticket_event(2, "Setup mail never came", "bob@example.com");
    let resp = app.oneshot(request(&event)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
        .await
        .unwrap();
    let accepted: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let stored = faulty
        .event(accepted["event_id"].as_str().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(stored.runs.len(), 2);
}
