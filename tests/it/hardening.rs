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

/// Slowloris: with an open-file limit of 256, 300 connections that send half
/// a request head or half a body (and hold) are closed after the configured
/// timeouts, and the hub keeps answering `/healthz` and signed webhooks.
#[tokio::test]
async fn slow_connections_cannot_starve_the_hub() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let opts = HubOptions {
        nofile: Some(256),
        args: ["--header-timeout", "1s", "--body-timeout", "1s"]
            .map(String::from)
            .to_vec(),
        ..HubOptions::default()
    };
    let hub = Hub::start(opts).await;
    let addr = hub.url.trim_start_matches("http://").to_string();
    let mut slow = Vec::new();
    for i in 0..300 {
        let Ok(mut s) = tokio::net::TcpStream::connect(&addr).await else {
            continue;
        };
        let partial: &[u8] = if i % 2 == 0 {
            b"POST /hooks/zendesk HTTP/1.1\r\nHost: x\r\nX-Slow: "
        } else {
            b"POST /hooks/zendesk HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"a\": \""
        };
        let _ = s.write_all(partial).await;
        slow.push(s);
    }
    assert!(slow.len() >= 250, "only {} connected", slow.len());

    // The hub answers again once the slow connections are cut.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let quick = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .unwrap();
    loop {
        let r = quick.get(format!("{}/healthz", hub.url)).send().await;
        if r.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/healthz never answered"
        );
    }
    let (status, body) = hub
        .post_zendesk(&json!({"type": "ticket.deleted", "ticket": {"id": 1}}))
        .await;
    assert_eq!(status, 202, "{body}");

    // Every slow connection was closed by the hub (EOF, a 408 or a reset).
    for mut s in slow {
        let mut buf = Vec::new();
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let read = tokio::time::timeout(left, s.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "a slow connection is still open");
    }
}

/// A sender that writes its whole (too large) body before reading, as most
/// HTTP clients do, reads the 413 instead of a connection reset; by
/// `Content-Length` and chunked.
#[tokio::test]
async fn a_sender_that_writes_a_too_large_body_reads_the_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hub = Hub::start(HubOptions::default()).await;
    let addr = hub.url.trim_start_matches("http://").to_string();
    let body = vec![b'x'; 3 * 1024 * 1024];
    for attempt in 0..10 {
        let chunked = attempt % 2 == 1;
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = if chunked {
            "POST /hooks/zendesk HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_string()
        } else {
            format!(
                "POST /hooks/zendesk HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
        };
        let mut wire = head.into_bytes();
        if chunked {
            for chunk in body.chunks(64 * 1024) {
                wire.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                wire.extend_from_slice(chunk);
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b"0\r\n\r\n");
        } else {
            wire.extend_from_slice(&body);
        }
        // Write everything first (a write error is what clients see today),
        // then read the answer.
        s.write_all(&wire)
            .await
            .unwrap_or_else(|e| panic!("attempt {attempt}: writing the body failed: {e}"));
        let mut answer = Vec::new();
        let read = s.read_to_end(&mut answer).await;
        let text = String::from_utf8_lossy(&answer);
        assert!(
            text.starts_with("HTTP/1.1 413"),
            "attempt {attempt} (chunked: {chunked}): {read:?} {text}"
        );
    }
}

/// A tmpfs mounted for one test, unmounted (lazily) on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` when this machine cannot mount (not root, no CAP_SYS_ADMIN).
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs { dir })
    }
    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fill the disk under the store, post, free the space, post again: the
