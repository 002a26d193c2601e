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
    /// A burst of events with the same rendered key makes one run, with the
    /// burst's last event, once no event came for `quiet` (at most `max`
    /// after the first): `{ key: "{{ event.ticket.id }}", quiet: 30s, max: 5m }`.
    #[serde(default)]
    pub debounce: Option<DebounceFile>,
    /// Ordered steps.
    #[serde(default)]
    pub steps: Vec<StepFile>,
    /// Unit tests: sample events run against mocked actions by
    /// `switchboard test`, offline (README "Testing recipes").
    #[serde(default)]
    pub tests: Vec<TestFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebounceFile {
    /// Template over `{event, vars}`.
    pub key: String,
    /// How long no event of the key must arrive before the run starts (`30s`).
    pub quiet: String,
    /// Longest a run is put off after the burst's first event (default 10 × `quiet`).
    #[serde(default)]
    pub max: Option<String>,
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

/// `on:` — a webhook event (`connector` + `event`) or a schedule
/// (`schedule` + optional `timezone` and `missed`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trigger {
    /// Connector whose webhook delivers the event.
    #[serde(default)]
    pub connector: Option<String>,
    /// Event type, as the connector's `webhook.event_type` reads it.
    #[serde(default)]
    pub event: Option<String>,
    /// A cron expression (`"0 9 * * MON-FRI"`; six fields for seconds).
    #[serde(default)]
    pub schedule: Option<String>,
    /// tz database zone the schedule's wall-clock times are in (default `UTC`).
    #[serde(default)]
    pub timezone: Option<String>,
    /// Slots that passed while the hub was down: `latest` (default) fires
    /// the latest of them once, `skip` fires none.
    #[serde(default)]
    pub missed: Option<Missed>,
}

/// What a schedule does about slots missed while the hub was down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Missed {
    #[default]
    Latest,
    Skip,
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

/// One recipe test: an event, what each action called answers, and what the
/// run must do. Nothing leaves the process: every call is answered by `mock`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    /// Unique in the recipe; printed as `recipe › name`.
    pub name: String,
    /// The webhook body, as the connector would deliver it.
    pub event: Value,
    /// The event type, for connectors that read it from a header
    /// (`webhook.event_type: { header: ... }`). Otherwise it is read from
    /// `event` as ingress reads it (a body path, or the connector's fixed value).
    #[serde(default)]
    pub event_type: Option<String>,
    /// `connector.action` → the step output that action answers (it stands
    /// for the action's `output:` fields), or `{ error: { status, body } }`
    /// to make the call fail with that HTTP status. A call without a mock
    /// fails the test, naming the call.
    #[serde(default)]
    pub mock: BTreeMap<String, Value>,
    /// Every `connector.action` called, in order (`[]` when none is).
    pub expect_calls: Vec<String>,
    /// Step id → inputs that step's `with:` must render to (a subset of its
    /// inputs; each value compared exactly, as JSON).
    #[serde(default)]
    pub expect_inputs: BTreeMap<String, BTreeMap<String, Value>>,
    /// How the run must end (default `succeeded`).
    #[serde(default)]
    pub expect_status: Option<TestStatus>,
    /// The test's clock at the event (RFC 3339, e.g. `2025-12-01T09:30:00+01:00`):
    /// what `now()` and `within_business_hours` see. Default: the real time.
    #[serde(default)]
    pub now: Option<String>,
}

/// How a tested run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TestStatus {
    /// Every step succeeded or was skipped by its own `if`.
    Succeeded,
    /// A step failed: a mocked error, an input that does not render, a call without a mock.
    Failed,
    /// No run: the event's type is not the trigger, or the recipe's `if` does not hold.
    Skipped,
}

impl std::fmt::Display for TestStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TestStatus::Succeeded => "succeeded",
            TestStatus::Failed => "failed",
            TestStatus::Skipped => "skipped",
        })
    }
}

/// `mock: { connector.action: { error: ... } }`: the call fails.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MockErrorFile {
    /// HTTP status of the failed call, 400–599.
    pub status: u16,
    /// The answer's body (text, or JSON written as YAML), shown in the error.
    #[serde(default)]
    pub body: Value,
}
