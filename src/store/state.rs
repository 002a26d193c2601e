//! Recipe state: namespaced values with an optional expiry, counters over a
//! sliding window, and round-robin rotations — as pure operations.
//!
//! Why pure: every backend (sled today, PostgreSQL in issue 10, the in-memory
//! [`MemoryState`] of `switchboard test`) must apply a [`StateOp`] the same
//! way. [`apply`] reads what it needs through [`Kv`] and returns the writes;
//! the backend applies them in **one atomic batch together with the run
//! checkpoint that records the step** (see `Store::apply_state`), under a
//! lock that serialises state operations. So a crash leaves both or neither,
//! and concurrent increments never lose an update.
//!
//! Key layout (raw keys, shared by every backend that stores bytes):
//! - `v/<namespace>\0<key>` → [`ValueRecord`]: a JSON value, with expiry
//! - `n/<namespace>\0<key>` → [`CounterRecord`]: a sliding-window counter
//! - `a/<namespace>\0<key>` → [`RotationRecord`]: a round-robin position
//!
//! **Window counters are time buckets**, not a list of timestamps: a counter
//! keeps at most [`WINDOW_BUCKETS`] + 1 `(bucket, count)` pairs, each bucket
//! 1/256 of the window wide, so an increment costs the same at 1 event a day
//! and at 10,000 a minute, and a hot key's record stays under ~5 KB. The price
//! is precision at the window's old edge: an event is counted while any part
//! of its bucket lies inside the window, i.e. up to 1/256 of the window longer
//! (5.6 minutes for 24 h). A list of timestamps would be exact but grows with
//! the rate, and is rewritten on every increment.
//!
//! Nothing here does I/O; time is a parameter (`now`, ms since the epoch).

use super::{Result, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Buckets per window of a window counter.
pub const WINDOW_BUCKETS: i64 = 256;
/// Longest namespace or key, in bytes.
pub const MAX_KEY_BYTES: usize = 512;

/// Where a state entry lives: a namespace (default: the recipe's name) and a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateKey {
    pub namespace: String,
    pub key: String,
}

impl StateKey {
    /// A checked key: neither part empty, longer than [`MAX_KEY_BYTES`], or holding a NUL.
    pub fn new(namespace: &str, key: &str) -> std::result::Result<StateKey, String> {
        for (what, s) in [("namespace", namespace), ("key", key)] {
            if s.is_empty() {
                return Err(format!("the state {what} is empty"));
            }
            if s.len() > MAX_KEY_BYTES {
                return Err(format!(
                    "the state {what} is {} bytes long, the most is {MAX_KEY_BYTES}",
                    s.len()
                ));
            }
            if s.contains('\0') {
                return Err(format!("the state {what} contains a NUL character"));
            }
        }
        Ok(StateKey {
            namespace: namespace.to_string(),
            key: key.to_string(),
        })
    }

    fn raw(&self, kind: StateKind) -> Vec<u8> {
        let mut k = Vec::with_capacity(3 + self.namespace.len() + self.key.len());
        k.extend_from_slice(kind.prefix());
        k.extend_from_slice(self.namespace.as_bytes());
        k.push(0);
        k.extend_from_slice(self.key.as_bytes());
        k
    }
}

/// The three kinds of state entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StateKind {
    /// A JSON value (`set`, `set_if_absent`, `incr` without a window).
    Value,
    /// A sliding-window counter (`incr` with `window:`).
    Counter,
    /// A round-robin position (`assign`).
    Rotation,
}

impl StateKind {
    pub const ALL: [StateKind; 3] = [StateKind::Rotation, StateKind::Counter, StateKind::Value];

    /// Raw key prefix; [`StateKind::ALL`] is in prefix order.
    pub fn prefix(self) -> &'static [u8] {
        match self {
            StateKind::Value => b"v/",
            StateKind::Counter => b"n/",
            StateKind::Rotation => b"a/",
        }
    }

    fn of(raw: &[u8]) -> Option<StateKind> {
        StateKind::ALL
            .into_iter()
            .find(|k| raw.starts_with(k.prefix()))
    }
}

