//! The dashboard in a real browser: Debian's Chromium, driven through
//! chromedriver by `webdriver::Browser`, against the real binary and a mock
//! Zendesk that first refuses the note and then takes it.
//!
//! Screenshots of the main pages are taken on the way. They go to a
//! temporary directory, or — with `SWITCHBOARD_SCREENSHOTS=1` — to
//! `docs/screenshots/`, which is how the README's pictures are made:
//! `SWITCHBOARD_SCREENSHOTS=1 cargo test --test it browser::`.

use crate::utils::*;
use crate::webdriver::Browser;
use axum::http::Method;
use serde_json::json;
use std::path::PathBuf;

const RECIPE: &str = r#"
name: note-new-tickets
on: { connector: zendesk, event: ticket.created }
steps:
  - id: note
    call: zendesk.add_internal_note
    with:
      ticket_id: "{{ event.ticket.id }}"
      body: "Switchboard saw {{ event.ticket.requester.email }}"
"#;

/// Where screenshots go.
struct Shots {
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Shots {
    fn new() -> Shots {
        if std::env::var("SWITCHBOARD_SCREENSHOTS").is_ok_and(|v| v == "1") {
            let dir = repo().join("docs/screenshots");
            std::fs::create_dir_all(&dir).unwrap();
            Shots { dir, _tmp: None }
        } else {
            let tmp = tempfile::tempdir().unwrap();
            Shots {
                dir: tmp.path().to_path_buf(),
                _tmp: Some(tmp),
            }
        }
    }

    async fn take(&self, browser: &Browser, name: &str, width: u32) {
        let png = browser.screenshot(width, true).await;
        assert!(png.starts_with(b"\x89PNG"), "{name} is a PNG");
        std::fs::write(self.dir.join(format!("{name}.png")), png).unwrap();
        browser.resize(width, 900).await;
    }
}

fn note_route(status: u16) -> Vec<Route> {
    let body = if status == 200 {
        json!({"ticket": {"id": 1, "status": "open"}})
    } else {
        json!({"error": "RecordInvalid", "description": "Ticket 101 is closed"})
    };
    vec![route(Method::PUT, "/api/v2/tickets/", status, body)]
}

#[tokio::test(flavor = "multi_thread")]
async fn sign_in_watch_a_failed_run_retry_it_and_see_it_succeed() {
    let mock = MockApi::start(note_route(422)).await;
    let cfg = Config::connectors_only();
    write(&cfg.recipes.join("note-new-tickets.yaml"), RECIPE);
    let hub = Hub::start(cfg.options().base_url("zendesk", &mock.url)).await;
    let (status, first) = hub
        .post_zendesk(&ticket_event(100, "Login broken", "ann@example.com"))
        .await;
    assert_eq!(status, 202, "{first}");
    let first_id = first["event_id"].as_str().unwrap().to_string();

    let browser = Browser::start(1280, 900).await;
    let shots = Shots::new();
    let ui = |path: &str| format!("{}{path}", hub.url);

    // Signed out: every page is the sign-in page, with no data on it.
    browser.goto(&ui("/ui/events")).await;
    assert!(
        browser.url().await.contains("/ui/login?next="),
        "{}",
        browser.url().await
    );
    browser.type_into("#token", "not-the-token-at-all").await;
    browser.click("form button[type=submit]").await;
    browser
        .wait_for("#login-error", "not this hub's admin token")
        .await;
    let page = browser.source().await;
    assert!(
        !page.contains(&first_id) && !page.contains("ann@example.com"),
        "{page}"
    );
    browser.goto(&ui(&format!("/ui/events/{first_id}"))).await;
    assert!(browser.url().await.contains("/ui/login"));
    assert!(!browser.source().await.contains("ann@example.com"));
    shots.take(&browser, "sign-in", 1280).await;

    // Signing in with the token lands on the page asked for.
    browser.goto(&ui("/ui/events")).await;
    browser.type_into("#token", &hub.token).await;
    browser.click("form button[type=submit]").await;
    browser
        .wait_for(&format!("a[href='/ui/events/{first_id}']"), "UTC")
        .await;
    assert!(browser.url().await.ends_with("/ui/events"));

    // A new event shows up by itself (the page updates live).
    let (_, second) = hub
        .post_zendesk(&ticket_event(
            101,
            "Setup mail never came",
            "bob@example.com",
        ))
        .await;
    let second_id = second["event_id"].as_str().unwrap().to_string();
    let run_id = second["runs"][0].as_str().unwrap().to_string();
    let row = format!("a[href='/ui/events/{second_id}']");
    browser.wait_for(&row, "UTC").await;
    shots.take(&browser, "events", 1280).await;

    // The event: its body, its delivery facts and the run it started, failed.
    browser.click(&row).await;
    browser.wait_for("#event-runs", "failed").await;
    let page = browser.source().await;
    assert!(
        page.contains("bob@example.com") && page.contains("zendesk"),
        "{page}"
    );
    assert!(
        !page.contains(ZENDESK_WEBHOOK_SECRET),
        "no secret on the page"
    );
    shots.take(&browser, "event", 1280).await;

    // The failed run's timeline: the step, its request and the 422.
    browser.click("#event-runs a").await;
    browser.wait_for("#run-status", "failed").await;
    let timeline = browser.wait_for("#timeline", "note").await.text().await;
    assert!(timeline.contains("zendesk.add_internal_note"), "{timeline}");
    assert!(timeline.contains("422"), "{timeline}");
    assert!(browser.url().await.ends_with(&format!("/ui/runs/{run_id}")));
    shots.take(&browser, "run-failed", 1280).await;
    shots.take(&browser, "run-failed-phone", 390).await;

    // Retry it, with a confirmation; the far end takes the note now.
    mock.set_routes(note_route(200));
    browser.click("#retry").await;
    browser.wait_for("h1", "Retry this run?").await;
    browser.click("#confirm").await;
    browser.wait_for("#run-status", "succeeded").await;
    let timeline = browser.text("#timeline").await;
    assert!(timeline.contains("200"), "{timeline}");
    assert_eq!(
        mock.calls("/api/v2/tickets/101").len(),
        2,
        "one failed call, one retry"
    );
    shots.take(&browser, "run-retried", 1280).await;

    // A few more events, then the other pages.
    for n in 0..4 {
        let (s, _) = hub
            .post_zendesk(&ticket_event(
                200 + n,
                "Where is my order?",
                "cy@example.com",
            ))
            .await;
        assert_eq!(s, 202);
    }
    browser.goto(&ui("/ui/")).await;
    browser.wait_for("#stat-events", "6").await;
    assert!(
        browser.find("svg.chart").await.is_some(),
        "the activity chart"
    );
    shots.take(&browser, "overview", 1280).await;
    browser.goto(&ui("/ui/runs?recipe=note-new-tickets")).await;
    browser.wait_for("#runs", "succeeded").await;
    shots.take(&browser, "runs", 1280).await;
    browser.goto(&ui("/ui/recipes")).await;
    browser.wait_for("#recipes", "note-new-tickets").await;
    shots.take(&browser, "recipes", 1280).await;

    // Signing out ends the session: the run is out of reach again.
    browser.click(".signout button").await;
    browser.wait_for("h1", "Sign in").await;
    browser.goto(&ui(&format!("/ui/runs/{run_id}"))).await;
    assert!(browser.url().await.contains("/ui/login"));
    assert!(!browser.source().await.contains("bob@example.com"));
}
