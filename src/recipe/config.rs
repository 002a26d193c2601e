//! The recipe file format, as serde types. The doc comments here are the
//! reference for recipe authors (README "Recipe files" mirrors them).

use crate::duration::HumanDuration;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// The JSON Schema (2020-12) of a recipe file, generated from
/// [`RecipeFile`] and the types under it, the same types that parse the
/// file (`switchboard schema recipe`; editors read it through
/// yaml-language-server). Conditions and templated values are JSON values
/// in the types, so the schema accepts any value there; `check` reads them.
pub fn schema() -> Value {
    schemars::schema_for!(RecipeFile).to_value()
}

/// `recipes/NAME.yaml`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecipeFile {
    /// Unique among recipes; shown in runs.
    pub name: String,
    /// What the recipe is for, for people reading it.
    pub description: Option<String>,
    /// The trigger: a connector's webhook event type.
    pub on: Trigger,
    /// Constants for templates and conditions: `{{ vars.NAME }}`, `$.vars.NAME`.
    #[serde(default)]
    pub vars: Value,
    /// Conditions over `{event, vars}`; the recipe runs only when they hold.
    #[serde(rename = "if")]
    pub condition: Option<Value>,
    /// Runs with the same rendered key run one after another (or `limit` at
    /// a time), in arrival order: `{ key: "{{ event.ticket.id }}", limit: 1 }`.
    pub concurrency: Option<ConcurrencyFile>,
    /// A burst of events with the same rendered key makes one run, with the
    /// burst's last event, once no event came for `quiet` (at most `max`
    /// after the first): `{ key: "{{ event.ticket.id }}", quiet: 30s, max: 5m }`.
    pub debounce: Option<DebounceFile>,
    /// The webhook's immediate answer to its sender (Slack slash commands,
    /// forms): `{ status, content_type, body }`, rendered over `{event, vars,
    /// run}` once the event is stored. Default: `202` with the event and run ids.
    pub reply: Option<ReplyFile>,
    /// Stop a recipe that keeps firing for one object (it retriggers itself):
    /// `{ key: "{{ event.ticket.id }}", max: 5, within: 10m }` — a run that
    /// is the key's `max + 1`th within `within` ends `skipped` with the
    /// reason "loop breaker: …" before its first step, and so does every
    /// further one until the window has passed. On by default (5 in 10m,
    /// the connector's `webhook.object_key`) for a recipe that calls an
    /// action causing its own trigger event; `loop_breaker: off` turns it off.
    pub loop_breaker: Option<LoopBreakerSetting>,
    /// Events that cancel this recipe's waiting runs (a `wait`/`wait_for`
    /// step parks them): `[ { event, connector?, key, match?, if? } ]`.
    #[serde(default)]
    pub cancel_on: Vec<CancelOnFile>,
    /// Ordered steps.
    #[serde(default)]
    pub steps: Vec<StepFile>,
    /// Unit tests: sample events run against mocked actions by
    /// `switchboard test`, offline (README "Testing recipes").
    #[serde(default)]
    pub tests: Vec<TestFile>,
}

/// `loop_breaker:` of a recipe: `off`, or the breaker's settings.
#[derive(Debug)]
pub enum LoopBreakerSetting {
    Off,
    On(LoopBreakerFile),
}

impl<'de> Deserialize<'de> for LoopBreakerSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = LoopBreakerSetting;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("`off` or a mapping `{ key, max, within }`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match v {
                    "off" => Ok(LoopBreakerSetting::Off),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
                match v {
                    false => Ok(LoopBreakerSetting::Off),
                    true => Err(E::invalid_value(serde::de::Unexpected::Bool(v), &self)),
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                LoopBreakerFile::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(LoopBreakerSetting::On)
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for LoopBreakerSetting {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "LoopBreakerSetting".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let file = generator.subschema_for::<LoopBreakerFile>();
        schemars::json_schema!({
            "description": "`off` (or `false`): no loop breaker, not even the default one; or the breaker's settings.",
            "oneOf": [ { "const": "off" }, { "const": false }, file ]
        })
    }
}

/// `loop_breaker: { key, max, within }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoopBreakerFile {
    /// Template over the run's context: the object (a ticket id). Default:
    /// the trigger connector's `webhook.object_key`.
    pub key: Option<String>,
    /// Runs per key allowed within the window (default 5).
    pub max: Option<u32>,
    /// The window (default 10m).
    pub within: Option<String>,
}

