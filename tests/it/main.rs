//! Integration tests: the real `switchboard` binary over HTTP, with fake
//! far-end APIs on 127.0.0.1. Set SWITCHBOARD_TEST_LOG=info to see the hub's logs.
//!
//! - `recipes`: the shipped recipes end to end against mock APIs.
//! - `ingress`: bad webhook input is refused and changes nothing.
//! - `cli`: `check` errors, `serve` refusing broken files, the runs/events commands.
//! - `prism`: shipped connector actions validated by Prism serving the vendors' real specs.

mod cli;
mod faults;
mod ingress;
mod prism;
mod recipes;
mod utils;
