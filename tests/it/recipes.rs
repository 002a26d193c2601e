//! The shipped recipes, end to end: signed webhook in, calls at the mocks,
//! step records in the admin API.

use crate::utils::*;
use axum::http::Method;
use serde_json::{json, Value};

fn contact(lifecycle: &str, plan: &str) -> Value {
    json!({"total": 1, "results": [{"id": "42", "properties": {
        "email": "bob@example.com", "lifecyclestage": lifecycle, "plan": plan,
        "hubspot_owner_id": "77", "firstname": "Bob"}}]})
}

async fn mocks(lifecycle: &str, plan: &str) -> (MockApi, MockApi) {
    let hubspot = MockApi::start(vec![
        route(
            Method::POST,
            "/crm/v3/objects/contacts/search",
            200,
            contact(lifecycle, plan),
        ),
        route(Method::POST, "/automation/v2/workflows/", 204, Value::Null),
    ])
    .await;
    let zendesk = MockApi::start(vec![route(
        Method::PUT,
        "/api/v2/tickets/",
        200,
        json!({"ticket": {"id": 7, "status": "open", "priority": "high"}, "tags": ["x"]}),
    )])
    .await;
    (hubspot, zendesk)
}

/// The shipped hub with HubSpot and Zendesk mocks answering for this contact.
async fn start(lifecycle: &str, plan: &str) -> (Hub, MockApi, MockApi) {
    let (hubspot, zendesk) = mocks(lifecycle, plan).await;
    let hub = Hub::start(
        HubOptions::default()
            .base_url("hubspot", &hubspot.url)
            .base_url("zendesk", &zendesk.url),
    )
    .await;
    (hub, hubspot, zendesk)
}

/// Post the event and wait for the run of `recipe` it started.
async fn finished_run(hub: &Hub, event: &Value, recipe: &str) -> Value {
    let (status, accepted) = hub.post_zendesk(event).await;
    assert_eq!(status, 202, "{accepted}");
    let (_, ev) = hub
        .api(&format!(
            "/api/events/{}",
            accepted["event_id"].as_str().unwrap()
        ))
        .await;
    let id = run_of(ev["runs"].as_array().unwrap(), recipe)["id"]
        .as_str()
        .unwrap()
        .to_string();
    hub.wait_run(&id).await
}

fn step_statuses(run: &Value) -> Vec<&str> {
    run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].as_str().unwrap())
        .collect()
}

fn run_of<'a>(runs: &'a [Value], recipe: &str) -> &'a Value {
    runs.iter()
        .find(|r| r["recipe"] == recipe)
        .unwrap_or_else(|| panic!("no {recipe} run in {runs:?}"))
}

