//! The web dashboard at `/ui/`: overview, events, runs with their step
//! timeline and retry buttons, recipes and connectors — HTML rendered on
//! the server from the admin API's typed answers.
//!
//! It reads and acts **only through [`crate::admin::console::Console`]**,
//! the calls behind `/api`: never the store, the engine or a recipe
//! directly (`tests/it/architecture.rs` checks it), so what a page shows is
//! what the API answers. Its assets (templates, CSS, a small script) are
//! compiled into the binary; nothing is built or fetched at run time.
//!
//! Nothing is readable without a session: signing in with the admin token
//! starts one ([`session`]); a missing, wrong or expired session gets the
//! sign-in page and no data. Every state-changing request (retry, sign-out)
//! is a POST carrying the session's CSRF token, from the same origin.

pub mod chart;
pub mod session;

use crate::admin::console::{Console, Range};
use crate::admin::queries::{self, EventsQuery, QueryError, RunsQuery};
use axum::extract::{Form, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use minijinja::{context, Environment};
use serde::Deserialize;
use session::{Session, Sessions};
use std::sync::Arc;

/// How the dashboard is served.
#[derive(Debug, Clone, Default)]
pub struct DashboardConfig {
    /// Mark the session cookie `Secure`: set when the hub is reached over
    /// HTTPS (its `--public-url` starts with `https://`, i.e. behind a TLS
    /// proxy). Over plain HTTP a browser would not send a `Secure` cookie.
    pub secure_cookies: bool,
    /// The origin (`https://hub.example.com`) of `--public-url`: behind a
    /// proxy that rewrites `Host`, forms are accepted from it as well as
    /// from the `Host` the request names.
    pub public_origin: Option<String>,
}

impl DashboardConfig {
    /// The configuration for a hub reached at `public_url` (its `--public-url`).
    pub fn for_public_url(public_url: Option<&str>) -> DashboardConfig {
        let origin = public_url.and_then(|u| {
            let (scheme, rest) = u.split_once("://")?;
            let host = rest.split('/').next().filter(|h| !h.is_empty())?;
            Some(format!("{scheme}://{host}"))
        });
        DashboardConfig {
            secure_cookies: public_url.is_some_and(|u| u.starts_with("https://")),
            public_origin: origin,
        }
    }
}

#[derive(Clone)]
struct Ui {
    console: Console,
    sessions: Arc<Sessions>,
    pages: Arc<Environment<'static>>,
    config: DashboardConfig,
}

/// The templates, compiled when the router is built. Each page template
/// renders the inside of `<main>`; `base.html` wraps it. (No `extends` or
/// macros: those are minijinja features the recipe templates must not get,
/// and features are shared by every user of the crate.)
const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("login.html", include_str!("templates/login.html")),
    ("error.html", include_str!("templates/error.html")),
    ("overview.html", include_str!("templates/overview.html")),
    ("events.html", include_str!("templates/events.html")),
    ("event.html", include_str!("templates/event.html")),
    ("runs.html", include_str!("templates/runs.html")),
    ("run.html", include_str!("templates/run.html")),
    ("confirm.html", include_str!("templates/confirm.html")),
    ("recipes.html", include_str!("templates/recipes.html")),
    ("recipe.html", include_str!("templates/recipe.html")),
    ("replay.html", include_str!("templates/replay.html")),
];
const CSS: &str = include_str!("assets/app.css");
const JS: &str = include_str!("assets/app.js");

/// The routes under `/ui`.
pub fn router(console: Console, config: DashboardConfig) -> Router {
    let ui = Ui {
        console,
        sessions: Arc::new(Sessions::default()),
        pages: Arc::new(environment()),
        config,
    };
    let private = Router::new()
        .route("/ui/", get(overview))
        .route("/ui/events", get(events))
        .route("/ui/events/{id}", get(event))
        .route("/ui/runs", get(runs))
        .route("/ui/runs/{id}", get(run))
        .route("/ui/runs/{id}/retry", get(confirm_retry).post(retry))
        .route("/ui/recipes", get(recipes))
        .route("/ui/recipes/{name}", get(recipe))
        .route(
            "/ui/recipes/{name}/retry",
            get(confirm_retry_recipe).post(retry_recipe),
        )
        .route("/ui/replay", get(replay))
        .route("/ui/logout", axum::routing::post(logout))
        .route_layer(middleware::from_fn_with_state(ui.clone(), require_session));
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/login", get(login_page).post(login))
        .route(
            "/ui/assets/app.css",
            get(|| async { asset(CSS, "text/css") }),
        )
        .route(
            "/ui/assets/app.js",
            get(|| async { asset(JS, "text/javascript") }),
        )
        .merge(private)
        .layer(middleware::from_fn(security_headers))
        .with_state(ui)
}

