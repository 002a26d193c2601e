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
//! Layout: compiling is here; evaluating the tree is in `eval.rs`; how
//! operators compare values (loose equality, ordering, scalar text) is in
//! `compare.rs`; the tests (examples and properties) in `tests.rs`.
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

use crate::jsonpath::{describe as jsonpath_error, parse_shared};
use jsonpath_rust::parser::model::JpQuery;
use jsonpath_rust::query::js_path_process;
use regex_automata::meta::{self, Regex};
use regex_automata::nfa::thompson::{self, WhichCaptures};
use regex_automata::{Anchored, Input, MatchKind, PatternID};
use serde_json::{Map, Value};
use std::sync::{Arc, OnceLock};

use crate::template::{Template, Templates};
use crate::time::{Calendar, Calendars};

/// Largest compiled size of a `matches` regex; a bigger one is a compile
/// error rather than a slow or memory-hungry match on every event.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Deepest nesting of `all`/`any`/`not`/lists accepted. Compiling and
/// evaluating recurse, so the limit keeps a pathological file from
/// overflowing the stack; real conditions nest a few levels.
const MAX_DEPTH: usize = 64;

/// One condition operator: the list [`OPERATORS`] is what the compiler
/// accepts (a name not in it is refused before any other check), what
/// `check`'s messages offer, and what `switchboard docs` writes into the
/// README — so the three cannot disagree.
#[derive(Debug, Clone, Copy)]
pub struct Operator {
    pub name: &'static str,
    /// The operand it takes.
    pub operand: &'static str,
    /// When it holds, said of the value the JSONPath selects.
    pub holds: &'static str,
}

/// Every operator (the README lists them in this order).
pub const OPERATORS: &[Operator] = &[
    Operator {
        name: "equals",
        operand: "any value",
        holds: "equals the operand (a number equals a numeric string: `42` = `\"42\"`)",
    },
    Operator {
        name: "not_equals",
        operand: "any value",
        holds: "does not equal the operand; also holds when the path selects nothing",
    },
    Operator {
        name: "in",
        operand: "a list",
        holds: "equals one of the listed values",
    },
    Operator {
        name: "contains",
        operand: "a value",
        holds: "is a string containing the operand as a substring, or a list containing it as an element",
    },
    Operator {
        name: "matches",
        operand: "a regular expression (fixed, not a template)",
        holds: "matches it ([Rust regex syntax](https://docs.rs/regex); `(?i)` for case-insensitive)",
    },
    Operator {
        name: "exists",
        operand: "`true` or `false` (fixed)",
        holds: "`true`: the path selects something; `false`: it selects nothing",
    },
    Operator {
        name: "gt",
        operand: "a number or a string",
        holds: "is greater than the operand (numerically when both are numbers or numeric strings)",
    },
    Operator {
        name: "gte",
        operand: "a number or a string",
        holds: "is greater than or equal to the operand",
    },
    Operator {
        name: "lt",
        operand: "a number or a string",
        holds: "is less than the operand",
    },
    Operator {
        name: "lte",
        operand: "a number or a string",
        holds: "is less than or equal to the operand",
    },
    Operator {
        name: "starts_with",
        operand: "a string",
        holds: "is a string starting with the operand",
    },
    Operator {
        name: "ends_with",
        operand: "a string",
        holds: "is a string ending with the operand",
    },
];

/// The operators' names, in [`OPERATORS`] order.
fn operator_names() -> Vec<&'static str> {
    OPERATORS.iter().map(|o| o.name).collect()
}

