//! The PostgreSQL store: several stateless `switchboard serve` nodes on one
//! database, each a full node (ingest, workers, schedules, retention).
//!
//! Same [`Store`] trait, same atomicity as sled, with the database doing
//! what sled's process-wide locks do (schema: `schema.rs`, ARCHITECTURE.md):
//! - **accept**: event + runs + queue columns + keys in one transaction;
//!   dedupe is the unique `(connector, delivery_id)` of `sb_events`, so two
//!   nodes storing one delivery conflict and the second answers the first's id;
//! - **queue and leases**: the queue is `sb_runs.due_at`; `lease` takes due
//!   rows `FOR UPDATE SKIP LOCKED` (no run is handed to two nodes) and moves
//!   them to the lease's end, naming the node (`leased_by`). A node is alive
//!   while it holds its advisory lock `(CLASS, lock_key)` on a connection of
//!   its own; a run leased by a node that is not alive (killed, cut off) is
//!   made due again at once by the next `lease` anywhere;
//! - **serialised keys**: concurrency keys, debounce keys and recipe state
//!   keys take transaction advisory locks (a hash of the key), state keys in
//!   sorted order, so concurrent increments on any nodes are never lost;
//! - **group commit**: sessions commit with `synchronous_commit = off`
//!   (visible at once, durable later); [`Store::flush`] is one synchronous
//!   commit, which makes the whole WAL up to it durable — every commit this
//!   node made before. Nothing is acknowledged before a flush, as on sled.
//!
//! Must never: acknowledge through a path that skips `flush`, or hand one
//! run to two workers while both nodes are alive.

mod listen;
mod pool;
pub mod schema;

use self::listen::NOTIFY;
use self::pool::{blocking, Pool, Tx};
use super::state::{self, Kv, StateEntry, StateKey, StateOp, StateOutput, Write};
use super::{
    Correlation, Counts, Event, Heard, Inserted, Listen, Matched, Page, QueueCounts, Result,
    Retried, Run, RunFilter, RunHead, RunStatus, Store, StoreError, StoreStats, Swept,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Pooled connections per node by default (`serve --store-pool`): workers,
/// ingest and the group commit share them; the node holds two more of its
/// own (its liveness lock and its LISTEN).
pub const DEFAULT_POOL: usize = 16;

/// How often a node looks for runs leased by nodes that are gone.
const REAP_EVERY_MS: i64 = 1_000;

/// Is `spec` a PostgreSQL connection URL?
pub fn is_url(spec: &str) -> bool {
    spec.starts_with("postgres://") || spec.starts_with("postgresql://")
}

/// `url` with its password (if any) replaced by `***`, for messages and logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

/// A database error as one line: SQLSTATE and message for server errors.
pub(crate) fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("postgres: {} ({})", db.message(), db.code().code()),
        None => format!("postgres: {e}"),
    }
}

/// What went wrong inside a transaction: the database (maybe worth a
/// retry: a deadlock or serialisation failure), or the store's own error.
enum Fail {
    Pg(postgres::Error),
    Store(StoreError),
    /// Something changed under the transaction: run it again.
    Retry,
}

impl From<postgres::Error> for Fail {
    fn from(e: postgres::Error) -> Fail {
        Fail::Pg(e)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Fail {
        Fail::Store(e)
    }
}

impl From<Fail> for StoreError {
    fn from(f: Fail) -> StoreError {
        match f {
            Fail::Pg(e) => StoreError::Io(describe(&e)),
            Fail::Store(e) => e,
            Fail::Retry => StoreError::Io("postgres: a transaction kept conflicting".into()),
        }
    }
}

type R<T> = std::result::Result<T, Fail>;

fn retryable(f: &Fail) -> bool {
    use postgres::error::SqlState;
    match f {
        Fail::Retry => true,
        Fail::Pg(e) => e.code().is_some_and(|c| {
            *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
        }),
        Fail::Store(_) => false,
    }
}

fn encode<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Io(e.to_string()))
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt {
        key: what.to_string(),
        detail: e.to_string(),
    })
}

fn status_name(s: RunStatus) -> &'static str {
    super::index::status_name(s)
}

/// A 64-bit advisory lock key for `(kind, key)`.
fn lock_key(kind: &[u8], key: &[u8]) -> i64 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(kind);
    h.update([0]);
    h.update(key);
    let d = h.finalize();
    i64::from_be_bytes(d[..8].try_into().unwrap_or([0; 8]))
}

/// The advisory lock one retention chunk at a time holds, among the
/// nodes of the tables in `schema` (advisory locks are per database).
pub(crate) fn retention_lock(schema: &str) -> i64 {
    lock_key(b"retention", schema.as_bytes())
}

fn kind_code(l: Listen) -> i8 {
    match l {
        Listen::Wake => b'w' as i8,
        Listen::Cancel => b'c' as i8,
    }
}

/// Where a run's queue entry goes with a write.
#[derive(Clone, Copy)]
enum Queue {
    /// No entry (finished).
    Off,
    /// Due at this time.
    At(i64),
    /// Parked by a wait until this time (not backlog).
    Parked(i64),
    /// Due at this time, which is a lease's end (a safety net, not a time
    /// another node should wake up for).
    Lease(i64),
}

const PUT_RUN: &str = "INSERT INTO sb_runs (id, event_id, recipe, status, created_at, due_at, parked, leased_by, record)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
     ON CONFLICT (id) DO UPDATE SET event_id = EXCLUDED.event_id, status = EXCLUDED.status,
       due_at = EXCLUDED.due_at, parked = EXCLUDED.parked, leased_by = EXCLUDED.leased_by,
       record = EXCLUDED.record";
const GET_RUN_FOR_UPDATE: &str = "SELECT record FROM sb_runs WHERE id = $1 FOR UPDATE";
const GET_RUN_SKIP_LOCKED: &str = "SELECT record FROM sb_runs WHERE id = $1 FOR UPDATE SKIP LOCKED";
const LISTEN: &str = "INSERT INTO sb_listen (kind, connector, event_type, key, run_id, tag)
     VALUES ($1, $2, $3, $4, $5, $6)
     ON CONFLICT (kind, connector, event_type, key, run_id) DO UPDATE SET tag = EXCLUDED.tag";
const UNLISTEN: &str = "DELETE FROM sb_listen WHERE kind = $1 AND connector = $2 AND event_type = $3 AND key = $4 AND run_id = $5";
const ADVISORY: &str = "SELECT pg_advisory_xact_lock($1)";
const REAP: &str = "UPDATE sb_runs r SET due_at = $1
     WHERE r.status = 'running' AND r.due_at > $1 AND r.leased_by IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM sb_nodes n JOIN pg_locks l
         ON l.locktype = 'advisory' AND l.classid = 21314::oid AND l.objid = n.lock_key::oid
        AND l.objsubid = 2 AND l.granted
        AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
       WHERE n.id = r.leased_by)";

