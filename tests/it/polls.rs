//! Polling triggers: the shipped Zendesk and Typeform polls against
//! in-process vendor mocks that check every request (method, path, query,
//! headers) and keep state like the vendor; once-per-interval on virtual
//! time (and across a restart inside a slot); a failing poll keeps its
//! place; bad input outcomes; `check` errors with positions; and the real
//! binary end to end (items → events → runs, kill and restart → no replay).

use crate::utils::*;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchboard::connector::SecretSource;
use switchboard::engine::poller::{self, PollState};
use switchboard::engine::{worker, Catalog, Engine, EngineConfig, LoadOptions};
use switchboard::store::{sled::SledStore, Origin, Store};
use switchboard::time::VirtualClock;

/// 2030-01-01T00:00:00Z: far from the OS clock, which nothing may read.
const T0: i64 = 1_893_456_000_000;
const TYPEFORM_TOKEN: &str = "tfp_test_token_123";
const FORM_ID: &str = "f0rm1D";

/// Poll `f` every 20 ms until it gives `Some`, or fail after `secs`.
async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(t) = f().await {
            return t;
        }
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------- Zendesk mock

/// Zendesk's Incremental Ticket Export (cursor based), as documented:
/// `GET /api/v2/incremental/tickets/cursor.json` with basic auth
/// `email/token:API_TOKEN`; the first request carries `start_time` (Unix
/// seconds), every later one `cursor` (the previous `after_cursor`), never
/// both; `per_page` at most 1000. Answers `tickets` oldest change first,
/// `after_cursor`, `end_of_stream`. Anything else is a 400 and a violation.
#[derive(Default)]
struct ZendeskInner {
    /// (changed at, Unix s; the ticket), in change order.
    changes: Vec<(i64, Value)>,
    /// Every request's query.
    requests: Vec<HashMap<String, String>>,
    violations: Vec<String>,
    /// Answer this status instead (a failing API).
    fail: Option<u16>,
}

#[derive(Clone)]
struct Zendesk {
    inner: Arc<Mutex<ZendeskInner>>,
    url: String,
}

impl Zendesk {
    async fn start() -> Zendesk {
        let inner = Arc::new(Mutex::new(ZendeskInner::default()));
        let app = axum::Router::new()
            .fallback(zendesk_handle)
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Zendesk { inner, url }
    }

    /// Ticket `id` changed at `at_ms`.
    fn change(&self, id: u64, subject: &str, at_ms: i64) {
        let at = at_ms / 1000;
        let ts = jiff::Timestamp::from_second(at).unwrap().to_string();
        self.inner.lock().unwrap().changes.push((
            at,
            json!({"id": id, "subject": subject, "status": "open", "updated_at": ts, "generated_timestamp": at}),
        ));
    }

    fn requests(&self) -> Vec<HashMap<String, String>> {
        self.inner.lock().unwrap().requests.clone()
    }

    fn violations(&self) -> Vec<String> {
        self.inner.lock().unwrap().violations.clone()
    }
}

async fn zendesk_handle(
    State(inner): State<Arc<Mutex<ZendeskInner>>>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut g = inner.lock().unwrap();
    g.requests.push(q.clone());
    let mut bad = Vec::new();
    if method != axum::http::Method::GET {
        bad.push(format!("method {method}"));
    }
    if uri.path() != "/api/v2/incremental/tickets/cursor.json" {
        bad.push(format!("path {}", uri.path()));
    }
    use base64::Engine as _;
    let want = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD
            .encode("agent@example.com/token:zd-api-token-123")
    );
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(want.as_str()) {
        drop(g);
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "Couldn't authenticate you"})),
        )
            .into_response();
    }
    let per_page: usize = match q.get("per_page").map(|p| p.parse::<usize>()) {
        None => 1000,
        Some(Ok(n)) if (1..=1000).contains(&n) => n,
        Some(_) => {
            bad.push(format!("per_page {:?}", q.get("per_page")));
            1000
        }
    };
    let start = match (q.get("start_time"), q.get("cursor")) {
        (Some(s), None) => match s.parse::<i64>() {
            Ok(t) => g
                .changes
                .iter()
                .position(|(at, _)| *at >= t)
                .unwrap_or(g.changes.len()),
            Err(_) => {
                bad.push(format!("start_time {s:?} is not Unix seconds"));
                0
            }
        },
        (None, Some(c)) => match c.strip_prefix("cur-").and_then(|n| n.parse::<usize>().ok()) {
            Some(n) if n <= g.changes.len() => n,
            _ => {
                bad.push(format!("unknown cursor {c:?}"));
                0
            }
        },
        (Some(_), Some(_)) => {
            bad.push("both start_time and cursor".into());
            0
        }
        (None, None) => {
            bad.push("neither start_time nor cursor".into());
            0
        }
    };
    if let Some(extra) = q
        .keys()
        .find(|k| !["start_time", "cursor", "per_page"].contains(&k.as_str()))
    {
        bad.push(format!("unknown parameter {extra}"));
    }
    if !bad.is_empty() {
        g.violations.extend(bad.clone());
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "InvalidValue", "description": bad.join("; ")})),
        )
            .into_response();
    }
    if let Some(s) = g.fail {
        return (
            StatusCode::from_u16(s).unwrap(),
            axum::Json(json!({"error": "failing"})),
        )
            .into_response();
    }
    let end = (start + per_page).min(g.changes.len());
    let tickets: Vec<Value> = g.changes[start..end]
        .iter()
        .map(|(_, t)| t.clone())
        .collect();
    axum::Json(json!({
        "tickets": tickets,
        "after_cursor": format!("cur-{end}"),
        "after_url": format!("/api/v2/incremental/tickets/cursor.json?cursor=cur-{end}"),
        "before_cursor": format!("cur-{start}"),
        "end_of_stream": end == g.changes.len(),
    }))
    .into_response()
}

