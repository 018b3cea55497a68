#!/usr/bin/env python3
"""How many user-space instructions does each proxy execute per request?

Wall-clock figures on this shared 2-core VM move by 20% between hours; an
instruction count does not. This runs one proxy at a time under valgrind's
callgrind (which counts every instruction the process executes in user
space, none of the kernel's), sends it keep-alive load through wrk, and
divides the instructions counted during the load by the requests wrk
completed. Start-up and warm-up are not counted (the counters are zeroed
after a warm-up run). Syscalls and context switches are kernel time and
are NOT in these figures: load.py measures the whole CPU cost.

Run (from the repo root, after `cargo build --release --workspace`):
    python3 benches/callgrind.py            # bgproxy, bare pingora, lean HTTP/1 loop, HAProxy, nginx
    ONLY=bgproxy python3 benches/callgrind.py
Environment: DURATION seconds of load (10), CONNECTIONS (10), ONLY (comma-
separated names), TOP (how many functions to list per proxy, 0 = none),
CACHE_SIM (1: also simulate the caches and print data-cache misses per
request, first level and last level; slower), BROWSER (1: each request
carries the dozen headers a browser sends, not only wrk's Host), BGPROXY_BIN
(target/release/bgproxy). The callgrind files are kept in a
temporary directory named at the end (for callgrind_annotate / kcachegrind).
Loopback only; every process it starts is stopped on exit.
"""

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

from benchlib import (BGPROXY, REFERENCES, bgproxy_toml, ensure_tools, free_port, haproxy_cfg, nginx_proxy_cfg,
                      run, start, start_backend, wait_http)

DURATION = int(os.environ.get("DURATION", "10"))
CONNECTIONS = int(os.environ.get("CONNECTIONS", "10"))
ONLY = [n for n in os.environ.get("ONLY", "").split(",") if n]
TOP = int(os.environ.get("TOP", "25"))
CACHE_SIM = os.environ.get("CACHE_SIM") == "1"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# What a browser sends besides Host (BROWSER=1).
BROWSER_HEADERS = [
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "Accept-Language: en-US,en;q=0.5",
    "Accept-Encoding: gzip, deflate, br, zstd",
    "Referer: http://127.0.0.1/cart",
    "Cookie: session=5f2c9a7e1b; bucket=17; theme=dark",
    "Upgrade-Insecure-Requests: 1",
    "Sec-Fetch-Dest: document",
    "Sec-Fetch-Mode: navigate",
    "Sec-Fetch-Site: same-origin",
    "Priority: u=0, i",
]


def wrk(port, duration):
    headers = [a for h in BROWSER_HEADERS for a in ("-H", h)] if os.environ.get("BROWSER") == "1" else []
    out = subprocess.run(["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{duration}s", *headers, f"http://127.0.0.1:{port}/"],
                         capture_output=True, text=True, check=True).stdout
    m = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    if errors:
        raise SystemExit(f"wrk saw errors through 127.0.0.1:{port}:\n{out}")
    return int(m.group(1))


