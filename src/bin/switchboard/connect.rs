//! `switchboard connect NAME`: the OAuth2 authorization-code flow with PKCE,
//! once, for a connector with `auth: { type: oauth2, grant:
//! authorization_code }`. Prints the URL to open, waits for the browser's
//! redirect on the loopback address, exchanges the code and stores the
//! tokens in the hub's store (namespace `switchboard:oauth`), where every
//! node on it reads them. When a running hub holds the sled store, the
//! tokens go to `<data>/oauth/NAME.json` instead, and that hub moves them
//! into its store at its next token. Never prints a token.

use crate::{serve_config, Dirs};
use clap::Args;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use switchboard::connector::oauth::{Stored, TokenStore};
use switchboard::connector::{self, http::Client, Auth, LoadOptions};
use switchboard::engine::tokens::StoreTokens;
use switchboard::store::{pg::PgStore, sled::SledStore, Backend, Store};
use switchboard::template::Templates;

#[derive(Args)]
pub struct ConnectArgs {
    #[command(flatten)]
    dirs: Dirs,
    /// The connector to connect.
    name: String,
    /// The store the hubs run on (`serve --store`): a `postgres://` URL, or
    /// by default the sled store in the data dir.
    #[arg(long, env = "SWITCHBOARD_STORE", hide_env_values = true)]
    store: Option<String>,
    /// Listen for the redirect on this port instead of the one in the
    /// connector's `redirect_uri` (0: any free port; RFC 8252 lets loopback
    /// redirects use any port, where the app allows it).
    #[arg(long)]
    port: Option<u16>,
    /// Give up when no redirect arrived within this.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// Where the tokens go: the store if this process can open it, else
/// (a hub holds the sled store) `None`: the token file.
fn token_store(
    data: &std::path::Path,
    spec: Option<&str>,
) -> Result<Option<Arc<dyn TokenStore>>, String> {
    let store: Arc<dyn Store> = match Backend::parse(spec, data) {
        Backend::Postgres(url) => Arc::new(PgStore::open(&url).map_err(|e| e.to_string())?),
        Backend::Sled(dir) => match SledStore::open(&dir) {
            Ok(s) => Arc::new(s),
            Err(_) => return Ok(None),
        },
    };
    Ok(Some(Arc::new(StoreTokens::new(store))))
}

pub async fn connect(args: ConnectArgs) -> ExitCode {
    let data = args.dirs.data.clone();
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
    let store = match token_store(&data, args.store.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot open the store: {e}");
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
        .connect(
            &client,
            &templates,
            c,
            store,
            args.port,
            args.timeout,
            shown,
        )
        .await
    {
        Ok(done) => {
            let place = match &done.stored {
                Stored::Store => "the store".to_string(),
                Stored::File(f) => format!(
                    "{} (the running hub moves them into its store at its next token)",
                    f.display()
                ),
            };
            let lifetime = done
                .expires_in
                .map(|d| format!("the access token expires in {} s", d.as_secs()))
                .unwrap_or_else(|| "the access token has no stated lifetime".to_string());
            let refresh = if done.refresh_token {
                "with a refresh token"
            } else {
                "without a refresh token (connect again when it expires)"
            };
            println!("connected `{name}`: tokens stored in {place} ({lifetime}, {refresh})");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
