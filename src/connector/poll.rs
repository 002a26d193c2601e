//! Polling triggers (`polls:` of a connector file), compiled, and the pure
//! decisions a poll makes about one answer: which nodes are its items, each
//! item's identity, the cursor after it, whether another page follows.
//!
//! The engine's poller (`engine::poller`) owns time, the store and the
//! calls; everything here is a function of the answer and the poll's
//! declaration, so it is tested without a clock or a server. This module
//! does no I/O.

use super::config::{FirstRunFile, PollFile, PollIdFile};
use super::{Action, TplCx};
use crate::jsonpath::JsonPath;
use crate::template::{Template, Templates, ValueTemplate};
use crate::yaml::{LoadError, SourceMap};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Shortest interval a poll may have.
pub const MIN_EVERY_MS: i64 = 1_000;
/// Default and largest number of pages one poll follows.
pub const DEFAULT_MAX_PAGES: u32 = 10;
pub const MAX_PAGES: u32 = 100;
/// Longest item identity kept (a longer one is hashed).
pub const MAX_ID_BYTES: usize = 256;

/// A compiled `polls.NAME`.
#[derive(Debug)]
pub struct Poll {
    pub name: String,
    pub connector: String,
    pub action: Arc<Action>,
    pub every_ms: i64,
    /// Where in each interval the poll's slots lie: `[0, jitter)`, from its name.
    pub offset_ms: i64,
    /// The action's inputs, over `{cursor, page, run: {now}}`.
    pub with: Vec<(String, ValueTemplate)>,
    /// Inputs whose template reads `cursor` or `page`: rendering them empty is an error.
    pub positional: Vec<String>,
    pub items: JsonPath,
    pub id: ItemId,
    pub event_type: String,
    /// Over `{item}`; none: the item itself.
    pub body: Option<ValueTemplate>,
    pub cursor: Option<Cursor>,
    pub pages: Pages,
    pub first_run: FirstRun,
}

/// An item's identity.
#[derive(Debug)]
pub enum ItemId {
    /// The values at these paths, joined by `:`.
    Paths(Vec<JsonPath>),
    /// SHA-256 of the item's JSON.
    Hash,
}

#[derive(Debug)]
pub enum CursorFrom {
    /// The highest value at this path among the items.
    Item(JsonPath),
    /// The value at this path of the answer.
    Response(JsonPath),
}

#[derive(Debug)]
pub struct Cursor {
    pub from: CursorFrom,
    pub initial: Option<Template>,
    pub backfill: Option<Template>,
}

#[derive(Debug)]
pub struct Pages {
    pub token: Option<JsonPath>,
    pub until: Option<JsonPath>,
    /// 1 without `pages:`.
    pub max: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstRun {
    Now,
    All,
    Latest(u32),
}

/// What `items:` found in one answer.
#[derive(Debug, PartialEq)]
pub enum Items {
    Found(Vec<Value>),
    /// The path selects nothing and no list where it points: probably the
    /// wrong path (an empty list is `Found(vec![])`).
    Nothing,
}

impl Poll {
    /// `<connector>.<poll>`, as the CLI, the API and the logs name it.
    pub fn full_name(&self) -> String {
        format!("{}.{}", self.connector, self.name)
    }

    /// The slot at or before `now` (ms): slots are `k·every + offset`.
    pub fn slot_at_or_before(&self, now: i64) -> i64 {
        (now - self.offset_ms).div_euclid(self.every_ms) * self.every_ms + self.offset_ms
    }

    /// The items of one answer. A path selecting one list means its
    /// elements; a path selecting nothing is [`Items::Nothing`] unless it
    /// ends in `[*]` over a list that is empty.
    pub fn items(&self, answer: &Value) -> Items {
        let nodes = self.items.select(answer);
        if let [Value::Array(list)] = nodes.as_slice() {
            if !self.items.is_plural() {
                return Items::Found(list.clone());
            }
        }
        if !nodes.is_empty() {
            return Items::Found(nodes.into_iter().cloned().collect());
        }
        let src = self.items.as_str();
        let parent = src
            .strip_suffix("[*]")
            .or_else(|| src.strip_suffix(".*"))
            .and_then(|p| JsonPath::compile(p).ok());
        match parent.as_ref().and_then(|p| p.first(answer)) {
            Some(Value::Array(_)) => Items::Found(Vec::new()),
            _ => Items::Nothing,
        }
    }