/// Compile every template; a template that does not parse is a bug caught
/// by the tests, not at a user's first visit.
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::Html);
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Chainable);
    for (name, source) in TEMPLATES {
        if let Err(e) = env.add_template(name, source) {
            tracing::error!(template = name, error = %e, "dashboard template does not compile");
        }
    }
    env.add_filter("when", |ms: i64| when(ms));
    env.add_filter("clock", |ms: i64| clock_time(ms));
    env.add_filter("ago", |ms: i64, now: i64| ago(now - ms));
    env.add_filter("dur", |ms: i64| duration(ms));
    env.add_filter("pct", |v: f64| format!("{:.0} %", v * 100.0));
    env.add_filter("pretty", |v: minijinja::Value| {
        serde_json::to_string_pretty(&v).unwrap_or_default()
    });
    env.add_filter("badge", |status: String| {
        minijinja::Value::from_safe_string(badge(&status))
    });
    env.add_filter("json_block", |v: minijinja::Value, label: String| {
        let text = serde_json::to_string_pretty(&v).unwrap_or_default();
        minijinja::Value::from_safe_string(format!(
            r#"<pre class="json" tabindex="0" aria-label="{}"><code>{}</code></pre>"#,
            esc(&label),
            esc(&text)
        ))
    });
    // A replay's verdict and step changes, written out, coloured by kind.
    env.add_filter("verdict", |v: String| {
        let (text, class) = match v.as_str() {
            "unchanged" => ("unchanged", "succeeded"),
            "changed" => ("changed", "retrying"),
            "new_run" => ("new run", "queued"),
            "no_longer_starts" => ("no longer starts", "failed"),
            other => (other, "skipped"),
        };
        minijinja::Value::from_safe_string(badge_as(text, class))
    });
    env.add_filter("change", |c: String| match c.as_str() {
        "would_call" => "would call (no recorded answer: not made)".to_string(),
        "added" => "added".into(),
        "removed" => "no longer runs".into(),
        "inputs" => "other inputs".into(),
        "call" => "another call".into(),
        other => other.replace('_', " "),
    });
    env.add_filter("breaker", |b: minijinja::Value| {
        let field = |k: &str| {
            b.get_attr(k)
                .ok()
                .map(|v| v.to_string())
                .unwrap_or_default()
        };
        let html = match field("state").as_str() {
            "closed" => format!(
                r#"{} <span class="muted">{} of {} failures</span>"#,
                badge_as("closed", "succeeded"),
                esc(&field("failures")),
                esc(&field("opens_after"))
            ),
            "open" => format!(
                r#"{} <span class="muted">probe in {}</span>"#,
                badge_as("open", "dead"),
                duration(field("probe_in_ms").parse().unwrap_or(0))
            ),
            "half_open" => badge_as("half open", "retrying"),
            _ => r#"<span class="muted">off</span>"#.to_string(),
        };
        minijinja::Value::from_safe_string(html)
    });
    env.add_function(
        "usage",
        |label: String, used: Option<i64>, max: Option<i64>| {
            let html = match (used, max) {
                (Some(u), Some(m)) => format!(
                    r#"<label class="usage">{l} <meter min="0" max="{m}" value="{u}">{u} of {m}</meter> {u}/{m}</label>"#,
                    l = esc(&label)
                ),
                _ => String::new(),
            };
            minijinja::Value::from_safe_string(html)
        },
    );
    env
}

/// HTML-escape text for the few fragments built here.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A status written out (never colour alone), coloured by its class.
fn badge(status: &str) -> String {
    badge_as(&status.replace('_', " "), status)
}

fn badge_as(text: &str, class: &str) -> String {
    format!(
        r#"<span class="badge s-{}">{}</span>"#,
        esc(class),
        esc(text)
    )
}

/// `2026-11-30 09:00:05 UTC`.
fn when(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|_| ms.to_string())
}

/// `09:00`.
pub(crate) fn clock_time(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%H:%M").to_string())
        .unwrap_or_default()
}