// --------------------------------------------------------------- Typeform mock

/// Typeform's Responses API: `GET /forms/{form_id}/responses` with
/// `Authorization: Bearer <token>`; `since` (RFC 3339 or Unix seconds,
/// inclusive), `completed`, `sort=submitted_at,asc`, `page_size` ≤ 1000.
#[derive(Default)]
struct TypeformInner {
    /// (submitted at, ms; the response item).
    responses: Vec<(i64, Value)>,
    requests: Vec<HashMap<String, String>>,
    violations: Vec<String>,
}

#[derive(Clone)]
struct Typeform {
    inner: Arc<Mutex<TypeformInner>>,
    url: String,
}

impl Typeform {
    async fn start() -> Typeform {
        let inner = Arc::new(Mutex::new(TypeformInner::default()));
        let app = axum::Router::new()
            .fallback(typeform_handle)
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Typeform { inner, url }
    }

    fn submit(&self, token: &str, email: &str, at_ms: i64) {
        let ts = jiff::Timestamp::from_millisecond(at_ms - at_ms % 1000)
            .unwrap()
            .to_string();
        self.inner.lock().unwrap().responses.push((
            at_ms - at_ms % 1000,
            json!({
                "landing_id": token, "token": token, "response_id": token,
                "landed_at": ts, "submitted_at": ts,
                "answers": [{"field": {"id": "f1", "ref": "email", "type": "email"}, "type": "email", "email": email}],
                "hidden": {}, "calculated": {"score": 0}
            }),
        ));
    }

    fn requests(&self) -> Vec<HashMap<String, String>> {
        self.inner.lock().unwrap().requests.clone()
    }

    fn violations(&self) -> Vec<String> {
        self.inner.lock().unwrap().violations.clone()
    }
}

async fn typeform_handle(
    State(inner): State<Arc<Mutex<TypeformInner>>>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut g = inner.lock().unwrap();
    g.requests.push(q.clone());
    let mut bad = Vec::new();
    if method != axum::http::Method::GET {
        bad.push(format!("method {method}"));
    }
    if uri.path() != format!("/forms/{FORM_ID}/responses") {
        bad.push(format!("path {}", uri.path()));
    }
    if headers.get("authorization").and_then(|v| v.to_str().ok())
        != Some(format!("Bearer {TYPEFORM_TOKEN}").as_str())
    {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"code": "AUTHENTICATION_FAILED"})),
        )
            .into_response();
    }
    let since = match q.get("since") {
        None => i64::MIN,
        Some(s) => match (s.parse::<jiff::Timestamp>(), s.parse::<i64>()) {
            (Ok(t), _) => t.as_millisecond(),
            (_, Ok(secs)) => secs * 1000,
            _ => {
                bad.push(format!("since {s:?}"));
                0
            }
        },
    };
    if q.get("sort").map(String::as_str) != Some("submitted_at,asc") {
        bad.push(format!("sort {:?}", q.get("sort")));
    }
    if q.get("completed").map(String::as_str) != Some("true") {
        bad.push(format!("completed {:?}", q.get("completed")));
    }
    let page_size = q.get("page_size").and_then(|p| p.parse::<usize>().ok());
    if !page_size.is_some_and(|n| (1..=1000).contains(&n)) {
        bad.push(format!("page_size {:?}", q.get("page_size")));
    }
    if !bad.is_empty() {
        g.violations.extend(bad.clone());
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"code": "VALIDATION_ERROR", "description": bad.join("; ")})),
        )
            .into_response();
    }
    let mut items: Vec<&(i64, Value)> = g.responses.iter().filter(|(at, _)| *at >= since).collect();
    items.sort_by_key(|(at, _)| *at);
    let items: Vec<Value> = items
        .into_iter()
        .take(page_size.unwrap_or(25))
        .map(|(_, v)| v.clone())
        .collect();
    axum::Json(json!({"total_items": items.len(), "page_count": 1, "items": items})).into_response()
}

// ------------------------------------------------------------------ recipes

const ON_TICKETS: &str = r#"name: on-tickets
on: { connector: zendesk, event: tickets_updated }
steps:
  - call: slack.post_message
    with: { channel: C1, text: "ticket {{ event.ticket.id }}: {{ event.ticket.subject }}" }
"#;

const ON_RESPONSES: &str = r#"name: on-responses
on: { connector: typeform_responses, event: form_response }
steps:
  - call: slack.post_message
    with: { channel: C1, text: "response {{ event.form_response.token }} from {{ event.form_response.answers[0].email }}" }
"#;

