//! The recipe file format, as serde types. The doc comments here are the
//! reference for recipe authors (README "Recipe files" mirrors them).

use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// `recipes/NAME.yaml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeFile {
    /// Unique among recipes; shown in runs.
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// The trigger: a connector's webhook event type.
    pub on: Trigger,
    /// Constants for templates and conditions: `{{ vars.NAME }}`, `$.vars.NAME`.
    #[serde(default)]
    pub vars: Value,
    /// Conditions over `{event, vars}`; the recipe runs only when they hold.
    #[serde(default, rename = "if")]
    pub condition: Option<Value>,
    /// Runs with the same rendered key run one after another (or `limit` at
    /// a time), in arrival order: `{ key: "{{ event.ticket.id }}", limit: 1 }`.
    #[serde(default)]
    pub concurrency: Option<ConcurrencyFile>,
    /// Ordered steps.
    #[serde(default)]
    pub steps: Vec<StepFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyFile {
    /// Template over `{event, vars}`.
    pub key: String,
    /// Runs of one key at a time (default 1).
    #[serde(default)]
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trigger {
    /// Connector whose webhook delivers the event.
    pub connector: String,
    /// Event type, as the connector's `webhook.event_type` reads it.
    pub event: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepFile {
    /// Later steps read this step's output as `steps.<id>`.
    #[serde(default)]
    pub id: Option<String>,
    /// `connector.action`.
    pub call: String,
    /// The action's inputs; every string is a template over `{event, steps, vars, run}`.
    #[serde(default)]
    pub with: BTreeMap<String, Value>,
    /// Conditions over `{event, steps, vars}`; the step is skipped when they do not hold.
    #[serde(default, rename = "if")]
    pub condition: Option<Value>,
}
