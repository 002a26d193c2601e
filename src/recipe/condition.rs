//! Recipe conditions (`if:`), compiled once when a recipe loads and evaluated
//! for every event.
//!
//! A condition is a tree: a list or map means *all* of its entries must hold,
//! `all`/`any`/`not` combine sub-conditions, and a JSONPath key holds a map of
//! operators that test the nodes the path selects from the run context
//! (`{event, steps, vars}`):
//!
//! ```yaml
//! if:
//!   - "$.event.ticket.subject": { matches: "(?i)setup|confirm" }
//!   - any:
//!       - "$.event.ticket.tags": { contains: vip }
//!       - "$.event.ticket.priority": { in: [high, urgent] }
//!   - not: { "$.event.ticket.status": { equals: closed } }
//! ```
//!
//! A condition may also ask a business-hours calendar (`recipes/_shared.yaml`
//! `calendars:`): `within_business_hours: support-eu` holds while the
//! calendar is open at the run's `now` (`$.run.now`, from the engine's
//! clock); `within_business_hours: { calendar: support-eu, at:
//! "$.event.ticket.created_at" }` asks about the time a path selects
//! (missing or unreadable: false). The calendar is bound after compiling
//! ([`Condition::bind_calendars`]), which reports unknown names.
//!
//! Everything that can be wrong with a condition — an unknown operator, a bad
//! regex, a JSONPath that does not parse, an operand of the wrong type — is
//! found by [`Condition::compile`], with a JSON pointer to the spot, so a bad
//! recipe fails at `check`/startup and never on the first webhook.
//!
//! Invariant: evaluation does no I/O, parses nothing and never panics,
//! whatever the event holds. Event data only ever reaches [`Condition::eval`].
//!
//! # Semantics
//! - A path that selects **no node** is *missing*: `exists: false` and
//!   `not_equals` hold, every other operator is false. A JSON `null` node is
//!   present: it `exists`, and equals only `null`.
//! - A path that selects **several nodes** (wildcards, filters, `..`) passes
//!   an operator if **any** node passes it — except `not_equals`, which must
//!   hold for **every** node. Several operators on one path must all hold,
//!   each judged over the whole node list.
//! - Equality (`equals`, `not_equals`, `in`, array `contains`) is JSON
//!   equality, except that a number equals a string holding the same number
//!   (`equals: 42` matches `"42"` and vice versa, because YAML authors write
//!   ids unquoted that senders deliver quoted), and `1` equals `1.0`. Two
//!   strings are compared as strings (`"42"` ≠ `"42.0"`). A numeric string is
//!   one in JSON number syntax (`"-1.5e3"` yes; `" 42"`, `"007"`, `"+1"` no).
//! - `gt`/`gte`/`lt`/`lte` compare numerically when both sides are numbers or
//!   numeric strings; when both are strings and at least one is not numeric
//!   they compare lexicographically by Unicode code point (which orders
//!   ISO-8601 timestamps written in the same format and offset correctly);
//!   anything else (a bool, `null`, a number against a word) is false.
//! - String operators (`matches`, `starts_with`, `ends_with`, substring
//!   `contains`) apply to string nodes, and to number nodes through their JSON
//!   text (`4217` starts with `"42"`). They never look inside arrays: select
//!   the elements with `[*]` for that. `contains` on an array node looks for
//!   an element equal to the operand.

use std::borrow::Cow;
use std::cmp::Ordering;

use jsonpath_rust::parser::errors::JsonPathError;
use jsonpath_rust::parser::model::JpQuery;
use jsonpath_rust::parser::parse_json_path;
use jsonpath_rust::query::js_path_process;
use regex::{Regex, RegexBuilder};
use serde_json::{Map, Number, Value};
use std::sync::Arc;

use crate::template::{Template, Templates};
use crate::time::{Calendar, Calendars};

/// Largest compiled size of a `matches` regex; a bigger one is a compile
/// error rather than a slow or memory-hungry match on every event.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Deepest nesting of `all`/`any`/`not`/lists accepted. Compiling and
/// evaluating recurse, so the limit keeps a pathological file from
/// overflowing the stack; real conditions nest a few levels.
const MAX_DEPTH: usize = 64;

const OPERATORS: [&str; 12] = [
    "equals",
    "not_equals",
    "in",
    "contains",
    "matches",
    "exists",
    "gt",
    "gte",
    "lt",
    "lte",
    "starts_with",
    "ends_with",
];

/// A compiled condition tree.
#[derive(Debug, Clone)]
pub struct Condition {
    root: Node,
}

