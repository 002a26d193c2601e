//! How condition operators compare values: loose JSON equality (a number
//! equals a numeric string), numeric or lexicographic ordering, the text of
//! scalars. Pure functions over `serde_json::Value`.

use serde_json::{Number, Value};
use std::borrow::Cow;
use std::cmp::Ordering;

/// JSON equality, except that a number equals a numeric string of the same
/// value, and numbers compare by value (`1` equals `1.0`).
pub(super) fn loose_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => num_cmp(x, y) == Some(Ordering::Equal),
        (Value::Number(x), Value::String(s)) | (Value::String(s), Value::Number(x)) => {
            numeric_string(s).is_some_and(|y| num_cmp(x, &y) == Some(Ordering::Equal))
        }
        (Value::Array(xs), Value::Array(ys)) => {
            xs.len() == ys.len() && xs.iter().zip(ys).all(|(x, y)| loose_eq(x, y))
        }
        (Value::Object(xs), Value::Object(ys)) => {
            xs.len() == ys.len()
                && xs
                    .iter()
                    .all(|(k, x)| ys.get(k).is_some_and(|y| loose_eq(x, y)))
        }
        _ => a == b,
    }
}

/// Ordering for `gt`/`gte`/`lt`/`lte`: numeric when both sides are numbers or
/// numeric strings, lexicographic for two other strings, none otherwise.
pub(super) fn compare(node: &Value, operand: &Value) -> Option<Ordering> {
    match (as_number(node), as_number(operand)) {
        (Some(x), Some(y)) => num_cmp(&x, &y),
        _ => match (node, operand) {
            (Value::String(x), Value::String(y)) => Some(x.as_str().cmp(y.as_str())),
            _ => None,
        },
    }
}

fn as_number(v: &Value) -> Option<Number> {
    match v {
        Value::Number(n) => Some(n.clone()),
        Value::String(s) => numeric_string(s),
        _ => None,
    }
}

/// The number a string holds, if it is written in JSON number syntax.
fn numeric_string(s: &str) -> Option<Number> {
    let starts = s.starts_with(|c: char| c == '-' || c.is_ascii_digit());
    let ends = s.ends_with(|c: char| c.is_ascii_digit());
    if !(starts && ends) {
        return None;
    }
    serde_json::from_str::<Number>(s).ok()
}

/// Compares two numbers exactly when both are integers, else as `f64`.
fn num_cmp(x: &Number, y: &Number) -> Option<Ordering> {
    fn int(n: &Number) -> Option<i128> {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    }
    match (int(x), int(y)) {
        (Some(a), Some(b)) => Some(a.cmp(&b)),
        _ => x.as_f64()?.partial_cmp(&y.as_f64()?),
    }
}

/// The text string operators see: a string itself, or a number's JSON text.
pub(super) fn scalar_text(v: &Value) -> Option<Cow<'_, str>> {
    match v {
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        _ => None,
    }
}
