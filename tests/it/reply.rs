//! The answer to the sender (`reply:`) through the binary: a Slack slash
//! command gets its ephemeral message in the webhook's answer, the event is
//! stored and the run goes on; a reply that does not render still gets the
//! documented fallback (the reply's status, empty body) with the event
//! stored; with two replying recipes the first by name answers.

use crate::utils::*;
use axum::http::Method;
use serde_json::{json, Value};

const SIGNING: &str = "slack-signing-secret-for-tests";

const CONNECTOR: &str = r#"
name: slackcmd
base_url: https://slack.com/api
secrets: [signing_secret]
webhook:
  signature: { scheme: slack, secret: signing_secret }
  event_type: { value: slash_command }
actions:
  post:
    inputs: { text: {} }
    method: POST
    path: /chat.postMessage
    body: { text: "{{ input.text }}" }
"#;

const LOOKUP: &str = r#"
name: lookup
on: { connector: slackcmd, event: slash_command }
vars: { greeting: "Looking up" }
reply:
  body:
    response_type: ephemeral
    text: "{{ vars.greeting }} {{ event.text }}…"
steps:
  - call: slackcmd.post
    with: { text: "found {{ event.text }} for {{ event.user_name }}" }
"#;

struct Slack {
    cfg: Config,
}

impl Slack {
    fn new(recipes: &[(&str, &str)]) -> Slack {
        let cfg = Config::connectors_only();
        cfg.connector("slackcmd", CONNECTOR);
        for (name, text) in recipes {
            cfg.recipe(name, text);
        }
        Slack { cfg }
    }

    fn check(&self) -> std::process::Output {
        self.cfg
            .command("check")
            .env("SWITCHBOARD_SECRET_SLACKCMD_SIGNING_SECRET", SIGNING)
            .output()
            .unwrap()
    }

    async fn start(&self, mock: &MockApi) -> Hub {
        let mut opts = self.cfg.options().base_url("slackcmd", &mock.url);
        opts.env.push((
            "SWITCHBOARD_SECRET_SLACKCMD_SIGNING_SECRET".into(),
            SIGNING.into(),
        ));
        Hub::start(opts).await
    }
}

/// POST a signed slash command form; status, headers and raw body.
async fn command(hub: &Hub, text: &str) -> (u16, reqwest::header::HeaderMap, String) {
    command_with(hub, text, "https://hooks.slack.com/x").await
}

/// A signed slash command carrying `response_url`.
async fn command_with(
    hub: &Hub,
    text: &str,
    response_url: &str,
) -> (u16, reqwest::header::HeaderMap, String) {
    let url = serde_urlencoded::to_string([("response_url", response_url)]).unwrap();
    let body = format!("command=%2Flookup&text={text}&user_name=ann&{url}");
    let resp = hub
        .send("slackcmd", &slack_headers(&body, SIGNING), body.as_bytes())
        .await;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.unwrap())
}

fn header<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

#[tokio::test]
async fn a_slash_command_gets_its_reply_and_the_run_goes_on() {
    let mock = MockApi::start(vec![route(
        Method::POST,
        "/chat.postMessage",
        200,
        json!({"ok": true}),
    )])
    .await;
    let slack = Slack::new(&[("lookup", LOOKUP)]);
    let hub = slack.start(&mock).await;

    let (status, headers, body) = command(&hub, "Bob+Smith").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&headers, "content-type"), "application/json");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        answer,
        json!({"response_type": "ephemeral", "text": "Looking up Bob Smith…"})
    );
    // The event is stored (its id in a header) and its run makes the real call.
    let event_id = header(&headers, "x-switchboard-event").to_string();
    let runs = hub.finished_runs(&event_id).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["status"], "succeeded", "{}", runs[0]);
    let calls = mock.calls("/chat.postMessage");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].json(), json!({"text": "found Bob Smith for ann"}));
}

#[tokio::test]
async fn a_reply_that_does_not_render_answers_the_fallback_and_stores_the_event() {
    let broken = LOOKUP
        .replace("{{ event.text }}…", "{{ event.missing }}")
        .replace("name: lookup", "name: broken");
    let text_reply = r#"
name: thanks
on: { connector: slackcmd, event: slash_command }
if: [ { "$.event.text": { equals: thanks } } ]
reply:
  status: 201
  content_type: text/html; charset=utf-8
  body: "<p>Thank you, {{ event.user_name }} (run {{ run.id }})</p>"
steps:
  - call: slackcmd.post
    with: { text: "thanks" }
"#;
    let mock = MockApi::start(vec![route(
        Method::POST,
        "/chat.postMessage",
        200,
        json!({"ok": true}),
    )])
    .await;
    let slack = Slack::new(&[("broken", &broken), ("thanks", text_reply)]);
    let hub = slack.start(&mock).await;

    // `broken` (first by name) answers: its template fails → 200, empty body.
    let (status, headers, body) = command(&hub, "Bob").await;
    assert_eq!(status, 200);
    assert_eq!(body, "");
    let event_id = header(&headers, "x-switchboard-event").to_string();
    let (code, event) = hub.api(&format!("/api/events/{event_id}")).await;
    assert_eq!(code, 200, "the event is stored: {event}");
    assert_eq!(event["body"]["text"], "Bob");
    let runs = hub.finished_runs(&event_id).await;
    assert_eq!(runs[0]["status"], "succeeded", "the run is not affected");

    // Both match "thanks": `broken` still wins by name.
    let (status, _, body) = command(&hub, "thanks").await;
    assert_eq!((status, body.as_str()), (200, ""));

    // Alone, a text reply with its own status and content type, and the run id.
    let slack = Slack::new(&[("thanks", text_reply)]);
    let hub = slack.start(&mock).await;
    let (status, headers, body) = command(&hub, "thanks").await;
    assert_eq!(status, 201);
    assert_eq!(header(&headers, "content-type"), "text/html; charset=utf-8");
    let event_id = header(&headers, "x-switchboard-event").to_string();
    let runs = hub.finished_runs(&event_id).await;
    assert_eq!(
        body,
        format!(
            "<p>Thank you, ann (run {})</p>",
            runs[0]["id"].as_str().unwrap()
        )
    );
    // No recipe matches: the default answer.
    let (status, _, body) = command(&hub, "other").await;
    assert_eq!(status, 202);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["runs"], json!([]));
}

