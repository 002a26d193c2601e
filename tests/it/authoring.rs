//! Recipe authoring (issue 9): a template that meets a missing value says
//! which part of it is missing and where the template is written — in a
//! worker's run (`runs show`) and in `switchboard test` alike — and
//! `| default(…)` falls back when a *parent* of the value is missing.

use crate::utils::*;
use axum::http::Method;
use serde_json::json;

/// A note whose greeting falls back when the requester (a parent of `name`)
/// is missing, and whose second line needs the assignee.
const GREET: &str = r#"name: greet
on: { connector: zendesk, event: ticket.created }
steps:
  - id: note
    call: zendesk.add_internal_note
    with:
      ticket_id: "{{ event.ticket.id }}"
      body: |
        Hello {{ event.ticket.requester.name | default('there') }},
        assigned to {{ event.ticket.assignee.name }}
tests:
  - name: no assignee
    event: { type: ticket.created, ticket: { id: 3 } }
    mock: { zendesk.add_internal_note: { id: 3 } }
    expect_calls: [zendesk.add_internal_note]
"#;

/// Where the `body:` template is written: its block scalar's first line.
const BODY_AT: &str = "greet.yaml:9:9";

const WHY: &str = "input `body`: `event.ticket.assignee.name` is undefined (the event has `event.ticket` but no `assignee`) at ";

#[tokio::test]
async fn a_missing_value_is_named_with_its_parent_and_place_in_runs_and_tests() {
    let cfg = Config::connectors_only();
    let file = cfg.recipe("greet", GREET);
    let mock = MockApi::start(vec![route(Method::PUT, "/api/v2/tickets/", 200, json!({}))]).await;
    let hub = Hub::start(cfg.options().base_url("zendesk", &mock.url)).await;

    // No requester: the default applies. No assignee: the step fails, saying so.
    let event = json!({"type": "ticket.created", "ticket": {"id": 7}});
    let (status, accepted) = hub.post_zendesk(&event).await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["runs"][0].as_str().unwrap().to_string();
    let run = hub.wait_run(&id).await;
    assert_eq!(run["status"], "failed", "{run}");
    let expected = format!(
        "step `note` (zendesk.add_internal_note) failed: {WHY}{}",
        file.parent().unwrap().join(BODY_AT).display()
    );
    assert_eq!(run["error"], expected.as_str(), "{run}");
    assert_eq!(
        run["steps"][0]["error"]
            .as_str()
            .map(|e| expected.ends_with(e)),
        Some(true),
        "{run}"
    );
    assert!(mock.received().is_empty(), "nothing was sent");
    // `runs show` prints it as the API answers it.
    let out = hub.cli(&["runs", "show", &id]);
    assert!(stdout(&out).contains(&expected), "{}", stdout(&out));

    // With an assignee the greeting falls back to "there" and the note goes out.
    let event = json!({"type": "ticket.created", "ticket": {"id": 8, "assignee": {"name": "Bo"}}});
    let (_, accepted) = hub.post_zendesk(&event).await;
    let run = hub.wait_run(accepted["runs"][0].as_str().unwrap()).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let sent = mock.received();
    assert_eq!(
        sent[0].json()["ticket"]["comment"]["body"],
        "Hello there,\nassigned to Bo\n"
    );

    // `switchboard test` fails the recipe's own test with the same words.
    let out = cfg.command("test").output().unwrap();
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}{}", stderr(&out));
    assert!(
        text.contains(&format!(
            "status: expected succeeded, got failed: {expected}"
        )),
        "{text}"
    );
}
