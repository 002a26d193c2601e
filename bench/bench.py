#!/usr/bin/env python3
"""W1 benchmark driver: Switchboard, the floor and Node-RED under the same load.

Called by bench/run.sh once everything is built and installed; standard
library only. For each round and each system it starts the system fresh
(Switchboard on an empty store), checks it does W1 right, then measures:

- saturation: wrk with bench/w1/w1.lua at 16 and 64 connections for DURATION
  seconds: answers/s, sink deliveries/s in the same window, the backlog left
  when wrk stops (answers not yet delivered) and how long it takes to drain;
- fixed rate: w1load (bench/floor) at RATE events/s: answer latency and
  end-to-end latency (sent -> sink received), p50 / p99;
- memory: VmRSS once started and idle, VmHWM (peak) after all the load.

Then, for Switchboard only, ingest with 100 matching recipes per event, and
the `matching` divan bench (recipe matching with 1 .. 10 000 recipes loaded).
Prints one Markdown table of medians over the rounds, and writes it with the
raw figures to bench/out/.

Environment: ROUNDS (3), DURATION (10), RATE (1000), DRAIN_MAX (60),
SYSTEMS (floor,switchboard,node-red), SCALING (1), MATCHING (1),
SWITCHBOARD_WORKERS (the binary reads it too; its default when unset),
SWITCHBOARD_BIN (another build to measure), BENCH_OUT (default bench/out).
`bench.py profile`: perf profile of Switchboard under wrk c64 instead
(`bench.py profile floor`: of the floor).
"""

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import profile_areas  # noqa: E402

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
W1 = os.path.join(BENCH, "w1")
OUT = os.environ.get("BENCH_OUT") or os.path.join(BENCH, "out")
FLOOR_BIN = os.path.join(BENCH, "floor", "target", "release")
SWITCHBOARD = os.environ.get("SWITCHBOARD_BIN") or os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "switchboard")
NODE_RED = os.path.join(BENCH, ".node-red", "node_modules", "node-red", "red.js")

ROUNDS = int(os.environ.get("ROUNDS", "3"))
DURATION = int(os.environ.get("DURATION", "10"))
RATE = int(os.environ.get("RATE", "1000"))
DRAIN_MAX = float(os.environ.get("DRAIN_MAX", "60"))
SYSTEMS = os.environ.get("SYSTEMS", "floor,switchboard,node-red").split(",")
SCALING = os.environ.get("SCALING", "1") == "1"
MATCHING = os.environ.get("MATCHING", "1") == "1"

SINK_PORT, FLOOR_PORT, SB_PORT, NR_PORT = 9100, 9201, 9202, 9203
SINK = f"http://127.0.0.1:{SINK_PORT}"
SECRET = "s3cret"
EVENT = os.path.join(W1, "event.json")
SIG = open(os.path.join(W1, "event.sig")).read().strip()
NOMATCH = os.path.join(W1, "event-nomatch.json")
NOMATCH_SIG = open(os.path.join(W1, "event-nomatch.sig")).read().strip()


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def http(method, url, body=None, headers=None, timeout=10):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return None, b""


def sink_count():
    status, body = http("GET", f"{SINK}/_count")
    if status != 200:
        raise RuntimeError("the sink does not answer")
    return int(body)


def rss(pid):
    """(VmRSS, VmHWM) in MiB."""
    vals = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":")
                vals[k] = int(v.split()[0]) / 1024
    return vals["VmRSS"], vals["VmHWM"]


