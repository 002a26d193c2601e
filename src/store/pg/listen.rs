//! Wake-ups between nodes: a transaction that queues a run any node may
//! take (a new run not handed to a local worker, a woken wait, a retry, a
//! freed concurrency turn, a reaped lease) sends `NOTIFY` on the schema's
//! channel with its earliest due time, and every node `LISTEN`s on a
//! connection of its own and passes the time to its engine, whose idle
//! workers then look at the queue (`Engine::queued_at`). So an idle node
//! takes work another node queued at once, instead of at its next timer.
//!
//! PostgreSQL delivers a notification only when its transaction commits,
//! and after the commit is visible: a woken worker's read finds the run.
//! A node ignores its own notifications (its engine woke its workers
//! already). While the listening connection is down (the database
//! restarted, the network cut) nothing is delivered; it reconnects every
//! second, and after each (re)connect it says "look at the queue" once,
//! since something may have been queued meanwhile. A lost wake-up costs
//! latency only: idle workers still look at least every `MAX_IDLE`.
//! Must never: hold a pooled connection (LISTEN lives as long as the
//! session), or block the store's callers.

use super::pool::Pool;
use postgres::fallible_iterator::FallibleIterator;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

/// `NOTIFY` with a computed channel name.
pub const NOTIFY: &str = "SELECT pg_notify($1, $2)";

/// How long the listener waits for a notification before checking whether
/// it should stop; and how often it checks its connection while quiet.
const POLL: Duration = Duration::from_secs(1);
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// The channel of the tables in `schema`: nodes on other schemas of the
/// same database (tests, other hubs) do not wake each other.
pub fn channel(schema: &str) -> String {
    let mut c = format!("sb_queue {schema}");
    // NAMEDATALEN: PostgreSQL refuses longer channel names.
    while c.len() > 63 {
        c.pop();
    }
    c
}

/// A notification's payload: the sending node and the earliest due time.
pub fn payload(node: &str, due: i64) -> String {
    format!("{node} {due}")
}

type Subscribers = Arc<Mutex<Vec<UnboundedSender<i64>>>>;

/// The node's listener thread (started by the first subscriber) and who
/// hears from it.
pub struct Listener {
    pub channel: String,
    subscribers: Subscribers,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Listener {
    pub fn new(channel: String) -> Listener {
        Listener {
            channel,
            subscribers: Arc::default(),
            stop: Arc::new(AtomicBool::new(false)),
            thread: Mutex::new(None),
        }
    }

    /// Due times of runs queued by other nodes; `i64::MIN` means "look at
    /// the queue" (the listener (re)connected). Starts the thread once.
    pub fn subscribe(
        &self,
        config: &postgres::Config,
        node: Arc<Mutex<Arc<str>>>,
    ) -> std::io::Result<UnboundedReceiver<i64>> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tx);
        let mut thread = self.thread.lock().unwrap_or_else(|p| p.into_inner());
        if thread.is_none() {
            let (subs, stop) = (self.subscribers.clone(), self.stop.clone());
            let (config, channel) = (config.clone(), self.channel.clone());
            *thread = Some(
                std::thread::Builder::new()
                    .name("pg-listen".into())
                    .spawn(move || listen(&config, &channel, &node, &subs, &stop))?,
            );
        }
        Ok(rx)
    }

    /// Stop the thread (within [`POLL`]).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

fn deliver(subs: &Subscribers, due: i64) {
    subs.lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|s| s.send(due).is_ok());
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn listen(
    config: &postgres::Config,
    channel: &str,
    node: &Mutex<Arc<str>>,
    subs: &Subscribers,
    stop: &AtomicBool,
) {
    let pool = Pool::new(config.clone(), 1);
    let mut warned = false;
    while !stop.load(Ordering::SeqCst) {
        let connected = pool.connect().and_then(|mut c| {
            c.batch_execute(&format!("LISTEN {}", quote_ident(channel)))?;
            Ok(c)
        });
        let mut client = match connected {
            Ok(c) => c,
            Err(e) => {
                if !warned {
                    tracing::warn!(error = %super::describe(&e), "cannot listen for runs queued by other nodes; retrying every second");
                    warned = true;
                }
                std::thread::sleep(POLL);
                continue;
            }
        };
        if warned {
            tracing::info!("listening for runs queued by other nodes again");
            warned = false;
        }
        // Anything queued while nobody listened: look at the queue.
        deliver(subs, i64::MIN);
        let mut checked = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            let next = client.notifications().timeout_iter(POLL).next();
            match next {
                Ok(Some(n)) => {
                    let mut parts = n.payload().split(' ');
                    let (from, due) = (parts.next(), parts.next().and_then(|d| d.parse().ok()));
                    let own = node.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    if from != Some(&*own) {
                        deliver(subs, due.unwrap_or(i64::MIN));
                    }
                }
                Ok(None) => {
                    if client.is_closed() {
                        break;
                    }
                    if checked.elapsed() >= CHECK_EVERY {
                        if client.is_valid(CHECK_EVERY).is_err() {
                            break;
                        }
                        checked = Instant::now();
                    }
                }
                Err(_) => break,
            }
        }
        if !stop.load(Ordering::SeqCst) {
            tracing::warn!("the connection listening for queued runs broke; reconnecting");
            warned = true;
        }
    }
}
