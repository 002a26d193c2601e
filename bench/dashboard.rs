//! The dashboard on a large store (issue 12): 100,000 events, each with a
//! finished run, spread over the last 24 hours, in the sled store `serve`
//! uses. Times each page as the browser would ask for it (a signed-in
//! `GET` through the dashboard's router, rendering included; no network),
//! and the admin API summaries behind them.
//!
//! Run: `cargo bench --bench dashboard`. It prints median and p95 per page;
//! BENCHMARKS.md records one run. Nothing is asserted.

use axum::body::Body;
use axum::http::{header, Request};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use switchboard::admin::console::Console;
use switchboard::admin::AdminState;
use switchboard::connector::SecretSource;
use switchboard::dashboard::{self, DashboardConfig};
use switchboard::engine::{Catalog, Engine, EngineConfig, LoadOptions};
use switchboard::secret::Secret;
use switchboard::store::sled::SledStore;
use switchboard::store::{new_id, now_ms, Event, Run, RunStatus, StepRecord, StepStatus, Store};
use tower::ServiceExt;

const EVENTS: usize = 100_000;
const ROUNDS: usize = 30;
const TOKEN: &str = "bench-admin-token-0123456789";

fn fill(store: &SledStore, now: i64) {
    let span = 86_400_000 - 60_000;
    for i in 0..EVENTS {
        // Oldest first, so ids (time-ordered) match receive times.
        let at = now - span + (i as i64 * span / EVENTS as i64);
        let event = Event {
            id: new_id(at),
            connector: "zendesk".into(),
            event_type: Some("ticket.created".into()),
            delivery_id: Some(format!("inv-{i}")),
            received_at: at,
            body: serde_json::json!({
                "type": "ticket.created",
                "ticket": {"id": i, "subject": "Where is my order?", "description": "Hi, it has been a week.",
                           "requester": {"email": format!("c{i}@example.com"), "name": "Customer"}}
            }),
            runs: vec![],
            origin: Default::default(),
            replay: None,
        };
        let failed = i % 10 == 0;
        let mut run = Run {
            id: new_id(at),
            event_id: event.id.clone(),
            recipe: "crm-enrichment".into(),
            status: RunStatus::Queued,
            created_at: at,
            updated_at: at,
            finished_at: None,
            steps: vec![],
            error: None,
            reason: None,
            due_at: at,
            pending: None,
            round: 0,
            concurrency: None,
            debounce: None,
            parked: None,
            starts: 0,
            listening: vec![],
            version: None,
        };
        let mut event = event;
        event.runs = vec![run.id.clone()];
        store
            .insert_event(&event, std::slice::from_ref(&run))
            .expect("insert");
        run.status = if failed {
            RunStatus::Failed
        } else {
            RunStatus::Succeeded
        };
        run.finished_at = Some(at + 120);
        run.steps = vec![StepRecord {
            id: "contact".into(),
            call: "hubspot.search_contact_by_email".into(),
            status: if failed {
                StepStatus::Failed
            } else {
                StepStatus::Succeeded
            },
            input: serde_json::json!({"email": format!("c{i}@example.com")}),
            request: Some(
                serde_json::json!({"method": "POST", "url": "https://api.hubapi.com/crm/v3/objects/contacts/search", "status": 200}),
            ),
            http_status: Some(if failed { 422 } else { 200 }),
            output: serde_json::json!({"id": "42", "lifecycle": "customer", "plan": "premium"}),
            error: failed.then(|| "HTTP 422: invalid email".to_string()),
            started_at: at + 5,
            duration_ms: 110,
            attempts: 1,
            history: vec![],
        }];
        run.error = failed.then(|| "step `contact` failed: HTTP 422".to_string());
        store.finish_run(&run).expect("finish");
    }
    store.flush().expect("flush");
}

async fn time_page(app: &axum::Router, cookie: &str, path: &str) -> (f64, f64, usize) {
    let mut ms = Vec::new();
    let mut bytes = 0;
    for _ in 0..ROUNDS {
        let req = Request::get(path)
            .header(header::COOKIE, cookie)
            .body(Body::empty())
            .expect("request");
        let start = Instant::now();
        let resp = app.clone().oneshot(req).await.expect("answer");
        assert_eq!(resp.status(), 200, "{path}");
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .expect("body");
        ms.push(start.elapsed().as_secs_f64() * 1e3);
        bytes = body.len();
    }
    ms.sort_by(f64::total_cmp);
    (ms[ms.len() / 2], ms[ms.len() * 95 / 100], bytes)
}

#[tokio::main]
async fn main() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SledStore::open(dir.path()).expect("open store");
    let now = now_ms();
    let start = Instant::now();
    fill(&store, now);
    println!(
        "filled {EVENTS} events + {EVENTS} finished runs in {:.1} s",
        start.elapsed().as_secs_f64()
    );

    let catalog = Catalog::load(&LoadOptions {
        connectors_dir: repo.join("connectors"),
        recipes_dir: repo.join("recipes"),
        secrets: SecretSource::default().with_placeholders(),
        allow_internal: vec![],
    })
    .expect("catalog");
    let engine = Engine::new(catalog, Arc::new(store), EngineConfig::default()).expect("engine");
    let state = AdminState {
        engine,
        token: Secret::new(TOKEN),
        max_queue: 10_000,
        metrics_public: false,
        files: None,
    };
    let app = dashboard::router(Console::new(state), DashboardConfig::default());
    let login = Request::post("/ui/login")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("token={TOKEN}")))
        .expect("login");
    let resp = app.clone().oneshot(login).await.expect("login answer");
    let cookie = resp.headers()[header::SET_COOKIE]
        .to_str()
        .expect("cookie")
        .split(';')
        .next()
        .expect("cookie pair")
        .to_string();

    println!("| page | median ms | p95 ms | HTML bytes |");
    println!("|---|---|---|---|");
    for path in [
        "/ui/events",
        "/ui/runs",
        "/ui/",
        "/ui/?range=day",
        "/ui/recipes",
        "/ui/events?connector=zendesk&type=ticket.created",
        "/ui/events?delivery_id=inv-4242",
        "/ui/events?type=no.such.type",
        "/ui/runs?status=failed",
        "/ui/runs?status=dead",
    ] {
        let (median, p95, bytes) = time_page(&app, &cookie, path).await;
        println!("| `{path}` | {median:.1} | {p95:.1} | {bytes} |");
    }
}