/// What is wrong with a condition, and where.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ConditionError {
    /// JSON pointer *relative to the compiled value* where the problem is,
    /// e.g. `/1/$.event.x/matches` (RFC 6901 escaping: `~`→`~0`, `/`→`~1`);
    /// the caller prefixes it with the `if` field's own pointer.
    pub pointer: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl ConditionError {
    fn new(pointer: &str, message: impl Into<String>) -> Self {
        ConditionError {
            pointer: pointer.to_owned(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone)]
enum Node {
    All(Vec<Node>),
    Any(Vec<Node>),
    Not(Box<Node>),
    Path(PathTest),
    BusinessHours(BusinessHours),
}

/// `within_business_hours: NAME` or `{ calendar: NAME, at: JSONPath }`.
#[derive(Debug, Clone)]
struct BusinessHours {
    pointer: String,
    name: String,
    /// The instant to ask about; `$.run.now` when not given.
    at: Option<(String, JpQuery)>,
    /// Set by [`Condition::bind_calendars`]; unbound never holds.
    calendar: Option<Arc<Calendar>>,
}

/// One JSONPath key with its operators.
#[derive(Debug, Clone)]
struct PathTest {
    /// Pointer of the key, for [`Condition::paths`].
    pointer: String,
    /// The JSONPath as written.
    source: String,
    /// The JSONPath parsed once, at compile time.
    query: JpQuery,
    /// Never empty; all must hold.
    ops: Vec<Op>,
}

#[derive(Debug, Clone)]
enum Op {
    Equals(Value),
    NotEquals(Value),
    In(Vec<Value>),
    /// `text` is the operand as a substring (string or number operands);
    /// `None` means only array-element containment can hold.
    Contains {
        element: Value,
        text: Option<String>,
    },
    Matches(Regex),
    Exists(bool),
    /// The operand is a number or a string (checked at compile time).
    Compare(Cmp, Value),
    StartsWith(String),
    EndsWith(String),
    /// An operand with template syntax (`gte: "{{ vars.min_count }}"`):
    /// rendered (typed) over the run context at each evaluation, then
    /// applied as the operator `name` with that operand.
    Templated {
        name: String,
        /// Pointer of the operand, for errors.
        pointer: String,
        source: String,
        /// Set by [`Condition::bind_templates`]; unbound never holds.
        template: Option<Template>,
    },
}

#[derive(Debug, Clone, Copy)]
enum Cmp {
    Gt,
    Gte,
    Lt,
    Lte,
}

impl Condition {
    /// Compiles the value of an `if:` field: a list (all must hold) or a map.
    pub fn compile(value: &Value) -> Result<Condition, ConditionError> {
        Ok(Condition {
            root: compile_node(value, "", 0)?,
        })
    }

    /// An always-true condition (for recipes/steps without `if`).
    pub fn always() -> Condition {
        Condition {
            root: Node::All(Vec::new()),
        }
    }

    /// Whether the condition holds for `ctx` (the `{event, steps, vars}`
    /// object). A templated operand never holds here: use [`Condition::eval_with`].
    pub fn eval(&self, ctx: &Value) -> bool {
        self.root.eval(ctx, None)
    }

    /// Whether the condition holds for `ctx`, rendering templated operands
    /// with `templates` (the registry they were bound in).
    pub fn eval_with(&self, ctx: &Value, templates: &Templates) -> bool {
        self.root.eval(ctx, Some(templates))
    }

    /// Compile the templated operands into `templates`; returns
    /// `(pointer, message)` for each that does not compile.
    pub fn bind_templates(&mut self, templates: &mut Templates) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        self.root.visit_ops(&mut |op| {
            if let Op::Templated {
                pointer,
                source,
                template,
                ..
            } = op
            {
                match templates.compile(source) {
                    Ok(t) => *template = Some(t),
                    Err(e) => errors.push((pointer.clone(), format!("template error: {e}"))),
                }
            }
        });
        errors
    }

    /// The bound templated operands, as `(pointer, template)`, so the loader
    /// can check the variables they read.
    pub fn templates(&mut self) -> Vec<(String, Template)> {
        let mut out = Vec::new();
        self.root.visit_ops(&mut |op| {
            if let Op::Templated {
                pointer,
                template: Some(t),
                ..
            } = op
            {
                out.push((pointer.clone(), t.clone()));
            }
        });
        out
    }

    /// Resolve the calendars that `within_business_hours` names; returns
    /// `(pointer, message)` for each unknown name.
    pub fn bind_calendars(&mut self, calendars: &Calendars) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        self.root.bind(calendars, &mut errors);
        errors
    }

    /// Every JSONPath in the tree, as `(pointer of its key, JSONPath)`, in
    /// document order, so the loader can check what they refer to.
    pub fn paths(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        self.root.collect_paths(&mut out);
        out
    }
}

fn compile_node(value: &Value, pointer: &str, depth: usize) -> Result<Node, ConditionError> {
    if depth > MAX_DEPTH {
        return Err(ConditionError::new(
            pointer,
            format!("condition nested too deeply (more than {MAX_DEPTH} levels)"),
        ));
    }
    match value {
        Value::Array(items) if items.is_empty() => Err(ConditionError::new(
            pointer,
            "a condition list must not be empty (leave out `if` to always run)",
        )),
        Value::Array(items) => Ok(Node::All(compile_list(items, pointer, depth)?)),
        Value::Object(map) => compile_map(map, pointer, depth),
        other => Err(ConditionError::new(
            pointer,
            format!(
                "expected a condition (a map like {{\"$.event.x\": {{equals: 1}}}} or a list of them), found {}",
                kind(other)
            ),
        )),
    }
}

fn compile_list(items: &[Value], pointer: &str, depth: usize) -> Result<Vec<Node>, ConditionError> {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| compile_node(item, &child(pointer, &i.to_string()), depth + 1))
        .collect()
}

fn compile_map(
    map: &Map<String, Value>,
    pointer: &str,
    depth: usize,
) -> Result<Node, ConditionError> {
    if map.is_empty() {
        return Err(ConditionError::new(
            pointer,
            "a condition map must not be empty; expected a JSONPath key or one of all, any, not",
        ));
    }
    let mut nodes = Vec::with_capacity(map.len());
    for (key, value) in map {
        let at = child(pointer, key);
        let node = match key.as_str() {
            "all" | "any" => {
                let items = match value {
                    Value::Array(items) if !items.is_empty() => items,
                    _ => {
                        return Err(ConditionError::new(
                            &at,
                            format!("`{key}` expects a non-empty list of conditions"),
                        ))
                    }
                };
                let list = compile_list(items, &at, depth + 1)?;
                if key == "all" {
                    Node::All(list)
                } else {
                    Node::Any(list)
                }
            }
            "not" => Node::Not(Box::new(compile_node(value, &at, depth + 1)?)),
            "within_business_hours" => Node::BusinessHours(compile_business_hours(value, &at)?),
            k if k.starts_with('$') => Node::Path(compile_path(key, value, &at)?),
            _ => return Err(ConditionError::new(&at, unknown_key_message(key))),
        };
        nodes.push(node);
    }
    Ok(if nodes.len() == 1 {
        nodes.swap_remove(0)
    } else {
        Node::All(nodes)
    })
}

fn compile_business_hours(value: &Value, pointer: &str) -> Result<BusinessHours, ConditionError> {
    let expected =
        "`within_business_hours` expects a calendar name, or `{ calendar: NAME, at: JSONPath }`";
    let (name, at) = match value {
        Value::String(name) => (name.clone(), None),
        Value::Object(map) => {
            if let Some(k) = map
                .keys()
                .find(|k| !["calendar", "at"].contains(&k.as_str()))
            {
                return Err(ConditionError::new(&child(pointer, k), expected));
            }
            let Some(Value::String(name)) = map.get("calendar") else {
                return Err(ConditionError::new(pointer, expected));
            };
            let at = match map.get("at") {
                None => None,
                Some(Value::String(path)) => {
                    let q = parse_json_path(path).map_err(|e| {
                        ConditionError::new(
                            &child(pointer, "at"),
                            format!("invalid JSONPath `{path}`: {}", jsonpath_error(&e)),
                        )
                    })?;
                    Some((path.clone(), q))
                }
                Some(_) => return Err(ConditionError::new(&child(pointer, "at"), expected)),
            };
            (name.clone(), at)
        }
        _ => return Err(ConditionError::new(pointer, expected)),
    };
    Ok(BusinessHours {
        pointer: pointer.to_owned(),
        name,
        at,
        calendar: None,
    })
}