class Proc:
    """A process we started, in its own session, stopped by its pid."""

    def __init__(self, name, argv, env=None, cwd=None):
        self.name = name
        self.logf = open(os.path.join(OUT, f"{name}.log"), "ab")
        self.p = subprocess.Popen(argv, env={**os.environ, **(env or {})}, cwd=cwd,
                                  stdout=self.logf, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        self.pid = self.p.pid

    def wait_ready(self, url, ok=lambda s: s is not None, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.p.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.p.returncode}; see bench/out/{self.name}.log")
            status, _ = http("GET", url, timeout=2)
            if ok(status):
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {timeout}s")

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(15)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.logf.close()


def port_free(port):
    import socket
    s = socket.socket()
    # As the servers do: connections of an earlier run in TIME_WAIT do not block the port.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


# ---------------------------------------------------------------- systems

def start_floor():
    p = Proc("floor", [os.path.join(FLOOR_BIN, "floor"), f"127.0.0.1:{FLOOR_PORT}", f"{SINK}/crm"],
             env={"W1_SECRET": SECRET})
    p.wait_ready(f"http://127.0.0.1:{FLOOR_PORT}/")
    return p, f"http://127.0.0.1:{FLOOR_PORT}/hooks/w1"


def start_switchboard(recipes=None, tag="switchboard"):
    data = os.path.join(OUT, f"{tag}-data")
    shutil.rmtree(data, ignore_errors=True)
    argv = [SWITCHBOARD, "serve", "--listen", f"127.0.0.1:{SB_PORT}", "--data", data,
            "--connectors", os.path.join(W1, "connectors"),
            "--recipes", recipes or os.path.join(W1, "recipes"), "--allow-internal", "w1"]
    if os.environ.get("SWITCHBOARD_WORKERS"):
        argv += ["--workers", os.environ["SWITCHBOARD_WORKERS"]]
    p = Proc(tag, argv, env={
        "SWITCHBOARD_SECRET_W1_WEBHOOK_SECRET": SECRET,
        "SWITCHBOARD_BASE_URL_W1": SINK,
        "SWITCHBOARD_ADMIN_TOKEN": "bench-admin-token",
    })
    p.data = data
    p.wait_ready(f"http://127.0.0.1:{SB_PORT}/healthz", ok=lambda s: s == 200)
    return p, f"http://127.0.0.1:{SB_PORT}/hooks/w1"


def start_node_red():
    udir = os.path.join(OUT, "node-red-userdir")
    shutil.rmtree(udir, ignore_errors=True)
    os.makedirs(udir)
    flows = open(os.path.join(W1, "node-red-w1-flows.json")).read()
    flows = flows.replace("http://127.0.0.1:9100/crm", f"{SINK}/crm")
    with open(os.path.join(udir, "flows.json"), "w") as f:
        f.write(flows)
    p = Proc("node-red", ["node", NODE_RED, "--userDir", udir, "--port", str(NR_PORT)],
             env={"W1_SECRET": SECRET})
    p.wait_ready(f"http://127.0.0.1:{NR_PORT}/", ok=lambda s: s == 200)
    # The flow is deployed a moment after the editor answers.
    deadline = time.time() + 30
    while time.time() < deadline:
        status, _ = http("POST", f"http://127.0.0.1:{NR_PORT}/w1", b"{}",
                         {"X-Signature-256": "sha256=00", "Content-Type": "application/json"})
        if status == 401:
            break
        time.sleep(0.2)
    return p, f"http://127.0.0.1:{NR_PORT}/w1"


STARTERS = {"floor": start_floor, "switchboard": start_switchboard, "node-red": start_node_red}


# ---------------------------------------------------------------- measurements

def wait_sink(target, timeout):
    """Seconds until the sink count reaches `target` (None if it did not)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if sink_count() >= target:
            return time.time() - t0
        time.sleep(0.05)
    return None


def check_w1(url):
    """W1 done right: a matching event reaches the sink, a non-matching one and a bad signature do not."""
    body, nomatch = open(EVENT, "rb").read(), open(NOMATCH, "rb").read()
    h = lambda sig: {"X-Signature-256": sig, "Content-Type": "application/json"}
    base = sink_count()
    bad, _ = http("POST", url, body, h("sha256=" + "0" * 64))
    nm, _ = http("POST", url, nomatch, h(NOMATCH_SIG))
    time.sleep(0.5)
    if sink_count() != base:
        raise RuntimeError(f"{url}: a non-matching event reached the sink")
    ok, _ = http("POST", url, body, h(SIG))
    if wait_sink(base + 1, 10) is None:
        raise RuntimeError(f"{url}: the matching event did not reach the sink")
    if bad != 401 or ok not in (200, 202) or nm not in (200, 202):
        raise RuntimeError(f"{url}: unexpected answers bad-signature={bad} nomatch={nm} match={ok}")
    return {"bad_signature": bad, "nomatch": nm, "match": ok}


def wrk(url, conns, duration=None):
    duration = duration or DURATION
    env = {**os.environ, "W1_BODY": EVENT, "W1_SIG": SIG}
    base = sink_count()
    r = subprocess.run(["wrk", "-t2", f"-c{conns}", f"-d{duration}s", "--timeout", "10s",
                        "-s", os.path.join(W1, "w1.lua"), url],
                       env=env, capture_output=True, text=True, check=True)
    end = sink_count()
    line = next(l for l in r.stdout.splitlines() if l.startswith("W1JSON "))
    w = json.loads(line[len("W1JSON "):])
    secs = w["duration_us"] / 1e6
    errors = w["err_connect"] + w["err_read"] + w["err_write"] + w["err_timeout"]
    answers = w["requests"] - w["err_status"]
    delivered = end - base
    return {
        "conns": conns, "seconds": secs, "answers": answers, "errors": errors + w["err_status"],
        "answers_per_s": answers / secs, "deliveries_per_s": delivered / secs,
        "backlog_at_end": max(0, answers - delivered),
        "lat_p50_ms": w["lat_p50_us"] / 1000, "lat_p99_ms": w["lat_p99_us"] / 1000,
        "_target": base + answers,
    }


def saturation(url, conns):
    r = wrk(url, conns)
    target = r.pop("_target")
    t = wait_sink(target, DRAIN_MAX)
    r["drain_s"] = t
    r["drained"] = t is not None
    # What the system sustains end to end: every answered event delivered,
    # over the window plus the time it took to deliver the backlog.
    delivered = sink_count() - (target - r["answers"])
    r["sustained_per_s"] = min(delivered, r["answers"]) / (r["seconds"] + (t if t is not None else DRAIN_MAX))
    return r


def fixed_rate(url):
    r = subprocess.run([os.path.join(FLOOR_BIN, "w1load"), url, EVENT, "--rate", str(RATE),
                        "--duration", str(DURATION), "--warmup", "2", "--conns", "64",
                        "--sink", SINK, "--drain", str(DRAIN_MAX)],
                       env={**os.environ, "W1_SECRET": SECRET}, capture_output=True, text=True, check=True)
    line = next(l for l in r.stdout.splitlines() if l.startswith("W1LOAD "))
    return json.loads(line[len("W1LOAD "):])


def du_mib(path):
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(d, f))
            except OSError:
                pass
    return total / 2**20


def one_system(name, check):
    proc, url = STARTERS[name]()
    try:
        res = {}
        if check:
            res["check"] = check_w1(url)
        time.sleep(2)
        res["idle_rss_mib"] = rss(proc.pid)[0]
        for c in (16, 64):
            log(f"  {name}: wrk c{c} {DURATION}s")
            res[f"c{c}"] = saturation(url, c)
        log(f"  {name}: fixed rate {RATE}/s {DURATION}s")
        res["fixed"] = fixed_rate(url)
        res["peak_rss_mib"] = rss(proc.pid)[1]
        time.sleep(2)
        res["rss_after_mib"] = rss(proc.pid)[0]
        if name == "switchboard":
            res["store_mib"] = du_mib(proc.data)
        return res
    finally:
        proc.stop()
        if hasattr(proc, "data"):
            shutil.rmtree(proc.data, ignore_errors=True)


def many_recipes(n):
    """A recipes dir with n copies of the W1 recipe: each event starts n runs."""
    d = os.path.join(OUT, f"recipes-{n}")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    text = open(os.path.join(W1, "recipes", "w1.yaml")).read()
    for i in range(n):
        with open(os.path.join(d, f"w1-{i:03}.yaml"), "w") as f:
            f.write(text.replace("name: w1\n", f"name: w1-{i:03}\n"))
    return d


def scaling(n_recipes):
    proc, url = start_switchboard(many_recipes(n_recipes), tag=f"switchboard-{n_recipes}r")
    try:
        log(f"  switchboard, {n_recipes} matching recipes: wrk c64 {DURATION}s")
        r = wrk(url, 64)
        target = r.pop("_target")
        runs = r["answers"] * n_recipes
        # Every event starts n runs: the sink is owed n deliveries per answer.
        base = target - r["answers"]
        delivered = sink_count() - base
        r["runs_per_s"] = runs / r["seconds"]
        r["backlog_at_end"] = max(0, runs - round(r["deliveries_per_s"] * r["seconds"]))
        r["delivered_after_wrk"] = delivered
        r["peak_rss_mib"] = rss(proc.pid)[1]
        return r
    finally:
        proc.stop()
        shutil.rmtree(proc.data, ignore_errors=True)


def matching_bench():
    """Run the divan bench; return {(bench, arg): median ns}."""
    r = subprocess.run(["cargo", "bench", "--bench", "matching"], cwd=ROOT,
                       capture_output=True, text=True)
    with open(os.path.join(OUT, "matching.txt"), "w") as f:
        f.write(r.stdout + r.stderr)
    if r.returncode != 0:
        log("  matching bench failed; see bench/out/matching.txt")
        return {}
    unit = {"ns": 1, "µs": 1e3, "us": 1e3, "ms": 1e6, "s": 1e9}
    res, group = {}, None
    for line in r.stdout.splitlines():
        m = re.match(r"^[├╰]─ (\w+)", line)
        if m:
            group = m.group(1)
        m = re.match(r"^[│ ]\s+[├╰]─ (\d+)\s+(.*)$", line)
        if m and group:
            cols = [c.strip() for c in m.group(2).split("│")]
            val, u = cols[2].split()  # fastest │ slowest │ median │ mean │ samples │ iters
            res[f"{group}/{m.group(1)}"] = float(val) * unit[u]
    return res


# ---------------------------------------------------------------- report

def med(rounds, *path):
    vals = []
    for r in rounds:
        v = r
        for p in path:
            v = v.get(p) if isinstance(v, dict) else None
        if isinstance(v, bool):
            v = float(v)
        if isinstance(v, (int, float)):
            vals.append(v)
    return statistics.median(vals) if vals else None


def fmt(v, nd=0):
    if v is None:
        return "–"
    return f"{v:,.{nd}f}"


def ratio(a, b):
    return "–" if not a or not b else f"{a / b:.2f}"


def report(results, scale, match, machine):
    lines = []
    names = [s for s in SYSTEMS if results.get(s)]
    lines.append(f"W1, {len(results[names[0]])} round(s) of {DURATION}s per figure, medians; "
                 f"fixed rate {RATE}/s. {machine}")
    lines.append("")
    lines.append("| figure | " + " | ".join(names) + " | SB / floor | SB / Node-RED |")
    lines.append("|---|" + "---|" * len(names) + "---|---|")
    rows = [
        ("c16 answers/s", ("c16", "answers_per_s"), 0, True),
        ("c16 sink deliveries/s (window)", ("c16", "deliveries_per_s"), 0, True),
        ("c16 sustained: answered events delivered / (window + drain)", ("c16", "sustained_per_s"), 0, True),
        ("c16 backlog at end (events)", ("c16", "backlog_at_end"), 0, False),
        ("c16 drain time (s)", ("c16", "drain_s"), 1, False),
        ("c64 answers/s", ("c64", "answers_per_s"), 0, True),
        ("c64 sink deliveries/s (window)", ("c64", "deliveries_per_s"), 0, True),
        ("c64 sustained: answered events delivered / (window + drain)", ("c64", "sustained_per_s"), 0, True),
        ("c64 backlog at end (events)", ("c64", "backlog_at_end"), 0, False),
        ("c64 drain time (s)", ("c64", "drain_s"), 1, False),
        ("c64 answer p99 (ms, wrk)", ("c64", "lat_p99_ms"), 1, False),
        (f"answer p50 @{RATE}/s (ms)", ("fixed", "ans_p50_us"), 2, False),
        (f"answer p99 @{RATE}/s (ms)", ("fixed", "ans_p99_us"), 2, False),
        (f"end-to-end p50 @{RATE}/s (ms)", ("fixed", "e2e_p50_us"), 2, False),
        (f"end-to-end p99 @{RATE}/s (ms)", ("fixed", "e2e_p99_us"), 2, False),
        (f"achieved rate (/s)", ("fixed", "rate"), 0, False),
        ("idle RSS (MiB)", ("idle_rss_mib",), 1, False),
        ("peak RSS (MiB)", ("peak_rss_mib",), 1, False),
        ("RSS idle after the load (MiB)", ("rss_after_mib",), 1, False),
    ]
    for label, path, nd, ratios in rows:
        vals = {}
        for s in names:
            v = med(results[s], *path)
            if v is not None and path[-1].endswith("_us"):
                v = v / 1000
            vals[s] = v
        cells = [fmt(vals[s], nd) for s in names]
        sb = vals.get("switchboard")
        r1 = ratio(sb, vals.get("floor")) if ratios else ""
        r2 = ratio(sb, vals.get("node-red")) if ratios else ""
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {r1} | {r2} |")
    persists = {"floor": "nothing (no store)", "switchboard": "every event + run, fsync before 2xx",
                "node-red": "nothing (keeps nothing on disk)"}
    lines.append("| keeps on disk | " + " | ".join(persists[s] for s in names) + " | | |")
    lines.append("")
    lines.append("Per round (c16 / c64 answers/s; end-to-end p99 ms):")
    for s in names:
        per = [f"{r['c16']['answers_per_s']:,.0f} / {r['c64']['answers_per_s']:,.0f}; "
               f"{r['fixed']['e2e_p99_us'] / 1000:.2f}" for r in results[s]]
        lines.append(f"- {s}: " + " | ".join(per))
    if "switchboard" in names:
        lines.append("")
        lines.append(f"Switchboard store after a round: {fmt(med(results['switchboard'], 'store_mib'), 0)} MiB.")
    if scale:
        lines.append("")
        lines.append("Ingest with N matching recipes per event (Switchboard, wrk c64):")
        lines.append("")
        lines.append("| recipes matching | answers/s | runs created/s | sink deliveries/s (window) | run backlog at end | peak RSS (MiB) |")
        lines.append("|---|---|---|---|---|---|")
        if "switchboard" in names:
            c64 = lambda k: med(results["switchboard"], "c64", k)
            lines.append(f"| 1 (main rounds) | {fmt(c64('answers_per_s'))} | {fmt(c64('answers_per_s'))} | "
                         f"{fmt(c64('deliveries_per_s'))} | {fmt(c64('backlog_at_end'))} | – |")
        for n, r in sorted(scale.items()):
            lines.append(f"| {n} | {fmt(r['answers_per_s'])} | {fmt(r['runs_per_s'])} | "
                         f"{fmt(r['deliveries_per_s'])} | {fmt(r['backlog_at_end'])} | {fmt(r['peak_rss_mib'], 1)} |")
    if match:
        lines.append("")
        lines.append("Recipe matching per event (`cargo bench --bench matching`, divan median):")
        lines.append("")
        lines.append("| bench | recipes loaded | time per event |")
        lines.append("|---|---|---|")
        for k, v in match.items():
            g, n = k.split("/")
            lines.append(f"| {g} | {int(n):,} | {v / 1000:.2f} µs |")
        base, top = match.get("one_matching_among/1"), match.get("one_matching_among/10000")
        if base and top:
            lines.append("")
            lines.append(f"10 000 recipes loaded / 1 recipe: {top / base:.2f}×")
    return "\n".join(lines)


def machine():
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with open("/proc/meminfo") as f:
        mem = f"{int(f.readline().split()[1]) / 2**20:.1f} GiB"
    load = open("/proc/loadavg").read().split()[:3]
    return (f"Machine: {os.cpu_count()} CPUs ({cpu}), {mem} RAM; "
            f"load average at start {' '.join(load)}; {time.strftime('%Y-%m-%d %H:%M %Z')}.")


def cpu_seconds(pid):
    """User + system CPU seconds of a process (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# Inclusive shares of these frames say where Switchboard's CPU time goes.
PROFILE_FRAMES = [
    ("ingress: whole handler", "switchboard::ingress::receive"),
    ("  signature check (HMAC)", "Verifier::verify"),
    ("  JSON parse of the body", "switchboard::ingress::parse_body"),
    ("  Engine::accept (match + store + wait)", "Engine::accept"),
    ("    store.insert_event", "as switchboard::store::Store>::insert_event"),
    ("      sled apply_batch", "sled::tree::Tree::apply_batch"),
    ("      JSON encode of records", "switchboard::store::sled::encode"),
    ("  condition eval (regex)", "recipe::condition::Condition::eval"),
    ("workers: execute runs", "Engine>::execute"),
    ("  lease (runs not handed off)", "as switchboard::store::Store>::lease"),
    ("  read the event (JSON decode)", "as switchboard::store::Store>::event"),
    ("  template rendering", "switchboard::template::Templates::render_value"),
    ("  HTTP call to the sink", "switchboard::connector::http::Client::call"),
    ("  finish_run", "as switchboard::store::Store>::finish_run"),
    ("group commit thread (flush)", "switchboard::store::GroupCommit::start"),
    ("sled I/O threads", "sled::threadpool::perform_work"),
    ("sled: log writes (write_to_log)", "sled::pagecache::iobuf::IoBufs::write_to_log"),
    ("logging (tracing fmt)", "tracing_subscriber::fmt::fmt_layer"),
    ("malloc/free", "malloc"),
    ("hyper HTTP/1 server", "hyper::proto::h1::dispatch::Dispatcher"),
]


def profile(system="switchboard"):
    """perf profile of Switchboard (or the floor) under wrk c64: threads, frames, syscalls, CPU use."""
    if shutil.which("perf") is None:
        sys.exit("perf is missing (apt-get install linux-perf)")
    sink = Proc("sink", [os.path.join(FLOOR_BIN, "sink"), f"127.0.0.1:{SINK_PORT}", "1"])
    sink.wait_ready(f"{SINK}/_count", ok=lambda s: s == 200)
    if system == "floor":
        proc, url = start_floor()
    else:
        proc, url = start_switchboard(tag="switchboard-profile")
    secs = max(DURATION, 12)
    out = []
    try:
        env = {**os.environ, "W1_BODY": EVENT, "W1_SIG": SIG}
        w = subprocess.Popen(["wrk", "-t2", "-c64", f"-d{secs}s", "--timeout", "10s", "-s",
                              os.path.join(W1, "w1.lua"), url], env=env,
                             stdout=subprocess.PIPE, text=True)
        time.sleep(2)
        c0 = {n: cpu_seconds(p) for n, p in ((system, proc.pid), ("sink", sink.pid), ("wrk", w.pid))}
        n0, t0 = sink_count(), time.time()
        st = subprocess.run(["perf", "stat", "-x", ",", "-e",
                             "task-clock,context-switches,syscalls:sys_enter_pwrite64,"
                             "syscalls:sys_enter_sync_file_range,syscalls:sys_enter_fsync,"
                             "syscalls:sys_enter_fdatasync,syscalls:sys_enter_write,syscalls:sys_enter_futex",
                             "-p", str(proc.pid), "--", "sleep", "4"], capture_output=True, text=True)
        dt = time.time() - t0
        c1 = {n: cpu_seconds(p) for n, p in ((system, proc.pid), ("sink", sink.pid), ("wrk", w.pid))}
        delivered = sink_count() - n0
        data = os.path.join(OUT, "perf.data")
        subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-F", "499", "--call-graph", "dwarf,16384",
                        "-p", str(proc.pid), "-o", data, "--", "sleep", "4"], capture_output=True)
        wout, _ = w.communicate()
        line = next(l for l in wout.splitlines() if l.startswith("W1JSON "))
        wj = json.loads(line[len("W1JSON "):])
        answers = wj["requests"] / (wj["duration_us"] / 1e6)
        out.append(f"wrk c64 {secs}s: {answers:,.0f} answers/s; sink {delivered / dt:,.0f} deliveries/s "
                   "while perf stat ran")
        out.append("CPU used per second of wall time: " + ", ".join(
            f"{n} {(c1[n] - c0[n]) / dt:.2f}" for n in c0) + f" (of {os.cpu_count()} CPUs)")
        out.append("")
        events = answers + delivered / dt  # store writes come from answers and deliveries
        # Per W1 event (one webhook answered and delivered): the floor
        # delivers before it answers, so its deliveries are its events; for
        # Switchboard the deliveries while perf stat ran (ingest can run ahead).
        w1 = max(delivered / dt, 1)
        out.append("perf stat (4 s, all threads); per event = per answer or delivery "
                   "(per W1 event = per delivery):")
        for l in st.stderr.splitlines():
            parts = l.split(",")
            if len(parts) > 2 and parts[0].replace(".", "").isdigit():
                v = float(parts[0])
                if parts[2] == "task-clock":
                    out.append(f"  {'CPU ms':<40} {v:>14,.0f}  ({v * 1000 / 4 / max(events, 1):.0f} µs per event, "
                               f"{v * 1000 / 4 / w1:.0f} µs per W1 event)")
                else:
                    out.append(f"  {parts[2]:<40} {v:>14,.0f}  ({v / 4 / max(events, 1):.2f} per event, "
                               f"{v / 4 / w1:.2f} per W1 event)")
    finally:
        proc.stop()
        sink.stop()
        if hasattr(proc, "data"):
            shutil.rmtree(proc.data, ignore_errors=True)
    with open(os.path.join(OUT, "profile.md"), "w") as f:
        f.write("\n".join(out) + "\n")
    if os.environ.get("PROFILE_REPORT", "1") == "1":
        profile_report()