/// `3 s ago`, `5 min ago`, `2 h ago`, `4 d ago`.
fn ago(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{s} s ago"),
        60..3600 => format!("{} min ago", s / 60),
        3600..86400 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86400),
    }
}

/// `85 ms`, `1.2 s`, `3 min 5 s`.
fn duration(ms: i64) -> String {
    match ms {
        ..1000 => format!("{ms} ms"),
        1000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => format!("{} min {} s", ms / 60_000, ms % 60_000 / 1000),
    }
}

fn asset(body: &'static str, kind: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// What every dashboard answer carries: no framing, no inline script or
/// style, no caching of pages with data, no referrer leaving the hub.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// The session id from the request's cookie, if it sent one.
fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == session::COOKIE)
        .map(|(_, v)| v.to_string())
}

/// A page needs a live session: without one, the sign-in page (GET) or a
/// refusal (anything else), and no data either way. A state-changing
/// request must also come from this origin.
async fn require_session(State(ui): State<Ui>, mut req: Request, next: Next) -> Response {
    let found = session_id(req.headers()).and_then(|id| ui.sessions.get(&id, ui.console.now_ms()));
    let Some(session) = found else {
        if req.method() == axum::http::Method::GET {
            let next_path = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_default();
            let to = format!(
                "/ui/login?{}",
                serde_urlencoded::to_string([("next", next_path)]).unwrap_or_default()
            );
            return Redirect::to(&to).into_response();
        }
        return PageError::Forbidden("You are signed out. Sign in again and retry.".into())
            .render(&ui);
    };
    if req.method() != axum::http::Method::GET
        && !same_origin(req.headers(), ui.config.public_origin.as_deref())
    {
        return PageError::Forbidden("This request came from another site.".into()).render(&ui);
    }
    req.extensions_mut().insert(session);
    next.run(req).await
}

/// No `Origin`, or one naming the host the request was sent to. (Browsers
/// send `Origin` on every cross-site POST; SameSite=Strict already keeps
/// the cookie off those, and the CSRF token is the third lock.)
fn same_origin(headers: &HeaderMap, public_origin: Option<&str>) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    if public_origin.is_some_and(|p| p.eq_ignore_ascii_case(origin)) {
        return true;
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin.split_once("://").map(|(_, h)| h).unwrap_or("");
    !host.is_empty() && origin_host == host
}

/// Why a page cannot be shown; rendered as an HTML page with its status.
#[derive(Debug)]
enum PageError {
    NotFound(String),
    BadRequest(String),
    Conflict(String),
    Forbidden(String),
    Internal(String),
}

impl From<QueryError> for PageError {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::NotFound { .. } => PageError::NotFound(e.to_string()),
            QueryError::UnknownStatus { .. } | QueryError::BadTime { .. } => {
                PageError::BadRequest(e.to_string())
            }
            QueryError::NotRetryable { .. } => PageError::Conflict(e.to_string()),
            QueryError::Store(e) => PageError::Internal(e.to_string()),
        }
    }
}

impl PageError {
    fn render(self, ui: &Ui) -> Response {
        let (status, message) = match self {
            PageError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            PageError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            PageError::Conflict(m) => (StatusCode::CONFLICT, m),
            PageError::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            PageError::Internal(detail) => {
                tracing::error!(%detail, "dashboard error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Something went wrong on the hub; its log says what.".to_string(),
                )
            }
        };
        let body = page(
            ui,
            "error.html",
            "Error",
            context! { status => status.as_u16(), message },
        );
        (status, body).into_response()
    }
}

/// Render a page template inside `base.html`; a failure is logged and answered 500.
fn page(ui: &Ui, name: &str, title: &str, ctx: minijinja::Value) -> Response {
    let rendered = ui
        .pages
        .get_template(name)
        .and_then(|t| t.render(&ctx))
        .and_then(|content| {
            let full = context! {
                content => minijinja::Value::from_safe_string(content),
                title,
                ..ctx
            };
            ui.pages.get_template("base.html")?.render(full)
        });
    match rendered {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(template = name, error = %e, "dashboard template failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Html("<!doctype html><title>Error</title><p>The page could not be drawn; the hub's log says why.</p>"),
            )
                .into_response()
        }
    }
}

