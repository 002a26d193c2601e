//! The W1 floor: what the hardware allows for W1 with no store and no recipe
//! engine. Verify the HMAC over the raw body, parse the JSON, check the type
//! and the subject regex, POST `{email, name, ticket}` to the sink and answer
//! 202 once the sink answered (502 if it failed); 200 when the event does not
//! match, 401 on a bad signature, 400 on bad JSON.
//!
//! Usage: floor LISTEN_ADDR SINK_URL   (secret from W1_SECRET, default "s3cret")

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::sync::Arc;

struct App {
    secret: Vec<u8>,
    subject: regex::Regex,
    sink: String,
    client: reqwest::Client,
}

async fn hook(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let Some(sig) = headers
        .get("x-signature-256")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("sha256="))
        .and_then(|v| hex::decode(v).ok())
    else {
        return (StatusCode::UNAUTHORIZED, "bad signature");
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(&app.secret).expect("any key length");
    mac.update(&body);
    if mac.verify_slice(&sig).is_err() {
        return (StatusCode::UNAUTHORIZED, "bad signature");
    }
    let Ok(ev) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "bad json");
    };
    let t = &ev["ticket"];
    let matches = ev["type"] == "ticket.created"
        && t["subject"]
            .as_str()
            .is_some_and(|s| app.subject.is_match(s));
    if !matches {
        return (StatusCode::OK, "ignored");
    }
    let r = &t["requester"];
    let out = json!({ "email": r["email"], "name": r["name"], "ticket": t["id"] });
    let sent = app
        .client
        .post(&app.sink)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&out).expect("serialisable"))
        .send()
        .await;
    match sent {
        Ok(resp) if resp.status().is_success() => {
            let _ = resp.bytes().await;
            (StatusCode::ACCEPTED, "")
        }
        _ => (StatusCode::BAD_GATEWAY, "sink failed"),
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let listen = args.get(1).map(String::as_str).unwrap_or("127.0.0.1:9201");
    let sink = args
        .get(2)
        .cloned()
        .unwrap_or_else(|| "http://127.0.0.1:9100/crm".into());
    let app = Arc::new(App {
        secret: std::env::var("W1_SECRET")
            .unwrap_or_else(|_| "s3cret".into())
            .into_bytes(),
        subject: regex::Regex::new("(?i)(setup|confirm)").expect("valid regex"),
        sink,
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            .build()
            .expect("client"),
    });
    let router = Router::new().route("/hooks/w1", post(hook)).with_state(app);
    let listener = tokio::net::TcpListener::bind(listen).await.expect("bind");
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .expect("serve");
}
