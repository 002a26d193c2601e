//! Process metrics for Prometheus: what came in, what ran, what waited.
//!
//! One registry per process ([`get`]), as Prometheus' own client libraries
//! default to: the layers that observe something (ingress, engine,
//! connector, store) record into it without a handle passed through every
//! constructor. Values that are a state rather than a count (queue depth,
//! waiting runs, breaker positions) are read when scraped: the admin route
//! hands them to [`Metrics::encode`] in a [`Snapshot`].
//!
//! The text comes from `prometheus-client` (OpenMetrics text, which
//! Prometheus scrapes natively); nothing here formats exposition lines by
//! hand. Labels are names from the loaded catalog (connector, action,
//! recipe) and closed sets (statuses, checks), never values from a request
//! or an event, so a sender cannot grow the series count, and no label ever
//! holds a secret or a body.
//!
//! A leaf: imports no other Switchboard module.

use prometheus_client::encoding::{text, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::sync::LazyLock;
use std::time::Duration;

/// The content type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The connector label of a webhook to a connector that does not exist
/// (the path segment is the sender's, so it is never a label).
pub const UNKNOWN_CONNECTOR: &str = "_unknown";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectorLabel {
    connector: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    connector: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    connector: String,
    check: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RecipeLabel {
    recipe: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    recipe: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    connector: String,
    action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    connector: String,
    action: String,
    /// `2xx` … `5xx`, or `none` when no answer came (refused, timeout, transport).
    status_class: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Seconds: 5 ms doubling to about 41 s.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

/// Limiter waits: 1 ms doubling to about 65 s (most calls wait not at all).
fn wait_seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Store commits: 0.1 ms doubling to about 3.3 s.
fn commit_seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// Writers per commit: 1 doubling to 1024.
fn group_size() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 11))
}

/// Where a connector's circuit breaker stands, as the
/// `switchboard_circuit_breaker_state` gauge reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerPosition {
    /// 0: calls go.
    Closed,
    /// 1: no call goes until the cool-down ends.
    Open,
    /// 2: one probe call is in flight.
    HalfOpen,
}

/// What is read from the engine when `/metrics` is scraped.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Runs due or leased (not parked).
    pub queue_depth: usize,
    /// Runs parked in a wait step.
    pub waiting_runs: usize,
    /// Each connector's breaker.
    pub breakers: Vec<(String, BreakerPosition)>,
}

