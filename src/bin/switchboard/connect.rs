//! `switchboard connect NAME`: the OAuth2 authorization-code flow with PKCE,
//! once, for a connector with `auth: { type: oauth2, grant:
//! authorization_code }`. Prints the URL to open, waits for the browser's
//! redirect on the loopback address, exchanges the code and stores the
//! tokens in `<data>/oauth/NAME.json`. Never prints a token.

use crate::{serve_config, Dirs};
use clap::Args;
use std::process::ExitCode;
use std::time::Duration;
use switchboard::connector::{self, http::Client, Auth, LoadOptions};
use switchboard::template::Templates;

#[derive(Args)]
pub struct ConnectArgs {
    #[command(flatten)]
    dirs: Dirs,
    /// The connector to connect.
    name: String,
    /// Listen for the redirect on this port instead of the one in the
    /// connector's `redirect_uri` (0: any free port; RFC 8252 lets loopback
    /// redirects use any port, where the app allows it).
    #[arg(long)]
    port: Option<u16>,
    /// Give up when no redirect arrived within this.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

pub async fn connect(args: ConnectArgs) -> ExitCode {
    let config = serve_config(args.dirs);
    let opts = match config.load_options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let mut templates = Templates::new();
    let (mut errors, mut warnings) = (Vec::new(), Vec::new());
    let load = LoadOptions {
        secrets: &opts.secrets,
        allow_internal: &opts.allow_internal,
    };
    let connectors = connector::load_dir(
        &opts.connectors_dir,
        &mut templates,
        &load,
        &mut errors,
        &mut warnings,
    );
    if let Some(missing) = connectors.missing_secrets.get(&args.name) {
        errors.extend(missing.iter().cloned());
    }
    let name = &args.name;
    // Only this connector's problems matter here.
    let mine: Vec<_> = errors
        .iter()
        .filter(|e| e.file.file_stem().and_then(|s| s.to_str()) == Some(name.as_str()))
        .collect();
    if !mine.is_empty() {
        for e in &mine {
            eprintln!("{e}");
        }
        eprintln!("error: connector `{name}` has problems; not connecting");
        return ExitCode::FAILURE;
    }
    let Some(c) = connectors.get(name) else {
        eprintln!(
            "error: no connector named `{name}` in {}",
            opts.connectors_dir.display()
        );
        return ExitCode::FAILURE;
    };
    let Auth::OAuth2(oauth) = &c.auth else {
        eprintln!(
            "error: connector `{name}` does not use `auth: {{ type: oauth2 }}`; nothing to connect"
        );
        return ExitCode::FAILURE;
    };
    let client = match Client::new(&connectors) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shown = |url: &reqwest::Url, redirect: &reqwest::Url| {
        println!("Open this URL in a browser to connect `{name}`:");
        println!();
        println!("  {url}");
        println!();
        println!("Waiting for the redirect to {redirect} …");
    };
    match oauth
        .connect(&client, &templates, c, args.port, args.timeout, shown)
        .await
    {
        Ok(done) => {
            let file = done
                .file
                .map(|f| f.display().to_string())
                .unwrap_or_default();
            let lifetime = done
                .expires_in
                .map(|d| format!("the access token expires in {} s", d.as_secs()))
                .unwrap_or_else(|| "the access token has no stated lifetime".to_string());
            let refresh = if done.refresh_token {
                "with a refresh token"
            } else {
                "without a refresh token (connect again when it expires)"
            };
            println!("connected `{name}`: tokens stored in {file} ({lifetime}, {refresh})");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
