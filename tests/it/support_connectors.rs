//! The support-pack connectors of issue 8 through the binary: webhooks
//! verified by the `token` scheme (Freshdesk's header, Wufoo's form field),
//! Typeform's signature and Standard Webhooks from the customer's app in;
//! Freshdesk, Stripe and SendGrid calls out, each checked at an in-process
//! mock for method, path, query, credentials and body. The recipes of jobs 3, 5 and 6
//! (`recipes/support/`) run end to end, job 6 with a 2-second wait.

use crate::utils::*;
use axum::http::Method;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

fn support(recipe: &str) -> String {
    std::fs::read_to_string(
        repo()
            .join("recipes/support")
            .join(format!("{recipe}.yaml")),
    )
    .unwrap()
}

fn b64_hmac(key: &[u8], parts: &[&[u8]]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    for p in parts {
        mac.update(p);
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

fn form_headers() -> Vec<(String, String)> {
    vec![(
        "Content-Type".into(),
        "application/x-www-form-urlencoded".into(),
    )]
}

#[tokio::test]
async fn a_wufoo_entry_becomes_a_freshdesk_ticket_and_the_handshake_key_is_not_stored() {
    let cfg = Config::connectors_only();
    cfg.recipe("web-form-ticket", &support("web-form-ticket"));
    let freshdesk = MockApi::start(vec![route(
        Method::POST,
        "/api/v2/tickets",
        201,
        json!({"id": 4711, "status": 2, "priority": 2, "subject": "Billing: ..."}),
    )])
    .await;
    let (hub, quiet) = quiet_hub(cfg.options().base_url("freshdesk", &freshdesk.url)).await;

    let entry = format!(
        "Field1=Ada+Lovelace&Field3=ada%40example.com&Field4=Billing&Field5=Wrong+VAT+number\
         &EntryId=118&DateCreated=2025-12-01+09%3A14%3A03&HandshakeKey={WUFOO_HANDSHAKE_KEY}"
    );
    let (status, accepted) = hub.post("wufoo", &form_headers(), entry.as_bytes()).await;
    assert_eq!(status, 202, "{accepted}");
    let run = hub.wait_run(&only_run(&accepted)).await;
    assert_eq!(run["status"], "succeeded", "{run}");

    let sent = freshdesk.calls("/api/v2/tickets");
    assert_eq!(sent.len(), 1, "{:?}", freshdesk.received());
    assert_eq!(sent[0].method, "POST");
    assert_eq!(
        sent[0].header("authorization"),
        Some(basic("fd-api-key-123", "X").as_str())
    );
    assert_eq!(sent[0].header("content-type"), Some("application/json"));
    assert_eq!(
        sent[0].json(),
        json!({"email": "ada@example.com", "name": "Ada Lovelace",
               "subject": "Billing: Wrong VAT number",
               "description": "Wrong VAT number\n\n(Wufoo entry 118, 2025-12-01 09:14:03)",
               "priority": 2, "status": 2, "source": 2, "tags": ["web_form", "billing"]})
    );
    assert_eq!(run["steps"][2]["output"]["id"], 4711, "{run}");

    // The stored event holds the form, not the key.
    let event_id = accepted["event_id"].as_str().unwrap();
    let (_, event) = hub.api(&format!("/api/events/{event_id}")).await;
    assert_eq!(event["event_type"], "entry.submitted", "{event}");
    assert_eq!(event["body"]["Field1"], "Ada Lovelace", "{event}");
    assert_eq!(event["body"]["HandshakeKey"], Value::Null, "{event}");
    assert!(!event.to_string().contains(WUFOO_HANDSHAKE_KEY), "{event}");

    // A wrong or missing key is refused before anything is stored.
    let forged = entry.replace(WUFOO_HANDSHAKE_KEY, "guessed-key");
    let (status, body) = hub.post("wufoo", &form_headers(), forged.as_bytes()).await;
    assert_eq!(
        (status, &body["check"]),
        (401, &json!("signature_mismatch"))
    );
    let (status, body) = hub
        .post("wufoo", &form_headers(), b"Field3=a%40b.c&Field5=hi")
        .await;
    assert_eq!((status, &body["check"]), (401, &json!("signature_missing")));

    // Another form's entry, without the expected fields: the run fails at
    // `check_fields` with the reason, and no ticket is created.
    let other = format!("Field1=Bob&Field2=42&EntryId=7&HandshakeKey={WUFOO_HANDSHAKE_KEY}");
    let (status, accepted) = hub.post("wufoo", &form_headers(), other.as_bytes()).await;
    assert_eq!(status, 202, "{accepted}");
    let run = hub.wait_run(&only_run(&accepted)).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(
        run["error"],
        "step `check_fields` (stop) failed: the form entry 7 has no valid e-mail (Field3) or no message (Field5); no ticket was created",
        "{run}"
    );
    assert_eq!(freshdesk.calls("/api/v2/tickets").len(), 1);
    assert!(quiet.received().is_empty(), "{:?}", quiet.received());
}

const FRESHDESK_RECIPE: &str = r#"
name: freshdesk-actions
on: { connector: freshdesk, event: ticket.created }
steps:
  - id: view
    call: freshdesk.view_ticket
    with: { ticket_id: "{{ event.ticket.id }}" }
  - id: search
    call: freshdesk.search_tickets
    with: { query: "tag:'{{ event.ticket.tag }}' AND status:2" }
  - id: update
    call: freshdesk.update_ticket
    with: { ticket_id: "{{ event.ticket.id }}", fields: { priority: 3, tags: [vip] } }
  - id: assign
    call: freshdesk.assign
    with: { ticket_id: "{{ event.ticket.id }}", group_id: 11, responder_id: 2201 }
  - id: reply
    call: freshdesk.reply
    with: { ticket_id: "{{ event.ticket.id }}", body: "Hi {{ event.ticket.requester.name }}, on it." }
  - id: note
    call: freshdesk.add_note
    with: { ticket_id: "{{ event.ticket.id }}", body: "VIP: {{ steps.search.total }} open tickets" }
"#;

/// Every Freshdesk action as the API reference documents it (method, path,
/// query, basic auth with the API key and `X`, JSON body), triggered by an
/// automation webhook carrying the token header.
#[tokio::test]
async fn freshdesk_actions_and_token_webhooks() {
    let cfg = Config::connectors_only();
    cfg.recipe("freshdesk-actions", FRESHDESK_RECIPE);
    let freshdesk = MockApi::start(vec![
        route(
            Method::GET,
            "/api/v2/search/tickets",
            200,
            json!({"total": 2, "results": [{"id": 9, "subject": "a"}, {"id": 12, "subject": "b"}]}),
        ),
        route(
            Method::GET,
            "/api/v2/tickets/12",
            200,
            json!({"id": 12, "subject": "VPN", "status": 2, "priority": 1, "tags": [],
                   "group_id": null, "responder_id": null,
                   "requester": {"email": "ann@example.com", "name": "Ann"}}),
        ),
        route(
            Method::PUT,
            "/api/v2/tickets/12",
            200,
            json!({"id": 12, "status": 2, "priority": 3, "group_id": 11, "responder_id": 2201}),
        ),
        route(
            Method::POST,
            "/api/v2/tickets/12/reply",
            201,
            json!({"id": 501, "ticket_id": 12}),
        ),
        route(
            Method::POST,
            "/api/v2/tickets/12/notes",
            201,
            json!({"id": 502, "ticket_id": 12}),
        ),
    ])
    .await;
    let (hub, quiet) = quiet_hub(cfg.options().base_url("freshdesk", &freshdesk.url)).await;
    let body =
        json!({"type": "ticket.created", "ticket": {"id": 12, "subject": "VPN", "tag": "vip",
                      "requester": {"email": "ann@example.com", "name": "Ann"}}})
        .to_string();
    let mut headers = vec![("Content-Type".to_string(), "application/json".to_string())];

    // Without the token header, or with another token: 401.
    let (status, refused) = hub.post("freshdesk", &headers, body.as_bytes()).await;
    assert_eq!(
        (status, &refused["check"]),
        (401, &json!("signature_missing"))
    );
    let mut wrong = headers.clone();
    wrong.push(("X-Switchboard-Token".into(), "freshdesk-token-5b2e9".into()));
    let (status, refused) = hub.post("freshdesk", &wrong, body.as_bytes()).await;
    assert_eq!(
        (status, &refused["check"]),
        (401, &json!("signature_mismatch"))
    );

    headers.push(("X-Switchboard-Token".into(), FRESHDESK_WEBHOOK_TOKEN.into()));
    let (status, accepted) = hub.post("freshdesk", &headers, body.as_bytes()).await;
    assert_eq!(status, 202, "{accepted}");
    let run = hub.wait_run(&only_run(&accepted)).await;
    assert_eq!(run["status"], "succeeded", "{run}");

    let got = freshdesk.received();
    let calls: Vec<(&str, &str, Option<&str>)> = got
        .iter()
        .map(|r| (r.method.as_str(), r.path.as_str(), r.query.as_deref()))
        .collect();
    assert_eq!(
        calls,
        vec![
            ("GET", "/api/v2/tickets/12", Some("include=requester")),
            (
                "GET",
                "/api/v2/search/tickets",
                Some("query=%22tag%3A%27vip%27+AND+status%3A2%22")
            ),
            ("PUT", "/api/v2/tickets/12", None),
            ("PUT", "/api/v2/tickets/12", None),
            ("POST", "/api/v2/tickets/12/reply", None),
            ("POST", "/api/v2/tickets/12/notes", None),
        ]
    );
    let auth = basic("fd-api-key-123", "X");
    for r in &got {
        assert_eq!(r.header("authorization"), Some(auth.as_str()), "{r:?}");
    }
    let bodies: Vec<Value> = got[2..].iter().map(Received::json).collect();
    assert_eq!(
        bodies,
        vec![
            json!({"priority": 3, "tags": ["vip"]}),
            json!({"group_id": 11, "responder_id": 2201}),
            json!({"body": "Hi Ann, on it."}),
            json!({"body": "VIP: 2 open tickets", "private": true}),
        ]
    );
    let steps = run["steps"].as_array().unwrap();
    assert_eq!(
        steps[0]["output"],
        json!({"id": 12, "subject": "VPN", "status": 2, "priority": 1, "tags": [],
               "group_id": null, "responder_id": null, "requester_email": "ann@example.com"})
    );
    assert_eq!(
        steps[1]["output"],
        json!({"total": 2, "ids": [9, 12], "subjects": ["a", "b"]})
    );
    assert!(quiet.received().is_empty(), "{:?}", quiet.received());
}

/// Stripe's list objects, as the API returns them (trimmed to what we read).
fn stripe_customers() -> Value {
    json!({"object": "search_result", "url": "/v1/customers/search", "has_more": false,
           "next_page": null, "data": [{"id": "cus_Big", "object": "customer",
           "email": "bob@example.com", "name": "Bob Smith", "created": 1700000000,
           "delinquent": false, "metadata": {"tier": "gold"}}]})
}

fn stripe_subscriptions() -> Value {
    let item = |id: &str, nickname: &str, amount: u64, interval: &str, quantity: u64| {
        json!({"id": id, "object": "subscription_item", "quantity": quantity,
               "price": {"id": format!("price_{id}"), "object": "price", "nickname": nickname,
                         "unit_amount": amount, "currency": "eur",
                         "recurring": {"interval": interval, "interval_count": 1}}})
    };
    json!({"object": "list", "url": "/v1/subscriptions", "has_more": false, "data": [
        {"id": "sub_1", "object": "subscription", "status": "active", "customer": "cus_Big",
         "items": {"object": "list", "has_more": false, "data": [
             item("si_1", "Business", 9900, "month", 3)]}},
        {"id": "sub_2", "object": "subscription", "status": "active", "customer": "cus_Big",
         "items": {"object": "list", "has_more": false, "data": [
             item("si_2", "Support add-on", 120000, "year", 1)]}}
    ]})
}

/// Job 3 through the hub: Stripe's search and subscriptions called as its
/// API reference documents (bearer secret key, the search query language),
/// the MRR of two subscriptions, the note and the priority at Zendesk.
#[tokio::test]
async fn billing_enrichment_reads_stripe_and_prioritises_a_high_value_customer() {
    let cfg = Config::connectors_only();
    cfg.recipe("billing-enrichment", &support("billing-enrichment"));
    let stripe = MockApi::start(vec![
        route(Method::GET, "/v1/customers/search", 200, stripe_customers()),
        route(
            Method::GET,
            "/v1/subscriptions",
            200,
            stripe_subscriptions(),
        ),
    ])
    .await;
    let zendesk = MockApi::start(vec![
        route(
            Method::PUT,
            "/api/v2/tickets/7/tags",
            200,
            json!({"tags": ["high_value"]}),
        ),
        route(
            Method::PUT,
            "/api/v2/tickets/",
            200,
            json!({"ticket": {"id": 7}}),
        ),
        route(
            Method::GET,
            "/api/v2/tickets/7",
            200,
            json!({"ticket": {"id": 7, "priority": "normal"}}),
        ),
    ])
    .await;
    let (hub, quiet) = quiet_hub(
        cfg.options()
            .base_url("stripe", &stripe.url)
            .base_url("zendesk", &zendesk.url),
    )
    .await;
    let (status, accepted) = hub
        .post_zendesk(&ticket_event(7, "Export fails", "bob@example.com"))
        .await;
    assert_eq!(status, 202, "{accepted}");
    let run = hub.wait_run(&only_run(&accepted)).await;
    assert_eq!(run["status"], "succeeded", "{run}");

    let got = stripe.received();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        (
            got[0].method.as_str(),
            got[0].path.as_str(),
            got[0].query.as_deref()
        ),
        (
            "GET",
            "/v1/customers/search",
            Some("limit=1&query=email%3A%27bob%40example.com%27")
        )
    );
    assert_eq!(
        (
            got[1].method.as_str(),
            got[1].path.as_str(),
            got[1].query.as_deref()
        ),
        (
            "GET",
            "/v1/subscriptions",
            Some("customer=cus_Big&limit=10")
        )
    );
    for r in &got {
        assert_eq!(
            r.header("authorization"),
            Some("Bearer sk_test_0000000000000000000000000")
        );
        assert!(r.body.is_empty(), "{r:?}");
    }
    let calls: Vec<(String, String, Value)> = zendesk
        .calls("/api/v2/tickets/7")
        .iter()
        .map(|r| (r.method.clone(), r.path.clone(), r.json()))
        .collect();
    let call = |m: &str, p: &str, body: Value| (m.to_string(), p.to_string(), body);
    assert_eq!(
        calls,
        vec![
            call(
                "PUT",
                "/api/v2/tickets/7",
                json!({"ticket": {"comment": {"public": false, "body":
                "Billing (Stripe cus_Big):\nplan: Business, Support add-on\nMRR: 397.0 EUR\npayment trouble: no"}}})
            ),
            call(
                "PUT",
                "/api/v2/tickets/7/tags",
                json!({"tags": ["high_value"]})
            ),
            call("GET", "/api/v2/tickets/7", Value::Null),
            call(
                "PUT",
                "/api/v2/tickets/7",
                json!({"ticket": {"priority": "high"}})
            ),
        ]
    );
    assert!(quiet.received().is_empty(), "{:?}", quiet.received());
}

/// Typeform signs the body (`Typeform-Signature: sha256=<base64>`); its
/// `event_id` makes a redelivery a duplicate. The response becomes a
/// Freshdesk ticket (job 5, `typeform-ticket.yaml`), answers found by reference.
#[tokio::test]
async fn typeform_responses_are_verified_become_tickets_and_redeliveries_are_duplicates() {
    let cfg = Config::connectors_only();
    cfg.recipe("typeform-ticket", &support("typeform-ticket"));
    let freshdesk = MockApi::start(vec![route(
        Method::POST,
        "/api/v2/tickets",
        201,
        json!({"id": 4713}),
    )])
    .await;
    let (hub, quiet) = quiet_hub(cfg.options().base_url("freshdesk", &freshdesk.url)).await;
    let body = json!({
        "event_id": "01HXYZTYPEFORM", "event_type": "form_response",
        "form_response": {"form_id": "lT4Z3j", "token": "a3a12ec67a1365927098a606107fac15",
            "submitted_at": "2025-12-01T09:14:03Z",
            "answers": [
                {"type": "email", "email": "ada@example.com", "field": {"id": "SMEUb7VJz92Q", "type": "email", "ref": "email"}},
                {"type": "text", "text": "The export hangs at 99 %", "field": {"id": "k6TP9oLGgHjl", "type": "long_text", "ref": "message"}}
            ]}
    })
    .to_string();
    let sig = format!(
        "sha256={}",
        b64_hmac(TYPEFORM_WEBHOOK_SECRET.as_bytes(), &[body.as_bytes()])
    );
    let headers = vec![
        ("Content-Type".to_string(), "application/json".to_string()),
        ("Typeform-Signature".to_string(), sig.clone()),
    ];
    let (status, accepted) = hub.post("typeform", &headers, body.as_bytes()).await;
    assert_eq!(status, 202, "{accepted}");
    let event_id = accepted["event_id"].as_str().unwrap();
    let (_, event) = hub.api(&format!("/api/events/{event_id}")).await;
    assert_eq!(
        (&event["event_type"], &event["delivery_id"]),
        (&json!("form_response"), &json!("01HXYZTYPEFORM")),
        "{event}"
    );
    let run = hub.wait_run(&only_run(&accepted)).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let (status, again) = hub.post("typeform", &headers, body.as_bytes()).await;
    assert_eq!(
        (status, &again["duplicate"]),
        (200, &json!(true)),
        "{again}"
    );
    let tickets: Vec<Value> = freshdesk
        .calls("/api/v2/tickets")
        .iter()
        .map(Received::json)
        .collect();
    assert_eq!(
        tickets,
        vec![
            json!({"email": "ada@example.com", "name": "ada@example.com",
                    "subject": "Web form: The export hangs at 99 %",
                    "description": "The export hangs at 99 %\n\n(Typeform response a3a12ec67a1365927098a606107fac15, 2025-12-01T09:14:03Z)",
                    "priority": 1, "status": 2, "source": 2, "tags": ["web_form", "typeform"]})
        ]
    );
    assert!(quiet.received().is_empty(), "{:?}", quiet.received());

    // A changed body under the same signature, or no signature: 401.
    let changed = body.replace("99 %", "98 %");
    let (status, refused) = hub.post("typeform", &headers, changed.as_bytes()).await;
    assert_eq!(
        (status, &refused["check"]),
        (401, &json!("signature_mismatch"))
    );
    let (status, refused) = hub.post("typeform", &headers[..1], body.as_bytes()).await;
    assert_eq!(
        (status, &refused["check"]),
        (401, &json!("signature_missing"))
    );
}

/// Standard Webhooks headers for the `app` connector.
fn app_headers(body: &[u8]) -> Vec<(String, String)> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(APP_WEBHOOK_SECRET.trim_start_matches("whsec_"))
        .unwrap();
    let id = format!("msg_{}", rand::random::<u64>());
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let sig = b64_hmac(&key, &[id.as_bytes(), b".", ts.as_bytes(), b".", body]);
    vec![
        ("Content-Type".into(), "application/json".into()),
        ("webhook-id".into(), id),
        ("webhook-timestamp".into(), ts),
        ("webhook-signature".into(), format!("v1,{sig}")),
    ]
}