    /// Item `index`'s identity, or an error naming the path it lacks.
    pub fn item_id(&self, item: &Value, index: usize) -> Result<String, String> {
        let id = match &self.id {
            ItemId::Hash => hash(item),
            ItemId::Paths(paths) => {
                let mut parts = Vec::with_capacity(paths.len());
                for p in paths {
                    match p.first(item) {
                        None | Some(Value::Null) => {
                            return Err(format!(
                                "item {index} of `{}` has no id at `{}`",
                                self.items.as_str(),
                                p.as_str()
                            ))
                        }
                        Some(Value::String(s)) if s.is_empty() => {
                            return Err(format!(
                                "item {index} of `{}` has an empty id at `{}`",
                                self.items.as_str(),
                                p.as_str()
                            ))
                        }
                        Some(Value::String(s)) => parts.push(s.clone()),
                        Some(other) => parts.push(other.to_string()),
                    }
                }
                parts.join(":")
            }
        };
        Ok(if id.len() > MAX_ID_BYTES {
            format!("sha256:{}", hash(&Value::String(id)))
        } else {
            id
        })
    }

    /// The cursor after one page: the answer's position (`cursor.response`;
    /// kept when the answer has none), or the highest item value
    /// (`cursor.item`, never lower than `current`).
    pub fn next_cursor(
        &self,
        current: Option<&Value>,
        answer: &Value,
        items: &[Value],
    ) -> Option<Value> {
        let Some(c) = &self.cursor else {
            return current.cloned();
        };
        match &c.from {
            CursorFrom::Response(p) => match p.first(answer) {
                Some(v) if !is_empty(v) => Some(v.clone()),
                _ => current.cloned(),
            },
            CursorFrom::Item(p) => {
                let mut best = current.cloned();
                for v in items.iter().filter_map(|i| p.first(i)) {
                    if is_empty(v) {
                        continue;
                    }
                    if best
                        .as_ref()
                        .is_none_or(|b| compare(v, b) == std::cmp::Ordering::Greater)
                    {
                        best = Some(v.clone());
                    }
                }
                best
            }
        }
    }

    /// Is `item` older than the high-water mark (`cursor.item` only)?
    /// Equal is not older: an API's "since" is often inclusive, and the
    /// identity dedupes the item seen at the mark.
    pub fn is_old(&self, item: &Value, cursor: Option<&Value>) -> bool {
        let (
            Some(Cursor {
                from: CursorFrom::Item(p),
                ..
            }),
            Some(mark),
        ) = (&self.cursor, cursor)
        else {
            return false;
        };
        p.first(item)
            .is_some_and(|v| !is_empty(v) && compare(v, mark) == std::cmp::Ordering::Less)
    }

    /// The next page's token, when `pages.token` is declared and the
    /// answer has one (not null, not empty).
    pub fn page_token(&self, answer: &Value) -> Option<Value> {
        let p = self.pages.token.as_ref()?;
        p.first(answer).filter(|v| !is_empty(v)).cloned()
    }

    /// Is this answer the last page? `pages.until` true, or no next token
    /// when `pages.token` is declared; always without `pages:`.
    pub fn last_page(&self, answer: &Value) -> bool {
        if self.pages.max <= 1 {
            return true;
        }
        if let Some(u) = &self.pages.until {
            if u.first(answer) == Some(&Value::Bool(true)) {
                return true;
            }
        }
        self.pages.token.is_some() && self.page_token(answer).is_none()
    }

