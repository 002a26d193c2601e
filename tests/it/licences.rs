//! Offline licence and duplicate check over `cargo metadata` (the lockfile
//! and the local registry; no network): every crate built for Linux must
//! carry a licence on the allow list, and no crate may appear in two
//! versions unless listed below (each is a cost in build time on 2 cores).

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Licences compatible with shipping Switchboard under Apache-2.0.
const ALLOWED: &[&str] = &[
    "MIT",
    "Apache-2.0",
    "Apache-2.0 WITH LLVM-exception",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "ISC",
    "Zlib",
    "Unicode-3.0",
    "Unlicense",
    "BSL-1.0",
    "0BSD",
    // MIT without the attribution clause (borrow-or-share, under the
    // schema validator boon, a dev-dependency): more permissive than MIT.
    "MIT-0",
    "CDLA-Permissive-2.0",
];

/// Crates in two versions today, pulled in by different dependencies.
/// (`parking_lot`, its core and `redox_syscall`: sled pins parking_lot 0.11,
/// prometheus-client needs 0.12; both are small and sled's will go with it.
/// `hashbrown` and its hasher `foldhash`: whatlang 0.18 pins hashbrown 0.15
/// beside indexmap's newer one.)
const DUPLICATES_ALLOWED: &[&str] = &[
    "base64",
    "cpufeatures",
    "foldhash",
    "getrandom",
    "hashbrown",
    "parking_lot",
    "parking_lot_core",
    "redox_syscall",
    "rand",
    "rand_core",
    // tokio-postgres 0.7.13 (the PostgreSQL store) is on socket2 0.5, tokio on
    // 0.6; a newer tokio-postgres would duplicate sha2, hmac and digest instead.
    "socket2",
    "syn",
];

/// Does the SPDX expression allow use under `ALLOWED`? Each AND-part needs
/// one allowed alternative (`/` is an old spelling of OR).
fn allowed(expr: &str) -> bool {
    let expr = expr.replace(['(', ')'], "").replace('/', " OR ");
    expr.split(" AND ").all(|part| {
        part.split(" OR ")
            .map(str::trim)
            .any(|id| ALLOWED.contains(&id))
    })
}

#[test]
fn every_dependency_has_an_allowed_licence_and_no_new_duplicates() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--offline",
            "--filter-platform",
            "x86_64-unknown-linux-gnu",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    let used: BTreeSet<&str> = meta["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    let mut versions: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut refused = Vec::new();
    for p in meta["packages"].as_array().unwrap() {
        if !used.contains(p["id"].as_str().unwrap_or("")) {
            continue;
        }
        let name = p["name"].as_str().unwrap_or("?");
        versions
            .entry(name)
            .or_default()
            .insert(p["version"].as_str().unwrap_or("?"));
        match p["license"].as_str() {
            Some(l) if allowed(l) => {}
            other => refused.push(format!("{name}: {other:?}")),
        }
    }
    assert!(
        refused.is_empty(),
        "licences not on the allow list: {refused:#?}"
    );
    let duplicates: Vec<_> = versions
        .iter()
        .filter(|(name, v)| v.len() > 1 && !DUPLICATES_ALLOWED.contains(name))
        .collect();
    assert!(
        duplicates.is_empty(),
        "crates in several versions: {duplicates:?}"
    );
}

#[test]
fn licence_expressions() {
    assert!(allowed("MIT OR Apache-2.0"));
    assert!(allowed("(MIT OR Apache-2.0) AND Unicode-3.0"));
    assert!(allowed("MIT/Apache-2.0"));
    assert!(!allowed("GPL-3.0"));
    assert!(!allowed("MIT AND GPL-3.0"));
    assert!(allowed("GPL-3.0 OR MIT"));
}