fn slack_ok() -> Vec<Route> {
    vec![route(
        axum::http::Method::POST,
        "/chat.postMessage",
        200,
        json!({"ok": true, "channel": "C1", "ts": "1.0"}),
    )]
}

fn slack_texts(api: &MockApi) -> Vec<String> {
    let mut t: Vec<String> = api
        .calls("/chat.postMessage")
        .iter()
        .map(|r| {
            let form: HashMap<String, String> = serde_urlencoded::from_bytes(&r.body).unwrap();
            form["text"].clone()
        })
        .collect();
    t.sort();
    t
}

/// The shipped connectors (vendors at the mocks) and `recipes`, on a store in `dir`.
struct Rig {
    cfg: Config,
    env: Vec<(String, String)>,
}

impl Rig {
    fn new(recipes: &[(&str, &str)], base_urls: &[(&str, &str)]) -> Rig {
        let cfg = Config::connectors_only();
        for (name, yaml) in recipes {
            cfg.recipe(name, yaml);
        }
        let mut env = test_secrets();
        env.push((
            "SWITCHBOARD_SECRET_TYPEFORM_RESPONSES_API_TOKEN".into(),
            TYPEFORM_TOKEN.into(),
        ));
        env.push((
            "SWITCHBOARD_SECRET_TYPEFORM_RESPONSES_FORM_ID".into(),
            FORM_ID.into(),
        ));
        for (c, url) in base_urls {
            env.push((
                format!("SWITCHBOARD_BASE_URL_{}", c.to_uppercase()),
                url.to_string(),
            ));
        }
        Rig { cfg, env }
    }

    fn catalog(&self) -> Catalog {
        Catalog::load(&LoadOptions {
            connectors_dir: self.cfg.connectors.clone(),
            recipes_dir: self.cfg.recipes.clone(),
            secrets: SecretSource::from_env(self.env.clone()),
            allow_internal: vec!["*".into()],
        })
        .unwrap_or_else(|e| {
            panic!(
                "{}",
                e.iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })
    }
}

/// An engine on a virtual clock with its workers and polls running.
struct Running {
    engine: Arc<Engine>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    fn start(catalog: Catalog, store: Arc<dyn Store>, clock: &VirtualClock) -> Running {
        let engine = Engine::new(
            catalog,
            store,
            EngineConfig {
                workers: 2,
                clock: Arc::new(clock.clone()),
                ..EngineConfig::default()
            },
        )
        .unwrap();
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let mut tasks = worker::spawn(&engine, shutdown.clone());
        tasks.extend(poller::spawn(&engine, shutdown));
        Running {
            engine,
            stop,
            tasks,
        }
    }

    async fn stop(self) {
        self.stop.send(true).unwrap();
        for t in self.tasks {
            t.await.unwrap();
        }
    }

    fn state(&self, poll: &str) -> Option<PollState> {
        poller::state(&**self.engine.store(), poll, self.engine.now_ms()).unwrap()
    }

