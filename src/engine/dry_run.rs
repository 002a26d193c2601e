//! Dry runs: a recipe run for one event with every call answered by a mock,
//! for `switchboard test` and the recipe files' `tests:`.
//!
//! A dry run does what the hub would do with the event — the trigger index and
//! the recipe's `if` ([`Catalog::triggered`], as `Engine::accept`), then each
//! step's `if`, its rendered `with:` and the `steps.<id>` context through the
//! same [`super::step`] functions the worker uses — except that a call returns
//! the test's mock instead of going out. A failed call fails the run at once
//! (no retries: what the hub would retry and then dead-letter is reported as
//! `failed`, with a note).
//!
//! Invariant: no I/O. This module never sees the HTTP client (the engine owns
//! it; a dry run takes only the [`Catalog`]), so no test can reach an API.

use super::step::{self, Host, Next, Outcome};
use super::Catalog;
use crate::connector::http::{redact_value, CallError};
use crate::recipe::{Mock, Recipe, RecipeTest, StateSeed, Story, TestStatus};
use crate::store::state::{MemoryState, StateKey, StateOp, StateOutput};
use crate::store::{Listen, Parked, RunStatus, StepRecord, StepStatus};
use serde_json::Value;
use std::collections::BTreeMap;
use std::future::Future;

/// The run id and event id templates see in a dry run (`{{ run.id }}`).
pub const DRY_RUN_ID: &str = "dry-run";

/// One call a dry run made.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// The step instance's path id (the step id at the top level).
    pub step: String,
    /// `connector.action`.
    pub call: String,
    /// The rendered `with:` inputs (not redacted).
    pub input: Value,
}

/// What a dry run did.
#[derive(Debug, Clone, PartialEq)]
pub struct DryRun {
    pub status: TestStatus,
    /// Every call made, in order; a call that failed or had no mock included.
    pub calls: Vec<Call>,
    /// Why the run failed, as the hub would record it on the run.
    pub error: Option<String>,
    /// Why a `stop` step ended the run.
    pub reason: Option<String>,
    /// The position in `calls` of a call that had no mock (the run stopped there).
    pub unmocked: Option<usize>,
    /// The step records, as the hub would keep them on the run.
    pub records: Vec<StepRecord>,
}

/// The dry run's side of the executor: calls answered by mocks, records in memory.
struct DryHost<'a> {
    mocks: &'a BTreeMap<String, Mock>,
    /// Calls answered so far by each mock (its key), for `sequence` mocks.
    used: BTreeMap<String, usize>,
    out: DryRun,
    /// Recipe state of this test, in memory (no store is touched).
    state: &'a mut MemoryState,
    /// The test's clock.
    now: i64,
    /// The run's parked state while a wait step holds it.
    parked: Option<Parked>,
    /// Bodies of the story's events, by id (what a woken `wait_for` reads).
    events: BTreeMap<String, Value>,
}

impl Host for DryHost<'_> {
    fn records(&self) -> &[StepRecord] {
        &self.out.records
    }

    fn records_mut(&mut self) -> &mut Vec<StepRecord> {
        &mut self.out.records
    }

    fn parked(&self) -> Option<&Parked> {
        self.parked.as_ref()
    }

    fn park(&mut self, parked: Parked) -> impl Future<Output = ()> + Send {
        self.parked = Some(parked);
        std::future::ready(())
    }

    fn unpark(&mut self) {
        self.parked = None;
    }

    fn event(&mut self, id: &str) -> impl Future<Output = Option<Value>> + Send {
        std::future::ready(self.events.get(id).cloned())
    }

    fn call(&mut self, call: step::Call<'_>) -> impl Future<Output = (StepRecord, Next)> + Send {
        let name = call.step.name();
        let mut record = StepRecord {
            input: call.input.clone(),
            attempts: 1,
            ..StepRecord::new(call.path, name.clone(), StepStatus::Succeeded, 0)
        };
        self.out.calls.push(Call {
            step: call.path.to_string(),
            call: name.clone(),
            input: call.input,
        });
        let fail_when = call.step.action.fail_when.as_ref();
        // This instance's mock (by its path, `each[1].note`), else the
        // step's (by its id: the path's last part, `note`), else the
        // action's; a `sequence` gives its next answer.
        let id = call.path.rsplit('.').next().unwrap_or(call.path);
        let mocks = self.mocks;
        let found = [call.path, id, name.as_str()]
            .into_iter()
            .find_map(|k| mocks.get(k).map(|m| (k.to_string(), m)));
        let mut exhausted = None;
        let answer = match found {
            Some((key, Mock::Sequence(items))) => {
                let n = self.used.entry(key.clone()).or_insert(0);
                *n += 1;
                let got = items.get(*n - 1);
                if got.is_none() {
                    exhausted = Some(format!(
                        "mock `{key}` has {} answer(s) in its `sequence`, and this is call {} of it",
                        items.len(),
                        n
                    ));
                }
                got
            }
            Some((_, m)) => Some(m),
            None => None,
        };
        let next = match (answer, exhausted) {
            (None, Some(why)) => {
                record.status = StepStatus::Failed;
                record.error = Some(why);
                Next::End(RunStatus::Failed)
            }
            (answer, _) => match answer {
                // A mocked answer is checked against the action's `fail_when:`
                // as if it were the response (Slack's `{ok: false}`).
                Some(Mock::Output(v)) => match fail_when.and_then(|f| f.check(v)) {
                    Some(why) => {
                        record.status = StepStatus::Failed;
                        record.http_status = Some(200);
                        record.output = v.clone();
                        record.error = Some(CallError::Answer(why).to_string());
                        Next::End(RunStatus::Failed)
                    }
                    None => {
                        record.output = v.clone();
                        Next::Continue
                    }
                },
                Some(Mock::Error { status, body }) => {
                    let e = CallError::Status { status: *status };
                    let mut msg = e.to_string();
                    if !body.is_empty() {
                        msg.push_str(&format!(": {body}"));
                    }
                    if e.retryable() {
                        msg.push_str(
                        " (the hub would retry this call and make the run dead if it kept failing)",
                    );
                    }
                    record.status = StepStatus::Failed;
                    record.http_status = Some(*status);
                    record.error = Some(msg);
                    Next::End(RunStatus::Failed)
                }
                // A sequence holds no sequence (compile refuses it).
                Some(Mock::Sequence(_)) | None => {
                    self.out.unmocked = Some(self.out.calls.len() - 1);
                    record.status = StepStatus::Failed;
                    record.error = Some(format!("`{name}` has no mock"));
                    Next::End(RunStatus::Failed)
                }
            },
        };
        std::future::ready((record, next))
    }

    fn state<F>(
        &mut self,
        op: StateOp,
        record: F,
    ) -> impl Future<Output = Option<(StateOutput, StepRecord)>> + Send
    where
        F: FnOnce(&StateOutput) -> StepRecord + Send,
    {
        // The same operations as the store's, on memory.
        let out = self
            .state
            .apply(&op, self.now)
            .unwrap_or_else(|e| StateOutput::Failed {
                reason: e.to_string(),
            });
        let r = record(&out);
        std::future::ready(Some((out, r)))
    }
}