/// `reply:` — what the sender of the triggering webhook gets back.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplyFile {
    /// HTTP status, 200-299 (default 200).
    pub status: Option<u16>,
    /// Default `application/json` when `body` is a mapping or a list,
    /// `text/plain; charset=utf-8` when it is a string.
    pub content_type: Option<String>,
    /// A mapping or list (sent as JSON, every string a template), or a
    /// string template (sent as text).
    pub body: Value,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DebounceFile {
    /// Template over `{event, vars}`.
    pub key: String,
    /// How long no event of the key must arrive before the run starts (`30s`).
    pub quiet: String,
    /// Longest a run is put off after the burst's first event (default 10 × `quiet`).
    pub max: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyFile {
    /// Template over `{event, vars}`.
    pub key: String,
    /// Runs of one key at a time (default 1).
    pub limit: Option<u32>,
}

/// `on:` — a connector's event (`connector` + `event`: pushed to its
/// webhook or found by one of its `polls:`) or a schedule (`schedule` +
/// optional `timezone` and `missed`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Trigger {
    /// Connector whose webhook delivers the event, or whose poll finds it.
    pub connector: Option<String>,
    /// Event type, as the connector's `webhook.event_type` reads it (or a
    /// poll's `event.type`, by default the poll's name).
    pub event: Option<String>,
    /// A cron expression (`"0 9 * * MON-FRI"`; six fields for seconds).
    pub schedule: Option<String>,
    /// tz database zone the schedule's wall-clock times are in (default `UTC`).
    pub timezone: Option<String>,
    /// Slots that passed while the hub was down: `latest` (default) fires
    /// the latest of them once, `skip` fires none.
    pub missed: Option<Missed>,
}

/// What a schedule does about slots missed while the hub was down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum Missed {
    #[default]
    Latest,
    Skip,
}

/// One step: `id`, `if`, and exactly one *kind key* (`call`, `set`, `stop`,
/// `switch`, `for_each`, …) with that kind's own keys beside it (`with:` for
/// `call`, `steps:`/`as:` for `for_each`). The loader needs one struct, so
/// every kind key is an optional field here; compilation
/// (`recipe::steps`) checks that exactly one is given and turns the step into
/// a `StepKind` whose variant owns its fields.
///
/// Adding a kind: an optional field here, its name in [`KIND_KEYS`], a
/// variant in `recipe::steps::StepKind` with its compile function, and an
/// execute function in `engine::steps`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepFile {
    /// Later steps read this step's output as `steps.<id>`. Unique in the
    /// recipe, nested steps included.
    pub id: Option<String>,
    /// Conditions over `{event, steps, vars}`; the step is skipped when they do not hold.
    #[serde(rename = "if")]
    pub condition: Option<Value>,

    /// `call: connector.action`: call a connector's action with `with:`.
    pub call: Option<String>,
    /// The action's inputs; every string is a template over `{event, steps, vars, run}`.
    pub with: Option<BTreeMap<String, Value>>,

    /// `scenario: NAME`: the named call of `recipes/_shared.yaml`, with this
    /// step's `with:` merged over the scenario's.
    pub scenario: Option<String>,

    /// `set: { name: template, … }`: computed values, read later as `steps.<id>.<name>`.
    pub set: Option<BTreeMap<String, Value>>,

    /// `stop: { reason, status }`: end the run here (`succeeded` or `skipped`).
    pub stop: Option<StopFile>,

    /// `switch: [ { when: [conditions], steps: […] }, …, { else: […] } ]`:
    /// run the steps of the first case whose `when` holds.
    pub switch: Option<Vec<CaseFile>>,

    /// `for_each: "{{ template }}"` (a list) with `steps:`: run the steps once per item.
    pub for_each: Option<Value>,
    /// The steps of a `for_each`.
    pub steps: Option<Vec<StepFile>>,
    /// The name the current item has in templates (default `item`); its
    /// position is `<as>_index` (0-based).
    #[serde(rename = "as")]
    pub as_name: Option<String>,

    /// `state: { get | set | set_if_absent | delete | incr: key, … }`: recipe state.
    pub state: Option<StateFile>,

    /// `assign: { from, strategy, … }`: pick an agent.
    pub assign: Option<AssignFile>,
    /// `wait: 3d`: park the run for a duration (at most 366 d).
    pub wait: Option<String>,
    /// `wait_until: "{{ ... }}"`: park the run until a time (at most 366 d ahead).
    pub wait_until: Option<String>,
    /// `wait_for: { event, connector?, key, match?, if?, timeout }`: park the
    /// run until a correlated event arrives, or the timeout passes.
    pub wait_for: Option<WaitForFile>,
}

/// `wait_for:` of a step.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitForFile {
    /// Event type awaited.
    pub event: String,
    /// Connector whose webhook sends it (default: the recipe's trigger connector).
    pub connector: Option<String>,
    /// Template over this run's context: the correlation value (a ticket id).
    pub key: String,
    /// Template over the incoming event (`{event, vars, run}`) giving its
    /// correlation value; default: `key`'s template.
    #[serde(rename = "match")]
    pub matcher: Option<String>,
    /// Conditions over the incoming event (`{event, vars, run}`).
    #[serde(rename = "if")]
    pub condition: Option<Value>,
    /// How long to wait (at most 366 d).
    pub timeout: String,
    /// Count `timeout` in the business hours of this calendar of
    /// `_shared.yaml` (`12h` = twelve open hours, from the next opening).
    pub calendar: Option<String>,
}