/// hub answers 503 while full (and `/readyz` names the store), then 2xx
/// again without a restart, and every acknowledged event is there.
#[tokio::test]
async fn a_full_disk_that_is_freed_again_recovers_without_a_restart() {
    use std::io::Write;
    let Some(fs) = Tmpfs::mount("24m") else {
        // CI runs as root; say loudly where it cannot.
        eprintln!("SKIPPED a_full_disk_…: cannot mount a tmpfs here");
        return;
    };
    let data = fs.path().join("data");
    let hub = Hub::start(HubOptions {
        data: Some(data),
        ..HubOptions::default()
    })
    .await;
    let mut acked = Vec::new();
    let event =
        |i: u64| json!({"type": "ticket.deleted", "ticket": {"id": i}, "pad": "x".repeat(2000)});
    for i in 0..5 {
        let (status, body) = hub.post_zendesk(&event(i)).await;
        assert_eq!(status, 202, "{body}");
        acked.push(body["event_id"].as_str().unwrap().to_string());
    }

    // Fill the filesystem to the last byte.
    let filler = fs.path().join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        while f.write_all(&chunk[..512]).is_ok() {}
        let _ = f.sync_all();
    }
    let mut refused = 0;
    for i in 100..400 {
        let (status, body) = hub.post_zendesk(&event(i)).await;
        match status {
            202 => acked.push(body["event_id"].as_str().unwrap().to_string()),
            503 => {
                refused += 1;
                if refused >= 3 {
                    break;
                }
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert!(refused >= 3, "the full disk was never noticed");
    let ready = hub
        .http
        .get(format!("{}/readyz", hub.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["status"], "store_unavailable", "{ready}");

    // Free the space: the hub takes webhooks again by itself.
    std::fs::remove_file(&filler).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, body) = hub.post_zendesk(&event(1000)).await;
        if status == 202 {
            acked.push(body["event_id"].as_str().unwrap().to_string());
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(
            std::time::Instant::now() < deadline,
            "never recovered: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let ready = hub
        .http
        .get(format!("{}/readyz", hub.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    // Nothing acknowledged is lost, now and after a restart.
    for id in &acked {
        let (status, e) = hub.api(&format!("/api/events/{id}")).await;
        assert_eq!(status, 200, "{id}: {e}");
    }
    drop(hub);
    let hub = Hub::start(HubOptions {
        data: Some(fs.path().join("data")),
        ..HubOptions::default()
    })
    .await;
    for id in &acked {
        let (status, e) = hub.api(&format!("/api/events/{id}")).await;
        assert_eq!(status, 200, "{id}: {e}");
    }
}

/// GitHub's own example secret contains spaces: it is one secret, not four
/// (today's split made the single letter `a` a valid key).
#[tokio::test]
async fn a_secret_with_spaces_is_one_secret() {
    const SECRET: &str = "It's a Secret to Everybody";
    // GitHub's documented test vector, so the helper signs as GitHub does.
    assert_eq!(
        hmac_hex(SECRET, b"Hello, World!"),
        "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    );
    let cfg = Config::connectors_only();
    cfg.connector(
        "gh",
        "name: gh\nbase_url: https://api.github.com\nsecrets: [webhook_secret]\nwebhook:\n  \
         signature: { scheme: github, secret: webhook_secret }\n  event_type: { header: X-GitHub-Event }\n",
    );
    let mut opts = cfg.options();
    opts.env
        .push(("SWITCHBOARD_SECRET_GH_WEBHOOK_SECRET".into(), SECRET.into()));
    let hub = Hub::start(opts).await;
    let body = br#"{"zen": "Keep it logically awesome."}"#;
    let post = |key: &'static str| {
        let headers = vec![
            (
                "X-Hub-Signature-256".to_string(),
                format!("sha256={}", hmac_hex(key, body)),
            ),
            ("X-GitHub-Event".to_string(), "ping".to_string()),
            ("Content-Type".to_string(), "application/json".to_string()),
        ];
        let hub = &hub;
        async move { hub.post("gh", &headers, body).await }
    };
    let (status, answer) = post(SECRET).await;
    assert_eq!(status, 202, "{answer}");
    for part in ["a", "It's", "Secret", "Everybody"] {
        let (status, answer) = post(part).await;
        assert_eq!(status, 401, "`{part}` must not be a key: {answer}");
    }
}

/// A canary secret that an API echoes back in derived forms (Basic auth
/// base64, JSON-escaped, URL-encoded, as an object key) never reaches the
/// store files or the logs, even at trace level.
#[tokio::test]
async fn no_form_of_a_secret_reaches_the_store_or_the_logs() {
    use base64::Engine as _;
    const CANARY: &str = "Canary\"S3cret/ü+&=x y";
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let json_escaped = serde_json::to_string(CANARY).unwrap();
    let json_escaped = json_escaped.trim_matches('"').to_string();
    let form = serde_urlencoded::to_string([("", CANARY)]).unwrap()[1..].to_string();
    let percent: String = CANARY
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let basic = b64(&format!("agent@example.com:{CANARY}"));
    let forms = [
        CANARY.to_string(),
        json_escaped.clone(),
        form.clone(),
        percent.clone(),
        b64(CANARY),
        basic.clone(),
    ];
    let cfg = Config::connectors_only();
    cfg.connector(
        "echo",
        "name: echo\nbase_url: https://echo.example.com\nsecrets: [password]\nretry: { attempts: 1 }\n\
         auth: { type: basic, username: agent@example.com, password: \"{{ secrets.password }}\" }\n\
         actions:\n  send:\n    method: POST\n    path: /send\n    query: { k: \"{{ secrets.password }}\" }\n\
         \x20   body: { note: \"{{ secrets.password }}\" }\n  fail:\n    method: POST\n    path: /fail\n",
    );
    cfg.recipe(
        "echo",
        "name: echo\non: { connector: zendesk, event: ticket.created }\nsteps:\n  \
         - id: send\n    call: echo.send\n  - id: fail\n    call: echo.fail\n",
    );
    let echoed = json!({
        "authorization": format!("Basic {basic}"),
        "escaped": format!("pw={json_escaped}"),
        "form": format!("a=1&pw={form}"),
        "percent": percent,
        "b64": b64(CANARY),
        CANARY: "as a key",
    });
    let echo = MockApi::start(vec![
        route(Method::POST, "/send", 200, echoed.clone()),
        route(Method::POST, "/fail", 500, echoed),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("hub.log");
    let data = dir.path().join("data");
    let mut opts = cfg.options().base_url("echo", &echo.url);
    opts.env
        .push(("SWITCHBOARD_SECRET_ECHO_PASSWORD".into(), CANARY.into()));
    opts.env.push(("SWITCHBOARD_LOG".into(), "trace".into()));
    opts.log_file = Some(log.clone());
    opts.data = Some(data.clone());
    let mut hub = Hub::start(opts).await;
    let run = run_for(&hub, 5, "bob@example.com").await;
    assert_eq!(run["status"], "dead", "{run}");
    // The API did receive the secret (so the canary was really used).
    let sent = echo.calls("/send");
    assert_eq!(sent[0].json()["note"], CANARY);
    assert_eq!(
        sent[0].header("authorization"),
        Some(format!("Basic {basic}").as_str())
    );
    let (_, shown) = hub
        .api(&format!("/api/runs/{}", run["id"].as_str().unwrap()))
        .await;
    hub.kill();

    let mut haystacks = vec![(
        "the run via the API".to_string(),
        shown.to_string().into_bytes(),
    )];
    haystacks.push(("the log".into(), std::fs::read(&log).unwrap()));
    let mut stack = vec![data];
    while let Some(p) = stack.pop() {
        for entry in std::fs::read_dir(&p).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                haystacks.push((path.display().to_string(), std::fs::read(&path).unwrap()));
            }
        }
    }
    for (name, bytes) in &haystacks {
        for form in &forms {
            let found = bytes.windows(form.len()).any(|w| w == form.as_bytes());
            assert!(!found, "{name} holds the secret as `{form}`");
        }
    }
}

/// A short admin token is refused at start with a clear error; the data
/// dir and its files are private.
#[test]
fn weak_admin_tokens_are_refused_and_the_data_dir_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let cfg = Config::shipped();
    let out = output_within(
        {
            let mut c = cfg.command("serve");
            c.args(["--listen", "127.0.0.1:0"])
                .env("SWITCHBOARD_ADMIN_TOKEN", "secret");
            c
        },
        std::time::Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("admin token"), "{}", stderr(&out));
    assert!(stderr(&out).contains("too weak"), "{}", stderr(&out));

    let data = cfg.dir.path().join("private");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let hub = rt.block_on(Hub::start(HubOptions {
        data: Some(data.clone()),
        ..cfg.options()
    }));
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    let mut stack = vec![data];
    while let Some(p) = stack.pop() {
        for entry in std::fs::read_dir(&p).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                assert_eq!(mode(&path), 0o700, "{}", path.display());
                stack.push(path);
            } else {
                assert_eq!(
                    mode(&path) & 0o077,
                    0,
                    "{} is readable by others",
                    path.display()
                );
            }
        }
    }
    drop(hub);
}

/// A captured Zendesk delivery re-sent within the tolerance, with a new or
/// no invocation id (which is not signed), starts nothing, also after a
/// restart; a GitHub connector with `dedupe_window` refuses a repeated body,
/// and `check` names the connectors that stay replayable.
#[tokio::test]
async fn replayed_deliveries_start_nothing() {
    let cfg = Config::connectors_only();
    cfg.connector(
        "gh",
        "name: gh\nbase_url: https://api.github.com\nsecrets: [webhook_secret]\nwebhook:\n  \
         signature: { scheme: github, secret: webhook_secret }\n  event_type: { header: X-GitHub-Event }\n  \
         dedupe_window: 1h\n",
    );
    let open = cfg.connector(
        "shop",
        "name: shop\nbase_url: https://shop.example.com\nsecrets: [webhook_secret]\nwebhook:\n  \
         signature: { scheme: shopify, secret: webhook_secret }\n",
    );
    let mut check = cfg.command("check");
    check.env("SWITCHBOARD_SECRET_GH_WEBHOOK_SECRET", "gh-secret-value");
    check.env(
        "SWITCHBOARD_SECRET_SHOP_WEBHOOK_SECRET",
        "shop-secret-value",
    );
    let out = check.output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let warnings = stderr(&out);
    assert!(
        warnings.contains(&format!("{}:", open.display()))
            && warnings.contains("connector `shop` is replayable"),
        "{warnings}"
    );
    assert!(!warnings.contains("`gh` is replayable"), "{warnings}");
    assert!(!warnings.contains("`zendesk` is replayable"), "{warnings}");

    let dir = tempfile::tempdir().unwrap();
    let mut opts = cfg.options();
    opts.data = Some(dir.path().join("data"));
    opts.env.push((
        "SWITCHBOARD_SECRET_GH_WEBHOOK_SECRET".into(),
        "gh-secret-value".into(),
    ));
    opts.env.push((
        "SWITCHBOARD_SECRET_SHOP_WEBHOOK_SECRET".into(),
        "shop-secret-value".into(),
    ));
    let mut hub = Hub::start(opts.clone()).await;

    let body =
        serde_json::to_vec(&json!({"type": "ticket.deleted", "ticket": {"id": 77}})).unwrap();
    let ts = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let captured = zendesk_headers_at(&body, ZENDESK_WEBHOOK_SECRET, &ts);
    let (status, first) = hub.post("zendesk", &captured, &body).await;
    assert_eq!(status, 202, "{first}");
    let replays = [
        captured.clone(),
        // A new invocation id.
        zendesk_headers_at(&body, ZENDESK_WEBHOOK_SECRET, &ts),
        // No invocation id.
        captured
            .iter()
            .filter(|(k, _)| !k.contains("Invocation"))
            .cloned()
            .collect(),
    ];
    for headers in &replays {
        let (status, again) = hub.post("zendesk", headers, &body).await;
        assert_eq!(status, 200, "{again}");
        assert_eq!(again["duplicate"], true, "{again}");
        assert_eq!(again["event_id"], first["event_id"], "{again}");
    }
    // A restart does not reopen the window.
    hub.kill();
    let hub = Hub::start(opts).await;
    let (status, again) = hub.post("zendesk", &replays[1], &body).await;
    assert_eq!(
        (status, &again["event_id"]),
        (200, &first["event_id"]),
        "{again}"
    );
    let events = hub.items("/api/events").await;
    assert_eq!(events.len(), 1, "{events:?}");

    // GitHub signs no timestamp: the body is refused again within the window.
    let gh = br#"{"zen": "Design for failure."}"#;
    let gh_post = |delivery: &str| {
        let headers = vec![
            (
                "X-Hub-Signature-256".to_string(),
                format!("sha256={}", hmac_hex("gh-secret-value", gh)),
            ),
            ("X-GitHub-Event".to_string(), "ping".to_string()),
            ("X-GitHub-Delivery".to_string(), delivery.to_string()),
            ("Content-Type".to_string(), "application/json".to_string()),
        ];
        let hub = &hub;
        async move { hub.post("gh", &headers, gh).await }
    };
    let (status, first) = gh_post("d-1").await;
    assert_eq!(status, 202, "{first}");
    let (status, again) = gh_post("d-2").await;
    assert_eq!(
        (status, &again["event_id"]),
        (200, &first["event_id"]),
        "{again}"
    );
}

/// A run that was executing when the process died, twice in a row without
/// reaching a checkpoint, is failed instead of resumed a third time (a
/// poison run would otherwise crash the hub on every start).
#[tokio::test]
async fn a_run_that_crashed_the_process_twice_is_failed_not_resumed() {
    let cfg = Config::connectors_only();
    cfg.connector(
        "echo",
        "name: echo\nbase_url: https://echo.example.com\nretry: { attempts: 1 }\ntimeout: 60s\n\
         actions:\n  send:\n    method: POST\n    path: /send\n    body: { ok: true }\n",
    );
    cfg.recipe(
        "hang",
        "name: hang\non: { connector: zendesk, event: ticket.created }\nsteps:\n  - id: send\n    call: echo.send\n",
    );
    let mut hang = route(Method::POST, "/send", 200, json!({}));
    hang.delay = std::time::Duration::from_secs(120);
    let echo = MockApi::start(vec![hang]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut opts = cfg.options().base_url("echo", &echo.url);
    opts.data = Some(dir.path().join("data"));

    let wait_calls = |n: usize| {
        let echo = &echo;
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while echo.calls("/send").len() < n {
                assert!(std::time::Instant::now() < deadline, "call {n} never came");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    };
    let mut hub = Hub::start(opts.clone()).await;
    let (status, accepted) = hub
        .post_zendesk(&ticket_event(9, "Hello", "bob@example.com"))
        .await;
    assert_eq!(status, 202, "{accepted}");
    let event_id = accepted["event_id"].as_str().unwrap().to_string();
    wait_calls(1).await;
    hub.kill(); // the step "crashed" the process
    let mut hub = Hub::start(opts.clone()).await;
    wait_calls(2).await;
    hub.kill(); // and again
    let hub = Hub::start(opts).await;
    let runs = hub.finished_runs(&event_id).await;
    assert_eq!(runs[0]["status"], "failed", "{}", runs[0]);
    let error = runs[0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("poison-run guard"), "{error}");
    assert_eq!(echo.calls("/send").len(), 2);
}

/// A list page is bounded by its item count: big event bodies are
/// summarised in `/api/events` (the event itself still has all of it).
#[tokio::test]
async fn list_pages_summarise_big_bodies() {
    let hub = Hub::start(HubOptions::default()).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let event =
            json!({"type": "ticket.deleted", "ticket": {"id": i}, "pad": "x".repeat(300_000)});
        let (status, body) = hub.post_zendesk(&event).await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["event_id"].as_str().unwrap().to_string());
    }
    let resp = hub
        .http
        .get(format!("{}/api/events", hub.url))
        .bearer_auth(&hub.token)
        .send()
        .await
        .unwrap();
    let page = resp.bytes().await.unwrap();
    assert!(
        page.len() < 20_000,
        "a page of 5 events is {} bytes",
        page.len()
    );
    let page: Value = serde_json::from_slice(&page).unwrap();
    let first = &page["items"][0];
    assert!(first["body"]["bytes"].as_u64() > Some(300_000), "{first}");
    let (_, full) = hub.api(&format!("/api/events/{}", ids[0])).await;
    assert_eq!(full["body"]["pad"].as_str().map(str::len), Some(300_000));
}
