#!/usr/bin/env bash
# 10,000 loaded recipes (issue 15): what `switchboard check` and `serve`'s
# start-up cost in time and memory when the recipes directory holds N recipes,
# each one `matches` condition and one templated call step (the W1 recipe,
# renamed per copy).
#
#   bench/recipes.sh              # N=10000, the three variants below
#   N=1000 bench/recipes.sh       # quicker
#   VARIANTS=distinct bench/recipes.sh
#
# Variants:
#   same      N copies of bench/w1/recipes/w1.yaml: one regex, N times
#   distinct  each copy's regex differs (`(?i)(setup|confirm|wNNNNN)`)
#   contains  `contains: setup` instead of `matches` (no regex at all)
#
# For each: `check` under /usr/bin/time -v (wall, user+sys CPU, max RSS),
# then `serve` on a fresh data dir: time until it prints its listening line,
# and VmRSS / VmHWM from /proc 1 s later. CPU time (user+sys) is the figure
# that does not depend on the machine's load; `uptime` is printed with it.
# Builds the release binary unless SWITCHBOARD_BIN is set.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-10000}
VARIANTS=${VARIANTS:-same distinct contains}
[ -n "${SWITCHBOARD_BIN:-}" ] || cargo build --release --bin switchboard >&2
BIN=${SWITCHBOARD_BIN:-target/release/switchboard}
tmp=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
export SWITCHBOARD_SECRET_W1_WEBHOOK_SECRET=s3cret SWITCHBOARD_BASE_URL_W1=http://127.0.0.1:9
export SWITCHBOARD_ADMIN_TOKEN=bench-admin-token

generate() { # variant dir
    python3 - "$1" "$2" "$N" <<'PY'
import os, sys
variant, d, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
os.makedirs(d, exist_ok=True)
text = open("bench/w1/recipes/w1.yaml").read()
for i in range(n):
    t = text.replace("name: w1\n", f"name: w1-{i:05}\n")
    if variant == "distinct":
        t = t.replace('"(?i)(setup|confirm)"', f'"(?i)(setup|confirm|w{i:05})"')
    elif variant == "contains":
        t = t.replace('{ matches: "(?i)(setup|confirm)" }', '{ contains: "setup" }')
    open(os.path.join(d, f"w1-{i:05}.yaml"), "w").write(t)
PY
}

echo "N=$N recipes; $(uptime)"
printf '| variant | check wall | check CPU (user+sys) | check max RSS | serve: start to listening | serve RSS after start | serve peak RSS |\n'
printf '|---|---|---|---|---|---|---|\n'
port=$((20000 + RANDOM % 20000))
for v in $VARIANTS; do
    rm -rf "$tmp/recipes" "$tmp/data"
    generate "$v" "$tmp/recipes"
    /usr/bin/time -v "$BIN" check --data "$tmp/data" --connectors bench/w1/connectors \
        --recipes "$tmp/recipes" --allow-internal w1 > "$tmp/check.out" 2> "$tmp/check.err" \
        || { cat "$tmp/check.err" >&2; exit 1; }
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$tmp/check.err")
    cpu=$(awk -F': ' '/User time/ {u=$2} /System time/ {s=$2} END {printf "%.2f s", u+s}' "$tmp/check.err")
    maxrss=$(awk -F': ' '/Maximum resident/ {printf "%.1f MiB", $2/1024}' "$tmp/check.err")
    start=$(date +%s.%N)
    "$BIN" serve --listen "127.0.0.1:$port" --data "$tmp/data" --connectors bench/w1/connectors \
        --recipes "$tmp/recipes" --allow-internal w1 > "$tmp/serve.out" 2> "$tmp/serve.err" &
    pid=$!
    for _ in $(seq 600); do grep -q "listening" "$tmp/serve.out" 2>/dev/null && break; sleep 0.05; done
    up=$(echo "$(date +%s.%N) - $start" | bc)
    sleep 1
    rss=$(awk '/^VmRSS/ {printf "%.1f MiB", $2/1024}' "/proc/$pid/status")
    hwm=$(awk '/^VmHWM/ {printf "%.1f MiB", $2/1024}' "/proc/$pid/status")
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
    printf '| %s | %s | %s | %s | %.2f s | %s | %s |\n' "$v" "$wall" "$cpu" "$maxrss" "$up" "$rss" "$hwm"
    port=$((port + 1))
done
echo "after: $(uptime)"