def profile_report():
    """The perf reports of the last `profile` (in OUT), added to its profile.md.

    Slow (DWARF unwinding): `PROFILE_REPORT=0 bench.py profile` leaves it
    to a later `bench.py profile-report`, outside the bench lock.
    """
    data = os.path.join(OUT, "perf.data")
    with open(os.path.join(OUT, "profile.md")) as f:
        out = f.read().rstrip("\n").split("\n")
    rep = lambda *a: subprocess.run(["perf", "report", "-i", data, "--stdio", *a],
                                    capture_output=True, text=True).stdout
    threads = rep("--no-children", "--sort", "comm", "-g", "none")
    children = rep("--children", "--sort", "sym", "-g", "none")
    selfs = rep("--no-children", "--sort", "dso,sym", "-g", "none")
    for name, text in (("threads", threads), ("children", children), ("self", selfs)):
        with open(os.path.join(OUT, f"profile-{name}.txt"), "w") as f:
            f.write(text)
    out.append("")
    out.append("CPU samples by thread:")
    out += ["  " + l.strip() for l in threads.splitlines() if l.strip() and not l.startswith("#")][:12]
    out.append("")
    out.append("Inclusive share of CPU samples (frame found anywhere on the stack):")
    for label, needle in PROFILE_FRAMES:
        best = 0.0
        for l in children.splitlines():
            m = re.match(r"\s*([\d.]+)%\s+[\d.]+%\s+\[.\]\s+(.*)$", l)
            if m and needle in m.group(2):
                best = max(best, float(m.group(1)))
        out.append(f"  {label:<42} {best:5.1f}%")
    out.append("")
    out.append("Top self time (dso, symbol):")
    out += ["  " + l.strip() for l in selfs.splitlines() if l.strip() and not l.startswith("#")][:25]
    # Every sample counted once, by the area its stack is in (bench/profile_areas.py).
    stacks = subprocess.run(["perf", "script", "-i", data, "-F", "comm,tid,ip,sym"],
                            capture_output=True, text=True).stdout
    out.append("")
    out += profile_areas.tables(profile_areas.samples(stacks.splitlines()))
    text = "\n".join(out)
    with open(os.path.join(OUT, "profile.md"), "w") as f:
        f.write(text + "\n")
    print(text)


