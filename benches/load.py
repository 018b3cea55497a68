#!/usr/bin/env python3
"""At equal threads on this machine, how do bgproxy's throughput, latency,
CPU per request and memory compare with HAProxy and nginx?

One backend (nginx, one worker, `return 200`) on 127.0.0.1. In front of it,
in turn, bgproxy, HAProxy and nginx as proxies, each with ONE worker thread,
upstream keep-alive and (where the proxy has them) active health checks
every second. wrk runs against each alternately, A B C A B C..., and the
script prints per proxy the median [min-max] of: requests/s, p50 and p99
latency, proxy CPU microseconds per request (utime+stime from /proc/PID/stat
over the run, divided by the requests wrk counted), peak RSS during load,
idle RSS, and RSS with IDLE_CONNS idle keep-alive client connections open;
plus the ratio to HAProxy. Output is Markdown for benches/README.md.

Run (from the repo root, after `cargo build --release --workspace`, which
also builds bare_pingora: pingora with bgproxy's runtime settings and no
features, and lean_h1: pingora's HTTP/1 pieces without pingora-proxy;
both are measured beside the others when present):
    python3 benches/load.py
Environment: ROUNDS (5), DURATION seconds per run (10), CONNECTIONS (50),
IDLE_CONNS (9000: HAProxy uses two descriptors a connection, and this
machine's hard limit is 20000), BGPROXY_PROXY_KEYS (extra `[proxy]` keys for
bgproxy, `;`-separated, e.g. "work_stealing = false"), BGPROXY_BIN (target/release/bgproxy), PIN (1: wrk on
CPU 1, proxies and backend on CPU 0, when taskset exists).
Installs haproxy, nginx and wrk from Debian if missing. Loopback only;
every process it starts is stopped on exit.
"""

import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import (BGPROXY, REFERENCES, bgproxy_toml, ensure_tools, free_port, haproxy_cfg, nginx_proxy_cfg,
                      run, start, start_backend, wait_http)

ROUNDS = int(os.environ.get("ROUNDS", "5"))
DURATION = int(os.environ.get("DURATION", "10"))
CONNECTIONS = int(os.environ.get("CONNECTIONS", "50"))
IDLE_CONNS = int(os.environ.get("IDLE_CONNS", "9000"))
PIN = os.environ.get("PIN", "1") == "1" and shutil.which("taskset") and os.cpu_count() >= 2
TICK = os.sysconf("SC_CLK_TCK")
PROXY_CPU = "0" if PIN else None
# Extra [proxy] keys for bgproxy, for A/B runs (e.g. "work_stealing = false").
PROXY_KEYS = os.environ.get("BGPROXY_PROXY_KEYS", "").replace(";", "\n")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def children(pid):
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        return [int(x) for x in out.split()]
    except Exception:
        return []


def cpu_ticks(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total


def status_kb(pids, key):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    total += int(line.split()[1])
    return total


def to_ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)", v)
    n, unit = float(m.group(1)), m.group(2)
    return n / 1000 if unit == "us" else n if unit == "ms" else n * 1000


