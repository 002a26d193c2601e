#!/usr/bin/env python3
"""Where a profiled process's CPU samples go, each sample counted once.

`bench.py profile` feeds it `perf script -F comm,tid,ip,sym` output; by hand:
`python3 bench/profile_areas.py stacks.txt` (the same output in a file).
Two tables: by area (where on the request or worker path the stack is, by its
thread and frames: the first rule that fits wins) and by what the sampled
frame itself was doing (kernel scheduling, allocation, copies, JSON …).
The rules know Switchboard's and the floor's frames; a stack none of them
fits is counted under "other: <thread>".
"""

import collections
import re
import sys


def samples(lines):
    """(thread name, [(ip, symbol) leaf first]) for each sample."""
    comm, frames = None, []
    for line in lines:
        if not line.strip():
            if comm is not None:
                yield comm, frames
            comm, frames = None, []
        elif not line[0].isspace():
            parts = line.split()
            comm = " ".join(parts[:-1]) if len(parts) > 1 else line.strip()
            frames = []
        else:
            parts = line.strip().split(None, 1)
            frames.append((parts[0], parts[1] if len(parts) > 1 else ""))
    if comm is not None:
        yield comm, frames


def _has(frames, *needles):
    return any(n in sym for _, sym in frames for n in needles)


def area(comm, fr):
    if comm.startswith("sled-io"):
        return "sled I/O threads (log pwrite + sync_file_range, pool wake-ups)"
    if comm == "group-commit":
        return "group-commit thread: the group's sled apply_batch (+ epoch GC)"
    if comm == "group-sync":
        if _has(fr, "fdatasync"):
            return "group-sync thread: fdatasync of sled's file"
        return "group-sync thread: sled flush (waits for the log write), answers"
    if _has(fr, "tracing_subscriber"):
        return "logging (tracing fmt)"
    if _has(fr, "BlockingTask") and not _has(fr, "multi_thread::worker::run"):
        return "tokio blocking pool (spawn_blocking)"
    if _has(fr, "Engine>::execute", "Engine>::work", "engine::worker::spawn"):
        if _has(fr, "http::Client::call", "reqwest", "hyper_util::client", "hyper::client"):
            return "workers: HTTP call to the sink (reqwest)"
        if _has(fr, "Templates::render"):
            return "workers: templates"
        if _has(fr, "finish_run"):
            return "workers: finish (store write, wait for its group)"
        return "workers: rest (walker, contexts, lease/state)"
    if _has(fr, "ingress::handle", "ingress::receive"):
        if _has(fr, "insert_event"):
            return "ingress: Engine::accept: store write (overlay, index, JSON encode)"
        if _has(fr, "Engine::accept"):
            return "ingress: Engine::accept: match, condition, hand-off, wait"
        if _has(fr, "parse_body"):
            return "ingress: JSON parse of the body"
        if _has(fr, "Verifier::verify"):
            return "ingress: HMAC"
        return "ingress: rest (body, answer JSON, metrics)"
    if _has(fr, "floor::hook"):
        if _has(fr, "reqwest", "hyper_util::client", "hyper::client"):
            return "floor: HTTP call to the sink (reqwest)"
        if _has(fr, "serde_json"):
            return "floor: JSON parse + build"
        if _has(fr, "hmac", "sha2", "Hmac"):
            return "floor: HMAC"
        return "floor: rest of the handler"
    if _has(fr, "hyper_util::client", "hyper::client", "reqwest"):
        return "HTTP client connections (reqwest/hyper, outside a call)"
    if _has(fr, "hyper::proto::h1", "hyper::server", "listener::connection", "axum::serve"):
        return "hyper HTTP/1 server (read, parse, write, socket)"
    if comm.startswith("tokio") or _has(fr, "tokio::runtime"):
        return "tokio runtime (scheduler, park/unpark, I/O driver, timers)"
    return "other: " + comm


ALLOC = ("_rjem_", "je_", "malloc", "cfree", "_int_free", "realloc", "sdallocx", "do_rallocx", "tcache")


def leaf(comm, fr):
    if not fr:
        return "?"
    ip, sym = fr[0]
    if ip.startswith("ffffffff"):
        if any(s in sym for s in ("finish_task_switch", "schedule", "_raw_spin_unlock_irq", "try_to_wake_up", "ttwu", "enqueue", "dequeue", "pick_next")):
            return "kernel: scheduling, context switches, wake-ups"
        if "futex" in sym:
            return "kernel: futex"
        if any(s in sym for s in ("iowrite", "virtio", "blk", "ext4", "jbd2", "bio", "nvme", "fdatasync", "sync_file")):
            return "kernel: disk (ext4, block, virtio)"
        if any(s in sym for s in ("tcp", "ip_", "skb", "net", "sock", "softirq", "loopback", "epoll", "ep_")):
            return "kernel: network (loopback TCP), epoll"
        if any(s in sym for s in ("copy_", "folio", "filemap", "_user", "memcpy", "page")):
            return "kernel: copies to/from user, page cache"
        return "kernel: other (syscall entry, irq, timers)"
    for _, s in fr[:3]:
        if any(a in s for a in ALLOC):
            return "allocation (jemalloc / malloc)"
    if any(s in sym for s in ("memmove", "memcpy", "memset", "memcmp")):
        return "libc memcpy / memmove / memcmp"
    for _, s in fr[:6]:
        for needle, what in (("serde_json", "JSON (serde_json)"), ("sled::", "sled"),
                             ("crossbeam_epoch", "sled (epoch GC)"), ("tracing", "logging (tracing)"),
                             ("hyper", "hyper / http"), ("httparse", "hyper / http"),
                             ("tokio::", "tokio"), ("regex", "regex"), ("sha2", "HMAC (sha2)"),
                             ("drop_in_place", "drops, clones, maps"), ("clone", "drops, clones, maps"),
                             ("btree", "drops, clones, maps"), ("hashbrown", "drops, clones, maps")):
            if needle in s:
                return what
    return "user: other"


def tables(samples):
    n, areas, leaves = 0, collections.Counter(), collections.Counter()
    for comm, fr in samples:
        n += 1
        areas[area(comm, fr)] += 1
        leaves[leaf(comm, fr)] += 1
    if n == 0:
        return ["(no samples)"]
    out = [f"By area ({n} samples; each counted once, by where its stack is):", ""]
    out += ["| area | share |", "|---|---|"]
    out += [f"| {a} | {100 * c / n:.1f} % |" for a, c in areas.most_common()]
    out += ["", "By what the sampled frame was doing:", "", "| leaf | share |", "|---|---|"]
    out += [f"| {a} | {100 * c / n:.1f} % |" for a, c in leaves.most_common()]
    return out


if __name__ == "__main__":
    with open(sys.argv[1], errors="replace") as f:
        print("\n".join(tables(samples(f))))
