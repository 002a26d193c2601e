//! Hardening (issue 13): hostile senders, hostile event data and careless
//! recipes. Each test pins one class of hole, through the real binary.

use crate::utils::*;
use axum::http::Method;
use serde_json::{json, Value};

/// A connector `NAME` whose `send` action POSTs to `path` with input `id`,
/// and a recipe calling it on every new ticket with the requester's e-mail.
fn path_config(path: &str) -> Config {
    let cfg = Config::connectors_only();
    cfg.connector(
        "crm",
        &format!(
            r#"name: crm
base_url: https://crm.example.com/api
retry: {{ attempts: 1 }}
actions:
  send:
    inputs:
      id: {{}}
    method: POST
    path: "{path}"
    body: {{ ok: true }}
"#
        ),
    );
    cfg.recipe(
        "crm-note",
        r#"name: crm-note
on: { connector: zendesk, event: ticket.created }
steps:
  - id: send
    call: crm.send
    with:
      id: "{{ event.ticket.requester.email }}"
"#,
    );
    cfg
}

/// Post a ticket from `email` and wait for its one run.
async fn run_for(hub: &Hub, ticket: u64, email: &str) -> Value {
    let (status, accepted) = hub
        .post_zendesk(&ticket_event(ticket, "Hello", email))
        .await;
    assert_eq!(status, 202, "{accepted}");
    let runs = hub
        .finished_runs(accepted["event_id"].as_str().unwrap())
        .await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    runs[0].clone()
}

#[tokio::test]
async fn event_data_cannot_change_where_a_request_goes() {
    let cfg = path_config("/contacts/{{ input.id }}/notes");
    let crm = MockApi::start(vec![route(Method::POST, "/", 200, json!({}))]).await;
    let hub = Hub::start(cfg.options().base_url("crm", &format!("{}/api", crm.url))).await;

    // Slashes, dots, `?`, `#` and `@` in event data stay inside one segment.
    let run = run_for(&hub, 1, "a/../../crm/v3/objects/contacts/999@x?y#z").await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let got = crm.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        got[0].path,
        "/api/contacts/a%2F..%2F..%2Fcrm%2Fv3%2Fobjects%2Fcontacts%2F999%40x%3Fy%23z/notes"
    );
    assert_eq!(got[0].query, None);

    // A value that is a dot segment is refused: nothing is sent.
    let run = run_for(&hub, 2, "..").await;
    assert_eq!(run["status"], "failed", "{run}");
    let err = run["steps"][0]["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("`..` is not allowed as a path segment"),
        "{run}"
    );
    assert_eq!(crm.received().len(), 1);
}

#[test]
fn a_path_that_does_not_start_with_a_slash_is_a_check_error() {
    let cfg = path_config("{{ input.id }}/notes");
    let file = cfg.connectors.join("crm.yaml");
    std::fs::remove_file(cfg.recipes.join("crm-note.yaml")).unwrap();
    let out = cfg.check();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "{}:9:11: path: a path must start with `/`, got `{{{{ input.id }}}}/notes` \
             (event data must never pick the host)\nerror: 1 problem(s) found\n",
            file.display()
        )
    );
}

/// `--allow-internal mockok` lets `mockok` reach localhost, not `victim` on
/// the same host; a system proxy does not get around it either.
#[tokio::test]
async fn allowing_internal_addresses_is_per_connector_and_proxies_do_not_bypass_it() {
    let cfg = Config::connectors_only();
    for name in ["mockok", "victim"] {
        cfg.connector(
            name,
            &format!(
                "name: {name}\nbase_url: https://{name}.example.com\nretry: {{ attempts: 1 }}\n\
                 actions:\n  send:\n    method: POST\n    path: /{name}\n    body: {{ ok: true }}\n"
            ),
        );
    }
    cfg.recipe(
        "both",
        r#"name: both
on: { connector: zendesk, event: ticket.created }
steps:
  - id: ok
    call: mockok.send
  - id: victim
    call: victim.send
"#,
    );
    let api = MockApi::start(vec![route(Method::POST, "/", 200, json!({}))]).await;
    let proxy = MockApi::start(vec![route(Method::POST, "/", 200, json!({}))]).await;
    // By host name, so the resolver's guard is what refuses.
    let local = api.url.replace("127.0.0.1", "localhost");
    let mut opts = cfg
        .options()
        .base_url("mockok", &local)
        .base_url("victim", &local);
    opts.allow_internal = false;
    opts.args = vec!["--allow-internal".into(), "mockok".into()];
    for var in [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
    ] {
        opts.env.push((var.into(), proxy.url.clone()));
    }
    opts.env.push(("NO_PROXY".into(), String::new()));
    opts.env.push(("no_proxy".into(), String::new()));
    let hub = Hub::start(opts).await;

    let run = run_for(&hub, 3, "bob@example.com").await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["steps"][0]["status"], "succeeded", "{run}");
    assert_eq!(
        run["steps"][1]["error"],
        "refused: localhost is an internal address; allow it with --allow-internal victim",
        "{run}"
    );
    let paths: Vec<String> = api.received().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/mockok"]);
    assert!(proxy.received().is_empty(), "{:?}", proxy.received());
}

/// `{{ [1, 2] * 50000000 }}` passes `check`; rendering it fails the step
/// cleanly instead of aborting the hub on an allocation failure.
#[tokio::test]
async fn a_template_that_would_exhaust_memory_fails_its_step() {
    let cfg = Config::connectors_only();
    cfg.connector(
        "echo",
        "name: echo\nbase_url: https://echo.example.com\nretry: { attempts: 1 }\n\
         actions:\n  send:\n    inputs:\n      text: {}\n    method: POST\n    path: /send\n\
         \x20   body:\n      text: \"{{ input.text }}\"\n",
    );
    cfg.recipe(
        "huge",
        r#"name: huge
on: { connector: zendesk, event: ticket.created }
steps:
  - id: send
    call: echo.send
    with:
      text: "{{ [1, 2] * 50000000 }}"
  - id: never
    call: echo.send
    with:
      text: "x{{ event.ticket.subject * 100000000 }}"
"#,
    );
    let out = cfg.check();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let echo = MockApi::start(vec![route(Method::POST, "/send", 200, json!({}))]).await;
    let hub = Hub::start(cfg.options().base_url("echo", &echo.url)).await;
    let run = run_for(&hub, 4, "bob@example.com").await;
    assert_eq!(run["status"], "failed", "{run}");
    let err = run["steps"][0]["error"].as_str().unwrap_or_default();
    assert!(err.contains("too large"), "{run}");
    assert!(echo.received().is_empty());
    // Still serving.
    let health = hub.http.get(format!("{}/healthz", hub.url)).send().await;
    assert_eq!(health.unwrap().status(), 200);
}
