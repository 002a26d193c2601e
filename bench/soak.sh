#!/usr/bin/env bash
# Soak (issue 15): W1 at a fixed rate for a long while with a short
# retention window; do RSS and disk level off once the window is full?
#
#   bench/soak.sh                          # 20 min at 1,000/s, --retention 5m
#   MINUTES=3 RETENTION=1m bench/soak.sh   # a quick look
#
# Runs the release binary on the W1 connector and recipe (bench/w1), the
# sink and the open-loop driver `w1load --interval` (bench/floor), all on
# loopback. Every SAMPLE seconds it appends to samples.csv: VmRSS / VmHWM of
# the hub, its CPU seconds, `du` of the data dir, the store's counts
# (GET /api/store/stats) and the sink's delivery count. The driver writes
# one line per answer and per delivery (records.txt); the hub's JSON log
# has one `retention pass` line per pass. At the end it prints a table per
# REPORT seconds and the end-to-end p99 of events sent during a retention
# pass against the others (summary.md).
#
# Output: $BENCH_OUT/soak/ (default bench/out/soak/): samples.csv,
# ticks.jsonl (the driver's per-interval lines), records.txt, serve.log,
# summary.md. Environment: MINUTES (20), RATE (1000), RETENTION (5m),
# SAMPLE (10), REPORT (120), AFTER (seconds the hub keeps running, and is
# sampled, after the driver's drain; default SAMPLE), SWITCHBOARD_BIN (skip
# the build).
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${MINUTES:-20}
RATE=${RATE:-1000}
RETENTION=${RETENTION:-5m}
SAMPLE=${SAMPLE:-10}
REPORT=${REPORT:-120}
OUT=${BENCH_OUT:-bench/out}/soak
[ -n "${SWITCHBOARD_BIN:-}" ] || cargo build --release --bin switchboard >&2
BIN=${SWITCHBOARD_BIN:-target/release/switchboard}
CARGO_TARGET_DIR=$PWD/bench/floor/target cargo build --release \
    --manifest-path bench/floor/Cargo.toml --bin sink --bin w1load >&2
FLOOR=bench/floor/target/release
rm -rf "$OUT"; mkdir -p "$OUT"
data=$OUT/data
sink_port=$((20000 + RANDOM % 20000)); hub_port=$((sink_port + 1))
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

"$FLOOR/sink" "127.0.0.1:$sink_port" > "$OUT/sink.log" 2>&1 &
pids+=($!)
export SWITCHBOARD_SECRET_W1_WEBHOOK_SECRET=s3cret
export SWITCHBOARD_BASE_URL_W1=http://127.0.0.1:$sink_port
export SWITCHBOARD_ADMIN_TOKEN=bench-admin-token
"$BIN" --log-format json serve --listen "127.0.0.1:$hub_port" --data "$data" \
    --connectors bench/w1/connectors --recipes bench/w1/recipes --allow-internal w1 \
    --retention "$RETENTION" > "$OUT/serve.out" 2> "$OUT/serve.log" &
hub=$!
pids+=($hub)
for _ in $(seq 600); do
    curl -fs "http://127.0.0.1:$hub_port/healthz" >/dev/null 2>&1 && break
    sleep 0.05
done
curl -fs "http://127.0.0.1:$sink_port/_count" >/dev/null

echo "soak: $MINUTES min at $RATE/s, --retention $RETENTION; $(uptime)" | tee "$OUT/load.txt"
tck=$(getconf CLK_TCK)
sample() { # t_s
    local rss hwm cpu du stats sink
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$hub/status")
    hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$hub/status")
    cpu=$(awk -v t="$tck" '{printf "%.2f", ($14 + $15) / t}' "/proc/$hub/stat")
    du=$(du -sk "$data" | cut -f1)
    stats=$(curl -fs -H "Authorization: Bearer $SWITCHBOARD_ADMIN_TOKEN" \
        "http://127.0.0.1:$hub_port/api/store/stats" || echo '{}')
    sink=$(curl -fs "http://127.0.0.1:$sink_port/_count" || echo 0)
    python3 -c 'import json,sys; s=json.loads(sys.argv[1] or "{}"); c=s.get("counts",{});
r=c.get("runs",{}); print(c.get("events",""), sum(v for v in r.values() if isinstance(v,int)) if isinstance(r,dict) else r, s.get("bytes_on_disk",""), sep=",")' "$stats" \
        | sed "s/^/$1,$rss,$hwm,$cpu,$du,$sink,/"
}
echo "t_s,rss_kib,hwm_kib,cpu_s,du_kib,sink_count,events,runs,store_bytes" > "$OUT/samples.csv"
(
    t0=$(date +%s)
    while kill -0 "$hub" 2>/dev/null; do
        sample $(($(date +%s) - t0)) >> "$OUT/samples.csv" || true
        sleep "$SAMPLE"
    done
) &
pids+=($!)
"$FLOOR/w1load" "http://127.0.0.1:$hub_port/hooks/w1" bench/w1/event.json \
    --rate "$RATE" --duration $((MINUTES * 60)) --warmup 0 --conns 64 \
    --sink "http://127.0.0.1:$sink_port" --drain 60 --interval "$SAMPLE" \
    --records "$OUT/records.txt" | tee "$OUT/driver.out" | grep -v '^W1LOAD_TICK' || true