/// Run `recipe` for `event` of `event_type` as the hub would, answering each
/// call from `mocks` (`connector.action` → answer), then play `story` on
/// the virtual clock while the run waits.
#[allow(clippy::too_many_arguments)]
pub fn run(
    catalog: &Catalog,
    recipe: &Recipe,
    event: &Value,
    event_type: Option<&str>,
    mocks: &BTreeMap<String, Mock>,
    now: i64,
    state: &mut MemoryState,
    story: &[Story],
) -> DryRun {
    let mut host = DryHost {
        state,
        now,
        parked: None,
        events: BTreeMap::new(),
        mocks,
        used: BTreeMap::new(),
        out: DryRun {
            status: TestStatus::Skipped,
            calls: Vec::new(),
            error: None,
            reason: None,
            unmocked: None,
            records: Vec::new(),
        },
    };
    // The trigger, through the same function as `Engine::accept`.
    let mut triggered = false;
    let mut trigger_ctx = Catalog::trigger_context(event.clone(), now);
    catalog.triggered(&recipe.connector, event_type, &mut trigger_ctx, |r, _| {
        triggered |= r.name == recipe.name;
    });
    if !triggered {
        return host.out;
    }
    let mut now = now;
    let mut story = story.iter();
    let mut delivered = 0;
    let outcome = loop {
        host.now = now;
        let ctx = step::context(recipe, DRY_RUN_ID, DRY_RUN_ID, event.clone(), now);
        let outcome = step::walk_at_once(catalog, recipe, &mut host, ctx, "dry run");
        if outcome != Outcome::Suspended || host.parked.is_none() {
            break outcome;
        }
        // Parked in a wait: play the story until the run wakes.
        match play(catalog, &mut host, &mut story, &mut now, &mut delivered) {
            Played::Woke => continue,
            Played::Waiting => {
                host.out.status = TestStatus::Waiting;
                return host.out;
            }
            Played::Cancelled(reason) => {
                host.out.status = TestStatus::Cancelled;
                host.out.reason = Some(reason);
                return host.out;
            }
        }
    };
    let out = &mut host.out;
    match outcome {
        Outcome::Finished => out.status = TestStatus::Succeeded,
        Outcome::Stopped { status, reason } => {
            out.status = if status == RunStatus::Skipped {
                TestStatus::Skipped
            } else {
                TestStatus::Succeeded
            };
            out.reason = Some(reason);
        }
        Outcome::Failed { error, .. } => {
            out.status = TestStatus::Failed;
            out.error = Some(error);
        }
        Outcome::Suspended => {
            out.status = TestStatus::Failed;
            out.error = Some("the run was suspended".into());
        }
    }
    host.out
}

/// How the story went for a parked run.
enum Played {
    /// Its time came or its event arrived: walk again.
    Woke,
    /// The story ended with the run still parked.
    Waiting,
    /// A `cancel_on` event ended it (the reason).
    Cancelled(String),
}

/// Play the story until the parked run wakes: `advance` moves the virtual
/// clock; an event is matched through [`Catalog::probes`], the function
/// ingest uses, against the run's correlation keys.
fn play(
    catalog: &Catalog,
    host: &mut DryHost<'_>,
    story: &mut std::slice::Iter<'_, Story>,
    now: &mut i64,
    delivered: &mut usize,
) -> Played {
    let Some(parked) = host.parked.clone() else {
        return Played::Woke;
    };
    for step in story.by_ref() {
        match step {
            Story::Advance(ms) => {
                *now += ms;
                if *now >= parked.until {
                    return Played::Woke;
                }
            }
            Story::Event {
                connector,
                event_type,
                body,
            } => {
                *delivered += 1;
                let id = format!("dry-event-{delivered}");
                host.events.insert(id.clone(), body.clone());
                let mut ctx = Catalog::trigger_context(body.clone(), *now);
                let probes = catalog.probes(connector, event_type.as_deref(), &mut ctx);
                let hit = probes.iter().find(|p| parked.keys.contains(p));
                match hit.map(|p| p.listen) {
                    Some(Listen::Wake) => {
                        if let Some(p) = host.parked.as_mut() {
                            p.woken_by = Some(id);
                        }
                        return Played::Woke;
                    }
                    Some(Listen::Cancel) => {
                        return Played::Cancelled(format!(
                            "cancelled by event {id} ({connector} {})",
                            event_type.as_deref().unwrap_or_default()
                        ));
                    }
                    None => {}
                }
            }
        }
    }
    Played::Waiting
}

