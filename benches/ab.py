#!/usr/bin/env python3
"""Does a bgproxy setting change its throughput, latency, CPU per request or
memory per idle connection?

Two bgproxy processes from the same binary, A and B, differ only in the
`[proxy]` keys given (or, with A_BIN/B_BIN, the binaries); both proxy to one nginx backend (`return 200`). wrk
runs against them alternately, A B A B..., so both see the same hour of this
shared machine, and the script prints the median [min-max] of each figure
and B's ratio to A. Pinning as in load.py: wrk on CPU 1, proxies and
backend on CPU 0.

Run (from the repo root, after `cargo build --release`):
    A='read_buffer = "16KiB"' B='read_buffer = "0"' python3 benches/ab.py
Environment: A and B (`[proxy]` keys, `;`-separated), A_ENV and B_ENV
(`NAME=value` pairs, space-separated, for one side's process), A_BIN and
B_BIN (a binary per side, e.g. a copy of the previous build: default
BGPROXY_BIN), A_WEIGHT and B_WEIGHT (green's share in percent, set through
`POST /v1/apps/bench/weight` once green is healthy: a canary split; green
then gets a second nginx backend), A_APP and B_APP (more tables of the app,
`;`-separated lines, e.g. `[app.rollout];sticky = "none"`; `{blue}` and
`{green}` in them are the ports of blue's and green's upstream), GREEN (1: give
green its nginx backend and wait until it is healthy, without a split: the
standby that mirroring copies to), ROUNDS (6), DURATION
seconds per run (8), CONNECTIONS (50), IDLE_CONNS (5000: idle keep-alive
connections opened at the end to read RSS per connection, 0 = skip),
BGPROXY_BIN (target/release/bgproxy). Loopback only; every process it
starts is stopped on exit.

What mirroring costs the live traffic (`[app.mirror]`, copies to green):
    GREEN=1 A_APP='[app.mirror];percent = 0' B_APP='[app.mirror];percent = 10' python3 benches/ab.py
    GREEN=1 A_APP='[app.mirror];percent = 0' B_APP='[app.mirror];percent = 100' python3 benches/ab.py
(the default max_in_flight of 100 bounds the copies; add `;max_in_flight = 1000`
to measure without drops: /metrics shows bgproxy_mirrored_requests_total).

What a rate limit costs when it never triggers (`[app.rate_limit]`: wrk's
connections all come from 127.0.0.1, one key, whose bucket of a million a
second never runs dry; check bgproxy_rate_limited_total stays 0):
    B_APP='[app.rate_limit];requests_per_second = 1000000;burst = 1000000' python3 benches/ab.py
    B_APP='[app.rate_limit];requests_per_second = 1000000;burst = 1000000;key = "header:X-Api-Key"' python3 benches/ab.py
(wrk sends no X-Api-Key: the second keys by address too, after a header look-up).

What path routes cost (`[[app.routes]]`): one route that no request matches
(the prefix scan), one that every request matches (`/`: its own pool, to
the same nginx), and the same with strip_prefix (a new request target each):
    P='[app.routes.blue];upstreams = ["127.0.0.1:{blue}"];[app.routes.green];upstreams = ["127.0.0.1:{green}"]'
    B_APP="[[app.routes]];name = \"api\";path_prefix = \"/api/\";$P" python3 benches/ab.py
    B_APP="[[app.routes]];name = \"all\";path_prefix = \"/\";$P" python3 benches/ab.py
    B_APP="[[app.routes]];name = \"all\";path_prefix = \"/\";strip_prefix = true;$P" python3 benches/ab.py
"""

import os
import resource
import statistics
import tempfile

import load
from benchlib import BGPROXY, bgproxy_toml, ensure_tools, free_port, run, start, start_backend, wait_http

ROUNDS = int(os.environ.get("ROUNDS", "6"))
DURATION = int(os.environ.get("DURATION", "8"))
IDLE_CONNS = int(os.environ.get("IDLE_CONNS", "5000"))
SIDES = {"A": os.environ.get("A", ""), "B": os.environ.get("B", "")}
BINS = {side: os.environ.get(f"{side}_BIN", BGPROXY) for side in SIDES}
ENVS = {side: dict(kv.split("=", 1) for kv in os.environ.get(f"{side}_ENV", "").split())
        for side in SIDES}
WEIGHTS = {side: os.environ.get(f"{side}_WEIGHT") for side in SIDES}
APPS = {side: os.environ.get(f"{side}_APP", "").replace(";", "\n") for side in SIDES}
GREEN = os.environ.get("GREEN") == "1"


