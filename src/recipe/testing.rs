//! A recipe file's `tests:`, compiled and checked against the connectors and
//! the recipe's steps (`engine::dry_run` runs them).

use super::config::{MockErrorFile, RecipeFile, StepFile, TestFile, TestStatus};
use super::scope::list;
use super::steps::call::resolve;
use super::Story;
use super::{Mock, RecipeTest, StateSeed};
use crate::connector::{Connectors, Field};
use crate::template::Templates;
use crate::yaml::escape;
use crate::yaml::{LoadError, SourceMap};
use serde_json::Value;
use std::collections::BTreeMap;

/// Every step of the file, nested ones included, with the id it compiles to
/// (the defaults as `steps::Compiler` gives them), depth first.
pub(super) fn step_files<'a>(
    files: &'a [StepFile],
    parent: Option<&str>,
    out: &mut Vec<(String, &'a StepFile)>,
) {
    for (i, s) in files.iter().enumerate() {
        let id = s.id.clone().unwrap_or_else(|| match parent {
            Some(p) => format!("{p}_step{}", i + 1),
            None => format!("step{}", i + 1),
        });
        out.push((id.clone(), s));
        if let Some(nested) = &s.steps {
            step_files(nested, Some(&id), out);
        }
        for (c, case) in s.switch.iter().flatten().enumerate() {
            if let Some(nested) = &case.steps {
                step_files(nested, Some(&format!("{id}_case{c}")), out);
            } else if let Some(nested) = &case.otherwise {
                step_files(nested, Some(&format!("{id}_else")), out);
            }
        }
    }
}