/// Run one of a recipe's tests; the differences from its expectations, one
/// line each (empty when it passes).
pub fn run_test(catalog: &Catalog, recipe: &Recipe, test: &RecipeTest) -> Vec<String> {
    let now = test.now.unwrap_or_else(crate::store::now_ms);
    let mut state = MemoryState::default();
    for (namespace, key, seed) in &test.state {
        let namespace = namespace.as_deref().unwrap_or(&recipe.name);
        let seeded = StateKey::new(namespace, key)
            .map_err(|e| e.to_string())
            .and_then(|key| {
                let op = match seed {
                    StateSeed::Value(v) => StateOp::Set {
                        key,
                        value: v.clone(),
                        ttl_ms: None,
                    },
                    StateSeed::Count { count, window_ms } => StateOp::Incr {
                        key,
                        by: *count,
                        window_ms: Some(*window_ms),
                        ttl_ms: None,
                    },
                };
                state.apply(&op, now).map_err(|e| e.to_string())
            });
        if let Err(e) = seeded {
            return vec![format!("state `{key}` could not be seeded: {e}")];
        }
    }
    let got = run(
        catalog,
        recipe,
        &test.event,
        test.event_type.as_deref(),
        &test.mocks,
        now,
        &mut state,
        &test.then,
    );
    // Values are shown as the hub would record them: with secrets redacted.
    let show = |call: &Call, v: &Value| -> String {
        let v = match call
            .call
            .split_once('.')
            .and_then(|(c, _)| catalog.connectors.get(c))
        {
            Some(c) => redact_value(c, v.clone()),
            None => v.clone(),
        };
        serde_json::to_string(&v).unwrap_or_default()
    };
    let mut diffs = Vec::new();
    if let Some(i) = got.unmocked {
        let c = &got.calls[i];
        diffs.push(format!(
            "call `{}` (step `{}`) has no mock: add `{}:` under `mock:`",
            c.call, c.step, c.call
        ));
    }
    let calls: Vec<&str> = got.calls.iter().map(|c| c.call.as_str()).collect();
    if calls != test.expect_calls {
        diffs.push(expected_got(
            "calls: ",
            &format!("[{}]", test.expect_calls.join(", ")),
            &format!("[{}]", calls.join(", ")),
        ));
    }
    for (id, inputs) in &test.expect_inputs {
        // The step's first call: top-level steps by id, nested ones by path
        // (`each[0].notify`) ending in the id.
        let Some(call) = got
            .calls
            .iter()
            .find(|c| c.step == *id || c.step.rsplit_once('.').is_some_and(|(_, last)| last == id))
        else {
            diffs.push(format!(
                "step `{id}` made no call, so its inputs were not rendered"
            ));
            continue;
        };
        for (name, want) in inputs {
            let want_text = serde_json::to_string(want).unwrap_or_default();
            match call.input.get(name) {
                Some(v) if v == want => {}
                Some(v) => diffs.push(expected_got(
                    &format!("step `{id}` input `{name}`: "),
                    &want_text,
                    &show(call, v),
                )),
                None => diffs.push(format!(
                    "step `{id}` input `{name}`: expected {want_text}, got nothing"
                )),
            }
        }
    }
    // A call without a mock fails the run; that is already said above.
    if got.status != test.expect_status && got.unmocked.is_none() {
        let why = got.error.map(|e| format!(": {e}")).unwrap_or_default();
        diffs.push(format!(
            "status: expected {}, got {}{why}",
            test.expect_status, got.status
        ));
    }
    diffs
}

/// `<what>expected <want>` over `got <got>`, the two values aligned.
fn expected_got(what: &str, want: &str, got: &str) -> String {
    let pad = " ".repeat(what.chars().count() + "expected".len() - "got".len());
    format!("{what}expected {want}\n{pad}got {got}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connector::SecretSource;
    use crate::engine::LoadOptions;
    use serde_json::json;
    use std::path::PathBuf;

    /// The shipped connectors (with placeholder secrets) and one recipe.
    fn catalog(recipe: &str) -> Catalog {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("r.yaml"), recipe).unwrap();
        let opts = LoadOptions {
            connectors_dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("connectors"),
            recipes_dir: dir.path().to_path_buf(),
            secrets: SecretSource::default().with_placeholders(),
            allow_internal: Vec::new(),
        };
        match Catalog::load(&opts) {
            Ok(c) => c,
            Err(errors) => panic!("{errors:#?}"),
        }
    }

    fn mocks(v: Value) -> BTreeMap<String, Mock> {
        v.as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), Mock::Output(v.clone())))
            .collect()
    }

    /// Dry-run the catalog's only recipe for a `ticket.created` event.
    fn dry(catalog: &Catalog, event: Value, mocks: &BTreeMap<String, Mock>) -> DryRun {
        dry_in(catalog, &event, mocks, &mut MemoryState::default())
    }

    /// [`dry`] over recipe state kept from run to run.
    fn dry_in(
        catalog: &Catalog,
        event: &Value,
        mocks: &BTreeMap<String, Mock>,
        state: &mut MemoryState,
    ) -> DryRun {
        let recipe = &catalog.recipes[0];
        run(
            catalog,
            recipe,
            event,
            Some("ticket.created"),
            mocks,
            0,
            state,
            &[],
        )
    }

    /// Each call's step path and rendered inputs.
    fn inputs(got: &DryRun) -> Vec<(&str, &Value)> {
        got.calls
            .iter()
            .map(|c| (c.step.as_str(), &c.input))
            .collect()
    }

    const LOOKUP_AND_NOTE: &str = r#"
name: r
on: { connector: zendesk, event: ticket.created }
vars: { greeting: Hi }
if:
  - "$.event.ticket.subject": { matches: "(?i)setup" }
steps:
  - id: contact
    call: hubspot.search_contact_by_email
    with: { email: "{{ event.ticket.requester.email }}" }
  - id: enroll
    if:
      - "$.steps.contact.lifecycle": { equals: subscriber }
    call: hubspot.enroll_in_workflow
    with: { workflow_id: "1", email: "{{ event.ticket.requester.email }}" }
  - id: note
    call: zendesk.add_internal_note
    with:
      ticket_id: "{{ event.ticket.id }}"
      body: "{{ vars.greeting }} {{ steps.contact.id }} enrolled={{ steps.enroll is not none }} run={{ run.id }}/{{ run.recipe }}"
