//! The PostgreSQL schema, as numbered migrations applied in order.
//!
//! `switchboard serve --store postgres://…` applies the missing ones at
//! start; `switchboard store migrate` does only that. Nodes starting at
//! once take turns (a session advisory lock), so each migration runs once.
//! Applied versions are rows of `sb_migrations`; a database with a version
//! this build does not know is refused (an older switchboard must not write
//! a newer schema). Must never: change a migration once released — add one.

use postgres::Client;

/// Advisory lock class of Switchboard (`SB`): `(CLASS, 0)` serialises
/// migrations, `(CLASS, node key)` is a node's liveness lock.
pub const CLASS: i32 = 0x5342;

/// `(version, what it does, SQL)`, in order.
pub const MIGRATIONS: &[(i32, &str, &str)] =
    &[(1, "events, runs and their queue, keys, state, nodes", V1)];

const V1: &str = r#"
-- One row per accepted delivery. The unique (connector, delivery_id) is the
-- dedupe: a second delivery of an id conflicts in the transaction that
-- would store it. NULL delivery ids are distinct (each is a new event).
CREATE TABLE sb_events (
    id          text PRIMARY KEY,
    connector   text NOT NULL,
    delivery_id bytea,
    received_at bigint NOT NULL,
    record      text NOT NULL,
    UNIQUE (connector, delivery_id)
);
-- Replay refusal of signed deliveries (store::ReplayGuard).
CREATE TABLE sb_replay (
    connector   text NOT NULL,
    key         text NOT NULL,
    event_id    text NOT NULL,
    received_at bigint NOT NULL,
    PRIMARY KEY (connector, key)
);
-- Runs; the queue is a column: due_at is NULL once a run is finished.
-- A leased run (status running) is due at its lease's end and names the
-- node that holds it.
CREATE TABLE sb_runs (
    id         text PRIMARY KEY,
    event_id   text NOT NULL,
    recipe     text NOT NULL,
    status     text NOT NULL,
    created_at bigint NOT NULL,
    due_at     bigint,
    parked     boolean NOT NULL DEFAULT false,
    leased_by  text,
    record     text NOT NULL
);
CREATE INDEX sb_runs_queue ON sb_runs (due_at) WHERE due_at IS NOT NULL;
CREATE INDEX sb_runs_status ON sb_runs (status, id);
CREATE INDEX sb_runs_recipe ON sb_runs (recipe, id);
CREATE INDEX sb_runs_recipe_status ON sb_runs (recipe, status, id);
-- Unfinished runs of a concurrency key, in arrival order.
CREATE SEQUENCE sb_slot_seq;
CREATE TABLE sb_slots (
    key    bytea NOT NULL,
    seq    bigint NOT NULL,
    run_id text NOT NULL,
    PRIMARY KEY (key, seq)
);
-- The debounced run of a key that has not started yet.
CREATE TABLE sb_debounce (
    key    bytea PRIMARY KEY,
    run_id text NOT NULL
);
-- Runs listed under a correlation key: kind 'w' (wait_for) or 'c' (cancel_on).
CREATE TABLE sb_listen (
    kind       "char" NOT NULL,
    connector  bytea NOT NULL,
    event_type bytea NOT NULL,
    key        bytea NOT NULL,
    run_id     text NOT NULL,
    tag        bytea NOT NULL,
    PRIMARY KEY (kind, connector, event_type, key, run_id)
);
-- A cancelling event arrived while the run was leased.
CREATE TABLE sb_cancel (
    run_id text PRIMARY KEY,
    reason text NOT NULL
);
-- Last schedule slot handled per recipe.
CREATE TABLE sb_cursors (
    recipe text PRIMARY KEY,
    slot   bigint NOT NULL
);
-- Recipe state under the raw keys of store::state (v/, n/, a/).
CREATE TABLE sb_state (
    key   bytea PRIMARY KEY,
    value bytea NOT NULL
);
-- Nodes: a node is alive while it holds the advisory lock (CLASS, lock_key).
CREATE TABLE sb_nodes (
    id         text PRIMARY KEY,
    lock_key   integer NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    commits    bigint NOT NULL DEFAULT 0
);
"#;

/// Apply the migrations `client`'s database lacks; returns the versions applied.
pub fn migrate(client: &mut Client) -> Result<Vec<i32>, String> {
    let e = |e: postgres::Error| super::describe(&e);
    client
        .execute("SELECT pg_advisory_lock($1, 0)", &[&CLASS])
        .map_err(e)?;
    let r = apply(client);
    let unlocked = client.execute("SELECT pg_advisory_unlock($1, 0)", &[&CLASS]);
    let applied = r?;
    unlocked.map_err(e)?;
    Ok(applied)
}

fn apply(client: &mut Client) -> Result<Vec<i32>, String> {
    let e = |e: postgres::Error| super::describe(&e);
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS sb_migrations (
                version     integer PRIMARY KEY,
                description text NOT NULL,
                applied_at  timestamptz NOT NULL DEFAULT now()
            )",
        )
        .map_err(e)?;
    let have: Vec<i32> = client
        .query("SELECT version FROM sb_migrations ORDER BY version", &[])
        .map_err(e)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if let Some(newer) = have.iter().find(|v| **v > known) {
        return Err(format!(
            "the database's schema is at version {newer}, this switchboard knows versions up to {known}: upgrade switchboard"
        ));
    }
    let mut applied = Vec::new();
    for (version, what, sql) in MIGRATIONS {
        if have.contains(version) {
            continue;
        }
        let mut tx = client.transaction().map_err(e)?;
        tx.batch_execute(sql).map_err(e)?;
        tx.execute(
            "INSERT INTO sb_migrations (version, description) VALUES ($1, $2)",
            &[version, what],
        )
        .map_err(e)?;
        tx.commit().map_err(e)?;
        applied.push(*version);
    }
    Ok(applied)
}

/// The versions applied to `client`'s database (none: no schema yet).
pub fn applied(client: &mut Client) -> Result<Vec<i32>, String> {
    let e = |e: postgres::Error| super::describe(&e);
    let exists: bool = client
        .query_one("SELECT to_regclass('sb_migrations') IS NOT NULL", &[])
        .map_err(e)?
        .get(0);
    if !exists {
        return Ok(Vec::new());
    }
    Ok(client
        .query("SELECT version FROM sb_migrations ORDER BY version", &[])
        .map_err(e)?
        .iter()
        .map(|r| r.get(0))
        .collect())
}
