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
        // Business hours round the clock, so 2 s of them pass at any time of day.
        &std::fs::read_to_string(support().join("_shared.yaml"))
            .unwrap()
            .replace("mon-fri: \"09:00-17:00\"", "mon-sun: \"00:00-24:00\"")
            .lines()
            .filter(|l| !l.trim_start().starts_with("holidays:"))
            .collect::<Vec<_>>()
            .join("\n"),
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
    hub.wait_status(&a, "waiting").await;
    hub.wait_status(&b, "waiting").await;
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
        "SLA breached: ticket 6 (Export fails) has had no public agent reply within 2s of business hours; escalated to urgent."
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
        "resend-confirmation",
        "translate-and-route",
        "after-hours-reply",
        "first-reply-sla",
        "repeat-contact-escalation",
        "dispatcher",
        "thanks-keeps-solved",
        "billing-enrichment",
        "web-form-ticket",
        "typeform-ticket",
        "journey-follow-up",
        "email-lookup",
        "slack-unknown-command",
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

/// POST a Slack-signed slash command; the status, the event id of the
/// answer's `X-Switchboard-Event` header and the answer's JSON.
async fn slash_command(hub: &Hub, command: &str, text: &str) -> (u16, String, Value) {
    let body = serde_urlencoded::to_string([
        ("command", command),
        ("text", text),
        ("user_name", "ann"),
        (
            "response_url",
            "https://hooks.slack.com/commands/T1DC2JH3J/397700885554/96rGlfmibIGlgcZRskXaIFfN",
        ),
    ])
    .unwrap();
    let headers = slack_headers(&body, SLACK_SIGNING_SECRET);
    let resp = hub.send("slack_commands", &headers, body.as_bytes()).await;
    let status = resp.status().as_u16();
    let event = resp
        .headers()
        .get("x-switchboard-event")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (status, event, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn email_lookup_answers_a_slash_command_at_once_then_with_the_customer() {
    let cfg = recipes_with("email-lookup", |t| t, "");
    let unknown = std::fs::read_to_string(support().join("slack-unknown-command.yaml")).unwrap();
    write(&cfg.recipes.join("slack-unknown-command.yaml"), &unknown);
    let zendesk = MockApi::start(vec![
        route(
            Method::GET,
            "/api/v2/users/search",
            200,
            json!({"users": [{"id": 901, "name": "Bob Smith", "email": "bob@example.com"},
                             {"id": 902, "name": "Bob Smithers"}]}),
        ),
        route(
            Method::GET,
            "/api/v2/search",
            200,
            json!({"count": 1, "results": [{"id": 71, "subject": "Refund", "status": "open",
                                            "result_type": "ticket"}]}),
        ),
    ])
    .await;
    let slack = MockApi::start(vec![route(Method::POST, "/commands/", 200, json!("ok"))]).await;
    let (hub, quiet) = quiet_hub(
        cfg.options()
            .base_url("zendesk", &zendesk.url)
            .base_url("slack_commands", &slack.url),
    )
    .await;

    // The answer Slack shows at once, then the run's result at the response_url.
    let (status, event, answer) = slash_command(&hub, "/email", " Bob Smith ").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer,
        json!({"response_type": "ephemeral", "text": "Looking up “Bob Smith” in Zendesk…"})
    );
    let runs = hub.finished_runs(&event).await;
    let run = runs
        .iter()
        .find(|r| r["recipe"] == "email-lookup")
        .expect("email-lookup run");
    assert_eq!(run["status"], "succeeded", "{run}");

    let users = zendesk.calls("/api/v2/users/search");
    assert_eq!(users.len(), 1, "{:?}", zendesk.received());
    assert_eq!(users[0].method, "GET");
    assert_eq!(users[0].query.as_deref(), Some("query=Bob+Smith"));
    let auth = users[0].header("authorization").unwrap_or_default();
    assert!(auth.starts_with("Basic "), "{auth}");
    let tickets: Vec<_> = zendesk
        .received()
        .into_iter()
        .filter(|r| r.path == "/api/v2/search")
        .collect();
    assert_eq!(tickets.len(), 1, "{:?}", zendesk.received());
    let query: std::collections::HashMap<String, String> =
        serde_urlencoded::from_str(tickets[0].query.as_deref().unwrap_or_default()).unwrap();
    assert_eq!(query["query"], "type:ticket requester:901");
    assert_eq!(query["sort_by"], "created_at");

    let posts = slack.calls("/commands/");
    assert_eq!(posts.len(), 1, "{:?}", slack.received());
    assert_eq!(
        posts[0].path,
        "/commands/T1DC2JH3J/397700885554/96rGlfmibIGlgcZRskXaIFfN"
    );
    assert_eq!(
        posts[0].json(),
        json!({"response_type": "ephemeral", "replace_original": false, "text":
            "<https://example.zendesk.com/agent/users/901|Bob Smith> bob@example.com\n<https://example.zendesk.com/agent/users/902|Bob Smithers>\nLatest tickets of Bob Smith:\n• <https://example.zendesk.com/agent/tickets/71|#71 Refund> (open)"})
    );

    // `/email help`: the usage, no search. An unknown option: named, and the usage.
    let (status, event, answer) = slash_command(&hub, "/email", "help").await;
    assert_eq!(status, 200);
    assert!(
        answer["text"]
            .as_str()
            .unwrap_or_default()
            .starts_with("Usage: `/email Bob Smith`"),
        "{answer}"
    );
    let runs = hub.finished_runs(&event).await;
    assert_eq!(runs[0]["status"], "skipped", "{runs:?}");
    let (_, _, answer) = slash_command(&hub, "/email", "--all Bob").await;
    assert!(
        answer["text"]
            .as_str()
            .unwrap_or_default()
            .starts_with("Unknown option `--all`. Usage:"),
        "{answer}"
    );

    // A command no recipe knows gets the catch-all answer.
    let (status, event, answer) = slash_command(&hub, "/emial", "Bob").await;
    assert_eq!(status, 200);
    assert_eq!(
        answer["text"],
        "Sorry, I don't know `/emial`. Try `/email Bob Smith` or `/email bob@example.com`."
    );
    let runs = hub.finished_runs(&event).await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["recipe"], "slack-unknown-command");
    assert_eq!(runs[0]["status"], "skipped");

    assert_eq!(zendesk.calls("/api/v2/users/search").len(), 1);
    assert_eq!(slack.calls("/commands/").len(), 1);
    assert!(quiet.received().is_empty(), "{:?}", quiet.received());
}