/// [`Store::insert_event_matching`] in one statement, for an event with no
/// replay key and no probes whose runs have no debounce, concurrency or
/// cancel keys (most events): claim the delivery id, insert the runs (from
/// arrays) only if the claim succeeded, notify the other nodes if a run is
/// queued for any of them, and return the first event's id on a duplicate —
/// one round trip instead of five, a single statement being its own
/// transaction. The last column finds the first event only if its commit
/// came before this statement's snapshot; else a second statement looks.
const ACCEPT: &str = "WITH claim AS (
       INSERT INTO sb_events (id, connector, delivery_id, received_at, record)
       VALUES ($1, $2, $3, $4, $5)
       ON CONFLICT (connector, delivery_id) DO NOTHING RETURNING id
     ), runs AS (
       INSERT INTO sb_runs (id, event_id, recipe, status, created_at, due_at, parked, leased_by, record)
       SELECT r.id, r.event_id, r.recipe, r.status, r.created_at, r.due_at, false, r.leased_by, r.record
       FROM unnest($6::text[], $15::text[], $7::text[], $8::text[], $9::int8[], $10::int8[], $11::text[],
                   $12::text[])
         AS r(id, event_id, recipe, status, created_at, due_at, leased_by, record)
       WHERE EXISTS (SELECT 1 FROM claim)
       RETURNING 1
     ), wake AS (
       SELECT pg_notify($13, $14::text) WHERE $14::text IS NOT NULL AND EXISTS (SELECT 1 FROM claim)
     )
     SELECT (SELECT id FROM claim),
            (SELECT count(*) FROM runs) + (SELECT count(*) FROM wake),
            (SELECT e.id FROM sb_events e
              WHERE NOT EXISTS (SELECT 1 FROM claim) AND e.connector = $2 AND e.delivery_id = $3)";
const FIRST_EVENT: &str = "SELECT id FROM sb_events WHERE connector = $1 AND delivery_id = $2";
/// [`Store::finish_run`] in one statement for a run without a concurrency
/// slot or cancel keys: its cancel request (if any) goes, the run leaves the queue.
const FINISH: &str = "WITH gone AS (DELETE FROM sb_cancel WHERE run_id = $1)
     INSERT INTO sb_runs (id, event_id, recipe, status, created_at, due_at, parked, leased_by, record)
     VALUES ($1, $2, $3, $4, $5, NULL, false, $6, $7)
     ON CONFLICT (id) DO UPDATE SET event_id = EXCLUDED.event_id, status = EXCLUDED.status,
       due_at = NULL, parked = false, leased_by = EXCLUDED.leased_by, record = EXCLUDED.record";

/// Can `insert_event_matching` store this event with [`ACCEPT`]?
fn simple_accept(event: &Event, runs: &[Run], probes: &[Correlation]) -> bool {
    event.replay.is_none()
        && probes.is_empty()
        && runs
            .iter()
            .all(|r| r.debounce.is_none() && r.concurrency.is_none() && r.listening.is_empty())
}

/// This node: its id (in `leased_by`) and the liveness lock held by a
/// thread on a connection of its own. When that connection breaks (the
/// database restarted, the network cut) the lock is gone and other nodes may
/// take this node's leases; so the node comes back under a **new id**, and
/// its former leases — runs its workers may have dropped when a write failed
/// during the outage — come due for every node, this one included.
struct Node {
    id: Arc<Mutex<Arc<str>>>,
    stop: Mutex<Option<std::sync::mpsc::Sender<()>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    alive: Arc<AtomicBool>,
}

/// Liveness checks in a row that may time out on an open connection before
/// the node gives its lock up and registers again (each waits 5 s).
const SLOW_CHECKS: u32 = 2;

/// A new node id: random (not a time-ordered store id, whose generator's
/// state it would move), `[0-9A-F]` only (it is inlined into `flush`'s SQL).
fn node_name() -> String {
    format!("{:016X}", rand::random::<u64>())
}

fn register(pool: &Pool, id: &str) -> std::result::Result<postgres::Client, postgres::Error> {
    let mut c = pool.connect()?;
    loop {
        let key: i32 = rand::random_range(1..i32::MAX);
        let locked: bool = c
            .query_one(
                "SELECT pg_try_advisory_lock($1, $2)",
                &[&schema::CLASS, &key],
            )?
            .get(0);
        if locked {
            c.execute(
                "INSERT INTO sb_nodes (id, lock_key) VALUES ($1, $2)
                 ON CONFLICT (id) DO UPDATE SET lock_key = EXCLUDED.lock_key",
                &[&id, &key],
            )?;
            return Ok(c);
        }
    }
}

impl Node {
    fn start(pool: &Pool) -> Result<Node> {
        let first = node_name();
        let client = register(pool, &first).map_err(|e| StoreError::Io(describe(&e)))?;
        let id: Arc<Mutex<Arc<str>>> = Arc::new(Mutex::new(Arc::from(first.as_str())));
        let alive = Arc::new(AtomicBool::new(true));
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let keeper = Pool::new(pool.config().clone(), 1);
        let (tid, talive) = (id.clone(), alive.clone());
        let thread = std::thread::Builder::new()
            .name("pg-node".into())
            .spawn(move || {
                let mut client = Some(client);
                // Checks in a row that got no answer in time on a connection
                // still open.
                let mut slow = 0;
                // Every second until told to stop (a message, or the store dropped).
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    rx.recv_timeout(Duration::from_secs(1))
                {
                    let ok = match client.as_mut() {
                        None => false,
                        Some(c) => match c.is_valid(Duration::from_secs(5)) {
                            Ok(()) => {
                                slow = 0;
                                true
                            }
                            // A slow answer on an open connection (a loaded
                            // database or host) is not a lost lock: giving
                            // the connection up would free this node's
                            // leases while its workers still run them.
                            Err(_) if !c.is_closed() && slow < SLOW_CHECKS => {
                                slow += 1;
                                tracing::warn!(slow, "the node's liveness check got no answer within 5 s");
                                true
                            }
                            Err(_) => false,
                        },
                    };
                    if ok {
                        continue;
                    }
                    slow = 0;
                    talive.store(false, Ordering::SeqCst);
                    client = None;
                    let new = node_name();
                    match register(&keeper, &new) {
                        Ok(c) => {
                            tracing::warn!(node = %new, "PostgreSQL reachable again: node lock re-taken under a new id");
                            *tid.lock().unwrap_or_else(|p| p.into_inner()) = Arc::from(new.as_str());
                            client = Some(c);
                            talive.store(true, Ordering::SeqCst);
                        }
                        Err(e) => tracing::warn!(error = %describe(&e), "node lock lost; retrying"),
                    }
                }
                if let Some(mut c) = client {
                    // A clean stop: its leases are stale at once.
                    let id = tid.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    let _ = c.execute("DELETE FROM sb_nodes WHERE id = $1", &[&&*id]);
                }
            })
            .map_err(|e| StoreError::Io(format!("cannot start the node thread: {e}")))?;
        Ok(Node {
            id,
            stop: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            alive,
        })
    }