"#;

    fn ticket(subject: &str) -> Value {
        json!({"type": "ticket.created", "ticket": {"id": 7, "subject": subject, "requester": {"email": "a@b.c"}}})
    }

    #[test]
    fn calls_steps_in_order_with_rendered_inputs_and_mock_outputs() {
        let c = catalog(LOOKUP_AND_NOTE);
        let m = mocks(json!({
            "hubspot.search_contact_by_email": {"id": "42", "lifecycle": "subscriber"},
            "hubspot.enroll_in_workflow": {},
            "zendesk.add_internal_note": {"id": 7},
        }));
        let got = dry(&c, ticket("Setup mail"), &m);
        assert_eq!(got.status, TestStatus::Succeeded, "{:?}", got.error);
        let calls: Vec<(&str, &str)> = got
            .calls
            .iter()
            .map(|c| (c.step.as_str(), c.call.as_str()))
            .collect();
        assert_eq!(
            calls,
            [
                ("contact", "hubspot.search_contact_by_email"),
                ("enroll", "hubspot.enroll_in_workflow"),
                ("note", "zendesk.add_internal_note"),
            ]
        );
        // Typed single expressions keep their type; later steps read earlier outputs.
        assert_eq!(
            got.calls[2].input,
            json!({"ticket_id": 7, "body": "Hi 42 enrolled=True run=dry-run/r"})
        );
    }

    #[test]
    fn a_skipped_step_makes_no_call_and_its_output_is_null() {
        let c = catalog(LOOKUP_AND_NOTE);
        let m = mocks(json!({
            "hubspot.search_contact_by_email": {"id": "42", "lifecycle": "customer"},
            "zendesk.add_internal_note": {"id": 7},
        }));
        let got = dry(&c, ticket("Setup mail"), &m);
        assert_eq!(got.status, TestStatus::Succeeded, "{:?}", got.error);
        assert_eq!(got.calls.len(), 2);
        assert_eq!(
            got.calls[1].input["body"],
            "Hi 42 enrolled=False run=dry-run/r"
        );
    }

    #[test]
    fn no_run_when_the_recipe_if_or_the_event_type_does_not_match() {
        let c = catalog(LOOKUP_AND_NOTE);
        let got = dry(&c, ticket("Refund please"), &BTreeMap::new());
        assert_eq!(got.status, TestStatus::Skipped);
        assert!(got.calls.is_empty());
        let r = &c.recipes[0];
        for t in [Some("ticket.updated"), None] {
            let got = run(
                &c,
                r,
                &ticket("Setup"),
                t,
                &BTreeMap::new(),
                0,
                &mut MemoryState::default(),
                &[],
            );
            assert_eq!(got.status, TestStatus::Skipped, "{t:?}");
        }
    }

    #[test]
    fn a_mocked_error_fails_the_run_at_that_step() {
        let c = catalog(LOOKUP_AND_NOTE);
        let mut m = mocks(json!({"zendesk.add_internal_note": {"id": 7}}));
        m.insert(
            "hubspot.search_contact_by_email".into(),
            Mock::Error {
                status: 503,
                body: "down".into(),
            },
        );
        let got = dry(&c, ticket("Setup"), &m);
        assert_eq!(got.status, TestStatus::Failed);
        assert_eq!(got.calls.len(), 1, "no step runs after the failed one");
        let e = got.error.unwrap();
        assert!(
            e.starts_with("step `contact` (hubspot.search_contact_by_email) failed: HTTP 503: down (the hub would retry"),
            "{e}"
        );
        m.insert(
            "hubspot.search_contact_by_email".into(),
            Mock::Error {
                status: 400,
                body: String::new(),
            },
        );
        let e = dry(&c, ticket("Setup"), &m).error.unwrap();
        assert!(e.ends_with("failed: HTTP 400"), "a 4xx is not retried: {e}");
    }

    #[test]
    fn a_call_without_a_mock_stops_the_run_and_is_named() {
        let c = catalog(LOOKUP_AND_NOTE);
        let got = dry(
            &c,
            ticket("Setup"),
            &mocks(json!({"hubspot.search_contact_by_email": {"id": "1"}})),
        );
        assert_eq!(got.status, TestStatus::Failed);
        assert_eq!(got.unmocked, Some(1));
        assert_eq!(got.calls[1].call, "zendesk.add_internal_note");
    }

    #[test]
    fn an_input_that_does_not_render_fails_the_step_as_in_the_worker() {
        let c = catalog(
            r#"
name: r
on: { connector: zendesk, event: ticket.created }
steps:
  - call: zendesk.add_tags
    with: { ticket_id: "{{ event.ticket.id }}", tags: ["x-{{ event.ticket.missing }}"] }
"#,
        );
        let got = dry(&c, ticket("x"), &BTreeMap::new());
        assert_eq!(got.status, TestStatus::Failed);
        assert!(got.calls.is_empty(), "nothing is called");
        let e = got.error.unwrap();
        // What is missing, and where the input is written.
        assert!(
            e.starts_with(
                "step `step1` (zendesk.add_tags) failed: input `tags`: `event.ticket.missing` is undefined (the event has `event.ticket` but no `missing`) at "
            ) && e.ends_with("r.yaml:6:56"),
            "{e}"
        );
    }

    /// `run_test` on the catalog's only recipe and its only test.
    fn check(recipe_and_test: &str) -> Vec<String> {
        let c = catalog(recipe_and_test);
        let r = &c.recipes[0];
        run_test(&c, r, &r.tests[0])
    }

    #[test]
    fn a_passing_test_has_no_differences() {
        let diffs = check(&format!(
            "{LOOKUP_AND_NOTE}{}",
            r#"
tests:
  - name: pending
    event: { type: ticket.created, ticket: { id: 7, subject: Setup, requester: { email: a@b.c } } }
    mock:
      hubspot.search_contact_by_email: { id: "42", lifecycle: subscriber }
      hubspot.enroll_in_workflow: {}
      zendesk.add_internal_note: { id: 7 }
    expect_calls: [hubspot.search_contact_by_email, hubspot.enroll_in_workflow, zendesk.add_internal_note]
    expect_inputs:
      contact: { email: a@b.c }
      note: { ticket_id: 7 }
"#
        ));
        assert_eq!(diffs, Vec::<String>::new());
    }

    #[test]
    fn differences_name_the_calls_inputs_and_status() {
        let diffs = check(&format!(
            "{LOOKUP_AND_NOTE}{}",
            r#"
tests:
  - name: wrong
    event: { type: ticket.created, ticket: { id: 7, subject: Setup, requester: { email: a@b.c } } }
    mock:
      hubspot.search_contact_by_email: { id: "42", lifecycle: customer }
      zendesk.add_internal_note: { error: { status: 422, body: closed } }
    expect_calls: [hubspot.search_contact_by_email, hubspot.enroll_in_workflow]
    expect_inputs:
      contact: { email: x@y.z }
      enroll: { email: a@b.c }
"#
        ));
        assert_eq!(
            diffs,
            [
                "calls: expected [hubspot.search_contact_by_email, hubspot.enroll_in_workflow]\n            \
                 got [hubspot.search_contact_by_email, zendesk.add_internal_note]",
                "step `contact` input `email`: expected \"x@y.z\"\n                                   \
                 got \"a@b.c\"",
                "step `enroll` made no call, so its inputs were not rendered",
                "status: expected succeeded, got failed: step `note` (zendesk.add_internal_note) failed: HTTP 422: closed",
            ]
        );
    }

    const EACH_THEN_NOTE: &str = r#"
name: r
on: { connector: zendesk, event: ticket.created }
steps:
  - id: each
    for_each: "{{ event.ticket.related }}"
    steps:
      - id: tag
        call: zendesk.add_tags
        with: { ticket_id: "{{ item }}", tags: [a] }
  - id: again
    call: zendesk.add_tags
    with: { ticket_id: "{{ event.ticket.id }}", tags: ["{{ steps.each[1].tags[0] }}"] }
