//! The demo sandbox: stand-ins for the vendor APIs of the shipped
//! connectors that call out (HubSpot, Zendesk, DeepL, Slack and its
//! slash-command `response_url`s, Freshdesk, Stripe, SendGrid, Google
//! Translate), served on loopback inside
//! the hub's own process by `switchboard serve --demo`, so the quick start
//! shows runs succeed without credentials or a network.
//!
//! Each route answers in the shape of the vendor's real API (the specs in
//! `tests/fixtures/apis/`): the same paths under a per-vendor prefix, the
//! same JSON fields the connectors' `output:` picks, the vendor's status
//! for a missing credential. It keeps tickets in memory so a read after a
//! write sees the write; everything else is canned: every e-mail address is
//! a HubSpot lead on the premium plan and a Stripe customer with one
//! monthly subscription, DeepL "translates" by marking the text. Nothing is
//! stored, nothing leaves the machine. (The webhook-only connectors — app,
//! typeform, wufoo — make no calls, so they need no stand-in.)
//!
//! Never used unless asked for (`--demo`). Imports no Switchboard module:
//! it is the far end, and knows nothing of the hub.

use axum::extract::Request;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Form, Json, Router};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The demo credentials and webhook secret (`docs/demo-secrets.yaml`),
/// used by `serve --demo` and `demo send` when no secrets file is given.
pub const DEMO_SECRETS: &str = include_str!("../docs/demo-secrets.yaml");

/// A sample `ticket.created` delivery (`docs/ticket-created.json`).
pub const SAMPLE_TICKET: &str = include_str!("../docs/ticket-created.json");

/// The connectors the sandbox stands in for, and the base URL path of each
/// (the part of the vendor's base URL after the host: Slack's is `/api`).
pub const CONNECTORS: &[(&str, &str)] = &[
    ("hubspot", "/hubspot"),
    ("zendesk", "/zendesk"),
    ("deepl", "/deepl"),
    ("slack", "/slack/api"),
    ("freshdesk", "/freshdesk"),
    ("stripe", "/stripe"),
    ("sendgrid", "/sendgrid"),
    ("slack_commands", "/slack-hooks"),
    ("google_translate", "/google-translate"),
];

/// The base URL a connector uses to reach the sandbox at `origin`
/// (`http://127.0.0.1:PORT`), if the sandbox stands in for it.
pub fn base_url(origin: &str, connector: &str) -> Option<String> {
    CONNECTORS
        .iter()
        .find(|(name, _)| *name == connector)
        .map(|(_, path)| format!("{}{path}", origin.trim_end_matches('/')))
}

/// Tickets written so far, by id (a std Mutex: nothing async happens while it is held).
#[derive(Clone, Default)]
struct Tickets(Arc<Mutex<HashMap<u64, Value>>>);

