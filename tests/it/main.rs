//! Integration tests: the real `switchboard` binary over HTTP, with fake
//! far-end APIs on 127.0.0.1. Set SWITCHBOARD_TEST_LOG=info to see the hub's logs.
//!
//! - `authoring`: issue 9's recipe authoring: runtime errors that name the missing part and its place, `default` over a missing parent.
//! - `architecture`: ARCHITECTURE.md's dependency rules hold in the source's imports.
//! - `recipes`: the shipped recipes end to end against mock APIs.
//! - `ingress`: bad webhook input is refused and changes nothing; odd but valid input is stored as documented.
//! - `outbound`: failing, slow or unreachable far ends fail their step, not the hub; internal addresses.
//! - `console`: `/metrics` (token, Prometheus text parsed), the admin API's OpenAPI document, the `serve --demo` quick start.
//! - `admin`: the admin API's token and paging.
//! - `dashboard`: the dashboard's sessions, CSRF and pages over HTTP (the replay page included), and the admin API summaries it is drawn from.
//! - `browser`: the dashboard in Debian's Chromium through a small WebDriver client (`webdriver`); screenshots.
//! - `cli`: `check` errors (located: the error-message suite, one test per mistake, recipe and connector templates included; notes), `serve` refusing broken files, the runs/events commands.
//! - `durability`: kill -9, SIGTERM, retries, dead letters, limits, ordering, back-pressure.
//! - `compact`: `store compact` through the binary: everything kept and resumed, refused under a running hub, a crash at each point of the swap.
//! - `crash`: 200 aborts at random points of the write path (debug-build crash points); nothing acknowledged lost, no recorded step repeated.
//! - `recipe_tests`: `switchboard test` running the recipes' own `tests:` with mocked connectors.
//! - `schema`: `switchboard schema`: every shipped recipe and connector valid against the generated JSON Schemas; mistakes refused.
//! - `state`: recipe state and assignment steps (concurrency, kill -9), the `state` CLI and API.
//! - `reload`: SIGHUP and file-change reloads mid-traffic (no event lost, no run mixing versions), a broken edit (stale), a parked run's version gone after a restart.
//! - `replay`: `switchboard replay` and `/api/replay` over stored events (verdicts, changed inputs, would-call, paging); nothing sent or written.
//! - `reply`: a recipe's `reply:` as the webhook's answer (Slack slash command), its fallback and winner.
//! - `prism`: shipped connector actions validated by Prism serving the vendors' real specs.
//! - `flow`: set, switch, for_each and stop through the binary; kill -9 inside a loop.
//! - `faults`: a store that fails writes under the hub: 503 and nothing half-written.
//! - `hardening`: hostile senders, hostile event data and careless recipes.
//! - `fuzz`: property tests (fixed case budget) over the parsers of outside input.
//! - `oauth`: OAuth2 connectors against a test authorization server: single-flight, expiry, `connect` with PKCE, rotation across kill -9, revocation, bad token endpoints, `check`, redaction.
//! - `licences`: offline licence and duplicate-version check over `cargo metadata`.
//! - `polls`: polling triggers (Zendesk, Typeform) on virtual time and through the binary; bad poll input.
//! - `time`: calendars, time functions, schedules, durable waits, debounce, cancel_on.
//! - `support_pack`: the support recipes of recipes/support/ (after-hours reply, business-hours SLA, dispatcher, thanks, Slack `/email`) end to end; the loop warning; Zendesk actions the trimmed spec lacks.
//! - `support_connectors`: Freshdesk, Stripe, SendGrid, Wufoo, Typeform and the `app` journey source; jobs 3, 5, 6 end to end.
//! - `utils`: the hub as a child process (`Hub`), signed posts, fake far ends (`MockApi`), config directories.

mod admin;
mod architecture;
mod authoring;
mod browser;
mod cli;
mod compact;
mod console;
mod crash;
mod dashboard;
mod durability;
mod faults;
mod flow;
mod fuzz;
mod hardening;
mod ingress;
mod licences;
mod oauth;
mod outbound;
mod polls;
mod prism;
mod recipe_tests;
mod recipes;
mod reload;
mod replay;
mod reply;
mod schema;
mod state;
mod support_connectors;
mod support_pack;
mod time;
mod utils;
mod webdriver;