/// A recipe on `ticket.updated` that updates the same ticket without an
/// `if:` loops (Zendesk sends `ticket.updated` for its own update): `check`
/// warns, naming the step; a guard (the recipe's or the step's `if:`)
/// silences it, and the shipped thanks recipe (guarded) gets no warning.
#[test]
fn check_warns_about_a_recipe_that_retriggers_itself() {
    let cfg = recipes_with("thanks-keeps-solved", |t| t, "");
    let looping = r##"
name: tag-every-update
on: { connector: zendesk, event: ticket.updated }
steps:
  - id: tag
    call: zendesk.add_tags
    with: { ticket_id: "{{ event.ticket.id }}", tags: [seen] }
  - id: guarded
    if: [ { "$.event.ticket.status": { equals: new } } ]
    call: zendesk.update_ticket
    with: { ticket_id: "{{ event.ticket.id }}", fields: { status: open } }
  - id: elsewhere
    call: slack.post_message
    with: { channel: "#x", text: "updated" }
"##;
    cfg.recipe("tag-every-update", looping);
    let out = cfg.check();
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(
        out.status.code(),
        Some(0),
        "a warning, not an error: {text}"
    );
    let warnings: Vec<&str> = text.lines().filter(|l| l.contains("may loop")).collect();
    assert_eq!(warnings.len(), 1, "{text}");
    assert!(
        warnings[0].contains("tag-every-update.yaml:5:5: warning: recipe `tag-every-update` runs on `zendesk` `ticket.updated` and its step `tag` causes that event again"),
        "{text}"
    );

    // Inside a `for_each` and a `switch`'s `else:`, the step is found and
    // pointed at; a case's `when:` and an enclosing step's `if:` guard it.
    cfg.recipe(
        "tag-every-update",
        r##"
name: tag-every-update
on: { connector: zendesk, event: ticket.updated }
steps:
  - id: route
    switch:
      - when: [ { "$.event.ticket.status": { equals: new } } ]
        steps:
          - id: in_case
            call: zendesk.add_tags
            with: { ticket_id: "{{ event.ticket.id }}", tags: [a] }
      - else:
          - id: each
            for_each: "{{ event.ticket.related }}"
            steps:
              - id: in_else
                call: zendesk.add_tags
                with: { ticket_id: "{{ item }}", tags: [b] }
  - id: guarded_loop
    if: [ { "$.event.ticket.status": { equals: open } } ]
    for_each: "{{ event.ticket.related }}"
    steps:
      - id: under_if
        call: zendesk.add_tags
        with: { ticket_id: "{{ item }}", tags: [c] }
"##,
    );
    let out = cfg.check();
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{text}");
    let warnings: Vec<&str> = text.lines().filter(|l| l.contains("may loop")).collect();
    assert_eq!(warnings.len(), 1, "{text}");
    assert!(
        warnings[0].contains("tag-every-update.yaml:16:17: warning: recipe `tag-every-update` runs on `zendesk` `ticket.updated` and its step `in_else` causes that event again"),
        "{text}"
    );

    // A recipe-level guard silences it.
    cfg.recipe(
        "tag-every-update",
        &looping.replace(
            "steps:\n",
            "if: [ { not: { \"$.event.ticket.tags\": { contains: seen } } } ]\nsteps:\n",
        ),
    );
    let out = cfg.check();
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(!text.contains("may loop"), "{text}");
}

