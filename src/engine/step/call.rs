//! `call`: render the `with:` inputs, then the host makes the call.

use super::{Call, Flow, Host, Next, Outcome, Walker};
use crate::connector::http::redact_value;
use crate::recipe::steps::CallStep;
use crate::recipe::Step;
use crate::store::RunStatus;
use serde_json::{Map, Value};

pub(super) async fn execute<H: Host>(
    w: &mut Walker<'_, H>,
    step: &Step,
    call: &CallStep,
    path: &str,
) -> Flow {
    let input = match render(w, call) {
        Ok(input) => input,
        Err((partial, error)) => {
            let input = redact_value(&call.connector, partial);
            return w.fail(path, &step.kind, input, error);
        }
    };
    let (record, next) = w
        .host
        .call(Call {
            path,
            step: call,
            input,
        })
        .await;
    match next {
        Next::Continue => {
            let out = record.output.clone();
            w.push_record(record);
            w.set_output(step, out);
            Flow::Next
        }
        Next::Suspend => Flow::Halt(Outcome::Suspended),
        Next::End(status) => {
            let error = super::failure_message(
                path,
                &call.name(),
                (status == RunStatus::Dead).then_some(record.attempts),
                record.error.as_deref().unwrap_or_default(),
            );
            w.push_record(record);
            Flow::Halt(Outcome::Failed { status, error })
        }
    }
}

/// The rendered `with:` inputs, or the inputs rendered before the failing
/// one with the reason.
fn render<H: Host>(w: &Walker<'_, H>, call: &CallStep) -> Result<Value, (Value, String)> {
    let mut input = Map::new();
    for (k, t) in &call.with {
        match w.catalog.templates.render_value(t, &w.ctx) {
            Ok(v) => {
                input.insert(k.clone(), v);
            }
            Err(e) => return Err((Value::Object(input), format!("input `{k}`: {e}"))),
        }
    }
    Ok(Value::Object(input))
}