"#;

    #[test]
    fn a_step_mock_wins_over_the_action_mock_and_a_sequence_answers_in_order() {
        let diffs = check(&format!(
            "{EACH_THEN_NOTE}{}",
            r#"
tests:
  - name: per step, in order
    event: { type: ticket.created, ticket: { id: 7, related: [1, 2] } }
    mock:
      tag: { sequence: [ { tags: [first] }, { tags: [second] } ] }
      zendesk.add_tags: { tags: [action] }
    expect_calls: [zendesk.add_tags, zendesk.add_tags, zendesk.add_tags]
    expect_inputs:
      again: { tags: [second] }
"#
        ));
        assert_eq!(diffs, Vec::<String>::new());
    }

    /// One loop item's call mocked by its path (`each[1].tag`): it wins
    /// over the step's and the action's mocks for that item only; a path
    /// naming no step of the recipe is a `check` error.
    #[test]
    fn a_loop_item_can_be_mocked_by_its_path() {
        let c = catalog(&format!(
            "{EACH_THEN_NOTE}{}",
            r#"
tests:
  - name: per item
    event: { type: ticket.created, ticket: { id: 7, related: [1, 2, 3] } }
    mock:
      each[1].tag: { tags: [second] }
      tag: { tags: [other] }
      zendesk.add_tags: { tags: [action] }
    expect_calls: [zendesk.add_tags, zendesk.add_tags, zendesk.add_tags, zendesk.add_tags]
    expect_inputs:
      again: { tags: [second] }
  - name: the second item fails
    event: { type: ticket.created, ticket: { id: 7, related: [1, 2, 3] } }
    mock:
      each[1].tag: { error: { status: 404, body: gone } }
      zendesk.add_tags: { tags: [x] }
    expect_calls: [zendesk.add_tags, zendesk.add_tags]
    expect_status: failed
"#
        ));
        let r = &c.recipes[0];
        assert_eq!(r.tests.len(), 2);
        for t in &r.tests {
            assert_eq!(run_test(&c, r, t), Vec::<String>::new(), "{}", t.name);
        }
        let errors = crate::recipe::steps::tests::errors(&format!(
            "{EACH_THEN_NOTE}{}",
            r#"
tests:
  - name: a loop that is not there
    event: { type: ticket.created, ticket: { id: 7, related: [1] } }
    mock:
      eahc[0].tag: { tags: [x] }
    expect_calls: [zendesk.add_tags]
"#
        ));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].ends_with("mock `eahc[0].tag`: no step `eahc` in this recipe; a path names its loops' and switches' step ids, as `runs show` prints it (`each[1].tag`)"),
            "{errors:?}"
        );
    }

    #[test]
    fn a_sequence_can_fail_a_call_and_runs_out_loudly() {
        let diffs = check(&format!(
            "{EACH_THEN_NOTE}{}",
            r#"
tests:
  - name: the second call fails
    event: { type: ticket.created, ticket: { id: 7, related: [1, 2] } }
    mock:
      tag: { sequence: [ { tags: [x] }, { error: { status: 404, body: gone } } ] }
    expect_calls: [zendesk.add_tags, zendesk.add_tags]
    expect_status: failed
"#
        ));
        assert_eq!(diffs, Vec::<String>::new());
        let diffs = check(&format!(
            "{EACH_THEN_NOTE}{}",
            r#"
tests:
  - name: one answer for three calls
    event: { type: ticket.created, ticket: { id: 7, related: [1, 2] } }
    mock:
      zendesk.add_tags: { sequence: [ { tags: [x] } ] }
    expect_calls: [zendesk.add_tags, zendesk.add_tags]
"#
        ));
        assert_eq!(
            diffs,
            ["status: expected succeeded, got failed: step `each[1].tag` (zendesk.add_tags) failed: mock `zendesk.add_tags` has 1 answer(s) in its `sequence`, and this is call 2 of it"]
        );
    }

    #[test]
    fn a_missing_mock_is_reported_once() {
        let diffs = check(&format!(
            "{LOOKUP_AND_NOTE}{}",
            r#"
tests:
  - name: no mocks
    event: { type: ticket.created, ticket: { id: 7, subject: Setup, requester: { email: a@b.c } } }
    expect_calls: [hubspot.search_contact_by_email]
"#
        ));
        assert_eq!(
            diffs,
            ["call `hubspot.search_contact_by_email` (step `contact`) has no mock: add `hubspot.search_contact_by_email:` under `mock:`"]
        );
    }

    #[test]
    fn an_event_that_does_not_trigger_is_skipped() {
        let diffs = check(&format!(
            "{LOOKUP_AND_NOTE}{}",
            r#"
tests:
  - name: other type
    event: { type: ticket.updated, ticket: { id: 7, subject: Setup, requester: { email: a@b.c } } }
    expect_calls: []
    expect_status: skipped
"#
        ));
        assert_eq!(diffs, Vec::<String>::new());
    }

    const FLOW: &str = r#"
name: r
on: { connector: zendesk, event: ticket.created }
vars: { agents: [ann, bob, cid], vip_min: 3 }
steps:
  - id: totals
    set:
      count: "{{ event.ticket.tags | length }}"
      label: "ticket-{{ event.ticket.id }}"
  - id: route
    switch:
      - when: [ { "$.event.ticket.subject": { matches: "(?i)spam" } } ]
        steps:
          - stop: { reason: "spam {{ steps.totals.label }}", status: skipped }
      - when: [ { "$.steps.totals.count": { gte: 3 } } ]
        steps:
          - id: vip
            call: zendesk.add_tags
            with: { ticket_id: "{{ event.ticket.id }}", tags: [vip] }
      - else:
          - id: plain
            set: { tier: plain }
  - id: each_agent
    for_each: "{{ vars.agents }}"
    as: agent
    steps:
      - id: notify
        if: [ { "$.agent": { not_equals: bob } } ]
        call: zendesk.add_internal_note
        with: { ticket_id: "{{ event.ticket.id }}", body: "{{ agent_index }}:{{ agent }}" }
  - stop: { reason: "done with {{ steps.each_agent | length }}" }
  - id: never
    call: zendesk.add_tags
    with: { ticket_id: 1, tags: [x] }
