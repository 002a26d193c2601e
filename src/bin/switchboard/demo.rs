//! `switchboard demo send`: post a signed sample ticket to a running hub
//! (best with `serve --demo`) and watch its runs finish.
//!
//! The ticket is `docs/ticket-created.json` (built in) with a fresh ticket
//! id, signed as Zendesk signs (the library's `signature::sign_zendesk`,
//! the counterpart of the verifier the hub runs) with the zendesk
//! connector's `webhook_secret`: from `SWITCHBOARD_SECRET_ZENDESK_WEBHOOK_SECRET`,
//! `--secrets FILE`, or the demo secrets the hub uses with `--demo`.

use crate::inspect::{Api, Source};
use clap::{Args, Subcommand};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use switchboard::admin::queries::{status_name, EventView};
use switchboard::connector::SecretSource;
use switchboard::sandbox;
use switchboard::store::RunStatus;

#[derive(Subcommand)]
pub enum DemoCmd {
    /// Post a signed sample ticket (`ticket.created`) to the hub's
    /// /hooks/zendesk and wait for its runs (up to --wait).
    Send(SendArgs),
}

#[derive(Args)]
pub struct SendArgs {
    #[command(flatten)]
    src: Source,
    /// Secrets file with `zendesk: { webhook_secret: … }` (default: the demo secrets).
    #[arg(long, env = "SWITCHBOARD_SECRETS")]
    secrets: Option<PathBuf>,
    /// The event to send (JSON; default: docs/ticket-created.json, built in).
    #[arg(long)]
    event: Option<PathBuf>,
    /// How long to wait for the runs to finish; `0s`: do not wait.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    wait: Duration,
}

pub async fn demo(cmd: DemoCmd) -> ExitCode {
    match cmd {
        DemoCmd::Send(args) => match send(&args).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

async fn send(args: &SendArgs) -> Result<ExitCode, String> {
    let secrets = match &args.secrets {
        Some(file) => SecretSource::load(file),
        None => SecretSource::load_text(
            Path::new("docs/demo-secrets.yaml (built in)"),
            sandbox::DEMO_SECRETS,
        ),
    }
    .map_err(|e| e.to_string())?;
    let secret = secrets.get("zendesk", "webhook_secret").ok_or(
        "no zendesk webhook_secret: set SWITCHBOARD_SECRET_ZENDESK_WEBHOOK_SECRET or give --secrets",
    )?;
    let text = match &args.event {
        Some(file) => std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?,
        None => sandbox::SAMPLE_TICKET.to_string(),
    };
    let mut event: Value =
        serde_json::from_str(&text).map_err(|e| format!("the event is not JSON: {e}"))?;
    // A new ticket each time: a second send is a new delivery, not a replay.
    let ticket_id = rand::random_range(100_000..1_000_000u64);
    if let Some(ticket) = event.get_mut("ticket").and_then(Value::as_object_mut) {
        ticket.insert("id".into(), ticket_id.into());
    }
    let body = serde_json::to_vec(&event).map_err(|e| e.to_string())?;
    let timestamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let invocation = format!("demo-{}", hex::encode(rand::random::<[u8; 8]>()));
    let headers =
        switchboard::signature::sign_zendesk(secret.expose(), &timestamp, &body, &invocation);

    let api = Api { src: &args.src };
    let mut req = api
        .request(reqwest::Method::POST, &["hooks", "zendesk"])?
        .header("Content-Type", "application/json")
        .body(body);
    for (name, value) in headers {
        req = req.header(name, value);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| format!("cannot reach the hub at {}: {e}", args.src.url))?;
    let status = resp.status();
    let answer: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        return Err(format!(
            "the hub answered {status}: {}",
            answer["message"].as_str().unwrap_or("no message")
        ));
    }
    let event_id = answer["event_id"].as_str().unwrap_or_default().to_string();
    println!(
        "sent ticket {ticket_id}: event {event_id}, {} run(s)",
        answer["runs"].as_array().map_or(0, Vec::len)
    );
    if args.wait.is_zero() || event_id.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }

    // Until every run has finished or is parked in a wait.
    let deadline = Instant::now() + args.wait;
    let settled = |s: RunStatus| s.is_final() || s == RunStatus::Waiting;
    let view: EventView = loop {
        let view: EventView = api.get(&["api", "events", &event_id], &()).await?;
        if view.runs.iter().all(|r| settled(r.status)) || Instant::now() >= deadline {
            break view;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let mut ok = true;
    for run in &view.runs {
        ok &= !run.status.is_failure() && settled(run.status);
        let note = match (&run.error, run.status) {
            (Some(e), _) => format!(": {e}"),
            (None, RunStatus::Waiting) => " (parked in a wait step)".to_string(),
            _ => String::new(),
        };
        println!(
            "  {:<26} {:<10} run {}{note}",
            run.recipe,
            status_name(run.status),
            run.id
        );
    }
    println!("details: switchboard runs show <RUN ID>");
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
