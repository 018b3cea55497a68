#!/usr/bin/env python3
"""The numbers as a user measures them: bgproxy against HAProxy (and nginx)
over HTTP/1.1 and HTTPS (HTTP/1.1 keep-alive, a new connection per request,
HTTP/2), access log off and on, pinned and unpinned; one table with the
ratio to HAProxy per row.

Every proxy runs with ONE worker thread, in front of one nginx backend
(`return 200`, benchlib.start_backend), with a cleartext and a TLS listener
(a self-signed RSA 2048 certificate made with openssl, ALPN h2 and
http/1.1). Each proxy runs twice, access log off and on:
  - bgproxy: `[log] access = true`, stderr to a file (its own batched writer);
  - HAProxy: `option httplog`, `log stdout format raw` to a file;
  - nginx: `access_log FILE combined buffer=64k flush=1s`.
Workloads (the load generator on one thread):
  h1       wrk -t1 -c50 http://
  tls      wrk -t1 -c50 https:// (keep-alive)
  tls-new  wrk -t1 -c50 -H 'Connection: close' https:// (a TLS handshake per request)
  h2       h2load -t1 -c20 -m10 https:// (HTTP/2 over TLS)
Pinned: the load generator on CPU 1, proxies and backend on CPU 0 (like
load.py); unpinned: the scheduler decides. Each row is the median of
ROUNDS alternating runs (bgproxy, HAProxy, nginx, bgproxy, ...), with the
proxy's CPU time per request (utime+stime from /proc over the run).
Finally, with IDLE_CONNS > 0, KB of RSS per idle keep-alive connection.

Run (from the repo root, after `cargo build --release -p bgproxy`):
    python3 benches/table.py
Environment: ROUNDS (3), DURATION seconds per run (5), WORKLOADS
(h1,tls,tls-new,h2), LOGS (off,on), PINS (unpinned,pinned), PROXIES
(bgproxy,haproxy,nginx), IDLE_CONNS (5000, 0 = skip), BGPROXY_BIN
(target/release/bgproxy), BGPROXY_KEYS (extra `[proxy]` keys,
`;`-separated). Loopback only; every process it starts is stopped on exit,
and its scratch directory (with the access logs) removed.
"""

import os
import re
import shutil
import resource
import statistics
import subprocess
import sys
import tempfile

import load
from benchlib import BGPROXY, PROCS, bgproxy_toml, ensure_tools, free_port, haproxy_cfg, run, start, start_backend, wait_http

ROUNDS = int(os.environ.get("ROUNDS", "3"))
DURATION = int(os.environ.get("DURATION", "5"))
WORKLOADS = os.environ.get("WORKLOADS", "h1,tls,tls-new,h2").split(",")
LOGS = os.environ.get("LOGS", "off,on").split(",")
PINS = os.environ.get("PINS", "unpinned,pinned").split(",")
PROXIES = os.environ.get("PROXIES", "bgproxy,haproxy,nginx").split(",")
IDLE_CONNS = int(os.environ.get("IDLE_CONNS", "5000"))
# The scratch directory: configs and the access logs (a GB or more), removed
# at the end.
TMP = None
BGPROXY_KEYS = os.environ.get("BGPROXY_KEYS", "").replace(";", "\n")
NAMES = {"bgproxy": "bgproxy", "haproxy": "HAProxy 2.6", "nginx": "nginx"}
TITLES = {
    "h1": "HTTP/1.1 cleartext",
    "tls": "HTTPS, HTTP/1.1 keep-alive",
    "tls-new": "HTTPS, a new connection per request (RSA 2048)",
    "h2": "HTTPS, HTTP/2 (`h2load -c 20 -m 10`)",
}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def certificate(tmp):
    """A self-signed RSA 2048 certificate for 127.0.0.1 and localhost:
    (cert, key, both in one file for HAProxy)."""
    cert, key, both = f"{tmp}/cert.pem", f"{tmp}/key.pem", f"{tmp}/both.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    with open(both, "w") as f:
        f.write(open(cert).read() + open(key).read())
    return cert, key, both


def start_bgproxy(tmp, name, backend, tls_cert, access):
    port, tls_port, control = free_port(), free_port(), free_port()
    keys = f"{BGPROXY_KEYS}\n[proxy.tls]\nlisten = [\"127.0.0.1:{tls_port}\"]\ncert = \"{tls_cert[0]}\"\nkey = \"{tls_cert[1]}\""
    bgproxy_toml(f"{tmp}/{name}.toml", port, control, f"{tmp}/{name}-state/state.json", backend, free_port(),
                 'path = "/health"\ninterval = "1s"', keys, access=access)
    p = start([BGPROXY, "--config", f"{tmp}/{name}.toml"], f"{tmp}/{name}.log")
    wait_http(port)
    return port, tls_port, [p.pid]


