#!/usr/bin/env python3
"""Where does each proxy's CPU per request go: user space or the kernel,
and does it make more system calls or context switches than HAProxy?

load.py gives one figure, CPU microseconds per request. This splits it:
utime and stime from /proc/PID/stat over a wrk run, each divided by the
requests wrk counted, and the proxy's involuntary and voluntary context
switches per request (all its threads, /proc/PID/task/*/status). A second,
shorter run under `strace -c -f` counts system calls per request by name
(strace slows the proxy down; the counts per request are what it is for).
Same setup as load.py: one nginx backend, one worker thread per proxy,
wrk -t1 -c50 pinned to CPU 1, proxies and backend on CPU 0; bgproxy, bare
pingora (when built) and HAProxy, alternately for ROUNDS rounds.

Run (repo root, after `cargo build --release --workspace`):
    python3 benches/cpu_split.py
Environment: ROUNDS (3), DURATION seconds per run (6), STRACE (1: also
count system calls; needs strace, installed from Debian if missing),
BGPROXY_BIN (target/release/bgproxy). Loopback only; every process it
starts is stopped on exit.
"""

import glob
import os
import re
import statistics
import subprocess
import tempfile
import time

import load
from benchlib import (BGPROXY, bgproxy_toml, ensure_tools, free_port, haproxy_cfg, run, start, start_backend,
                      wait_http)

ROUNDS = int(os.environ.get("ROUNDS", "3"))
DURATION = int(os.environ.get("DURATION", "6"))
STRACE = os.environ.get("STRACE", "1") == "1"


def times(pid):
    """utime and stime of the whole process, in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def switches(pid):
    """Involuntary and voluntary context switches of all the process's threads."""
    invol = vol = 0
    for status in glob.glob(f"/proc/{pid}/task/*/status"):
        try:
            with open(status) as f:
                text = f.read()
        except OSError:
            continue  # the thread ended meanwhile
        vol += int(re.search(r"^voluntary_ctxt_switches:\s+(\d+)", text, re.M).group(1))
        invol += int(re.search(r"^nonvoluntary_ctxt_switches:\s+(\d+)", text, re.M).group(1))
    return invol, vol


def syscalls(pid, port, tmp, name):
    """System calls per request by name, from `strace -c -f` over a 3 s run."""
    out = f"{tmp}/{name.replace(' ', '_')}.strace"
    tracer = subprocess.Popen(["strace", "-c", "-f", "-p", str(pid), "-o", out], stderr=subprocess.DEVNULL)
    time.sleep(1)  # attached to every thread
    reqs = load.wrk(port, 3)[1]
    tracer.terminate()
    tracer.wait()
    counts = {}
    with open(out) as f:
        for line in f:
            m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$", line)
            if m and m.group(2) != "total":
                counts[m.group(2)] = int(m.group(1)) / reqs
    return counts


def main():
    ensure_tools(("haproxy", "nginx", "wrk", "strace") if STRACE else ("haproxy", "nginx", "wrk"))
    tmp = tempfile.mkdtemp(prefix="bgsplit-")
    backend = start_backend(tmp, load.PROXY_CPU)
    proxies = {}
    port, control = free_port(), free_port()
    bgproxy_toml(f"{tmp}/bgproxy.toml", port, control, f"{tmp}/bgstate/state.json", backend, free_port(),
                 'path = "/health"\ninterval = "1s"')
    p = start([BGPROXY, "--config", f"{tmp}/bgproxy.toml"], f"{tmp}/bgproxy.log", load.PROXY_CPU)
    wait_http(port)
    proxies["bgproxy"] = (port, p.pid)
    bare = os.path.join(os.path.dirname(BGPROXY), "bare_pingora")
    if os.path.exists(bare):
        port = free_port()
        p = start([bare, f"127.0.0.1:{port}", f"127.0.0.1:{backend}"], f"{tmp}/bare.log", load.PROXY_CPU)
        wait_http(port)
        proxies["pingora (bare)"] = (port, p.pid)
    port = free_port()
    with open(f"{tmp}/haproxy.cfg", "w") as f:
        f.write(haproxy_cfg(port, ["option httpchk GET /health", f"server b1 127.0.0.1:{backend} check inter 1s"]))
    p = start(["haproxy", "-f", f"{tmp}/haproxy.cfg", "-db"], f"{tmp}/haproxy.log", load.PROXY_CPU)
    wait_http(port)
    proxies["haproxy"] = (port, p.pid)

    rows = {name: [] for name in proxies}
    for name, (port, _) in proxies.items():
        load.wrk(port, 2)  # warm-up
    for r in range(ROUNDS):
        for name, (port, pid) in proxies.items():
            t0, s0 = times(pid), switches(pid)
            rps, reqs = load.wrk(port, DURATION)[:2]
            t1, s1 = times(pid), switches(pid)
            per = 1e6 / load.TICK / reqs
            row = (rps, (t1[0] - t0[0]) * per, (t1[1] - t0[1]) * per,
                   (s1[0] - s0[0]) / reqs, (s1[1] - s0[1]) / reqs)
            rows[name].append(row)
            load.log(f"round {r + 1} {name}: {rps:.0f} req/s user {row[1]:.1f} sys {row[2]:.1f} us/req "
                     f"context switches {row[3]:.3f} involuntary {row[4]:.3f} voluntary per request")

    print(f"{ROUNDS} alternating rounds of wrk -t1 -c{load.CONNECTIONS} -d{DURATION}s; medians\n")
    print("| proxy | req/s | user us/req | sys us/req | involuntary switches/req | voluntary/req |")
    print("|---|---|---|---|---|---|")
    for name, vals in rows.items():
        med = [statistics.median(v[i] for v in vals) for i in range(5)]
        print(f"| {name} | {med[0]:.0f} | {med[1]:.1f} | {med[2]:.1f} | {med[3]:.3f} | {med[4]:.3f} |")

    if STRACE:
        counts = {name: syscalls(pid, port, tmp, name) for name, (port, pid) in proxies.items()}
        names = sorted({c for per in counts.values() for c, n in per.items() if n >= 0.01},
                       key=lambda c: -max(per.get(c, 0) for per in counts.values()))
        print("\nSystem calls per request (`strace -c -f`, 3 s of the same load; calls under 0.01 "
              "per request left out):\n")
        print("| call | " + " | ".join(counts) + " |")
        print("|---|" + "---|" * len(counts))
        for c in names:
            print(f"| {c} | " + " | ".join(f"{per.get(c, 0):.2f}" for per in counts.values()) + " |")
        print("| total | " + " | ".join(f"{sum(per.values()):.2f}" for per in counts.values()) + " |")


if __name__ == "__main__":
    run(main)
