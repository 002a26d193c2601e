#!/usr/bin/env python3
"""W1 on several nodes: Switchboard on sled (one node) and on the local
PostgreSQL with 1, 2 and 3 nodes, in one invocation (the machine is shared:
compare within one run).

Uses bench.py's machinery: the sink from bench/floor, wrk with bench/w1/w1.lua.
For each configuration it starts the nodes fresh (PostgreSQL: a schema of
its own, dropped after), then for c16 and c64 runs one wrk per node at the
same time, the connections split evenly (a load balancer's round robin), and
waits for the sink to receive every answered event. Per configuration:

- answers/s (all nodes, and per node), sink deliveries/s in the window and
  sustained (answered events delivered / (window + drain));
- from each node's /metrics, before the load and after the drain: database
  round trips per event (`switchboard_store_round_trips_total` / events
  stored), mean flush (group commit) latency and group size;
- CPU seconds per event of the Switchboard processes and of every
  `postgres` process on the machine (other users' work included: see the
  load average printed at start and end).

Environment: DURATION (10), ROUNDS (1), CONFIGS (sled-1,pg-1,pg-2,pg-3),
PG (postgres://postgres@127.0.0.1:5432/test), DRAIN_MAX (60),
SWITCHBOARD_BIN, SWITCHBOARD_STORE_POOL (the nodes read it). A config may
name another binary after a colon, to compare two builds in one run:
CONFIGS=sled-1:/tmp/before,pg-1:/tmp/before,sled-1,pg-1 (one node on each
store, before and after). Run through bench/nodes.sh (builds and installs first).
Writes bench/out/nodes.{md,json}.
"""

import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B  # noqa: E402

DURATION = int(os.environ.get("DURATION", "10"))
ROUNDS = int(os.environ.get("ROUNDS", "1"))
CONFIGS = os.environ.get("CONFIGS", "sled-1,pg-1,pg-2,pg-3").split(",")
PG = os.environ.get("PG", "postgres://postgres@127.0.0.1:5432/test")
DRAIN_MAX = float(os.environ.get("DRAIN_MAX", "60"))
TOKEN = "bench-admin-token"
BASE_PORT = 9300


def psql(sql):
    subprocess.run(["psql", "-q", "-X", "-v", "ON_ERROR_STOP=1", PG, "-c", sql],
                   check=True, capture_output=True, text=True)


def metrics(port):
    """Counters and histogram sums of one node's /metrics."""
    status, body = B.http("GET", f"http://127.0.0.1:{port}/metrics",
                          headers={"Authorization": f"Bearer {TOKEN}"})
    if status != 200:
        raise RuntimeError(f"node on {port}: /metrics answered {status}")
    out = {}
    for line in body.decode().splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, value = line.rsplit(" ", 1)
        base = name.split("{", 1)[0]
        out[base] = out.get(base, 0.0) + float(value)
    return out


def pg_cpu():
    """CPU seconds of every postgres process on the machine."""
    total = 0.0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() != "postgres":
                    continue
            total += B.cpu_seconds(int(pid))
        except OSError:
            pass
    return total


def start_nodes(config):
    config, _, binary = config.partition(":")
    store, n = config.split("-")
    n = int(n)
    schema = None
    if store == "pg":
        schema = f"sbbench_{os.getpid()}_{n}_{abs(hash(binary)) % 10000}"
        psql(f"DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}")
    nodes = []
    for i in range(n):
        port = BASE_PORT + i
        data = os.path.join(B.OUT, f"nodes-{config}-{i}")
        shutil.rmtree(data, ignore_errors=True)
        argv = [binary or B.SWITCHBOARD, "serve", "--listen", f"127.0.0.1:{port}", "--data", data,
                "--connectors", os.path.join(B.W1, "connectors"),
                "--recipes", os.path.join(B.W1, "recipes"), "--allow-internal", "w1"]
        if schema:
            argv += ["--store", f"{PG}?options=-csearch_path%3D{schema}"]
        p = B.Proc(f"nodes-{config}-{i}", argv, env={
            "SWITCHBOARD_SECRET_W1_WEBHOOK_SECRET": B.SECRET,
            "SWITCHBOARD_BASE_URL_W1": B.SINK,
            "SWITCHBOARD_ADMIN_TOKEN": TOKEN,
        })
        p.data, p.port = data, port
        p.wait_ready(f"http://127.0.0.1:{port}/healthz", ok=lambda s: s == 200)
        nodes.append(p)
    return nodes, schema


