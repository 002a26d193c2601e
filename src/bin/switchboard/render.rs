//! Text for people from the admin queries' typed answers (`--json` prints
//! the values themselves).

use crate::state::{Deleted, Entries};
use serde::Serialize;
use serde_json::Value;
use std::time::Duration;
use switchboard::admin::queries::{EventView, Listing, PollView, RetriedRuns};
use switchboard::admin::state::StatePage;
use switchboard::store::state::StateEntry;
use switchboard::store::{Event, Run, RunStatus};

pub fn runs(list: &Listing<Run>) -> String {
    let mut out = String::new();
    for r in &list.items {
        let error = if r.status == RunStatus::Waiting {
            format!("due {}", time(r.due_at))
        } else {
            r.error
                .as_deref()
                .or(r.pending.as_ref().and_then(|p| p.error.as_deref()))
                .or(r.reason.as_deref())
                .unwrap_or("")
                .to_string()
        };
        out += &format!(
            "{}  {:<10} {:<28} {}  steps:{}  {error}\n",
            r.id,
            name(r.status),
            r.recipe,
            time(r.created_at),
            r.steps.len(),
        );
    }
    if list.items.is_empty() {
        out += "no runs\n";
    }
    out
}

pub fn events(list: &Listing<Event>) -> String {
    let mut out = String::new();
    for e in &list.items {
        out += &format!(
            "{}  {:<10} {:<8} {:<24} {}  runs:{}\n",
            e.id,
            e.connector,
            e.origin.as_str(),
            or_dash(&e.event_type),
            time(e.received_at),
            e.runs.len()
        );
    }
    if list.items.is_empty() {
        out += "no events\n";
    }
    out
}

pub fn run(r: &Run) -> String {
    let mut out = format!(
        "run     {}\nrecipe  {} (version {})\nevent   {}\nstatus  {}\ncreated {}\n",
        r.id,
        r.recipe,
        r.version.as_deref().unwrap_or("-"),
        r.event_id,
        name(r.status),
        time(r.created_at)
    );
    if let Some(e) = &r.error {
        out += &format!("error   {e}\n");
    }
    if let Some(reason) = &r.reason {
        out += &format!("reason  {reason}\n");
    }
    if r.status == RunStatus::Retrying {
        out += &format!("next    {}\n", time(r.due_at));
    }
    if r.status == RunStatus::Waiting {
        out += &format!("due     {}\n", time(r.due_at));
    }
    for (n, st) in r.steps.iter().chain(&r.pending).enumerate() {
        out += &format!(
            "\n{}. {} ({})  {}  HTTP {}  {} ms  attempts {}\n",
            n + 1,
            st.id,
            st.call,
            name(st.status),
            or_dash(&st.http_status),
            st.duration_ms,
            st.attempts
        );
        out += &format!("   input:  {}\n", pretty(&st.input));
        if let Some(r) = &st.request {
            out += &format!("   request: {} {}\n", text(&r["method"]), text(&r["url"]));
        }
        out += &format!("   output: {}\n", pretty(&st.output));
        if let Some(e) = &st.error {
            out += &format!("   error:  {e}\n");
        }
        if st.history.len() > 1 {
            for (i, a) in st.history.iter().enumerate() {
                out += &format!(
                    "   attempt {}: {}  HTTP {}  {} ms  {}\n",
                    i + 1,
                    time(a.at),
                    or_dash(&a.http_status),
                    a.duration_ms,
                    a.error.as_deref().unwrap_or("ok")
                );
            }
        }
    }
    out
}

pub fn event(e: &EventView) -> String {
    let mut out = format!(
        "event     {}\nconnector {}\norigin    {}\ntype      {}\ndelivery  {}\nreceived  {}\n",
        e.id,
        e.connector,
        e.origin.as_str(),
        or_dash(&e.event_type),
        or_dash(&e.delivery_id),
        time(e.received_at)
    );
    for r in &e.runs {
        out += &format!("run       {}  {}  {}\n", r.id, r.recipe, name(r.status));
    }
    out += &format!("body      {}\n", pretty(&e.body));
    out
}