impl Tickets {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<u64, Value>) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Every vendor's routes under its prefix, each behind the credential the
/// vendor expects (answering a request without one as the vendor does).
pub fn router() -> Router {
    let unauthorized = StatusCode::UNAUTHORIZED;
    let hubspot = Router::new()
        .route("/crm/v3/objects/contacts/search", post(hubspot_search))
        .route("/crm/v3/objects/contacts/{id}", get(hubspot_contact))
        .route(
            "/automation/v2/workflows/{workflow}/enrollments/contacts/{email}",
            post(hubspot_enroll),
        );
    let hubspot_refusal = json!({
        "status": "error",
        "message": "Authentication credentials not found.",
        "correlationId": "00000000-0000-0000-0000-000000000000",
        "category": "INVALID_AUTHENTICATION"
    });
    let zendesk = Router::new()
        .route("/api/v2/tickets", post(zendesk_create))
        .route("/api/v2/search", get(zendesk_search))
        .route("/api/v2/search/count", get(zendesk_count))
        .route("/api/v2/users/search", get(zendesk_users))
        .route(
            "/api/v2/tickets/{id}",
            get(zendesk_show).put(zendesk_update),
        )
        .route("/api/v2/tickets/{id}/tags", put(zendesk_tags));
    let zendesk_refusal = json!({"error": "Couldn't authenticate you"});
    let deepl = Router::new().route("/v2/translate", post(deepl_translate));
    let deepl_refusal = json!({"message": "Wrong endpoint. Use https://api.deepl.com"});
    let slack = Router::new().route("/chat.postMessage", post(slack_post));
    let freshdesk = Router::new()
        .route("/api/v2/tickets", post(freshdesk_create))
        .route(
            "/api/v2/tickets/{id}",
            get(freshdesk_show).put(freshdesk_update),
        )
        .route("/api/v2/tickets/{id}/reply", post(freshdesk_reply))
        .route("/api/v2/tickets/{id}/notes", post(freshdesk_note))
        .route("/api/v2/search/tickets", get(freshdesk_search));
    let freshdesk_refusal = json!({"code": "invalid_credentials", "message": "You have to be logged in to perform this action."});
    let stripe = Router::new()
        .route("/v1/customers/search", get(stripe_customers))
        .route("/v1/subscriptions", get(stripe_subscriptions));
    let stripe_refusal = json!({"error": {
        "type": "invalid_request_error",
        "message": "You did not provide an API key."
    }});
    let sendgrid = Router::new().route("/v3/mail/send", post(sendgrid_send));
    let sendgrid_refusal = json!({"errors": [{
        "message": "The provided authorization grant is invalid, expired, or revoked",
        "field": null,
        "help": null
    }]});
    // A slash command's response_url answers `ok` as text; it needs no credential.
    let slack_hooks = Router::new().route("/commands/{team}/{id}/{token}", post(|| async { "ok" }));
    Router::new()
        .nest(
            "/hubspot",
            guarded(hubspot, "Bearer ", (unauthorized, hubspot_refusal)),
        )
        .nest(
            "/zendesk",
            guarded(zendesk, "Basic ", (unauthorized, zendesk_refusal))
                .with_state(Tickets::default()),
        )
        .nest(
            "/deepl",
            guarded(
                deepl,
                "DeepL-Auth-Key ",
                (StatusCode::FORBIDDEN, deepl_refusal),
            ),
        )
        // Slack answers 200 with `ok: false`.
        .nest(
            "/slack/api",
            guarded(
                slack,
                "Bearer ",
                (StatusCode::OK, json!({"ok": false, "error": "not_authed"})),
            ),
        )
        .nest(
            "/freshdesk",
            guarded(freshdesk, "Basic ", (unauthorized, freshdesk_refusal))
                .with_state(Tickets::default()),
        )
        .nest(
            "/stripe",
            guarded(stripe, "Bearer ", (unauthorized, stripe_refusal)),
        )
        .nest(
            "/sendgrid",
            guarded(sendgrid, "Bearer ", (unauthorized, sendgrid_refusal)),
        )
        .nest("/slack-hooks", slack_hooks)
        .nest(
            "/google-translate",
            Router::new()
                .route("/language/translate/v2", post(google_translate))
                .route("/language/translate/v2/detect", post(google_detect)),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, Json(json!({"error": "not found"}))) })
}

/// Serve the sandbox on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router())
        .with_graceful_shutdown(shutdown)
        .await
}

/// `router` whose every route answers `refused` (the vendor's answer to a
/// missing credential) unless `Authorization` holds a `scheme` credential.
fn guarded<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    scheme: &'static str,
    refused: (StatusCode, Value),
) -> Router<S> {
    router.route_layer(middleware::from_fn(move |req: Request, next: Next| {
        let (status, body) = refused.clone();
        async move {
            let authorized = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with(scheme) && v.len() > scheme.len());
            match authorized {
                true => next.run(req).await,
                false => refusal(status, body),
            }
        }
    }))
}