def start_haproxy(tmp, name, backend, tls_cert, access):
    port, tls_port = free_port(), free_port()
    cfg = haproxy_cfg(port, ["option httpchk GET /health", f"server b1 127.0.0.1:{backend} check inter 1s"],
                      "  maxconn 9500\n" + ("  log stdout format raw local0 info\n" if access else ""))
    cfg = cfg.replace(f"  bind 127.0.0.1:{port}\n",
                      f"  bind 127.0.0.1:{port}\n  bind 127.0.0.1:{tls_port} ssl crt {tls_cert[2]} alpn h2,http/1.1\n")
    if access:
        cfg = cfg.replace("defaults\n", "defaults\n  log global\n  option httplog\n")
    with open(f"{tmp}/{name}.cfg", "w") as f:
        f.write(cfg)
    p = start(["haproxy", "-f", f"{tmp}/{name}.cfg", "-db"], f"{tmp}/{name}.log")
    wait_http(port)
    return port, tls_port, [p.pid]


def start_nginx(tmp, name, backend, tls_cert, access):
    port, tls_port = free_port(), free_port()
    os.makedirs(f"{tmp}/{name}", exist_ok=True)
    log_line = (f"access_log {tmp}/{name}/access.log combined buffer=64k flush=1s;" if access
                else "access_log off;")
    with open(f"{tmp}/{name}/nginx.conf", "w") as f:
        f.write(f"""worker_processes 1; pid {tmp}/{name}/nginx.pid; error_log {tmp}/{name}/nginx.err;
worker_rlimit_nofile 20000;
events {{ worker_connections 16000; }}
http {{ {log_line} keepalive_requests 1000000;
  upstream be {{ server 127.0.0.1:{backend}; keepalive 64; }}
  server {{ listen 127.0.0.1:{port} backlog=4096;
    listen 127.0.0.1:{tls_port} ssl http2 backlog=4096;
    ssl_certificate {tls_cert[0]}; ssl_certificate_key {tls_cert[1]};
    location / {{ proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $http_host; }} }} }}
""")
    p = start(["nginx", "-c", f"{tmp}/{name}/nginx.conf", "-g", "daemon off;"], f"{tmp}/{name}.log")
    wait_http(port)
    return port, tls_port, [p.pid, *load.children(p.pid)]


STARTERS = {"bgproxy": start_bgproxy, "haproxy": start_haproxy, "nginx": start_nginx}


def pin(pids, cpus):
    """Moves every thread of `pids` to `cpus` (e.g. "0", or "0-1")."""
    for pid in pids:
        subprocess.run(["taskset", "-a", "-cp", cpus, str(pid)], check=True, capture_output=True)


