//! Connections for a synchronous trait: a small pool of blocking clients,
//! each with its own statement cache, and the bridge that lets a `Store`
//! call made on a tokio worker block without stalling the runtime.
//!
//! Why blocking clients (the `postgres` crate, tokio-postgres underneath):
//! the [`Store`](crate::store::Store) trait is synchronous — the group-commit
//! thread, retention's `spawn_blocking` and the async handlers all call it
//! the same way, as they call sled. A blocking client per call keeps the
//! backend a drop-in for sled with no second runtime to own; the bridge
//! ([`blocking`]) hands the tokio worker's other tasks to another thread
//! while a call waits on the database (`block_in_place`).
//! Must never: hold a connection across an `.await` (there is none here),
//! or return a connection in an unknown transaction state to the pool.

use postgres::{Client, Config, NoTls, Statement};
use std::collections::HashMap;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Run `f`, which blocks on the database, from any context: on a
/// multi-thread runtime's worker through `block_in_place` (the runtime moves
/// its other tasks away meanwhile), on a current-thread runtime in a scoped
/// thread (the blocking client cannot run inside a runtime), elsewhere
/// directly.
pub fn blocking<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        Ok(_) => std::thread::scope(|s| match s.spawn(f).join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }),
        Err(_) => f(),
    }
}

/// One connection and the statements prepared on it (a statement costs a
/// round trip to prepare; every query of the store is one of a few dozen
/// constant strings, so each is prepared once per connection).
pub struct Conn {
    pub client: Client,
    stmts: HashMap<&'static str, Statement>,
    /// An error said the connection is gone: not back into the pool. (The
    /// blocking client's `is_closed` stays false after its socket died.)
    pub broken: bool,
}

/// Count one statement sent to the database (`switchboard_store_round_trips_total`).
pub fn trip() {
    crate::metrics::get().round_trip();
}

/// Does this error mean the connection cannot be used again? I/O errors,
/// and the server's "connection exception" (08) and "operator
/// intervention" (57: shutdown, terminated) classes.
pub fn breaks(e: &postgres::Error) -> bool {
    match e.code() {
        None => true,
        Some(c) => c.code().starts_with("08") || c.code().starts_with("57"),
    }
}

impl Conn {
    /// Note `e`: a connection it broke is closed instead of reused.
    pub fn saw(&mut self, e: &postgres::Error) {
        if breaks(e) {
            self.broken = true;
        }
    }

    /// Begin a transaction; its queries share this connection's cache.
    pub fn begin(&mut self) -> Result<Tx<'_>, postgres::Error> {
        trip();
        Ok(Tx {
            tx: self.client.transaction()?,
            stmts: &mut self.stmts,
            wake: None,
        })
    }

    pub fn stmt(&mut self, sql: &'static str) -> Result<Statement, postgres::Error> {
        prepared(&mut self.client, &mut self.stmts, sql)
    }
}

fn prepared<C: postgres::GenericClient>(
    client: &mut C,
    stmts: &mut HashMap<&'static str, Statement>,
    sql: &'static str,
) -> Result<Statement, postgres::Error> {
    if let Some(s) = stmts.get(sql) {
        return Ok(s.clone());
    }
    trip();
    let s = client.prepare(sql)?;
    stmts.insert(sql, s.clone());
    Ok(s)
}

/// A transaction with the connection's statement cache. Dropped without
/// `commit`, it rolls back.
pub struct Tx<'a> {
    pub tx: postgres::Transaction<'a>,
    stmts: &'a mut HashMap<&'static str, Statement>,
    /// The earliest due time of a run this transaction queued for any
    /// worker: the other nodes are notified of it on commit.
    pub wake: Option<i64>,
}