/// A vendor's error answer.
fn refusal(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

/// A HubSpot contact for `email`: every address is a lead on the premium plan.
fn contact(email: &str) -> Value {
    let id = (email
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
        % 900_000
        + 100_000)
        .to_string();
    let first = email.split('@').next().unwrap_or("demo");
    let mut name = first.chars();
    let firstname: String = name
        .next()
        .map(|c| c.to_uppercase().chain(name).collect())
        .unwrap_or_default();
    json!({
        "id": id,
        "properties": {
            "email": email,
            "firstname": firstname,
            "lastname": "Demo",
            "lifecyclestage": "lead",
            "hs_lead_status": "NEW",
            "hubspot_owner_id": "5101",
            "plan": "premium",
            "total_revenue": "1200",
            "hs_object_id": id,
            "createdate": "2025-01-06T09:00:00.000Z",
            "lastmodifieddate": "2025-01-06T09:00:00.000Z"
        },
        "createdAt": "2025-01-06T09:00:00.000Z",
        "updatedAt": "2025-01-06T09:00:00.000Z",
        "archived": false
    })
}

/// `POST /crm/v3/objects/contacts/search`: the first `EQ` filter's value is the e-mail.
async fn hubspot_search(Json(body): Json<Value>) -> Response {
    let email = body["filterGroups"][0]["filters"][0]["value"]
        .as_str()
        .unwrap_or_default();
    if email.is_empty() {
        return Json(json!({"total": 0, "results": []})).into_response();
    }
    Json(json!({"total": 1, "results": [contact(email)]})).into_response()
}

/// `GET /crm/v3/objects/contacts/{id}`.
async fn hubspot_contact(Path(id): Path<String>) -> Response {
    let mut c = contact(&format!("contact-{id}@example.com"));
    c["id"] = json!(id);
    Json(c).into_response()
}

/// `POST /automation/v2/workflows/{workflow}/enrollments/contacts/{email}`: 204, as HubSpot answers.
async fn hubspot_enroll() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

fn zendesk_not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": "RecordNotFound", "description": "Not found"})),
    )
        .into_response()
}

/// A ticket as Zendesk shows it, before anything was written to it.
fn new_ticket(id: u64) -> Value {
    json!({
        "id": id,
        "url": format!("https://example.zendesk.com/api/v2/tickets/{id}.json"),
        "subject": "Setup e-mail never arrived",
        "status": "open",
        "priority": "normal",
        "type": null,
        "tags": [],
        "requester_id": 900001,
        "assignee_id": null,
        "group_id": null,
        "created_at": "2025-01-06T09:00:00Z",
        "updated_at": "2025-01-06T09:00:00Z"
    })
}

/// `GET /api/v2/tickets/{id}`.
async fn zendesk_show(State(tickets): State<Tickets>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<u64>() else {
        return zendesk_not_found();
    };
    let ticket = tickets.with(|t| t.get(&id).cloned().unwrap_or_else(|| new_ticket(id)));
    Json(json!({"ticket": ticket})).into_response()
}

/// `PUT /api/v2/tickets/{id}` with `{"ticket": {fields…, "comment"?}}`:
/// the fields are set, a comment is added, the ticket and its audit answered.
async fn zendesk_update(
    State(tickets): State<Tickets>,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let Ok(id) = id.parse::<u64>() else {
        return zendesk_not_found();
    };
    let Some(fields) = body.get("ticket").and_then(Value::as_object) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "InvalidEndpoint", "description": "expected {\"ticket\": {…}}"})),
        )
            .into_response();
    };
    let (ticket, comment) = tickets.with(|t| {
        let ticket = t.entry(id).or_insert_with(|| new_ticket(id));
        let mut comment = None;
        for (k, v) in fields {
            match k.as_str() {
                "comment" => comment = Some(v.clone()),
                "id" => {}
                _ => ticket[k] = v.clone(),
            }
        }
        ticket["updated_at"] = json!("2025-01-06T09:00:01Z");
        (ticket.clone(), comment)
    });
    let mut events = Vec::new();
    if let Some(c) = comment {
        events.push(json!({
            "id": id * 10 + 1,
            "type": "Comment",
            "body": c["body"],
            "public": c["public"].as_bool().unwrap_or(true),
        }));
    }
    Json(json!({
        "ticket": ticket,
        "audit": {"id": id * 10, "ticket_id": id, "events": events}
    }))
    .into_response()
}