/// The Zendesk actions the trimmed spec does not cover yet, checked by a
/// mock: method, path, query, basic auth and body as Zendesk's API
/// reference documents them (CreateTicket, SearchUsers, ListSearchResults,
/// CountSearchResults, UpdateTicket with group and assignee).
#[tokio::test]
async fn zendesk_create_search_count_and_assign_send_the_documented_requests() {
    let cfg = Config::connectors_only();
    cfg.recipe(
        "zd",
        r#"
name: zd
on: { connector: zendesk, event: ticket.created }
steps:
  - id: create
    call: zendesk.create_ticket
    with: { subject: "Form: refund", body: "I want a refund", requester_email: bob@example.com, requester_name: Bob Smith, priority: high, tags: [web_form] }
  - id: create_min
    call: zendesk.create_ticket
    with: { subject: "Form", body: "Hi", requester_email: bob@example.com }
  - id: count
    call: zendesk.count_tickets
    with: { query: "requester:bob@example.com created>24hours" }
  - id: assign
    call: zendesk.assign_ticket
    with: { ticket_id: "{{ event.ticket.id }}", group_id: 360000010, assignee_id: 3611 }
  - id: assign_group
    call: zendesk.assign_ticket
    with: { ticket_id: "{{ event.ticket.id }}", group_id: 360000010 }
"#,
    );
    let zendesk = MockApi::start(vec![
        route(
            Method::POST,
            "/api/v2/tickets",
            201,
            json!({"ticket": {"id": 35436, "status": "new", "requester_id": 901}}),
        ),
        route(
            Method::GET,
            "/api/v2/search/count",
            200,
            json!({"count": 6}),
        ),
        route(
            Method::PUT,
            "/api/v2/tickets/",
            200,
            json!({"ticket": {"id": 7, "group_id": 360000010, "assignee_id": 3611}}),
        ),
    ])
    .await;
    let (hub, quiet) = quiet_hub(cfg.options().base_url("zendesk", &zendesk.url)).await;
    let (status, accepted) = hub
        .post_zendesk(&ticket_event(7, "Hello", "bob@example.com"))
        .await;
    assert_eq!(status, 202, "{accepted}");
    let run = hub.wait_run(&only_run(&accepted)).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let out = |i: usize| run["steps"][i]["output"].clone();
    assert_eq!(
        out(0),
        json!({"id": 35436, "status": "new", "requester_id": 901})
    );
    assert_eq!(out(2), json!({"count": 6}));
    assert_eq!(
        out(3),
        json!({"id": 7, "group_id": 360000010, "assignee_id": 3611})
    );

    let got = zendesk.received();
    assert_eq!(got.len(), 5, "{got:?}");
    for r in &got {
        let auth = r.header("authorization").unwrap_or_default();
        assert!(auth.starts_with("Basic "), "{auth}");
    }
    assert_eq!(
        (got[0].method.as_str(), got[0].path.as_str()),
        ("POST", "/api/v2/tickets")
    );
    assert_eq!(
        got[0].json(),
        json!({"ticket": {"subject": "Form: refund", "comment": {"body": "I want a refund"},
               "requester": {"email": "bob@example.com", "name": "Bob Smith"},
               "priority": "high", "tags": ["web_form"]}})
    );
    // Left out: the name is the address, normal priority, no tags.
    assert_eq!(
        got[1].json(),
        json!({"ticket": {"subject": "Form", "comment": {"body": "Hi"},
               "requester": {"email": "bob@example.com", "name": "bob@example.com"},
               "priority": "normal", "tags": []}})
    );
    assert_eq!(
        (got[2].method.as_str(), got[2].path.as_str()),
        ("GET", "/api/v2/search/count")
    );
    let q: std::collections::HashMap<String, String> =
        serde_urlencoded::from_str(got[2].query.as_deref().unwrap_or_default()).unwrap();
    assert_eq!(
        q["query"],
        "type:ticket requester:bob@example.com created>24hours"
    );
    assert_eq!(
        (got[3].method.as_str(), got[3].path.as_str()),
        ("PUT", "/api/v2/tickets/7")
    );
    assert_eq!(
        got[3].json(),
        json!({"ticket": {"group_id": 360000010, "assignee_id": 3611}})
    );
    assert_eq!(got[4].json(), json!({"ticket": {"group_id": 360000010}}));
    assert!(quiet.received().is_empty(), "{:?}", quiet.received());
}

