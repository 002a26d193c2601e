//! `recipes/_shared.yaml`: definitions every recipe can use.
//!
//! One file, one key per kind of definition, each compiled by its own
//! function here:
//! - `vars:` — constants merged under every recipe's `vars` (a recipe's own
//!   `vars:` of the same name wins), so `{{ vars.support_email }}` works in
//!   any recipe;
//! - `scenarios:` — named calls (`call: connector.action` with `with:`), a
//!   set of field updates applied as one call, used by a step
//!   `scenario: NAME` (its own `with:` merged over the scenario's);
//! - `calendars:` — business hours (`crate::time::calendar`).
//!
//! Adding a key: a field in [`SharedFile`], a field in [`Shared`] and its
//! compile call in [`load`]. The file is optional; an unknown key is an
//! error at its position.

use super::scope::{list, sorted};
use super::steps::call::resolve;
use crate::connector::Connectors;
use crate::time::Calendars;
use crate::yaml::{LoadError, Pos};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// The file name, in the recipes directory.
pub const FILE: &str = "_shared.yaml";

/// The JSON Schema of `recipes/_shared.yaml` (`switchboard schema shared`).
pub fn schema() -> Value {
    schemars::schema_for!(SharedFile).to_value()
}

/// `recipes/_shared.yaml`: definitions several recipes use.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SharedFile {
    /// Constants visible to every recipe under `vars`.
    pub vars: Option<Value>,
    /// Named calls: `NAME: { call: connector.action, with: {…} }`.
    #[serde(default)]
    pub scenarios: BTreeMap<String, ScenarioFile>,
    /// Business-hours calendars (README "Time, dates and business hours").
    pub calendars: Option<Value>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    pub description: Option<String>,
    /// `connector.action`.
    pub call: String,
    /// The action's inputs (templates, compiled in each recipe that uses it).
    #[serde(default)]
    pub with: Map<String, Value>,
}

/// The compiled shared definitions.
#[derive(Debug, Default, Clone)]
pub struct Shared {
    /// A mapping (empty when none).
    pub vars: Map<String, Value>,
    pub scenarios: BTreeMap<String, Scenario>,
    pub calendars: Calendars,
}

/// A named call; its `with:` is compiled in each recipe that uses it, in
/// that recipe's scope.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub call: String,
    pub with: Map<String, Value>,
    /// Where it is defined, for messages.
    pub at: Pos,
}

/// Load `dir/_shared.yaml` (nothing when it does not exist).
pub fn load(dir: &Path, connectors: &Connectors, errors: &mut Vec<LoadError>) -> Shared {
    let path = dir.join(FILE);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Shared::default();
    };
    let (file, map) = match crate::yaml::load::<SharedFile>(&path, &text) {
        Ok(v) => v,
        Err(e) => {
            errors.push(e);
            return Shared::default();
        }
    };
    let mut shared = Shared::default();
    match file.vars {
        None | Some(Value::Null) => {}
        Some(Value::Object(vars)) => shared.vars = vars,
        Some(_) => errors.push(map.error("/vars", "`vars:` must be a mapping of names to values")),
    }
    for (name, s) in file.scenarios {
        let p = format!("/scenarios/{}", crate::yaml::escape(&name));
        if let Err(msg) = resolve(&s.call, connectors) {
            errors.push(map.error(&format!("{p}/call"), msg));
            continue;
        }
        shared.scenarios.insert(
            name,
            Scenario {
                call: s.call,
                with: s.with,
                at: map.locate_key(&p),
            },
        );
    }
    if let Some(section) = &file.calendars {
        match crate::time::calendar::compile_all(section) {
            Ok(c) => shared.calendars = c,
            Err(errs) => {
                for (p, m) in errs {
                    errors.push(map.error(&format!("/calendars{p}"), m));
                }
            }
        }
    }
    shared
}

/// What an unknown scenario name gets told.
pub fn unknown_scenario(name: &str, shared: &Shared) -> String {
    format!(
        "unknown scenario `{name}`, expected one of the `scenarios:` of recipes/{FILE}: {}",
        list(sorted(shared.scenarios.keys()).iter())
    )
}

/// `over` merged onto `base`: mappings key by key (recursively), anything
/// else replaced.
pub fn merge(base: &Map<String, Value>, over: &BTreeMap<String, Value>) -> BTreeMap<String, Value> {
    let mut out: BTreeMap<String, Value> = base.clone().into_iter().collect();
    for (k, v) in over {
        let merged = match (out.get(k), v) {
            (Some(Value::Object(a)), Value::Object(b)) => {
                let b: BTreeMap<String, Value> = b.clone().into_iter().collect();
                Value::Object(merge(a, &b).into_iter().collect())
            }
            _ => v.clone(),
        };
        out.insert(k.clone(), merged);
    }
    out
}
