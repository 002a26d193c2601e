//! `call: connector.action` with `with:` inputs.

use super::Compiler;
use crate::connector::{Action, Connector, Connectors};
use crate::recipe::config::StepFile;
use crate::recipe::scope::{list, sorted};
use crate::template::ValueTemplate;
use crate::yaml::escape;
use std::sync::Arc;

/// A call, with its connector and action resolved when the recipe loads: at
/// run time there is nothing left to look up.
#[derive(Debug)]
pub struct CallStep {
    pub connector: Arc<Connector>,
    pub action: Arc<Action>,
    /// The `with:` inputs, in file order.
    pub with: Vec<(String, ValueTemplate)>,
}

impl CallStep {
    /// `connector.action`.
    pub fn name(&self) -> String {
        format!("{}.{}", self.connector.name, self.action.name)
    }
}

/// The connector and action `call` (`connector.action`) names, or what is wrong with it.
pub(crate) fn resolve(
    call: &str,
    connectors: &Connectors,
) -> Result<(Arc<Connector>, Arc<Action>), String> {
    let Some((cname, aname)) = call.split_once('.') else {
        return Err(format!(
            "invalid call `{call}`, expected `connector.action`"
        ));
    };
    let Some(c) = connectors.by_name.get(cname) else {
        return Err(format!(
            "unknown connector `{cname}`, expected one of {}{}",
            list(sorted(connectors.by_name.keys()).iter()),
            hint(cname, connectors.by_name.keys())
        ));
    };
    match c.actions.get(aname) {
        Some(a) => Ok((c.clone(), a.clone())),
        None => Err(format!(
            "unknown action `{aname}` of connector `{cname}`, expected one of {}{}",
            list(c.actions.keys()),
            hint(aname, c.actions.keys())
        )),
    }
}

/// `; did you mean `x`?` when a name is within two edits of `word`.
fn hint<'a>(word: &str, names: impl Iterator<Item = &'a String>) -> String {
    crate::yaml::did_you_mean(word, names.map(String::as_str))
        .map(|m| format!("; did you mean `{m}`?"))
        .unwrap_or_default()
}

pub(super) fn compile(cx: &mut Compiler<'_>, s: &StepFile, ptr: &str) -> Option<CallStep> {
    let call = s.call.as_deref().unwrap_or_default();
    let empty = Default::default();
    let given = s.with.as_ref().unwrap_or(&empty);
    compile_call(
        cx,
        call,
        &format!("{ptr}/call"),
        given,
        |k| format!("{ptr}/with/{}", escape(k)),
        ptr,
    )
}

/// `scenario: NAME` (with an optional `with:` merged over the scenario's):
/// a call step whose action and inputs come from `recipes/_shared.yaml`.
/// An input the step does not give is reported at `scenario:`.
pub(super) fn compile_scenario(cx: &mut Compiler<'_>, s: &StepFile, ptr: &str) -> Option<CallStep> {
    let name = s.scenario.as_deref().unwrap_or_default();
    let sp = format!("{ptr}/scenario");
    let Some(scenario) = cx.shared.scenarios.get(name).cloned() else {
        let msg = crate::recipe::shared::unknown_scenario(name, cx.shared);
        cx.error(&sp, msg);
        return None;
    };
    let empty = Default::default();
    let own = s.with.as_ref().unwrap_or(&empty);
    let merged = crate::recipe::shared::merge(&scenario.with, own);
    compile_call(
        cx,
        &scenario.call,
        &sp,
        &merged,
        |k| {
            if own.contains_key(k) {
                format!("{ptr}/with/{}", escape(k))
            } else {
                sp.clone()
            }
        },
        ptr,
    )
}

fn compile_call(
    cx: &mut Compiler<'_>,
    call: &str,
    call_ptr: &str,
    given: &std::collections::BTreeMap<String, serde_json::Value>,
    input_ptr: impl Fn(&str) -> String,
    ptr: &str,
) -> Option<CallStep> {
    let resolved = resolve(call, cx.connectors)
        .map_err(|msg| cx.error(call_ptr, msg))
        .ok();
    let mut with = Vec::new();
    for (k, v) in given {
        let p = input_ptr(k);
        if let Some((_, a)) = &resolved {
            if !a.inputs.contains_key(k) {
                cx.error(
                    &p,
                    format!(
                        "action `{call}` has no input `{k}`, expected one of {}",
                        list(a.inputs.keys())
                    ),
                );
            }
        }
        if let Some(t) = cx.value_template(v, &p) {
            with.push((k.clone(), t));
        }
    }
    let (connector, action) = resolved?;
    for (input, required) in &action.inputs {
        if *required && !given.contains_key(input) {
            cx.error(
                &format!("{ptr}/with"),
                format!("missing input `{input}` required by `{call}`"),
            );
        }
    }
    Some(CallStep {
        connector,
        action,
        with,
    })
}