/// One `cancel_on:` entry of a recipe.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelOnFile {
    /// Event type that cancels.
    pub event: String,
    /// Connector whose webhook sends it (default: the recipe's trigger connector).
    pub connector: Option<String>,
    /// Template over this run's context: the correlation value (a ticket id).
    pub key: String,
    /// Template over the incoming event giving its correlation value; default: `key`'s template.
    #[serde(rename = "match")]
    pub matcher: Option<String>,
    /// Conditions over the incoming event (`{event, vars, run}`).
    #[serde(rename = "if")]
    pub condition: Option<Value>,
}

/// The kind keys of a step, in the order error messages list them. A step
/// has exactly one.
pub const KIND_KEYS: &[&str] = &[
    "call",
    "scenario",
    "wait",
    "wait_until",
    "wait_for",
    "set",
    "stop",
    "for_each",
    "switch",
    "state",
    "assign",
];

impl StepFile {
    /// The kind keys this step gives, with their JSON pointer suffix.
    pub fn kinds(&self) -> Vec<&'static str> {
        [
            ("call", self.call.is_some()),
            ("scenario", self.scenario.is_some()),
            ("set", self.set.is_some()),
            ("stop", self.stop.is_some()),
            ("for_each", self.for_each.is_some()),
            ("switch", self.switch.is_some()),
            ("state", self.state.is_some()),
            ("assign", self.assign.is_some()),
            ("wait", self.wait.is_some()),
            ("wait_until", self.wait_until.is_some()),
            ("wait_for", self.wait_for.is_some()),
        ]
        .into_iter()
        .filter_map(|(kind, given)| given.then_some(kind))
        .collect()
    }
}

/// `stop:` — ends the run early.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StopFile {
    /// Why, shown on the run (a template over the run context).
    pub reason: String,
    /// How the run ends: `succeeded` (default) or `skipped`.
    pub status: Option<String>,
}

/// One case of a `switch:`: `when:` conditions and the `steps:` to run, or
/// `else:` steps (last, at most one).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    /// Conditions, as in `if:`.
    pub when: Option<Value>,
    /// The steps run when `when` holds.
    pub steps: Option<Vec<StepFile>>,
    /// The steps run when no case holds.
    #[serde(rename = "else")]
    pub otherwise: Option<Vec<StepFile>>,
}

/// One recipe test: an event, what each action called answers, and what the
/// run must do. Nothing leaves the process: every call is answered by `mock`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    /// Unique in the recipe; printed as `recipe › name`.
    pub name: String,
    /// The webhook body, as the connector would deliver it.
    pub event: Value,
    /// The event type, for connectors that read it from a header
    /// (`webhook.event_type: { header: ... }`). Otherwise it is read from
    /// `event` as ingress reads it (a body path, or the connector's fixed value).
    pub event_type: Option<String>,
    /// What a call answers, keyed by `connector.action`, by the id of a
    /// step that calls one (every call of that step), or by one instance's
    /// path (`each[1].tag`: the second item of loop `each`); the most
    /// precise key wins. A value is the step output (it stands for the
    /// action's `output:` fields), `{ error: { status, body } }` to make the
    /// call fail with that HTTP status, or `{ sequence: [...] }` to answer
    /// successive calls in order. A call without a mock fails the test,
    /// naming the call.
    #[serde(default)]
    pub mock: BTreeMap<String, Value>,
    /// Every `connector.action` called, in order (`[]` when none is).
    pub expect_calls: Vec<String>,
    /// Step id → inputs that step's `with:` must render to (a subset of its
    /// inputs; each value compared exactly, as JSON).
    #[serde(default)]
    pub expect_inputs: BTreeMap<String, BTreeMap<String, Value>>,
    /// How the run must end (default `succeeded`).
    pub expect_status: Option<TestStatus>,
    /// What happens after the event, in order, on the test's virtual clock:
    /// `{ advance: 12h }` moves the clock (a wait whose time came resumes),
    /// `{ event: {...}, connector?, event_type? }` delivers another event
    /// (it may wake a `wait_for` or cancel the run). Nothing really waits.
    #[serde(default)]
    pub then: Vec<ThenFile>,
    /// The test's clock at the event (RFC 3339, e.g. `2025-12-01T09:30:00+01:00`):
    /// what `now()` and `within_business_hours` see. Default: the real time.
    pub now: Option<String>,
    /// Recipe state before the event (each test starts with none):
    /// `[{ key, value }]` for values, `[{ key, count: 2, window: 24h }]` for
    /// a window counter holding `count` events at the test's clock;
    /// `namespace:` defaults to the recipe's name.
    #[serde(default)]
    pub state: Vec<StateSeedFile>,
}