def stop_nodes(nodes, schema):
    for p in nodes:
        p.stop()
        shutil.rmtree(p.data, ignore_errors=True)
    if schema:
        psql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def spread_wrk(nodes, conns):
    """One wrk per node at once, `conns` split evenly; sums and per node."""
    env = {**os.environ, "W1_BODY": B.EVENT, "W1_SIG": B.SIG}
    per = max(1, conns // len(nodes))
    base = B.sink_count()
    procs = [subprocess.Popen(["wrk", "-t1", f"-c{per}", f"-d{DURATION}s", "--timeout", "10s",
                               "-s", os.path.join(B.W1, "w1.lua"),
                               f"http://127.0.0.1:{p.port}/hooks/w1"],
                              env=env, stdout=subprocess.PIPE, text=True) for p in nodes]
    outs = [p.communicate()[0] for p in procs]
    end = B.sink_count()
    per_node, secs, errors, p99 = [], 0.0, 0, 0.0
    for out in outs:
        line = next(l for l in out.splitlines() if l.startswith("W1JSON "))
        w = json.loads(line[len("W1JSON "):])
        s = w["duration_us"] / 1e6
        secs = max(secs, s)
        answers = w["requests"] - w["err_status"]
        errors += w["err_connect"] + w["err_read"] + w["err_write"] + w["err_timeout"] + w["err_status"]
        per_node.append(answers / s)
        p99 = max(p99, w["lat_p99_us"] / 1000)
    answers = sum(round(a * secs) for a in per_node)
    return {"conns": conns, "seconds": secs, "answers_per_s": sum(per_node),
            "per_node_answers_per_s": per_node, "deliveries_per_s": (end - base) / secs,
            "errors": errors, "lat_p99_ms_worst_node": p99, "_target": base + answers,
            "_answers": answers}


def one(config):
    nodes, schema = start_nodes(config)
    try:
        B.check_w1(f"http://127.0.0.1:{nodes[0].port}/hooks/w1")
        time.sleep(1)
        res = {}
        for c in (16, 64):
            B.log(f"  {config}: wrk c{c} {DURATION}s over {len(nodes)} node(s)")
            m0 = [metrics(p.port) for p in nodes]
            cpu0 = [B.cpu_seconds(p.pid) for p in nodes]
            pg0 = pg_cpu()
            r = spread_wrk(nodes, c)
            target, answers = r.pop("_target"), r.pop("_answers")
            t = B.wait_sink(target, DRAIN_MAX)
            r["drain_s"] = t
            r["sustained_per_s"] = answers / (r["seconds"] + (t if t is not None else DRAIN_MAX))
            m1 = [metrics(p.port) for p in nodes]
            cpu1 = [B.cpu_seconds(p.pid) for p in nodes]
            pg1 = pg_cpu()
            d = lambda k: sum(b.get(k, 0.0) - a.get(k, 0.0) for a, b in zip(m0, m1))
            events = d("switchboard_events_stored_total")
            r["events_stored"] = events
            if events:
                r["round_trips_per_event"] = d("switchboard_store_round_trips_total") / events
                r["sb_cpu_ms_per_event"] = (sum(cpu1) - sum(cpu0)) * 1000 / events
                r["pg_cpu_ms_per_event"] = (pg1 - pg0) * 1000 / events
            flushes = d("switchboard_store_commit_seconds_count")
            if flushes:
                r["flush_ms"] = d("switchboard_store_commit_seconds_sum") * 1000 / flushes
                r["flush_group"] = d("switchboard_store_commit_group_size_sum") / flushes
                r["flushes_per_event"] = flushes / events if events else None
            res[f"c{c}"] = r
        return res
    finally:
        stop_nodes(nodes, schema)


def report(results, info, load_end):
    cols = [c for c in CONFIGS if results.get(c)]
    name = lambda c: c if ":" not in c else f"{c.split(':')[0]} ({os.path.basename(c.split(':', 1)[1])})"
    med = lambda c, *p: B.med(results[c], *p)
    lines = [f"W1 over nodes, {ROUNDS} round(s) of {DURATION}s per figure (median). {info} "
             f"Load average at end: {load_end}.", ""]
    lines.append("| figure | " + " | ".join(name(c) for c in cols) + " |")
    lines.append("|---|" + "---|" * len(cols))
    rows = [
        ("c16 answers/s (all nodes)", ("c16", "answers_per_s"), 0),
        ("c64 answers/s (all nodes)", ("c64", "answers_per_s"), 0),
        ("c64 answers/s per node", None, 0),
        ("c64 sink deliveries/s (window)", ("c64", "deliveries_per_s"), 0),
        ("c64 sustained (delivered / (window + drain))", ("c64", "sustained_per_s"), 0),
        ("c64 drain (s)", ("c64", "drain_s"), 1),
        ("c64 answer p99, worst node (ms)", ("c64", "lat_p99_ms_worst_node"), 1),
        ("c64 database round trips per event", ("c64", "round_trips_per_event"), 1),
        ("c64 flush (group commit) mean (ms)", ("c64", "flush_ms"), 2),
        ("c64 writers per flush", ("c64", "flush_group"), 1),
        ("c64 Switchboard CPU per event (ms)", ("c64", "sb_cpu_ms_per_event"), 3),
        ("c64 postgres CPU per event (ms, all postgres processes)", ("c64", "pg_cpu_ms_per_event"), 3),
        ("c16 database round trips per event", ("c16", "round_trips_per_event"), 1),
        ("c16 flush mean (ms)", ("c16", "flush_ms"), 2),
    ]
    for label, path, nd in rows:
        if path is None:
            cells = []
            for c in cols:
                per = [r["c64"]["per_node_answers_per_s"] for r in results[c]][-1]
                cells.append(" / ".join(f"{v:,.0f}" for v in per))
        else:
            # The embedded store makes no round trips: nothing to show.
            cells = ["–" if c.startswith("sled") and "round_trips" in path[-1] else B.fmt(med(c, *path), nd)
                     for c in cols]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    # pg-1 / sled-1 of each binary (the part after the colon).
    for c in cols:
        base, _, binary = c.partition(":")
        sled = "sled-1" + (":" + binary if binary else "")
        if base != "pg-1" or sled not in cols:
            continue
        label = f" ({os.path.basename(binary)})" if binary else ""
        ratios = [f"{k} {med(c, k, f) / med(sled, k, f):.2f}"
                  for k, f in (("c64", "answers_per_s"), ("c16", "answers_per_s"),
                               ("c64", "sustained_per_s"))
                  if med(sled, k, f)]
        lines.append("")
        lines.append(f"One node{label}: PostgreSQL / sled = " + ", ".join(ratios) + ".")
    return "\n".join(lines)


def main():
    os.makedirs(B.OUT, exist_ok=True)
    if not B.port_free(B.SINK_PORT):
        sys.exit(f"port {B.SINK_PORT} is in use: is another benchmark running?")
    info = B.machine()
    B.log(info)
    sink = B.Proc("sink", [os.path.join(B.FLOOR_BIN, "sink"), f"127.0.0.1:{B.SINK_PORT}", "1"])
    results = {c: [] for c in CONFIGS}
    try:
        sink.wait_ready(f"{B.SINK}/_count", ok=lambda s: s == 200)
        for rnd in range(ROUNDS):
            for c in CONFIGS:
                B.log(f"round {rnd + 1}/{ROUNDS}: {c}")
                results[c].append(one(c))
                with open(os.path.join(B.OUT, "nodes.json"), "w") as f:
                    json.dump({"machine": info, "results": results}, f, indent=1)
    finally:
        sink.stop()
    load_end = " ".join(open("/proc/loadavg").read().split()[:3])
    table = report(results, info, load_end)
    with open(os.path.join(B.OUT, "nodes.md"), "w") as f:
        f.write(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