/// `PUT /api/v2/tickets/{id}/tags` with `{"tags": […]}`: added to the ticket's; all answered.
async fn zendesk_tags(
    State(tickets): State<Tickets>,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let Ok(id) = id.parse::<u64>() else {
        return zendesk_not_found();
    };
    let tags = tickets.with(|t| {
        let ticket = t.entry(id).or_insert_with(|| new_ticket(id));
        let mut tags: Vec<Value> = ticket["tags"].as_array().cloned().unwrap_or_default();
        for tag in body["tags"].as_array().into_iter().flatten() {
            if !tags.contains(tag) {
                tags.push(tag.clone());
            }
        }
        ticket["tags"] = Value::Array(tags.clone());
        tags
    });
    Json(json!({"tags": tags})).into_response()
}

/// `POST /api/v2/tickets` with `{"ticket": {subject, comment, requester, …}}`: 201 and the ticket.
async fn zendesk_create(State(tickets): State<Tickets>, Json(body): Json<Value>) -> Response {
    let fields = body["ticket"].as_object().cloned().unwrap_or_default();
    let ticket = tickets.with(|t| {
        let id = 50_000 + t.len() as u64 + 1;
        let mut ticket = new_ticket(id);
        for (k, v) in fields {
            if !matches!(k.as_str(), "comment" | "requester" | "id") {
                ticket[k] = v;
            }
        }
        t.insert(id, ticket.clone());
        ticket
    });
    (StatusCode::CREATED, Json(json!({"ticket": ticket}))).into_response()
}

/// `GET /api/v2/search?query=type:ticket …`: the tickets written here.
async fn zendesk_search(State(tickets): State<Tickets>) -> Response {
    let results: Vec<Value> = tickets.with(|t| {
        t.values()
            .map(|v| {
                let mut v = v.clone();
                v["result_type"] = json!("ticket");
                v
            })
            .collect()
    });
    Json(json!({"results": results, "count": results.len(), "next_page": null, "previous_page": null}))
        .into_response()
}

/// `GET /api/v2/search/count?query=…`: how many tickets were written here.
async fn zendesk_count(State(tickets): State<Tickets>) -> Response {
    Json(json!({"count": tickets.with(|t| t.len())})).into_response()
}

/// `GET /api/v2/users/search?query=…`: one end user, whatever the query.
async fn zendesk_users() -> Response {
    Json(json!({
        "users": [{
            "id": 900001,
            "name": "Bob Smith",
            "email": "bob@example.com",
            "role": "end-user",
            "locale": "en-US"
        }],
        "count": 1,
        "next_page": null,
        "previous_page": null
    }))
    .into_response()
}

/// `POST /v2/translate` with `{"text": [...], "target_lang": "EN-US"}`:
/// every text "translated" (marked), the source language detected as DE.
async fn deepl_translate(Json(body): Json<Value>) -> Response {
    let target = body["target_lang"].as_str().unwrap_or("EN-US");
    let texts: Vec<Value> = match &body["text"] {
        Value::Array(items) => items.clone(),
        other => vec![other.clone()],
    };
    let translations: Vec<Value> = texts
        .iter()
        .map(|t| {
            json!({
                "detected_source_language": "DE",
                "text": format!("[{target}, demo translation] {}", t.as_str().unwrap_or_default()),
            })
        })
        .collect();
    Json(json!({"translations": translations})).into_response()
}

/// Google's answer to a request without `?key=`.
fn google_unauthorized() -> Response {
    refusal(
        StatusCode::FORBIDDEN,
        json!({"error": {"code": 403, "message": "The request is missing a valid API key.", "status": "PERMISSION_DENIED"}}),
    )
}

fn has_key(q: &HashMap<String, String>) -> bool {
    q.get("key").is_some_and(|k| !k.is_empty())
}

/// The texts of a `q` that is one string or a list.
fn texts(q: &Value) -> Vec<String> {
    match q {
        Value::Array(items) => items
            .iter()
            .map(|t| t.as_str().unwrap_or_default().to_string())
            .collect(),
        other => vec![other.as_str().unwrap_or_default().to_string()],
    }
}