fn is_operator(name: &str) -> bool {
    OPERATORS.iter().any(|o| o.name == name)
}

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
    at: Option<(String, Arc<JpQuery>)>,
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
    /// The JSONPath parsed once, at compile time, shared with every other
    /// condition of the same path ([`crate::jsonpath::parse_shared`]).
    query: Arc<JpQuery>,
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
    /// Shared by every condition with the same pattern ([`pattern`]).
    Matches(Matches),
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

    /// Is this the condition of a recipe or step without `if:`?
    pub fn is_always(&self) -> bool {
        matches!(&self.root, Node::All(v) if v.is_empty())
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

    /// Compile the templated operands with `compile(source, pointer)`
    /// (the loader's, which reports what does not compile at its place).
    pub fn bind_templates(&mut self, mut compile: impl FnMut(&str, &str) -> Option<Template>) {
        self.root.visit_ops(&mut |op| {
            if let Op::Templated {
                pointer,
                source,
                template,
                ..
            } = op
            {
                *template = compile(source, pointer);
            }
        });
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
                    let q = parse_shared(path).map_err(|e| {
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
        k if is_operator(k) => {
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
    let query = parse_shared(path).map_err(|e| {
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
            if is_operator(name) {
                return Ok(Op::Templated {
                    name: name.to_string(),
                    pointer: pointer.to_string(),
                    source: text.clone(),
                    template: None,
                });
            }
        }
    }
    if !is_operator(name) {
        let names = operator_names();
        let mut message = format!(
            "unknown operator `{name}`, expected one of {}",
            names.join(", ")
        );
        if let Some(s) = suggest(name, &names) {
            message.push_str(&format!(" (did you mean `{s}`?)"));
        }
        return Err(ConditionError::new(pointer, message));
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
            Value::String(source) => Op::Matches(Matches {
                pattern: pattern(source).map_err(|e| {
                    ConditionError::new(pointer, format!("invalid regex `{source}`: {e}"))
                })?,
                shared: OnceLock::new(),
            }),
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
        // `is_operator` let it through: an operator listed without an arm.
        _ => {
            return Err(ConditionError::new(
                pointer,
                format!("operator `{name}` is listed but not implemented"),
            ))
        }
    })
}

/// A `matches` operand: its pattern, checked when compiled, shared with
/// every other condition of the process that uses the same pattern
/// ([`pattern`]), and where this condition's answer comes from — the
/// pattern's own regex, or one shared by many patterns ([`share_regexes`]).
#[derive(Debug, Clone)]
struct Matches {
    pattern: Arc<Pattern>,
    /// Set by [`share_regexes`]: the regex holding this pattern among
    /// others, and its number there.
    shared: OnceLock<(Arc<Regex>, PatternID)>,
}

impl Matches {
    fn is_match(&self, text: &str) -> bool {
        match self.shared.get() {
            // The pattern is stored as `(?s:.)*?(pattern)`, so a search
            // anchored at the start for it alone finds it anywhere.
            Some((re, id)) => re.is_match(Input::new(text).anchored(Anchored::Pattern(*id))),
            None => self.pattern.regex().is_some_and(|re| re.is_match(text)),
        }
    }
}

/// A checked `matches` pattern and its own regex, built when first needed.
#[derive(Debug)]
struct Pattern {
    source: String,
    /// Built by [`Pattern::regex`]: at the first match, or when the catalog
    /// gives the pattern to [`share_regexes`] in a group too small to
    /// share. `None` only if building failed after the pattern was
    /// checked, which the checks make impossible (it then never matches).
    regex: OnceLock<Option<Regex>>,
}

impl Pattern {
    fn regex(&self) -> Option<&Regex> {
        self.regex
            .get_or_init(|| build_regex(&self.source).ok())
            .as_ref()
    }
}

/// The checked pattern `source`, shared with every other condition of the
/// process that uses the same pattern.
///
/// Compiling a condition only checks the pattern (its syntax, and the size
/// of its NFA against [`REGEX_SIZE_LIMIT`]); its regex is built later, on
/// its own or in a group ([`share_regexes`]), so 10,000 recipes with
/// distinct patterns do not build 10,000 regexes to throw them away.
///
/// Shared: 10,000 recipes with the same condition check and build one
/// pattern, not 10,000. Entries are weak: a pattern is freed with the last
/// condition using it (a reloaded catalog shares what the old one compiled
/// while both are alive). A regex does no I/O and is `Sync`, so sharing it
/// across recipes and threads is sound.
fn pattern(source: &str) -> Result<Arc<Pattern>, String> {
    use std::collections::HashMap;
    use std::sync::{Mutex, Weak};
    static SHARED: OnceLock<Mutex<HashMap<String, Weak<Pattern>>>> = OnceLock::new();
    let shared = SHARED.get_or_init(Default::default);
    // A panic while holding the lock leaves a map of valid entries.
    let mut map = shared.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = map.get(source).and_then(Weak::upgrade) {
        return Ok(p);
    }
    check_pattern(source)?;
    let p = Arc::new(Pattern {
        source: source.to_owned(),
        regex: OnceLock::new(),
    });
    // Drop the entries of freed patterns as the map doubles, so reloads do
    // not grow it without bound.
    if map.len() >= 64 && map.len().is_power_of_two() {
        map.retain(|_, w| w.strong_count() > 0);
    }
    map.insert(source.to_owned(), Arc::downgrade(&p));
    Ok(p)
}

/// The fewest distinct patterns that [`share_regexes`] compiles into one
/// regex. Below it each pattern keeps its own (a lazy DFA: 30–470 ns a
/// match while few take turns, ~9.5 KiB each plus ~12 KiB of cache per
/// thread after its first match); from it on, shared regexes hold them
/// (~1.7 KiB a pattern, one cache per thread and regex), answered by the
/// PikeVM at 0.5–7 µs a pattern by subject length — about what 10,000
/// lean regexes taking turns cost, but not what a few do (BENCHMARKS.md,
/// "Sixth 11-30 session: one regex for many patterns").
pub const SHARED_REGEX_MIN: usize = 256;

/// Build the regexes of the `matches` patterns of `conditions` —
/// conditions evaluated on the same events, e.g. the `if`s of the recipes
/// on one (connector, event type) — as the catalog loads: with at least
/// [`SHARED_REGEX_MIN`] distinct patterns, one regex per
/// [`SHARED_REGEX_CHUNK`] of them (each pattern its own numbered part,
/// asked for alone, so the answer is the pattern's own); with fewer, each
/// pattern's own regex, built now rather than on the first event.
///
/// Only where a condition's answer comes from changes, never the answer;
/// a condition given to no group builds its pattern's regex when first
/// evaluated.
pub fn share_regexes<'a>(conditions: impl IntoIterator<Item = &'a Condition>) {
    share_regexes_from(conditions, SHARED_REGEX_MIN);
}

fn share_regexes_from<'a>(conditions: impl IntoIterator<Item = &'a Condition>, min: usize) {
    use std::collections::HashMap;
    let mut ops: Vec<&Matches> = Vec::new();
    for c in conditions {
        c.root.visit(&mut |op| {
            if let Op::Matches(m) = op {
                ops.push(m);
            }
        });
    }
    // Distinct patterns, numbered in order of first use.
    let mut ids: HashMap<*const Pattern, usize> = HashMap::new();
    let mut patterns: Vec<&Pattern> = Vec::new();
    for m in &ops {
        ids.entry(Arc::as_ptr(&m.pattern)).or_insert_with(|| {
            patterns.push(&m.pattern);
            patterns.len() - 1
        });
    }
    if patterns.len() < min {
        for p in patterns {
            p.regex();
        }
        return;
    }
    // Built a chunk at a time, so what building holds on the way (the
    // parsed patterns, the NFA builder's states) is a chunk's.
    let mut regexes: Vec<Option<Arc<Regex>>> = Vec::new();
    for chunk in patterns.chunks(SHARED_REGEX_CHUNK) {
        let re = build_shared_regex(chunk).map(Arc::new);
        if re.is_none() {
            for p in chunk {
                p.regex();
            }
        }
        regexes.push(re);
    }
    for m in ops {
        let i = ids[&Arc::as_ptr(&m.pattern)];
        let Some(re) = &regexes[i / SHARED_REGEX_CHUNK] else {
            continue;
        };
        if let Ok(id) = PatternID::new(i % SHARED_REGEX_CHUNK) {
            // Already set (a condition given twice): the first regex answers.
            let _ = m.shared.set((re.clone(), id));
        }
    }
}

/// The most patterns one shared regex holds: building 10,000 at once held
/// ~60 MiB on the way (parsed patterns, the NFA builder's doubling state
/// list) for an NFA of 12.6; each further regex costs a few KiB.
const SHARED_REGEX_CHUNK: usize = 1024;

/// One regex of `patterns`, pattern `i` as `(?s:.)*?(patterns[i])` so that
/// a search anchored on it alone finds it anywhere in the subject. Only
/// the PikeVM answers (no lazy DFA: it would need a reverse NFA, ~1 KiB
/// more a pattern, and a start state per pattern). `None` if a pattern no
/// longer parses or the regex does not build, which the checks of
/// [`pattern`] rule out; the patterns then keep their own regexes.
fn build_shared_regex(patterns: &[&Pattern]) -> Option<Regex> {
    use regex_syntax::hir::{Class, ClassUnicode, Hir, Repetition};
    let any = Hir::repetition(Repetition {
        min: 0,
        max: None,
        greedy: false,
        sub: Box::new(Hir::class(Class::Unicode(ClassUnicode::new([
            regex_syntax::hir::ClassUnicodeRange::new('\0', char::MAX),
        ])))),
    });
    let hirs = patterns
        .iter()
        .map(|p| {
            let hir = parse(&p.source).ok()?;
            Some(Hir::concat(vec![any.clone(), without_groups(&hir)]))
        })
        .collect::<Option<Vec<_>>>()?;
    meta::Builder::new()
        .configure(lean_config().nfa_size_limit(None).hybrid(false))
        .build_many_from_hir(&hirs)
        .ok()
}

/// What every `matches` regex is built with: `is_match` only, so neither
/// capture groups, a literal prefilter, a full DFA, a one-pass DFA nor a
/// backtracker — the lazy DFA answers, building its states as subjects
/// need them (the PikeVM if its cache gives up). For
/// `(?i)(setup|confirm|w00001)`, the `regex` crate built ~60 KiB in
/// ~0.5 ms: an Aho-Corasick DFA over the ~180 case-folded literals
/// (~26 KiB), a full DFA (~15 KiB), a one-pass DFA (~10 KiB); this builds
/// ~8 KiB in ~45 µs, plus ~12 KiB of lazy-DFA cache on the first match
/// (BENCHMARKS.md, "10,000 loaded recipes").
fn lean_config() -> meta::Config {
    meta::Config::new()
        .match_kind(MatchKind::LeftmostFirst)
        .utf8_empty(true)
        .which_captures(WhichCaptures::None)
        .nfa_size_limit(Some(REGEX_SIZE_LIMIT))
        .auto_prefilter(false)
        .dfa(false)
        .onepass(false)
        .backtrack(false)
}

/// `pattern` parsed with the `regex` crate's syntax (Unicode, UTF-8, the
/// same nesting limit).
fn parse(pattern: &str) -> Result<regex_syntax::hir::Hir, String> {
    regex_syntax::ParserBuilder::new()
        .build()
        .parse(pattern)
        .map_err(|e| regex_error(&e.to_string()))
}

/// Check `pattern` as [`build_regex`] would build it, without building
/// more than its NFA: it parses, and the NFA fits [`REGEX_SIZE_LIMIT`]
/// (the meta regex compiles the same NFA with the same configuration, so
/// a checked pattern builds).
fn check_pattern(pattern: &str) -> Result<(), String> {
    let hir = without_groups(&parse(pattern)?);
    // What `meta` derives from `lean_config` for its forward NFA.
    let config = thompson::Config::new()
        .utf8(true)
        .nfa_size_limit(Some(REGEX_SIZE_LIMIT))
        .shrink(false)
        .which_captures(WhichCaptures::None);
    thompson::Compiler::new()
        .configure(config)
        .build_from_hir(&hir)
        .map(drop)
        .map_err(|e| match e.size_limit() {
            Some(n) => format!("the compiled regex exceeds the size limit of {n} bytes"),
            None => e.to_string(),
        })
}

/// Build `pattern` for `is_match` only ([`lean_config`] says what and
/// why), with a compiled-size limit of [`REGEX_SIZE_LIMIT`].
fn build_regex(pattern: &str) -> Result<Regex, String> {
    meta::Builder::new()
        .configure(lean_config())
        .build_from_hir(&without_groups(&parse(pattern)?))
        .map_err(|e| match e.size_limit() {
            Some(n) => format!("the compiled regex exceeds the size limit of {n} bytes"),
            None => e.to_string(),
        })
}

/// `hir` with every capture group replaced by what it groups: the same
/// language, nothing to record.
fn without_groups(hir: &regex_syntax::hir::Hir) -> regex_syntax::hir::Hir {
    use regex_syntax::hir::{Hir, HirKind, Repetition};
    match hir.kind() {
        HirKind::Capture(c) => without_groups(&c.sub),
        HirKind::Concat(v) => Hir::concat(v.iter().map(without_groups).collect()),
        HirKind::Alternation(v) => Hir::alternation(v.iter().map(without_groups).collect()),
        HirKind::Repetition(r) => Hir::repetition(Repetition {
            sub: Box::new(without_groups(&r.sub)),
            ..r.clone()
        }),
        HirKind::Empty | HirKind::Literal(_) | HirKind::Class(_) | HirKind::Look(_) => hir.clone(),
    }
}

/// A one-line description of a regex syntax error. The parser's message
/// is a multi-line picture; keep its last line and the column the caret
/// marks.
fn regex_error(full: &str) -> String {
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

/// How an error message names the kind of `v`.
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

mod compare;
mod eval;
#[cfg(test)]
mod tests;

use compare::scalar_text;