/// Compile and check a recipe file's `tests:`: names unique, every mock and
/// expected call a real `connector.action` (an expected call one of the
/// recipe's steps makes), every `expect_inputs` entry a step id and one of
/// its inputs, and the event type as ingress would read it.
pub(super) fn compile_tests(
    file: &RecipeFile,
    map: &SourceMap,
    connectors: &Connectors,
    shared: &super::shared::Shared,
    templates: &Templates,
    errors: &mut Vec<LoadError>,
) -> Vec<RecipeTest> {
    // Step ids and `with:` names from the file, so tests are checked even
    // when a step itself has an error.
    let mut steps: Vec<(String, &StepFile)> = Vec::new();
    step_files(&file.steps, None, &mut steps);
    // A `scenario:` step calls the scenario's action with its inputs (the
    // step's own `with:` merged over them).
    let scenario = |s: &StepFile| s.scenario.as_ref().and_then(|n| shared.scenarios.get(n));
    let calls = |s: &StepFile, call: &str| {
        s.call.as_deref() == Some(call) || scenario(s).is_some_and(|sc| sc.call == call)
    };
    let mut names: Vec<&str> = Vec::new();
    let mut out = Vec::new();
    for (i, t) in file.tests.iter().enumerate() {
        let ptr = format!("/tests/{i}");
        let before = errors.len();
        if names.contains(&t.name.as_str()) {
            errors.push(map.error(
                &format!("{ptr}/name"),
                format!("duplicate test name `{}`", t.name),
            ));
        }
        names.push(&t.name);
        // The event as ingress hands it on: through the trigger connector's
        // `webhook.normalize` (a Zendesk event-subscription body, say).
        let event = normalized(
            file.on.connector.as_deref(),
            &t.event,
            connectors,
            templates,
        )
        .unwrap_or_else(|e| {
            errors.push(map.error(&format!("{ptr}/event"), e));
            t.event.clone()
        });
        let event_type = test_event_type(file, t, &event, &ptr, map, connectors, errors);

        let mut mocks = BTreeMap::new();
        for (key, v) in &t.mock {
            let p = format!("{ptr}/mock/{}", escape(key));
            // `connector.action`, the id of a step that calls one, or the
            // path of one instance of such a step (`each[1].tag`).
            let (step_key, path_ok) = match mock_path(key) {
                Some(ids) => {
                    let unknown = ids.iter().find(|id| !steps.iter().any(|(s, _)| s == *id));
                    if let Some(id) = unknown {
                        errors.push(map.error_at_key(
                            &p,
                            format!("mock `{key}`: no step `{id}` in this recipe; a path names its loops' and switches' step ids, as `runs show` prints it (`each[1].tag`)"),
                        ));
                    }
                    (ids.last().copied().unwrap_or_default(), unknown.is_none())
                }
                None => (key.as_str(), true),
            };
            let call = if !path_ok {
                None
            } else if step_key.contains('.') {
                Some(key.clone())
            } else {
                let key = step_key;
                match steps.iter().find(|(id, _)| id == key) {
                    Some((_, s)) => match (&s.call, scenario(s)) {
                        (Some(c), _) => Some(c.clone()),
                        (None, Some(sc)) => Some(sc.call.clone()),
                        (None, None) => {
                            errors.push(map.error_at_key(
                                &p,
                                format!("step `{key}` calls nothing, so it has nothing to mock: a mock is for a `connector.action` or the id of a step that calls one"),
                            ));
                            None
                        }
                    },
                    None => {
                        let callers = steps
                            .iter()
                            .filter(|(_, s)| s.call.is_some() || scenario(s).is_some())
                            .map(|(id, _)| id);
                        let near =
                            crate::yaml::did_you_mean(key, steps.iter().map(|(id, _)| id.as_str()))
                                .map(|m| format!("; did you mean `{m}`?"))
                                .unwrap_or_default();
                        errors.push(map.error_at_key(
                            &p,
                            format!(
                                "unknown mock `{key}`: expected a `connector.action` or the id of a step that calls one: {}{near}",
                                list(callers)
                            ),
                        ));
                        None
                    }
                }
            };
            let action = match call.as_deref().map(|c| resolve(c, connectors)) {
                Some(Ok((_, a))) => Some(a),
                Some(Err(msg)) => {
                    errors.push(map.error_at_key(&p, msg));
                    None
                }
                None => None,
            };
            match compile_mock(v) {
                Ok(m) => {
                    if let Some(a) = &action {
                        let name = call.as_deref().unwrap_or_default();
                        check_shape(&m, &p, name, a, map, errors);
                    }
                    mocks.insert(key.clone(), m);
                }
                Err((sub, msg)) => errors.push(map.error(&format!("{p}{sub}"), msg)),
            }
        }
        for (j, call) in t.expect_calls.iter().enumerate() {
            let p = format!("{ptr}/expect_calls/{j}");
            if let Err(msg) = resolve(call, connectors) {
                errors.push(map.error(&p, msg));
            } else if !steps.iter().any(|(_, s)| calls(s, call)) {
                errors.push(map.error(
                    &p,
                    format!("no step of this recipe calls `{call}`, so it is never called"),
                ));
            }
        }
        for (id, inputs) in &t.expect_inputs {
            let p = format!("{ptr}/expect_inputs/{}", escape(id));
            let Some((_, step)) = steps.iter().find(|(sid, _)| sid == id) else {
                errors.push(map.error_at_key(
                    &p,
                    format!(
                        "unknown step id `{id}`, expected one of {}",
                        list(steps.iter().map(|(id, _)| id))
                    ),
                ));
                continue;
            };
            let mut with: Vec<&String> = step.with.iter().flat_map(|w| w.keys()).collect();
            if let Some(sc) = scenario(step) {
                with.extend(sc.with.keys());
            }
            with.sort();
            with.dedup();
            for name in inputs.keys() {
                if !with.contains(&name) {
                    errors.push(map.error_at_key(
                        &format!("{p}/{}", escape(name)),
                        format!(
                            "step `{id}` has no input `{name}` in its `with:`, expected one of {}",
                            list(with.iter().copied())
                        ),
                    ));
                }
            }
        }
        let expect_status = t.expect_status.unwrap_or(TestStatus::Succeeded);
        let now = match &t.now {
            None => None,
            Some(text) => match crate::time::parse_instant(text) {
                Ok(ts) => Some(ts.as_millisecond()),
                Err(e) => {
                    errors.push(map.error(&format!("{ptr}/now"), e.0));
                    None
                }
            },
        };
        let mut state = Vec::new();
        for (i, seed) in t.state.iter().enumerate() {
            let p = format!("{ptr}/state/{i}");
            let seeded = match (&seed.value, seed.count, seed.window) {
                (Some(v), None, None) => Some(StateSeed::Value(v.clone())),
                (None, Some(n), Some(w)) if n >= 0 && !w.0.is_zero() => Some(StateSeed::Count {
                    count: n,
                    window_ms: w.0.as_millis().min(i64::MAX as u128) as i64,
                }),
                _ => {
                    errors.push(map.error(
                        &p,
                        "a state seed is `{ key, value }` or `{ key, count, window }` (count 0 or more, window longer than 0)",
                    ));
                    None
                }
            };
            if seed.key.is_empty() || seed.key.contains('\0') {
                errors.push(map.error(
                    &format!("{p}/key"),
                    "a state key must not be empty or hold a NUL",
                ));
            }
            if let Some(seed_value) = seeded {
                state.push((seed.namespace.clone(), seed.key.clone(), seed_value));
            }
        }
        let then = compile_story(file, t, &ptr, map, connectors, templates, errors);
        // A run that a `stop` skips may have called something before it.
        let stops_skipped = steps.iter().any(|(_, s)| {
            s.stop
                .as_ref()
                .is_some_and(|st| st.status.as_deref() == Some("skipped"))
        });
        if expect_status == TestStatus::Skipped && !t.expect_calls.is_empty() && !stops_skipped {
            errors.push(map.error(
                &format!("{ptr}/expect_calls"),
                "a skipped run calls nothing: `expect_calls` must be `[]`",
            ));
        }
        if errors.len() > before {
            continue;
        }
        out.push(RecipeTest {
            name: t.name.clone(),
            event,
            event_type,
            mocks,
            expect_calls: t.expect_calls.clone(),
            expect_inputs: t.expect_inputs.clone(),
            expect_status,
            now,
            state,
            then,
        });
    }
    out
}