/// `POST /language/translate/v2?key=…` with `{q, target}`: every text marked, detected as `de`.
async fn google_translate(
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
    Json(body): Json<Value>,
) -> Response {
    if !has_key(&q) {
        return google_unauthorized();
    }
    let target = body["target"].as_str().unwrap_or("en");
    let translations: Vec<Value> = texts(&body["q"])
        .iter()
        .map(|t| json!({"translatedText": format!("[{target}, demo translation] {t}"), "detectedSourceLanguage": "de"}))
        .collect();
    Json(json!({"data": {"translations": translations}})).into_response()
}

/// `POST /language/translate/v2/detect?key=…` with `{q}`: `de`, confidence 0.98.
async fn google_detect(
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
    Json(body): Json<Value>,
) -> Response {
    if !has_key(&q) {
        return google_unauthorized();
    }
    let detections: Vec<Value> = texts(&body["q"])
        .iter()
        .map(|_| json!([{"language": "de", "isReliable": false, "confidence": 0.98}]))
        .collect();
    Json(json!({"data": {"detections": detections}})).into_response()
}

/// `POST /chat.postMessage` (form): `{"ok": true, channel, ts, message}`;
/// Slack answers 200 with `ok: false` and an error code when something is missing.
async fn slack_post(Form(form): Form<HashMap<String, String>>) -> Response {
    let Some(channel) = form.get("channel").filter(|c| !c.is_empty()) else {
        return Json(json!({"ok": false, "error": "channel_not_found"})).into_response();
    };
    let text = form.get("text").cloned().unwrap_or_default();
    Json(json!({
        "ok": true,
        "channel": channel,
        "ts": "1736154000.000100",
        "message": {"type": "message", "text": text, "user": "U0DEMOBOT", "ts": "1736154000.000100"}
    }))
    .into_response()
}

/// A Freshdesk ticket as the API shows it (status 2 open, priority 1 low).
fn freshdesk_ticket(id: u64) -> Value {
    json!({
        "id": id,
        "subject": "Demo ticket",
        "description_text": "",
        "status": 2,
        "priority": 1,
        "source": 2,
        "tags": [],
        "group_id": null,
        "responder_id": null,
        "requester_id": 80000 + id,
        "requester": {"id": 80000 + id, "name": "Bob Smith", "email": "bob@example.com"},
        "created_at": "2025-01-06T09:00:00Z",
        "updated_at": "2025-01-06T09:00:00Z"
    })
}

/// `POST /api/v2/tickets`: 201 with the new ticket.
async fn freshdesk_create(State(tickets): State<Tickets>, Json(body): Json<Value>) -> Response {
    let ticket = tickets.with(|t| {
        let id = 1000 + t.len() as u64 + 1;
        let mut ticket = freshdesk_ticket(id);
        for k in ["subject", "priority", "status", "source", "tags"] {
            if let Some(v) = body.get(k) {
                ticket[k] = v.clone();
            }
        }
        ticket["description_text"] = body["description"].clone();
        ticket["requester"]["email"] = body["email"].clone();
        ticket["requester"]["name"] = body.get("name").cloned().unwrap_or(body["email"].clone());
        t.insert(id, ticket.clone());
        ticket
    });
    (StatusCode::CREATED, Json(ticket)).into_response()
}

/// `GET /api/v2/tickets/{id}`.
async fn freshdesk_show(State(tickets): State<Tickets>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<u64>() else {
        return (StatusCode::NOT_FOUND, Json(json!({"code": "not_found"}))).into_response();
    };
    Json(tickets.with(|t| t.get(&id).cloned().unwrap_or_else(|| freshdesk_ticket(id))))
        .into_response()
}

/// `PUT /api/v2/tickets/{id}`: the given fields set, the ticket answered.
async fn freshdesk_update(
    State(tickets): State<Tickets>,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let Ok(id) = id.parse::<u64>() else {
        return (StatusCode::NOT_FOUND, Json(json!({"code": "not_found"}))).into_response();
    };
    let ticket = tickets.with(|t| {
        let ticket = t.entry(id).or_insert_with(|| freshdesk_ticket(id));
        for (k, v) in body.as_object().into_iter().flatten() {
            ticket[k] = v.clone();
        }
        ticket.clone()
    });
    Json(ticket).into_response()
}