/// One state operation of a step (or of the admin API).
#[derive(Debug, Clone, PartialEq)]
pub enum StateOp {
    Get(StateKey),
    /// Write the value; `ttl_ms` makes it expire that long after this write.
    Set {
        key: StateKey,
        value: Value,
        ttl_ms: Option<i64>,
    },
    /// Write the value only if the key holds none (or an expired one).
    SetIfAbsent {
        key: StateKey,
        value: Value,
        ttl_ms: Option<i64>,
    },
    /// Remove the key, of every kind (value, counter, rotation).
    Delete(StateKey),
    /// Add `by` to a counter: a value (an integer; missing counts as 0), or
    /// with `window_ms` a sliding-window counter (then `by` ≥ 0; 0 only reads).
    Incr {
        key: StateKey,
        by: i64,
        window_ms: Option<i64>,
        ttl_ms: Option<i64>,
    },
    Assign(Assign),
}

/// Pick one agent of a list.
#[derive(Debug, Clone, PartialEq)]
pub struct Assign {
    /// Where the rotation position lives.
    pub rotation: StateKey,
    /// The agents' ids, in list order (for messages and load keys).
    pub agents: Vec<String>,
    /// Per agent: why a skip rule excludes it (`None`: it may be picked).
    pub skipped: Vec<Option<String>>,
    pub strategy: Strategy,
    /// The agents' loads, if known: least-loaded assignment needs them,
    /// `capacity` is checked against them.
    pub loads: Option<Loads>,
    /// Agents whose load is at or above this are skipped.
    pub capacity: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// The next eligible agent after the last one picked, in list order.
    RoundRobin,
    /// The eligible agent with the smallest load (no loads: all 0); ties go round robin.
    LeastLoaded,
}

/// Where assignment finds each agent's load.
#[derive(Debug, Clone, PartialEq)]
pub enum Loads {
    /// Computed by the step (e.g. from a fetched list), one per agent.
    Given(Vec<f64>),
    /// State values (integers a recipe maintains with `incr`), one key per
    /// agent; `add` is added to the picked agent's value in the same write,
    /// so concurrent runs see each other's assignments.
    Keys { keys: Vec<StateKey>, add: i64 },
}

/// What a state operation gave; [`StateOutput::to_json`] is the step's output.
#[derive(Debug, Clone, PartialEq)]
pub enum StateOutput {
    Value {
        found: bool,
        value: Value,
    },
    Set {
        set: bool,
        value: Value,
    },
    Deleted {
        deleted: bool,
    },
    Count {
        count: i64,
    },
    Assigned {
        index: usize,
        load: Option<f64>,
    },
    /// The operation could not be applied (nothing was written).
    Failed {
        reason: String,
    },
}

impl StateOutput {
    /// The step output: `{found, value}`, `{set, value}`, `{deleted}`,
    /// `{count}`, `{index, load}`. `Failed` has none (the step fails).
    pub fn to_json(&self) -> Value {
        match self {
            StateOutput::Value { found, value } => json!({"found": found, "value": value}),
            StateOutput::Set { set, value } => json!({"set": set, "value": value}),
            StateOutput::Deleted { deleted } => json!({"deleted": deleted}),
            StateOutput::Count { count } => json!({"count": count}),
            StateOutput::Assigned { index, load } => json!({"index": index, "load": load}),
            StateOutput::Failed { .. } => Value::Null,
        }
    }
}

/// `v/` record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ValueRecord {
    pub value: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    pub updated_at: i64,
}

/// `n/` record: counts per bucket of `granule_ms`; bucket `b` covers
/// `[b·granule, (b+1)·granule)`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CounterRecord {
    /// The longest window this counter was used with; older buckets are dropped.
    pub window_ms: i64,
    pub granule_ms: i64,
    /// `(bucket, count)`, oldest first.
    pub buckets: Vec<(i64, i64)>,
    pub updated_at: i64,
}

impl CounterRecord {
    fn new(window_ms: i64, now: i64) -> CounterRecord {
        CounterRecord {
            window_ms,
            granule_ms: (window_ms / WINDOW_BUCKETS).max(1),
            buckets: Vec::new(),
            updated_at: now,
        }
    }

    /// Is bucket `b` (partly) inside the window ending at `now`?
    fn inside(&self, b: i64, window_ms: i64, now: i64) -> bool {
        (b + 1) * self.granule_ms > now - window_ms
    }

