//! The support-ops recipes of `recipes/support/` through the binary: signed
//! Zendesk webhooks in, calls at mock Zendesk and Slack APIs. Jobs whose
//! behaviour depends on time get a calendar or a var that makes them
//! deterministic; runs are polled for a state with a deadline.

use crate::utils::*;
use axum::http::Method;
use jiff::ToSpan;
use serde_json::{json, Value};

fn support() -> std::path::PathBuf {
    repo().join("recipes").join("support")
}

/// A recipes dir with one shipped support recipe (`edit` applied to its text)
/// and the given `_shared.yaml`.
fn recipes_with(recipe: &str, edit: impl Fn(String) -> String, shared: &str) -> Config {
    let cfg = Config::connectors_only();
    let text = std::fs::read_to_string(support().join(format!("{recipe}.yaml"))).unwrap();
    write(&cfg.recipes.join(format!("{recipe}.yaml")), &edit(text));
    if !shared.is_empty() {
        write(&cfg.recipes.join("_shared.yaml"), shared);
    }
    cfg
}

async fn zendesk_mock() -> MockApi {
    MockApi::start(vec![route(
        Method::PUT,
        "/api/v2/tickets/",
        200,
        json!({"ticket": {"id": 1, "status": "open", "priority": "urgent"}}),
    )])
    .await
}

async fn slack_mock() -> MockApi {
    MockApi::start(vec![route(
        Method::POST,
        "/chat.postMessage",
        200,
        json!({"ok": true, "channel": "C1", "ts": "1.0"}),
    )])
    .await
}