    /// Wait until `poll` has succeeded `n` polls after `since` (its `last_success` moved).
    async fn polled(&self, poll: &str, at_least: i64) -> PollState {
        eventually(
            20,
            &format!("{poll} polled at or after {at_least}"),
            || async {
                self.state(poll)
                    .filter(|s| s.last_success.is_some_and(|t| t >= at_least))
            },
        )
        .await
    }
}

/// Every event of the store, oldest first.
fn events(store: &dyn Store) -> Vec<switchboard::store::Event> {
    let mut e = store
        .events(&switchboard::store::Page {
            limit: 500,
            before: None,
        })
        .unwrap();
    e.reverse();
    e
}

/// Zendesk's and Typeform's polls on virtual time: the first run's rules,
/// one request per interval, new items → events → runs, seen items never
/// again, and a restart inside a slot polls nothing.
#[tokio::test]
async fn shipped_polls_turn_new_items_into_events_once_per_interval_on_virtual_time() {
    let zendesk = Zendesk::start().await;
    let typeform = Typeform::start().await;
    let slack = MockApi::start(slack_ok()).await;
    let rig = Rig::new(
        &[("on-tickets", ON_TICKETS), ("on-responses", ON_RESPONSES)],
        &[
            ("zendesk", &zendesk.url),
            ("typeform_responses", &typeform.url),
            ("slack", &slack.url),
        ],
    );
    // Both polls run every 5 minutes with up to 30 s of jitter; T0 is on a
    // 5-minute boundary, so S = T0 + 30 s is inside the slot that starts at
    // T0 + offset for both, and the next slots start before S + 5 min.
    let catalog = rig.catalog();
    for (c, p) in [
        ("zendesk", "tickets_updated"),
        ("typeform_responses", "responses"),
    ] {
        let poll = &catalog.connectors.get(c).unwrap().polls[p];
        assert_eq!(poll.every_ms, 300_000);
        assert!((0..30_000).contains(&poll.offset_ms), "{}", poll.offset_ms);
        assert_eq!(poll.slot_at_or_before(T0 + 30_000), T0 + poll.offset_ms);
    }
    let s = T0 + 30_000;
    // History: an old change (before the first poll's start) and one 30 s
    // before it (inside Zendesk's export window, a minute back).
    zendesk.change(1, "old", s - 3_600_000);
    zendesk.change(2, "recent", s - 30_000);
    typeform.submit("tok-old", "old@example.com", s - 600_000);
    typeform.submit("tok-at-start", "start@example.com", s);

    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
    let clock = VirtualClock::at(s);
    let hub = Running::start(catalog, store.clone(), &clock);
    let zd = hub.polled("zendesk.tickets_updated", s).await;
    let tf = hub.polled("typeform_responses.responses", s).await;
    // Zendesk: the first request starts a minute back (Unix seconds).
    let first = &zendesk.requests()[0];
    assert_eq!(
        first.get("start_time"),
        Some(&((s / 1000 - 60).to_string())),
        "{first:?}"
    );
    assert_eq!(first.get("cursor"), None);
    assert_eq!(zd.cursor, Some(json!("cur-2")), "{zd:?}");
    assert_eq!((zd.last_items, zd.last_new), (1, 1), "{zd:?}");
    // Typeform: `first_run: now`, since = now; the response at the start is only seen.
    assert_eq!(
        typeform.requests()[0].get("since"),
        Some(&"2030-01-01T00:00:30Z".to_string())
    );
    assert_eq!((tf.last_items, tf.last_new), (1, 0), "{tf:?}");
    assert_eq!(tf.seen, vec!["tok-at-start".to_string()]);
    assert_eq!(tf.cursor, Some(json!("2030-01-01T00:00:30Z")));

    let evs = eventually(20, "the first ticket's event", || async {
        let e = events(&*store);
        (e.len() == 1).then_some(e)
    })
    .await;
    assert_eq!(evs[0].connector, "zendesk");
    assert_eq!(evs[0].origin, Origin::Poll);
    assert_eq!(evs[0].event_type.as_deref(), Some("tickets_updated"));
    let ts2 = jiff::Timestamp::from_second((s - 30_000) / 1000).unwrap();
    assert_eq!(
        evs[0].delivery_id.as_deref(),
        Some(format!("tickets_updated/2:{ts2}").as_str())
    );
    assert_eq!(evs[0].body["ticket"]["subject"], "recent");

    eventually(20, "the first ticket's run", || async {
        (slack_texts(&slack) == ["ticket 2: recent"]).then_some(())
    })
    .await;
    // A minute later: the same slot, nothing is asked.
    clock.advance(60_000);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(zendesk.requests().len(), 1);
    assert_eq!(typeform.requests().len(), 1);

    // New items, then the next slot (5 minutes on).
    zendesk.change(3, "new ticket", s + 90_000);
    zendesk.change(2, "recent, edited", s + 100_000);
    typeform.submit("tok-new", "new@example.com", s + 120_000);
    clock.set(s + 300_000);
    let zd = hub.polled("zendesk.tickets_updated", s + 300_000).await;
    let tf = hub
        .polled("typeform_responses.responses", s + 300_000)
        .await;
    assert_eq!(zendesk.requests().len(), 2);
    assert_eq!(
        zendesk.requests()[1].get("cursor"),
        Some(&"cur-2".to_string())
    );
    assert_eq!(zendesk.requests()[1].get("start_time"), None);
    assert_eq!((zd.last_items, zd.last_new, zd.events), (2, 2, 3), "{zd:?}");
    // `since` is the high-water mark: the response at it comes back and is
    // not an event (the first run only saw it).
    assert_eq!(
        typeform.requests()[1].get("since"),
        Some(&"2030-01-01T00:00:30Z".to_string())
    );
    assert_eq!((tf.last_items, tf.last_new), (2, 1), "{tf:?}");

    // Every event's run called Slack once (before the clock moves on: a
    // jump past a lease's end would hand a run in flight to a second worker).
    let texts = eventually(20, "every event's run", || async {
        let t = slack_texts(&slack);
        (t.len() == 4).then_some(t)
    })
    .await;
    // One more slot with nothing new: the newest response comes back (since
    // is inclusive) and is not an event again.
    clock.set(s + 600_000);
    let tf = hub
        .polled("typeform_responses.responses", s + 600_000)
        .await;
    assert_eq!((tf.last_items, tf.last_new, tf.events), (1, 0, 1), "{tf:?}");
    assert_eq!(
        texts,
        vec![
            "response tok-new from new@example.com",
            "ticket 2: recent",
            "ticket 2: recent, edited",
            "ticket 3: new ticket",
        ]
    );
    hub.polled("zendesk.tickets_updated", s + 600_000).await;
    hub.stop().await;
    let (zd_requests, tf_requests) = (zendesk.requests().len(), typeform.requests().len());
    assert_eq!((zd_requests, tf_requests), (3, 3));

    // A restart inside the same slot polls nothing: the slot was claimed.
    let hub = Running::start(rig.catalog(), store.clone(), &clock);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(zendesk.requests().len(), zd_requests);
    assert_eq!(typeform.requests().len(), tf_requests);
    // The next slot does, from the stored cursor; nothing seen fires again.
    clock.set(s + 900_000);
    hub.polled("zendesk.tickets_updated", s + 900_000).await;
    hub.polled("typeform_responses.responses", s + 900_000)
        .await;
    assert_eq!(
        zendesk.requests().last().unwrap().get("cursor"),
        Some(&"cur-4".to_string())
    );
    hub.stop().await;
    assert_eq!(events(&*store).len(), 4);
    assert_eq!(slack_texts(&slack).len(), 4);
    assert!(
        zendesk.violations().is_empty(),
        "{:?}",
        zendesk.violations()
    );
    assert!(
        typeform.violations().is_empty(),
        "{:?}",
        typeform.violations()
    );
}

const FEED: &str = r#"name: feed
base_url: https://feed.example
actions:
  list:
    method: GET
    path: /items
    inputs: { since: {} }
    query: { since: "{{ input.since }}" }
polls:
  items:
    action: list
    every: 1m
    with: { since: "{{ cursor }}" }
    items: "$.items[*]"
    id: "$.id"
    cursor: { item: "$.n", initial: "{{ 0 }}" }
    first_run: all
"#;

const ON_FEED: &str = r#"name: on-feed
on: { connector: feed, event: items }
steps:
  - id: seen
    set: { id: "{{ event.id }}" }
"#;

fn feed_answer(status: u16, body: Value) -> Vec<Route> {
    vec![route(axum::http::Method::GET, "/items", status, body)]
}

/// A poll's bad input and failures on virtual time: an items path that
/// selects nothing is a warning (the poll succeeds), an item without an id
/// fails the poll naming the path and stores nothing, a 503 is tried again
/// within the slot, and the cursor stays where it was until a poll succeeds;
/// items below the high-water mark are skipped, the one at it dedupes.
#[tokio::test]
async fn bad_answers_and_failures_keep_the_polls_place() {
    let api = MockApi::start(feed_answer(200, json!({"results": []}))).await;
    let rig = Rig::new(&[("on-feed", ON_FEED)], &[("feed", &api.url)]);
    rig.cfg.connector("feed", FEED);
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
    let clock = VirtualClock::at(T0);
    let hub = Running::start(rig.catalog(), store.clone(), &clock);

    // 1. `$.items[*]` selects nothing (the answer has `results`): a warning, not an error.
    let st = hub.polled("feed.items", T0).await;
    assert_eq!(st.last_error, None);
    assert!(
        st.warning
            .as_deref()
            .unwrap()
            .contains("`items: $.items[*]` selects nothing"),
        "{st:?}"
    );
    assert_eq!(api.calls("/items")[0].query.as_deref(), Some("since=0"));

    // 2. An item without an id: the poll fails, naming the path; nothing is stored.
    api.set_routes(feed_answer(
        200,
        json!({"items": [{"id": "a", "n": 1}, {"n": 2}]}),
    ));
    clock.advance(60_000);
    let st = eventually(20, "the second poll fails", || async {
        hub.state("feed.items").filter(|s| s.failures == 1)
    })
    .await;
    assert_eq!(
        st.last_error.as_deref(),
        Some("item 1 of `$.items[*]` has no id at `$.id`")
    );
    assert_eq!(st.cursor, Some(json!(0)));
    assert_eq!(st.last_success, Some(T0));
    assert!(events(&*store).is_empty());

    // 3. A 503 is tried again within the slot, after the backoff (on the
    // engine's clock); meanwhile the API recovers.
    api.set_routes(feed_answer(503, json!({"error": "busy"})));
    clock.advance(60_000);
    let st = eventually(20, "the third poll fails", || async {
        hub.state("feed.items").filter(|s| s.failures == 2)
    })
    .await;
    assert_eq!(
        st.last_error.as_deref(),
        Some("page 1: feed.list: HTTP 503")
    );
    api.set_routes(feed_answer(
        200,
        json!({"items": [{"id": "a", "n": 1}, {"id": "b", "n": 2}]}),
    ));
    let calls = api.calls("/items").len();
    clock.advance(1_000);
    let st = hub.polled("feed.items", T0 + 121_000).await;
    assert_eq!(api.calls("/items").len(), calls + 1);
    assert_eq!((st.failures, st.last_error.as_ref()), (0, None));
    assert_eq!(st.cursor, Some(json!(2)));
    assert_eq!((st.last_items, st.last_new, st.events), (2, 2, 2));
    assert_eq!(st.warning, None);

    // 4. From the mark on: `a` is below it (skipped), `b` at it (a duplicate), `c` new.
    api.set_routes(feed_answer(
        200,
        json!({"items": [{"id": "a", "n": 1}, {"id": "b", "n": 2}, {"id": "c", "n": 3}]}),
    ));
    clock.set(T0 + 180_000);
    let st = hub.polled("feed.items", T0 + 180_000).await;
    assert_eq!(
        api.calls("/items").last().unwrap().query.as_deref(),
        Some("since=2")
    );
    assert_eq!((st.last_items, st.last_new, st.events), (3, 1, 3), "{st:?}");
    let ids: Vec<String> = events(&*store)
        .iter()
        .map(|e| e.delivery_id.clone().unwrap())
        .collect();
    assert_eq!(ids, ["items/a", "items/b", "items/c"]);
    hub.stop().await;
}

/// A cursor that renders empty sends nothing: the poll fails with the reason.
#[tokio::test]
async fn a_cursor_that_renders_empty_sends_nothing() {
    let api = MockApi::start(feed_answer(200, json!({"items": []}))).await;
    let rig = Rig::new(&[("on-feed", ON_FEED)], &[("feed", &api.url)]);
    rig.cfg.connector(
        "feed",
        &FEED.replace(r#"initial: "{{ 0 }}""#, r#"initial: "{{ '' }}""#),
    );
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
    let clock = VirtualClock::at(T0);
    let hub = Running::start(rig.catalog(), store.clone(), &clock);
    let st = eventually(20, "the poll fails", || async {
        hub.state("feed.items").filter(|s| s.failures == 1)
    })
    .await;
    assert_eq!(
        st.last_error.as_deref(),
        Some("`cursor.initial` rendered empty: the poll is not sent (it would ask for everything)")
    );
    assert!(!st.started);
    hub.stop().await;

    // A `with:` value reading the cursor that renders empty: the same.
    rig.cfg.connector(
        "feed",
        &FEED.replace(
            r#"since: "{{ cursor }}""#,
            r#"since: "{{ cursor.x | default('') }}""#,
        ),
    );
    let hub = Running::start(rig.catalog(), store.clone(), &clock);
    clock.advance(60_000);
    let st = eventually(20, "the poll fails again", || async {
        hub.state("feed.items").filter(|s| s.failures == 2)
    })
    .await;
    assert_eq!(
        st.last_error.as_deref(),
        Some("input `since` rendered empty from the cursor or page: the poll is not sent (it would ask for everything)")
    );
    hub.stop().await;
    assert!(api.calls("/items").is_empty());
}

/// `check` reports a bad `polls:` section at the offending key.
#[test]
fn bad_polls_are_check_errors_with_positions() {
    let cfg = Config::connectors_only();
    let file = cfg.connector(
        "feed",
        r#"name: feed
base_url: https://feed.example
actions:
  list:
    method: GET
    path: /items
    inputs: { since: {} }
    query: { since: "{{ input.since }}" }
polls:
  items:
    action: lst
    every: 500ms
    with: { sinc: "{{ cursor }}" }
    items: "items[*]"
    id: "$.id"
  more:
    action: list
    every: 1m
    jitter: 2m
    with: { since: "{{ event.x }}" }
    items: "$.items"
    id: ["$.id", "$..["]
    cursor: { item: "$.n", response: "$.next" }
    pages: { max: 500 }
    first_run: { latest: 0 }
"#,
    );
    let out = cfg.check();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    let f = file.display();
    for want in [
        format!("{f}:11:13: poll `items`: unknown action `lst` of connector `feed`; did you mean `list`?"),
        format!("{f}:12:12: `every` must be at least 1s, got 500ms"),
        format!("{f}:14:12: invalid JSONPath `items[*]`: expected it to start with `$`"),
        format!("{f}:19:13: `jitter` must not be longer than `every`"),
        format!("{f}:20:20: unknown template variable `event.x`: a poll's `with:` reads `cursor` and `page`"),
        format!("{f}:22:18: invalid JSONPath `$..[`: expected selector at column 5"),
        format!("{f}:23:13: `cursor` takes exactly one of `item`"),
        format!("{f}:24:12: `pages` needs `token`"),
        format!("{f}:24:19: `pages.max` must be 1 to 100, got 500"),
        format!("{f}:25:26: `latest` must be at least 1"),
    ] {
        assert!(err.contains(&want), "wanted: {want}\n{err}");
    }

    // A recipe is checked against the polls' events.
    let cfg = Config::connectors_only();
    cfg.connector("feed", FEED);
    let file = cfg.recipe("on-feed", &ON_FEED.replace("event: items", "event: itemz"));
    let out = cfg.check();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let want = format!(
        "{}:2:31: connector `feed` has no `webhook:` section; its polls make `items` events; did you mean `items`?",
        file.display()
    );
    assert!(
        stderr(&out).contains(&want),
        "wanted: {want}\n{}",
        stderr(&out)
    );
}

/// Through the real binary: a poll every second against a mock on
/// 127.0.0.1 turns items into events (origin `poll`) and runs; `polls`
/// shows its status; after a kill -9 and a restart on the same store the
/// items seen before start nothing (no cursor here: the event dedupe alone
/// is the seen-set), and only the new one runs.
#[tokio::test]
async fn the_binary_polls_and_a_restart_replays_nothing() {
    let items = |ids: &[&str]| {
        let list: Vec<Value> = ids
            .iter()
            .map(|i| json!({"id": i, "text": format!("item {i}")}))
            .collect();
        let mut routes = vec![route(
            axum::http::Method::GET,
            "/items",
            200,
            json!({"items": list}),
        )];
        routes.extend(slack_ok());
        routes
    };
    let api = MockApi::start(items(&["a", "b"])).await;
    let cfg = Config::connectors_only();
    cfg.connector(
        "feed",
        r#"name: feed
base_url: https://feed.example
actions:
  list:
    method: GET
    path: /items
polls:
  items:
    action: list
    every: 1s
    items: "$.items"
    id: "$.id"
    first_run: all
"#,
    );
    cfg.recipe(
        "relay",
        r#"name: relay
on: { connector: feed, event: items }
steps:
  - call: slack.post_message
    with: { channel: C1, text: "{{ event.text }}" }
"#,
    );
    let data = cfg.dir.path().join("data");
    let opts = HubOptions {
        data: Some(data.clone()),
        ..cfg
            .options()
            .base_url("feed", &api.url)
            .base_url("slack", &api.url)
    };
    let mut hub = Hub::start(opts.clone()).await;
    let events = eventually(30, "two polled events", || async {
        let e = hub.items("/api/events").await;
        (e.len() == 2).then_some(e)
    })
    .await;
    for e in &events {
        assert_eq!(e["connector"], "feed");
        assert_eq!(e["origin"], "poll");
        assert_eq!(e["event_type"], "items");
        let run = hub.wait_run(e["runs"][0].as_str().unwrap()).await;
        assert_eq!(run["status"], "succeeded", "{run}");
    }
    let (status, polls) = hub.api("/api/polls").await;
    assert_eq!(status, 200, "{polls}");
    let feed = polls
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "feed.items")
        .unwrap()
        .clone();
    assert_eq!(feed["active"], true, "{feed}");
    assert_eq!(feed["every_ms"], 1000);
    assert_eq!(feed["started"], true);
    assert!(
        feed["last_success"].is_i64() && feed["next_due"].is_i64(),
        "{feed}"
    );
    let text = hub.cli(&["polls"]);
    let text = stdout(&text);
    assert!(
        text.starts_with("feed.items  runs\n  event items, every 1s\n  next due"),
        "{text}"
    );

    // Several polls of the same two items later, kill -9; then a third item.
    eventually(30, "more polls of the same items", || async {
        (api.calls("/items").len() >= 3).then_some(())
    })
    .await;
    hub.kill();
    api.set_routes(items(&["a", "b", "c"]));
    let hub = Hub::start(opts).await;
    eventually(30, "the new item's run", || async {
        let e = hub.items("/api/events").await;
        (e.len() == 3).then_some(())
    })
    .await;
    let calls = api.calls("/items").len();
    eventually(30, "polls after the new item", || async {
        (api.calls("/items").len() >= calls + 2).then_some(())
    })
    .await;
    let events = hub.items("/api/events").await;
    assert_eq!(events.len(), 3, "{events:?}");
    for e in &events {
        hub.wait_run(e["runs"][0].as_str().unwrap()).await;
    }
    let mut texts = slack_texts(&api);
    texts.dedup();
    assert_eq!(texts, ["item a", "item b", "item c"]);
    assert_eq!(slack_texts(&api).len(), 3, "a seen item ran again");
}

/// A connector `feed` with an action per path (`/items`, `/more`, `/tick`)
/// and `polls` (name, every) over them, and a recipe per polled event.
fn feed_files(cfg: &Config, polls: &[(&str, &str)], recipes: &[&str]) {
    let mut yaml = String::from("name: feed\nbase_url: https://feed.example\nactions:\n");
    for p in ["items", "more", "tick"] {
        yaml.push_str(&format!("  list_{p}:\n    method: GET\n    path: /{p}\n"));
    }
    yaml.push_str("polls:\n");
    for (p, every) in polls {
        yaml.push_str(&format!(
            "  {p}:\n    action: list_{p}\n    every: {every}\n    items: \"$.items\"\n    id: \"$.id\"\n"
        ));
    }
    cfg.connector("feed", &yaml);
    for p in ["items", "more", "tick"] {
        let file = cfg.recipes.join(format!("on-{p}.yaml"));
        if recipes.contains(&p) {
            cfg.recipe(
                &format!("on-{p}"),
                &ON_FEED
                    .replace("name: on-feed", &format!("name: on-{p}"))
                    .replace("event: items", &format!("event: {p}")),
            );
        } else if file.exists() {
            std::fs::remove_file(file).unwrap();
        }
    }
}

/// `POST /api/catalog/reload`; its outcome.
async fn reload(hub: &Hub) -> Value {
    let resp = hub
        .http
        .post(format!("{}/api/catalog/reload", hub.url))
        .bearer_auth(&hub.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["outcome"], "installed", "{v}");
    v
}

/// Through the binary: a reload starts a poll a new recipe triggers on,
/// applies a poll's changed interval (1s → 1h: one poll of the new slot,
/// then none), and stops a poll no recipe triggers on any more.
#[tokio::test]
async fn a_reload_starts_stops_and_changes_polls() {
    let mut routes = Vec::new();
    for p in ["/items", "/more", "/tick"] {
        routes.push(route(axum::http::Method::GET, p, 200, json!({"items": []})));
    }
    let api = MockApi::start(routes).await;
    let cfg = Config::connectors_only();
    feed_files(&cfg, &[("items", "1s")], &["items"]);
    let mut opts = cfg.options().base_url("feed", &api.url);
    opts.args = vec!["--watch".into(), "off".into()];
    let hub = Hub::start(opts).await;
    let count = |p: &str| api.calls(p).len();
    eventually(30, "two polls of /items", || async {
        (count("/items") >= 2).then_some(())
    })
    .await;
    assert_eq!(count("/more"), 0);

    // `items` every hour now; `more` added (with its recipe).
    feed_files(&cfg, &[("items", "1h"), ("more", "1s")], &["items", "more"]);
    reload(&hub).await;
    let items_after = eventually(30, "the added poll runs", || async {
        (count("/more") >= 1).then(|| count("/items"))
    })
    .await;
    let more = count("/more");
    eventually(30, "three more polls of /more", || async {
        (count("/more") >= more + 3).then_some(())
    })
    .await;
    // At most the new hourly slot's poll (if it had not happened yet when
    // /more was first polled); every second would be three more.
    assert!(
        count("/items") <= items_after + 1,
        "{} after {items_after}",
        count("/items")
    );
    let (_, polls) = hub.api("/api/polls").await;
    let every = |name: &str| {
        polls
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["every_ms"].clone())
    };
    assert_eq!(every("feed.items"), Some(json!(3_600_000)), "{polls}");