/// A conversation (reply or note) on ticket `id`: 201.
fn freshdesk_conversation(id: &str, body: &Value, private: bool) -> Response {
    let Ok(id) = id.parse::<u64>() else {
        return (StatusCode::NOT_FOUND, Json(json!({"code": "not_found"}))).into_response();
    };
    (
        StatusCode::CREATED,
        Json(json!({
            "id": id * 100 + 1,
            "ticket_id": id,
            "body": body["body"],
            "private": private,
            "incoming": false,
            "created_at": "2025-01-06T09:00:01Z"
        })),
    )
        .into_response()
}

/// `POST /api/v2/tickets/{id}/reply`.
async fn freshdesk_reply(Path(id): Path<String>, Json(body): Json<Value>) -> Response {
    freshdesk_conversation(&id, &body, false)
}

/// `POST /api/v2/tickets/{id}/notes`.
async fn freshdesk_note(Path(id): Path<String>, Json(body): Json<Value>) -> Response {
    freshdesk_conversation(&id, &body, true)
}

/// `GET /api/v2/search/tickets?query="…"`: every ticket created here.
async fn freshdesk_search(State(tickets): State<Tickets>) -> Response {
    let results: Vec<Value> = tickets.with(|t| t.values().cloned().collect());
    Json(json!({"total": results.len(), "results": results})).into_response()
}

/// `GET /v1/customers/search?query=email:'…'`: one customer for any address.
async fn stripe_customers(
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
) -> Response {
    let query = q.get("query").cloned().unwrap_or_default();
    let email = query
        .strip_prefix("email:'")
        .and_then(|e| e.strip_suffix('\''))
        .unwrap_or_default()
        .replace("\\'", "'");
    let data = if email.is_empty() {
        vec![]
    } else {
        vec![json!({
            "id": "cus_Demo0000000001",
            "object": "customer",
            "email": email,
            "name": "Bob Smith",
            "created": 1_736_154_000,
            "delinquent": false,
            "metadata": {}
        })]
    };
    Json(json!({
        "object": "search_result",
        "url": "/v1/customers/search",
        "has_more": false,
        "data": data
    }))
    .into_response()
}

/// `GET /v1/subscriptions?customer=…`: one active monthly subscription.
async fn stripe_subscriptions(
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
) -> Response {
    let customer = q.get("customer").cloned().unwrap_or_default();
    Json(json!({
        "object": "list",
        "url": "/v1/subscriptions",
        "has_more": false,
        "data": [{
            "id": "sub_Demo0000000001",
            "object": "subscription",
            "customer": customer,
            "status": "active",
            "items": {
                "object": "list",
                "has_more": false,
                "data": [{
                    "id": "si_Demo0000000001",
                    "object": "subscription_item",
                    "quantity": 5,
                    "price": {
                        "id": "price_Demo0000000001",
                        "object": "price",
                        "nickname": "Team (monthly)",
                        "unit_amount": 4900,
                        "currency": "usd",
                        "recurring": {"interval": "month", "interval_count": 1}
                    }
                }]
            }
        }]
    }))
    .into_response()
}