/// Zendesk's event-subscription payload (`zen:event-type:ticket.created`,
/// fields in `detail`) is read into the trigger body's shape by the
/// connector's `webhook.normalize`, so the dispatcher routes it like a
/// trigger's body; the body as sent is kept under `zendesk_event`.
#[tokio::test]
async fn a_zendesk_event_subscription_payload_runs_the_same_recipe() {
    let cfg = recipes_with("dispatcher", |t| t, "");
    let zendesk = zendesk_mock().await;
    let (hub, quiet) = quiet_hub(cfg.options().base_url("zendesk", &zendesk.url)).await;
    let sent = json!({
        "type": "zen:event-type:ticket.created",
        "account_id": 22129848,
        "id": "cbe4028c-7239-495d-b020-f22348516046",
        "time": "2025-01-08T10:12:07.672717030Z",
        "zendesk_event_version": "2022-11-06",
        "subject": "zen:ticket:5158",
        "detail": {
            "id": "5158", "subject": "Refund please", "status": "NEW", "priority": "HIGH",
            "tags": ["web", "billing"], "requester_id": "8447388090494", "assignee_id": null,
            "group_id": null, "via": {"channel": "web_service"}
        },
        "event": {}
    });
    let (status, accepted) = hub.post_zendesk(&sent).await;
    assert_eq!(status, 202, "{accepted}");
    let run = hub.wait_run(&only_run(&accepted)).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let puts = zendesk.calls("/api/v2/tickets/5158");
    assert_eq!(puts.len(), 1, "{:?}", zendesk.received());
    assert_eq!(
        puts[0].json(),
        json!({"ticket": {"group_id": 360000010, "assignee_id": 3611}})
    );
    let (_, event) = hub
        .api(&format!(
            "/api/events/{}",
            accepted["event_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(event["event_type"], "ticket.created", "{event}");
    let body = &event["body"];
    assert_eq!(
        body["ticket"],
        json!({"id": 5158, "subject": "Refund please", "status": "new", "priority": "high",
               "tags": ["web", "billing"], "requester_id": 8447388090494u64,
               "requester": {"id": 8447388090494u64}, "via": "web_service"}),
        "{body}"
    );
    assert_eq!(body["zendesk_event"], sent);
    assert!(quiet.received().is_empty(), "{:?}", quiet.received());
}

/// A recipe that keeps firing for one ticket (here: it retriggers itself
/// with no guard) is paused for that ticket by its `loop_breaker:` once it
/// has run `max` times within the window: later runs end `skipped` before
/// calling anything, with the reason in `runs list` and a warning in the
/// logs; another ticket is not affected.
#[tokio::test]
async fn the_loop_breaker_pauses_a_recipe_that_keeps_firing_for_one_ticket() {
    let cfg = Config::connectors_only();
    cfg.recipe(
        "tag-every-update",
        r#"
name: tag-every-update
on: { connector: zendesk, event: ticket.updated }
loop_breaker: { key: "{{ event.ticket.id }}", max: 3, within: 1h }
steps:
  - id: tag
    call: zendesk.add_tags
    with: { ticket_id: "{{ event.ticket.id }}", tags: [seen] }
"#,
    );
    // The breaker is a guard: no loop warning.
    let out = cfg.check();
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(!text.contains("may loop"), "{text}");

    let zendesk = MockApi::start(vec![route(
        Method::PUT,
        "/api/v2/tickets/",
        200,
        json!({"tags": ["seen"]}),
    )])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("hub.log");
    let mut opts = cfg.options().base_url("zendesk", &zendesk.url);
    opts.log_file = Some(log.clone());
    let (hub, quiet) = quiet_hub(opts).await;
    // What Zendesk would send after each of the recipe's own updates.
    let mut runs = Vec::new();
    for (n, ticket) in [(1, 8), (2, 8), (3, 8), (4, 8), (5, 8), (6, 9)] {
        let (status, accepted) = hub
            .post_zendesk(&json!({"type": "ticket.updated", "ticket": {"id": ticket, "n": n}}))
            .await;
        assert_eq!(status, 202, "{accepted}");
        runs.push(hub.wait_run(&only_run(&accepted)).await);
    }
    let statuses: Vec<&str> = runs.iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(
        statuses,
        [
            "succeeded",
            "succeeded",
            "succeeded",
            "skipped",
            "skipped",
            "succeeded"
        ]
    );
    assert_eq!(
        runs[3]["reason"],
        "loop breaker: run no. 4 for key `8` within 1h (max 3); this recipe is paused for the key until the window has passed"
    );
    assert_eq!(zendesk.calls("/api/v2/tickets/8/tags").len(), 3);
    assert_eq!(zendesk.calls("/api/v2/tickets/9/tags").len(), 1);

    let list = hub.cli(&["runs", "list", "--status", "skipped"]);
    let list = stdout(&list);
    assert_eq!(
        list.lines()
            .filter(|l| l.contains("loop breaker: run no."))
            .count(),
        2,
        "{list}"
    );
    let logs = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(logs.contains("loop breaker tripped"), "{logs}");
    assert!(quiet.received().is_empty(), "{:?}", quiet.received());
}

/// Without any `loop_breaker:`, a recipe whose call causes its own trigger
/// event gets the default breaker (5 runs per ticket within 10 minutes, the
/// ticket from the connector's `webhook.object_key`): the 6th run for one
/// ticket ends `skipped` before calling anything, says so in `runs list` and
/// the logs, and `check` says the default breaker covers it. A recipe with
/// `loop_breaker: off` keeps running, and one that cannot loop has no breaker.
#[tokio::test]
async fn the_default_loop_breaker_pauses_a_recipe_that_can_loop_unless_turned_off() {
    let cfg = Config::connectors_only();
    let looping = r#"
name: tag-every-update
on: { connector: zendesk, event: ticket.updated }
steps:
  - id: tag
    call: zendesk.add_tags
    with: { ticket_id: "{{ event.ticket.id }}", tags: [seen] }
"#;
    cfg.recipe("tag-every-update", looping);
    cfg.recipe(
        "tag-without-breaker",
        &looping
            .replace("tag-every-update", "tag-without-breaker")
            .replace("steps:\n", "loop_breaker: off\nsteps:\n"),
    );
    cfg.recipe(
        "post-every-update",
        r##"
name: post-every-update
on: { connector: zendesk, event: ticket.updated }
steps:
  - id: post
    call: slack.post_message
    with: { channel: "#x", text: "ticket {{ event.ticket.id }} updated" }
"##,
    );
    let out = cfg.check();
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{text}");
    let warnings: Vec<&str> = text.lines().filter(|l| l.contains("may loop")).collect();
    assert_eq!(warnings.len(), 2, "{text}");
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("tag-every-update.yaml:5:5")
                && w.ends_with(
                    "the default loop breaker pauses it for an object after 5 runs within 10m"
                )),
        "{text}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("tag-without-breaker.yaml:6:5")
                && w.ends_with("its loop breaker is off")),
        "{text}"
    );

    let zendesk = MockApi::start(vec![route(
        Method::PUT,
        "/api/v2/tickets/",
        200,
        json!({"tags": ["seen"]}),
    )])
    .await;
    let slack = slack_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("hub.log");
    let mut opts = cfg
        .options()
        .base_url("zendesk", &zendesk.url)
        .base_url("slack", &slack.url);
    opts.log_file = Some(log.clone());
    let (hub, quiet) = quiet_hub(opts).await;
    // What Zendesk would send after each of the recipes' own updates: 7 for
    // ticket 8, then one for ticket 9.
    let mut by_recipe: std::collections::BTreeMap<String, Vec<Value>> = Default::default();
    for (n, ticket) in (1..=8).zip([8, 8, 8, 8, 8, 8, 8, 9]) {
        let (status, accepted) = hub
            .post_zendesk(&json!({"type": "ticket.updated", "ticket": {"id": ticket, "n": n}}))
            .await;
        assert_eq!(status, 202, "{accepted}");
        for id in accepted["runs"].as_array().expect("runs") {
            let run = hub.wait_run(id.as_str().unwrap()).await;
            by_recipe
                .entry(run["recipe"].as_str().unwrap().to_string())
                .or_default()
                .push(run);
        }
    }
    let statuses = |recipe: &str| -> Vec<String> {
        by_recipe[recipe]
            .iter()
            .map(|r| r["status"].as_str().unwrap().to_string())
            .collect()
    };
    let ok = "succeeded".to_string();
    let skipped = "skipped".to_string();
    assert_eq!(
        statuses("tag-every-update"),
        [&ok, &ok, &ok, &ok, &ok, &skipped, &skipped, &ok].map(String::clone)
    );
    assert_eq!(statuses("tag-without-breaker"), vec![ok.clone(); 8]);
    assert_eq!(statuses("post-every-update"), vec![ok.clone(); 8]);
    let paused = &by_recipe["tag-every-update"][5];
    assert_eq!(
        paused["reason"],
        "loop breaker: run no. 6 for key `8` within 10m (max 5); this recipe is paused for the key until the window has passed (the default loop breaker: set `loop_breaker:` to change it, or `loop_breaker: off`)"
    );
    // Only the paused runs made no call: 5 + 7 tag calls for ticket 8.
    assert_eq!(zendesk.calls("/api/v2/tickets/8/tags").len(), 5 + 7);
    assert_eq!(zendesk.calls("/api/v2/tickets/9/tags").len(), 2);
    // A recipe that cannot loop carries no breaker steps.
    let steps: Vec<&str> = by_recipe["post-every-update"][0]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["post"]);

    let list = stdout(&hub.cli(&["runs", "list", "--status", "skipped"]));
    assert_eq!(
        list.lines()
            .filter(|l| l.contains("tag-every-update") && l.contains("loop breaker: run no."))
            .count(),
        2,
        "{list}"
    );
    let logs = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(logs.contains("loop breaker tripped"), "{logs}");
    assert!(quiet.received().is_empty(), "{:?}", quiet.received());
}