/// A test's `then:`: each entry exactly one of `advance` and `event`; an
/// event's connector must send webhooks, and its type is read as ingress
/// reads it (or given where the connector reads it from a header).
fn compile_story(
    file: &RecipeFile,
    t: &TestFile,
    ptr: &str,
    map: &SourceMap,
    connectors: &Connectors,
    templates: &Templates,
    errors: &mut Vec<LoadError>,
) -> Vec<Story> {
    let mut out = Vec::new();
    for (i, step) in t.then.iter().enumerate() {
        let p = format!("{ptr}/then/{i}");
        match (&step.advance, &step.event) {
            (Some(a), None) => {
                if step.connector.is_some() || step.event_type.is_some() {
                    errors.push(map.error(
                        &p,
                        "`connector` and `event_type` go with `event`, not `advance`",
                    ));
                }
                match crate::time::parse_duration(a, crate::time::MAX_WAIT_MS) {
                    Ok(ms) => out.push(Story::Advance(ms)),
                    Err(e) => errors.push(map.error(&format!("{p}/advance"), e.0)),
                }
            }
            (None, Some(raw)) => {
                let Some(name) = step.connector.as_ref().or(file.on.connector.as_ref()) else {
                    errors.push(map.error(
                        &p,
                        "give `connector:`: the recipe's trigger is not a webhook",
                    ));
                    continue;
                };
                let Some(c) = connectors.get(name).filter(|c| c.webhook.is_some()) else {
                    errors.push(map.error(
                        &format!("{p}/connector"),
                        format!("connector `{name}` does not exist or has no `webhook:` section"),
                    ));
                    continue;
                };
                let body =
                    &normalized(Some(name), raw, connectors, templates).unwrap_or_else(|e| {
                        errors.push(map.error(&format!("{p}/event"), e));
                        raw.clone()
                    });
                let read = match c.webhook.as_ref().and_then(|w| w.event_type.as_ref()) {
                    Some(Field::Header(_)) | None => None,
                    Some(f) => f.read(|_| None, body),
                };
                let event_type = step.event_type.clone().or(read);
                if event_type.is_none() {
                    errors.push(map.error(
                        &p,
                        format!("the event type of this event cannot be read from connector `{name}`: give `event_type:`"),
                    ));
                }
                out.push(Story::Event {
                    connector: name.clone(),
                    event_type,
                    body: body.clone(),
                });
            }
            _ => errors.push(map.error(
                &p,
                "a `then:` step is `{ advance: 12h }` or `{ event: {...} }`",
            )),
        }
    }
    out
}