/// One entry of a test's `state:`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StateSeedFile {
    /// The state key (as a `state:` step would render it).
    pub key: String,
    /// Default: the recipe's name.
    pub namespace: Option<String>,
    /// A value (with neither `count` nor `window`).
    pub value: Option<Value>,
    /// A window counter holding this many events at the test's clock (with `window`).
    pub count: Option<i64>,
    /// The counter's window (`24h`).
    pub window: Option<HumanDuration>,
}

/// One step of a test's story after its event.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ThenFile {
    /// Move the virtual clock forward (`30s`, `12h`, `3d`).
    pub advance: Option<String>,
    /// Deliver another event (a webhook body).
    pub event: Option<Value>,
    /// Its connector (default: the recipe's trigger connector).
    pub connector: Option<String>,
    /// Its event type, where the connector reads it from a header.
    pub event_type: Option<String>,
}

/// How a tested run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TestStatus {
    /// Every step succeeded or was skipped by its own `if`.
    Succeeded,
    /// A step failed: a mocked error, an input that does not render, a call without a mock.
    Failed,
    /// No run: the event's type is not the trigger, or the recipe's `if` does not hold.
    Skipped,
    /// Still parked in a wait when the test's story (`then:`) ends.
    Waiting,
    /// Ended by a `cancel_on` event of the story.
    Cancelled,
}

impl std::fmt::Display for TestStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TestStatus::Succeeded => "succeeded",
            TestStatus::Failed => "failed",
            TestStatus::Skipped => "skipped",
            TestStatus::Waiting => "waiting",
            TestStatus::Cancelled => "cancelled",
        })
    }
}

/// `mock: { connector.action: { error: ... } }`: the call fails.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MockErrorFile {
    /// HTTP status of the failed call, 400–599.
    pub status: u16,
    /// The answer's body (text, or JSON written as YAML), shown in the error.
    #[serde(default)]
    pub body: Value,
}

/// `state:` — recipe state (README "Remembering things"). Exactly one
/// operation key, whose value is the key (a template over the run context):
/// `get`, `set` / `set_if_absent` (with `value:`, optional `ttl:`), `delete`,
/// `incr` (optional `by:`, `window:` for a sliding-window count, `ttl:`).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StateFile {
    /// Output `{found, value}`.
    pub get: Option<String>,
    /// Output `{set: true, value}`.
    pub set: Option<String>,
    /// Output `{set, value}`: `set` false when the key already held a value (`value` is that one).
    pub set_if_absent: Option<String>,
    /// Output `{deleted}`.
    pub delete: Option<String>,
    /// Output `{count}`.
    pub incr: Option<String>,
    /// What `set` / `set_if_absent` store (templates allowed; any JSON type).
    pub value: Option<Value>,
    /// The value expires this long after the write (`30m`, `24h`, `30d`).
    pub ttl: Option<HumanDuration>,
    /// `incr` counts the events of this last period (`24h`) instead of keeping a total.
    pub window: Option<HumanDuration>,
    /// What `incr` adds (default 1; may be negative without `window`).
    pub by: Option<i64>,
    /// Default: the recipe's name. Recipes that share state name the same namespace.
    pub namespace: Option<String>,
}

/// `assign:` — pick an agent (README "Assigning").
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AssignFile {
    /// The agents: a list, or a template rendering to one (`"{{ vars.agents }}"`).
    pub from: Value,
    /// `round_robin` (default) or `least_loaded`.
    pub strategy: Option<String>,
    /// The rotation's key (template); default: the step's id. Steps with the same key share a rotation.
    pub key: Option<String>,
    /// Default: the recipe's name.
    pub namespace: Option<String>,
    /// An agent's id (template over `agent`); default: the item when it is
    /// a string or number, else its `id` field.
    pub id: Option<String>,
    /// Rules (conditions over `{agent, event, steps, vars}`); an agent for whom any holds is skipped.
    #[serde(default)]
    pub skip: Vec<Value>,
    /// Each agent's load: a template over `agent` rendering to a number, or
    /// `{ key: "open:{{ agent }}", add: 1 }`, a state value per agent that
    /// the assignment increases by `add` (default 1) for the picked agent.
    pub load: Option<LoadFile>,
    /// Agents whose load is at or above this are skipped.
    pub capacity: Option<f64>,
}

/// `load:` of an `assign:`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum LoadFile {
    Template(String),
    State {
        /// State key of an agent's load (template over `agent`).
        key: String,
        /// What the assignment adds to the picked agent's load (default 1).
        add: Option<i64>,
    },
}