    /// Events counted in the last `window_ms` (to bucket precision).
    pub fn count(&self, window_ms: i64, now: i64) -> i64 {
        self.buckets
            .iter()
            .filter(|(b, _)| self.inside(*b, window_ms, now))
            .map(|(_, n)| n)
            .sum()
    }

    /// Widen to `window_ms`: coarser buckets, so there are never more than
    /// [`WINDOW_BUCKETS`] + 1 of them.
    fn widen(&mut self, window_ms: i64) {
        if window_ms <= self.window_ms {
            return;
        }
        let granule = (window_ms / WINDOW_BUCKETS).max(1);
        let mut merged: Vec<(i64, i64)> = Vec::new();
        for (b, n) in &self.buckets {
            let nb = b * self.granule_ms / granule;
            match merged.last_mut() {
                Some((last, m)) if *last == nb => *m += n,
                _ => merged.push((nb, *n)),
            }
        }
        self.window_ms = window_ms;
        self.granule_ms = granule;
        self.buckets = merged;
    }

    fn prune(&mut self, now: i64) {
        let (w, g) = (self.window_ms, self.granule_ms);
        self.buckets.retain(|(b, _)| (b + 1) * g > now - w);
    }

    fn add(&mut self, by: i64, now: i64) {
        let b = now.max(0) / self.granule_ms;
        match self.buckets.last_mut() {
            Some((last, n)) if *last == b => *n += by,
            _ => self.buckets.push((b, by)),
        }
        self.updated_at = now;
    }

    fn expired(&self, now: i64) -> bool {
        self.buckets
            .iter()
            .all(|(b, _)| !self.inside(*b, self.window_ms, now))
    }
}

/// `a/` record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RotationRecord {
    /// Index (modulo the list length) where the next search starts.
    pub next: u64,
    pub updated_at: i64,
}

/// One entry, as listed by the CLI and the admin API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct StateEntry {
    pub namespace: String,
    pub key: String,
    pub kind: StateKind,
    /// A value's value; a counter's count in its window; a rotation's next position.
    pub value: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    pub updated_at: i64,
    /// Opaque cursor: list entries after this one with `after`.
    pub cursor: String,
}

/// Read access to the raw keys, for [`apply`].
pub trait Kv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
}

/// A write [`apply`] asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    Put(Vec<u8>, Vec<u8>),
    Remove(Vec<u8>),
}

fn decode<T: serde::de::DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).replace('\0', "/"),
        detail: e.to_string(),
    })
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| StoreError::Io(e.to_string()))
}

/// The live value at `raw` (an expired one is reported as `None` and its
/// removal added to `writes`).
fn live_value(
    kv: &dyn Kv,
    raw: &[u8],
    now: i64,
    writes: &mut Vec<Write>,
) -> Result<Option<ValueRecord>> {
    let Some(bytes) = kv.get(raw)? else {
        return Ok(None);
    };
    let rec: ValueRecord = decode(raw, &bytes)?;
    if rec.expires_at.is_some_and(|t| t <= now) {
        writes.push(Write::Remove(raw.to_vec()));
        return Ok(None);
    }
    Ok(Some(rec))
}

fn expiry(now: i64, ttl_ms: Option<i64>) -> Option<i64> {
    ttl_ms.map(|t| now.saturating_add(t))
}

