#!/usr/bin/env python3
"""Where does a running proxy's time go, per thread, under load? For each
thread of PID: voluntary and involuntary context switches and CPU ticks
during one wrk run, plus the requests wrk counted. It answers "does the
worker sleep and wake per request, or is it preempted?" (the kernel
scheduling share of the profile) without hardware counters.

Run against any proxy already serving URL:
    python3 benches/threads.py PID http://127.0.0.1:PORT/ [SECONDS]
wrk is pinned to CPU 1 when taskset exists (as in load.py). Loopback only.
"""

import os
import re
import shutil
import subprocess
import sys


def snapshot(pid):
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        base = f"/proc/{pid}/task/{tid}"
        try:
            comm = open(f"{base}/comm").read().strip()
            status = open(f"{base}/status").read()
            stat = open(f"{base}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended
        vol = int(re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.M).group(1))
        invol = int(re.search(r"^nonvoluntary_ctxt_switches:\s+(\d+)", status, re.M).group(1))
        out[tid] = (comm, vol, invol, int(stat[11]) + int(stat[12]))
    return out


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    pid, url = int(sys.argv[1]), sys.argv[2]
    seconds = sys.argv[3] if len(sys.argv) > 3 else "5"
    cmd = ["wrk", "-t1", "-c50", f"-d{seconds}s", url]
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        cmd = ["taskset", "-c", "1", *cmd]
    before = snapshot(pid)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    after = snapshot(pid)
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    print(f"{requests} requests; per thread during the run:\n")
    print("| thread | voluntary switches | involuntary switches | per request (vol + invol) | CPU ticks |")
    print("|---|---|---|---|---|")
    for tid, (comm, vol, invol, ticks) in sorted(before.items()):
        if tid not in after:
            continue
        dv, di, dt = after[tid][1] - vol, after[tid][2] - invol, after[tid][3] - ticks
        if dv or di or dt:
            print(f"| {comm} | {dv} | {di} | {(dv + di) / requests:.3f} | {dt} |")


main()