async fn post_app(hub: &Hub, body: Value) -> Value {
    let raw = serde_json::to_vec(&body).unwrap();
    let (status, accepted) = hub.post("app", &app_headers(&raw), &raw).await;
    assert_eq!(status, 202, "{accepted}");
    accepted
}

/// Job 6 end to end with `inactive_for: 2s`: two sign-ups get the welcome
/// at once; the user who is active meanwhile has the follow-up cancelled,
/// the other gets it after the wait.
#[tokio::test]
async fn journey_welcomes_then_follows_up_only_users_who_stay_away() {
    let cfg = Config::connectors_only();
    let recipe = support("journey-follow-up");
    assert!(recipe.contains("inactive_for: 3d"));
    cfg.recipe(
        "journey-follow-up",
        &recipe.replace("inactive_for: 3d", "inactive_for: 2s"),
    );
    let sendgrid =
        MockApi::start(vec![route(Method::POST, "/v3/mail/send", 202, Value::Null)]).await;
    let (hub, quiet) = quiet_hub(cfg.options().base_url("sendgrid", &sendgrid.url)).await;

    let away = post_app(
        &hub,
        json!({"type": "user.signed_up", "user": {"id": "u_1", "email": "ann@example.com", "name": "Ann Smith"}}),
    )
    .await;
    let active = post_app(
        &hub,
        json!({"type": "user.signed_up", "user": {"id": "u_2", "email": "bo@example.com"}}),
    )
    .await;
    let (away, active) = (only_run(&away), only_run(&active));
    hub.wait_status(&away, "waiting").await;
    hub.wait_status(&active, "waiting").await;
    let activity = post_app(&hub, json!({"type": "user.active", "user": {"id": "u_2"}})).await;
    assert_eq!(activity["runs"], json!([]), "{activity}");

    let cancelled = hub.wait_status(&active, "cancelled").await;
    assert!(
        cancelled["reason"]
            .as_str()
            .is_some_and(|r| r.contains("user.active")),
        "{cancelled}"
    );
    let done = hub.wait_run(&away).await;
    assert_eq!(done["status"], "succeeded", "{done}");

    let mails: Vec<Value> = sendgrid
        .calls("/v3/mail/send")
        .iter()
        .map(|r| {
            assert_eq!(r.header("authorization"), Some("Bearer SG.test-key.0000"));
            let m = r.json();
            json!([m["personalizations"][0]["to"][0]["email"], m["template_id"]])
        })
        .collect();
    let welcome = "d-0000000000000000000000000000welcome";
    let follow_up = "d-00000000000000000000000000followup";
    assert_eq!(mails.len(), 3, "{mails:?}");
    // The two welcomes in either order, then Ann's follow-up.
    assert!(
        mails[..2].contains(&json!(["ann@example.com", welcome])),
        "{mails:?}"
    );
    assert!(
        mails[..2].contains(&json!(["bo@example.com", welcome])),
        "{mails:?}"
    );
    assert_eq!(mails[2], json!(["ann@example.com", follow_up]));
    let last = sendgrid.calls("/v3/mail/send")[2].json();
    assert_eq!(
        last,
        json!({"personalizations": [{"to": [{"email": "ann@example.com", "name": "Ann Smith"}],
                                      "dynamic_template_data": {"first_name": "Ann", "days": "2s"}}],
               "from": {"email": "support@example.com", "name": "support@example.com"},
               "template_id": follow_up, "categories": ["journey", "follow_up"]})
    );
    assert!(quiet.received().is_empty(), "{:?}", quiet.received());
}