type Params<'p> = &'p [&'p (dyn postgres::types::ToSql + Sync)];

impl Tx<'_> {
    /// This transaction queues a run due at `due` that any node may take.
    pub fn wake_at(&mut self, due: i64) {
        self.wake = Some(self.wake.map_or(due, |w| w.min(due)));
    }

    pub fn query(
        &mut self,
        sql: &'static str,
        params: Params<'_>,
    ) -> Result<Vec<postgres::Row>, postgres::Error> {
        let st = prepared(&mut self.tx, self.stmts, sql)?;
        trip();
        self.tx.query(&st, params)
    }

    pub fn query_opt(
        &mut self,
        sql: &'static str,
        params: Params<'_>,
    ) -> Result<Option<postgres::Row>, postgres::Error> {
        let st = prepared(&mut self.tx, self.stmts, sql)?;
        trip();
        self.tx.query_opt(&st, params)
    }

    pub fn execute(
        &mut self,
        sql: &'static str,
        params: Params<'_>,
    ) -> Result<u64, postgres::Error> {
        let st = prepared(&mut self.tx, self.stmts, sql)?;
        trip();
        self.tx.execute(&st, params)
    }

    pub fn commit(self) -> Result<(), postgres::Error> {
        trip();
        self.tx.commit()
    }
}

/// At most `max` connections, opened when needed, closed when broken.
pub struct Pool {
    config: Config,
    max: usize,
    state: Mutex<PoolState>,
    freed: Condvar,
}

struct PoolState {
    idle: Vec<Conn>,
    /// Idle plus lent out.
    open: usize,
}

/// Set on every connection: commits return without waiting for the WAL
/// flush; [`Store::flush`](crate::store::Store::flush) makes them durable in
/// one synchronous commit (group commit, see the module docs of `postgres`).
const SESSION: &str = "SET synchronous_commit TO off; SET application_name TO 'switchboard'";

impl Pool {
    pub fn new(mut config: Config, max: usize) -> Pool {
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        // A dead peer (a cut network) is noticed instead of waited on forever.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(10));
        Pool {
            config,
            max: max.max(1),
            state: Mutex::new(PoolState {
                idle: Vec::new(),
                open: 0,
            }),
            freed: Condvar::new(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Open one connection outside the pool (the node's liveness lock, migrations).
    pub fn connect(&self) -> Result<Client, postgres::Error> {
        let mut c = self.config.connect(NoTls)?;
        c.batch_execute(SESSION)?;
        Ok(c)
    }

    /// A connection, waiting while `max` are lent out. Blocks: call inside [`blocking`].
    pub fn get(&self) -> Result<Pooled<'_>, postgres::Error> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(conn) = st.idle.pop() {
                if conn.client.is_closed() {
                    st.open -= 1;
                    continue;
                }
                return Ok(Pooled {
                    pool: self,
                    conn: Some(conn),
                });
            }
            if st.open < self.max {
                st.open += 1;
                drop(st);
                return match self.connect() {
                    Ok(client) => Ok(Pooled {
                        pool: self,
                        conn: Some(Conn {
                            client,
                            stmts: HashMap::new(),
                            broken: false,
                        }),
                    }),
                    Err(e) => {
                        self.state.lock().unwrap_or_else(|p| p.into_inner()).open -= 1;
                        self.freed.notify_one();
                        Err(e)
                    }
                };
            }
            st = self.freed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// A lent connection; back to the pool when dropped, unless it broke.
pub struct Pooled<'a> {
    pool: &'a Pool,
    conn: Option<Conn>,
}

impl std::ops::Deref for Pooled<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn.as_ref().expect("a lent connection")
    }
}

impl std::ops::DerefMut for Pooled<'_> {
    fn deref_mut(&mut self) -> &mut Conn {
        self.conn.as_mut().expect("a lent connection")
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        let mut st = self.pool.state.lock().unwrap_or_else(|p| p.into_inner());
        if conn.broken || conn.client.is_closed() {
            st.open -= 1;
        } else {
            st.idle.push(conn);
        }
        drop(st);
        self.pool.freed.notify_one();
    }
}

impl Pool {
    /// Close the idle connections (call inside [`blocking`]).
    pub fn close(&self) {
        let idle = std::mem::take(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()).idle);
        drop(idle);
    }
}