/// Every metric family of the process.
pub struct Metrics {
    registry: Registry,
    webhooks: Family<WebhookLabels, Counter>,
    signature_failures: Family<CheckLabels, Counter>,
    events: Family<ConnectorLabel, Counter>,
    runs: Family<RunLabels, Counter>,
    dead_letters: Family<RecipeLabel, Counter>,
    parked: Family<RecipeLabel, Counter>,
    steps: Histograms<CallLabels>,
    retries: Family<ActionLabels, Counter>,
    limit_waits: Histograms<ConnectorLabel>,
    breaker_refusals: Family<ConnectorLabel, Counter>,
    commit: Histogram,
    commit_group: Histogram,
    round_trips: Counter,
    queue_depth: Gauge,
    waiting_runs: Gauge,
    breakers: Family<ConnectorLabel, Gauge>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Metrics {
        let mut r = Registry::with_prefix("switchboard");
        let webhooks = Family::default();
        r.register(
            "webhooks_received",
            "Webhook requests answered, by connector and HTTP status of the answer",
            Family::clone(&webhooks),
        );
        let signature_failures = Family::default();
        r.register(
            "signature_failures",
            "Webhooks refused by their signature check, by connector and failed check",
            Family::clone(&signature_failures),
        );
        let events = Family::default();
        r.register(
            "events_stored",
            "Events stored durably (repeated deliveries not counted), by connector",
            Family::clone(&events),
        );
        let runs = Family::default();
        r.register(
            "runs_finished",
            "Runs that reached a final status, by recipe and status",
            Family::clone(&runs),
        );
        let dead_letters = Family::default();
        r.register(
            "dead_letters",
            "Runs that became dead (a step failed on every attempt), by recipe",
            Family::clone(&dead_letters),
        );
        let parked = Family::default();
        r.register(
            "runs_parked",
            "Runs parked by a wait step, by recipe",
            Family::clone(&parked),
        );
        let steps: Histograms<CallLabels> = Family::new_with_constructor(seconds);
        r.register_with_unit(
            "step_duration",
            "Connector calls (one per attempt) and their duration, by connector, action and HTTP status class",
            Unit::Seconds,
            Family::clone(&steps),
        );
        let retries = Family::default();
        r.register(
            "step_retries",
            "Failed call attempts that will be tried again, by connector and action",
            Family::clone(&retries),
        );
        let limit_waits: Histograms<ConnectorLabel> = Family::new_with_constructor(wait_seconds);
        r.register_with_unit(
            "limit_wait",
            "Time calls waited for the connector's rate and concurrency limits",
            Unit::Seconds,
            Family::clone(&limit_waits),
        );
        let breaker_refusals = Family::default();
        r.register(
            "circuit_breaker_refusals",
            "Calls not sent because the connector's circuit breaker was open",
            Family::clone(&breaker_refusals),
        );
        let commit = commit_seconds();
        r.register_with_unit(
            "store_commit",
            "Store flushes (group commit) and their duration",
            Unit::Seconds,
            commit.clone(),
        );
        let commit_group = group_size();
        r.register(
            "store_commit_group_size",
            "Writers made durable by one flush",
            commit_group.clone(),
        );
        let round_trips = Counter::default();
        r.register(
            "store_round_trips",
            "Statements sent to PostgreSQL, each a round trip to the database (none with the embedded store)",
            round_trips.clone(),
        );
        let queue_depth = Gauge::default();
        r.register(
            "queue_depth",
            "Runs due or in flight (parked runs not counted)",
            queue_depth.clone(),
        );
        let waiting_runs = Gauge::default();
        r.register(
            "waiting_runs",
            "Runs parked in a wait step",
            waiting_runs.clone(),
        );
        let breakers = Family::default();
        r.register(
            "circuit_breaker_state",
            "Each connector's circuit breaker: 0 closed, 1 open, 2 half-open (probing)",
            Family::clone(&breakers),
        );
        Metrics {
            registry: r,
            webhooks,
            signature_failures,
            events,
            runs,
            dead_letters,
            parked,
            steps,
            retries,
            limit_waits,
            breaker_refusals,
            commit,
            commit_group,
            round_trips,
            queue_depth,
            waiting_runs,
            breakers,
        }
    }

    /// A webhook request was answered with `status`. `connector` must be a
    /// loaded connector's name (else pass [`UNKNOWN_CONNECTOR`]).
    pub fn webhook(&self, connector: &str, status: u16) {
        self.webhooks
            .get_or_create(&WebhookLabels {
                connector: connector.to_string(),
                status,
            })
            .inc();
    }

    /// A webhook failed its signature `check` (`signature`, `timestamp`, …).
    pub fn signature_failure(&self, connector: &str, check: &str) {
        self.signature_failures
            .get_or_create(&CheckLabels {
                connector: connector.to_string(),
                check: check.to_string(),
            })
            .inc();
    }

    /// A new event was stored durably.
    pub fn event_stored(&self, connector: &str) {
        self.events
            .get_or_create(&ConnectorLabel {
                connector: connector.to_string(),
            })
            .inc();
    }

    /// A run ended with `status` (its serde name: `succeeded`, `dead`, …).
    pub fn run_finished(&self, recipe: &str, status: &str) {
        self.runs
            .get_or_create(&RunLabels {
                recipe: recipe.to_string(),
                status: status.to_string(),
            })
            .inc();
        if status == "dead" {
            self.dead_letters
                .get_or_create(&RecipeLabel {
                    recipe: recipe.to_string(),
                })
                .inc();
        }
    }

