//! Recipe matching per event with 1 .. 10 000 recipes loaded (issue 4 target:
//! 10 000 within 2× of 1, because matching goes through the index on
//! (connector, event type) instead of scanning).
//!
//! Catalogs are built the way `serve` builds them: generated recipe files in a
//! temp dir, loaded and checked by `Catalog::load`. The timed work is what
//! `Engine::accept` does before it writes: look the recipes up, then evaluate
//! each one's `if` on `{event, vars, steps}` (the W1 subject regex).
//!
//! - `one_matching_among/N`: N recipes loaded, one of them on the event's
//!   (connector, type); the others on other event types.
//! - `all_matching/N`: N recipes all on the event's type (the cost per
//!   matching recipe, as in the "100 matching recipes" ingest figure).
//!
//! Run: `cargo bench --bench matching` (bench/run.sh runs it too).

use divan::Bencher;
use serde_json::Value;
use switchboard::connector::SecretSource;
use switchboard::engine::{Catalog, LoadOptions};

const CONNECTOR: &str = include_str!("w1/connectors/w1.yaml");
const RECIPE: &str = include_str!("w1/recipes/w1.yaml");
const EVENT: &str = include_str!("w1/event.json");

fn main() {
    divan::main();
}

/// A catalog of `total` recipes, the first `matching` of them on `ticket.created`.
fn catalog(total: usize, matching: usize) -> (tempfile::TempDir, Catalog) {
    let dir = tempfile::tempdir().expect("temp dir");
    let connectors = dir.path().join("connectors");
    let recipes = dir.path().join("recipes");
    std::fs::create_dir_all(&connectors).expect("mkdir");
    std::fs::create_dir_all(&recipes).expect("mkdir");
    std::fs::write(connectors.join("w1.yaml"), CONNECTOR).expect("write connector");
    for i in 0..total {
        let event = if i < matching {
            "ticket.created".to_string()
        } else {
            format!("ticket.other{i}")
        };
        let text = RECIPE
            .replace("name: w1\n", &format!("name: w1-{i:05}\n"))
            .replace("event: ticket.created\n", &format!("event: {event}\n"));
        std::fs::write(recipes.join(format!("w1-{i:05}.yaml")), text).expect("write recipe");
    }
    let secrets = SecretSource::from_env([
        (
            "SWITCHBOARD_SECRET_W1_WEBHOOK_SECRET".to_string(),
            "s3cret".to_string(),
        ),
        (
            "SWITCHBOARD_BASE_URL_W1".to_string(),
            "http://127.0.0.1:9100".to_string(),
        ),
    ]);
    let catalog = Catalog::load(&LoadOptions {
        connectors_dir: connectors,
        recipes_dir: recipes,
        secrets,
        allow_internal: vec!["w1".into()],
    })
    .unwrap_or_else(|e| panic!("catalog: {e:?}"));
    assert_eq!(catalog.recipes.len(), total);
    (dir, catalog)
}

/// What `Engine::accept` does to choose the runs: `Catalog::triggered`, the
/// function it calls. The context is built once per event (the body is moved
/// in by `accept`, cloned here because the bench reuses it).
fn accept_match(catalog: &Catalog, event: &Value) -> usize {
    let mut ctx = Catalog::trigger_context(event.clone(), 0);
    let mut started = 0;
    catalog.triggered("w1", Some("ticket.created"), &mut ctx, |_, _| started += 1);
    started
}

#[divan::bench(args = [1, 100, 1000, 10000], sample_count = 200)]
fn one_matching_among(b: Bencher, total: usize) {
    let (_dir, catalog) = catalog(total, 1);
    let event: Value = serde_json::from_str(EVENT).expect("event.json");
    assert_eq!(accept_match(&catalog, &event), 1);
    b.bench_local(|| accept_match(divan::black_box(&catalog), divan::black_box(&event)));
}

#[divan::bench(args = [1, 100], sample_count = 200)]
fn all_matching(b: Bencher, total: usize) {
    let (_dir, catalog) = catalog(total, total);
    let event: Value = serde_json::from_str(EVENT).expect("event.json");
    assert_eq!(accept_match(&catalog, &event), total);
    b.bench_local(|| accept_match(divan::black_box(&catalog), divan::black_box(&event)));
}