fn unknown_key_message(key: &str) -> String {
    let base = "a condition key must be a JSONPath starting with `$` or one of all, any, not, within_business_hours";
    let hint = match key {
        "and" => Some("`all`".to_owned()),
        "or" => Some("`any`".to_owned()),
        k if OPERATORS.contains(&k) => {
            return format!("{base}; `{k}` is an operator and belongs under a JSONPath, e.g. {{\"$.event.x\": {{{k}: ...}}}}");
        }
        k if ["event", "steps", "vars"].iter().any(|root| {
            k == *root || k.starts_with(&format!("{root}.")) || k.starts_with(&format!("{root}["))
        }) =>
        {
            Some(format!("`$.{k}`"))
        }
        k => suggest(k, &["all", "any", "not"]).map(|s| format!("`{s}`")),
    };
    match hint {
        Some(h) => format!("{base} (did you mean {h}?)"),
        None => base.to_owned(),
    }
}

fn compile_path(path: &str, value: &Value, pointer: &str) -> Result<PathTest, ConditionError> {
    let query = parse_json_path(path).map_err(|e| {
        ConditionError::new(
            pointer,
            format!("invalid JSONPath `{path}`: {}", jsonpath_error(&e)),
        )
    })?;
    let map = match value {
        Value::Object(map) if !map.is_empty() => map,
        Value::Object(_) => {
            return Err(ConditionError::new(
                pointer,
                format!("`{path}` has no operators; expected e.g. {{equals: ...}}"),
            ))
        }
        other => {
            return Err(ConditionError::new(
                pointer,
                format!(
                    "`{path}` expects a map of operators like {{equals: ...}}, found {}",
                    kind(other)
                ),
            ))
        }
    };
    let ops = map
        .iter()
        .map(|(name, operand)| compile_op(name, operand, &child(pointer, name)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PathTest {
        pointer: pointer.to_owned(),
        source: path.to_owned(),
        query,
        ops,
    })
}

fn compile_op(name: &str, operand: &Value, pointer: &str) -> Result<Op, ConditionError> {
    let expects = |what: &str| {
        ConditionError::new(
            pointer,
            format!("`{name}` expects {what}, found {}", kind(operand)),
        )
    };
    if let Value::String(text) = operand {
        if text.contains("{{") || text.contains("{%") {
            if matches!(name, "matches" | "exists") {
                return Err(ConditionError::new(
                    pointer,
                    format!("`{name}` takes a fixed operand, not a template"),
                ));
            }
            if OPERATORS.contains(&name) {
                return Ok(Op::Templated {
                    name: name.to_string(),
                    pointer: pointer.to_string(),
                    source: text.clone(),
                    template: None,
                });
            }
        }
    }
    Ok(match name {
        "equals" => Op::Equals(operand.clone()),
        "not_equals" => Op::NotEquals(operand.clone()),
        "in" => match operand {
            Value::Array(items) => Op::In(items.clone()),
            _ => return Err(expects("a list")),
        },
        "contains" => Op::Contains {
            element: operand.clone(),
            text: scalar_text(operand).map(Cow::into_owned),
        },
        "matches" => match operand {
            Value::String(pattern) => Op::Matches(
                RegexBuilder::new(pattern)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| {
                        ConditionError::new(
                            pointer,
                            format!("invalid regex `{pattern}`: {}", regex_error(&e)),
                        )
                    })?,
            ),
            _ => return Err(expects("a regex string")),
        },
        "exists" => match operand {
            Value::Bool(b) => Op::Exists(*b),
            _ => return Err(expects("true or false")),
        },
        "gt" | "gte" | "lt" | "lte" => {
            if !matches!(operand, Value::Number(_) | Value::String(_)) {
                return Err(expects("a number or a string"));
            }
            let cmp = match name {
                "gt" => Cmp::Gt,
                "gte" => Cmp::Gte,
                "lt" => Cmp::Lt,
                _ => Cmp::Lte,
            };
            Op::Compare(cmp, operand.clone())
        }
        "starts_with" | "ends_with" => {
            let Some(text) = scalar_text(operand) else {
                return Err(expects("a string"));
            };
            let text = text.into_owned();
            if name == "starts_with" {
                Op::StartsWith(text)
            } else {
                Op::EndsWith(text)
            }
        }
        _ => {
            let mut message = format!(
                "unknown operator `{name}`, expected one of {}",
                OPERATORS.join(", ")
            );
            if let Some(s) = suggest(name, &OPERATORS) {
                message.push_str(&format!(" (did you mean `{s}`?)"));
            }
            return Err(ConditionError::new(pointer, message));
        }
    })
}

/// A one-line description of a regex error. The regex crate's message is a
/// multi-line picture; keep its last line and the column the caret marks.
fn regex_error(e: &regex::Error) -> String {
    let full = e.to_string();
    let lines: Vec<&str> = full.lines().collect();
    let Some(what) = lines.iter().rev().find_map(|l| l.strip_prefix("error: ")) else {
        return lines.join(" ");
    };
    // The picture is the pattern indented by 4, then a caret line (when the
    // pattern is one line; longer ones are numbered).
    let column = match lines.as_slice() {
        [_, _, caret, ..] if caret.trim_start().starts_with('^') => {
            caret.find('^').map(|i| i.saturating_sub(4) + 1)
        }
        _ => None,
    };
    match column {
        Some(c) => format!("{what} at column {c}"),
        None => what.to_string(),
    }
}

/// A one-line description of a JSONPath parse error. pest's own message is a
/// multi-line picture; keep what it expected and the column.
fn jsonpath_error(e: &JsonPathError) -> String {
    match e {
        JsonPathError::PestError(pest) => {
            let full = pest.to_string();
            let column = full
                .lines()
                .next()
                .and_then(|l| l.rsplit(':').next())
                .and_then(|c| c.trim().parse::<usize>().ok());
            match column {
                Some(c) => format!("{} at column {c}", pest.variant.message()),
                None => pest.variant.message().into_owned(),
            }
        }
        other => other.to_string(),
    }
}