"#;

    fn flow_event(subject: &str, tags: &[&str]) -> Value {
        json!({"ticket": {"id": 7, "subject": subject, "tags": tags}})
    }

    #[test]
    fn set_switch_for_each_and_stop_walk_the_tree_with_path_ids() {
        let c = catalog(FLOW);
        let m = mocks(
            json!({"zendesk.add_tags": {"tags": ["vip"]}, "zendesk.add_internal_note": {"id": 1}}),
        );
        let got = dry(&c, flow_event("Hello", &["a", "b", "c"]), &m);
        assert_eq!(got.status, TestStatus::Succeeded, "{:?}", got.error);
        assert_eq!(
            inputs(&got),
            [
                ("route.case1.vip", &json!({"ticket_id": 7, "tags": ["vip"]})),
                (
                    "each_agent[0].notify",
                    &json!({"ticket_id": 7, "body": "0:ann"})
                ),
                (
                    "each_agent[2].notify",
                    &json!({"ticket_id": 7, "body": "2:cid"})
                ),
            ]
        );
        assert_eq!(got.reason.as_deref(), Some("done with 3"));
        let ids: Vec<(&str, &str, StepStatus)> = got
            .records
            .iter()
            .map(|r| (r.id.as_str(), r.call.as_str(), r.status))
            .collect();
        assert_eq!(
            ids,
            [
                ("totals", "set", StepStatus::Succeeded),
                ("route", "switch", StepStatus::Succeeded),
                ("route.case1.vip", "zendesk.add_tags", StepStatus::Succeeded),
                ("each_agent", "for_each", StepStatus::Succeeded),
                (
                    "each_agent[0].notify",
                    "zendesk.add_internal_note",
                    StepStatus::Succeeded
                ),
                (
                    "each_agent[1].notify",
                    "zendesk.add_internal_note",
                    StepStatus::Skipped
                ),
                (
                    "each_agent[2].notify",
                    "zendesk.add_internal_note",
                    StepStatus::Succeeded
                ),
                ("step4", "stop", StepStatus::Succeeded),
            ]
        );
        assert_eq!(
            got.records[0].output,
            json!({"count": 3, "label": "ticket-7"})
        );
        assert_eq!(got.records[1].output, json!({"branch": 1}));
        assert_eq!(got.records[3].input, json!(["ann", "bob", "cid"]));
        assert_eq!(got.records[3].output, json!([{"id": 1}, null, {"id": 1}]));

        // The else branch, and a stop that skips the run.
        let got = dry(&c, flow_event("Hello", &[]), &m);
        assert_eq!(got.records[1].output, json!({"branch": 2}));
        assert_eq!(got.records[2].id, "route.else.plain");
        let got = dry(&c, flow_event("SPAM offer", &[]), &m);
        assert_eq!(got.status, TestStatus::Skipped);
        assert_eq!(got.reason.as_deref(), Some("spam ticket-7"));
        assert!(got.calls.is_empty());
    }

    #[test]
    fn for_each_over_a_non_list_or_too_many_items_fails_the_run() {
        let c = catalog(
            r#"
name: r
on: { connector: zendesk, event: ticket.created }
steps:
  - id: each
    for_each: "{{ event.ticket.tags }}"
    steps: [ { set: { t: "{{ item }}" } } ]
"#,
        );
        let got = dry(&c, json!({"ticket": {"tags": "a,b"}}), &BTreeMap::new());
        assert_eq!(got.status, TestStatus::Failed);
        assert_eq!(
            got.error.as_deref(),
            Some("step `each` (for_each) failed: `for_each` needs a list, got a string")
        );
        let many: Vec<u32> = (0..101).collect();
        let got = dry(&c, json!({"ticket": {"tags": many}}), &BTreeMap::new());
        assert_eq!(
            got.error.as_deref(),
            Some("step `each` (for_each) failed: `for_each` over 101 items, more than the maximum of 100")
        );
        let ok: Vec<u32> = (0..100).collect();
        let got = dry(&c, json!({"ticket": {"tags": ok}}), &BTreeMap::new());
        assert_eq!(got.status, TestStatus::Succeeded, "{:?}", got.error);
        assert_eq!(got.records.len(), 101);
        assert_eq!(got.records[100].id, "each[99].each_step1");
    }

    #[test]
    fn a_replay_follows_the_recorded_path_without_calling_again() {
        // Records of a first walk that stopped after the branch and one item.
        let c = catalog(FLOW);
        let r = &c.recipes[0];
        let m = mocks(
            json!({"zendesk.add_tags": {"tags": ["vip"]}, "zendesk.add_internal_note": {"id": 1}}),
        );
        let full = dry(&c, flow_event("Hello", &["a", "b", "c"]), &m);
        let mut state = MemoryState::default();
        let mut host = DryHost {
            state: &mut state,
            now: 0,
            mocks: &m,
            used: BTreeMap::new(),
            parked: None,
            events: BTreeMap::new(),
            out: DryRun {
                status: TestStatus::Skipped,
                calls: Vec::new(),
                error: None,
                reason: None,
                unmocked: None,
                records: full.records[..5].to_vec(),
            },
        };
        // The event changed since: no tags (the `else` branch now) and a spam
        // subject (the first case now). Replay still follows the records.
        let ctx = step::context(r, DRY_RUN_ID, DRY_RUN_ID, flow_event("spam", &[]), 0);
        let outcome = step::walk_at_once(&c, r, &mut host, ctx, "dry run");
        assert_eq!(
            outcome,
            Outcome::Stopped {
                status: RunStatus::Succeeded,
                reason: "done with 3".into()
            }
        );
        let paths: Vec<&str> = host.out.calls.iter().map(|c| c.step.as_str()).collect();
        assert_eq!(
            paths,
            ["each_agent[2].notify"],
            "only the unrecorded call is made"
        );
        assert_eq!(host.out.records.len(), full.records.len());
    }

    /// The worked example of README "Flow" runs as documented.
    #[test]
    fn the_readme_flow_example_runs() {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("### Flow: set, switch, for_each, stop")
            .unwrap();
        let body = &readme[start..];
        let yaml = &body[body.find("```yaml\n").unwrap() + 8..];
        let yaml = &yaml[..yaml.find("```").unwrap()];
        let c = catalog(&format!(
            "name: r\non: {{ connector: zendesk, event: ticket.created }}\nvars: {{ agents: [C1, C2] }}\n{yaml}"
        ));
        let m = mocks(json!({"zendesk.add_tags": {}, "slack.post_message": {"ok": true}}));
        let event = json!({"ticket": {"id": 9, "subject": "Billing", "locale": "de-DE"},
                           "subscription": {"items": [{"amount": 90000}, {"amount": 15000}]}});
        let got = dry(&c, event, &m);
        assert_eq!(got.status, TestStatus::Succeeded, "{:?}", got.error);
        assert_eq!(
            got.records[0].output,
            json!({"mrr": 1050.0, "group": "support-de"})
        );
        assert_eq!(
            inputs(&got),
            [
                ("route.case1.vip", &json!({"ticket_id": 9, "tags": ["vip"]})),
                (
                    "each_agent[0].notify",
                    &json!({"channel": "C1", "text": "#9 (1/2)"})
                ),
                (
                    "each_agent[1].notify",
                    &json!({"channel": "C2", "text": "#9 (2/2)"})
                ),
            ]
        );
        assert_eq!(got.reason.as_deref(), Some("routed to support-de"));
        let spam = json!({"ticket": {"id": 9, "subject": "SPAM", "locale": "xx"}, "subscription": {"items": []}});
        let got = dry(&c, spam, &m);
        assert_eq!(got.status, TestStatus::Skipped, "{:?}", got.error);
        assert_eq!(got.reason.as_deref(), Some("not for us: SPAM"));
    }

    const THIRD_TICKET: &str = r#"