pub fn polls(polls: &Vec<PollView>) -> String {
    let mut out = String::new();
    for p in polls {
        let runs = match p.active {
            Some(true) => "runs".to_string(),
            Some(false) => "idle (no recipe triggers on it)".to_string(),
            None => "status from the store".to_string(),
        };
        out += &format!("{}  {}\n", p.name, runs);
        if let Some(e) = &p.event_type {
            let every = p
                .every_ms
                .map(|ms| humantime::format_duration(Duration::from_millis(ms as u64)).to_string())
                .unwrap_or_default();
            out += &format!("  event {e}, every {every}\n");
        }
        if let Some(due) = p.next_due {
            out += &format!("  next due      {}\n", time(due));
        }
        out += &format!(
            "  last success  {}\n",
            p.last_success.map(time).unwrap_or_else(|| "never".into())
        );
        if let Some(e) = &p.last_error {
            out += &format!(
                "  last error    {}  {e} ({} failure(s) since the last success)\n",
                p.last_error_at.map(time).unwrap_or_default(),
                p.failures
            );
        }
        if let Some(w) = &p.warning {
            out += &format!("  warning       {w}\n");
        }
        if let Some(c) = &p.cursor {
            out += &format!("  cursor        {c}\n");
        }
        out += &format!(
            "  events        {} (last poll: {} item(s), {} new)\n",
            p.events, p.last_items, p.last_new
        );
    }
    if polls.is_empty() {
        out += "no polls\n";
    }
    out
}

pub fn retried(r: &RetriedRuns) -> String {
    let mut out = format!("{} run(s) queued again\n", r.retried.len());
    for id in &r.retried {
        out += &format!("{id}\n");
    }
    out
}

/// Milliseconds since the epoch as RFC 3339 (empty if out of range).
fn time(ms: i64) -> String {
    u64::try_from(ms)
        .ok()
        .and_then(|ms| std::time::UNIX_EPOCH.checked_add(Duration::from_millis(ms)))
        .map(|t| humantime::format_rfc3339_millis(t).to_string())
        .unwrap_or_default()
}

/// A unit enum (a status) by its serialized name.
fn name(value: impl Serialize) -> String {
    text(&serde_json::to_value(value).unwrap_or_default())
}

fn or_dash(v: &Option<impl ToString>) -> String {
    v.as_ref()
        .map_or_else(|| "-".to_string(), ToString::to_string)
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v)
        .unwrap_or_default()
        .replace('\n', "\n      ")
}

pub fn state_page(page: &StatePage) -> String {
    let mut out = state_lines(&page.items);
    if page.items.is_empty() {
        out += "no state\n";
    }
    if let Some(next) = &page.next {
        out += &format!("more: --after {next}\n");
    }
    out
}

pub fn state_entries(entries: &Entries) -> String {
    state_lines(&entries.items)
}

pub fn deleted(_: &Deleted) -> String {
    "deleted\n".to_string()
}

fn state_lines(entries: &[StateEntry]) -> String {
    let mut out = String::new();
    for e in entries {
        out += &format!(
            "{:<9} {}  {}  {}",
            name(e.kind),
            e.namespace,
            e.key,
            e.value
        );
        if let Some(w) = e.window_ms.and_then(|w| u64::try_from(w).ok()) {
            out += &format!(
                "  (in the last {})",
                humantime::format_duration(Duration::from_millis(w))
            );
        }
        if let Some(at) = e.expires_at {
            out += &format!("  expires {}", time(at));
        }
        out.push('\n');
    }
    out
}

/// `switchboard store stats`.
pub fn store_stats(s: &switchboard::store::StoreStats) -> String {
    let c = &s.counts;
    let mut out = format!(
        "events        {}\nruns          {}\n",
        c.events,
        c.runs_total()
    );
    for (status, n) in &c.runs {
        out += &format!("  {status:<11} {n}\n");
    }
    out += &format!(
        "queue depth   {} (queued, running, retrying)\nstate entries {}\non disk       {} bytes ({:.1} MiB)\n",
        c.queue_depth,
        s.state_entries,
        s.bytes_on_disk,
        s.bytes_on_disk as f64 / (1024.0 * 1024.0)
    );
    if let Some(scanned) = &s.scanned {
        if scanned == c {
            out += "full scan     agrees\n";
        } else {
            out += &format!(
                "full scan     DISAGREES: events {}, runs {:?}, queue depth {}\n",
                scanned.events, scanned.runs, scanned.queue_depth
            );
        }
    }
    for p in &s.problems {
        out += &format!("problem       {p}\n");
    }
    if !s.keys.is_empty() {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        out += &format!(
            "\n{:<8} {:>12} {:>12} {:>12}\n",
            "prefix", "keys", "key MiB", "value MiB"
        );
        let (mut n, mut bytes) = (0, 0);
        for k in &s.keys {
            out += &format!(
                "{:<8} {:>12} {:>12.1} {:>12.1}\n",
                k.prefix.escape_debug().to_string(),
                k.keys,
                mib(k.key_bytes),
                mib(k.value_bytes)
            );
            n += k.keys;
            bytes += k.key_bytes + k.value_bytes;
        }
        out += &format!(
            "live data     {n} keys, {:.1} MiB: the file is {:.1}x that (`switchboard store compact` gives back what is above the live data and sled's own overhead)\n",
            mib(bytes),
            s.bytes_on_disk as f64 / bytes.max(1) as f64
        );
    }
    out
}
