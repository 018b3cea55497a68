"""Helpers shared by the whole-system benchmarks (load.py, cutover.py):
ports, processes that are always stopped, Debian tools, HAProxy configs."""

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BGPROXY = os.environ.get("BGPROXY_BIN", os.path.join(ROOT, "target/release/bgproxy"))
PROCS = []
# Reference proxies built from benches/src/bin (name, binary beside BGPROXY):
# pingora-proxy with no features, and pingora's HTTP/1 pieces without it.
REFERENCES = (("pingora (bare)", "bare_pingora"), ("lean HTTP/1 loop", "lean_h1"))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start(cmd, logfile, cpu=None, env=None):
    """Starts a process (pinned to `cpu` with taskset when given, with `env`
    added to the environment); it is stopped when the benchmark ends,
    whatever happens."""
    if cpu is not None:
        cmd = ["taskset", "-c", cpu, *cmd]
    p = subprocess.Popen(cmd, stdout=open(logfile, "w"), stderr=subprocess.STDOUT,
                         env=dict(os.environ, **(env or {})))
    PROCS.append(p)
    return p


def wait_http(port, deadline=20):
    """Waits until GET / on 127.0.0.1:port answers 200 (or exits)."""
    end = time.time() + deadline
    while time.time() < end:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.1)
    raise SystemExit(f"nothing answers on 127.0.0.1:{port}")


def start_backend(tmp, cpu=None):
    """Starts the one backend every benchmark proxies to: nginx, one worker,
    `return 200 "ok"`, keep-alive without a request limit. Returns its port."""
    port = free_port()
    with open(f"{tmp}/backend.conf", "w") as f:
        f.write(f"""worker_processes 1; pid {tmp}/backend.pid; error_log {tmp}/backend.err;
events {{ worker_connections 16000; }}
http {{ access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{port} reuseport backlog=4096;
    location / {{ return 200 "ok\\n"; }} }} }}
""")
    start(["nginx", "-c", f"{tmp}/backend.conf", "-g", "daemon off;"], f"{tmp}/backend.log", cpu)
    wait_http(port)
    return port


def ensure_tools(tools=("haproxy", "nginx", "wrk")):
    """Installs missing tools from Debian, keeping their services from starting."""
    missing = [t for t in tools if not shutil.which(t)]
    if not missing:
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    policy = "/usr/sbin/policy-rc.d"
    with open(policy, "w") as f:
        f.write("#!/bin/sh\nexit 101\n")
    os.chmod(policy, 0o755)
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env,
                       stdout=subprocess.DEVNULL)
    finally:
        os.remove(policy)


def bgproxy_toml(path, port, control, state, blue, green, health, proxy_keys="", app_tail="", access=False):
    """Writes a one-thread bgproxy config with one app "bench" (blue and
    green upstream ports, the `[app.health]` lines given, then `app_tail`:
    more tables of the app such as `[app.rollout]`) to `path`; the access
    log off unless `access`."""
    if "max_connections_per_ip" not in proxy_keys:
        # The default (1,000 from one address) would refuse the benchmarks'
        # idle connections, which all come from 127.0.0.1.
        proxy_keys = f"max_connections_per_ip = 20000\n{proxy_keys}"
    with open(path, "w") as f:
        f.write(f"""[proxy]
listen = ["127.0.0.1:{port}"]
threads = 1
grace_period = "1s"
{proxy_keys}
[control]
listen = "127.0.0.1:{control}"
nice = -10
[state]
path = "{state}"
[log]
access = {"true" if access else "false"}
[[app]]
name = "bench"
[app.health]
{health}
[app.blue]
upstreams = ["127.0.0.1:{blue}"]
[app.green]
upstreams = ["127.0.0.1:{green}"]
{app_tail}
""")


def haproxy_cfg(port, servers, extra_global=""):
    """A one-thread HAProxy config with upstream keep-alive; `servers` are
    the lines of the backend."""
    lines = "\n".join(f"  {s}" for s in servers)
    return f"""global
  nbthread 1
{extra_global}defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:{port}
  # What bgproxy adds to every request, so the work compared is the same.
  option forwardfor
  http-request set-header X-Forwarded-Proto http
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  default_backend be
backend be
{lines}
"""


def nginx_proxy_cfg(tmp, port, backend, head=""):
    """A one-worker nginx reverse proxy to `backend` with upstream
    keep-alive, forwarding the client's Host and adding the X-Forwarded-*
    headers bgproxy adds; `head` goes first (e.g. "master_process off;")."""
    return f"""{head}worker_processes 1; pid {tmp}/nginx.pid; error_log {tmp}/nginx.err;
worker_rlimit_nofile 20000;
events {{ worker_connections 16000; }}
http {{ access_log off; keepalive_requests 1000000;
  upstream be {{ server 127.0.0.1:{backend}; keepalive 64; }}
  server {{ listen 127.0.0.1:{port} backlog=4096;
    location / {{ proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $http_host; }} }} }}
"""


def run(main):
    """Runs `main`, then stops every process it started."""
    try:
        main()
    finally:
        for p in PROCS:
            try:
                p.send_signal(signal.SIGTERM)
            except Exception:
                pass
        time.sleep(0.5)
        for p in PROCS:
            try:
                p.kill()
            except Exception:
                pass