def main():
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):  # logs of the last invocation (stores are removed as they stop)
        if f.endswith(".log"):
            os.remove(os.path.join(OUT, f))
    if sys.argv[1:2] == ["profile"]:
        return profile(*sys.argv[2:3])
    if sys.argv[1:] == ["profile-report"]:
        return profile_report()
    for port in (SINK_PORT, FLOOR_PORT, SB_PORT, NR_PORT):
        if not port_free(port):
            sys.exit(f"port {port} is in use: is another benchmark running?")
    info = machine()
    log(info)
    sink = Proc("sink", [os.path.join(FLOOR_BIN, "sink"), f"127.0.0.1:{SINK_PORT}", "1"])
    results = {s: [] for s in SYSTEMS}
    scale, match = {}, {}
    try:
        sink.wait_ready(f"{SINK}/_count", ok=lambda s: s == 200)
        for rnd in range(ROUNDS):
            for name in SYSTEMS:
                log(f"round {rnd + 1}/{ROUNDS}: {name}")
                results[name].append(one_system(name, check=True))
                with open(os.path.join(OUT, "results.json"), "w") as f:
                    json.dump({"machine": info, "results": results}, f, indent=1)
        if SCALING and "switchboard" in SYSTEMS:
            scale[100] = scaling(100)
        results["sink_peak_rss_mib"] = rss(sink.pid)[1]
    finally:
        sink.stop()
    if MATCHING:
        log("matching bench (cargo bench --bench matching)")
        match = matching_bench()
    sink_rss = results.pop("sink_peak_rss_mib", None)
    table = report(results, scale, match, info)
    table += f"\n\nSink peak RSS {fmt(sink_rss, 1)} MiB. Load average at end: {' '.join(open('/proc/loadavg').read().split()[:3])}."
    with open(os.path.join(OUT, "results.json"), "w") as f:
        json.dump({"machine": info, "results": results, "scaling": scale, "matching": match}, f, indent=1)
    with open(os.path.join(OUT, "results.md"), "w") as f:
        f.write(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
