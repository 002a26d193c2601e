//! The operations console's machine side: `/metrics` scraped and parsed as
//! Prometheus text, behind the admin token.

use crate::utils::*;
use axum::http::Method;
use prometheus_parse::{Sample, Scrape, Value as Metric};
use serde_json::json;
use std::process::Command;

/// Scrape `/metrics` with the token and parse it with a Prometheus parser.
async fn scrape(hub: &Hub) -> (String, Scrape) {
    let resp = hub
        .http
        .get(format!("{}/metrics", hub.url))
        .bearer_auth(&hub.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = resp.text().await.unwrap();
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parses");
    (text, scrape)
}

/// The value of the one sample of `name` whose labels include `labels`.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<&Sample> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect();
    match found.as_slice() {
        [] => None,
        [s] => Some(match &s.value {
            Metric::Counter(v) | Metric::Gauge(v) | Metric::Untyped(v) => *v,
            Metric::Histogram(buckets) => buckets.iter().map(|b| b.count).fold(0.0, f64::max),
            Metric::Summary(_) => panic!("no summaries"),
        }),
        more => panic!("{} samples of {name} {labels:?}", more.len()),
    }
}

#[tokio::test]
async fn metrics_need_the_token_and_parse_as_prometheus_text() {
    let (hub, mock) = quiet_hub(HubOptions::default()).await;
    // No token, a wrong one: 401 and no metrics.
    for req in [
        hub.http.get(format!("{}/metrics", hub.url)),
        hub.http
            .get(format!("{}/metrics", hub.url))
            .bearer_auth("wrong-token-wrong-token"),
    ] {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401);
        assert!(!resp.text().await.unwrap().contains("switchboard_"));
    }

    // One signed ticket (its runs call the 404 mock and fail), one forged.
    let (status, accepted) = hub
        .post_zendesk(&ticket_event(
            7,
            "Where is my confirmation?",
            "bob@example.com",
        ))
        .await;
    assert_eq!(status, 202, "{accepted}");
    let runs = hub
        .finished_runs(accepted["event_id"].as_str().unwrap())
        .await;
    assert!(!runs.is_empty());
    let raw = br#"{"type":"ticket.created"}"#;
    let (status, _) = hub
        .post("zendesk", &zendesk_headers(raw, "not-the-secret"), raw)
        .await;
    assert_eq!(status, 401);
    let (status, _) = hub.post("no-such-connector", &[], b"{}").await;
    assert_eq!(status, 404);

    let (text, scrape) = scrape(&hub).await;
    let zendesk = [("connector", "zendesk")];
    assert_eq!(
        value(
            &scrape,
            "switchboard_webhooks_received_total",
            &[("connector", "zendesk"), ("status", "202")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &scrape,
            "switchboard_webhooks_received_total",
            &[("connector", "zendesk"), ("status", "401")]
        ),
        Some(1.0)
    );
    // A sender's path segment never becomes a label.
    assert!(!text.contains("no-such-connector"));
    assert_eq!(
        value(
            &scrape,
            "switchboard_webhooks_received_total",
            &[("connector", "_unknown"), ("status", "404")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &scrape,
            "switchboard_signature_failures_total",
            &[("connector", "zendesk"), ("check", "signature_mismatch")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&scrape, "switchboard_events_stored_total", &zendesk),
        Some(1.0)
    );
    // Every run finished and was counted under its recipe and status.
    for run in &runs {
        let recipe = run["recipe"].as_str().unwrap();
        let status = run["status"].as_str().unwrap();
        assert!(
            value(
                &scrape,
                "switchboard_runs_finished_total",
                &[("recipe", recipe), ("status", status)]
            )
            .is_some_and(|n| n >= 1.0),
            "{recipe} {status}: {text}"
        );
    }
    // The HubSpot lookups were answered 404 by the mock: calls of class 4xx.
    let lookups = mock.calls("/crm/v3/objects/contacts/search").len() as f64;
    assert!(lookups >= 1.0);
    assert_eq!(
        value(
            &scrape,
            "switchboard_step_duration_seconds_count",
            &[
                ("connector", "hubspot"),
                ("action", "search_contact_by_email"),
                ("status_class", "4xx")
            ]
        ),
        Some(lookups),
        "{text}"
    );
    assert!(value(
        &scrape,
        "switchboard_limit_wait_seconds_count",
        &[("connector", "hubspot")]
    )
    .is_some());
    assert!(
        value(&scrape, "switchboard_store_commit_seconds_count", &[]).is_some_and(|n| n >= 1.0)
    );
    assert!(
        value(&scrape, "switchboard_store_commit_group_size_count", &[]).is_some_and(|n| n >= 1.0)
    );
    assert_eq!(value(&scrape, "switchboard_queue_depth", &[]), Some(0.0));
    assert_eq!(value(&scrape, "switchboard_waiting_runs", &[]), Some(0.0));
    for connector in ["zendesk", "hubspot", "deepl", "slack"] {
        assert_eq!(
            value(
                &scrape,
                "switchboard_circuit_breaker_state",
                &[("connector", connector)]
            ),
            Some(0.0),
            "{connector}: {text}"
        );
    }

    // Conventions: one prefix, counters end in `_total`, durations in `_seconds`.
    for s in &scrape.samples {
        assert!(s.metric.starts_with("switchboard_"), "{}", s.metric);
    }
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let (name, kind) = (words[2], words[3]);
        if kind == "counter" {
            assert!(
                text.lines()
                    .any(|l| l.starts_with(&format!("{name}_total"))),
                "counter {name} has no _total samples"
            );
        }
        if name.contains("duration") || name.contains("wait") && kind == "histogram" {
            assert!(name.ends_with("_seconds"), "{name}");
        }
    }
    assert!(text.ends_with("# EOF\n"));
}

#[tokio::test]
async fn metrics_can_be_public_when_asked() {
    let (hub, _mock) = quiet_hub(HubOptions {
        args: vec!["--metrics-public".into()],
        ..HubOptions::default()
    })
    .await;
    let resp = hub
        .http
        .get(format!("{}/metrics", hub.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp
        .text()
        .await
        .unwrap()
        .contains("switchboard_queue_depth"));
    // The rest of the admin API still needs the token.
    let resp = hub
        .http
        .get(format!("{}/api/events", hub.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn json_logs_carry_ids_as_fields_and_text_logs_carry_no_colour_codes() {
    let tmp = tempfile::tempdir().unwrap();
    for format in ["json", "text"] {
        let log = tmp.path().join(format!("{format}.log"));
        let (mut hub, _mock) = quiet_hub(HubOptions {
            args: vec!["--log-format".into(), format.into()],
            env: vec![("SWITCHBOARD_LOG".into(), "info".into())],
            log_file: Some(log.clone()),
            ..HubOptions::default()
        })
        .await;
        let (status, accepted) = hub
            .post_zendesk(&ticket_event(8, "Setup mail never came", "ann@example.com"))
            .await;
        assert_eq!(status, 202);
        let runs = hub
            .finished_runs(accepted["event_id"].as_str().unwrap())
            .await;
        hub.kill();
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            !text.contains('\u{1b}'),
            "colour codes in a log file:\n{text}"
        );
        for secret in [ZENDESK_WEBHOOK_SECRET, "ann@example.com"] {
            assert!(!text.contains(secret), "{secret} logged:\n{text}");
        }
        if format == "json" {
            let lines: Vec<serde_json::Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect();
            let accepted_line = lines
                .iter()
                .find(|l| l["message"] == "webhook accepted")
                .expect("a webhook accepted line");
            assert_eq!(accepted_line["event"], accepted["event_id"]);
            assert_eq!(accepted_line["connector"], "zendesk");
            assert_eq!(accepted_line["event_type"], "ticket.created");
            // Fields are values, not Debug text: numbers, and statuses by their API names.
            for l in lines.iter().filter(|l| l["message"] == "step finished") {
                assert!(
                    ["succeeded", "failed", "skipped"]
                        .contains(&l["status"].as_str().unwrap_or("")),
                    "{l}"
                );
                if l.get("http_status").is_some() {
                    assert!(l["http_status"].is_u64(), "{l}");
                }
            }
            for run in &runs {
                assert!(
                    lines
                        .iter()
                        .any(|l| l["message"] == "step finished" && l["run"] == run["id"]),
                    "no step line for run {}:\n{text}",
                    run["id"]
                );
            }
        }
    }
}

/// The committed OpenAPI document (`docs/openapi.json`).
fn committed_openapi() -> String {
    std::fs::read_to_string(repo().join("docs/openapi.json")).unwrap_or_default()
}

/// `docs/openapi.json` is what the code generates. After changing a route
/// or an API type: `SWITCHBOARD_UPDATE_OPENAPI=1 cargo test --test it console::openapi`.
#[test]
fn openapi_document_in_the_repo_is_the_generated_one() {
    let generated = switchboard::admin::openapi_json();
    if std::env::var_os("SWITCHBOARD_UPDATE_OPENAPI").is_some() {
        std::fs::write(repo().join("docs/openapi.json"), &generated).unwrap();
    }
    assert!(
        committed_openapi() == generated,
        "docs/openapi.json is stale: run SWITCHBOARD_UPDATE_OPENAPI=1 cargo test --test it console::openapi"
    );
    let doc: serde_json::Value = serde_json::from_str(&generated).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    // OpenAPI requires a description on every response.
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            for (code, response) in op["responses"].as_object().unwrap() {
                assert!(
                    response["description"]
                        .as_str()
                        .is_some_and(|d| !d.is_empty()),
                    "{method} {path} {code}: no description"
                );
            }
        }
    }
}

/// Every `/api` route of `src/admin/` is registered with `routes!` (and so
/// has its `#[utoipa::path]` operation in the document): no plain
/// `.route("/api…")` there.
#[test]
fn openapi_admin_routes_are_registered_with_their_operations() {
    let mut files = Vec::new();
    let mut dirs = vec![repo().join("src/admin")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let plain = regex::Regex::new(r#"\.route\(\s*"/api"#).unwrap();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            !plain.is_match(&text),
            "{}: a plain `.route(\"/api…\")`; register /api routes with `routes!(handler)` \
             and a `#[utoipa::path]` on the handler (admin::api), so the OpenAPI document has them",
            file.display()
        );
    }
}

/// The hub serves the committed document, and every operation in it is a
/// route the hub has, behind the token (401 without it, never 404 or 405).
#[tokio::test]
async fn openapi_document_is_served_and_matches_the_routes() {
    let (hub, _mock) = quiet_hub(HubOptions::default()).await;
    let resp = hub
        .http
        .get(format!("{}/api/openapi.json", hub.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let served = resp.text().await.unwrap();
    assert!(
        served == committed_openapi(),
        "the hub serves another document than docs/openapi.json"
    );
    let doc: serde_json::Value = serde_json::from_str(&served).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 9, "{paths:?}");
    let param = regex::Regex::new(r"\{[^}]+\}").unwrap();
    for (path, ops) in paths {
        let concrete = param.replace_all(path, "x");
        for method in ops.as_object().unwrap().keys() {
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let resp = hub
                .http
                .request(method.clone(), format!("{}{concrete}", hub.url))
                .send()
                .await
                .unwrap();
            assert_eq!(
                resp.status(),
                401,
                "{method} {path}: the hub has no such route"
            );
            assert_eq!(
                ops[method.as_str().to_lowercase()]["security"],
                serde_json::Value::Null,
                "operations inherit the document's security"
            );
        }
    }
    assert_eq!(doc["security"][0]["admin_token"], serde_json::json!([]));
}

/// The offline quick start: `serve --demo` and `demo send` through the real
/// binary. The runs succeed end to end against the built-in sandbox (HubSpot
/// lookup, enrollment, internal note), nothing is allowed by
/// `--allow-internal`, and the breakers stay closed.
#[tokio::test]
async fn demo_quick_start_runs_succeed_against_the_sandbox() {
    let hub = Hub::start(HubOptions {
        args: vec!["--demo".into()],
        allow_internal: false,
        ..HubOptions::default()
    })
    .await;
    let out = hub.demo_send();
    let printed = stdout(&out);
    assert!(out.status.success(), "{printed}{}", stderr(&out));
    assert!(printed.starts_with("sent ticket "), "{printed}");
    let event_id = printed
        .split("event ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap();
    let runs = hub.finished_runs(event_id).await;
    let mut recipes: Vec<&str> = runs.iter().map(|r| r["recipe"].as_str().unwrap()).collect();
    recipes.sort();
    assert_eq!(
        recipes,
        ["crm-enrichment", "resend-confirmation"],
        "{printed}"
    );
    for run in &runs {
        assert_eq!(run["status"], "succeeded", "{run}");
        assert!(printed.contains(&format!(
            "{:<26} succeeded  run {}",
            run["recipe"].as_str().unwrap(),
            run["id"].as_str().unwrap()
        )));
    }
    let resend = runs
        .iter()
        .find(|r| r["recipe"] == "resend-confirmation")
        .unwrap();
    let calls: Vec<(&str, &str, u64)> = resend["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["call"].as_str().unwrap(),
                s["status"].as_str().unwrap(),
                s["http_status"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        calls,
        [
            ("hubspot.search_contact_by_email", "succeeded", 200),
            ("hubspot.enroll_in_workflow", "succeeded", 204),
            ("zendesk.add_internal_note", "succeeded", 200),
        ],
        "{resend}"
    );
    assert!(resend["steps"][0]["request"]["url"]
        .as_str()
        .unwrap()
        .starts_with("http://127.0.0.1:"));

    let (_, scrape) = scrape(&hub).await;
    for connector in ["zendesk", "hubspot", "deepl", "slack"] {
        assert_eq!(
            value(
                &scrape,
                "switchboard_circuit_breaker_state",
                &[("connector", connector)]
            ),
            Some(0.0),
            "{connector}"
        );
    }

    // Bad input: retrying a run that did not fail says why, over the API and the CLI.
    let id = resend["id"].as_str().unwrap();
    let resp = hub
        .http
        .post(format!("{}/api/runs/{id}/retry", hub.url))
        .bearer_auth(&hub.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        body["message"],
        format!("run {id} is succeeded; only failed or dead runs can be retried")
    );
    let out = hub.cli(&["runs", "retry", id]);
    assert!(!out.status.success());
    assert_eq!(
        stderr(&out).trim(),
        format!("error: run {id} is succeeded; only failed or dead runs can be retried")
    );
}

/// The support pack on the demo: every run of the sample ticket succeeds
/// (Stripe, Zendesk, Slack through the sandbox) or waits (the SLA timer).
#[tokio::test]
async fn demo_runs_the_support_pack_too() {
    let hub = Hub::start(HubOptions {
        recipes: repo().join("recipes/support"),
        args: vec!["--demo".into()],
        allow_internal: false,
        ..HubOptions::default()
    })
    .await;
    let out = hub.demo_send();
    let printed = stdout(&out);
    assert!(out.status.success(), "{printed}{}", stderr(&out));
    for recipe in [
        "billing-enrichment",
        "dispatcher",
        "repeat-contact-escalation",
    ] {
        assert!(
            printed.contains(&format!("{recipe:<26} succeeded")),
            "{recipe}: {printed}"
        );
    }
    assert!(
        printed.contains(&format!("{:<26} waiting", "first-reply-sla")),
        "{printed}"
    );
}

/// Every `serve` flag has its `SWITCHBOARD_*` variable, as the README says
/// (read from `serve --help`, so a new flag without one fails here).
#[test]
fn every_serve_flag_has_an_environment_variable() {
    let out = Command::new(bin())
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = stdout(&out);
    let flag = regex::Regex::new(r"^\s+(?:-\w, )?(--[a-z-]+)").unwrap();
    let mut blocks: Vec<(String, String)> = Vec::new();
    for line in help.lines() {
        if let Some(c) = flag.captures(line) {
            blocks.push((c[1].to_string(), String::new()));
        } else if let Some((_, text)) = blocks.last_mut() {
            // Help text is wrapped: join its lines with one space.
            text.push(' ');
            text.push_str(line.trim());
        }
    }
    let flags: Vec<&str> = blocks.iter().map(|(f, _)| f.as_str()).collect();
    for expected in [
        "--listen",
        "--shutdown-grace",
        "--demo",
        "--metrics-public",
        "--log-format",
    ] {
        assert!(flags.contains(&expected), "{expected} not in {flags:?}");
    }
    for (flag, text) in &blocks {
        if flag == "--help" || flag == "--version" {
            continue;
        }
        assert!(
            text.contains("[env: SWITCHBOARD_"),
            "{flag} has no SWITCHBOARD_* variable:\n{help}"
        );
    }
}

/// Failures show in the metrics: retries, a dead letter, the breaker open
/// (state 1) and the call it then held back.
#[tokio::test]
async fn metrics_count_retries_dead_letters_and_the_open_breaker() {
    let mock = MockApi::start(vec![route(
        Method::POST,
        "/flaky",
        503,
        json!({"error": "down"}),
    )])
    .await;
    let c = Config::connectors_only();
    c.connector(
        "flaky",
        r#"name: flaky
base_url: http://127.0.0.1:1
retry: { attempts: 2, backoff: 10ms, max_backoff: 20ms }
circuit_breaker: { failures: 2, cooldown: 1h }
actions:
  poke:
    method: POST
    path: /flaky
"#,
    );
    c.recipe(
        "poke",
        "name: poke\non: { connector: zendesk, event: ticket.created }\nsteps:\n  - call: flaky.poke\n",
    );
    let hub = Hub::start(c.options().base_url("flaky", &mock.url)).await;
    let (_, accepted) = hub
        .post_zendesk(&ticket_event(1, "a", "a@example.com"))
        .await;
    let runs = hub
        .finished_runs(accepted["event_id"].as_str().unwrap())
        .await;
    assert_eq!(runs[0]["status"], "dead", "{}", runs[0]);
    // The breaker is open now: the next run's call is held back, not sent.
    let (_, second) = hub
        .post_zendesk(&ticket_event(2, "b", "b@example.com"))
        .await;
    let run_id = second["runs"][0].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, run) = hub.api(&format!("/api/runs/{run_id}")).await;
        if run["status"] == "retrying" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{run}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        mock.calls("/flaky").len(),
        2,
        "no call while the breaker is open"
    );

    let (text, scrape) = scrape(&hub).await;
    let flaky = [("connector", "flaky"), ("action", "poke")];
    assert_eq!(
        value(&scrape, "switchboard_step_retries_total", &flaky),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &scrape,
            "switchboard_step_duration_seconds_count",
            &[
                ("connector", "flaky"),
                ("action", "poke"),
                ("status_class", "5xx")
            ]
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &scrape,
            "switchboard_dead_letters_total",
            &[("recipe", "poke")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &scrape,
            "switchboard_runs_finished_total",
            &[("recipe", "poke"), ("status", "dead")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &scrape,
            "switchboard_circuit_breaker_state",
            &[("connector", "flaky")]
        ),
        Some(1.0)
    );
    assert!(
        value(
            &scrape,
            "switchboard_circuit_breaker_refusals_total",
            &[("connector", "flaky")]
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert_eq!(value(&scrape, "switchboard_queue_depth", &[]), Some(1.0));
}