def callgrind(name, cmd, port, tmp):
    """Runs `cmd` under callgrind, loads it, returns instructions per request."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", name)
    cache = ["--cache-sim=yes"] if CACHE_SIM else []
    p = start(["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/callgrind.{slug}.%p",
               "--trace-children=no", *cache, *cmd], f"{tmp}/{slug}.log")
    wait_http(port, 60)
    wrk(port, 2)  # warm-up: connections made, pools filled, code paged in
    subprocess.run(["callgrind_control", "-z", str(p.pid)], check=True, capture_output=True)
    requests = wrk(port, DURATION)
    subprocess.run(["callgrind_control", "-d", "measured", str(p.pid)], check=True, capture_output=True)
    p.terminate()
    p.wait(timeout=60)
    total = 0
    dump = None
    for f in glob.glob(f"{tmp}/callgrind.{slug}.{p.pid}*"):
        with open(f, errors="replace") as fh:
            text = fh.read()
        # The dump asked for above, not the one written at exit.
        if not re.search(r"^desc: Trigger: .*measured", text, re.M):
            continue
        m = re.search(r"^(?:summary|totals):\s+([\d ]+)$", text, re.M)
        events = re.search(r"^events:\s+(.+)$", text, re.M)
        if m:
            counts = dict(zip(events.group(1).split(), map(int, m.group(1).split())))
            total += counts["Ir"]
            misses = (counts.get("D1mr", 0) + counts.get("D1mw", 0), counts.get("DLmr", 0) + counts.get("DLmw", 0))
            dump = f
    if not total:
        raise SystemExit(f"no measured callgrind dump for {name} in {tmp}")
    return total / requests, requests, dump, (misses[0] / requests, misses[1] / requests)


def main():
    ensure_tools(("haproxy", "nginx", "wrk", "valgrind"))
    tmp = tempfile.mkdtemp(prefix="bgcallgrind-")
    backend = start_backend(tmp)

    candidates = []
    port, control = free_port(), free_port()
    bgproxy_toml(f"{tmp}/bgproxy.toml", port, control, f"{tmp}/bgstate/state.json", backend,
                 free_port(), 'path = "/health"\ninterval = "1s"')
    candidates.append(("bgproxy", [BGPROXY, "--config", f"{tmp}/bgproxy.toml"], port))
    for name, binary in REFERENCES:
        port = free_port()
        path = os.path.join(os.path.dirname(BGPROXY), binary)
        candidates.append((name, [path, f"127.0.0.1:{port}", f"127.0.0.1:{backend}"], port))
    port = free_port()
    with open(f"{tmp}/haproxy.cfg", "w") as f:
        f.write(haproxy_cfg(port, ["option httpchk GET /health", f"server b1 127.0.0.1:{backend} check inter 1s"]))
    candidates.append(("haproxy", ["haproxy", "-f", f"{tmp}/haproxy.cfg", "-db"], port))
    port = free_port()
    with open(f"{tmp}/nginx.conf", "w") as f:
        f.write(nginx_proxy_cfg(tmp, port, backend, "master_process off; daemon off; "))
    candidates.append(("nginx", ["nginx", "-c", f"{tmp}/nginx.conf"], port))

    rows = []
    for name, cmd, port in candidates:
        if ONLY and name.split()[0] not in ONLY:
            continue
        if not os.path.exists(cmd[0]) and not shutil.which(cmd[0]):
            log(f"skipping {name}: {cmd[0]} not found (cargo build --release --workspace)")
            continue
        log(f"measuring {name} ...")
        per_request, requests, dump, misses = callgrind(name, cmd, port, tmp)
        rows.append((name, per_request, requests, dump, misses))

    haproxy = next((r[1] for r in rows if r[0] == "haproxy"), None)
    extra = " D1 misses per request | LL misses per request |" if CACHE_SIM else ""
    print(f"| proxy | instructions per request | requests measured | vs HAProxy |{extra}")
    print("|---|---|---|---|" + ("---|---|" if CACHE_SIM else ""))
    for name, per_request, requests, _, (d1, ll) in rows:
        ratio = f"{per_request / haproxy:.2f}x" if haproxy else "-"
        cells = f" {d1:,.0f} | {ll:,.1f} |" if CACHE_SIM else ""
        print(f"| {name} | {per_request:,.0f} | {requests} | {ratio} |{cells}")
    if TOP:
        for name, per_request, requests, dump, _ in rows:
            print(f"\n{name}: top {TOP} functions by inclusive instructions per request")
            out = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", dump],
                                 capture_output=True, text=True).stdout
            lines = [line for line in out.splitlines() if re.match(r"^\s*[\d,]+ \(", line)]
            for line in lines[:TOP]:
                m = re.match(r"^\s*([\d,]+) \(\s*([\d.]+)%\)\s+(.*)$", line)
                if m:
                    count = int(m.group(1).replace(",", "")) / requests
                    print(f"  {count:>10,.0f}  {m.group(2):>5}%  {m.group(3)[:150]}")
    log(f"callgrind files in {tmp}")


if __name__ == "__main__":
    run(main)