    // `more`'s recipe removed (its poll stays declared): it stops; `tick`
    // starts and is the clock to wait by.
    feed_files(
        &cfg,
        &[("items", "1h"), ("more", "1s"), ("tick", "1s")],
        &["items", "tick"],
    );
    reload(&hub).await;
    let more = count("/more");
    eventually(30, "three polls of /tick", || async {
        (count("/tick") >= 3).then_some(())
    })
    .await;
    assert!(
        count("/more") <= more + 1,
        "{} after {more}",
        count("/more")
    );
    let (_, polls) = hub.api("/api/polls").await;
    let more_poll = polls
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "feed.more")
        .cloned()
        .unwrap_or(Value::Null);
    assert_ne!(more_poll["active"], true, "{polls}");
}

/// Two `serve` processes on one PostgreSQL poll the same vendor mock: one
/// request per slot in all (every request's Idempotency-Key names its
/// slot, and no key comes twice), and each item becomes one event, with
/// one run, whichever node polled it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_postgres_poll_once_per_interval() {
    let db = PgSchema::fresh();
    let items = |ids: &[&str]| {
        let list: Vec<Value> = ids.iter().map(|i| json!({"id": i})).collect();
        vec![route(
            axum::http::Method::GET,
            "/items",
            200,
            json!({"items": list}),
        )]
    };
    let api = MockApi::start(items(&["a", "b"])).await;
    let cfg = Config::connectors_only();
    cfg.connector(
        "feed",
        r#"name: feed
base_url: https://feed.example
actions:
  list:
    method: GET
    path: /items
polls:
  items:
    action: list
    every: 1s
    items: "$.items"
    id: "$.id"
    first_run: all
"#,
    );
    cfg.recipe("on-feed", ON_FEED);
    let node = |name: &str| {
        let mut opts = cfg.options().base_url("feed", &api.url);
        opts.data = Some(cfg.dir.path().join(name));
        opts.args = vec!["--store".into(), db.url.clone()];
        opts
    };
    let a = Hub::start(node("a")).await;
    let b = Hub::start(node("b")).await;
    eventually(30, "four polls", || async {
        (api.calls("/items").len() >= 4).then_some(())
    })
    .await;
    api.set_routes(items(&["a", "b", "c"]));
    let calls = api.calls("/items").len();
    eventually(30, "four more polls", || async {
        (api.calls("/items").len() >= calls + 4).then_some(())
    })
    .await;
    drop((a, b));
    let keys: Vec<String> = api
        .calls("/items")
        .iter()
        .map(|r| r.header("idempotency-key").unwrap().to_string())
        .collect();
    let distinct: std::collections::HashSet<&String> = keys.iter().collect();
    assert_eq!(
        distinct.len(),
        keys.len(),
        "a slot was polled twice: {keys:?}"
    );
    assert!(
        keys.iter().all(|k| k.starts_with("poll:feed.items@")),
        "{keys:?}"
    );
    // Each item one event, each with one run, through a third look at the store.
    let c = Hub::start(node("c")).await;
    let events = c.items("/api/events").await;
    let mut ids: Vec<String> = events
        .iter()
        .map(|e| e["delivery_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, ["items/a", "items/b", "items/c"], "{events:?}");
    for e in &events {
        assert_eq!(e["origin"], "poll");
        assert_eq!(e["runs"].as_array().unwrap().len(), 1, "{e}");
    }
    drop(c);
    db.drop_now();
}

/// Through the binary: an items path that selects nothing is logged once
/// as a warning, not an error per poll, and the polls keep succeeding.
#[tokio::test]
async fn an_items_path_selecting_nothing_warns_once() {
    let api = MockApi::start(vec![route(
        axum::http::Method::GET,
        "/items",
        200,
        json!({"results": [{"id": "a"}]}),
    )])
    .await;
    let cfg = Config::connectors_only();
    feed_files(&cfg, &[("items", "1s")], &["items"]);
    let log = cfg.dir.path().join("hub.log");
    let mut opts = cfg.options().base_url("feed", &api.url);
    opts.log_file = Some(log.clone());
    let hub = Hub::start(opts).await;
    eventually(30, "three polls", || async {
        (api.calls("/items").len() >= 3).then_some(())
    })
    .await;
    let (_, polls) = hub.api("/api/polls").await;
    let feed = polls
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "feed.items")
        .cloned()
        .unwrap();
    assert!(feed["last_error"].is_null(), "{feed}");
    assert!(
        feed["warning"]
            .as_str()
            .unwrap_or("")
            .contains("`items: $.items` selects nothing"),
        "{feed}"
    );
    drop(hub);
    let text = std::fs::read_to_string(&log).unwrap();
    let warnings = text.matches("selects nothing").count();
    assert_eq!(warnings, 1, "{text}");
    assert!(!text.contains("ERROR"), "{text}");
}