impl Node {
    fn eval(&self, ctx: &Value, templates: Option<&Templates>) -> bool {
        match self {
            Node::All(nodes) => nodes.iter().all(|n| n.eval(ctx, templates)),
            Node::Any(nodes) => nodes.iter().any(|n| n.eval(ctx, templates)),
            Node::Not(node) => !node.eval(ctx, templates),
            Node::Path(test) => {
                // The query cannot fail on a parsed path; if the library ever
                // reports an error, treat the path as missing.
                let nodes: Vec<&Value> = js_path_process(&test.query, ctx)
                    .map(|refs| refs.into_iter().map(|r| r.val).collect())
                    .unwrap_or_default();
                test.ops.iter().all(|op| op.holds(&nodes, ctx, templates))
            }
            Node::BusinessHours(b) => {
                let Some(cal) = &b.calendar else { return false };
                let at = match &b.at {
                    Some((_, q)) => js_path_process(q, ctx)
                        .ok()
                        .and_then(|refs| refs.into_iter().next().map(|r| r.val.clone())),
                    None => ctx.get("run").and_then(|r| r.get("now")).cloned(),
                };
                at.and_then(|v| crate::time::instant(&v).ok())
                    .is_some_and(|t| cal.is_open(t))
            }
        }
    }

    fn bind(&mut self, calendars: &Calendars, errors: &mut Vec<(String, String)>) {
        match self {
            Node::All(nodes) | Node::Any(nodes) => {
                nodes.iter_mut().for_each(|n| n.bind(calendars, errors));
            }
            Node::Not(node) => node.bind(calendars, errors),
            Node::Path(_) => {}
            Node::BusinessHours(b) => match calendars.get(&b.name) {
                Some(c) => b.calendar = Some(c.clone()),
                None => errors.push((
                    b.pointer.clone(),
                    crate::time::calendar::unknown(&b.name, calendars).0,
                )),
            },
        }
    }

    fn visit_ops(&mut self, f: &mut dyn FnMut(&mut Op)) {
        match self {
            Node::All(nodes) | Node::Any(nodes) => nodes.iter_mut().for_each(|n| n.visit_ops(f)),
            Node::Not(node) => node.visit_ops(f),
            Node::Path(test) => {
                for op in test.ops.iter_mut() {
                    f(op);
                }
            }
            Node::BusinessHours(_) => {}
        }
    }

    fn collect_paths(&self, out: &mut Vec<(String, String)>) {
        match self {
            Node::All(nodes) | Node::Any(nodes) => {
                nodes.iter().for_each(|n| n.collect_paths(out));
            }
            Node::Not(node) => node.collect_paths(out),
            Node::Path(test) => out.push((test.pointer.clone(), test.source.clone())),
            Node::BusinessHours(b) => {
                if let Some((path, _)) = &b.at {
                    out.push((child(&b.pointer, "at"), path.clone()));
                }
            }
        }
    }
}

impl Op {
    /// Whether the operator holds over all the nodes a path selected.
    fn holds(&self, nodes: &[&Value], ctx: &Value, templates: Option<&Templates>) -> bool {
        match self {
            Op::Templated {
                name,
                pointer,
                template,
                ..
            } => {
                // Rendered typed (`"{{ vars.min }}"` stays a number), then
                // the operator as if the value had been written; an operand
                // that does not render, or is of the wrong type, never holds.
                let (Some(t), Some(templates)) = (template, templates) else {
                    return false;
                };
                let Ok(operand) = templates.render(t, ctx) else {
                    return false;
                };
                compile_op(name, &operand, pointer).is_ok_and(|op| {
                    !matches!(op, Op::Templated { .. }) && op.holds(nodes, ctx, None)
                })
            }
            Op::Exists(want) => *want != nodes.is_empty(),
            Op::NotEquals(operand) => nodes.iter().all(|n| !loose_eq(n, operand)),
            _ => nodes.iter().any(|n| self.holds_for(n)),
        }
    }

    /// Whether the operator holds for one node (not `exists`/`not_equals`).
    fn holds_for(&self, node: &Value) -> bool {
        match self {
            Op::Equals(operand) => loose_eq(node, operand),
            Op::NotEquals(operand) => !loose_eq(node, operand),
            Op::In(items) => items.iter().any(|item| loose_eq(node, item)),
            Op::Contains { element, text } => match node {
                Value::Array(items) => items.iter().any(|item| loose_eq(item, element)),
                _ => match (scalar_text(node), text) {
                    (Some(haystack), Some(needle)) => haystack.contains(needle.as_str()),
                    _ => false,
                },
            },
            Op::Matches(re) => scalar_text(node).is_some_and(|s| re.is_match(&s)),
            Op::Exists(want) => *want,
            Op::Compare(cmp, operand) => compare(node, operand).is_some_and(|o| match cmp {
                Cmp::Gt => o == Ordering::Greater,
                Cmp::Gte => o != Ordering::Less,
                Cmp::Lt => o == Ordering::Less,
                Cmp::Lte => o != Ordering::Greater,
            }),
            Op::StartsWith(prefix) => {
                scalar_text(node).is_some_and(|s| s.starts_with(prefix.as_str()))
            }
            Op::EndsWith(suffix) => scalar_text(node).is_some_and(|s| s.ends_with(suffix.as_str())),
            Op::Templated { .. } => false,
        }
    }
}