/// The context every signed-in page has.
fn base(ui: &Ui, s: &Session, key: &str) -> minijinja::Value {
    context! {
        csrf => s.csrf.clone(),
        page => key,
        now => ui.console.now_ms(),
        nav => vec![
            context! { key => "overview", href => "/ui/", label => "Overview" },
            context! { key => "events", href => "/ui/events", label => "Events" },
            context! { key => "runs", href => "/ui/runs", label => "Runs" },
            context! { key => "recipes", href => "/ui/recipes", label => "Recipes & connectors" },
            context! { key => "replay", href => "/ui/replay", label => "Replay" },
        ],
    }
}

type PageResult = Result<Response, PageError>;

fn done(ui: &Ui, r: PageResult) -> Response {
    r.unwrap_or_else(|e| e.render(ui))
}

// ---- sign-in ----

#[derive(Deserialize, Default)]
struct LoginQuery {
    next: Option<String>,
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
    next: Option<String>,
}

/// Only a path of this dashboard is a place to go after signing in.
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n) if n.starts_with("/ui/") && !n.contains("//") && !n.contains('\\') => n,
        _ => "/ui/",
    }
}

async fn login_page(State(ui): State<Ui>, Query(q): Query<LoginQuery>) -> Response {
    page(
        &ui,
        "login.html",
        "Sign in",
        context! { next => safe_next(q.next.as_deref()), error => () },
    )
}