    /// A run was parked by a wait step.
    pub fn run_parked(&self, recipe: &str) {
        self.parked
            .get_or_create(&RecipeLabel {
                recipe: recipe.to_string(),
            })
            .inc();
    }

    /// One call attempt ended after `took`; `http_status` is `None` when no
    /// answer came.
    pub fn call(&self, connector: &str, action: &str, http_status: Option<u16>, took: Duration) {
        let status_class = match http_status {
            Some(s) => format!("{}xx", s / 100),
            None => "none".to_string(),
        };
        self.steps
            .get_or_create(&CallLabels {
                connector: connector.to_string(),
                action: action.to_string(),
                status_class,
            })
            .observe(took.as_secs_f64());
    }

    /// A failed attempt will be tried again.
    pub fn retry(&self, connector: &str, action: &str) {
        self.retries
            .get_or_create(&ActionLabels {
                connector: connector.to_string(),
                action: action.to_string(),
            })
            .inc();
    }

    /// A call passed its connector's limits (`took` zero) or was sent back
    /// to the queue for `took` because one was full.
    pub fn limit_wait(&self, connector: &str, took: Duration) {
        self.limit_waits
            .get_or_create(&ConnectorLabel {
                connector: connector.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// A call was not sent: the breaker is open.
    pub fn breaker_refusal(&self, connector: &str) {
        self.breaker_refusals
            .get_or_create(&ConnectorLabel {
                connector: connector.to_string(),
            })
            .inc();
    }

    /// One store flush made `writers` writes durable in `took`.
    pub fn commit(&self, writers: usize, took: Duration) {
        self.commit.observe(took.as_secs_f64());
        self.commit_group.observe(writers as f64);
    }

    /// One statement went to the database and its answer came back.
    pub fn round_trip(&self) {
        self.round_trips.inc();
    }

    /// The text exposition of every metric, with `now`'s states.
    pub fn encode(&self, now: &Snapshot) -> Result<String, std::fmt::Error> {
        self.queue_depth.set(clamp(now.queue_depth));
        self.waiting_runs.set(clamp(now.waiting_runs));
        for (connector, position) in &now.breakers {
            let value = match position {
                BreakerPosition::Closed => 0,
                BreakerPosition::Open => 1,
                BreakerPosition::HalfOpen => 2,
            };
            self.breakers
                .get_or_create(&ConnectorLabel {
                    connector: connector.clone(),
                })
                .set(value);
        }
        let mut out = String::new();
        text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

fn clamp(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_prometheus_conventions() {
        let m = Metrics::new();
        m.webhook("zendesk", 202);
        m.call(
            "hubspot",
            "get_contact",
            Some(404),
            Duration::from_millis(20),
        );
        m.call("hubspot", "get_contact", None, Duration::from_millis(20));
        m.commit(3, Duration::from_micros(300));
        m.round_trip();
        let text = m
            .encode(&Snapshot {
                queue_depth: 4,
                waiting_runs: 2,
                breakers: vec![("hubspot".into(), BreakerPosition::Open)],
            })
            .expect("encodes");
        for line in [
            "switchboard_webhooks_received_total{connector=\"zendesk\",status=\"202\"} 1",
            "# TYPE switchboard_step_duration_seconds histogram",
            "switchboard_step_duration_seconds_count{connector=\"hubspot\",action=\"get_contact\",status_class=\"4xx\"} 1",
            "switchboard_step_duration_seconds_count{connector=\"hubspot\",action=\"get_contact\",status_class=\"none\"} 1",
            "switchboard_store_commit_group_size_sum 3.0",
            "switchboard_store_round_trips_total 1",
            "switchboard_queue_depth 4",
            "switchboard_waiting_runs 2",
            "switchboard_circuit_breaker_state{connector=\"hubspot\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