#[tokio::test]
async fn resend_confirmation_enrolls_pending_contact_and_notes_ticket() {
    let (hub, hubspot, zendesk) = start("subscriber", "starter").await;

    let (status, accepted) = hub
        .post_zendesk(&ticket_event(7, "Setup mail never came", "bob@example.com"))
        .await;
    assert_eq!(status, 202, "{accepted}");
    let (_, event) = hub
        .api(&format!(
            "/api/events/{}",
            accepted["event_id"].as_str().unwrap()
        ))
        .await;
    let runs = event["runs"].as_array().unwrap().clone();
    // resend-confirmation and crm-enrichment match; the English ticket is not translated.
    assert_eq!(runs.len(), 2, "{event}");
    let run = hub
        .wait_run(run_of(&runs, "resend-confirmation")["id"].as_str().unwrap())
        .await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let steps = run["steps"].as_array().unwrap();
    let ids: Vec<_> = steps
        .iter()
        .map(|s| (s["id"].as_str().unwrap(), s["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        ids,
        vec![
            ("contact", "succeeded"),
            ("resend", "succeeded"),
            ("note", "succeeded")
        ]
    );
    assert_eq!(steps[0]["input"], json!({"email": "bob@example.com"}));
    assert_eq!(steps[0]["output"]["lifecycle"], "subscriber");
    assert_eq!(steps[0]["http_status"], 200);
    assert_eq!(steps[1]["http_status"], 204);

    // The search carried the bearer token and the e-mail filter.
    let search = &hubspot.calls("/crm/v3/objects/contacts/search")[0];
    assert_eq!(
        search.header("authorization"),
        Some("Bearer pat-na1-00000000-0000-0000-0000-000000000000")
    );
    assert_eq!(
        search.json()["filterGroups"][0]["filters"][0]["value"],
        "bob@example.com"
    );
    // Enrollment by e-mail in the configured workflow.
    let enroll = hubspot.calls("/automation/v2/workflows/");
    assert_eq!(enroll.len(), 1);
    assert_eq!(
        enroll[0].path,
        "/automation/v2/workflows/1234567/enrollments/contacts/bob%40example.com"
    );
    // The internal note on ticket 7, private, with basic auth.
    let notes: Vec<_> = zendesk
        .calls("/api/v2/tickets/7")
        .into_iter()
        .filter(|r| {
            r.json()["ticket"]["comment"]["body"]
                .as_str()
                .is_some_and(|b| b.contains("sent again"))
        })
        .collect();
    assert_eq!(notes.len(), 1, "{:?}", zendesk.received());
    assert_eq!(notes[0].json()["ticket"]["comment"]["public"], false);
    assert!(notes[0]
        .header("authorization")
        .unwrap()
        .starts_with("Basic "));
    // Secrets never reach the records.
    let text = run.to_string();
    assert!(!text.contains("pat-na1-00000000"), "{text}");
}

#[tokio::test]
async fn resend_confirmation_skips_confirmed_contacts() {
    let (hub, hubspot, _zendesk) = start("customer", "starter").await;
    let run = finished_run(
        &hub,
        &ticket_event(8, "Please confirm my account", "bob@example.com"),
        "resend-confirmation",
    )
    .await;
    assert_eq!(run["status"], "succeeded");
    let statuses = step_statuses(&run);
    assert_eq!(statuses, vec!["succeeded", "skipped", "skipped"]);
    assert!(hubspot.calls("/automation/").is_empty());
}

#[tokio::test]
async fn translate_foreign_tickets_adds_translation_note_and_language_tag() {
    let deepl = MockApi::start(vec![route(
        Method::POST,
        "/v2/translate",
        200,
        json!({"translations": [
            {"detected_source_language": "DE", "text": "My login is broken"},
            {"detected_source_language": "DE", "text": "I cannot log in since yesterday."}
        ]}),
    )])
    .await;
    let (hubspot, zendesk) = mocks("customer", "starter").await;
    let hub = Hub::start(
        HubOptions::default()
            .base_url("deepl", &deepl.url)
            .base_url("hubspot", &hubspot.url)
            .base_url("zendesk", &zendesk.url),
    )
    .await;
    let mut event = ticket_event(9, "Mein Login ist kaputt", "anna@example.de");
    event["ticket"]["locale"] = json!("de");
    event["ticket"]["description"] = json!("Ich kann mich seit gestern nicht anmelden.");
    let (status, accepted) = hub.post_zendesk(&event).await;
    assert_eq!(status, 202);
    let (_, ev) = hub
        .api(&format!(
            "/api/events/{}",
            accepted["event_id"].as_str().unwrap()
        ))
        .await;
    let run = hub
        .wait_run(
            run_of(ev["runs"].as_array().unwrap(), "translate-foreign-tickets")["id"]
                .as_str()
                .unwrap(),
        )
        .await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["steps"][0]["output"]["detected_source_language"], "DE");

    let calls = deepl.calls("/v2/translate");
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0].json(),
        json!({"text": ["Mein Login ist kaputt", "Ich kann mich seit gestern nicht anmelden."], "target_lang": "EN-US"})
    );
    assert_eq!(
        calls[0].header("authorization"),
        Some("DeepL-Auth-Key 00000000-0000-0000-0000-000000000000:fx")
    );
    let note = zendesk
        .calls("/api/v2/tickets/9")
        .into_iter()
        .find(|r| {
            r.path == "/api/v2/tickets/9"
                && r.json()["ticket"]["comment"]["body"]
                    .as_str()
                    .is_some_and(|b| b.contains("DeepL"))
        })
        .expect("translation note");
    let body = note.json()["ticket"]["comment"]["body"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(body.contains("Translated from DE"), "{body}");
    assert!(body.contains("Subject: My login is broken"), "{body}");
    assert!(body.contains("I cannot log in since yesterday."), "{body}");
    let tags = zendesk.calls("/api/v2/tickets/9/tags");
    assert_eq!(tags.len(), 1);
    assert_eq!(tags[0].json(), json!({"tags": ["lang_de", "translated"]}));
}

#[tokio::test]
async fn english_tickets_are_not_translated() {
    let (hub, _hubspot, _zendesk) = start("customer", "starter").await;
    let (_, accepted) = hub
        .post_zendesk(&ticket_event(10, "Question about invoices", "a@b.c"))
        .await;
    let (_, ev) = hub
        .api(&format!(
            "/api/events/{}",
            accepted["event_id"].as_str().unwrap()
        ))
        .await;
    let recipes: Vec<_> = ev["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["recipe"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(recipes, vec!["crm-enrichment"]);
}

#[tokio::test]
async fn crm_enrichment_notes_plan_and_raises_priority_for_high_value_plans() {
    let (hub, _hubspot, zendesk) = start("customer", "enterprise").await;
    let run = finished_run(
        &hub,
        &ticket_event(11, "Invoice question", "bob@example.com"),
        "crm-enrichment",
    )
    .await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let statuses = step_statuses(&run);
    assert_eq!(statuses, vec!["succeeded", "succeeded", "succeeded"]);
    let puts = zendesk.calls("/api/v2/tickets/11");
    let note = puts
        .iter()
        .find_map(|r| {
            r.json()["ticket"]["comment"]["body"]
                .as_str()
                .map(str::to_string)
        })
        .expect("note");
    assert!(note.contains("plan: enterprise"), "{note}");
    assert!(note.contains("lifecycle stage: customer"), "{note}");
    assert!(note.contains("owner: 77"), "{note}");
    let update = puts
        .iter()
        .find(|r| r.json()["ticket"]["priority"].is_string())
        .expect("priority update");
    assert_eq!(
        update.json(),
        json!({"ticket": {"priority": "high", "tags": ["enterprise_customer"]}})
    );
}

#[tokio::test]
async fn crm_enrichment_leaves_priority_of_other_plans() {
    let (hub, _hubspot, zendesk) = start("customer", "starter").await;
    let run = finished_run(
        &hub,
        &ticket_event(12, "Invoice question", "bob@example.com"),
        "crm-enrichment",
    )
    .await;
    assert_eq!(run["steps"][2]["status"], "skipped", "{run}");
    assert!(zendesk
        .calls("/api/v2/tickets/12")
        .iter()
        .all(|r| r.json()["ticket"]["priority"].is_null()));
}