    /// The items the first run turns into events (by index), the rest are only
    /// remembered as seen. `cursor.item` orders `latest: N`; else the answer's order.
    pub fn first_run_events(&self, items: &[Value], mode: FirstRun) -> Vec<usize> {
        match mode {
            FirstRun::All => (0..items.len()).collect(),
            FirstRun::Now => Vec::new(),
            FirstRun::Latest(n) => {
                let mut order: Vec<usize> = (0..items.len()).collect();
                if let Some(Cursor {
                    from: CursorFrom::Item(p),
                    ..
                }) = &self.cursor
                {
                    order.sort_by(|a, b| match (p.first(&items[*a]), p.first(&items[*b])) {
                        (Some(x), Some(y)) => compare(x, y),
                        (Some(_), None) => std::cmp::Ordering::Greater,
                        (None, Some(_)) => std::cmp::Ordering::Less,
                        (None, None) => a.cmp(b),
                    });
                }
                let skip = order.len().saturating_sub(n as usize);
                let mut picked = order.split_off(skip);
                picked.sort();
                picked
            }
        }
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

/// Order of two cursor values: numbers as numbers, strings that are both
/// instants (RFC 3339) as instants, otherwise as text.
pub fn compare(a: &Value, b: &Value) -> std::cmp::Ordering {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .unwrap_or(0.0)
            .total_cmp(&y.as_f64().unwrap_or(0.0)),
        (Value::String(x), Value::String(y)) => {
            match (
                x.parse::<jiff::Timestamp>().ok(),
                y.parse::<jiff::Timestamp>().ok(),
            ) {
                (Some(p), Some(q)) => p.cmp(&q),
                _ => x.cmp(y),
            }
        }
        _ => a.to_string().cmp(&b.to_string()),
    }
}

fn hash(v: &Value) -> String {
    hex::encode(Sha256::digest(v.to_string().as_bytes()))
}

/// A stable offset in `[0, jitter)` for poll `name` (FNV-1a of the name), the
/// same on every node and across restarts, so all agree on the slots.
fn offset(name: &str, jitter_ms: i64) -> i64 {
    if jitter_ms <= 0 {
        return 0;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % jitter_ms as u64) as i64
}

/// Compile `polls:` of connector `connector` (its actions already compiled).
pub(super) fn compile_all(
    connector: &str,
    polls: &BTreeMap<String, PollFile>,
    actions: &BTreeMap<String, Arc<Action>>,
    cx: &TplCx<'_>,
    templates: &mut Templates,
    errors: &mut Vec<LoadError>,
) -> BTreeMap<String, Arc<Poll>> {
    let mut out = BTreeMap::new();
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    for (name, f) in polls {
        let p = format!("/polls/{}", crate::yaml::escape(name));
        if let Some(poll) = compile(connector, name, f, &p, actions, cx, templates, errors) {
            if let Some(other) = types.insert(poll.event_type.clone(), name.clone()) {
                errors.push(cx.map.error(
                    &format!("{p}/event"),
                    format!(
                        "polls `{other}` and `{name}` both make `{}` events: give one an `event: {{ type: ... }}` of its own",
                        poll.event_type
                    ),
                ));
                continue;
            }
            out.insert(name.clone(), Arc::new(poll));
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn compile(
    connector: &str,
    name: &str,
    f: &PollFile,
    p: &str,
    actions: &BTreeMap<String, Arc<Action>>,
    cx: &TplCx<'_>,
    templates: &mut Templates,
    errors: &mut Vec<LoadError>,
) -> Option<Poll> {
    let map: &SourceMap = cx.map;
    let before = errors.len();
    let action = match actions.get(&f.action) {
        Some(a) => Some(a.clone()),
        None => {
            let hint = crate::yaml::did_you_mean(&f.action, actions.keys().map(String::as_str))
                .map(|a| format!("; did you mean `{a}`?"))
                .unwrap_or_default();
            errors.push(map.error(
                &format!("{p}/action"),
                format!(
                    "poll `{name}`: unknown action `{}` of connector `{connector}`{hint}",
                    f.action
                ),
            ));
            None
        }
    };
    let every_ms = f.every.0.as_millis() as i64;
    if every_ms < MIN_EVERY_MS {
        errors.push(map.error(
            &format!("{p}/every"),
            format!("`every` must be at least 1s, got {every_ms}ms"),
        ));
    }
    let jitter_ms = f.jitter.map_or(0, |j| j.0.as_millis() as i64);
    if jitter_ms > every_ms {
        errors.push(map.error(
            &format!("{p}/jitter"),
            "`jitter` must not be longer than `every`",
        ));
    }
    let jp = |src: &str, ptr: String, errors: &mut Vec<LoadError>| match JsonPath::compile(src) {
        Ok(j) => Some(j),
        Err(e) => {
            errors.push(map.error(&ptr, e));
            None
        }
    };
    let items = jp(&f.items, format!("{p}/items"), errors);
    let id = match &f.id {
        PollIdFile::One(s) if s == "hash" => Some(ItemId::Hash),
        PollIdFile::One(s) => jp(s, format!("{p}/id"), errors).map(|j| ItemId::Paths(vec![j])),
        PollIdFile::Many(list) if list.is_empty() => {
            errors.push(map.error(
                &format!("{p}/id"),
                "`id` needs at least one JSONPath (or `hash`)",
            ));
            None
        }
        PollIdFile::Many(list) => {
            let paths: Vec<Option<JsonPath>> = list
                .iter()
                .enumerate()
                .map(|(i, s)| jp(s, format!("{p}/id/{i}"), errors))
                .collect();
            paths
                .into_iter()
                .collect::<Option<Vec<_>>>()
                .map(ItemId::Paths)
        }
    };

    // `with:` over {cursor, page}; inputs checked against the action's.
    let mut with = Vec::new();
    let mut positional = Vec::new();
    for (k, v) in &f.with {
        let ptr = format!("{p}/with/{}", crate::yaml::escape(k));
        if let Some(a) = &action {
            if !a.inputs.contains_key(k) {
                let hint = crate::yaml::did_you_mean(k, a.inputs.keys().map(String::as_str))
                    .map(|i| format!("; did you mean `{i}`?"))
                    .unwrap_or_default();
                errors.push(map.error_at_key(
                    &ptr,
                    format!("action `{}` has no input `{k}`{hint}", a.name),
                ));
                continue;
            }
        }
        if let Some(vt) = templates.compile_value_at(v, map, &ptr, errors) {
            let mut leaves = Vec::new();
            templates.leaves(&vt, ptr.clone(), &mut leaves);
            let mut reads_position = false;
            for (lp, t) in leaves {
                for var in templates.variables(t) {
                    let root = var.split('.').next().unwrap_or("");
                    match root {
                        "cursor" | "page" => reads_position = true,
                        _ => errors.push(map.error(
                            &lp,
                            format!("unknown template variable `{var}`: a poll's `with:` reads `cursor` and `page`"),
                        )),
                    }
                }
            }
            if reads_position {
                positional.push(k.clone());
            }
            with.push((k.clone(), vt));
        }
    }
    if let Some(a) = &action {
        for (input, required) in &a.inputs {
            if *required && !f.with.contains_key(input) {
                errors.push(map.error(
                    p,
                    format!(
                        "poll `{name}`: action `{}` needs input `{input}`: give it under `with:`",
                        a.name
                    ),
                ));
            }
        }
    }

    let event_type = f
        .event
        .as_ref()
        .and_then(|e| e.event_type.clone())
        .unwrap_or_else(|| name.to_string());
    if event_type.is_empty() {
        errors.push(map.error(&format!("{p}/event/type"), "the event type is empty"));
    }
    let body = match f.event.as_ref().and_then(|e| e.body.as_ref()) {
        None => None,
        Some(b) => match templates.compile_value_at(b, map, &format!("{p}/event/body"), errors) {
            Some(vt) => {
                let mut leaves = Vec::new();
                templates.leaves(&vt, format!("{p}/event/body"), &mut leaves);
                for (lp, t) in leaves {
                    for var in templates.variables(t) {
                        if var != "item" && !var.starts_with("item.") {
                            errors.push(map.error(
                                &lp,
                                format!("unknown template variable `{var}`: a poll's `event.body` reads `item` (one item of the answer)"),
                            ));
                        }
                    }
                }
                Some(vt)
            }
            None => None,
        },
    };

    let cursor = match &f.cursor {
        None => None,
        Some(c) => {
            let cp = format!("{p}/cursor");
            let from = match (&c.item, &c.response) {
                (Some(i), None) => jp(i, format!("{cp}/item"), errors).map(CursorFrom::Item),
                (None, Some(r)) => {
                    jp(r, format!("{cp}/response"), errors).map(CursorFrom::Response)
                }
                _ => {
                    errors.push(map.error(
                        &cp,
                        "`cursor` takes exactly one of `item` (a JSONPath into each item: the highest value seen) and `response` (a JSONPath into the answer)",
                    ));
                    None
                }
            };
            let mut tpl = |src: &Option<String>, key: &str, errors: &mut Vec<LoadError>| {
                let Some(src) = src else { return Some(None) };
                let ptr = format!("{cp}/{key}");
                match templates.compile_at(src, map, &ptr, errors) {
                    None => None,
                    Some(t) => {
                        for var in templates.variables(&t) {
                            errors.push(map.error(
                                &ptr,
                                format!("unknown template variable `{var}`: `cursor.{key}` reads nothing but `now()`"),
                            ));
                        }
                        Some(Some(t))
                    }
                }
            };
            let initial = tpl(&c.initial, "initial", errors);
            let backfill = tpl(&c.backfill, "backfill", errors);
            match (from, initial, backfill) {
                (Some(from), Some(initial), Some(backfill)) => Some(Cursor {
                    from,
                    initial,
                    backfill,
                }),
                _ => None,
            }
        }
    };

    let pages = match &f.pages {
        None => Some(Pages {
            token: None,
            until: None,
            max: 1,
        }),
        Some(pf) => {
            let pp = format!("{p}/pages");
            let token = pf
                .token
                .as_ref()
                .map(|t| jp(t, format!("{pp}/token"), errors));
            let until = pf
                .until
                .as_ref()
                .map(|t| jp(t, format!("{pp}/until"), errors));
            let max = pf.max.unwrap_or(DEFAULT_MAX_PAGES);
            if max == 0 || max > MAX_PAGES {
                errors.push(map.error(
                    &format!("{pp}/max"),
                    format!("`pages.max` must be 1 to {MAX_PAGES}, got {max}"),
                ));
            }
            if token.is_none() && until.is_none() {
                errors.push(map.error(
                    &pp,
                    "`pages` needs `token` (a JSONPath to the next page's token) or `until` (a JSONPath that is true on the last page)",
                ));
            }
            if token.is_none() && f.cursor.is_none() {
                errors.push(map.error(
                    &pp,
                    "`pages` without `token` moves through pages by the cursor: give the poll a `cursor:`",
                ));
            }
            match (token, until) {
                (Some(None), _) | (_, Some(None)) => None,
                (t, u) => Some(Pages {
                    token: t.flatten(),
                    until: u.flatten(),
                    max,
                }),
            }
        }
    };
    if pages.as_ref().is_some_and(|pg| pg.token.is_some()) {
        let reads_page = f.with.values().any(|v| v.to_string().contains("page"));
        if !reads_page {
            errors.push(map.error(
                &format!("{p}/pages/token"),
                "`pages.token` is read by templates as `page`, but no `with:` input reads `page`",
            ));
        }
    }
    let first_run = match f.first_run {
        None | Some(FirstRunFile::Now) => FirstRun::Now,
        Some(FirstRunFile::All) => FirstRun::All,
        Some(FirstRunFile::Latest(0)) => {
            errors.push(map.error(
                &format!("{p}/first_run/latest"),
                "`latest` must be at least 1 (use `first_run: now` for none)",
            ));
            FirstRun::Now
        }
        Some(FirstRunFile::Latest(n)) => FirstRun::Latest(n),
    };
    if errors.len() > before {
        return None;
    }
    Some(Poll {
        name: name.to_string(),
        connector: connector.to_string(),
        action: action?,
        every_ms,
        offset_ms: offset(&format!("{connector}.{name}"), jitter_ms),
        with,
        positional,
        items: items?,
        id: id?,
        event_type,
        body,
        cursor,
        pages: pages?,
        first_run,
    })
}