/// Each output a mock answers must be a mapping of the action's `output:`
/// fields (some may be left out: "not found"), when the action declares
/// them; an action without `output:` answers its whole response.
fn check_shape(
    m: &Mock,
    ptr: &str,
    call: &str,
    action: &crate::connector::Action,
    map: &SourceMap,
    errors: &mut Vec<LoadError>,
) {
    if action.output.is_empty() {
        return;
    }
    let fields: Vec<&str> = action.output.iter().map(|(k, _)| k.as_str()).collect();
    // A mocked answer is also the body `fail_when:` reads (Slack's
    // `{ ok: false, error: channel_not_found }`): its fields are allowed too.
    let read_by_fail_when: Vec<&str> = action
        .fail_when
        .iter()
        .flat_map(|f| std::iter::once(&f.path).chain(&f.reason))
        .filter_map(|p| {
            let rest = p.as_str().strip_prefix("$.")?;
            Some(rest.split(['.', '[']).next().unwrap_or(rest))
        })
        .collect();
    let expected = fields
        .iter()
        .map(|f| format!("`{f}`"))
        .collect::<Vec<_>>()
        .join(", ");
    match m {
        Mock::Error { .. } => {}
        Mock::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                check_shape(item, &format!("{ptr}/sequence/{i}"), call, action, map, errors);
            }
        }
        Mock::Output(Value::Object(o)) => {
            let known = |k: &&String| {
                fields.contains(&k.as_str()) || read_by_fail_when.contains(&k.as_str())
            };
            for k in o.keys().filter(|k| !known(k)) {
                let near = crate::yaml::did_you_mean(k, fields.iter().copied())
                    .map(|m| format!("; did you mean `{m}`?"))
                    .unwrap_or_default();
                errors.push(map.error_at_key(
                    &format!("{ptr}/{}", escape(k)),
                    format!("`{call}` has no output `{k}`, expected one of its action's `output:` fields: {expected}{near}"),
                ));
            }
        }
        Mock::Output(_) => errors.push(map.error(
            ptr,
            format!("the output of `{call}` is a mapping of its action's `output:` fields ({expected}), not a single value"),
        )),
    }
}

/// The step ids in a mock key that is a step instance's path
/// (`each[1].tag` → `each`, `tag`; `route.case1.note` → `route`, `note`),
/// or `None` for a `connector.action` or a step id. A path names a loop
/// item (`[N]`), so a key without one is not taken for a path.
pub(crate) fn mock_path(key: &str) -> Option<Vec<&str>> {
    if !key.contains('[') {
        return None;
    }
    let ids = key
        .split('.')
        .filter(|seg| {
            let case = seg
                .strip_prefix("case")
                .is_some_and(|n| n.parse::<usize>().is_ok());
            !(case || *seg == "else")
        })
        .map(|seg| seg.split('[').next().unwrap_or(seg))
        .collect();
    Some(ids)
}

/// A mock's value: `{ sequence: [...] }` answers each call with the next
/// item, `{ error: { status, body } }` is a failed call, anything else the
/// step's output. The pointer of an error is relative to the value.
fn compile_mock(v: &Value) -> Result<Mock, (String, String)> {
    let only = |key: &str| match v.as_object() {
        Some(o) if o.len() == 1 => o.get(key),
        _ => None,
    };
    if let Some(seq) = only("sequence") {
        let Some(items) = seq.as_array().filter(|a| !a.is_empty()) else {
            return Err((
                "/sequence".into(),
                "a `sequence` is a list of answers, one per call, in order".into(),
            ));
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match compile_answer(item) {
                Ok(m) => out.push(m),
                Err((sub, msg)) => return Err((format!("/sequence/{i}{sub}"), msg)),
            }
        }
        return Ok(Mock::Sequence(out));
    }
    compile_answer(v)
}

/// One answer: `{ error: { status, body } }` or an output.
fn compile_answer(v: &Value) -> Result<Mock, (String, String)> {
    let error = match v.as_object() {
        Some(o) if o.len() == 1 => o.get("error").filter(|e| e.is_object()),
        _ => None,
    };
    let Some(error) = error else {
        return Ok(Mock::Output(v.clone()));
    };
    let e: MockErrorFile =
        serde_json::from_value(error.clone()).map_err(|e| ("/error".into(), e.to_string()))?;
    if !(400..=599).contains(&e.status) {
        return Err((
            "/error/status".into(),
            format!(
                "mocked error status {} is not an HTTP error, expected 400-599",
                e.status
            ),
        ));
    }
    let body = match e.body {
        Value::Null => String::new(),
        Value::String(s) => s,
        other => other.to_string(),
    };
    Ok(Mock::Error {
        status: e.status,
        body,
    })
}