name: r
on: { connector: zendesk, event: ticket.created }
steps:
  - id: recent
    state: { incr: "tickets:{{ event.ticket.requester.email }}", window: 24h }
  - id: pick
    assign: { from: [alice, bob, carol] }
  - id: escalate
    if:
      - "$.steps.recent.count": { gte: 3 }
    call: zendesk.update_ticket
    with:
      ticket_id: "{{ event.ticket.id }}"
      fields: { priority: urgent, assignee: "{{ steps.pick.agent }}" }
tests:
  - name: third ticket escalates
    state:
      - { key: "tickets:a@b.c", count: 2, window: 24h }
      - { key: pick, value: 0 }
    event: { type: ticket.created, ticket: { id: 7, requester: { email: a@b.c } } }
    mock: { zendesk.update_ticket: { id: 7 } }
    expect_calls: [zendesk.update_ticket]
    expect_inputs:
      escalate: { fields: { priority: urgent, assignee: alice } }
  - name: first ticket does not
    event: { type: ticket.created, ticket: { id: 8, requester: { email: a@b.c } } }
    expect_calls: []
"#;

    #[test]
    fn state_steps_use_the_tests_in_memory_state_with_seeds() {
        let c = catalog(THIRD_TICKET);
        let r = &c.recipes[0];
        assert_eq!(r.tests.len(), 2);
        for t in &r.tests {
            assert_eq!(run_test(&c, r, t), Vec::<String>::new(), "{}", t.name);
        }
        // One state for one dry run: counts and rotations carry from run to run.
        let mut state = MemoryState::default();
        let m = mocks(json!({"zendesk.update_ticket": {"id": 7}}));
        let runs: Vec<DryRun> = (0..4)
            .map(|_| {
                run(
                    &c,
                    r,
                    &ticket("x"),
                    Some("ticket.created"),
                    &m,
                    1_000,
                    &mut state,
                    &[],
                )
            })
            .collect();
        let counts: Vec<Value> = runs
            .iter()
            .map(|d| d.records[0].output["count"].clone())
            .collect();
        assert_eq!(counts, [json!(1), json!(2), json!(3), json!(4)]);
        let agents: Vec<Value> = runs
            .iter()
            .map(|d| d.records[1].output["agent"].clone())
            .collect();
        assert_eq!(
            agents,
            [json!("alice"), json!("bob"), json!("carol"), json!("alice")]
        );
        assert_eq!(runs[1].calls.len(), 0);
        assert_eq!(runs[2].calls.len(), 1);
    }

    #[test]
    fn a_state_key_that_renders_empty_fails_the_step_with_the_reason() {
        let c = catalog(
            r#"
name: r
on: { connector: zendesk, event: ticket.created }
steps:
  - id: seen
    state: { set_if_absent: "{{ event.ticket.requester.email | default('') }}", value: true }
"#,
        );
        let event = json!({"type": "ticket.created", "ticket": {"id": 1, "requester": {}}});
        let got = dry(&c, event, &BTreeMap::new());
        assert_eq!(got.status, TestStatus::Failed);
        let e = got.error.unwrap();
        assert!(
            e.contains("step `seen` (state.set_if_absent) failed: the state key is empty (the key `{{ event.ticket.requester.email | default('') }}` rendered \"\")"),
            "{e}"
        );
        let c = catalog(
            r#"
name: r
on: { connector: zendesk, event: ticket.created }
vars: { agents: [{ name: a, away: true }, { name: b, away: true }] }
steps:
  - id: pick
    assign:
      from: "{{ vars.agents }}"
      id: "{{ agent.name }}"
      skip: [ { "$.agent.away": { equals: true } } ]
"#,
        );
        let got = dry(&c, ticket("x"), &BTreeMap::new());
        let e = got.error.unwrap();
        assert!(
            e.contains(
                "no agent available: all 2 skipped (a: skip rule 1 holds; b: skip rule 1 holds)"
            ),
            "{e}"
        );
    }

    /// The worked examples of README "Remembering things" and "Assigning
    /// agents" load and do what the text says.
    #[test]
    fn the_readme_state_examples_run() {
        let readme = include_str!("../../README.md");
        let start = readme.find("### Remembering things: state").unwrap();
        // Up to the heading after "Assigning agents", whatever section follows.
        let assign = start + readme[start..].find("### Assigning agents").unwrap();
        let after = &readme[assign + 1..];
        let end = assign
            + 1
            + ["\n## ", "\n### "]
                .iter()
                .filter_map(|h| after.find(h))
                .min()
                .unwrap_or(after.len());
        let blocks: Vec<&str> = readme[start..end]
            .split("```yaml\n")
            .skip(1)
            .map(|b| &b[..b.find("```").unwrap()])
            .collect();
        let recipes: Vec<&str> = blocks
            .iter()
            .copied()
            .filter(|b| b.starts_with("name:"))
            .collect();
        assert_eq!(recipes.len(), 3, "{blocks:?}");
        let tests = blocks.iter().find(|b| b.starts_with("tests:")).unwrap();

        // Third ticket in 24 h, with the README's test (seeded state).
        let c = catalog(&format!("{}{tests}", recipes[0]));
        let r = &c.recipes[0];
        assert_eq!(r.tests.len(), 1);
        assert_eq!(run_test(&c, r, &r.tests[0]), Vec::<String>::new());

        // The welcome mail goes out once per requester.
        let c = catalog(recipes[1]);
        let m = mocks(json!({"hubspot.enroll_in_workflow": {"ok": true}}));
        let mut state = MemoryState::default();
        let calls: Vec<usize> = (0..3)
            .map(|_| dry_in(&c, &ticket("hello"), &m, &mut state).calls.len())
            .collect();
        assert_eq!(calls, [1, 0, 0]);

        // Round robin among the agents who are in (Bob is away).
        let c = catalog(recipes[2]);
        let m = mocks(json!({"zendesk.update_ticket": {"id": 7}}));
        let mut state = MemoryState::default();
        let assignees: Vec<Value> = (0..4)
            .map(|_| {
                let got = dry_in(&c, &ticket("x"), &m, &mut state);
                got.calls[0].input["fields"]["assignee_id"].clone()
            })
            .collect();
        assert_eq!(assignees, [json!(361), json!(363), json!(361), json!(363)]);
    }

    #[test]
    fn templated_condition_operands_render_and_compare_typed() {
        let c = catalog(
            r#"
name: r
on: { connector: zendesk, event: ticket.created }
vars: { min_count: 3, vip: [gold, platinum], prefix: "ACME-" }
if: [ { "$.event.ticket.count": { gte: "{{ vars.min_count }}" } } ]
steps:
  - id: vip
    if:
      - "$.event.ticket.plan": { in: "{{ vars.vip }}" }
      - "$.event.ticket.ref": { starts_with: "{{ vars.prefix }}" }
    call: zendesk.add_tags
    with: { ticket_id: 1, tags: [vip] }
  - id: route
    switch:
      - when: [ { "$.event.ticket.count": { equals: "{{ vars.min_count * 2 }}" } } ]
        steps: [ { set: { twice: true } } ]
"#,
        );
        let m = mocks(json!({"zendesk.add_tags": {}}));
        let ev = |count: i64, plan: &str| json!({"ticket": {"count": count, "plan": plan, "ref": "ACME-1"}});
        // 2 < 3: the recipe's `if` does not hold.
        assert_eq!(dry(&c, ev(2, "gold"), &m).status, TestStatus::Skipped);
        // 3 >= 3 (a number, not the text "3"), gold is in the list.
        let got = dry(&c, ev(3, "gold"), &m);
        assert_eq!(got.status, TestStatus::Succeeded, "{:?}", got.error);
        assert_eq!(got.calls.len(), 1);
        assert_eq!(got.records[1].output, json!({"branch": null}));
        // 6 equals 3 * 2; silver is not in the list.
        let got = dry(&c, ev(6, "silver"), &m);
        assert!(got.calls.is_empty());
        assert_eq!(got.records[1].output, json!({"branch": 0}));
        // Numbers compare as numbers: 10 >= 3 (as text "10" < "3").
        assert_eq!(dry(&c, ev(10, "x"), &m).status, TestStatus::Succeeded);
    }

    #[test]
    fn shared_vars_and_scenarios_are_used_by_a_recipe() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("_shared.yaml"),
            r#"
