//! The dashboard over HTTP (no browser): sessions, CSRF, what a signed-out
//! request gets, retries and their refusals; and the admin API summaries the
//! dashboard is drawn from (`/api/overview`, `/api/recipes`, `/api/check`,
//! event filters).

use crate::utils::*;
use axum::http::Method;
use serde_json::json;

const RECIPE: &str = r#"
name: note-new-tickets
on: { connector: zendesk, event: ticket.created }
steps:
  - id: note
    call: zendesk.add_internal_note
    with: { ticket_id: "{{ event.ticket.id }}", body: "seen" }
"#;

fn failing() -> Vec<Route> {
    vec![route(
        Method::PUT,
        "/api/v2/tickets/",
        422,
        json!({"error": "closed"}),
    )]
}

async fn hub_with_note_recipe(mock: &MockApi) -> (Hub, Config) {
    let cfg = Config::connectors_only();
    write(&cfg.recipes.join("note-new-tickets.yaml"), RECIPE);
    let hub = Hub::start(cfg.options().base_url("zendesk", &mock.url)).await;
    (hub, cfg)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Sign in; the session cookie (`name=value`).
async fn sign_in(hub: &Hub, http: &reqwest::Client) -> String {
    let resp = http
        .post(format!("{}/ui/login", hub.url))
        .form(&[("token", hub.token.as_str()), ("next", "/ui/runs")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/ui/runs");
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age="] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    cookie.split(';').next().unwrap().to_string()
}

async fn get(
    http: &reqwest::Client,
    url: &str,
    cookie: Option<&str>,
) -> (u16, String, Option<String>) {
    let mut req = http.get(url);
    if let Some(c) = cookie {
        req = req.header("Cookie", c);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string());
    (status, resp.text().await.unwrap(), location)
}

/// The CSRF token in a page's forms.
fn csrf(page: &str) -> String {
    let at = page
        .find(r#"name="csrf" value=""#)
        .expect("a form with a csrf field")
        + 19;
    page[at..].split('"').next().unwrap().to_string()
}

#[tokio::test]
async fn pages_need_a_session_and_changes_need_its_csrf_token() {
    let mock = MockApi::start(failing()).await;
    let (hub, _cfg) = hub_with_note_recipe(&mock).await;
    let (_, accepted) = hub
        .post_zendesk(&ticket_event(7, "Secret subject", "zed@example.com"))
        .await;
    let run_id = accepted["runs"][0].as_str().unwrap().to_string();
    let run = hub.wait_run(&run_id).await;
    assert_eq!(run["status"], "failed");
    let http = client();
    let run_url = format!("{}/ui/runs/{run_id}", hub.url);

    // Signed out, a made-up session, a wrong token: the sign-in page, no data.
    for cookie in [None, Some("switchboard_session=0123456789abcdef")] {
        let (status, body, location) = get(&http, &run_url, cookie).await;
        assert_eq!(status, 303);
        assert_eq!(
            location.as_deref(),
            Some(format!("/ui/login?next=%2Fui%2Fruns%2F{run_id}").as_str())
        );
        assert!(!body.contains(&run_id) && !body.contains("zed@example.com"));
    }
    let resp = http
        .post(format!("{}/ui/login", hub.url))
        .form(&[("token", "test-admin-token-but-wrong")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().get("set-cookie").is_none());
    let body = resp.text().await.unwrap();
    assert!(
        body.contains("not this hub&#x27;s admin token")
            || body.contains("not this hub's admin token"),
        "{body}"
    );
    assert!(!body.contains(&run_id));
    // Sign-in sends nobody off the dashboard.
    let resp = http
        .post(format!("{}/ui/login", hub.url))
        .form(&[
            ("token", hub.token.as_str()),
            ("next", "https://evil.example/"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["location"], "/ui/");

    let cookie = sign_in(&hub, &http).await;
    let (status, page, _) = get(&http, &run_url, Some(&cookie)).await;
    assert_eq!(status, 200);
    assert!(
        page.contains("zendesk.add_internal_note") && page.contains("422"),
        "{page}"
    );
    let token = csrf(&page);

    // A retry without the form's token, with another session's, or from another site: refused.
    let retry_url = format!("{run_url}/retry");
    for (form_token, origin) in [
        ("", None),
        ("f00d", None),
        (token.as_str(), Some("http://evil.example")),
    ] {
        let mut req = http
            .post(&retry_url)
            .header("Cookie", &cookie)
            .form(&[("csrf", form_token)]);
        if let Some(o) = origin {
            req = req.header("Origin", o);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 403, "{form_token} {origin:?}");
    }
    assert_eq!(
        hub.wait_run(&run_id).await["status"],
        "failed",
        "nothing retried"
    );

    // The confirmation page, then the retry.
    let (status, confirm, _) = get(&http, &retry_url, Some(&cookie)).await;
    assert_eq!(status, 200);
    assert!(confirm.contains("resumes at step `note`"), "{confirm}");
    mock.set_routes(vec![route(
        Method::PUT,
        "/api/v2/tickets/",
        200,
        json!({"ticket": {"id": 7}}),
    )]);
    let resp = http
        .post(&retry_url)
        .header("Cookie", &cookie)
        .header("Origin", hub.url.as_str())
        .form(&[("csrf", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(
        resp.headers()["location"],
        format!("/ui/runs/{run_id}?retried=1")
    );
    assert_eq!(hub.wait_run(&run_id).await["status"], "succeeded");

    // Retrying a run that did not fail: a clear message, nothing done.
    let (status, page, _) = get(&http, &retry_url, Some(&cookie)).await;
    assert_eq!(status, 409);
    assert!(
        page.contains("is succeeded; only failed or dead runs can be retried"),
        "{page}"
    );
    let resp = http
        .post(&retry_url)
        .header("Cookie", &cookie)
        .form(&[("csrf", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409);

    // Every page renders, with the security headers.
    for path in [
        "/ui/",
        "/ui/?range=day",
        "/ui/events",
        "/ui/events?connector=zendesk&type=ticket.created&since=2020-01-01T00:00",
        &format!("/ui/events/{}", accepted["event_id"].as_str().unwrap()),
        "/ui/runs?status=succeeded",
        "/ui/recipes",
        "/ui/recipes/note-new-tickets",
        "/ui/recipes/note-new-tickets/retry",
    ] {
        let resp = http
            .get(format!("{}{path}", hub.url))
            .header("Cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let csp = resp.headers()["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
        assert_eq!(resp.headers()["cache-control"], "no-store");
    }
    let (status, _, _) = get(&http, &format!("{}/ui/runs/NOPE", hub.url), Some(&cookie)).await;
    assert_eq!(status, 404);
    let (status, page, _) = get(
        &http,
        &format!("{}/ui/runs?status=done", hub.url),
        Some(&cookie),
    )
    .await;
    assert_eq!(status, 400);
    assert!(page.contains("unknown status `done`"), "{page}");

    // Signing out ends the session on the hub, not just in the browser.
    let (_, page, _) = get(&http, &run_url, Some(&cookie)).await;
    let resp = http
        .post(format!("{}/ui/logout", hub.url))
        .header("Cookie", &cookie)
        .form(&[("csrf", csrf(&page))])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    let (status, body, _) = get(&http, &run_url, Some(&cookie)).await;
    assert_eq!(status, 303);
    assert!(!body.contains(&run_id));
}

#[tokio::test]
async fn the_admin_api_summarises_activity_recipes_and_the_files_on_disk() {
    let mock = MockApi::start(failing()).await;
    let (hub, cfg) = hub_with_note_recipe(&mock).await;
    let mut runs = Vec::new();
    let mut events = Vec::new();
    for n in 0..3 {
        let (_, a) = hub
            .post_zendesk(&ticket_event(n, "Hi", "a@example.com"))
            .await;
        runs.push(a["runs"][0].as_str().unwrap().to_string());
        events.push(a["event_id"].as_str().unwrap().to_string());
    }
    hub.post_zendesk(&json!({"type": "ticket.deleted", "n": 1}))
        .await;
    for r in &runs {
        assert_eq!(hub.wait_run(r).await["status"], "failed");
    }
    mock.set_routes(vec![route(Method::PUT, "/api/v2/tickets/", 200, json!({}))]);
    let resp = hub
        .http
        .post(format!("{}/api/runs/{}/retry", hub.url, runs[2]))
        .bearer_auth(&hub.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(hub.wait_run(&runs[2]).await["status"], "succeeded");

    let (status, o) = hub.api("/api/overview").await;
    assert_eq!(status, 200, "{o}");
    assert_eq!(o["range"], "hour");
    assert_eq!(o["bucket_ms"], 60_000);
    assert_eq!(o["events"], 4, "{o}");
    assert_eq!(o["runs"], 3);
    assert_eq!(
        (o["dead_letters"].as_u64(), o["dead_letters_more"].as_bool()),
        (Some(0), Some(false))
    );
    let count = |s: &str| {
        o["runs_by_status"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["status"] == s)
            .map(|c| c["count"].as_u64().unwrap())
    };
    assert_eq!(
        (count("failed"), count("succeeded")),
        (Some(2), Some(1)),
        "{o}"
    );
    let buckets = o["buckets"].as_array().unwrap();
    assert!((60..=61).contains(&buckets.len()), "{}", buckets.len());
    let sum = |k: &str| buckets.iter().map(|b| b[k].as_u64().unwrap()).sum::<u64>();
    assert_eq!((sum("events"), sum("runs"), sum("failed")), (4, 3, 2));
    let zendesk = o["connectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "zendesk")
        .unwrap();
    assert_eq!(zendesk["webhook"]["signature"], "zendesk");
    assert_eq!(
        zendesk["limits"]["breaker"]["state"], "closed",
        "4xx do not count"
    );
    let (_, day) = hub.api("/api/overview?range=day").await;
    assert_eq!(
        (day["bucket_ms"].as_i64(), day["events"].as_i64()),
        (Some(900_000), Some(4))
    );

    let (_, recipes) = hub.api("/api/recipes").await;
    let r = &recipes[0];
    assert_eq!(r["name"], "note-new-tickets");
    assert_eq!(
        (r["connector"].as_str(), r["event"].as_str()),
        (Some("zendesk"), Some("ticket.created"))
    );
    assert_eq!(
        (
            r["runs_24h"].as_u64(),
            r["succeeded_24h"].as_u64(),
            r["failed_24h"].as_u64()
        ),
        (Some(3), Some(1), Some(2))
    );
    let rate = r["success_rate_24h"].as_f64().unwrap();
    assert!((rate - 1.0 / 3.0).abs() < 1e-9, "{rate}");
    assert_eq!(r["last_run"]["id"], runs[2].as_str());
    let (_, one) = hub.api("/api/recipes/note-new-tickets").await;
    assert!(
        one["yaml"]
            .as_str()
            .unwrap()
            .contains("zendesk.add_internal_note"),
        "{one}"
    );
    assert_eq!(hub.api("/api/recipes/nope").await.0, 404);

    // Event filters: connector and type, time, delivery id (looked up).
    let (_, page) = hub.api("/api/events?type=ticket.created&limit=2").await;
    let ids: Vec<_> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [events[2].as_str(), events[1].as_str()]);
    assert_eq!(page["next"], events[1].as_str());
    let (_, page) = hub
        .api(&format!(
            "/api/events?type=ticket.created&before={}",
            events[1]
        ))
        .await;
    assert_eq!(page["items"][0]["id"], events[0].as_str());
    let (_, page) = hub.api("/api/events?since=2999-01-01T00:00").await;
    assert_eq!(page["items"], json!([]));
    let (_, page) = hub.api("/api/events?until=2000-01-01T00:00:00Z").await;
    assert_eq!(page["items"], json!([]));
    let (status, bad) = hub.api("/api/events?since=yesterday").await;
    assert_eq!(status, 400, "{bad}");
    let (_, shown) = hub.api(&format!("/api/events/{}", events[1])).await;
    let delivery = shown["delivery_id"].as_str().unwrap().to_string();
    let (_, found) = hub
        .api(&format!("/api/events?delivery_id={delivery}"))
        .await;
    assert_eq!(found["items"][0]["id"], events[1].as_str(), "{found}");
    let (_, none) = hub
        .api("/api/events?delivery_id=inv-nobody&connector=zendesk")
        .await;
    assert_eq!(none["items"], json!([]));

    // The files on disk: fine, then broken (the hub keeps running its set).
    let (_, check) = hub.api("/api/check").await;
    assert_eq!(check, json!({"problems": [], "checked": true}));
    write(
        &cfg.recipes.join("note-new-tickets.yaml"),
        &RECIPE.replace("add_internal_note", "add_note"),
    );
    let (_, check) = hub.api("/api/check").await;
    let problems = check["problems"].as_array().unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p.as_str().unwrap().contains("note-new-tickets.yaml:")),
        "{check}"
    );
}

/// The replay page: pick a recipe and a time range, see per event what the
/// recipe as its file is now would have done against what ran — the same
/// answer as `GET /api/replay` and `switchboard replay`. A GET (it changes
/// nothing), behind the session like every page; nothing is sent.
#[tokio::test]
async fn the_replay_page_shows_what_a_changed_recipe_would_have_done() {
    let mock = MockApi::start(vec![route(
        Method::PUT,
        "/api/v2/tickets/",
        200,
        json!({"ticket": {"id": 7}}),
    )])
    .await;
    let (hub, cfg) = hub_with_note_recipe(&mock).await;
    let (_, accepted) = hub
        .post_zendesk(&ticket_event(7, "Hello", "a@example.com"))
        .await;
    let run_id = accepted["runs"][0].as_str().unwrap().to_string();
    assert_eq!(hub.wait_run(&run_id).await["status"], "succeeded");
    let sent = mock.received().len();
    // The change on disk (not reloaded): another body, and a tag step.
    write(
        &cfg.recipes.join("note-new-tickets.yaml"),
        &format!(
            "{}  - id: tag\n    call: zendesk.add_tags\n    with: {{ ticket_id: \"{{{{ event.ticket.id }}}}\", tags: [noted] }}\n",
            RECIPE.replace("body: \"seen\"", "body: \"seen twice\"")
        ),
    );

    let http = client();
    let url = format!("{}/ui/replay", hub.url);
    let (status, _, location) = get(&http, &format!("{url}?recipe=note-new-tickets"), None).await;
    assert_eq!(status, 303, "signed out: the sign-in page");
    assert!(location.unwrap().starts_with("/ui/login?next="));

    let cookie = sign_in(&hub, &http).await;
    let (status, form, _) = get(&http, &url, Some(&cookie)).await;
    assert_eq!(status, 200);
    assert!(
        form.contains("<option>note-new-tickets</option>")
            && form.contains(r#"aria-current="page">Replay</a>"#),
        "{form}"
    );

    let (status, page, _) = get(
        &http,
        &format!("{url}?recipe=note-new-tickets&since=1h"),
        Some(&cookie),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    let event_id = accepted["event_id"].as_str().unwrap();
    for want in [
        format!("href=\"/ui/events/{event_id}\""),
        format!("href=\"/ui/runs/{run_id}\""),
        "changed</span>".to_string(),
        "other inputs".to_string(),
        "&quot;seen&quot;".to_string(),
        "&quot;seen twice&quot;".to_string(),
        "would call (no recorded answer: not made)".to_string(),
        "zendesk.add_tags".to_string(),
        "1 with a difference".to_string(),
    ] {
        assert!(page.contains(&want), "{want}: {page}");
    }
    assert_eq!(mock.received().len(), sent, "a replay sends nothing");

    // A range before the event: nothing to compare.
    let (status, page, _) = get(
        &http,
        &format!("{url}?recipe=note-new-tickets&since=30d&until=2020-01-01T00:00"),
        Some(&cookie),
    )
    .await;
    assert_eq!(status, 200);
    assert!(page.contains("neither ran nor would run"), "{page}");
    assert!(!page.contains(event_id), "{page}");

    // An unknown recipe, a time that is not one: said plainly.
    let (status, page, _) = get(&http, &format!("{url}?recipe=nope"), Some(&cookie)).await;
    assert_eq!(status, 404);
    assert!(page.contains("no recipe named `nope`"), "{page}");
    let (status, _, _) = get(
        &http,
        &format!("{url}?recipe=note-new-tickets&since=yesterday"),
        Some(&cookie),
    )
    .await;
    assert_eq!(status, 400);
}
