#!/usr/bin/env bash
# W1 on 1, 2 and 3 Switchboard nodes on the local PostgreSQL, beside one node
# on sled, in one invocation (bench/nodes.py says what it measures).
#
#   bench/nodes.sh                    # one round of 10 s per figure
#   ROUNDS=3 DURATION=10 bench/nodes.sh
#   PG=postgres://user@host/db bench/nodes.sh
#
# Needs PostgreSQL (psql and a database the URL names); installs wrk, builds
# the release binary and the sink (bench/floor), then runs bench/nodes.py,
# which prints the table and writes bench/out/nodes.{md,json}.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v wrk >/dev/null; then
    echo "installing wrk" >&2
    if [ "$(id -u)" = 0 ]; then apt-get install -y -qq wrk || { apt-get update -qq && apt-get install -y -qq wrk; }
    else sudo apt-get install -y -qq wrk || { sudo apt-get update -qq && sudo apt-get install -y -qq wrk; }; fi
fi
command -v psql >/dev/null || { echo "psql is missing (apt-get install postgresql-client)" >&2; exit 1; }

echo "building switchboard (release)" >&2
cargo build --release --bin switchboard >&2
echo "building the sink (bench/floor)" >&2
CARGO_TARGET_DIR="$PWD/bench/floor/target" cargo build --release --manifest-path bench/floor/Cargo.toml --bin sink >&2

exec python3 bench/nodes.py "$@"