/// Apply `op` at `now`: its output and the writes that make it so. A
/// [`StateOutput::Failed`] comes with no writes besides lazy removals.
pub fn apply(op: &StateOp, now: i64, kv: &dyn Kv) -> Result<(StateOutput, Vec<Write>)> {
    let mut writes = Vec::new();
    let out = match op {
        StateOp::Get(key) => {
            let raw = key.raw(StateKind::Value);
            match live_value(kv, &raw, now, &mut writes)? {
                Some(r) => StateOutput::Value {
                    found: true,
                    value: r.value,
                },
                None => StateOutput::Value {
                    found: false,
                    value: Value::Null,
                },
            }
        }
        StateOp::Set { key, value, ttl_ms } => {
            let rec = ValueRecord {
                value: value.clone(),
                expires_at: expiry(now, *ttl_ms),
                updated_at: now,
            };
            writes.push(Write::Put(key.raw(StateKind::Value), encode(&rec)?));
            StateOutput::Set {
                set: true,
                value: value.clone(),
            }
        }
        StateOp::SetIfAbsent { key, value, ttl_ms } => {
            let raw = key.raw(StateKind::Value);
            match live_value(kv, &raw, now, &mut writes)? {
                Some(existing) => StateOutput::Set {
                    set: false,
                    value: existing.value,
                },
                None => {
                    let rec = ValueRecord {
                        value: value.clone(),
                        expires_at: expiry(now, *ttl_ms),
                        updated_at: now,
                    };
                    writes.push(Write::Put(raw, encode(&rec)?));
                    StateOutput::Set {
                        set: true,
                        value: value.clone(),
                    }
                }
            }
        }
        StateOp::Delete(key) => {
            let mut deleted = false;
            for kind in StateKind::ALL {
                let raw = key.raw(kind);
                if kv.get(&raw)?.is_some() {
                    deleted = true;
                    writes.push(Write::Remove(raw));
                }
            }
            StateOutput::Deleted { deleted }
        }
        StateOp::Incr {
            key,
            by,
            window_ms: None,
            ttl_ms,
        } => {
            let raw = key.raw(StateKind::Value);
            let current = live_value(kv, &raw, now, &mut writes)?;
            let n = match current.as_ref().map(|r| &r.value) {
                None => Some(0),
                Some(v) => v.as_i64(),
            };
            match n.and_then(|n| n.checked_add(*by)) {
                None => {
                    let reason = match current {
                        Some(r) if r.value.as_i64().is_none() => format!(
                            "state `{}` holds {}, not an integer, so it cannot be incremented",
                            key.key,
                            kind_of(&r.value)
                        ),
                        _ => format!("state `{}` would overflow", key.key),
                    };
                    writes.clear();
                    StateOutput::Failed { reason }
                }
                Some(count) => {
                    // A TTL given now restarts the expiry; without one the old expiry stays.
                    let expires_at = expiry(now, *ttl_ms)
                        .or_else(|| current.as_ref().and_then(|r| r.expires_at));
                    let rec = ValueRecord {
                        value: json!(count),
                        expires_at,
                        updated_at: now,
                    };
                    writes.retain(|w| !matches!(w, Write::Remove(k) if *k == raw));
                    writes.push(Write::Put(raw, encode(&rec)?));
                    StateOutput::Count { count }
                }
            }
        }
        StateOp::Incr {
            key,
            by,
            window_ms: Some(window_ms),
            ..
        } => {
            if *by < 0 || *window_ms <= 0 {
                StateOutput::Failed {
                    reason: "a window counter only counts up: `by` must be 0 or more and the window longer than 0".into(),
                }
            } else {
                let raw = key.raw(StateKind::Counter);
                let mut rec = match kv.get(&raw)? {
                    Some(b) => decode::<CounterRecord>(&raw, &b)?,
                    None => CounterRecord::new(*window_ms, now),
                };
                rec.widen(*window_ms);
                rec.prune(now);
                if *by > 0 {
                    rec.add(*by, now);
                }
                let count = rec.count(*window_ms, now);
                if rec.buckets.is_empty() {
                    writes.push(Write::Remove(raw));
                } else if *by > 0 {
                    writes.push(Write::Put(raw, encode(&rec)?));
                }
                StateOutput::Count { count }
            }
        }
        StateOp::Assign(a) => assign(a, now, kv, &mut writes)?,
    };
    Ok((out, writes))
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn assign(a: &Assign, now: i64, kv: &dyn Kv, writes: &mut Vec<Write>) -> Result<StateOutput> {
    let n = a.agents.len();
    if n == 0 {
        return Ok(StateOutput::Failed {
            reason: "no agent to assign: the list is empty".into(),
        });
    }
    let rot_raw = a.rotation.raw(StateKind::Rotation);
    let start = match kv.get(&rot_raw)? {
        Some(b) => decode::<RotationRecord>(&rot_raw, &b)?.next,
        None => 0,
    };
    let loads: Option<Vec<f64>> = match &a.loads {
        None => None,
        Some(Loads::Given(v)) => Some(v.clone()),
        Some(Loads::Keys { keys, .. }) => {
            let mut v = Vec::with_capacity(keys.len());
            for k in keys {
                let raw = k.raw(StateKind::Value);
                let load = match live_value(kv, &raw, now, writes)? {
                    None => 0.0,
                    Some(r) => match r.value.as_f64() {
                        Some(x) => x,
                        None => {
                            writes.clear();
                            return Ok(StateOutput::Failed {
                                reason: format!(
                                    "the load of `{}` (state `{}`) is {}, not a number",
                                    a.agents.get(v.len()).map_or("?", String::as_str),
                                    k.key,
                                    kind_of(&r.value)
                                ),
                            });
                        }
                    },
                };
                v.push(load);
            }
            Some(v)
        }
    };
    let mut why: Vec<String> = Vec::new();
    let mut best: Option<(usize, f64)> = None;
    // Search in rotation order from the stored position: round robin takes
    // the first eligible agent; least loaded the first of the smallest load.
    for step in 0..n {
        let i = ((start as usize % n) + step) % n;
        let agent = &a.agents[i];
        if let Some(reason) = a.skipped.get(i).cloned().flatten() {
            why.push(format!("{agent}: {reason}"));
            continue;
        }
        let load = loads.as_ref().and_then(|l| l.get(i).copied());
        if let (Some(cap), Some(l)) = (a.capacity, load) {
            if l >= cap {
                why.push(format!("{agent}: at capacity (load {l} ≥ {cap})"));
                continue;
            }
        }
        let load = load.unwrap_or(0.0);
        match (a.strategy, best) {
            (Strategy::RoundRobin, _) => {
                best = Some((i, load));
                break;
            }
            (Strategy::LeastLoaded, Some((_, b))) if load >= b => {}
            (Strategy::LeastLoaded, _) => best = Some((i, load)),
        }
    }
    let Some((index, load)) = best else {
        return Ok(StateOutput::Failed {
            reason: format!("no agent available: all {n} skipped ({})", why.join("; ")),
        });
    };
    let rec = RotationRecord {
        next: (index as u64 + 1) % n as u64,
        updated_at: now,
    };
    writes.push(Write::Put(rot_raw, encode(&rec)?));
    if let Some(Loads::Keys { keys, add }) = &a.loads {
        if *add != 0 {
            let (out, w) = apply(
                &StateOp::Incr {
                    key: keys[index].clone(),
                    by: *add,
                    window_ms: None,
                    ttl_ms: None,
                },
                now,
                kv,
            )?;
            if let StateOutput::Failed { reason } = out {
                writes.clear();
                return Ok(StateOutput::Failed { reason });
            }
            writes.extend(w);
        }
    }
    Ok(StateOutput::Assigned {
        index,
        load: loads.map(|_| load),
    })
}

/// Decode a raw entry for listing; `None` if it has expired (or is not state).
pub fn entry(raw: &[u8], bytes: &[u8], now: i64) -> Result<Option<StateEntry>> {
    let Some(kind) = StateKind::of(raw) else {
        return Ok(None);
    };
    let rest = &raw[2..];
    let Some(nul) = rest.iter().position(|b| *b == 0) else {
        return Ok(None);
    };
    let namespace = String::from_utf8_lossy(&rest[..nul]).into_owned();
    let key = String::from_utf8_lossy(&rest[nul + 1..]).into_owned();
    let cursor = hex::encode(raw);
    let e = match kind {
        StateKind::Value => {
            let r: ValueRecord = decode(raw, bytes)?;
            if r.expires_at.is_some_and(|t| t <= now) {
                return Ok(None);
            }
            StateEntry {
                namespace,
                key,
                kind,
                value: r.value,
                window_ms: None,
                expires_at: r.expires_at,
                updated_at: r.updated_at,
                cursor,
            }
        }
        StateKind::Counter => {
            let r: CounterRecord = decode(raw, bytes)?;
            if r.expired(now) {
                return Ok(None);
            }
            StateEntry {
                namespace,
                key,
                kind,
                value: json!(r.count(r.window_ms, now)),
                window_ms: Some(r.window_ms),
                expires_at: r
                    .buckets
                    .last()
                    .map(|(b, _)| (b + 1) * r.granule_ms + r.window_ms),
                updated_at: r.updated_at,
                cursor,
            }
        }
        StateKind::Rotation => {
            let r: RotationRecord = decode(raw, bytes)?;
            StateEntry {
                namespace,
                key,
                kind,
                value: json!(r.next),
                window_ms: None,
                expires_at: None,
                updated_at: r.updated_at,
                cursor,
            }
        }
    };
    Ok(Some(e))
}

/// Has this raw entry expired at `now` (so a sweep may remove it)?
pub fn expired(raw: &[u8], bytes: &[u8], now: i64) -> Result<bool> {
    Ok(match StateKind::of(raw) {
        Some(StateKind::Value) => decode::<ValueRecord>(raw, bytes)?
            .expires_at
            .is_some_and(|t| t <= now),
        Some(StateKind::Counter) => decode::<CounterRecord>(raw, bytes)?.expired(now),
        _ => false,
    })
}

/// The raw key range to list: every kind's prefix, narrowed to a namespace.
pub fn list_prefixes(namespace: Option<&str>) -> Vec<Vec<u8>> {
    StateKind::ALL
        .into_iter()
        .map(|k| {
            let mut p = k.prefix().to_vec();
            if let Some(ns) = namespace {
                p.extend_from_slice(ns.as_bytes());
                p.push(0);
            }
            p
        })
        .collect()
}

/// The raw keys of one namespace/key, of every kind.
pub fn raw_keys(key: &StateKey) -> Vec<Vec<u8>> {
    StateKind::ALL.into_iter().map(|k| key.raw(k)).collect()
}

/// Decode an `after` cursor of a listing.
pub fn parse_cursor(cursor: &str) -> std::result::Result<Vec<u8>, String> {
    hex::decode(cursor).map_err(|_| format!("`{cursor}` is not a state list cursor"))
}

/// Recipe state in memory: the dry runs of `switchboard test`, which must not
/// touch a store, and tests. Same operations as the stores, through [`apply`].
#[derive(Debug, Default, Clone)]
pub struct MemoryState {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Kv for MemoryState {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.map.get(key).cloned())
    }
}

