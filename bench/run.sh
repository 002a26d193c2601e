#!/usr/bin/env bash
# W1 benchmark: Switchboard vs the floor (bench/floor) vs Node-RED 4.1.15, one table.
#
#   bench/run.sh              # 3 rounds; ~10 min once built
#   ROUNDS=1 bench/run.sh     # quicker
#   bench/run.sh profile      # perf profile of Switchboard under wrk c64 (bench/out/profile-*.txt)
#
# Installs what it needs on a fresh Debian machine (wrk, Node.js, node-red into
# bench/.node-red/), builds the release binary and the floor crate, then runs
# bench/bench.py, which prints the table and writes bench/out/results.{md,json}.
# See BENCHMARKS.md for the method and bench/w1/W1.md for the workload.
set -euo pipefail
cd "$(dirname "$0")/.."

NODE_RED_VERSION=4.1.15

apt_install() {
    if [ "$(id -u)" = 0 ]; then
        apt-get install -y -qq "$@" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "$@"; }
    else
        sudo apt-get install -y -qq "$@" >/dev/null 2>&1 || { sudo apt-get update -qq && sudo apt-get install -y -qq "$@"; }
    fi
}

command -v wrk >/dev/null || { echo "installing wrk" >&2; apt_install wrk; }
command -v python3 >/dev/null || { echo "installing python3" >&2; apt_install python3; }
if [ "${1:-}" = profile ]; then
    command -v perf >/dev/null || { echo "installing linux-perf" >&2; apt_install linux-perf; }
fi
case ",${SYSTEMS:-floor,switchboard,node-red}," in
*,node-red,*)
    command -v npm >/dev/null || { echo "installing Node.js" >&2; apt_install nodejs npm; }
    installed=$(node -p "require('./bench/.node-red/node_modules/node-red/package.json').version" 2>/dev/null || true)
    if [ "$installed" != "$NODE_RED_VERSION" ]; then
        echo "installing node-red@$NODE_RED_VERSION into bench/.node-red/" >&2
        mkdir -p bench/.node-red
        npm install --prefix bench/.node-red --no-audit --no-fund --loglevel=error "node-red@$NODE_RED_VERSION" >&2
    fi
    ;;
esac

echo "building switchboard (release)" >&2
cargo build --release --bin switchboard >&2
echo "building the floor, sink and driver (bench/floor)" >&2
CARGO_TARGET_DIR="$PWD/bench/floor/target" cargo build --release --manifest-path bench/floor/Cargo.toml >&2

exec python3 bench/bench.py "$@"