grep '^W1LOAD_TICK' "$OUT/driver.out" | sed 's/^W1LOAD_TICK //' > "$OUT/ticks.jsonl"
sleep "${AFTER:-$SAMPLE}"   # the hub idle after the load: more samples
echo "after: $(uptime)" | tee -a "$OUT/load.txt"
kill "$hub"; wait "$hub" 2>/dev/null || true

python3 - "$OUT" "$REPORT" <<'PY' | tee "$OUT/summary.md"
import csv, json, os, sys
from datetime import datetime
out, report = sys.argv[1], int(sys.argv[2])
samples = list(csv.DictReader(open(os.path.join(out, "samples.csv"))))
def pct(xs, p):
    if not xs: return 0
    xs = sorted(xs); return xs[max(1, min(len(xs), -(-len(xs) * p // 100))) - 1]
# The driver's records: answers (a) and deliveries (e), unix ns.
ans, e2e = [], []
for line in open(os.path.join(out, "records.txt")):
    k, t, us, *rest = line.split()
    if k == "e": e2e.append((int(t) - int(us) * 1000, int(us)))   # (sent ns, µs)
    elif rest[0] == "1": ans.append((int(t) - int(us) * 1000, int(us)))
t0 = min(t for t, _ in ans + e2e)
# Retention passes from the hub's JSON log: (start ns, end ns, events, ms).
passes = []
for line in open(os.path.join(out, "serve.log")):
    if "retention pass" not in line: continue
    j = json.loads(line)
    end = datetime.fromisoformat(j["timestamp"].replace("Z", "+00:00")).timestamp() * 1e9
    passes.append((end - j["ms"] * 1e6, end, j["events"], j["ms"]))
print(f"| minutes | RSS (MiB, max) | data dir (MiB, max) | events stored | deliveries/s | e2e p50 / p99 (ms) | answer p99 (ms) | retention passes (events deleted) |")
print("|---|---|---|---|---|---|---|---|")
end = max(float(s["t_s"]) for s in samples)
w = 0
while w * report < end:
    lo, hi = w * report, (w + 1) * report
    ss = [s for s in samples if lo < float(s["t_s"]) <= hi]
    if not ss: break
    rss = max(int(s["rss_kib"]) for s in ss) / 1024
    du = max(int(s["du_kib"]) for s in ss) / 1024
    ev = ss[-1]["events"]
    prev = [s for s in samples if float(s["t_s"]) <= lo]
    c0 = int(prev[-1]["sink_count"]) if prev else 0
    t0s = float(prev[-1]["t_s"]) if prev else 0.0
    rate = (int(ss[-1]["sink_count"]) - c0) / max(1e-9, float(ss[-1]["t_s"]) - t0s)
    win = lambda xs: [us for t, us in xs if lo * 1e9 <= t - t0 < hi * 1e9]
    e = win(e2e); a = win(ans)
    ps = [p for p in passes if lo * 1e9 <= p[1] - t0 < hi * 1e9]
    print(f"| {lo/60:g}–{hi/60:g} | {rss:.1f} | {du:.1f} | {ev} | {rate:.0f} | "
          f"{pct(e,50)/1000:.2f} / {pct(e,99)/1000:.2f} | {pct(a,99)/1000:.2f} | "
          f"{len(ps)} ({sum(p[2] for p in ps)}) |")
    w += 1
# End-to-end latency of events sent while a pass ran (pass start .. end)
# against all the others.
inside, outside = [], []
spans = sorted((s, e) for s, e, _, _ in passes)
import bisect
starts = [s for s, _ in spans]
for t, us in e2e:
    i = bisect.bisect_right(starts, t) - 1
    (inside if i >= 0 and t <= spans[i][1] else outside).append(us)
print()
print(f"retention passes: {len(passes)}, events deleted {sum(p[2] for p in passes)}, "
      f"pass duration p50 {pct([p[3] for p in passes],50)} ms, max {max([p[3] for p in passes], default=0)} ms")
print(f"e2e of events sent during a pass: n={len(inside)} p50 {pct(inside,50)/1000:.2f} ms p99 {pct(inside,99)/1000:.2f} ms; "
      f"outside: n={len(outside)} p50 {pct(outside,50)/1000:.2f} ms p99 {pct(outside,99)/1000:.2f} ms")
print(f"deliveries recorded {len(e2e)}, answers ok {len(ans)}")
PY
grep '^W1LOAD ' "$OUT/driver.out" || true