vars: { support: help@example.com, team: shared }
scenarios:
  escalate:
    call: zendesk.update_ticket
    with:
      ticket_id: "{{ event.ticket.id }}"
      fields: { priority: urgent, tags: [escalated] }
"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("r.yaml"),
            r#"
name: r
on: { connector: zendesk, event: ticket.created }
vars: { team: own }
steps:
  - scenario: escalate
    with: { fields: { group: "{{ vars.team }}:{{ vars.support }}" } }
"#,
        )
        .unwrap();
        let opts = LoadOptions {
            connectors_dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("connectors"),
            recipes_dir: dir.path().to_path_buf(),
            secrets: SecretSource::default().with_placeholders(),
            allow_internal: Vec::new(),
        };
        let c = Catalog::load(&opts).unwrap_or_else(|e| panic!("{e:#?}"));
        assert_eq!(c.recipes.len(), 1, "`_shared.yaml` is not a recipe");
        let got = dry(
            &c,
            ticket("x"),
            &mocks(json!({"zendesk.update_ticket": {"id": 7}})),
        );
        assert_eq!(got.status, TestStatus::Succeeded, "{:?}", got.error);
        assert_eq!(got.calls[0].call, "zendesk.update_ticket");
        // The step's `with:` merged over the scenario's; the recipe's own var wins.
        assert_eq!(
            got.calls[0].input,
            json!({"ticket_id": 7, "fields": {"priority": "urgent", "tags": ["escalated"], "group": "own:help@example.com"}})
        );
    }

    /// A recipe's own `tests:` over branches, loops and stops: nested steps
    /// are named by id in `expect_inputs` (their first call), a run a `stop`
    /// skips after a call expects `skipped` with that call.
    #[test]
    fn recipe_tests_cover_flow_steps() {
        let c = catalog(
            r#"
name: r
on: { connector: zendesk, event: ticket.created }
steps:
  - id: each
    for_each: "{{ event.ticket.related }}"
    steps:
      - id: note
        call: zendesk.add_internal_note
        with: { ticket_id: "{{ item }}", body: "related to {{ event.ticket.id }}" }
  - id: route
    switch:
      - when: [ { "$.event.ticket.subject": { matches: "(?i)spam" } } ]
        steps:
          - stop: { reason: spam, status: skipped }
  - call: zendesk.add_tags
    with: { ticket_id: "{{ event.ticket.id }}", tags: [routed] }
tests:
  - name: two related, then tagged
    event: { type: ticket.created, ticket: { id: 7, subject: Hi, related: [1, 2] } }
    mock: { zendesk.add_internal_note: {}, zendesk.add_tags: {} }
    expect_calls: [zendesk.add_internal_note, zendesk.add_internal_note, zendesk.add_tags]
    expect_inputs:
      note: { ticket_id: 1, body: related to 7 }
  - name: spam is skipped after the notes
    event: { type: ticket.created, ticket: { id: 7, subject: SPAM, related: [1] } }
    mock: { zendesk.add_internal_note: {} }
    expect_calls: [zendesk.add_internal_note]
    expect_status: skipped
  - name: a wrong expectation is reported
    event: { type: ticket.created, ticket: { id: 7, subject: Hi, related: [] } }
    mock: { zendesk.add_tags: {} }
    expect_calls: [zendesk.add_internal_note, zendesk.add_tags]
"#,
        );
        let r = &c.recipes[0];
        assert_eq!(run_test(&c, r, &r.tests[0]), Vec::<String>::new());
        assert_eq!(run_test(&c, r, &r.tests[1]), Vec::<String>::new());
        assert_eq!(
            run_test(&c, r, &r.tests[2]),
            ["calls: expected [zendesk.add_internal_note, zendesk.add_tags]\n            got [zendesk.add_tags]"]
        );
    }
}