    fn id(&self) -> Arc<str> {
        self.id.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn stop(&self) {
        self.stop.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

pub struct PgStore {
    pool: Pool,
    node: Node,
    /// Wake-ups from the other nodes (LISTEN/NOTIFY on the schema's channel).
    queue: listen::Listener,
    /// The advisory lock a retention chunk holds ([`retention_lock`]).
    retention_lock: i64,
    /// Wall-clock ms of the last look for runs of dead nodes.
    last_reap: AtomicI64,
    /// Where the next retention chunk starts (an event id; empty: the oldest).
    expire_from: Mutex<String>,
    /// Where the next state sweep starts (a raw key; empty: the start).
    sweep_from: Mutex<Vec<u8>>,
}

impl PgStore {
    /// Connect to `url`, apply missing migrations and register this node,
    /// with a pool of [`DEFAULT_POOL`] connections.
    pub fn open(url: &str) -> Result<PgStore> {
        PgStore::open_pooled(url, DEFAULT_POOL)
    }

    /// [`PgStore::open`] with at most `pool` pooled connections (at least 1).
    pub fn open_pooled(url: &str, pool: usize) -> Result<PgStore> {
        let config = postgres::Config::from_str(url)
            .map_err(|e| StoreError::Io(format!("bad PostgreSQL URL: {e}")))?;
        let pool = Pool::new(config, pool);
        blocking(|| -> Result<PgStore> {
            let mut c = pool.connect().map_err(|e| StoreError::Io(describe(&e)))?;
            let applied = schema::migrate(&mut c).map_err(StoreError::Io)?;
            if !applied.is_empty() {
                tracing::info!(versions = ?applied, "PostgreSQL schema migrated");
            }
            let schema: String = c
                .query_one("SELECT coalesce(current_schema(), 'public')", &[])
                .map_err(|e| StoreError::Io(describe(&e)))?
                .get(0);
            drop(c);
            let node = Node::start(&pool)?;
            Ok(PgStore {
                pool,
                node,
                queue: listen::Listener::new(listen::channel(&schema)),
                retention_lock: retention_lock(&schema),
                last_reap: AtomicI64::new(0),
                expire_from: Mutex::new(String::new()),
                sweep_from: Mutex::new(Vec::new()),
            })
        })
    }

    /// Apply the missing migrations only (`switchboard store migrate`).
    pub fn migrate(url: &str) -> Result<Vec<i32>> {
        let config = postgres::Config::from_str(url)
            .map_err(|e| StoreError::Io(format!("bad PostgreSQL URL: {e}")))?;
        blocking(|| {
            let mut c = Pool::new(config, 1)
                .connect()
                .map_err(|e| StoreError::Io(describe(&e)))?;
            schema::migrate(&mut c).map_err(StoreError::Io)
        })
    }

    /// This node's id (what `leased_by` names).
    pub fn node_id(&self) -> String {
        self.node.id().to_string()
    }

    /// `store copy`: write `event` and those of `runs` not stored yet as they
    /// are, with the queue rows each run's status implies (a `running` run of
    /// a stopped store is due at `now`, its lease being stale), `cancels`
    /// (`(run id, reason)`: cancel requests of running runs) and its replay
    /// key. An event whose delivery id is taken (an older copy of a
    /// delivery retention let through again) is stored without the id.
    pub fn import(
        &self,
        event: &Event,
        runs: &[Run],
        cancels: &[(String, String)],
        now: i64,
    ) -> Result<()> {
        self.tx(|tx| {
            let delivery = event.delivery_id.as_deref().map(str::as_bytes);
            let record = encode(event)?;
            let stored = tx.query_opt(
                "INSERT INTO sb_events (id, connector, delivery_id, received_at, record)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (connector, delivery_id) DO NOTHING RETURNING id",
                &[&event.id, &event.connector, &delivery, &event.received_at, &record],
            )?;
            if stored.is_none() {
                tx.execute(
                    "INSERT INTO sb_events (id, connector, delivery_id, received_at, record)
                     VALUES ($1, $2, NULL, $3, $4)",
                    &[&event.id, &event.connector, &event.received_at, &record],
                )?;
            }
            if let Some(r) = &event.replay {
                tx.execute(
                    "INSERT INTO sb_replay (connector, key, event_id, received_at)
                     VALUES ($1, $2, $3, $4) ON CONFLICT (connector, key) DO NOTHING",
                    &[&event.connector, &r.key, &event.id, &event.received_at],
                )?;
            }
            for run in runs {
                let (due, parked) = match run.status {
                    s if s.is_final() => (None, false),
                    RunStatus::Waiting => (Some(run.due_at), true),
                    RunStatus::Running => (Some(run.due_at.min(now)), false),
                    _ => (Some(run.due_at), false),
                };
                let n = tx.execute(
                    "INSERT INTO sb_runs (id, event_id, recipe, status, created_at, due_at, parked, leased_by, record)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, $8) ON CONFLICT (id) DO NOTHING",
                    &[
                        &run.id,
                        &run.event_id,
                        &run.recipe,
                        &status_name(run.status),
                        &run.created_at,
                        &due,
                        &parked,
                        &encode(run)?,
                    ],
                )?;
                if n == 0 || run.status.is_final() {
                    continue;
                }
                if let Some(slot) = &run.concurrency {
                    tx.execute(
                        "INSERT INTO sb_slots (key, seq, run_id) VALUES ($1, $2, $3)",
                        &[&slot.key.as_bytes(), &(slot.seq as i64), &run.id],
                    )?;
                }
                if let (Some(d), RunStatus::Queued) = (&run.debounce, run.status) {
                    tx.execute(
                        "INSERT INTO sb_debounce (key, run_id) VALUES ($1, $2)
                         ON CONFLICT (key) DO NOTHING",
                        &[&d.key.as_bytes(), &run.id],
                    )?;
                }
                Self::list_cancel_keys(tx, run)?;
                if let (Some(p), RunStatus::Waiting) = (&run.parked, run.status) {
                    for c in &p.keys {
                        Self::list(tx, c, &run.id)?;
                    }
                }
            }
            for (id, reason) in cancels {
                tx.execute(
                    "INSERT INTO sb_cancel (run_id, reason) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[id, reason],
                )?;
            }
            Ok(((), true))
        })
    }

    /// `store copy`: recipe state entries as stored (raw keys and records),
    /// then the concurrency sequence moved past every copied slot.
    pub fn import_state(&self, raw: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
        self.tx(|tx| {
            for (k, v) in raw {
                tx.execute(
                    "INSERT INTO sb_state (key, value) VALUES ($1, $2)
                     ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                    &[k, v],
                )?;
            }
            tx.query(
                "SELECT setval('sb_slot_seq', greatest((SELECT max(seq) FROM sb_slots), 1))",
                &[],
            )?;
            Ok(((), true))
        })
    }

    /// Run `f` in a transaction, again after a deadlock or serialisation
    /// failure; `f` returns whether to commit (else it rolls back).
    fn tx<T: Send>(&self, mut f: impl FnMut(&mut Tx<'_>) -> R<(T, bool)> + Send) -> Result<T> {
        blocking(|| {
            let mut conn = self.pool.get().map_err(|e| StoreError::Io(describe(&e)))?;
            let mut tries = 0;
            loop {
                let r = (|| {
                    let mut tx = conn.begin()?;
                    let (v, commit) = f(&mut tx)?;
                    if commit {
                        if let Some(due) = tx.wake {
                            // Delivered to the listening nodes on commit only.
                            let payload = listen::payload(&self.node.id(), due);
                            tx.execute(NOTIFY, &[&self.queue.channel, &payload])?;
                        }
                        tx.commit()?;
                    } else {
                        pool::trip(); // the ROLLBACK of dropping `tx`
                    }
                    Ok(v)
                })();
                if let Err(Fail::Pg(e)) = &r {
                    conn.saw(e);
                }
                match r {
                    Err(f) if retryable(&f) && tries < 5 => tries += 1,
                    r => return r.map_err(StoreError::from),
                }
            }
        })
    }

    /// One statement outside a transaction.
    fn query(
        &self,
        sql: &'static str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Vec<postgres::Row>> {
        blocking(|| {
            let mut conn = self.pool.get().map_err(|e| StoreError::Io(describe(&e)))?;
            let r = conn.stmt(sql).and_then(|st| {
                pool::trip();
                conn.client.query(&st, params)
            });
            r.map_err(|e| {
                conn.saw(&e);
                StoreError::Io(describe(&e))
            })
        })
    }

    fn put_run(&self, tx: &mut Tx<'_>, run: &Run, queue: Queue) -> R<()> {
        let (due, parked) = match queue {
            Queue::Off => (None, false),
            Queue::At(t) | Queue::Lease(t) => (Some(t), false),
            Queue::Parked(t) => (Some(t), true),
        };
        if let (Queue::At(t) | Queue::Parked(t), false) = (queue, run.status == RunStatus::Running)
        {
            // Any node's worker may take it then: tell the idle ones.
            tx.wake_at(t);
        }
        let node = self.node.id();
        let leased_by = (run.status == RunStatus::Running).then_some(&*node);
        tx.execute(
            PUT_RUN,
            &[
                &run.id,
                &run.event_id,
                &run.recipe,
                &status_name(run.status),
                &run.created_at,
                &due,
                &parked,
                &leased_by,
                &encode(run)?,
            ],
        )?;
        Ok(())
    }

    fn list(tx: &mut Tx<'_>, c: &Correlation, run_id: &str) -> R<()> {
        tx.execute(
            LISTEN,
            &[
                &kind_code(c.listen),
                &c.connector.as_bytes(),
                &c.event_type.as_bytes(),
                &c.key.as_bytes(),
                &run_id,
                &c.tag.as_bytes(),
            ],
        )?;
        Ok(())
    }

    fn unlist(tx: &mut Tx<'_>, c: &Correlation, run_id: &str) -> R<()> {
        tx.execute(
            UNLISTEN,
            &[
                &kind_code(c.listen),
                &c.connector.as_bytes(),
                &c.event_type.as_bytes(),
                &c.key.as_bytes(),
                &run_id,
            ],
        )?;
        Ok(())
    }

    fn list_cancel_keys(tx: &mut Tx<'_>, run: &Run) -> R<()> {
        for c in &run.listening {
            Self::list(tx, c, &run.id)?;
        }
        Ok(())
    }

    fn unlist_cancel_keys(tx: &mut Tx<'_>, run: &Run) -> R<()> {
        for c in &run.listening {
            Self::unlist(tx, c, &run.id)?;
        }
        tx.execute("DELETE FROM sb_cancel WHERE run_id = $1", &[&run.id])?;
        Ok(())
    }

    /// Free a finishing run's concurrency slot and make the runs now at the
    /// front of its key due. Under the key's advisory lock, which `lease`
    /// takes before it looks at the key's turn; a front run locked by a
    /// lease in progress is skipped (that lease sees the freed slot).
    fn release_slot(&self, tx: &mut Tx<'_>, run: &mut Run, now: i64) -> R<()> {
        let Some(slot) = run.concurrency.take() else {
            return Ok(());
        };
        let key = slot.key.as_bytes();
        tx.execute(ADVISORY, &[&lock_key(b"k", key)])?;
        tx.execute(
            "DELETE FROM sb_slots WHERE key = $1 AND seq = $2",
            &[&key, &(slot.seq as i64)],
        )?;
        let front = tx.query(
            "SELECT run_id FROM sb_slots WHERE key = $1 ORDER BY seq LIMIT $2",
            &[&key, &(slot.limit as i64 + 1)],
        )?;
        for row in front {
            let id: String = row.get(0);
            if id == run.id {
                continue;
            }
            let Some(row) = tx.query_opt(GET_RUN_SKIP_LOCKED, &[&id])? else {
                continue;
            };
            let mut next: Run = decode(&id, row.get(0))?;
            if next.status == RunStatus::Queued && next.due_at > now {
                next.due_at = now;
                self.put_run(tx, &next, Queue::At(now))?;
            }
        }
        Ok(())
    }

    /// Is this run among the first `limit` unfinished runs of its key? Takes
    /// the key's advisory lock (see [`PgStore::release_slot`]).
    fn has_turn(tx: &mut Tx<'_>, slot: &super::ConcurrencySlot) -> R<bool> {
        let key = slot.key.as_bytes();
        tx.execute(ADVISORY, &[&lock_key(b"k", key)])?;
        let rows = tx.query(
            "SELECT seq FROM sb_slots WHERE key = $1 ORDER BY seq LIMIT $2",
            &[&key, &(slot.limit.max(1) as i64)],
        )?;
        Ok(rows.iter().any(|r| r.get::<_, i64>(0) == slot.seq as i64))
    }

    /// Wake or cancel the runs listed under `probes`, as sled's `match_waiting`.
    fn match_waiting(
        &self,
        tx: &mut Tx<'_>,
        event_id: &str,
        probes: &[Correlation],
        now: i64,
    ) -> R<Matched> {
        let mut matched = Matched::default();
        let mut done = HashSet::new();
        for probe in probes {
            let rows = tx.query(
                "SELECT run_id, tag FROM sb_listen
                 WHERE kind = $1 AND connector = $2 AND event_type = $3 AND key = $4
                 ORDER BY run_id",
                &[
                    &kind_code(probe.listen),
                    &probe.connector.as_bytes(),
                    &probe.event_type.as_bytes(),
                    &probe.key.as_bytes(),
                ],
            )?;
            for row in rows {
                let id: String = row.get(0);
                let tag: &[u8] = row.get(1);
                if tag != probe.tag.as_bytes() || !done.insert(id.clone()) {
                    continue;
                }
                let Some(r) = tx.query_opt(GET_RUN_FOR_UPDATE, &[&id])? else {
                    Self::unlist(tx, probe, &id)?; // a stale entry
                    continue;
                };
                let mut run: Run = decode(&id, r.get(0))?;
                match run.hear(probe, event_id, now) {
                    Heard::Stale => Self::unlist(tx, probe, &id)?,
                    Heard::Cancelling(reason) => {
                        tx.execute(
                            "INSERT INTO sb_cancel (run_id, reason) VALUES ($1, $2)
                             ON CONFLICT (run_id) DO UPDATE SET reason = EXCLUDED.reason",
                            &[&id, &reason],
                        )?;
                        matched.cancelling.push(id);
                    }
                    Heard::Woken { keys } => {
                        for c in &keys {
                            Self::unlist(tx, c, &id)?;
                        }
                        Self::list_cancel_keys(tx, &run)?;
                        self.put_run(tx, &run, Queue::At(now))?;
                        matched.woken.push(id);
                    }
                    Heard::Cancelled { keys } => {
                        for c in &keys {
                            Self::unlist(tx, c, &id)?;
                        }
                        if let Some(d) = &run.debounce {
                            tx.execute(
                                "DELETE FROM sb_debounce WHERE key = $1 AND run_id = $2",
                                &[&d.key.as_bytes(), &id],
                            )?;
                        }
                        Self::unlist_cancel_keys(tx, &run)?;
                        self.release_slot(tx, &mut run, now)?;
                        self.put_run(tx, &run, Queue::Off)?;
                        matched.cancelled.push(id);
                    }
                }
            }
        }
        Ok(matched)
    }

    /// [`ACCEPT`]: the common event in one statement.
    fn accept_simple(&self, event: &Event, runs: &[Run]) -> Result<(Inserted, Matched)> {
        let delivery = event.delivery_id.as_deref().map(str::as_bytes);
        let record = encode(event)?;
        let node = self.node.id();
        let mut cols = (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
        let mut event_ids = Vec::with_capacity(runs.len());
        let mut wake: Option<i64> = None;
        for run in runs {
            let running = run.status == RunStatus::Running;
            if !running {
                // Any node's worker may take it: tell the idle ones.
                wake = Some(wake.map_or(run.due_at, |w| w.min(run.due_at)));
            }
            cols.0.push(run.id.as_str());
            event_ids.push(run.event_id.as_str());
            cols.1.push(run.recipe.as_str());
            cols.2.push(status_name(run.status));
            cols.3.push(run.created_at);
            cols.4.push(run.due_at);
            cols.5.push(running.then_some(&*node));
            cols.6.push(encode(run)?);
        }
        let payload = wake.map(|due| listen::payload(&node, due));
        for _ in 0..5 {
            let rows = self.query(
                ACCEPT,
                &[
                    &event.id,
                    &event.connector,
                    &delivery,
                    &event.received_at,
                    &record,
                    &cols.0,
                    &cols.1,
                    &cols.2,
                    &cols.3,
                    &cols.4,
                    &cols.5,
                    &cols.6,
                    &self.queue.channel,
                    &payload,
                    &event_ids,
                ],
            )?;
            let row = rows
                .first()
                .ok_or_else(|| StoreError::Io("postgres: the accept returned no row".into()))?;
            if row.get::<_, Option<String>>(0).is_some() {
                return Ok((Inserted::New, Matched::default()));
            }
            let first = match row.get::<_, Option<String>>(2) {
                Some(first) => Some(first),
                // Committed after this statement's snapshot: a new one sees it.
                None => self
                    .query(FIRST_EVENT, &[&event.connector, &delivery])?
                    .first()
                    .map(|r| r.get(0)),
            };
            if let Some(event_id) = first {
                return Ok((Inserted::Duplicate { event_id }, Matched::default()));
            }
            // Deleted by retention in between: try again.
        }
        Err(Fail::Retry.into())
    }

    /// Make runs leased by nodes that are gone due at `now` (at most every
    /// [`REAP_EVERY_MS`] per node).
    fn reap(&self, now: i64, force: bool) -> Result<usize> {
        let wall = super::now_ms();
        let last = self.last_reap.load(Ordering::Relaxed);
        if !force && wall - last < REAP_EVERY_MS {
            return Ok(0);
        }
        self.last_reap.store(wall, Ordering::Relaxed);
        let n = self.tx(|tx| {
            let n = tx.execute(REAP, &[&now])?;
            if n > 0 {
                tx.wake_at(now);
            }
            Ok((n, true))
        })?;
        if n > 0 {
            tracing::warn!(runs = n, "runs leased by a node that is gone are due again");
        }
        Ok(n as usize)
    }

    /// [`Store::apply_state`] on one connection: lock and read (blocking),
    /// decide (here: `checkpoint` need not be `Send`), write and commit.
    fn apply_state_on(
        &self,
        conn: &mut pool::Conn,
        op: &StateOp,
        now: i64,
        locks: &[i64],
        raw: Vec<Vec<u8>>,
        checkpoint: &mut dyn FnMut(&StateOutput) -> Option<Run>,
    ) -> Result<StateOutput> {
        let broken = std::cell::Cell::new(false);
        let r = self.apply_state_tx(conn, op, now, locks, raw, checkpoint, &broken);
        if broken.get() {
            conn.broken = true;
        }
        r
    }

    #[allow(clippy::too_many_arguments)]
    fn apply_state_tx(
        &self,
        conn: &mut pool::Conn,
        op: &StateOp,
        now: i64,
        locks: &[i64],
        raw: Vec<Vec<u8>>,
        checkpoint: &mut dyn FnMut(&StateOutput) -> Option<Run>,
        broken: &std::cell::Cell<bool>,
    ) -> Result<StateOutput> {
        let seen = |f: Fail| -> StoreError {
            if let Fail::Pg(e) = &f {
                if pool::breaks(e) {
                    broken.set(true);
                }
            }
            f.into()
        };
        let mut tx = blocking(|| conn.begin()).map_err(|e| seen(Fail::Pg(e)))?;
        let fetched = blocking(|| -> R<HashMap<Vec<u8>, Vec<u8>>> {
            for l in locks {
                tx.execute(ADVISORY, &[l])?;
            }
            let rows = tx.query(
                "SELECT key, value FROM sb_state WHERE key = ANY($1)",
                &[&raw],
            )?;
            Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
        });
        let decided = fetched.map_err(seen).and_then(|fetched| {
            let kv = Fetched(fetched, raw.iter().cloned().collect());
            let (out, writes) = state::apply(op, now, &kv)?;
            let run = checkpoint(&out);
            Ok((out, writes, run))
        });
        let (out, writes, run) = match decided {
            Ok(d) => d,
            Err(e) => {
                blocking(move || drop(tx)); // rolls back
                return Err(e);
            }
        };
        blocking(move || -> R<StateOutput> {
            for w in &writes {
                match w {
                    Write::Put(k, v) => tx.execute(
                        "INSERT INTO sb_state (key, value) VALUES ($1, $2)
                         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                        &[k, v],
                    )?,
                    Write::Remove(k) => tx.execute("DELETE FROM sb_state WHERE key = $1", &[k])?,
                };
            }
            if let Some(run) = &run {
                let node = self.node.id();
                let leased_by = (run.status == RunStatus::Running).then_some(&*node);
                tx.execute(
                    "UPDATE sb_runs SET status = $2, leased_by = $3, record = $4 WHERE id = $1",
                    &[&run.id, &status_name(run.status), &leased_by, &encode(run)?],
                )?;
            }
            tx.commit()?;
            Ok(out)
        })
        .map_err(seen)
    }

    fn counts(&self) -> Result<Counts> {
        let rows = self.query("SELECT status, count(*) FROM sb_runs GROUP BY status", &[])?;
        let mut runs: BTreeMap<String, u64> = super::index::STATUSES
            .iter()
            .map(|s| (status_name(*s).to_string(), 0))
            .collect();
        for r in rows {
            let s: String = r.get(0);
            let n: i64 = r.get(1);
            runs.insert(s, n as u64);
        }
        let events: i64 = self.query("SELECT count(*) FROM sb_events", &[])?[0].get(0);
        let queue_depth = ["queued", "running", "retrying"]
            .iter()
            .map(|s| runs.get(*s).copied().unwrap_or(0))
            .sum();
        Ok(Counts {
            events: events as u64,
            runs,
            queue_depth,
        })
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // The clients' own runtimes must not be dropped on a runtime thread.
        blocking(|| {
            self.queue.stop();
            self.node.stop();
            self.pool.close();
        });
    }
}

/// The keys a state operation reads, of every kind: fetched in one query
/// before `state::apply` decides (it may read nothing else).
fn state_keys(op: &StateOp) -> Vec<&StateKey> {
    match op {
        StateOp::Get(k) | StateOp::Delete(k) => vec![k],
        StateOp::Set { key, .. } | StateOp::SetIfAbsent { key, .. } | StateOp::Incr { key, .. } => {
            vec![key]
        }
        StateOp::Assign(a) => {
            let mut keys = vec![&a.rotation];
            if let Some(state::Loads::Keys { keys: loads, .. }) = &a.loads {
                keys.extend(loads.iter());
            }
            keys
        }
    }
}

/// The values fetched for one state operation.
struct Fetched(HashMap<Vec<u8>, Vec<u8>>, HashSet<Vec<u8>>);

impl Kv for Fetched {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if !self.1.contains(key) {
            return Err(StoreError::Io(format!(
                "state key {} was not locked for this operation",
                String::from_utf8_lossy(key).replace('\0', "/")
            )));
        }
        Ok(self.0.get(key).cloned())
    }
}

impl Store for PgStore {
    fn insert_event_matching(
        &self,
        event: &Event,
        runs: &[Run],
        probes: &[Correlation],
        now: i64,
    ) -> Result<(Inserted, Matched)> {
        if simple_accept(event, runs, probes) {
            return self.accept_simple(event, runs);
        }
        self.tx(|tx| {
            let delivery = event.delivery_id.as_deref().map(str::as_bytes);
            // Claims the delivery id: a concurrent transaction with the
            // same id waits here for this one, then conflicts.
            let claimed = tx.query_opt(
                "INSERT INTO sb_events (id, connector, delivery_id, received_at, record)
                 VALUES ($1, $2, $3, $4, '')
                 ON CONFLICT (connector, delivery_id) DO NOTHING RETURNING id",
                &[&event.id, &event.connector, &delivery, &event.received_at],
            )?;
            if claimed.is_none() {
                let first = tx.query_opt(
                    "SELECT id FROM sb_events WHERE connector = $1 AND delivery_id = $2",
                    &[&event.connector, &delivery],
                )?;
                let Some(first) = first else {
                    // Deleted by retention in between: try again.
                    return Err(Fail::Retry);
                };
                let dup = Inserted::Duplicate {
                    event_id: first.get(0),
                };
                return Ok(((dup, Matched::default()), false));
            }
            if let Some(guard) = &event.replay {
                let fresh = tx.query_opt(
                    "INSERT INTO sb_replay (connector, key, event_id, received_at)
                     VALUES ($1, $2, $3, $4) ON CONFLICT (connector, key) DO NOTHING RETURNING 1",
                    &[&event.connector, &guard.key, &event.id, &event.received_at],
                )?;
                if fresh.is_none() {
                    let seen = tx.query_opt(
                        "SELECT event_id, received_at FROM sb_replay
                         WHERE connector = $1 AND key = $2 FOR UPDATE",
                        &[&event.connector, &guard.key],
                    )?;
                    if let Some(seen) = seen {
                        let (first, at): (String, i64) = (seen.get(0), seen.get(1));
                        if guard.replays(event.received_at, at) {
                            let dup = Inserted::Duplicate { event_id: first };
                            return Ok(((dup, Matched::default()), false));
                        }
                    }
                    tx.execute(
                        "UPDATE sb_replay SET event_id = $3, received_at = $4
                         WHERE connector = $1 AND key = $2",
                        &[&event.connector, &guard.key, &event.id, &event.received_at],
                    )?;
                }
            }
            let mut event = std::borrow::Cow::Borrowed(event);
            for run in runs {
                let mut run = run.clone();
                if let Some(d) = &mut run.debounce {
                    let key = d.key.as_bytes();
                    tx.execute(ADVISORY, &[&lock_key(b"b", key)])?;
                    let pending = tx.query_opt(
                        "SELECT r.record FROM sb_debounce b JOIN sb_runs r ON r.id = b.run_id
                         WHERE b.key = $1 FOR UPDATE OF r",
                        &[&key],
                    )?;
                    let pending: Option<Run> = match pending {
                        Some(row) => Some(decode("debounced run", row.get(0))?),
                        None => None,
                    };
                    if let Some(mut p) = pending.filter(Run::debounce_pending) {
                        // The burst goes on: the pending run takes this event.
                        p.absorb(&event.id, d);
                        self.put_run(tx, &p, Queue::At(p.due_at))?;
                        for id in &mut event.to_mut().runs {
                            if *id == run.id {
                                id.clone_from(&p.id);
                            }
                        }
                        continue;
                    }
                    d.events = 1;
                    tx.execute(
                        "INSERT INTO sb_debounce (key, run_id) VALUES ($1, $2)
                         ON CONFLICT (key) DO UPDATE SET run_id = EXCLUDED.run_id",
                        &[&key, &run.id],
                    )?;
                }
                if let Some(slot) = &mut run.concurrency {
                    // Arrival order within the key: a sequence of the database.
                    let seq: i64 = tx
                        .query_opt(
                            "INSERT INTO sb_slots (key, seq, run_id)
                             VALUES ($1, nextval('sb_slot_seq'), $2) RETURNING seq",
                            &[&slot.key.as_bytes(), &run.id],
                        )?
                        .map_or(0, |r| r.get(0));
                    slot.seq = seq as u64;
                }
                Self::list_cancel_keys(tx, &run)?;
                self.put_run(tx, &run, Queue::At(run.due_at))?;
            }
            tx.execute(
                "UPDATE sb_events SET record = $2 WHERE id = $1",
                &[&event.id, &encode(&*event)?],
            )?;
            let matched = self.match_waiting(tx, &event.id, probes, now)?;
            Ok(((Inserted::New, matched), true))
        })
    }

    fn park(&self, run: &Run, _previous_due: i64) -> Result<()> {
        self.tx(|tx| {
            if let Some(p) = &run.parked {
                for c in &p.keys {
                    Self::list(tx, c, &run.id)?;
                }
            }
            self.put_run(tx, run, Queue::Parked(run.due_at))?;
            Ok(((), true))
        })
    }

    fn flush(&self) -> Result<()> {
        // One synchronous commit: the WAL up to it — every asynchronous
        // commit this node made before — is on disk when it returns.
        let sql = format!(
            "BEGIN; SET LOCAL synchronous_commit TO on;
             INSERT INTO sb_nodes (id, lock_key, commits) VALUES ('{id}', 0, 1)
             ON CONFLICT (id) DO UPDATE SET commits = sb_nodes.commits + 1;
             COMMIT",
            id = self.node.id() // `node_name`: [0-9A-F] only
        );
        crate::crash::point("group.flush");
        blocking(|| {
            let mut conn = self.pool.get().map_err(|e| StoreError::Io(describe(&e)))?;
            pool::trip();
            let r = conn.client.batch_execute(&sql);
            if let Err(e) = &r {
                conn.saw(e);
                if !conn.broken {
                    let _ = conn.client.batch_execute("ROLLBACK");
                }
            }
            r.map_err(|e| StoreError::Io(describe(&e)))
        })
    }

    fn outlives_process(&self) -> bool {
        true
    }

    fn watch_queue(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<i64>> {
        match self
            .queue
            .subscribe(self.pool.config(), self.node.id.clone())
        {
            Ok(rx) => Some(rx),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the thread listening for runs queued by other nodes");
                None
            }
        }
    }

    fn healthy(&self) -> Result<()> {
        self.query("SELECT 1", &[])?;
        if !self.node.alive.load(Ordering::SeqCst) {
            return Err(StoreError::Io(
                "this node lost its PostgreSQL liveness lock (reconnecting)".into(),
            ));
        }
        Ok(())
    }

    fn event(&self, id: &str) -> Result<Option<Event>> {
        let rows = self.query("SELECT record FROM sb_events WHERE id = $1", &[&id])?;
        rows.first().map(|r| decode(id, r.get(0))).transpose()
    }

    fn events(&self, page: &Page) -> Result<Vec<Event>> {
        let rows = self.query(
            "SELECT id, record FROM sb_events WHERE ($1::text IS NULL OR id < $1)
             ORDER BY id DESC LIMIT $2",
            &[&page.before, &(page.limit.max(1) as i64)],
        )?;
        rows.iter().map(|r| decode(r.get(0), r.get(1))).collect()
    }

    fn run(&self, id: &str) -> Result<Option<Run>> {
        let rows = self.query("SELECT record FROM sb_runs WHERE id = $1", &[&id])?;
        rows.first().map(|r| decode(id, r.get(0))).transpose()
    }

    fn runs(&self, page: &Page, filter: &RunFilter) -> Result<Vec<Run>> {
        let status = filter.status.map(status_name);
        let rows = self.query(
            "SELECT id, record FROM sb_runs
             WHERE ($1::text IS NULL OR id < $1)
               AND ($2::text IS NULL OR status = $2)
               AND ($3::text IS NULL OR recipe = $3)
               AND (NOT $4 OR status IN ('failed', 'dead'))
             ORDER BY id DESC LIMIT $5",
            &[
                &page.before,
                &status,
                &filter.recipe,
                &filter.failures,
                &(page.limit.max(1) as i64),
            ],
        )?;
        rows.iter().map(|r| decode(r.get(0), r.get(1))).collect()
    }

    fn event_times(&self, since: i64, max: usize) -> Result<Vec<i64>> {
        let rows = self.query(
            "SELECT received_at FROM sb_events WHERE id >= $1 ORDER BY id DESC LIMIT $2",
            &[&super::id_floor(since), &(max as i64)],
        )?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn run_heads(&self, since: i64, max: usize) -> Result<Vec<RunHead>> {
        let rows = self.query(
            "SELECT id, record FROM sb_runs WHERE id >= $1 ORDER BY id DESC LIMIT $2",
            &[&super::id_floor(since), &(max as i64)],
        )?;
        rows.iter().map(|r| decode(r.get(0), r.get(1))).collect()
    }

    fn event_by_delivery(&self, connector: &str, delivery_id: &str) -> Result<Option<Event>> {
        let rows = self.query(
            "SELECT id, record FROM sb_events WHERE connector = $1 AND delivery_id = $2",
            &[&connector, &delivery_id.as_bytes()],
        )?;
        rows.first().map(|r| decode(r.get(0), r.get(1))).transpose()
    }

    fn lease(&self, now: i64, lease_ms: i64, max: usize) -> Result<Vec<Run>> {
        self.reap(now, false)?;
        self.tx(|tx| {
            let mut out = Vec::new();
            let rows = tx.query(
                "SELECT id, record FROM sb_runs WHERE due_at <= $1
                 ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED",
                &[&now, &(max as i64)],
            )?;
            for row in rows {
                let id: &str = row.get(0);
                let mut run: Run = decode(id, row.get(1))?;
                if run.status.is_final() {
                    // Left by a worker that finished after its lease expired.
                    tx.execute("UPDATE sb_runs SET due_at = NULL WHERE id = $1", &[&id])?;
                    continue;
                }
                if run.status == RunStatus::Waiting {
                    // Its time came: an event can no longer wake or cancel it.
                    if let Some(p) = &run.parked {
                        for c in &p.keys {
                            Self::unlist(tx, c, &run.id)?;
                        }
                    }
                    Self::list_cancel_keys(tx, &run)?;
                }
                if let Some(d) = &run.debounce {
                    // Started: later events of the key make a new run.
                    tx.execute(
                        "DELETE FROM sb_debounce WHERE key = $1 AND run_id = $2",
                        &[&d.key.as_bytes(), &run.id],
                    )?;
                }
                let turn = match &run.concurrency {
                    Some(slot) => Self::has_turn(tx, slot)?,
                    None => true,
                };
                run.lease_until(now, lease_ms, turn);
                self.put_run(tx, &run, Queue::Lease(run.due_at))?;
                if turn {
                    out.push(run);
                }
            }
            Ok((out, true))
        })
    }

    fn save_run(&self, run: &Run) -> Result<()> {
        // A checkpoint: the queue entry (due_at) is unchanged.
        let node = self.node.id();
        let leased_by = (run.status == RunStatus::Running).then_some(&*node);
        let record = encode(run)?;
        self.query(
            "UPDATE sb_runs SET status = $2, leased_by = $3, record = $4 WHERE id = $1",
            &[&run.id, &status_name(run.status), &leased_by, &record],
        )?;
        Ok(())
    }

    fn finish_run(&self, run: &Run) -> Result<()> {
        if run.concurrency.is_none() && run.listening.is_empty() {
            let node = self.node.id();
            let leased_by = (run.status == RunStatus::Running).then_some(&*node);
            self.query(
                FINISH,
                &[
                    &run.id,
                    &run.event_id,
                    &run.recipe,
                    &status_name(run.status),
                    &run.created_at,
                    &leased_by,
                    &encode(run)?,
                ],
            )?;
            return Ok(());
        }
        self.tx(|tx| {
            let mut finished = run.clone();
            Self::unlist_cancel_keys(tx, run)?;
            self.release_slot(tx, &mut finished, run.updated_at)?;
            self.put_run(tx, &finished, Queue::Off)?;
            Ok(((), true))
        })
    }

    fn reschedule(&self, run: &Run, _previous_due: i64) -> Result<()> {
        self.tx(|tx| {
            self.put_run(tx, run, Queue::At(run.due_at))?;
            Ok(((), true))
        })
    }

    fn retry_run(&self, id: &str, now: i64) -> Result<Retried> {
        self.tx(|tx| {
            let Some(row) = tx.query_opt(GET_RUN_FOR_UPDATE, &[&id])? else {
                return Ok((Retried::NotFound, false));
            };
            let mut run: Run = decode(id, row.get(0))?;
            if !run.status.is_failure() {
                return Ok((Retried::NotFailed(run.status), false));
            }
            run.requeue_for_retry(now);
            Self::list_cancel_keys(tx, &run)?;
            self.put_run(tx, &run, Queue::At(now))?;
            Ok((Retried::Queued(Box::new(run)), true))
        })
    }

    fn release_leases(&self, now: i64) -> Result<usize> {
        // Several nodes share the queue: only leases of nodes that are gone
        // are stale (this node's previous process among them).
        self.reap(now, true)
    }

    fn cancel_requested(&self, run_id: &str) -> Result<Option<String>> {
        let rows = self.query("SELECT reason FROM sb_cancel WHERE run_id = $1", &[&run_id])?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    fn queue_depth(&self) -> Result<usize> {
        Ok(self.queue_counts()?.backlog)
    }

    fn queue_counts(&self) -> Result<QueueCounts> {
        let rows = self.query(
            "SELECT count(*) FILTER (WHERE NOT parked), count(*) FILTER (WHERE parked)
             FROM sb_runs WHERE due_at IS NOT NULL",
            &[],
        )?;
        let (backlog, parked): (i64, i64) = (rows[0].get(0), rows[0].get(1));
        Ok(QueueCounts {
            backlog: backlog as usize,
            parked: parked as usize,
        })
    }

    fn stats(&self, scan: bool) -> Result<StoreStats> {
        let counts = self.counts()?;
        let state_entries: i64 = self.query("SELECT count(*) FROM sb_state", &[])?[0].get(0);
        let bytes: i64 = self.query(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c
             WHERE c.relkind = 'r' AND c.relname LIKE 'sb\\_%'
               AND c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema())",
            &[],
        )?[0]
            .get(0);
        let (scanned, problems) = if scan {
            // Counts are queries over the records themselves; what can
            // still be wrong is the queue: an unfinished run without an
            // entry, or a finished run with one.
            let mut problems = Vec::new();
            for r in self.query(
                "SELECT id, status, due_at IS NULL FROM sb_runs
                 WHERE (due_at IS NULL) = (status IN ('queued', 'running', 'retrying', 'waiting'))
                 ORDER BY id LIMIT 100",
                &[],
            )? {
                let (id, status, off): (String, String, bool) = (r.get(0), r.get(1), r.get(2));
                problems.push(if off {
                    format!("run {id} is {status} but not in the queue")
                } else {
                    format!("run {id} is {status} but still in the queue")
                });
            }
            // The counts above are already a count of the records themselves.
            (Some(counts.clone()), problems)
        } else {
            (None, Vec::new())
        };
        Ok(StoreStats {
            counts,
            state_entries: state_entries as u64,
            bytes_on_disk: bytes as u64,
            scanned,
            problems,
            keys: Vec::new(),
        })
    }

    fn expire(&self, cutoff: i64, max: usize) -> Result<super::retention::Expired> {
        let mut from = self.expire_from.lock().unwrap_or_else(|p| p.into_inner());
        let end = super::id_floor(cutoff);
        let start = from.clone();
        let (out, last) = self.tx(|tx| {
            let mut out = super::retention::Expired::default();
            // One chunk at a time across nodes: another node's running
            // chunk means this tick is done (its cursor stays).
            let ours: bool = tx
                .query_opt(
                    "SELECT pg_try_advisory_xact_lock($1)",
                    &[&self.retention_lock],
                )?
                .is_some_and(|r| r.get(0));
            if !ours {
                out.cycle_done = true;
                return Ok(((out, None), false));
            }
            let rows = tx.query(
                "SELECT id, record FROM sb_events WHERE id > $1 AND id < $2
                 ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED",
                &[&start, &end, &(max as i64)],
            )?;
            let examined = rows.len();
            let mut last = String::new();
            for row in rows {
                let id: String = row.get(0);
                last.clone_from(&id);
                let event: Event = decode(&id, row.get(1))?;
                let mut runs = Vec::new();
                let mut keep = false;
                for rid in &event.runs {
                    let Some(r) = tx.query_opt(GET_RUN_FOR_UPDATE, &[rid])? else {
                        continue;
                    };
                    let run: Run = decode(rid, r.get(0))?;
                    if run.event_id != event.id {
                        continue; // a debounced run that took a newer event
                    }
                    if !run.status.is_final() || run.status == RunStatus::Dead {
                        keep = true;
                        break;
                    }
                    runs.push(run.id);
                }
                if keep {
                    out.kept += 1;
                    continue;
                }
                for rid in &runs {
                    tx.execute("DELETE FROM sb_runs WHERE id = $1", &[rid])?;
                }
                out.runs += runs.len();
                if let Some(r) = &event.replay {
                    tx.execute(
                        "DELETE FROM sb_replay WHERE connector = $1 AND key = $2 AND event_id = $3",
                        &[&event.connector, &r.key, &event.id],
                    )?;
                }
                tx.execute("DELETE FROM sb_events WHERE id = $1", &[&id])?;
                out.events += 1;
            }
            out.cycle_done = examined < max;
            Ok(((out, Some(last)), true))
        })?;
        if let Some(last) = last {
            *from = if out.cycle_done { String::new() } else { last };
        }
        Ok(out)
    }

    fn next_due(&self) -> Result<Option<i64>> {
        // A worker that finds nothing due does not lease (engine::worker):
        // runs of nodes that are gone are made due from here too (at most
        // once a second, as in `lease`), at the epoch: at once whatever
        // the engine's clock says.
        self.reap(0, false)?;
        let rows = self.query(
            "SELECT due_at FROM sb_runs WHERE due_at IS NOT NULL ORDER BY due_at LIMIT 1",
            &[],
        )?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    fn schedule_cursor(&self, recipe: &str) -> Result<Option<i64>> {
        let rows = self.query("SELECT slot FROM sb_cursors WHERE recipe = $1", &[&recipe])?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    fn set_schedule_cursor(&self, recipe: &str, slot: i64) -> Result<()> {
        self.query(
            "INSERT INTO sb_cursors (recipe, slot) VALUES ($1, $2)
             ON CONFLICT (recipe) DO UPDATE SET slot = EXCLUDED.slot",
            &[&recipe, &slot],
        )?;
        Ok(())
    }

    fn apply_state(
        &self,
        op: &StateOp,
        now: i64,
        checkpoint: &mut dyn FnMut(&StateOutput) -> Option<Run>,
    ) -> Result<StateOutput> {
        // Lock the operation's keys (sorted: no deadlock between two
        // operations), read them, decide here, then write and commit —
        // the state change and the run's checkpoint in one transaction.
        let mut keys: Vec<&StateKey> = state_keys(op);
        keys.sort_by(|a, b| (&a.namespace, &a.key).cmp(&(&b.namespace, &b.key)));
        keys.dedup();
        let mut locks: Vec<i64> = keys
            .iter()
            .map(|k| lock_key(b"s", format!("{}\0{}", k.namespace, k.key).as_bytes()))
            .collect();
        locks.sort_unstable();
        locks.dedup();
        let raw: Vec<Vec<u8>> = keys.iter().flat_map(|k| state::raw_keys(k)).collect();
        let mut conn = blocking(|| self.pool.get().map_err(|e| StoreError::Io(describe(&e))))?;
        let r = self.apply_state_on(&mut conn, op, now, &locks, raw, checkpoint);
        // A broken connection closes its client: only ever off a runtime thread.
        blocking(move || drop(conn));
        r
    }

    fn state_entries(
        &self,
        namespace: Option<&str>,
        after: Option<&[u8]>,
        limit: usize,
        now: i64,
    ) -> Result<Vec<StateEntry>> {
        let mut out = Vec::new();
        for prefix in state::list_prefixes(namespace) {
            let end = super::sled::prefix_end(&prefix);
            let (start, inclusive) = match after {
                Some(a) if a >= prefix.as_slice() => (a.to_vec(), false),
                _ => (prefix.clone(), true),
            };
            if start >= end {
                continue;
            }
            let mut from = start;
            let mut incl = inclusive;
            loop {
                let rows = self.query(
                    "SELECT key, value FROM sb_state
                     WHERE (key > $1 OR ($2 AND key = $1)) AND key < $3
                     ORDER BY key LIMIT 500",
                    &[&from, &incl, &end],
                )?;
                let n = rows.len();
                for r in rows {
                    let (k, v): (Vec<u8>, Vec<u8>) = (r.get(0), r.get(1));
                    if let Some(e) = state::entry(&k, &v, now)? {
                        out.push(e);
                        if out.len() >= limit.max(1) {
                            return Ok(out);
                        }
                    }
                    from = k;
                }
                incl = false;
                if n < 500 {
                    break;
                }
            }
        }
        Ok(out)
    }

    fn state_get(&self, key: &StateKey, now: i64) -> Result<Vec<StateEntry>> {
        let raw = state::raw_keys(key);
        let rows = self.query(
            "SELECT key, value FROM sb_state WHERE key = ANY($1) ORDER BY key",
            &[&raw],
        )?;
        let mut out = Vec::new();
        for r in rows {
            let (k, v): (Vec<u8>, Vec<u8>) = (r.get(0), r.get(1));
            out.extend(state::entry(&k, &v, now)?);
        }
        Ok(out)
    }

    fn sweep_state(&self, now: i64, max: usize) -> Result<Swept> {
        let mut from = self.sweep_from.lock().unwrap_or_else(|p| p.into_inner());
        // Values and counters expire; rotations do not.
        let rows = self.query(
            "SELECT key, value FROM sb_state
             WHERE key > $1 AND (substring(key from 1 for 2) IN ('\\x6e2f'::bytea, '\\x762f'::bytea))
             ORDER BY key LIMIT $2",
            &[&*from, &(max as i64)],
        )?;
        let examined = rows.len();
        let mut removed = 0;
        let mut last = Vec::new();
        for r in rows {
            let (k, v): (Vec<u8>, Vec<u8>) = (r.get(0), r.get(1));
            if state::expired(&k, &v, now)? {
                // Removed only if unchanged since read: a step may have renewed it.
                let n = self.query(
                    "DELETE FROM sb_state WHERE key = $1 AND value = $2 RETURNING 1",
                    &[&k, &v],
                )?;
                removed += n.len();
            }
            last = k;
        }
        let cycle_done = examined < max;
        *from = if cycle_done { Vec::new() } else { last };
        Ok(Swept {
            removed,
            cycle_done,
        })
    }
}