/// JSON equality, except that a number equals a numeric string of the same
/// value, and numbers compare by value (`1` equals `1.0`).
fn loose_eq(a: &Value, b: &Value) -> bool {
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
fn compare(node: &Value, operand: &Value) -> Option<Ordering> {
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
fn scalar_text(v: &Value) -> Option<Cow<'_, str>> {
    match v {
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        _ => None,
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

/// `pointer` extended by one RFC 6901 reference token.
fn child(pointer: &str, token: &str) -> String {
    format!("{pointer}/{}", crate::yaml::escape(token))
}

/// The closest candidate within two edits of `word`, for "did you mean".
fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    crate::yaml::did_you_mean(word, candidates.iter().copied())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// Compiles `cond`, evaluates it against `ctx` and compares.
    #[track_caller]
    fn check(cond: Value, ctx: &Value, expected: bool) {
        let compiled = match Condition::compile(&cond) {
            Ok(c) => c,
            Err(e) => panic!("{cond} failed to compile at {:?}: {}", e.pointer, e.message),
        };
        assert_eq!(compiled.eval(ctx), expected, "condition {cond} on {ctx}");
    }

    /// Compiles `cond`, expecting an error at `pointer` whose message contains
    /// `message`.
    #[track_caller]
    fn check_err(cond: Value, pointer: &str, message: &str) {
        match Condition::compile(&cond) {
            Ok(_) => panic!("{cond} compiled, expected an error at {pointer:?}"),
            Err(e) => {
                assert_eq!(e.pointer, pointer, "pointer for {cond}: {}", e.message);
                assert!(
                    e.message.contains(message),
                    "message for {cond}: {:?} lacks {message:?}",
                    e.message
                );
            }
        }
    }

    fn ctx() -> Value {
        json!({
            "event": {
                "ticket": {
                    "id": "42",
                    "number": 7,
                    "subject": "Setup mail never came",
                    "priority": "high",
                    "status": "open",
                    "tags": ["vip", "billing"],
                    "via": { "channel": "email" },
                    "assignee": null,
                    "score": 4.5,
                    "created": "2024-05-01T10:00:00Z",
                },
                "tags": ["a", "b", "c"],
                "items": [ { "sku": "x", "qty": 1 }, { "sku": "y", "qty": 3 }, { "sku": "z", "qty": "5" } ],
            },
            "steps": { "contact": { "lifecycle": "pending", "id": 42 } },
            "vars": {},
        })
    }

    #[test]
    fn each_operator_true_and_false() {
        let ctx = ctx();
        let t = |op: &str, operand: Value| json!({ "$.event.ticket.subject": { op: operand } });
        let cases = [
            (t("equals", json!("Setup mail never came")), true),
            (t("equals", json!("setup")), false),
            (t("not_equals", json!("setup")), true),
            (t("not_equals", json!("Setup mail never came")), false),
            (t("in", json!(["x", "Setup mail never came"])), true),
            (t("in", json!(["x", "y"])), false),
            (t("in", json!([])), false),
            (t("contains", json!("mail")), true),
            (t("contains", json!("Mail")), false),
            (t("matches", json!("(?i)setup|confirm")), true),
            (t("matches", json!("^confirm")), false),
            (t("exists", json!(true)), true),
            (t("exists", json!(false)), false),
            (t("starts_with", json!("Setup")), true),
            (t("starts_with", json!("mail")), false),
            (t("ends_with", json!("came")), true),
            (t("ends_with", json!("Setup")), false),
            // Two non-numeric strings compare lexicographically.
            (t("gt", json!("Apple")), true),
            (t("gt", json!("Zebra")), false),
            (t("gte", json!("Setup mail never came")), true),
            (t("lt", json!("Zebra")), true),
            (t("lt", json!("Apple")), false),
            (t("lte", json!("Setup mail never came")), true),
        ];
        for (cond, expected) in cases {
            check(cond, &ctx, expected);
        }
        let n = |op: &str, operand: Value| json!({ "$.event.ticket.number": { op: operand } });
        for (cond, expected) in [
            (n("gt", json!(6)), true),
            (n("gt", json!(7)), false),
            (n("gte", json!(7)), true),
            (n("gte", json!(7.5)), false),
            (n("lt", json!(10)), true),
            (n("lt", json!(7)), false),
            (n("lte", json!(7.0)), true),
            (n("lte", json!(6.99)), false),
            // A number never orders against a word.
            (n("gt", json!("abc")), false),
            (n("lt", json!("abc")), false),
            // String operators see a number through its JSON text.
            (n("starts_with", json!("7")), true),
            (n("matches", json!("^\\d+$")), true),
        ] {
            check(cond, &ctx, expected);
        }
        // Array `contains` is element equality; string `contains` never looks
        // inside an array.
        check(
            json!({ "$.event.ticket.tags": { "contains": "vip" } }),
            &ctx,
            true,
        );
        check(
            json!({ "$.event.ticket.tags": { "contains": "vi" } }),
            &ctx,
            false,
        );
        check(
            json!({ "$.event.ticket.via": { "contains": "email" } }),
            &ctx,
            false,
        );
        check(
            json!({ "$.event.ticket.tags": { "contains": ["vip"] } }),
            &ctx,
            false,
        );
        check(json!({ "$.event": { "contains": "x" } }), &ctx, false);
        // ISO-8601 timestamps in one format order lexicographically.
        check(
            json!({ "$.event.ticket.created": { "gt": "2024-04-30T23:59:59Z", "lt": "2024-05-02" } }),
            &ctx,
            true,
        );
    }

    #[test]
    fn several_operators_on_one_path_must_all_hold() {
        let ctx = ctx();
        check(
            json!({ "$.steps.contact.lifecycle": { "equals": "pending", "exists": true } }),
            &ctx,
            true,
        );
        check(
            json!({ "$.steps.contact.lifecycle": { "equals": "pending", "starts_with": "x" } }),
            &ctx,
            false,
        );
        check(
            json!({ "$.event.ticket.number": { "gt": 1, "lt": 5 } }),
            &ctx,
            false,
        );
        check(
            json!({ "$.event.ticket.number": { "gt": 1, "lt": 10 } }),
            &ctx,
            true,
        );
        // Several paths in one map: all hold.
        check(
            json!({ "$.event.ticket.priority": { "equals": "high" }, "$.event.ticket.status": { "equals": "closed" } }),
            &ctx,
            false,
        );
    }

    #[test]
    fn missing_path_only_passes_exists_false_and_not_equals() {
        let ctx = ctx();
        let cases = [
            ("equals", json!("x"), false),
            ("equals", json!(null), false),
            ("not_equals", json!("x"), true),
            ("not_equals", json!(null), true),
            ("in", json!(["x", null]), false),
            ("contains", json!("x"), false),
            ("matches", json!(".*"), false),
            ("exists", json!(true), false),
            ("exists", json!(false), true),
            ("gt", json!(0), false),
            ("gte", json!(""), false),
            ("lt", json!(0), false),
            ("lte", json!("zzz"), false),
            ("starts_with", json!(""), false),
            ("ends_with", json!(""), false),
        ];
        for (op, operand, expected) in cases {
            check(
                json!({ "$.event.ticket.nope": { op: operand.clone() } }),
                &ctx,
                expected,
            );
            // A missing parent is just as missing.
            check(
                json!({ "$.event.nope.deeper[0]": { op: operand } }),
                &ctx,
                expected,
            );
        }
    }

    #[test]
    fn null_is_present_and_equals_only_null() {
        let ctx = ctx();
        let a = |op: &str, operand: Value| json!({ "$.event.ticket.assignee": { op: operand } });
        check(a("exists", json!(true)), &ctx, true);
        check(a("equals", json!(null)), &ctx, true);
        check(a("in", json!([null])), &ctx, true);
        check(a("equals", json!("")), &ctx, false);
        check(a("equals", json!(0)), &ctx, false);
        check(a("equals", json!(false)), &ctx, false);
        check(a("not_equals", json!(null)), &ctx, false);
        check(a("not_equals", json!("bob")), &ctx, true);
        check(a("contains", json!("")), &ctx, false);
        check(a("lt", json!(1)), &ctx, false);
        check(a("starts_with", json!("")), &ctx, false);
    }

    #[test]
    fn several_nodes_pass_if_any_node_passes() {
        let ctx = ctx();
        let w = |op: &str, operand: Value| json!({ "$.event.tags[*]": { op: operand } });
        check(w("equals", json!("b")), &ctx, true);
        check(w("equals", json!("d")), &ctx, false);
        check(w("in", json!(["d", "c"])), &ctx, true);
        check(w("matches", json!("^[bc]$")), &ctx, true);
        check(w("gt", json!("b")), &ctx, true);
        check(w("gt", json!("c")), &ctx, false);
        check(w("exists", json!(true)), &ctx, true);
        check(w("exists", json!(false)), &ctx, false);
        // `not_equals` must hold for every node.
        check(w("not_equals", json!("b")), &ctx, false);
        check(w("not_equals", json!("d")), &ctx, true);
        // An empty array selects nothing: missing.
        let empty = json!({ "event": { "tags": [] } });
        check(w("exists", json!(false)), &empty, true);
        check(w("not_equals", json!("a")), &empty, true);
        check(w("equals", json!("a")), &empty, false);
        // Descendants.
        check(json!({ "$..qty": { "gte": 5 } }), &ctx, true);
        check(json!({ "$..qty": { "gt": 5 } }), &ctx, false);
    }

    #[test]
    fn numbers_equal_numeric_strings() {
        let ctx = ctx();
        // The id arrives as "42"; YAML authors write 42.
        check(json!({ "$.event.ticket.id": { "equals": 42 } }), &ctx, true);
        check(
            json!({ "$.event.ticket.id": { "equals": 42.0 } }),
            &ctx,
            true,
        );
        check(
            json!({ "$.event.ticket.id": { "equals": 43 } }),
            &ctx,
            false,
        );
        check(
            json!({ "$.event.ticket.id": { "not_equals": 42 } }),
            &ctx,
            false,
        );
        check(
            json!({ "$.event.ticket.id": { "in": [1, 42] } }),
            &ctx,
            true,
        );
        check(
            json!({ "$.event.ticket.id": { "gt": 41.5, "lt": "100" } }),
            &ctx,
            true,
        );
        // And the other way round.
        check(
            json!({ "$.steps.contact.id": { "equals": "42" } }),
            &ctx,
            true,
        );
        check(
            json!({ "$.steps.contact.id": { "equals": "42.0" } }),
            &ctx,
            true,
        );
        check(
            json!({ "$.steps.contact.id": { "equals": "042" } }),
            &ctx,
            false,
        );
        check(
            json!({ "$.steps.contact.id": { "equals": " 42" } }),
            &ctx,
            false,
        );
        check(
            json!({ "$.steps.contact.id": { "equals": "4.2e1" } }),
            &ctx,
            true,
        );
        // Two strings compare as strings, numerically ordered when both are numeric.
        check(
            json!({ "$.event.ticket.id": { "equals": "42.0" } }),
            &ctx,
            false,
        );
        check(json!({ "$.event.ticket.id": { "gt": "9" } }), &ctx, true);
        check(json!({ "$.event.ticket.id": { "lt": "9" } }), &ctx, false);
        // Inside arrays too.
        check(
            json!({ "$.event.ticket": { "contains": 1 } }),
            &json!({ "event": { "ticket": ["1"] } }),
            true,
        );
        check(
            json!({ "$.event.ticket": { "contains": 1 } }),
            &json!({ "event": { "ticket": [["1"], "2"] } }),
            false,
        );
        check(
            json!({ "$.event.x": { "equals": [1, { "a": "2" }] } }),
            &json!({ "event": { "x": ["1", { "a": 2 }] } }),
            true,
        );
        // Big integers compare exactly.
        check(
            json!({ "$.event.x": { "equals": 9007199254740993u64 } }),
            &json!({ "event": { "x": "9007199254740992" } }),
            false,
        );
        check(
            json!({ "$.event.x": { "gt": -1 } }),
            &json!({ "event": { "x": u64::MAX } }),
            true,
        );
        // Booleans are not numbers.
        check(
            json!({ "$.event.x": { "equals": 1 } }),
            &json!({ "event": { "x": true } }),
            false,
        );
    }

    #[test]
    fn combinators_nest() {
        let ctx = ctx();
        let cond = json!([
            { "$.event.ticket.subject": { "matches": "(?i)setup|confirm" } },
            { "$.event.ticket.priority": { "in": ["high", "urgent"] } },
            { "any": [
                { "$.event.ticket.tags": { "contains": "nobody" } },
                { "$.event.ticket.via.channel": { "not_equals": "chat" } },
            ] },
            { "not": { "$.event.ticket.status": { "equals": "closed" } } },
            { "all": [ { "$.vars": { "exists": true } }, [ { "$.steps.contact": { "exists": true } } ] ] },
        ]);
        check(cond.clone(), &ctx, true);
        let mut closed = ctx.clone();
        closed["event"]["ticket"]["status"] = json!("closed");
        check(cond.clone(), &closed, false);
        let mut chat = ctx.clone();
        chat["event"]["ticket"]["via"]["channel"] = json!("chat");
        check(cond, &chat, false);
        check(
            json!({ "not": { "not": { "$.event": { "exists": true } } } }),
            &ctx,
            true,
        );
        check(
            json!({ "not": [ { "$.event": { "exists": true } }, { "$.nope": { "exists": true } } ] }),
            &ctx,
            true,
        );
        check(
            json!({ "any": [ { "$.a": { "exists": true } }, { "$.b": { "exists": true } } ] }),
            &ctx,
            false,
        );
        check(
            json!({ "all": [ { "$.event": { "exists": true } } ], "any": [ { "$.b": { "exists": false } } ] }),
            &ctx,
            true,
        );
        assert!(Condition::always().eval(&ctx));
        assert!(Condition::always().eval(&Value::Null));
    }

    #[test]
    fn filter_paths_use_rfc_9535_syntax() {
        let ctx = ctx();
        // qty 3 passes; qty "5" is a string, which RFC 9535 does not order against 2.
        check(
            json!({ "$.event.items[?@.qty > 2].sku": { "equals": "y" } }),
            &ctx,
            true,
        );
        check(
            json!({ "$.event.items[?@.qty > 2].sku": { "in": ["z"] } }),
            &ctx,
            false,
        );
        check(
            json!({ "$.event.items[?@.qty > 2]": { "exists": true } }),
            &ctx,
            true,
        );
        check(
            json!({ "$.event.items[?@.qty > 99]": { "exists": false } }),
            &ctx,
            true,
        );
        check(
            json!({ "$.event.items[?@.sku == 'z'].qty": { "equals": 5 } }),
            &ctx,
            true,
        );
        check(
            json!({ "$.event.items[?match(@.sku, '[xy]')].qty": { "lt": 2 } }),
            &ctx,
            true,
        );
        check(
            json!({ "$.event.items[?@.qty == $.steps.contact.id]": { "exists": true } }),
            &ctx,
            false,
        );
    }

    #[test]
    fn compile_errors_point_at_the_problem() {
        let ok = json!({ "$.event.x": { "equals": 1 } });
        let cases = [
            (json!([ok, { "$.event.x": { "matches": "(" } }]), "/1/$.event.x/matches", "invalid regex `(`"),
            (json!({ "$.event.x": { "matches": 5 } }), "/$.event.x/matches", "`matches` expects a regex string, found a number"),
            (json!({ "$.event.x": { "matches": "(?:\\w{100}){100}" } }), "/$.event.x/matches", "size limit"),
            (json!({ "$.event.x": { "equal": 1 } }), "/$.event.x/equal", "unknown operator `equal`, expected one of equals, not_equals, in, contains, matches, exists, gt, gte, lt, lte, starts_with, ends_with (did you mean `equals`?)"),
            (json!({ "$.event.x": { "startswith": "a" } }), "/$.event.x/startswith", "(did you mean `starts_with`?)"),
            (json!({ "$.event.x": { "frobnicate": 1 } }), "/$.event.x/frobnicate", "unknown operator `frobnicate`, expected one of equals"),
            (json!([ok, { "$.event[": { "equals": 1 } }]), "/1/$.event[", "invalid JSONPath `$.event[`: expected selector at column 9"),
            (json!({ "$.a/b~c[": { "equals": 1 } }), "/$.a~1b~0c[", "invalid JSONPath"),
            (json!({ "$.event.x": { "in": "high" } }), "/$.event.x/in", "`in` expects a list, found a string"),
            (json!({ "$.event.x": { "exists": "yes" } }), "/$.event.x/exists", "`exists` expects true or false"),
            (json!({ "$.event.x": { "gt": [1] } }), "/$.event.x/gt", "`gt` expects a number or a string"),
            (json!({ "$.event.x": { "lte": null } }), "/$.event.x/lte", "`lte` expects a number or a string"),
            (json!({ "$.event.x": { "starts_with": true } }), "/$.event.x/starts_with", "`starts_with` expects a string, found a boolean"),
            (json!({ "$.event.x": { "ends_with": {} } }), "/$.event.x/ends_with", "`ends_with` expects a string"),
            (json!({ "$.event.x": {} }), "/$.event.x", "has no operators"),
            (json!({ "$.event.x": "pending" }), "/$.event.x", "expects a map of operators"),
            (json!({ "event.x": { "equals": 1 } }), "/event.x", "a condition key must be a JSONPath starting with `$` or one of all, any, not, within_business_hours (did you mean `$.event.x`?)"),
            (json!({ "alll": [ok] }), "/alll", "(did you mean `all`?)"),
            (json!({ "or": [ok] }), "/or", "(did you mean `any`?)"),
            (json!({ "equals": 1 }), "/equals", "`equals` is an operator"),
            (json!({ "hello": 1 }), "/hello", "a condition key must be a JSONPath starting with `$` or one of all, any, not"),
            (json!([ok, { "all": [] }]), "/1/all", "`all` expects a non-empty list"),
            (json!({ "any": [] }), "/any", "`any` expects a non-empty list"),
            (json!({ "any": ok }), "/any", "`any` expects a non-empty list"),
            (json!({ "any": [ok, { "not": { "$.x": { "equals": 1, "matches": "[" } } }] }), "/any/1/not/$.x/matches", "invalid regex"),
            (json!({ "not": [] }), "/not", "must not be empty"),
            (json!({ "not": 3 }), "/not", "expected a condition"),
            (json!([]), "", "must not be empty"),
            (json!({}), "", "must not be empty"),
            (json!([ok, {}]), "/1", "must not be empty"),
            (json!("$.event.x"), "", "expected a condition"),
            (json!(null), "", "expected a condition"),
            (json!([[ok, 1]]), "/0/1", "expected a condition"),
        ];
        for (cond, pointer, message) in cases {
            check_err(cond, pointer, message);
        }
        let mut deep = ok;
        for _ in 0..100 {
            deep = json!({ "not": deep });
        }
        check_err(deep, &"/not".repeat(65), "nested too deeply");
    }

    #[test]
    fn within_business_hours_asks_the_calendar() {
        let cals = crate::time::calendar::compile_all(&json!({"eu": {
            "timezone": "Europe/Berlin", "hours": {"mon-fri": "09:00-17:00"}
        }}))
        .unwrap();
        let mut c = Condition::compile(&json!([
            {"within_business_hours": "eu"},
            {"not": {"within_business_hours": {"calendar": "eu", "at": "$.event.at"}}}
        ]))
        .unwrap();
        assert!(c.bind_calendars(&cals).is_empty());
        // Monday 10:00 Berlin now; the event's time is Sunday.
        let ctx = json!({"run": {"now": "2025-12-01T09:00:00Z"}, "event": {"at": "2025-11-30T10:00:00Z"}});
        assert!(c.eval(&ctx));
        let ctx = json!({"run": {"now": "2025-12-01T09:00:00Z"}, "event": {"at": "2025-12-01T10:00:00Z"}});
        assert!(!c.eval(&ctx));
        // No clock, or an unreadable time: not within business hours.
        let plain = Condition::compile(&json!({"within_business_hours": "eu"})).unwrap();
        assert!(!plain.eval(&json!({"run": {}})), "unbound");
        let mut bad = Condition::compile(&json!({"within_business_hours": "us"})).unwrap();
        let errs = bad.bind_calendars(&cals);
        assert_eq!(errs[0].0, "/within_business_hours");
        assert!(errs[0].1.contains("unknown calendar `us`"), "{errs:?}");
        check_err(
            json!({"within_business_hours": {"calendar": "eu", "when": 1}}),
            "/within_business_hours/when",
            "expects a calendar name",
        );
        check_err(
            json!({"within_business_hours": 3}),
            "/within_business_hours",
            "calendar name",
        );
    }

    #[test]
    fn paths_lists_every_jsonpath_with_its_pointer() {
        let cond = Condition::compile(&json!([
            { "$.event.a": { "exists": true } },
            { "any": [ { "$.steps.contact.id": { "equals": 1 } }, { "not": { "$.vars['a/b']": { "exists": true } } } ] },
        ]))
        .unwrap();
        assert_eq!(
            cond.paths(),
            vec![
                ("/0/$.event.a".to_owned(), "$.event.a".to_owned()),
                (
                    "/1/any/0/$.steps.contact.id".to_owned(),
                    "$.steps.contact.id".to_owned()
                ),
                (
                    "/1/any/1/not/$.vars['a~1b']".to_owned(),
                    "$.vars['a/b']".to_owned()
                ),
            ]
        );
        assert!(Condition::always().paths().is_empty());
    }

    /// JSON trees whose keys mix operators, combinators, JSONPath-looking and
    /// arbitrary strings.
    fn arb_tree() -> impl Strategy<Value = Value> {
        let key = prop_oneof![
            Just("all".to_owned()),
            Just("any".to_owned()),
            Just("not".to_owned()),
            proptest::sample::select(OPERATORS.to_vec()).prop_map(str::to_owned),
            "\\$[.a-z0-9*\\[\\]?@<>=!'\"(), :$-]{0,16}",
            "\\$\\.(event|steps|vars)(\\.[a-z]{1,3}|\\[[0-9*:-]{1,4}\\]|\\[\\?@\\.[a-z] [<>=!]=? [0-9'a]+\\])*",
            ".{0,8}",
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[a-z0-9()\\[\\]*+?.\\\\{},^$|-]{0,10}".prop_map(Value::String),
        ];
        leaf.prop_recursive(5, 48, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((key.clone(), inner), 0..4)
                    .prop_map(|entries| Value::Object(entries.into_iter().collect())),
            ]
        })
    }

    /// Conditions that mostly compile: known paths, known operators,
    /// arbitrary operands, nested in combinators.
    fn arb_condition() -> impl Strategy<Value = Value> {
        let path = proptest::sample::select(vec![
            "$",
            "$.event",
            "$.event.a",
            "$.event.a[*]",
            "$.event.a[0]",
            "$.event.a[-1]",
            "$.event.a[1:3]",
            "$.event.a[::-1]",
            "$..a",
            "$..*",
            "$.event.a[?@.b > 2]",
            "$.event.a[?@.b == 'x'].c",
            "$.event[?length(@) > 1]",
            "$.event.a[?match(@.b, 'x.*')]",
            "$.steps.*.id",
            "$.vars['a', 'b']",
        ]);
        let scalar = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[a-c0-9.-]{0,4}".prop_map(Value::String),
        ];
        let text = prop_oneof![
            any::<i64>().prop_map(Value::from),
            "[a-c0-9.-]{0,4}".prop_map(Value::String)
        ];
        let op_operand = prop_oneof![
            (
                proptest::sample::select(vec!["equals", "not_equals", "contains"]),
                scalar.clone()
            ),
            (
                Just("in"),
                prop::collection::vec(scalar, 0..3).prop_map(Value::Array)
            ),
            (Just("matches"), "[a-c.*+?|^$]{0,6}".prop_map(Value::String)),
            (Just("exists"), any::<bool>().prop_map(Value::Bool)),
            (
                proptest::sample::select(vec![
                    "gt",
                    "gte",
                    "lt",
                    "lte",
                    "starts_with",
                    "ends_with"
                ]),
                text
            ),
            (proptest::sample::select(OPERATORS.to_vec()), arb_tree()),
        ];
        let leaf = (path, op_operand).prop_map(|(p, (o, v))| json!({ p: { o: v } }));
        leaf.prop_recursive(3, 16, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 1..3).prop_map(|v| json!({ "all": v })),
                prop::collection::vec(inner.clone(), 1..3).prop_map(|v| json!({ "any": v })),
                inner.clone().prop_map(|c| json!({ "not": c })),
                prop::collection::vec(inner, 1..3).prop_map(Value::Array),
            ]
        })
    }

    /// Contexts whose values sit under the keys the paths above look at.
    fn arb_context() -> impl Strategy<Value = Value> {
        (arb_tree(), arb_tree(), arb_tree()).prop_map(|(a, b, c)| {
            json!({ "event": { "a": a.clone(), "b": b }, "steps": { "s": { "id": c } }, "vars": { "a": a } })
        })
    }

    proptest! {
        #[test]
        fn compile_never_panics(tree in arb_tree(), ctx in arb_tree()) {
            if let Ok(cond) = Condition::compile(&tree) {
                cond.eval(&ctx);
                cond.paths();
            }
        }

        #[test]
        fn eval_never_panics(cond in arb_condition(), ctx in arb_context()) {
            if let Ok(cond) = Condition::compile(&cond) {
                let _ = cond.eval(&ctx);
                // Evaluation is a pure function of the context.
                prop_assert_eq!(cond.eval(&ctx), cond.eval(&ctx));
            }
        }
    }
}