def wrk(port, duration):
    cmd = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{duration}s", "--latency", f"http://127.0.0.1:{port}/"]
    if PIN:
        cmd = ["taskset", "-c", "1", *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    p50 = to_ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = to_ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    errors = re.search(r"Socket errors: (.*)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, reqs, p50, p99, (errors.group(1) if errors else ""), int(non2xx.group(1)) if non2xx else 0


def idle_rss(port, pids, n):
    """RSS with n idle keep-alive client connections (each made one request)."""
    socks = []
    req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    try:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(req)
            socks.append(s)
        for s in socks:
            s.settimeout(10)
            s.recv(4096)
        time.sleep(1)
        return status_kb(pids, "VmRSS") / 1024
    finally:
        for s in socks:
            s.close()


def main():
    ensure_tools()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tmp = tempfile.mkdtemp(prefix="bgbench-")
    backend = start_backend(tmp, PROXY_CPU)

    proxies = {}
    standby = free_port()
    if os.path.exists(BGPROXY):
        port, control = free_port(), free_port()
        bgproxy_toml(f"{tmp}/bgproxy.toml", port, control, f"{tmp}/bgstate/state.json", backend,
                     standby, 'path = "/health"\ninterval = "1s"', PROXY_KEYS)
        p = start([BGPROXY, "--config", f"{tmp}/bgproxy.toml"], f"{tmp}/bgproxy.log", PROXY_CPU)
        wait_http(port)
        proxies["bgproxy"] = (port, lambda p=p: [p.pid])
    else:
        log(f"skipping bgproxy: {BGPROXY} not found (cargo build --release)")

    # Two references built from benches/src/bin with bgproxy's runtime
    # settings: pingora-proxy with no features (the floor under bgproxy as
    # built), and a straight-line HTTP/1 loop on pingora's sessions and pool
    # without pingora-proxy (what a leaner loop could reach).
    for name, binary in REFERENCES:
        path = os.path.join(os.path.dirname(BGPROXY), binary)
        if not os.path.exists(path):
            log(f"skipping {name}: {path} not found (cargo build --release --workspace)")
            continue
        port = free_port()
        p = start([path, f"127.0.0.1:{port}", f"127.0.0.1:{backend}"], f"{tmp}/{binary}.log", PROXY_CPU)
        wait_http(port)
        proxies[name] = (port, lambda p=p: [p.pid])

    port = free_port()
    with open(f"{tmp}/haproxy.cfg", "w") as f:
        f.write(haproxy_cfg(port, ["option httpchk GET /health", f"server b1 127.0.0.1:{backend} check inter 1s"],
                            "  maxconn 9500\n"))
    p = start(["haproxy", "-f", f"{tmp}/haproxy.cfg", "-db"], f"{tmp}/haproxy.log", PROXY_CPU)
    wait_http(port)
    proxies["haproxy"] = (port, lambda p=p: [p.pid])

    port = free_port()
    with open(f"{tmp}/nginx.conf", "w") as f:
        f.write(nginx_proxy_cfg(tmp, port, backend))
    p = start(["nginx", "-c", f"{tmp}/nginx.conf", "-g", "daemon off;"], f"{tmp}/nginx.log", PROXY_CPU)
    wait_http(port)
    proxies["nginx"] = (port, lambda p=p: [p.pid, *children(p.pid)])

    results = {name: [] for name in proxies}
    idle = {name: status_kb(pids(), "VmRSS") / 1024 for name, (port, pids) in proxies.items()}
    for name, (port, _) in proxies.items():
        wrk(port, 2)  # warm-up
    for r in range(ROUNDS):
        for name, (port, pids) in proxies.items():
            before = cpu_ticks(pids())
            rps, reqs, p50, p99, errors, non2xx = wrk(port, DURATION)
            cpu_us = (cpu_ticks(pids()) - before) / TICK * 1e6 / max(reqs, 1)
            peak = status_kb(pids(), "VmHWM") / 1024
            results[name].append((rps, p50, p99, cpu_us, peak))
            log(f"round {r + 1} {name}: {rps:.0f} req/s p50 {p50:.2f}ms p99 {p99:.2f}ms "
                f"{cpu_us:.1f}us/req peak {peak:.1f}MB {errors} non2xx={non2xx}")
    held = {}
    if IDLE_CONNS:
        for name, (port, pids) in proxies.items():
            try:
                held[name] = idle_rss(port, pids(), IDLE_CONNS)
            except Exception as e:  # a proxy that refuses so many is reported as such
                held[name] = None
                log(f"{name}: {IDLE_CONNS} idle connections failed: {e}")

    def med(vals):
        return statistics.median(vals), min(vals), max(vals)

    def fmt(v, digits):
        m, lo, hi = v
        return f"{m:.{digits}f} [{lo:.{digits}f}-{hi:.{digits}f}]"

    ref = results.get("haproxy")
    ref_rps = statistics.median(x[0] for x in ref) if ref else None
    ref_p99 = statistics.median(x[2] for x in ref) if ref else None
    cpu_model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    keys = ('ROUNDS', 'DURATION', 'CONNECTIONS', 'IDLE_CONNS', 'BGPROXY_PROXY_KEYS')
    print(f"Command: `{' '.join(f'{k}={os.environ[k]!r}' for k in keys if k in os.environ)} python3 benches/load.py`")
    print(f"Machine: {os.cpu_count()} CPUs ({cpu_model}), kernel {os.uname().release}; "
          f"wrk -t1 -c{CONNECTIONS} -d{DURATION}s x {ROUNDS} rounds, alternating; "
          f"{'wrk pinned to CPU 1, proxies and backend to CPU 0' if PIN else 'no CPU pinning'}.\n")
    print("| proxy | req/s | p50 ms | p99 ms | CPU us/req | peak RSS MB | idle RSS MB | RSS MB with "
          f"{IDLE_CONNS} idle conns | req/s vs HAProxy | p99 vs HAProxy |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, rows in results.items():
        cols = list(zip(*rows))
        rps = med(cols[0])
        line = [name, fmt(rps, 0), fmt(med(cols[1]), 2), fmt(med(cols[2]), 2), fmt(med(cols[3]), 1),
                fmt(med(cols[4]), 1), f"{idle[name]:.1f}",
                f"{held[name]:.1f}" if held.get(name) is not None else "-",
                f"{rps[0] / ref_rps:.2f}x" if ref_rps else "-",
                f"{statistics.median(cols[2]) / ref_p99:.2f}x" if ref_p99 else "-"]
        print("| " + " | ".join(line) + " |")
    print("\nnginx OSS has no active health checks; bgproxy and HAProxy check every 1s. "
          "\"pingora (bare)\" is pingora 0.9 with bgproxy's runtime settings and no features "
          "(no routing, health checks, headers, metrics): bgproxy minus it is what bgproxy's own "
          "work costs. \"lean HTTP/1 loop\" (benches/src/bin/lean_h1.rs) is not a proxy to run: "
          "pingora's HTTP/1 sessions, pool and timeouts without pingora-proxy, GET only, adding "
          "bgproxy's forwarded headers: what a leaner request loop could reach.")


if __name__ == "__main__":
    run(main)
