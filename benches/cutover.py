#!/usr/bin/env python3
"""How do switches behave under load: are requests lost, how long does a
switch take to be answered (including bgproxy's fsync), and how soon after
the answer does traffic reach the new color? bgproxy's control API against
HAProxy's runtime API and a HAProxy reload (-sf), on this machine.

Two nginx backends answer "blue" and "green". Under `wrk -t1 -c50` load,
SWITCHES switches alternate the live color from one persistent client. For
each switch: the time until the switch is answered, and the time from the
answer until a fresh request through the proxy gets the new color. At the
end, wrk's socket errors and non-2xx responses are the failed requests.
bgproxy's three slowest switches are split, from its control thread's
/proc schedstat, into time on a CPU, time runnable but waiting for a CPU,
and the rest (blocked: the disk, a lock): where a stall came from. The
reading after the answer may include some of the audit line bgproxy writes
right after answering, so the parts can add up to a little more.

Run (repo root, after `cargo build --release`): python3 benches/cutover.py
Environment: SWITCHES (200), BGPROXY_BIN (target/release/bgproxy), ONLY
(e.g. "bgproxy": skip the HAProxy runs, for quick A/B of bgproxy changes),
CLIENT_NICE (0: the nice value of the switching client while it measures;
-10 puts it level with bgproxy's control thread, so that its own wake-up
under the saturating load is not counted as the API's latency).
Installs haproxy, nginx and wrk from Debian if missing. Loopback only.
"""

import http.client
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import tempfile
import time

from benchlib import BGPROXY, bgproxy_toml, ensure_tools, free_port, haproxy_cfg, run, start

SWITCHES = int(os.environ.get("SWITCHES", "200"))
ONLY = os.environ.get("ONLY", "")
CLIENT_NICE = int(os.environ.get("CLIENT_NICE", "0"))


def color_at(conn):
    conn.request("GET", "/")
    r = conn.getresponse()
    return r.read().decode().strip()


def wait_color(port, want, deadline=10):
    end = time.time() + deadline
    while time.time() < end:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            if color_at(c) == want:
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise SystemExit(f"{want} never served on {port}")


def wrk(port, seconds):
    return subprocess.Popen(["wrk", "-t1", "-c50", f"-d{seconds}s", f"http://127.0.0.1:{port}/"],
                            stdout=subprocess.PIPE, text=True)