async fn login(State(ui): State<Ui>, Form(f): Form<LoginForm>) -> Response {
    let next = safe_next(f.next.as_deref()).to_string();
    if !ui.console.token_matches(f.token.trim()) {
        tracing::warn!("dashboard sign-in with a wrong token");
        let body = page(
            &ui,
            "login.html",
            "Sign in",
            context! { next, error => "That is not this hub's admin token." },
        );
        return (StatusCode::UNAUTHORIZED, body).into_response();
    }
    let id = ui.sessions.create(ui.console.now_ms());
    let cookie = format!(
        "{}={id}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{}",
        session::COOKIE,
        session::MAX_AGE_MS / 1000,
        if ui.config.secure_cookies {
            "; Secure"
        } else {
            ""
        }
    );
    let mut resp = Redirect::to(&next).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

fn check_csrf(s: &Session, given: &str) -> Result<(), PageError> {
    if s.csrf_matches(given) {
        Ok(())
    } else {
        Err(PageError::Forbidden(
            "This form has expired. Go back, reload the page and try again.".into(),
        ))
    }
}

async fn logout(
    State(ui): State<Ui>,
    axum::Extension(s): axum::Extension<Session>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    if let Err(e) = check_csrf(&s, &f.csrf) {
        return e.render(&ui);
    }
    if let Some(id) = session_id(&headers) {
        ui.sessions.remove(&id);
    }
    let mut resp = Redirect::to("/ui/login").into_response();
    let clear = format!(
        "{}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0",
        session::COOKIE
    );
    if let Ok(v) = HeaderValue::from_str(&clear) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

// ---- pages ----

#[derive(Deserialize, Default)]
struct RangeQuery {
    #[serde(default)]
    range: Range,
}

async fn overview(
    State(ui): State<Ui>,
    axum::Extension(s): axum::Extension<Session>,
    Query(q): Query<RangeQuery>,
) -> Response {
    let r = (|| {
        let o = ui.console.overview(q.range)?;
        let per = chart::bucket_name(o.bucket_ms);
        let svg = chart::activity(&o, &format!("Events and runs per {per}"));
        let active: Vec<_> = o
            .buckets
            .iter()
            .filter(|b| b.events + b.runs > 0)
            .cloned()
            .collect();
        Ok(page(
            &ui,
            "overview.html",
            "Overview",
            context! {
            o, per, active,
            chart => minijinja::Value::from_safe_string(svg),
            live => true, ..base(&ui, &s, "overview") },
        ))
    })();
    done(&ui, r)
}

/// `?a=1&b=2` of `q` with `before` set, for a page link.
fn page_link<T: serde::Serialize>(path: &str, q: &T, before: &str) -> String {
    let mut pairs: Vec<(String, String)> = serde_urlencoded::to_string(q)
        .ok()
        .and_then(|s| serde_urlencoded::from_str(&s).ok())
        .unwrap_or_default();
    pairs.retain(|(k, v)| k != "before" && !v.is_empty());
    pairs.push(("before".into(), before.into()));
    format!(
        "{path}?{}",
        serde_urlencoded::to_string(&pairs).unwrap_or_default()
    )
}

async fn events(
    State(ui): State<Ui>,
    axum::Extension(s): axum::Extension<Session>,
    Query(q): Query<EventsQuery>,
) -> Response {
    let r = (|| {
        let listing = ui.console.events(&q)?;
        let older = listing
            .next
            .as_deref()
            .map(|n| page_link("/ui/events", &q, n));
        let connectors: Vec<String> = ui
            .console
            .connectors()
            .into_iter()
            .filter(|c| c.webhook.is_some())
            .map(|c| c.name)
            .collect();
        let filtered = q.before.as_deref().is_some_and(|b| !b.is_empty());
        Ok(page(
            &ui,
            "events.html",
            "Events",
            context! {
            items => listing.items, older, q, connectors,
            live => !filtered, ..base(&ui, &s, "events") },
        ))
    })();
    done(&ui, r)
}

async fn event(
    State(ui): State<Ui>,
    axum::Extension(s): axum::Extension<Session>,
    Path(id): Path<String>,
) -> Response {
    let r = (|| {
        let e = ui.console.event(&id)?;
        let live = e.runs.iter().any(|r| !r.status.is_final());
        let connector = ui
            .console
            .connectors()
            .into_iter()
            .find(|c| c.name == e.connector);
        Ok(page(
            &ui,
            "event.html",
            &format!("Event {id}"),
            context! { e, connector, live, ..base(&ui, &s, "events") },
        ))
    })();
    done(&ui, r)
}

async fn runs(
    State(ui): State<Ui>,
    axum::Extension(s): axum::Extension<Session>,
    Query(q): Query<RunsQuery>,
) -> Response {
    let r = (|| {
        let listing = ui.console.runs(&q)?;
        let older = listing
            .next
            .as_deref()
            .map(|n| page_link("/ui/runs", &q, n));
        let recipes = ui.console.recipe_names();
        let filtered = q.before.as_deref().is_some_and(|b| !b.is_empty());
        Ok(page(
            &ui,
            "runs.html",
            "Runs",
            context! {
            items => listing.items, older, q, recipes,
            statuses => queries::status_names(),
            live => !filtered, ..base(&ui, &s, "runs") },
        ))
    })();
    done(&ui, r)
}

#[derive(Deserialize, Default)]
struct FlashQuery {
    retried: Option<usize>,
}

async fn run(
    State(ui): State<Ui>,
    axum::Extension(s): axum::Extension<Session>,
    Path(id): Path<String>,
    Query(f): Query<FlashQuery>,
) -> Response {
    let r = (|| {
        let run = ui.console.run(&id)?;
        let retryable = run.status.is_failure();
        let live = !run.status.is_final();
        let timeline = timeline(&run);
        Ok(page(
            &ui,
            "run.html",
            &format!("Run {id}"),
            context! {
            run, timeline, retryable, live, retried => f.retried, ..base(&ui, &s, "runs") },
        ))
    })();
    done(&ui, r)
}

/// The run's step records in order, then the step being retried, each with
/// the status to show (`shown`) and whether it is that pending step.
fn timeline(run: &crate::admin::queries::Run) -> Vec<serde_json::Value> {
    let entry = |st: &crate::admin::queries::StepRecord, shown: &str, pending: bool| {
        let mut v = serde_json::to_value(st).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("shown".into(), shown.into());
            o.insert("pending".into(), pending.into());
            o.entry("output").or_insert(serde_json::Value::Null);
        }
        v
    };
    let mut out: Vec<_> = run
        .steps
        .iter()
        .map(|st| entry(st, queries::step_status_name(st.status), false))
        .collect();
    if let Some(p) = &run.pending {
        let shown = if run.status.is_failure() {
            queries::status_name(run.status)
        } else {
            "retrying"
        };
        out.push(entry(p, shown, true));
    }
    out
}

async fn confirm_retry(
    State(ui): State<Ui>,
    axum::Extension(s): axum::Extension<Session>,
    Path(id): Path<String>,
) -> Response {
    let r = (|| {
        let run = ui.console.run(&id)?;
        if !run.status.is_failure() {
            return Err(PageError::Conflict(
                QueryError::NotRetryable {
                    id: run.id,
                    status: run.status,
                }
                .to_string(),
            ));
        }
        let step = run
            .steps
            .iter()
            .rev()
            .find(|st| st.error.is_some())
            .map(|st| st.id.clone());
        let question = match step {
            Some(step) => format!(
                "Retry run {} of {}? It resumes at step `{step}`; steps that succeeded are not repeated.",
                run.id, run.recipe
            ),
            None => format!("Retry run {} of {}?", run.id, run.recipe),
        };
        Ok(page(
            &ui,
            "confirm.html",
            "Confirm",
            context! {
            title => "Retry this run?",
            question,
            action => format!("/ui/runs/{}/retry", run.id),
            cancel => format!("/ui/runs/{}", run.id),
            button => "Retry run", ..base(&ui, &s, "runs") },
        ))
    })();
    done(&ui, r)
}

async fn retry(
    State(ui): State<Ui>,
    axum::Extension(s): axum::Extension<Session>,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let r = (|| {
        check_csrf(&s, &f.csrf)?;
        let retried = ui.console.retry(&id)?;
        tracing::info!(run = %id, "run retried from the dashboard");
        Ok(
            Redirect::to(&format!("/ui/runs/{id}?retried={}", retried.retried.len()))
                .into_response(),
        )
    })();
    done(&ui, r)
}

async fn recipes(State(ui): State<Ui>, axum::Extension(s): axum::Extension<Session>) -> Response {
    let check = ui.console.check_files().await;
    let r = (|| {
        let recipes = ui.console.recipes()?;
        let connectors = ui.console.connectors();
        Ok(page(
            &ui,
            "recipes.html",
            "Recipes and connectors",
            context! { recipes, connectors, check, ..base(&ui, &s, "recipes") },
        ))
    })();
    done(&ui, r)
}

async fn recipe(
    State(ui): State<Ui>,
    axum::Extension(s): axum::Extension<Session>,
    Path(name): Path<String>,
    Query(f): Query<FlashQuery>,
) -> Response {
    let r = (|| {
        let d = ui.console.recipe(&name)?;
        let (yaml, yaml_error) = (d.yaml, d.yaml_error);
        Ok(page(
            &ui,
            "recipe.html",
            &format!("Recipe {name}"),
            context! {
            r => d.summary, yaml, yaml_error, retried => f.retried, ..base(&ui, &s, "recipes") },
        ))
    })();
    done(&ui, r)
}

async fn confirm_retry_recipe(
    State(ui): State<Ui>,
    axum::Extension(s): axum::Extension<Session>,
    Path(name): Path<String>,
) -> Response {
    let r = (|| {
        let d = ui.console.recipe(&name)?;
        let waiting = ui
            .console
            .runs(&RunsQuery {
                limit: Some(queries::MAX_PAGE),
                recipe: Some(name.clone()),
                status: Some("dead".into()),
                before: None,
            })?
            .items
            .len();
        let failed = ui
            .console
            .runs(&RunsQuery {
                limit: Some(queries::MAX_PAGE),
                recipe: Some(name.clone()),
                status: Some("failed".into()),
                before: None,
            })?
            .items
            .len();
        let question = format!(
            "Retry every dead ({waiting}) and failed ({failed}) run of {}? Each resumes at its failed step.",
            d.summary.name
        );
        Ok(page(
            &ui,
            "confirm.html",
            "Confirm",
            context! {
            title => "Retry every dead and failed run?",
            question,
            action => format!("/ui/recipes/{}/retry", d.summary.name),
            cancel => format!("/ui/recipes/{}", d.summary.name),
            button => "Retry them all", ..base(&ui, &s, "recipes") },
        ))
    })();
    done(&ui, r)
}

async fn retry_recipe(
    State(ui): State<Ui>,
    axum::Extension(s): axum::Extension<Session>,
    Path(name): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let r = (|| {
        check_csrf(&s, &f.csrf)?;
        let retried = ui.console.retry_recipe(&name)?;
        tracing::info!(recipe = %name, runs = retried.retried.len(), "runs retried from the dashboard");
        Ok(Redirect::to(&format!(
            "/ui/recipes/{name}?retried={}",
            retried.retried.len()
        ))
        .into_response())
    })();
    done(&ui, r)
}

/// The replay form: every field optional, so the bare page is the form.
#[derive(Deserialize, serde::Serialize, Default, Clone)]
struct ReplayForm {
    recipe: Option<String>,
    since: Option<String>,
    until: Option<String>,
    before: Option<String>,
}

impl From<crate::admin::replay::ReplayError> for PageError {
    fn from(e: crate::admin::replay::ReplayError) -> Self {
        use crate::admin::replay::ReplayError;
        match e {
            ReplayError::NoRecipe(_) => PageError::NotFound(e.to_string()),
            ReplayError::Query(q) => q.into(),
            ReplayError::Bad(m) => PageError::BadRequest(m),
            ReplayError::Source(m) => PageError::Internal(m),
        }
    }
}

/// Replay: pick a recipe and a time range; each event's verdict and the
/// steps that differ, as `GET /api/replay` answers (`Console::replay`).
async fn replay(
    State(ui): State<Ui>,
    axum::Extension(s): axum::Extension<Session>,
    Query(f): Query<ReplayForm>,
) -> Response {
    let given = |v: &Option<String>| v.clone().filter(|v| !v.trim().is_empty());
    let answer = match given(&f.recipe) {
        None => None,
        Some(recipe) => Some(
            ui.console
                .replay(crate::admin::replay::ReplayQuery {
                    recipe,
                    since: given(&f.since),
                    until: given(&f.until),
                    events: None,
                    limit: None,
                    before: given(&f.before),
                })
                .await,
        ),
    };
    let r = (|| {
        let r = answer.transpose()?;
        let older = r
            .as_ref()
            .and_then(|r| r.next.as_deref())
            .map(|n| page_link("/ui/replay", &f, n));
        let first = ReplayForm {
            before: None,
            ..f.clone()
        };
        let newest = format!(
            "/ui/replay?{}",
            serde_urlencoded::to_string(&first).unwrap_or_default()
        );
        let changed = r.as_ref().map_or(0, |r| {
            r.items
                .iter()
                .filter(|i| i.verdict != crate::admin::replay::Verdict::Unchanged)
                .count()
        });
        Ok(page(
            &ui,
            "replay.html",
            "Replay",
            context! {
            r, q => f, older, newest, changed,
            recipes => ui.console.recipe_names(), ..base(&ui, &s, "replay") },
        ))
    })();
    done(&ui, r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_compiles() {
        let env = environment();
        for (name, source) in TEMPLATES {
            let mut alone = Environment::new();
            if let Err(e) = alone.add_template(name, source) {
                panic!("{name}: {e:#}");
            }
            assert!(env.get_template(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn only_dashboard_paths_are_places_to_go_after_signing_in() {
        assert_eq!(
            safe_next(Some("/ui/runs?status=dead")),
            "/ui/runs?status=dead"
        );
        for bad in [
            "https://evil.example/",
            "//evil.example/ui/",
            "/ui//evil",
            "/api/runs",
            "/ui\\x",
        ] {
            assert_eq!(safe_next(Some(bad)), "/ui/", "{bad}");
        }
        assert_eq!(safe_next(None), "/ui/");
    }

    #[test]
    fn forms_come_from_the_host_asked_or_the_public_url() {
        let headers = |origin: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
            h.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
            h
        };
        let config = DashboardConfig::for_public_url(Some("https://hub.example.com/base"));
        assert!(config.secure_cookies);
        let public = config.public_origin.as_deref();
        assert_eq!(public, Some("https://hub.example.com"));
        assert!(same_origin(&headers("http://127.0.0.1:8080"), None));
        assert!(same_origin(&headers("https://hub.example.com"), public));
        assert!(!same_origin(&headers("https://hub.example.com"), None));
        assert!(!same_origin(&headers("https://evil.example"), public));
        assert!(
            same_origin(&HeaderMap::new(), None),
            "no Origin: the CSRF token decides"
        );
        assert!(!DashboardConfig::for_public_url(None).secure_cookies);
    }

    #[test]
    fn times_read_well() {
        assert_eq!(when(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(ago(61_000), "1 min ago");
        assert_eq!(duration(1234), "1.2 s");
        assert_eq!(duration(85), "85 ms");
    }

    #[test]
    fn page_links_keep_filters_and_drop_empty_ones() {
        let q = RunsQuery {
            status: Some("dead".into()),
            recipe: Some(String::new()),
            before: Some("OLD".into()),
            limit: None,
        };
        assert_eq!(
            page_link("/ui/runs", &q, "X"),
            "/ui/runs?status=dead&before=X"
        );
    }
}
