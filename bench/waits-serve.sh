#!/usr/bin/env bash
# 100,000 waiting runs in `switchboard serve` (issue 14): RSS of the real
# binary, idle and after N events whose runs all park in a 1 h wait — and,
# for comparison, after N events whose runs finish at once (same recipe
# without the wait), so what waiting itself costs is the difference.
#
#   bench/waits-serve.sh            # N=100000, both modes
#   N=20000 bench/waits-serve.sh    # quicker
#   MODES=wait bench/waits-serve.sh # one mode only
#   RESTART=1 bench/waits-serve.sh  # also restart the hub on the full store:
#                                   # RSS 5 s and 65 s after the restart
#
# Needs wrk (bench/run.sh installs it). Builds the release binary unless
# SWITCHBOARD_BIN is set. Events are bench/w1/event.json, signed, sent by
# wrk (-t1 -c32) until N runs parked (or finished); N is approximate (a few
# dozen more may arrive before wrk stops). RSS is read once the hub is idle.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-100000}
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }
[ -n "${SWITCHBOARD_BIN:-}" ] || cargo build --release --bin switchboard >&2
BIN=${SWITCHBOARD_BIN:-target/release/switchboard}
tmp=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT

cat > "$tmp/limit.lua" <<'LUA'
local f = assert(io.open(os.getenv("W1_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Signature-256"] = os.getenv("W1_SIG")
LUA

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
mib() { echo "$1/1024" | bc -l; }

start_hub() { # mode port: serve on $tmp/data, wait until it answers
    SWITCHBOARD_SECRET_W1_WEBHOOK_SECRET=s3cret SWITCHBOARD_BASE_URL_W1=http://127.0.0.1:9 \
    SWITCHBOARD_ADMIN_TOKEN=bench-admin-token RUST_LOG=info \
        "$BIN" serve --listen "127.0.0.1:$2" --data "$tmp/data" \
        --connectors bench/w1/connectors --recipes "$tmp/recipes" --allow-internal w1 \
        >> "$tmp/log-$1" 2>&1 &
    pid=$!
    for _ in $(seq 600); do curl -sf "http://127.0.0.1:$2/healthz" >/dev/null && break; sleep 0.1; done
}

run_mode() { # mode: wait | done
    local mode=$1 port=$2
    rm -rf "$tmp/data" "$tmp/recipes" && mkdir -p "$tmp/recipes"
    local wait_step=""
    [ "$mode" = wait ] && wait_step="  - wait: 1h"
    cat > "$tmp/recipes/r.yaml" <<YAML
name: r
on: { connector: w1, event: ticket.created }
steps:
$wait_step
  - id: done
    set: { ticket: "{{ event.ticket.id }}" }
YAML
    : > "$tmp/log-$mode"
    start_hub "$mode" "$port"
    sleep 2
    local idle; idle=$(rss_kib "$pid")
    local start=$SECONDS
    W1_BODY=bench/w1/event.json W1_SIG=$(cat bench/w1/event.sig) \
        wrk -t1 -c32 -d1800s -s "$tmp/limit.lua" "http://127.0.0.1:$port/hooks/w1" > "$tmp/wrk-$mode" 2>&1 &
    local wrk_pid=$!
    # Until N runs parked (the log says so) or finished (/metrics); then stop
    # the sender and let the hub settle.
    for _ in $(seq 1800); do
        local n
        if [ "$mode" = wait ]; then
            n=$(grep -c "run waiting" "$tmp/log-$mode" || true)
        else
            n=$(curl -s -H "Authorization: Bearer bench-admin-token" "http://127.0.0.1:$port/metrics" \
                | awk '/runs_finished/ && /succeeded/ {print int($NF)}' | head -1)
        fi
        [ "${n:-0}" -ge "$N" ] && break
        sleep 1
    done
    kill "$wrk_pid" 2>/dev/null || true
    wait "$wrk_pid" 2>/dev/null || true
    local sent=$((SECONDS - start))
    sleep 5
    local after; after=$(rss_kib "$pid")
    local store; store=$(du -sk "$tmp/data/store" | cut -f1)
    printf '%s: %d events in %d s; RSS idle %.1f MiB -> %.1f MiB (+%.1f MiB); store on disk %.0f MiB\n' \
        "$mode" "$N" "$sent" "$(mib "$idle")" "$(mib "$after")" "$(mib $((after - idle)))" "$(mib "$store")"
    sleep "${SETTLE:-0}"
    [ "${SETTLE:-0}" = 0 ] || printf '%s: RSS %ss later %.1f MiB (+%.1f MiB)\n' "$mode" "$SETTLE" \
        "$(mib "$(rss_kib "$pid")")" "$(mib $(($(rss_kib "$pid") - idle)))"
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
    if [ -n "${RESTART:-}" ]; then
        # What an operator sees after a restart: the same store, read back.
        start_hub "$mode" "$port"
        sleep 5
        local r5; r5=$(rss_kib "$pid")
        sleep 60
        local r65; r65=$(rss_kib "$pid")
        printf '%s: restarted on that store: RSS 5 s %.1f MiB (+%.1f), 65 s %.1f MiB (+%.1f) over the empty hub idle\n' \
            "$mode" "$(mib "$r5")" "$(mib $((r5 - idle)))" "$(mib "$r65")" "$(mib $((r65 - idle)))"
        kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
    fi
}

for mode in ${MODES:-wait done}; do
    case $mode in
    wait) run_mode wait 18931 ;;
    done) run_mode done 18932 ;;
    *) echo "unknown mode $mode (wait, done)" >&2; exit 1 ;;
    esac
done