/// Poll run `id` until its status is `status` (20 s deadline).
async fn wait_status(hub: &Hub, id: &str, status: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (_, run) = hub.api(&format!("/api/runs/{id}")).await;
        if run["status"] == status {
            return run;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "run {id} is not {status}: {run}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The one run an accepted webhook started.
fn only_run(accepted: &Value) -> String {
    let runs = accepted["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 1, "{accepted}");
    runs[0].as_str().expect("run id").to_string()
}

#[tokio::test]
async fn after_hours_reply_names_the_requester_and_the_next_opening() {
    // The calendar opens only on the weekday three days from now (Berlin),
    // so the hub's real clock is after hours and the next opening is known.
    let berlin = jiff::tz::TimeZone::get("Europe/Berlin").unwrap();
    let day = jiff::Timestamp::now()
        .to_zoned(berlin.clone())
        .date()
        .checked_add(3.days())
        .unwrap();
    let names = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let open_day = names[day.weekday().to_monday_zero_offset() as usize];
    let shared = format!(
        "calendars:\n  support:\n    timezone: Europe/Berlin\n    hours:\n      {open_day}: \"09:00-17:00\"\n"
    );
    let cfg = recipes_with("after-hours-reply", |t| t, &shared);
    let zendesk = zendesk_mock().await;
    let (hub, quiet) = quiet_hub(cfg.options().base_url("zendesk", &zendesk.url)).await;

    let (status, accepted) = hub
        .post_zendesk(&ticket_event(41, "Login broken", "bob@example.com"))
        .await;
    assert_eq!(status, 202, "{accepted}");
    let run = hub.wait_run(&only_run(&accepted)).await;
    assert_eq!(run["status"], "succeeded", "{run}");

    let puts = zendesk.calls("/api/v2/tickets/41");
    assert_eq!(puts.len(), 1, "{:?}", zendesk.received());
    let comment = &puts[0].json()["ticket"]["comment"];
    assert_eq!(comment["public"], true, "{comment}");
    let opens = day
        .at(9, 0, 0, 0)
        .to_zoned(berlin)
        .unwrap()
        .strftime("%A %d %B at %H:%M %Z")
        .to_string();
    assert_eq!(
        comment["body"],
        format!(
            "Hi Bob Smith,\n\nthanks for your message. Our team is away right now; we are back on {opens} and will answer you then."
        )
    );
    assert!(quiet.received().is_empty(), "{:?}", quiet.received());
}

#[tokio::test]
async fn first_reply_sla_escalates_only_tickets_without_an_agent_reply() {
    // The SLA comes from the recipe's var: 12h shipped, 2s here.
    let cfg = recipes_with(
        "first-reply-sla",
        |t| {
            assert!(t.contains("reply_within: 12h"));
            t.replace("reply_within: 12h", "reply_within: 2s")
        },
        &std::fs::read_to_string(support().join("_shared.yaml")).unwrap(),
    );
    let zendesk = zendesk_mock().await;
    let slack = slack_mock().await;
    let (hub, quiet) = quiet_hub(
        cfg.options()
            .base_url("zendesk", &zendesk.url)
            .base_url("slack", &slack.url),
    )
    .await;
    let created = |id: u64| json!({"type": "ticket.created", "ticket": {"id": id, "subject": "Export fails"}});
    let updated = |id: u64, public: bool, role: &str| {
        json!({"type": "ticket.updated", "ticket": {"id": id,
               "last_comment": {"public": public, "author_role": role, "body": "..."}}})
    };

    let (_, a) = hub.post_zendesk(&created(5)).await;
    let (_, b) = hub.post_zendesk(&created(6)).await;
    let (a, b) = (only_run(&a), only_run(&b));
    wait_status(&hub, &a, "waiting").await;
    wait_status(&hub, &b, "waiting").await;
    // Ticket 6: a customer comment and an internal note do not count.
    hub.post_zendesk(&updated(6, true, "end-user")).await;
    hub.post_zendesk(&updated(6, false, "agent")).await;
    // Ticket 5: an agent's public reply.
    hub.post_zendesk(&updated(5, true, "agent")).await;

    let answered = hub.wait_run(&a).await;
    assert_eq!(answered["status"], "succeeded", "{answered}");
    assert_eq!(answered["steps"][0]["output"]["timed_out"], false);
    assert_eq!(answered["reason"], "an agent replied in time", "{answered}");

    let breached = hub.wait_run(&b).await;
    assert_eq!(breached["status"], "succeeded", "{breached}");
    assert_eq!(breached["steps"][0]["output"]["timed_out"], true);

    assert!(zendesk.calls("/api/v2/tickets/5").is_empty());
    let puts = zendesk.calls("/api/v2/tickets/6");
    assert_eq!(puts.len(), 1, "{:?}", zendesk.received());
    assert_eq!(
        puts[0].json(),
        json!({"ticket": {"priority": "urgent", "group_id": 360000002, "tags": ["sla_breached"]}})
    );
    let posts = slack.calls("/chat.postMessage");
    assert_eq!(posts.len(), 1, "{:?}", slack.received());
    let form: std::collections::HashMap<String, String> =
        serde_urlencoded::from_bytes(&posts[0].body).unwrap();
    assert_eq!(form["channel"], "#support-leads");
    assert_eq!(
        form["text"],
        "SLA breached: ticket 6 (Export fails) has had no public agent reply for 2s; escalated to urgent."
    );
    assert!(quiet.received().is_empty(), "{:?}", quiet.received());
}

#[test]
fn support_recipes_pass_check_and_their_tests_offline() {
    let data = tempfile::tempdir().unwrap();
    let mut check = command(&["check"]);
    check
        .arg("--data")
        .arg(data.path())
        .arg("--connectors")
        .arg(repo().join("connectors"))
        .arg("--recipes")
        .arg(support());
    let out = check.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );

    let out = command(&["test"])
        .arg("--connectors")
        .arg(repo().join("connectors"))
        .arg("--recipes")
        .arg(support())
        .arg("--data")
        .arg(data.path())
        .output()
        .unwrap();
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    for recipe in [
        "after-hours-reply",
        "first-reply-sla",
        "repeat-contact-escalation",
        "dispatcher",
        "thanks-keeps-solved",
        "billing-enrichment",
        "web-form-ticket",
        "typeform-ticket",
        "journey-follow-up",
    ] {
        let n = text.matches(&format!("ok   {recipe} › ")).count();
        assert!(n >= 3, "{recipe}: {n} tests passed\n{text}");
    }
    assert!(!text.contains("FAIL"), "{text}");
}

#[tokio::test]
async fn dispatcher_rotates_each_team_and_skips_agents_who_are_away() {
    let cfg = recipes_with("dispatcher", |t| t, "");
    let zendesk = zendesk_mock().await;
    let (hub, quiet) = quiet_hub(cfg.options().base_url("zendesk", &zendesk.url)).await;
    let ticket = |id: u64, tags: &str, locale: &str| {
        json!({"type": "ticket.created", "ticket": {"id": id, "subject": "Help",
               "tags": tags, "locale": locale, "priority": "normal", "assignee_id": ""}})
    };
    // Billing: Alice, (Bruno is away) Chen, Alice again; German: Dana.
    for (id, tags, locale) in [
        (1, "billing", "en"),
        (2, "web billing", "en"),
        (3, "billing", "de"),
        (4, "", "de-AT"),
    ] {
        let (status, accepted) = hub.post_zendesk(&ticket(id, tags, locale)).await;
        assert_eq!(status, 202, "{accepted}");
        // One at a time, so the rotation order is the posting order.
        let run = hub.wait_run(&only_run(&accepted)).await;
        assert_eq!(run["status"], "succeeded", "{run}");
    }
    let assigned: Vec<Value> = (1..=4)
        .map(|id| {
            let puts = zendesk.calls(&format!("/api/v2/tickets/{id}"));
            assert_eq!(puts.len(), 1, "{:?}", zendesk.received());
            puts[0].json()["ticket"].clone()
        })
        .collect();
    assert_eq!(
        assigned,
        vec![
            json!({"group_id": 360000010, "assignee_id": 3611}),
            json!({"group_id": 360000010, "assignee_id": 3613}),
            json!({"group_id": 360000010, "assignee_id": 3611}),
            json!({"group_id": 360000011, "assignee_id": 3621}),
        ]
    );
    // An assigned ticket starts no run.
    let (_, accepted) = hub
        .post_zendesk(&json!({"type": "ticket.created", "ticket": {"id": 5, "tags": "billing", "assignee_id": 3611}}))
        .await;
    assert_eq!(accepted["runs"], json!([]), "{accepted}");
    assert!(quiet.received().is_empty(), "{:?}", quiet.received());
}

#[tokio::test]
async fn thanks_sets_a_reopened_ticket_back_to_solved_once() {
    let cfg = recipes_with("thanks-keeps-solved", |t| t, "");
    let zendesk = zendesk_mock().await;
    let (hub, quiet) = quiet_hub(cfg.options().base_url("zendesk", &zendesk.url)).await;
    let updated = |status: &str, previous: &str| {
        json!({"type": "ticket.updated", "ticket": {"id": 8, "status": status, "previous_status": previous,
               "last_comment": {"public": true, "author_role": "end-user", "body": "Danke, das war's!"}}})
    };
    let (status, accepted) = hub.post_zendesk(&updated("open", "solved")).await;
    assert_eq!(status, 202, "{accepted}");
    let run = hub.wait_run(&only_run(&accepted)).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    // The event Zendesk sends for the recipe's own update (a broad trigger):
    // solved, the same last comment. It starts no run.
    let (status, again) = hub.post_zendesk(&updated("solved", "open")).await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(again["runs"], json!([]), "{again}");
    let puts = zendesk.calls("/api/v2/tickets/8");
    assert_eq!(puts.len(), 1, "{:?}", zendesk.received());
    assert_eq!(
        puts[0].json(),
        json!({"ticket": {"status": "solved", "tags": ["thanks_auto_solved"]}})
    );
    assert!(quiet.received().is_empty(), "{:?}", quiet.received());
}