/// `POST /v3/mail/send`: 202 with no body, as SendGrid answers.
async fn sendgrid_send() -> StatusCode {
    StatusCode::ACCEPTED
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_connector_has_a_base_url_under_the_origin() {
        for (name, _) in CONNECTORS {
            let url = base_url("http://127.0.0.1:9/", name).expect("a base url");
            assert!(url.starts_with("http://127.0.0.1:9/"), "{url}");
        }
        assert_eq!(base_url("http://x", "typeform"), None);
    }

    /// `(status, JSON body)` of one request to the sandbox.
    async fn ask(
        app: &Router,
        method: &str,
        uri: &str,
        auth: Option<&str>,
        body: Value,
    ) -> (u16, Value) {
        use tower::ServiceExt;
        let mut req = axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        let req = req
            .body(axum::body::Body::from(body.to_string()))
            .expect("request");
        let resp = app.clone().oneshot(req).await.expect("answer");
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .expect("body");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    #[tokio::test]
    async fn vendors_answer_in_their_shapes_and_refuse_missing_credentials() {
        let app = router();
        let basic = Some("Basic ZGVtbzp4");
        let bearer = Some("Bearer demo");
        let (status, t) = ask(
            &app,
            "POST",
            "/freshdesk/api/v2/tickets",
            basic,
            json!({"email": "a@b.c", "subject": "Hi", "description": "x", "priority": 1}),
        )
        .await;
        assert_eq!((status, &t["requester"]["email"]), (201, &json!("a@b.c")));
        let id = t["id"].as_u64().expect("an id");
        let (status, t) = ask(
            &app,
            "PUT",
            &format!("/freshdesk/api/v2/tickets/{id}"),
            basic,
            json!({"group_id": 7, "responder_id": 8}),
        )
        .await;
        assert_eq!(
            (status, &t["group_id"], &t["subject"]),
            (200, &json!(7), &json!("Hi"))
        );
        let (status, n) = ask(
            &app,
            "POST",
            &format!("/freshdesk/api/v2/tickets/{id}/notes"),
            basic,
            json!({"body": "n"}),
        )
        .await;
        assert_eq!((status, &n["ticket_id"]), (201, &json!(id)));
        let (status, _) = ask(&app, "POST", "/sendgrid/v3/mail/send", bearer, json!({})).await;
        assert_eq!(status, 202);
        let (status, c) = ask(
            &app,
            "GET",
            "/stripe/v1/customers/search?query=email%3A%27a%40b.c%27&limit=1",
            bearer,
            Value::Null,
        )
        .await;
        assert_eq!((status, &c["data"][0]["email"]), (200, &json!("a@b.c")));
        let (status, z) = ask(
            &app,
            "PUT",
            "/zendesk/api/v2/tickets/5",
            basic,
            json!({"ticket": {"priority": "high"}}),
        )
        .await;
        assert_eq!((status, &z["ticket"]["priority"]), (200, &json!("high")));
        let (status, created) = ask(
            &app,
            "POST",
            "/zendesk/api/v2/tickets",
            basic,
            json!({"ticket": {"subject": "New", "comment": {"body": "b"}}}),
        )
        .await;
        assert_eq!(
            (status, &created["ticket"]["subject"]),
            (201, &json!("New"))
        );
        let (_, count) = ask(
            &app,
            "GET",
            "/zendesk/api/v2/search/count?query=type%3Aticket",
            basic,
            Value::Null,
        )
        .await;
        assert_eq!(count["count"], 2);
        let (status, _) = ask(
            &app,
            "POST",
            "/slack-hooks/commands/T1/B2/x",
            None,
            json!({"text": "t"}),
        )
        .await;
        assert_eq!(status, 200);
        let (status, g) = ask(
            &app,
            "POST",
            "/google-translate/language/translate/v2/detect?key=k",
            None,
            json!({"q": "Hallo"}),
        )
        .await;
        assert_eq!(
            (status, &g["data"]["detections"][0][0]["language"]),
            (200, &json!("de"))
        );
        let (status, _) = ask(
            &app,
            "POST",
            "/google-translate/language/translate/v2",
            None,
            json!({"q": ["a"], "target": "en"}),
        )
        .await;
        assert_eq!(status, 403, "no key");
        let (_, z) = ask(&app, "GET", "/zendesk/api/v2/tickets/5", basic, Value::Null).await;
        assert_eq!(z["ticket"]["priority"], "high", "a read sees the write");
        for (method, uri) in [
            ("POST", "/hubspot/crm/v3/objects/contacts/search"),
            ("GET", "/zendesk/api/v2/tickets/5"),
            ("POST", "/freshdesk/api/v2/tickets"),
            ("GET", "/stripe/v1/subscriptions?customer=c"),
            ("POST", "/sendgrid/v3/mail/send"),
        ] {
            let (status, _) = ask(&app, method, uri, None, json!({})).await;
            assert_eq!(status, 401, "{method} {uri}");
        }
    }

    #[test]
    fn a_contact_is_a_lead_with_a_stable_id() {
        let a = contact("bob@example.com");
        assert_eq!(a, contact("bob@example.com"));
        assert_eq!(a["properties"]["lifecyclestage"], "lead");
        assert_eq!(a["properties"]["firstname"], "Bob");
        assert_ne!(a["id"], contact("ann@example.com")["id"]);
    }
}
