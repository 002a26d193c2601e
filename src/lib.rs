//! Switchboard: a self-hosted integration hub for support operations.
//!
//! SaaS tools send signed webhooks; the hub stores each event durably, matches
//! it against YAML recipes and runs their steps through declarative
//! connectors.
//!
//! # Layout
//! - [`ingress`]: `POST /hooks/{connector}`, body limits, parsing, handing events to the engine.
//! - [`signature`]: inbound signature schemes (a leaf on `http` types), used by
//!   `connector` to compile a `signature:` block and by `ingress` to verify.
//! - [`admin`]: admin JSON API, `/healthz`, `/readyz`; [`admin::queries`], the
//!   typed admin queries shared with the CLI; [`admin::console::Console`],
//!   the API as typed calls (queries, summaries, retries).
//! - [`dashboard`]: the web dashboard at `/ui/` (sessions, HTML pages, embedded
//!   assets), built only on [`admin::console::Console`].
//! - [`engine`]: the loaded catalog and its matching index, accepting events,
//!   workers, and dry runs of recipe `tests:` with mocked calls (`switchboard test`).
//! - [`recipe`]: recipe files compiled and checked; conditions (pure).
//! - [`connector`]: connector files compiled; the outbound HTTP runtime; secrets; OAuth2 tokens.
//! - [`store`]: the `Store` trait, the sled and PostgreSQL backends, group commit, recipe
//!   state operations (`store::state`, pure, shared by every backend).
//! - [`time`]: the engine's clock, zones, durations, cron schedules, business-hours calendars.
//! - [`template`], [`jsonpath`], [`yaml`], [`secret`], [`duration`]: shared, pure building blocks.
//! - [`metrics`]: the process's Prometheus metrics (a leaf the layers record into;
//!   served by `admin` at `/metrics`).
//! - [`sandbox`]: stand-ins for the shipped connectors' vendor APIs, served on
//!   loopback by `serve --demo` (the offline quick start); knows nothing of the hub.
//! - [`error`]: the one place errors become HTTP answers.
//! - [`crash`]: crash points for the crash-safety test (debug builds only).
//! - [`listener`]: the accept loop and per-connection limits (timeouts,
//!   connection cap, bounded buffers, lingering close).
//! - [`server`]: wiring for `serve` — [`server::prepare`] checks everything
//!   before a port is bound, [`server::Prepared::serve`] runs and stops in order.
//!
//! # Invariants
//! - Dependencies point one way: `ingress`/`admin` → `engine` → `recipe`,
//!   `connector`, `store`; `recipe` → `connector` (to check references).
//! - The dashboard reads and acts only through the admin API's types, never
//!   the store or the engine.
//! - Only `ingress`, `admin`, `dashboard`, `error`, `listener` and `sandbox` use axum; only `connector`
//!   (and the CLI's admin client) use reqwest; only `store` uses sled or the PostgreSQL driver. These
//!   and the other rules of ARCHITECTURE.md are checked by
//!   `tests/it/architecture.rs`.
//! - Conditions and templates do no I/O.
//! - An event is durable in the store before its webhook is answered 2xx.
//! - A step's record is durable before the next step starts.
//! - A state change (`state:`, `assign:`) is written in one atomic batch with
//!   the run carrying that step's record: a resumed run never applies it twice.
//! - Secrets are [`secret::Secret`]s; records and logs only ever hold redacted text.

#![forbid(unsafe_code)]

pub mod admin;
pub mod connector;
pub mod crash;
pub mod dashboard;
pub mod duration;
pub mod engine;
pub mod error;
pub mod ingress;
pub mod jsonpath;
pub mod listener;
pub mod metrics;
pub mod recipe;
pub mod sandbox;
pub mod secret;
pub mod server;
pub mod signature;
pub mod store;
pub mod template;
pub mod time;
pub mod yaml;
