//! `switchboard replay --recipe NAME [--since 7d [--until T] | --events ID…]`: what the
//! recipe as its file is in `--recipes` would have done for stored events,
//! against what ran (`switchboard::admin::replay`).
//!
//! The recipe files are this command's (a checkout of a change, say); the
//! history is the store's when no hub holds it, else the running hub's,
//! read through its admin API (`/api/events`, `/api/runs`). Either way the
//! replay runs here, as a dry run: no call leaves the process, nothing is
//! written.

use crate::inspect::{Api, Hub, Source};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use switchboard::admin::queries::{EventView, EventsQuery, Listing};
use switchboard::admin::replay::{
    self, Change, EventReplay, History, ReplayPage, ReplayQuery, StoreHistory, Verdict,
};
use switchboard::connector::SecretSource;
use switchboard::engine::{Catalog, LoadOptions};
use switchboard::store::{Event, Run};

#[derive(Args)]
pub struct ReplayArgs {
    /// The recipe to replay, by name.
    #[arg(long)]
    recipe: String,
    /// Events received this long ago or later (`7d`, `12h`), or since a time.
    #[arg(long, default_value = "7d", conflicts_with = "events")]
    since: String,
    /// Only events received before this time (RFC 3339, `YYYY-MM-DDTHH:MM` in UTC, or ms).
    #[arg(long, conflicts_with = "events")]
    until: Option<String>,
    /// Exactly these events (ids), instead of --since.
    #[arg(long, num_args = 1..)]
    events: Vec<String>,
    /// Recipe files to replay (your change).
    #[arg(long, env = "SWITCHBOARD_RECIPES", default_value = "recipes")]
    recipes: PathBuf,
    /// Connector files.
    #[arg(long, env = "SWITCHBOARD_CONNECTORS", default_value = "connectors")]
    connectors: PathBuf,
    /// Events looked at per page (at most 500).
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Only older than this id (the `next` of a previous page).
    #[arg(long)]
    before: Option<String>,
    #[command(flatten)]
    src: Source,
}

pub async fn replay(args: ReplayArgs) -> ExitCode {
    let opts = LoadOptions {
        connectors_dir: args.connectors.clone(),
        recipes_dir: args.recipes.clone(),
        // Nothing is sent: no credential is needed.
        secrets: SecretSource::from_env(std::env::vars()).with_placeholders(),
        allow_internal: Vec::new(),
    };
    let (catalog, errors) = Catalog::load_lenient(&opts);
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("{e}");
        }
        if catalog.recipe(&args.recipe).is_none() {
            eprintln!("error: {} problem(s) found", errors.len());
            return ExitCode::FAILURE;
        }
        eprintln!(
            "note: {} problem(s) in other files; replaying {} anyway",
            errors.len(),
            args.recipe
        );
    }
    let q = ReplayQuery {
        recipe: args.recipe.clone(),
        since: Some(args.since.clone()),
        until: args.until.clone(),
        events: (!args.events.is_empty()).then(|| args.events.join(",")),
        limit: Some(args.limit),
        before: args.before.clone(),
    };
    let now = switchboard::store::now_ms();
    let src = &args.src;
    let answer = match Hub::open(src) {
        Hub::Store(store) => {
            replay::replay(&StoreHistory(&*store), &catalog, &q, now).map_err(|e| e.to_string())
        }
        Hub::Api(api) => {
            // The history comes over HTTP; the walk is synchronous: it runs
            // on a blocking thread that waits for each answer.
            let handle = tokio::runtime::Handle::current();
            let history = ApiHistory { api, handle };
            tokio::task::block_in_place(|| replay::replay(&history, &catalog, &q, now))
                .map_err(|e| e.to_string())
        }
    };
    crate::inspect::print(src, answer, render)
}

/// A running hub's history, through its admin API.
struct ApiHistory<'a> {
    api: Api<'a>,
    handle: tokio::runtime::Handle,
}