def measure(workload, port, tls_port, pinned):
    """One run: (req/s, requests, p99 ms or None, failures)."""
    prefix = ["taskset", "-c", "1"] if pinned else []
    if workload == "h2":
        cmd = [*prefix, "h2load", "-t1", "-c20", "-m10", f"-D{DURATION}", "--warm-up-time=1",
               f"https://127.0.0.1:{tls_port}/"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rps = float(re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out).group(1))
        m = re.search(r"requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored",
                      out)
        status = re.search(r"status codes: (\d+) 2xx", out)
        failures = int(m.group(3)) + int(m.group(4)) + (int(m.group(2)) - int(status.group(1)) if status else 0)
        return rps, int(m.group(2)), None, failures
    url = f"https://127.0.0.1:{tls_port}/" if workload.startswith("tls") else f"http://127.0.0.1:{port}/"
    extra = ["-H", "Connection: close"] if workload == "tls-new" else []
    cmd = [*prefix, "wrk", "-t1", "-c50", f"-d{DURATION}s", "--latency", *extra, url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    p99 = load.to_ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    # A closed connection per request shows as read errors in wrk: not failures.
    failures = (int(non2xx.group(1)) if non2xx else 0) + (
        int(errors.group(1)) + int(errors.group(4)) if errors else 0)
    return rps, reqs, p99, failures


def main():
    ensure_tools(("haproxy", "nginx", "wrk", "h2load", "openssl"))
    if not os.path.exists(BGPROXY):
        raise SystemExit(f"{BGPROXY} not found: cargo build --release -p bgproxy")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    global TMP
    tmp = TMP = tempfile.mkdtemp(prefix="bgtable-")
    tls_cert = certificate(tmp)
    backend = start_backend(tmp)
    backend_pids = [PROCS[-1].pid, *load.children(PROCS[-1].pid)]

    proxies = {}  # (proxy, log) -> (port, tls_port, pids)
    for log_mode in LOGS:
        for proxy in PROXIES:
            name = f"{proxy}-{log_mode}"
            proxies[(proxy, log_mode)] = STARTERS[proxy](tmp, name, backend, tls_cert, log_mode == "on")
    # Warm-up: a short run of each workload on each proxy.
    global DURATION
    saved, DURATION = DURATION, 1
    for (port, tls_port, _) in proxies.values():
        for w in WORKLOADS:
            measure(w, port, tls_port, False)
    DURATION = saved

    results = {}  # (workload, pin, log, proxy) -> [(rps, cpu_us, p99)]
    all_pids = [pid for (_, _, pids) in proxies.values() for pid in pids] + backend_pids
    for pin_mode in PINS:
        pinned = pin_mode == "pinned"
        pin(all_pids, "0" if pinned else f"0-{os.cpu_count() - 1}")
        for w in WORKLOADS:
            for log_mode in LOGS:
                for r in range(ROUNDS):
                    for proxy in PROXIES:
                        port, tls_port, pids = proxies[(proxy, log_mode)]
                        before = load.cpu_ticks(pids)
                        rps, reqs, p99, failures = measure(w, port, tls_port, pinned)
                        cpu_us = (load.cpu_ticks(pids) - before) / load.TICK * 1e6 / max(reqs, 1)
                        if failures:
                            log(f"  {proxy}: {failures} failed requests")
                        results.setdefault((w, pin_mode, log_mode, proxy), []).append((rps, cpu_us, p99))
                        log(f"{w} {pin_mode} log {log_mode} round {r + 1} {proxy}: {rps:.0f} req/s "
                            f"{cpu_us:.1f} us/req" + (f" p99 {p99:.2f}ms" if p99 is not None else ""))

    idle = {}
    if IDLE_CONNS:
        pin(all_pids, f"0-{os.cpu_count() - 1}")
        for proxy in PROXIES:
            port, _, pids = proxies[(proxy, LOGS[0])]
            base = load.status_kb(pids, "VmRSS")
            try:
                held = load.idle_rss(port, pids, IDLE_CONNS) * 1024
                idle[proxy] = (held - base) / IDLE_CONNS
            except Exception as e:
                log(f"{proxy}: {IDLE_CONNS} idle connections failed: {e}")

    def med(key, i):
        vals = [row[i] for row in results.get(key, []) if row[i] is not None]
        return statistics.median(vals) if vals else None

    cpu_model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    keys = ("ROUNDS", "DURATION", "WORKLOADS", "LOGS", "PINS", "PROXIES", "IDLE_CONNS", "BGPROXY_KEYS")
    print(f"Command: `{' '.join(f'{k}={os.environ[k]!r}' for k in keys if k in os.environ)} "
          f"python3 benches/table.py`")
    print(f"Machine: {os.cpu_count()} CPUs ({cpu_model}), kernel {os.uname().release}; one worker thread "
          f"per proxy, nginx backend; medians of {ROUNDS} alternating runs of {DURATION}s.\n")
    head = " | ".join(f"{NAMES[p]} req/s" for p in PROXIES)
    print(f"| workload | access log | pinning | {head} | bgproxy / HAProxy | CPU us/req "
          f"{' / '.join(NAMES[p] for p in PROXIES)} | p99 ms {' / '.join(NAMES[p] for p in PROXIES)} |")
    print("|---|---|---|" + "---|" * len(PROXIES) + "---|---|---|")
    for w in WORKLOADS:
        for log_mode in LOGS:
            for pin_mode in PINS:
                k = lambda p: (w, pin_mode, log_mode, p)
                rps = {p: med(k(p), 0) for p in PROXIES}
                cpu = {p: med(k(p), 1) for p in PROXIES}
                p99 = {p: med(k(p), 2) for p in PROXIES}
                ratio = (f"**{rps['bgproxy'] / rps['haproxy']:.2f}x**"
                         if rps.get("bgproxy") and rps.get("haproxy") else "-")
                cols = " | ".join(f"{rps[p]:,.0f}" if rps[p] else "-" for p in PROXIES)
                cpus = " / ".join(f"{cpu[p]:.1f}" if cpu[p] else "-" for p in PROXIES)
                p99s = " / ".join(f"{p99[p]:.2f}" if p99[p] else "-" for p in PROXIES)
                print(f"| {TITLES[w]} | {log_mode} | {pin_mode} | {cols} | {ratio} | {cpus} | {p99s} |")
    if idle:
        cols = " | ".join(f"{idle[p]:.1f} KB" if p in idle else "-" for p in PROXIES)
        ratio = f"{idle['bgproxy'] / idle['haproxy']:.1f}x" if "bgproxy" in idle and idle.get("haproxy") else "-"
        print(f"| RSS per idle keep-alive connection ({IDLE_CONNS}) | {LOGS[0]} | unpinned | {cols} | {ratio} "
              f"| | |")


if __name__ == "__main__":
    try:
        run(main)
    finally:
        if TMP:
            shutil.rmtree(TMP, ignore_errors=True)