/// `body` through connector `name`'s `webhook.normalize`, as ingress reads it.
fn normalized(
    name: Option<&str>,
    body: &Value,
    connectors: &Connectors,
    templates: &Templates,
) -> Result<Value, String> {
    match name
        .and_then(|n| connectors.get(n))
        .and_then(|c| c.webhook.as_ref())
    {
        Some(w) => w
            .normalize(templates, body.clone())
            .map_err(|e| format!("the event could not be read into the connector's event shape (`webhook.normalize`): {e}")),
        None => Ok(body.clone()),
    }
}

/// The event type a test's event arrives with, read the way ingress reads it
/// from the trigger connector's `webhook.event_type`; `event_type:` is
/// needed (and only allowed) where ingress reads it from a header.
fn test_event_type(
    file: &RecipeFile,
    t: &TestFile,
    event: &Value,
    ptr: &str,
    map: &SourceMap,
    connectors: &Connectors,
    errors: &mut Vec<LoadError>,
) -> Option<String> {
    if file.on.schedule.is_some() {
        // A slot's event type is the recipe's name; a test's event is the slot's body.
        return Some(file.name.clone());
    }
    // An unknown connector or one without a webhook is reported already.
    let c = connectors.get(file.on.connector.as_deref()?)?;
    let webhook = c.webhook.as_ref()?;
    let given = t.event_type.clone();
    let read = match &webhook.event_type {
        Some(Field::Header(h)) => {
            if given.is_none() {
                errors.push(map.error(
                    ptr,
                    format!(
                        "connector `{}` reads the event type from the `{h}` header: give the test an `event_type:`",
                        c.name
                    ),
                ));
            }
            return given;
        }
        Some(f @ Field::Path(p)) => (
            f.read(|_| None, event),
            format!("`{}` of the event", p.as_str()),
        ),
        Some(f @ Field::Value(_)) => (f.read(|_| None, event), "its `webhook.event_type`".into()),
        // Ingress reads no type, so no event of this connector starts a run.
        None => (
            None,
            "nowhere: it has no `webhook.event_type`, so its events start no recipe".into(),
        ),
    };
    match (given, read) {
        (None, (found, _)) => found,
        (Some(g), (Some(found), _)) if g == found => Some(g),
        (Some(g), (found, from)) => {
            errors.push(map.error(
                &format!("{ptr}/event_type"),
                format!(
                    "`event_type: {g}` is not what connector `{}` reads: the type comes from {from}{}; leave `event_type` out",
                    c.name,
                    found.map(|f| format!(", which gives `{f}`")).unwrap_or_default()
                ),
            ));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mocks_are_outputs_unless_they_are_exactly_an_error() {
        use serde_json::json;
        let out = |v: Value| Ok(Mock::Output(v));
        assert_eq!(compile_mock(&json!({"id": "1"})), out(json!({"id": "1"})));
        assert_eq!(compile_mock(&json!({})), out(json!({})));
        // An `error` field beside others, or not a mapping, is output.
        let v = json!({"error": {"status": 500}, "id": 1});
        assert_eq!(compile_mock(&v), out(v.clone()));
        assert_eq!(
            compile_mock(&json!({"error": "x"})),
            out(json!({"error": "x"}))
        );
        assert_eq!(
            compile_mock(&json!({"error": {"status": 422, "body": {"e": 1}}})),
            Ok(Mock::Error {
                status: 422,
                body: r#"{"e":1}"#.into()
            })
        );
        assert_eq!(
            compile_mock(&json!({"error": {"status": 302}}))
                .unwrap_err()
                .0,
            "/error/status"
        );
        assert_eq!(
            compile_mock(&json!({"sequence": [{"id": 1}, {"error": {"status": 503}}]})),
            Ok(Mock::Sequence(vec![
                Mock::Output(json!({"id": 1})),
                Mock::Error {
                    status: 503,
                    body: String::new()
                }
            ]))
        );
        assert_eq!(
            compile_mock(&json!({"sequence": [{}, {"error": {"status": 1}}]}))
                .unwrap_err()
                .0,
            "/sequence/1/error/status"
        );
        assert!(compile_mock(&json!({"sequence": []})).is_err());
        assert!(compile_mock(&json!({"error": {"code": 500}})).is_err());
    }
}