impl History for ApiHistory<'_> {
    fn events(&self, q: &EventsQuery) -> Result<Listing<Event>, String> {
        self.handle.block_on(self.api.get(&["api", "events"], q))
    }
    fn event(&self, id: &str) -> Result<Option<Event>, String> {
        let view: Result<EventView, String> = self
            .handle
            .block_on(self.api.get(&["api", "events", id], &()));
        match view {
            Ok(v) => Ok(Some(Event {
                id: v.id,
                connector: v.connector,
                event_type: v.event_type,
                delivery_id: v.delivery_id,
                received_at: v.received_at,
                body: v.body,
                runs: v.runs.into_iter().map(|r| r.id).collect(),
                replay: None,
                origin: v.origin,
            })),
            Err(e) if e.starts_with("no event") => Ok(None),
            Err(e) => Err(e),
        }
    }
    fn run(&self, id: &str) -> Result<Option<Run>, String> {
        match self
            .handle
            .block_on(self.api.get(&["api", "runs", id], &()))
        {
            Ok(r) => Ok(Some(r)),
            Err(e) if e.starts_with("no run") => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A page of a replay as text: one block per event.
fn render(p: &ReplayPage) -> String {
    let mut out = format!(
        "replay of {} (version {}): {} event(s) looked at, {} listed\n",
        p.recipe,
        p.version,
        p.scanned,
        p.items.len()
    );
    let count = |v: Verdict| p.items.iter().filter(|i| i.verdict == v).count();
    out += &format!(
        "unchanged {}, changed {}, new runs {}, no longer start {}\n",
        count(Verdict::Unchanged),
        count(Verdict::Changed),
        count(Verdict::NewRun),
        count(Verdict::NoLongerStarts)
    );
    for item in &p.items {
        out += &event(item);
    }
    if let Some(next) = &p.next {
        out += &format!("\nmore: --before {next}\n");
    }
    out
}

fn event(e: &EventReplay) -> String {
    let verdict = match e.verdict {
        Verdict::Unchanged => "unchanged",
        Verdict::Changed => "changed",
        Verdict::NewRun => "new run",
        Verdict::NoLongerStarts => "no longer starts",
    };
    let mut out = format!(
        "\nevent {} ({}): {verdict}\n",
        e.event_id,
        e.event_type.as_deref().unwrap_or("-")
    );
    let status = |o: &replay::RunOutline| {
        let mut s = serde_json::to_value(o.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        if let Some(e) = o.error.as_deref().or(o.reason.as_deref()) {
            s += &format!(" ({e})");
        }
        s
    };
    if let Some(b) = &e.before {
        out += &format!(
            "  ran:   run {} {} [{}]\n",
            b.run.as_deref().unwrap_or("-"),
            status(b),
            b.steps.join(", ")
        );
    }
    if let Some(a) = &e.after {
        out += &format!("  now:   {} [{}]\n", status(a), a.steps.join(", "));
    }
    let json = |v: &Option<serde_json::Value>| {
        v.as_ref()
            .map(|v| serde_json::to_string(v).unwrap_or_default())
            .unwrap_or_default()
    };
    for c in &e.changes {
        out += &match c.change {
            Change::WouldCall => format!(
                "  + {}: would call {} with {} (not made: no recorded answer)\n",
                c.step,
                c.call,
                json(&c.after)
            ),
            Change::Added => format!("  + {} ({}): {}\n", c.step, c.call, json(&c.after)),
            Change::Removed => format!(
                "  - {} ({}): no longer runs (was {})\n",
                c.step,
                c.call,
                json(&c.before)
            ),
            Change::Inputs => format!(
                "  ~ {} ({}): inputs {} -> {}\n",
                c.step,
                c.call,
                json(&c.before),
                json(&c.after)
            ),
            Change::Call => format!(
                "  ~ {}: would call {} (was {})\n",
                c.step,
                json(&c.after),
                json(&c.before)
            ),
        };
    }
    out
}