#[test]
fn check_rejects_bad_replies_and_warns_about_two_replying_recipes() {
    let bad = r#"
name: bad
on: { connector: slackcmd, event: slash_command }
reply:
  status: 302
  content_type: text/plain
  body: { text: "{{ steps.x }}" }
steps:
  - call: slackcmd.post
    with: { text: hi }
"#;
    let slack = Slack::new(&[("bad", bad)]);
    let out = slack.check();
    let file = slack.cfg.recipes.join("bad.yaml");
    let err = stderr(&out);
    for want in [
        format!("{}:5:11: reply status 302 is not a success, expected 200-299", file.display()),
        format!("{}:6:17: a mapping or list `body` is sent as JSON, so `content_type` must be a JSON type, not `text/plain`", file.display()),
        format!("{}:7:17: unknown step id `x`, expected an earlier step: (none are defined)", file.display()),
    ] {
        assert!(err.contains(&want), "{want}\nin\n{err}");
    }

    let second = LOOKUP.replace("name: lookup", "name: zlookup");
    let slack = Slack::new(&[("lookup", LOOKUP), ("zlookup", &second)]);
    let out = slack.check();
    assert!(out.status.success(), "{}", stderr(&out));
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        all.contains(&format!(
            "{}:5:1: warning: recipes `lookup` and `zlookup` both reply to `slackcmd` `slash_command` events; when both match, `lookup` answers (the first by name) and this `reply:` is not sent",
            slack.cfg.recipes.join("zlookup.yaml").display()
        )),
        "{all}"
    );
}

/// Slack's `response_url` (in the event) as a connector action's whole URL,
/// allowed only under the connector's `allowed_urls`.
fn responder(allowed: &str) -> String {
    format!(
        r#"
name: slackresp
base_url: https://slack.com/api
allowed_urls: ["{allowed}"]
actions:
  respond:
    inputs: {{ url: {{}}, text: {{}} }}
    method: POST
    url: "{{{{ input.url }}}}"
    body: {{ response_type: in_channel, text: "{{{{ input.text }}}}" }}
"#
    )
}

const LOOKUP_LATER: &str = r#"
name: lookup-later
on: { connector: slackcmd, event: slash_command }
reply:
  body: { response_type: ephemeral, text: "Looking up {{ event.text }}…" }
steps:
  - id: answer
    call: slackresp.respond
    with: { url: "{{ event.response_url }}", text: "found {{ event.text }}" }
"#;

/// The Slack slash-command pattern end to end: the sender gets the
/// immediate `reply:`, a later step posts the result to the event's
/// `response_url`; a `response_url` elsewhere than `allowed_urls` is refused
/// before anything is sent.
#[tokio::test]
async fn a_later_step_answers_through_the_events_response_url_if_allowed() {
    let mock = MockApi::start(vec![route(
        Method::POST,
        "/commands/",
        200,
        json!({"ok": true}),
    )])
    .await;
    let slack = Slack::new(&[("lookup-later", LOOKUP_LATER)]);
    slack
        .cfg
        .connector("slackresp", &responder(&format!("{}/commands/", mock.url)));
    let hub = slack.start(&mock).await;

    let url = format!("{}/commands/T1/42/abc", mock.url);
    let (status, headers, body) = command_with(&hub, "Bob+Smith", &url).await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["text"], "Looking up Bob Smith…", "{answer}");
    let runs = hub
        .finished_runs(header(&headers, "x-switchboard-event"))
        .await;
    assert_eq!(runs[0]["status"], "succeeded", "{}", runs[0]);
    let calls = mock.calls("/commands/T1/42/abc");
    assert_eq!(calls.len(), 1, "{:?}", mock.received());
    assert_eq!(
        calls[0].json(),
        json!({"response_type": "in_channel", "text": "found Bob Smith"})
    );

    // The same host outside the allowed path, and another port: refused, nothing sent.
    for elsewhere in [
        format!("{}/api/chat.postMessage", mock.url),
        "http://127.0.0.1:9/commands/T1/42/abc".to_string(),
    ] {
        let (status, headers, _) = command_with(&hub, "Eve", &elsewhere).await;
        assert_eq!(status, 200);
        let runs = hub
            .finished_runs(header(&headers, "x-switchboard-event"))
            .await;
        assert_eq!(runs[0]["status"], "failed", "{}", runs[0]);
        let error = runs[0]["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("not under the connector's allowed_urls"),
            "{error}"
        );
    }
    assert_eq!(mock.received().len(), 1, "{:?}", mock.received());

    // `url:` without `allowed_urls` is a load error at the action.
    let bad = slack.cfg.connector(
        "slackresp",
        &responder("x").replace("allowed_urls: [\"x\"]\n", ""),
    );
    let out = slack.check();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "{}:8:10: an action with `url:` needs the connector's `allowed_urls:`",
            bad.display()
        )),
        "{err}"
    );
}