const GOOGLE_RECIPE: &str = r#"
name: google-translate
on: { connector: zendesk, event: ticket.created }
steps:
  - id: detect
    call: google_translate.detect
    with: { text: "{{ event.ticket.subject }}" }
  - id: translation
    if:
      - "$.steps.detect.language": { not_equals: en }
      - "$.steps.detect.confidence": { gte: 0.8 }
    call: google_translate.translate
    with:
      text: ["{{ event.ticket.subject }}", "{{ event.ticket.description }}"]
      target: en
"#;

/// Google Cloud Translation v2 as its reference documents it: the API key
/// as the `key` query parameter (redacted in the step record), `q` and
/// `target` in a JSON body, detections as a list of lists.
#[tokio::test]
async fn google_translate_detects_then_translates() {
    let cfg = Config::connectors_only();
    cfg.recipe("google-translate", GOOGLE_RECIPE);
    let google = MockApi::start(vec![
        route(
            Method::POST,
            "/language/translate/v2/detect",
            200,
            json!({"data": {"detections": [[{"language": "de", "isReliable": false, "confidence": 0.97}]]}}),
        ),
        route(
            Method::POST,
            "/language/translate/v2",
            200,
            json!({"data": {"translations": [
                {"translatedText": "Printer is burning", "detectedSourceLanguage": "de"},
                {"translatedText": "Please help", "detectedSourceLanguage": "de"}]}}),
        ),
    ])
    .await;
    let (hub, quiet) = quiet_hub(cfg.options().base_url("google_translate", &google.url)).await;
    let mut ticket = ticket_event(9, "Drucker brennt", "bob@example.com");
    ticket["ticket"]["description"] = json!("Bitte helfen");
    let (status, accepted) = hub.post_zendesk(&ticket).await;
    assert_eq!(status, 202, "{accepted}");
    let run = hub.wait_run(&only_run(&accepted)).await;
    assert_eq!(run["status"], "succeeded", "{run}");

    let got = google.received();
    let sent: Vec<(&str, Option<&str>, Value)> = got
        .iter()
        .map(|r| (r.path.as_str(), r.query.as_deref(), r.json()))
        .collect();
    assert_eq!(
        sent,
        vec![
            (
                "/language/translate/v2/detect",
                Some("key=AIzaSyTest-google-translate-key"),
                json!({"q": "Drucker brennt"})
            ),
            (
                "/language/translate/v2",
                Some("key=AIzaSyTest-google-translate-key"),
                json!({"q": ["Drucker brennt", "Bitte helfen"], "target": "en", "format": "text"})
            ),
        ]
    );
    let steps = run["steps"].as_array().unwrap();
    assert_eq!(
        steps[0]["output"],
        json!({"language": "de", "confidence": 0.97})
    );
    assert_eq!(
        steps[1]["output"],
        json!({"text": "Printer is burning", "texts": ["Printer is burning", "Please help"],
               "detected_source_language": "de"})
    );
    assert!(!run.to_string().contains("AIzaSyTest"), "{run}");
    assert!(quiet.received().is_empty(), "{:?}", quiet.received());
}