impl MemoryState {
    pub fn apply(&mut self, op: &StateOp, now: i64) -> Result<StateOutput> {
        let (out, writes) = apply(op, now, self)?;
        for w in writes {
            match w {
                Write::Put(k, v) => {
                    self.map.insert(k, v);
                }
                Write::Remove(k) => {
                    self.map.remove(&k);
                }
            }
        }
        Ok(out)
    }

    /// Every live entry, in key order.
    pub fn entries(&self, now: i64) -> Result<Vec<StateEntry>> {
        let mut out = Vec::new();
        for (k, v) in &self.map {
            out.extend(entry(k, v, now)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(key: &str) -> StateKey {
        StateKey::new("ns", key).unwrap()
    }

    fn incr(key: &str, window_ms: Option<i64>) -> StateOp {
        StateOp::Incr {
            key: k(key),
            by: 1,
            window_ms,
            ttl_ms: None,
        }
    }

    fn count(out: StateOutput) -> i64 {
        match out {
            StateOutput::Count { count } => count,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn keys_are_checked() {
        assert!(StateKey::new("ns", "")
            .unwrap_err()
            .contains("key is empty"));
        assert!(StateKey::new("", "k")
            .unwrap_err()
            .contains("namespace is empty"));
        assert!(StateKey::new("ns", "a\0b").unwrap_err().contains("NUL"));
        assert!(StateKey::new("ns", &"x".repeat(513))
            .unwrap_err()
            .contains("513 bytes"));
    }

    #[test]
    fn values_expire_at_their_ttl_and_set_if_absent_sees_expiry() {
        let mut s = MemoryState::default();
        let set = |v: Value| StateOp::SetIfAbsent {
            key: k("welcome"),
            value: v,
            ttl_ms: Some(1000),
        };
        assert_eq!(
            s.apply(&set(json!(1)), 10_000).unwrap(),
            StateOutput::Set {
                set: true,
                value: json!(1)
            }
        );
        assert_eq!(
            s.apply(&set(json!(2)), 10_999).unwrap(),
            StateOutput::Set {
                set: false,
                value: json!(1)
            }
        );
        assert_eq!(
            s.apply(&StateOp::Get(k("welcome")), 10_999).unwrap(),
            StateOutput::Value {
                found: true,
                value: json!(1)
            }
        );
        // Expired at exactly now + ttl.
        assert_eq!(
            s.apply(&StateOp::Get(k("welcome")), 11_000).unwrap(),
            StateOutput::Value {
                found: false,
                value: Value::Null
            }
        );
        assert!(s.map.is_empty(), "read removes the expired value lazily");
        assert_eq!(
            s.apply(&set(json!(3)), 11_000).unwrap(),
            StateOutput::Set {
                set: true,
                value: json!(3)
            }
        );
    }

    #[test]
    fn plain_counters_add_and_refuse_non_integers() {
        let mut s = MemoryState::default();
        assert_eq!(count(s.apply(&incr("c", None), 0).unwrap()), 1);
        assert_eq!(count(s.apply(&incr("c", None), 0).unwrap()), 2);
        let down = StateOp::Incr {
            key: k("c"),
            by: -5,
            window_ms: None,
            ttl_ms: None,
        };
        assert_eq!(count(s.apply(&down, 0).unwrap()), -3);
        s.apply(
            &StateOp::Set {
                key: k("s"),
                value: json!("x"),
                ttl_ms: None,
            },
            0,
        )
        .unwrap();
        let StateOutput::Failed { reason } = s.apply(&incr("s", None), 0).unwrap() else {
            panic!()
        };
        assert!(
            reason.contains("holds a string, not an integer"),
            "{reason}"
        );
        assert_eq!(
            s.apply(&StateOp::Get(k("s")), 0).unwrap(),
            StateOutput::Value {
                found: true,
                value: json!("x")
            },
            "a refused increment writes nothing"
        );
    }

    #[test]
    fn window_counters_forget_old_events() {
        let mut s = MemoryState::default();
        let w = Some(256_000); // 1 s buckets
        for t in [0, 500, 1_000, 100_000] {
            s.apply(&incr("c", w), t).unwrap();
        }
        assert_eq!(count(s.apply(&incr("c", w), 200_000).unwrap()), 5);
        // Bucket 0 ([0, 1000)) is inside while 1000 > now - 256000.
        let read = StateOp::Incr {
            key: k("c"),
            by: 0,
            window_ms: w,
            ttl_ms: None,
        };
        assert_eq!(count(s.apply(&read, 256_999).unwrap()), 5);
        assert_eq!(count(s.apply(&read, 257_000).unwrap()), 3, "bucket 0 left");
        assert_eq!(count(s.apply(&read, 258_000).unwrap()), 2, "bucket 1 left");
        // A shorter window over the same counter.
        let short = StateOp::Incr {
            key: k("c"),
            by: 0,
            window_ms: Some(100_000),
            ttl_ms: None,
        };
        assert_eq!(count(s.apply(&short, 258_000).unwrap()), 1);
        let entries = s.entries(258_000).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(
            (entries[0].kind, entries[0].value.clone()),
            (StateKind::Counter, json!(2))
        );
        assert!(
            s.entries(457_000).unwrap().is_empty(),
            "everything out of the window"
        );
        assert_eq!(count(s.apply(&read, 457_000).unwrap()), 0);
        assert!(s.map.is_empty(), "an empty counter is removed");
    }

    #[test]
    fn window_counters_stay_bounded_and_widen() {
        let mut s = MemoryState::default();
        let w = Some(25_600);
        for t in 0..10_000 {
            s.apply(&incr("c", w), t * 50).unwrap();
        }
        let raw = k("c").raw(StateKind::Counter);
        let rec: CounterRecord = serde_json::from_slice(&s.map[&raw]).unwrap();
        assert!(
            rec.buckets.len() <= WINDOW_BUCKETS as usize + 1,
            "{}",
            rec.buckets.len()
        );
        // 25.6 s of 20 events/s, plus at most one bucket (100 ms, 2 events).
        let read = StateOp::Incr {
            key: k("c"),
            by: 0,
            window_ms: w,
            ttl_ms: None,
        };
        let n = count(s.apply(&read, 10_000 * 50).unwrap());
        assert!((512..=514).contains(&n), "{n}");
        // A ten times longer window keeps every event still there, in coarser buckets.
        let wide = StateOp::Incr {
            key: k("c"),
            by: 1,
            window_ms: Some(256_000),
            ttl_ms: None,
        };
        let n2 = count(s.apply(&wide, 10_000 * 50).unwrap());
        assert!(n2 > n, "{n2}");
        let rec: CounterRecord = serde_json::from_slice(&s.map[&raw]).unwrap();
        assert_eq!(rec.granule_ms, 1000);
    }

    fn assign_op(
        n: usize,
        skipped: Vec<Option<String>>,
        strategy: Strategy,
        loads: Option<Loads>,
    ) -> StateOp {
        StateOp::Assign(Assign {
            rotation: k("rr"),
            agents: (0..n).map(|i| format!("agent{i}")).collect(),
            skipped,
            strategy,
            loads,
            capacity: Some(3.0),
        })
    }

    fn index(out: StateOutput) -> usize {
        match out {
            StateOutput::Assigned { index, .. } => index,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn round_robin_rotates_and_skips() {
        let mut s = MemoryState::default();
        let rr = |skip: Vec<Option<String>>| assign_op(3, skip, Strategy::RoundRobin, None);
        let none = vec![None, None, None];
        let picks: Vec<usize> = (0..6)
            .map(|_| index(s.apply(&rr(none.clone()), 0).unwrap()))
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        let away = vec![None, Some("away".to_string()), None];
        let picks: Vec<usize> = (0..4)
            .map(|_| index(s.apply(&rr(away.clone()), 0).unwrap()))
            .collect();
        assert_eq!(picks, [0, 2, 0, 2]);
        let all = vec![Some("away".to_string()); 3];
        let StateOutput::Failed { reason } = s.apply(&rr(all), 0).unwrap() else {
            panic!()
        };
        assert!(
            reason.contains("all 3 skipped (agent0: away; agent1: away; agent2: away)"),
            "{reason}"
        );
        let StateOutput::Failed { reason } = s
            .apply(&assign_op(0, vec![], Strategy::RoundRobin, None), 0)
            .unwrap()
        else {
            panic!()
        };
        assert!(reason.contains("list is empty"), "{reason}");
        // Round robin with loads: an agent at capacity is passed over.
        let capped = assign_op(
            3,
            vec![None; 3],
            Strategy::RoundRobin,
            Some(Loads::Given(vec![0.0, 3.0, 0.0])),
        );
        let picks: Vec<usize> = (0..3)
            .map(|_| index(s.apply(&capped, 0).unwrap()))
            .collect();
        assert_eq!(picks, [0, 2, 0]);
    }

    #[test]
    fn least_loaded_counts_its_assignments_and_respects_capacity() {
        let mut s = MemoryState::default();
        let keys: Vec<StateKey> = (0..3).map(|i| k(&format!("load:agent{i}"))).collect();
        s.apply(
            &StateOp::Set {
                key: keys[0].clone(),
                value: json!(2),
                ttl_ms: None,
            },
            0,
        )
        .unwrap();
        let op = assign_op(
            3,
            vec![None; 3],
            Strategy::LeastLoaded,
            Some(Loads::Keys {
                keys: keys.clone(),
                add: 1,
            }),
        );
        // Loads 2,0,0 → agent1 (tie with agent2 broken by rotation), then agent2, then 1 and 2 ...
        let picks: Vec<usize> = (0..7).map(|_| index(s.apply(&op, 0).unwrap())).collect();
        assert_eq!(picks, [1, 2, 1, 2, 0, 1, 2]);
        // Every agent is at 3 = capacity now.
        let StateOutput::Failed { reason } = s.apply(&op, 0).unwrap() else {
            panic!()
        };
        assert!(reason.contains("at capacity (load 3 ≥ 3)"), "{reason}");
        let given = assign_op(
            3,
            vec![None; 3],
            Strategy::LeastLoaded,
            Some(Loads::Given(vec![5.0, 1.0, 2.0])),
        );
        // Given loads: agent0 is over capacity, agent1 the least loaded.
        assert_eq!(
            s.apply(&given, 0).unwrap(),
            StateOutput::Assigned {
                index: 1,
                load: Some(1.0)
            }
        );
    }

    #[test]
    fn delete_removes_every_kind() {
        let mut s = MemoryState::default();
        s.apply(
            &StateOp::Set {
                key: k("x"),
                value: json!(1),
                ttl_ms: None,
            },
            0,
        )
        .unwrap();
        s.apply(&incr("x", Some(1000)), 0).unwrap();
        assert_eq!(s.entries(0).unwrap().len(), 2);
        assert_eq!(
            s.apply(&StateOp::Delete(k("x")), 0).unwrap(),
            StateOutput::Deleted { deleted: true }
        );
        assert_eq!(
            s.apply(&StateOp::Delete(k("x")), 0).unwrap(),
            StateOutput::Deleted { deleted: false }
        );
        assert!(s.map.is_empty());
    }
}