/// Tier 1 (`strategy: least_loaded`) asks Zendesk how many unsolved tickets
/// each available agent has (one search count per agent) and assigns the one
/// with the fewest; when the loads change, so does the pick.
#[tokio::test]
async fn dispatcher_assigns_tier_one_to_the_agent_with_the_fewest_open_tickets() {
    use std::sync::{Arc, Mutex};
    type Loads = Arc<Mutex<std::collections::HashMap<u64, u64>>>;
    type Assigned = Arc<Mutex<Vec<(String, Value)>>>;
    let loads: Loads = Arc::new(Mutex::new([(3641, 5), (3642, 1), (3643, 3)].into()));
    let assigned: Assigned = Arc::default();
    // A Zendesk whose search count answers each agent's own load.
    let app = axum::Router::new()
        .route(
            "/api/v2/search/count",
            axum::routing::get(
                |axum::extract::State((loads, _)): axum::extract::State<(Loads, Assigned)>,
                 axum::extract::Query(q): axum::extract::Query<
                    std::collections::HashMap<String, String>,
                >| async move {
                    let query = q.get("query").cloned().unwrap_or_default();
                    let id: u64 = query
                        .split_whitespace()
                        .find_map(|t| t.strip_prefix("assignee:"))
                        .and_then(|v| v.parse().ok())
                        .unwrap_or_else(|| panic!("no assignee in {query}"));
                    assert!(
                        query.starts_with("type:ticket ") && query.ends_with(" status<solved"),
                        "{query}"
                    );
                    let n = loads.lock().unwrap()[&id];
                    axum::Json(json!({"count": n}))
                },
            ),
        )
        .route(
            "/api/v2/tickets/{id}",
            axum::routing::put(
                |axum::extract::State((_, assigned)): axum::extract::State<(Loads, Assigned)>,
                 axum::extract::Path(id): axum::extract::Path<String>,
                 axum::Json(body): axum::Json<Value>| async move {
                    assigned.lock().unwrap().push((id, body["ticket"].clone()));
                    axum::Json(json!({"ticket": {"id": 1}}))
                },
            ),
        )
        .with_state((loads.clone(), assigned.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let cfg = recipes_with("dispatcher", |t| t, "");
    let (hub, quiet) = quiet_hub(cfg.options().base_url("zendesk", &url)).await;
    let ticket = |id: u64| {
        json!({"type": "ticket.created", "ticket": {"id": id, "subject": "Question",
               "tags": "", "locale": "en", "priority": "normal", "assignee_id": ""}})
    };
    let (_, accepted) = hub.post_zendesk(&ticket(1)).await;
    let run = hub.wait_run(&only_run(&accepted)).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    // Ivo has 1 open ticket, Jo 3, Hana 5.
    loads.lock().unwrap().insert(3642, 6);
    let (_, accepted) = hub.post_zendesk(&ticket(2)).await;
    let run = hub.wait_run(&only_run(&accepted)).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(
        *assigned.lock().unwrap(),
        vec![
            (
                "1".to_string(),
                json!({"group_id": 360000013, "assignee_id": 3642})
            ),
            (
                "2".to_string(),
                json!({"group_id": 360000013, "assignee_id": 3643})
            ),
        ]
    );
    let least = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "pick_agent.case0.least")
        .unwrap_or_else(|| panic!("no step least in {run:#}"));
    assert_eq!(least["output"]["load"].as_f64(), Some(3.0), "{least:#}");
    assert!(quiet.received().is_empty(), "{:?}", quiet.received());
}

/// Jobs 1 and 2 through the hub: an English "confirm my account" ticket
/// enrolls the pending HubSpot contact and leaves a note, and is not
/// translated (its language is detected in the hub, no DeepL call); a
/// German ticket is translated, tagged and routed to the German group.
#[tokio::test]
async fn confirmation_and_translation_jobs_run_through_the_hub() {
    let cfg = recipes_with("resend-confirmation", |t| t, "");
    let text = std::fs::read_to_string(support().join("translate-and-route.yaml")).unwrap();
    cfg.recipe("translate-and-route", &text);
    let hubspot = MockApi::start(vec![
        route(
            Method::POST,
            "/crm/v3/objects/contacts/search",
            200,
            json!({"total": 1, "results": [{"id": "42", "properties": {"email": "ann@example.com", "lifecyclestage": "subscriber"}}]}),
        ),
        route(Method::POST, "/automation/v2/workflows/", 200, json!({})),
    ])
    .await;
    let deepl = MockApi::start(vec![route(
        Method::POST,
        "/v2/translate",
        200,
        json!({"translations": [
            {"detected_source_language": "DE", "text": "Forgot password"},
            {"detected_source_language": "DE", "text": "I have not been able to log in since yesterday."}]}),
    )])
    .await;
    let zendesk = zendesk_mock().await;
    let (hub, quiet) = quiet_hub(
        cfg.options()
            .base_url("hubspot", &hubspot.url)
            .base_url("deepl", &deepl.url)
            .base_url("zendesk", &zendesk.url),
    )
    .await;

    let english = json!({"type": "ticket.created", "ticket": {"id": 51,
        "subject": "Please confirm my account",
        "description": "Hello, the confirmation e-mail never arrived. Can you send it again?",
        "requester": {"email": "ann@example.com", "name": "Ann"}}});
    let (status, accepted) = hub.post_zendesk(&english).await;
    assert_eq!(status, 202, "{accepted}");
    let mut runs = Vec::new();
    for id in accepted["runs"].as_array().unwrap() {
        runs.push(hub.wait_run(id.as_str().unwrap()).await);
    }
    let by = |runs: &[Value], name: &str| -> Value {
        runs.iter()
            .find(|r| r["recipe"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} run in {runs:?}"))
    };
    assert_eq!(by(&runs, "resend-confirmation")["status"], "succeeded");
    let skipped = by(&runs, "translate-and-route");
    assert_eq!(skipped["status"], "skipped", "{skipped}");
    assert_eq!(
        skipped["reason"],
        "written in English (confidence 1.0): no translation needed"
    );
    let enrolled = hubspot.calls("/automation/v2/workflows/1234567/enrollments/contacts/");
    assert_eq!(enrolled.len(), 1, "{:?}", hubspot.received());
    let note = zendesk.calls("/api/v2/tickets/51");
    assert_eq!(note.len(), 1, "{:?}", zendesk.received());
    assert_eq!(
        note[0].json()["ticket"]["comment"]["body"],
        "Switchboard: ann@example.com was still subscriber in HubSpot; the confirmation e-mail was sent again (workflow 1234567)."
    );

    let german = json!({"type": "ticket.created", "ticket": {"id": 52,
        "subject": "Passwort vergessen",
        "description": "Ich kann mich seit gestern nicht mehr anmelden.",
        "requester": {"email": "jan@example.de", "name": "Jan"}}});
    let (_, accepted) = hub.post_zendesk(&german).await;
    let run = hub.wait_run(&only_run(&accepted)).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(deepl.calls("/v2/translate").len(), 1);
    assert_eq!(
        deepl.calls("/v2/translate")[0].json(),
        json!({"text": ["Passwort vergessen", "Ich kann mich seit gestern nicht mehr anmelden."], "target_lang": "EN-US"})
    );
    let calls: Vec<Value> = zendesk
        .calls("/api/v2/tickets/52")
        .iter()
        .map(|c| c.json())
        .collect();
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert!(calls[0]["ticket"]["comment"]["body"]
        .as_str()
        .unwrap()
        .starts_with("Translated from German (`de`, detected with confidence"));
    assert_eq!(calls[1], json!({"tags": ["lang_de", "translated"]}));
    assert_eq!(calls[2], json!({"ticket": {"group_id": 360000011}}));
    assert!(quiet.received().is_empty(), "{:?}", quiet.received());
}