def wait_green(control):
    """Waits until green is healthy."""
    import json
    import time
    import urllib.request
    deadline = time.time() + 20
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{control}/v1/apps/bench") as r:
            if json.load(r)["colors"]["green"]["healthy"]:
                return
        if time.time() > deadline:
            raise SystemExit("green never became healthy")
        time.sleep(0.2)


def set_weight(control, percent):
    """Waits until green is healthy, then holds it at `percent`."""
    import json
    import urllib.request
    wait_green(control)
    body = json.dumps({"to": "green", "percent": int(percent)}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{control}/v1/apps/bench/weight", body,
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        weights = json.load(r)["weights"]
    load.log(f"split: {weights}")


def main():
    ensure_tools(("nginx", "wrk"))
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tmp = tempfile.mkdtemp(prefix="bgab-")
    backend = start_backend(tmp, load.PROXY_CPU)
    green = None
    if any(WEIGHTS.values()) or GREEN:
        os.makedirs(f"{tmp}/green")
        green = start_backend(f"{tmp}/green", load.PROXY_CPU)
    procs = {}
    for side, keys in SIDES.items():
        port, control = free_port(), free_port()
        green_port = green or free_port()
        app = APPS[side].replace("{blue}", str(backend)).replace("{green}", str(green_port))
        bgproxy_toml(f"{tmp}/{side}.toml", port, control, f"{tmp}/{side}-state/state.json", backend,
                     green_port, 'path = "/health"\ninterval = "1s"', keys.replace(";", "\n"), app)
        p = start([BINS[side], "--config", f"{tmp}/{side}.toml"], f"{tmp}/{side}.log", load.PROXY_CPU,
                  ENVS[side])
        wait_http(port)
        if WEIGHTS[side]:
            set_weight(control, WEIGHTS[side])
        elif GREEN:
            wait_green(control)
        procs[side] = (port, p.pid)
        load.wrk(port, 2)  # warm-up

    results = {side: [] for side in SIDES}
    for r in range(ROUNDS):
        for side, (port, pid) in procs.items():
            before = load.cpu_ticks([pid])
            rps, reqs, p50, p99, errors, non2xx = load.wrk(port, DURATION)
            ticks = load.cpu_ticks([pid]) - before
            if errors or non2xx:
                raise SystemExit(f"{side}: wrk saw errors ({errors}) or {non2xx} non-2xx responses")
            cpu_us = ticks / load.TICK * 1e6 / reqs
            results[side].append((rps, p50, p99, cpu_us))
            load.log(f"round {r + 1} {side}: {rps:.0f} req/s p50 {p50:.2f}ms p99 {p99:.2f}ms {cpu_us:.1f}us/req")

    idle = {}
    for side, (port, pid) in procs.items():
        if IDLE_CONNS:
            base = load.status_kb([pid], "VmRSS")
            loaded = load.idle_rss(port, [pid], IDLE_CONNS) * 1024
            idle[side] = (loaded - base) / IDLE_CONNS

    def med(side, i):
        vals = [row[i] for row in results[side]]
        return statistics.median(vals), min(vals), max(vals)

    def label(side):
        return " ".join(filter(None, [os.environ.get(f"{side}_BIN", ""), SIDES[side],
                                      os.environ.get(f"{side}_ENV", ""),
                                      os.environ.get(f"{side}_APP", ""),
                                      WEIGHTS[side] and f"green {WEIGHTS[side]}%"])) or "(defaults)"

    print(f"A: `{label('A')}`  B: `{label('B')}`; "
          f"{ROUNDS} alternating rounds of wrk -t1 -c{load.CONNECTIONS} -d{DURATION}s\n")
    print("| figure | A | B | B / A |")
    print("|---|---|---|---|")
    for name, i, digits in (("req/s", 0, 0), ("p50 ms", 1, 2), ("p99 ms", 2, 2), ("CPU us/req", 3, 1)):
        (ma, lo_a, hi_a), (mb, lo_b, hi_b) = med("A", i), med("B", i)
        print(f"| {name} | {ma:.{digits}f} [{lo_a:.{digits}f}-{hi_a:.{digits}f}] "
              f"| {mb:.{digits}f} [{lo_b:.{digits}f}-{hi_b:.{digits}f}] | {mb / ma:.2f} |")
    if idle:
        print(f"| KB per idle keep-alive connection ({IDLE_CONNS}) | {idle['A']:.1f} | {idle['B']:.1f} "
              f"| {idle['B'] / idle['A']:.2f} |")


if __name__ == "__main__":
    run(main)