def disk_floor(port, directory, size):
    """Under the same wrk load and at bgproxy's control-thread priority (nice
    -10), times what a durable state write costs on this disk by itself, in
    two ways taking turns: bgproxy's protocol (rewrite a recycled scratch
    file of `size` bytes, fdatasync, link the current file as .prev, rename
    over, fsync the directory) and the textbook one bgproxy used before (a
    new temp file each time, fsync, rename, fsync the directory).
    Returns {name: (p50, p99)} in ms."""
    load = wrk(port, max(10, SWITCHES // 10 + 5))
    os.setpriority(os.PRIO_PROCESS, 0, -10)
    time.sleep(1)
    data, times = b"x" * size, {"recycled": [], "new file": []}

    def sync_dir():
        fd = os.open(directory, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)

    def recycled():
        fd = os.open(f"{directory}/r.tmp", os.O_WRONLY | os.O_CREAT)
        os.pwrite(fd, data, 0)
        os.fdatasync(fd)
        os.close(fd)
        if os.path.exists(f"{directory}/r.json"):
            if os.path.exists(f"{directory}/r.prev"):
                os.link(f"{directory}/r.prev", f"{directory}/r.spare")
            os.link(f"{directory}/r.json", f"{directory}/r.prev.tmp")
            os.rename(f"{directory}/r.prev.tmp", f"{directory}/r.prev")
        os.rename(f"{directory}/r.tmp", f"{directory}/r.json")
        sync_dir()
        if os.path.exists(f"{directory}/r.spare"):
            os.rename(f"{directory}/r.spare", f"{directory}/r.tmp")

    def new_file():
        with open(f"{directory}/n.tmp", "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(f"{directory}/n.tmp", f"{directory}/n.json")
        sync_dir()

    for _ in range(SWITCHES):
        for name, write in (("recycled", recycled), ("new file", new_file)):
            t0 = time.perf_counter()
            write()
            times[name].append((time.perf_counter() - t0) * 1000)
            time.sleep(0.02)
    os.setpriority(os.PRIO_PROCESS, 0, 0)
    load.communicate()
    return {k: (statistics.median(v), statistics.quantiles(v, n=100)[98]) for k, v in times.items()}


def control_threads(pid):
    """The schedstat files of bgproxy's control API thread(s)."""
    found = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            if f.read().strip() == "control api":
                found.append(f"/proc/{pid}/task/{tid}/schedstat")
    return found


def sched_ms(files):
    """(ms on a CPU, ms runnable but waiting for one) of these threads so far."""
    on_cpu = waiting = 0
    for path in files:
        with open(path) as f:
            cpu, wait, _ = f.read().split()
        on_cpu, waiting = on_cpu + int(cpu) / 1e6, waiting + int(wait) / 1e6
    return on_cpu, waiting


def failed(out):
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    total = re.search(r"(\d+) requests in", out)
    n = sum(int(x) for x in errors.groups()) if errors else 0
    return n + (int(non2xx.group(1)) if non2xx else 0), int(total.group(1)) if total else 0


def measure(name, port, switch, first, sched=None, spent=None):
    """`switch(color)` performs one switch and returns when it is answered.
    `sched()`, if given, is read just before and just after each switch,
    outside the timing, and the pairs are appended to `spent`."""
    probe = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    load = wrk(port, max(10, SWITCHES // 10 + 5))
    os.setpriority(os.PRIO_PROCESS, 0, CLIENT_NICE)
    time.sleep(1)
    answer_ms, visible_ms, stale = [], [], 0
    color = first
    for _ in range(SWITCHES):
        color = "green" if color == "blue" else "blue"
        before = sched() if sched else None
        t0 = time.perf_counter()
        switch(color)
        t1 = time.perf_counter()
        if sched:
            spent.append((before, sched()))
        while True:
            try:
                got = color_at(probe)
            except Exception:
                probe = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                continue
            if got == color:
                break
            stale += 1
        visible_ms.append((time.perf_counter() - t1) * 1000)
        answer_ms.append((t1 - t0) * 1000)
        time.sleep(0.02)
    os.setpriority(os.PRIO_PROCESS, 0, 0)
    out = load.communicate()[0]
    fails, total = failed(out)
    q = statistics.quantiles(answer_ms, n=100)
    v = statistics.quantiles(visible_ms, n=100)
    return (f"| {name} | {fails} of {total} | {statistics.median(answer_ms):.2f} | {q[98]:.2f} | "
            f"{statistics.median(visible_ms):.2f} | {v[98]:.2f} | {stale} |")


def main():
    ensure_tools()
    tmp = tempfile.mkdtemp(prefix="bgcutover-")
    ports = {}
    for c in ("blue", "green"):
        ports[c] = free_port()
        with open(f"{tmp}/{c}.conf", "w") as f:
            f.write(f"""worker_processes 1; pid {tmp}/{c}.pid; error_log {tmp}/{c}.err;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{ports[c]}; location / {{ return 200 "{c}\\n"; }} }} }}
""")
        start(["nginx", "-c", f"{tmp}/{c}.conf", "-g", "daemon off;"], f"{tmp}/{c}.log")
        wait_color(ports[c], c)
    rows = []

    # bgproxy: POST /v1/apps/bench/switch from one persistent connection.
    port, control = free_port(), free_port()
    bgproxy_toml(f"{tmp}/bgproxy.toml", port, control, f"{tmp}/state/state.json", ports["blue"],
                 ports["green"], 'interval = "200ms"\nrise = 1\npath = "/"')
    bg = start([BGPROXY, "--config", f"{tmp}/bgproxy.toml"], f"{tmp}/bgproxy.log")
    wait_color(port, "blue")
    time.sleep(1)
    api = socket.create_connection(("127.0.0.1", control), timeout=5)
    api.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    threads = control_threads(bg.pid)

    def bg_switch(color):
        # A raw socket, like the HAProxy runtime API client below: Python's
        # http.client spends ~0.2 ms of CPU per answer, long enough to be
        # preempted for a scheduler tick on this saturated machine, which
        # measured the client rather than the API.
        body = json.dumps({"to": color}).encode()
        api.sendall(b"POST /v1/apps/bench/switch HTTP/1.1\r\nHost: bench\r\n"
                    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(body), body))
        data = b""
        while b"\r\n\r\n" not in data:
            data += api.recv(65536)
        head, _, answer = data.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))
        while len(answer) < length:
            answer += api.recv(65536)
        if not head.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"switch failed: {head!r} {answer!r}")
        inside.append(json.loads(answer)["duration_ms"])
    inside, spent = [], []
    rows.append(measure("bgproxy control API (fsync'd)", port, bg_switch, "blue",
                        lambda: sched_ms(threads), spent))
    split = [(own, a[0] - b[0], a[1] - b[1]) for own, (b, a) in zip(inside, spent)]
    size = os.path.getsize(f"{tmp}/state/state.json")
    floor = disk_floor(port, f"{tmp}/state", size)
    bg.send_signal(signal.SIGTERM)
    q = statistics.quantiles(inside, n=100)
    notes = [f"bgproxy's own time per switch (duration_ms in the answer: lock, gates, "
             f"durable state write, publish): p50 {statistics.median(inside):.2f} ms, "
             f"p99 {q[98]:.2f} ms.",
             "Its three slowest switches, from the control thread's schedstat (ms): " +
             "; ".join(f"{own:.2f} = on a CPU {cpu:.2f} + waiting for a CPU {wait:.2f} + "
                       f"blocked (disk, locks) {max(0.0, own - cpu - wait):.2f}"
                       for own, cpu, wait in sorted(split, reverse=True)[:3]) + ".",
             f"The disk alone under the same load, at nice -10, without bgproxy (the state's "
             f"{size} bytes): bgproxy's protocol (recycled scratch file) p50 "
             f"{floor['recycled'][0]:.2f} ms, p99 {floor['recycled'][1]:.2f} ms; a new temp file "
             f"each time p50 {floor['new file'][0]:.2f} ms, p99 {floor['new file'][1]:.2f} ms."]
    if ONLY == "bgproxy":
        return report(rows, notes)

    # HAProxy runtime API: both servers in one backend, one in maintenance.
    port, sock = free_port(), f"{tmp}/haproxy.sock"
    with open(f"{tmp}/haproxy.cfg", "w") as f:
        f.write(haproxy_cfg(port, [f"server blue 127.0.0.1:{ports['blue']} check inter 1s",
                                   f"server green 127.0.0.1:{ports['green']} check inter 1s disabled"],
                            f"  stats socket {sock} level admin\n"))
    hp = start(["haproxy", "-f", f"{tmp}/haproxy.cfg", "-db"], f"{tmp}/haproxy.log")
    wait_color(port, "blue")

    def runtime(cmd):
        s = socket.socket(socket.AF_UNIX)
        s.connect(sock)
        s.sendall(cmd.encode() + b"\n")
        while s.recv(4096):
            pass
        s.close()

    def hp_switch(color):
        other = "green" if color == "blue" else "blue"
        runtime(f"enable server be/{color}; disable server be/{other}")
    rows.append(measure("HAProxy runtime API", port, hp_switch, "blue"))
    hp.send_signal(signal.SIGTERM)
    hp.wait()

    # HAProxy reload: a config per color, a new process with -sf old.
    port = free_port()
    for c in ("blue", "green"):
        with open(f"{tmp}/reload-{c}.cfg", "w") as f:
            f.write(haproxy_cfg(port, [f"server only 127.0.0.1:{ports[c]}"]))
    current = [start(["haproxy", "-f", f"{tmp}/reload-blue.cfg", "-db"], f"{tmp}/reload.log")]
    wait_color(port, "blue")

    def reload(color):
        old = current[0]
        new = start(["haproxy", "-f", f"{tmp}/reload-{color}.cfg", "-db", "-sf", str(old.pid)],
                    f"{tmp}/reload-{color}.log")
        current[0] = new
        # "Answered" = the new process is running (haproxy -sf has no answer).
        old.wait()
    rows.append(measure("HAProxy reload (-sf)", port, reload, "blue"))
    report(rows, notes)


def report(rows, notes):
    print(f"Command: `SWITCHES={SWITCHES} python3 benches/cutover.py`\n")
    print("| switching by | failed requests | switch answered p50 ms | p99 ms | "
          "answer to new color p50 ms | p99 ms | stale responses after the answer |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(r)
    print()
    for n in notes:
        print(n)


run(main)
