#!/usr/bin/env python3
"""The driver behind bench/run: starts sigma and its peers, drives them with
the same load, prints the table and writes BENCHMARKS.md.

Servers run on core 0 (`taskset -c 0`), load generators on core 1, so every
server gets the same CPU budget: one core, one worker (scenario 11's
2-worker servers excepted: they and their load share cores 0-1). Each
(scenario, server) pair gets a freshly started server, so its peak RSS
(VmHWM) is that scenario's. Standard library only.

Scenarios (DESIGN §10, issue 4):
  1  HTTP keep-alive, GET /echo, 64 connections          sigma, nginx, axum
  2  the same, 16 requests pipelined per connection       sigma, nginx, axum
  3  WebSocket echo, 64-byte messages, 100 connections    sigma, tokio-tungstenite
  4  10 000 idle WebSockets: RSS per connection           sigma, tokio-tungstenite
  5  slowhttptest (2 000 slow headers + 500 slow bodies)
     while wrk measures a well-behaved client             sigma, nginx
  6  &broadcast fan-out: 10 000 subscribers on one
     channel, one publisher at a fixed rate               sigma, ws-fanout
  7  signed world messages through /ws (DESIGN §5):
     100 worlds, 8 messages in flight each, signatures
     batch-verified per read, to &echo                    sigma (vs its scenario 3)
  8  HTTPS keep-alive over TLS 1.3 (DESIGN §2a), GET /echo,
     64 connections, same certificate and cipher          sigma [SHA], nginx ssl
  9  new TLS handshakes per second: one request per
     connection (Connection: close), 16 connections       sigma [SHA], nginx ssl
 10  scenario 6 on a cluster (DESIGN §7): the subscribers
     split over two nodes sharing PostgreSQL and Redis,
     against one node on the same PostgreSQL and Redis   sigma ×2 vs sigma ×1
 11  multi-core scaling: scenario 1's keep-alive load
     with 1 worker (core 0, load on core 1) and with 2
     workers (cores 0-1, shared with the load); then
     scenario 6's fan-out load with 1 and 2 workers       sigma 1 and 2 workers, nginx 2
                                                          workers, ws-fanout 2 threads
 12  the highest publish rate of scenario 6's fan-out
     that still delivers 99.9 % with p99 under 100 ms
     (doubling from 50/s, then bisecting; a fresh
     server per probe)                                    sigma, ws-fanout
 13  permessage-deflate (`[websocket] compression =
     true`, `sigma-load --deflate`): scenario 3's echo
     with 256-byte JSON-like text, compressed vs not;
     scenario 4's idle WebSockets, compressed vs not      sigma (compressed vs plain)

--rounds repeats scenarios 1-3, 5, 7-9, 11 (keep-alive) and 13 (echo),
servers alternating; the median is shown (scenario 5: the median round by
kept share, its target checked on every round).
"""

import argparse
import bisect
import datetime
import json
import os
import platform
import re
import resource
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import ssl
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
SIGMA = ROOT / "target/release/sigma"
LOAD = ROOT / "target/release/sigma-load"
PEERS = BENCH / "peers/target/release"
LUA = BENCH / "wrk/pipeline.lua"
SERVER_CPU = "0"
LOAD_CPU = "1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Both cores: for servers with more than one worker (scenario 11), and
# their load generators, which then share them.
SHARED_CPUS = f"{SERVER_CPU},{LOAD_CPU}"
# The scheduling prefix (chrt / nice, per --sched) of every pinned command,
# and the command prefixes that pin (and, as root, prioritise) servers and
# load generators; set in main().
PRIO = []
SERVER_PIN = ["taskset", "-c", SERVER_CPU]
LOAD_PIN = ["taskset", "-c", LOAD_CPU]


def pinned(cpus):
    """The prefix that runs a command on `cpus` with the bench's scheduling."""
    return PRIO + ["taskset", "-c", cpus]

# sigma refuses to start on SIGMA_* variables it does not know; the bench
# runs every server with none at all, so every limit is at its default.
ENV = {k: v for k, v in os.environ.items() if not k.startswith("SIGMA_")}

COMMANDS = []  # (scenario, server, argv) of every load and server command


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def record(scenario, server, argv):
    COMMANDS.append((scenario, server, " ".join(shlex.quote(str(a)) for a in argv)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])  # kB
    except (OSError, ValueError, IndexError):
        pass
    return 0


def proc_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime
    except (OSError, ValueError, IndexError):
        return 0


def children(pid):
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


class Server:
    """One server process (and its children, for nginx's workers)."""

    def __init__(self, name, argv, port, workdir):
        self.name, self.argv, self.port, self.workdir = name, argv, port, workdir
        self.proc = None
        self.before = None  # argv to run before starting (sigma: add the bench user)
        self.login = False  # log in after starting (sigma) for a real session cookie
        # Every client request carries a session cookie: sigma's `A` looks
        # it up (DESIGN §10: H → A(session lookup) → route); the peers get
        # one of the same size, which they ignore.
        self.cookie = "sigma_session=" + "x" * 43
        self.scheme = "http"
        self.pin = None  # CPU pinning prefix; None: SERVER_PIN (core 0)

    def start(self, scenario):
        if self.before:
            record(scenario, self.name, self.before[0] + ["<<<", self.before[1]])
            subprocess.run([str(a) for a in self.before[0]], input=self.before[1] + "\n",
                           text=True, env=ENV, check=True, capture_output=True)
        argv = (self.pin or SERVER_PIN) + [str(a) for a in self.argv]
        record(scenario, self.name, argv)
        self.log = open(self.workdir / f"{self.name}-{scenario}.log", "w")
        self.proc = subprocess.Popen(
            argv, stdout=self.log, stderr=subprocess.STDOUT, env=ENV,
            cwd=self.workdir, start_new_session=True)
        deadline = time.time() + 15
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; "
                                   f"see {self.log.name}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                time.sleep(0.3)  # let it settle (nginx forks its worker)
                if self.login:
                    self.cookie = sigma_login(self.port, self.scheme)
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not listen on {self.port} within 15 s")

    def pids(self):
        pids, todo = [], [self.proc.pid]
        while todo:
            p = todo.pop()
            pids.append(p)
            todo += children(p)
        return pids

    def rss_kib(self):
        return sum(proc_status(p, "VmRSS") for p in self.pids())

    def hwm_kib(self):
        return sum(proc_status(p, "VmHWM") for p in self.pids())

    def ticks(self):
        return sum(proc_ticks(p) for p in self.pids())

    def stop(self):
        if self.proc is None:
            return
        pids = self.pids()
        try:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
            self.proc.wait()
        self.log.close()
        self.proc = None


BENCH_USER, BENCH_PASSWORD = "bench", "bench-password-not-secret"


def sigma_login(port, scheme="http"):
    """`POST /login` as the bench user; returns `sigma_session=ID`."""
    body = json.dumps({"user": BENCH_USER, "password": BENCH_PASSWORD}).encode()
    req = urllib.request.Request(f"{scheme}://127.0.0.1:{port}/login", data=body,
                                 headers={"Content-Type": "application/json"})
    # The bench's own self-signed certificate (scenarios 8, 9).
    ctx = ssl._create_unverified_context()
    cookie = None
    with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
        for v in resp.headers.get_all("Set-Cookie") or []:
            m = re.match(r"(sigma_session=[^;]+)", v)
            if m:
                cookie = m.group(1)
    if not cookie:
        raise RuntimeError("sigma's /login set no sigma_session cookie")
    req = urllib.request.Request(f"{scheme}://127.0.0.1:{port}/auth/whoami",
                                 headers={"Cookie": cookie})
    with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
        who = json.loads(resp.read())
    if who.get("user") != BENCH_USER:
        raise RuntimeError(f"the session cookie does not log in: /auth/whoami said {who}")
    return cookie


def make_servers(workdir):
    """The servers by name; ports are fresh for every run. `sigma`, `nginx`
    and `ws-fanout` take `workers` (sigma `--workers`, nginx
    `worker_processes`, ws-fanout's tokio worker threads; default 1) and
    `cpus` (a `taskset -c` list; default the server core)."""
    user = os.environ.get("USER") or "root"
    tmpl = (BENCH / "nginx.conf.in").read_text()
    sigma_tmpl = (BENCH / "sigma.toml.in").read_text()

    def sigma(workers=1, cpus=None, compression=False):
        port = free_port()
        data = workdir / f"sigma-data-{port}"
        cfg = workdir / f"sigma-{port}.toml"
        text = sigma_tmpl.replace("@DATA@", str(data))
        if compression:
            # permessage-deflate (RFC 7692; off by default), `sigma-deflate`.
            text += "\n[websocket]\ncompression = true\n"
        cfg.write_text(text)
        name = "sigma-deflate" if compression else "sigma"
        s = Server(name, [SIGMA, "serve", "--config", cfg, "--pipeline",
                          f"T127.0.0.1:{port}[HA]", "--workers", str(workers)], port, workdir)
        s.before = ([SIGMA, "user", "add", BENCH_USER, "--password-stdin", "--data", data],
                    BENCH_PASSWORD)
        s.login = True
        if cpus:
            s.pin = pinned(cpus)
        return s

    def nginx(workers=1, cpus=None):
        port = free_port()
        prefix = workdir / f"nginx-{port}"
        prefix.mkdir()
        conf = prefix / "nginx.conf"
        conf.write_text(tmpl.replace("@PREFIX@", str(prefix)).replace("@PORT@", str(port))
                        .replace("@WORKERS@", str(workers))
                        .replace("@USER@", f"user {user};" if os.geteuid() == 0 else ""))
        s = Server("nginx", ["nginx", "-p", prefix, "-c", conf, "-e", prefix / "error.log"],
                   port, workdir)
        if cpus:
            s.pin = pinned(cpus)
        return s

    def axum():
        port = free_port()
        return Server("axum", [PEERS / "axum-hello", f"127.0.0.1:{port}"], port, workdir)

    def tungstenite():
        port = free_port()
        return Server("tokio-tungstenite", [PEERS / "ws-echo", f"127.0.0.1:{port}"], port, workdir)

    def fanout(workers=1, cpus=None):
        port = free_port()
        s = Server("ws-fanout", [PEERS / "ws-fanout", f"127.0.0.1:{port}", str(workers)], port,
                   workdir)
        if cpus:
            s.pin = pinned(cpus)
        return s

    def tls_cert():
        """One ECDSA P-256 certificate for both TLS servers (made once)."""
        cert, key = workdir / "tls-cert.pem", workdir / "tls-key.pem"
        if not cert.exists():
            subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                            "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert,
                            "-days", "2", "-subj", "/CN=localhost", "-addext",
                            "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                           check=True, capture_output=True)
        return cert, key

    def sigma_tls():
        s = sigma()
        cert, key = tls_cert()
        cfg = Path(s.argv[3])
        cfg.write_text(cfg.read_text() + f'\n[tls]\ncert = "{cert}"\nkey = "{key}"\n')
        s.argv[5] = f"T127.0.0.1:{s.port}[SHA]"
        s.scheme = "https"
        s.name = "sigma"
        return s

    def nginx_tls():
        port = free_port()
        cert, key = tls_cert()
        prefix = workdir / f"nginx-tls-{port}"
        prefix.mkdir()
        conf = prefix / "nginx.conf"
        conf.write_text((BENCH / "nginx-tls.conf.in").read_text()
                        .replace("@PREFIX@", str(prefix)).replace("@PORT@", str(port))
                        .replace("@CERT@", str(cert)).replace("@KEY@", str(key))
                        .replace("@USER@", f"user {user};" if os.geteuid() == 0 else ""))
        s = Server("nginx", ["nginx", "-p", prefix, "-c", conf, "-e", prefix / "error.log"],
                   port, workdir)
        s.scheme = "https"
        return s

    def floor(driver):
        """The reference of scenario 1: `bench/peers/floor`, which counts
        request heads and answers each with a fixed 200 (no parsing)."""
        port = free_port()
        return Server(f"floor ({driver})", [PEERS / "floor", driver, f"127.0.0.1:{port}"],
                      port, workdir)

    return {"sigma": sigma, "nginx": nginx, "axum": axum, "tokio-tungstenite": tungstenite,
            "ws-fanout": fanout, "sigma-tls": sigma_tls, "nginx-tls": nginx_tls,
            "sigma-deflate": lambda: sigma(compression=True),
            "floor (epoll)": lambda: floor("epoll"),
            "floor (io_uring)": lambda: floor("io_uring")}


def run_load(scenario, server, argv, timeout, pin=None):
    """Runs a load generator to its end; the result has `load_cpu`, the CPU
    it used (user + system, percent of one core) over its whole run."""
    argv = (pin or LOAD_PIN) + [str(a) for a in argv]
    record(scenario, server, argv)
    u0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.time()
    p = subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=timeout)
    u1, t1 = resource.getrusage(resource.RUSAGE_CHILDREN), time.time()
    p.load_cpu = ((u1.ru_utime - u0.ru_utime) + (u1.ru_stime - u0.ru_stime)) \
        / max(t1 - t0, 1e-9) * 100
    return p


def wrk(scenario, server, srv, seconds, depth, connections=64, quiet=False, pin=None,
        close=False):
    extra = ["-H", "Connection: close"] if close else []
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
            "-H", f"Cookie: {srv.cookie}"] + extra + [
            "-s", LUA, f"{srv.scheme}://127.0.0.1:{srv.port}/echo", "--", str(depth)]
    if quiet:
        argv = (pin or LOAD_PIN) + [str(a) for a in argv]
        subprocess.run(argv, capture_output=True, env=ENV, timeout=seconds + 30)
        return None
    p = run_load(scenario, server, argv, seconds + 30, pin)
    m = re.search(r"^wrk-json (\{.*\})$", p.stdout, re.M)
    if not m:
        raise RuntimeError(f"wrk printed no result:\n{p.stdout}\n{p.stderr}")
    r = json.loads(m.group(1))
    r["rate"] = r["requests"] / (r["duration_us"] / 1e6)
    r["errors_total"] = sum(r["errors"].values())
    r["load_cpu"] = p.load_cpu
    return r


def run_sigma_load(scenario, server, argv, seconds, warmup, quiet):
    """Runs sigma-load with `--json` (`quiet`: a warm-up run, nothing
    kept) and returns its result with `rate` and `errors_total`."""
    if quiet:
        subprocess.run(LOAD_PIN + [str(a) for a in argv],
                       capture_output=True, env=ENV, timeout=seconds + warmup + 60)
        return None
    p = run_load(scenario, server, argv, seconds + warmup + 60)
    line = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ""
    try:
        r = json.loads(line)
    except json.JSONDecodeError:
        raise RuntimeError(f"sigma-load {' '.join(map(str, argv[1:]))} failed:\n"
                           f"{p.stdout}\n{p.stderr}")
    r["rate"] = r["msgs_per_s"]
    r["errors_total"] = r["errors"] + r["connect_errors"] + r["bad_replies"]
    r["load_cpu"] = p.load_cpu
    return r


def sigma_load_echo(scenario, server, srv, seconds, warmup, quiet=False, size=64,
                    payload=(), deflate=False):
    """`payload`: extra echo options (e.g. `--json-payload`);
    `deflate`: `--deflate` (permessage-deflate, every message compressed)."""
    argv = [LOAD, "--json"] + (["--deflate"] if deflate else []) + [
            "-H", f"Cookie: {srv.cookie}", "echo", "--url",
            f"ws://127.0.0.1:{srv.port}/echo", "-c", "100",
            "-s", str(size), *payload, "--in-flight", "1", "-d", f"{seconds}s",
            "-w", f"{warmup}s"]
    return run_sigma_load(scenario, server, argv, seconds, warmup, quiet)


def sigma_load_world(scenario, server, srv, seconds, warmup, quiet=False):
    """Scenario 7: sigma-load's world mode (one world per connection)."""
    argv = [LOAD, "--json", "-H", f"Cookie: {srv.cookie}",
            "-H", f"Origin: http://127.0.0.1:{srv.port}", "world", "--url",
            f"ws://127.0.0.1:{srv.port}/ws", "-c", "100", "--in-flight", "8",
            "-d", f"{seconds}s", "-w", f"{warmup}s"]
    return run_sigma_load(scenario, server, argv, seconds, warmup, quiet)


def scenario_world(key, args, servers, workdir, perf):
    runs = []
    for rnd in range(args.rounds):
        s = servers["sigma"]()
        log(f"  [{key}] sigma (round {rnd + 1}/{args.rounds}) on :{s.port}")
        s.start(key)
        try:
            sigma_load_world(key, "sigma", s, args.warmup, 0, quiet=True)
            r = measure(s, lambda: sigma_load_world(key, "sigma", s, args.duration, 0),
                        perf, key, args.duration)
        finally:
            s.stop()
        runs.append(r)
    return {"sigma": median_run(runs)}


class Perf:
    """`perf record` of a server during a measured run (with --perf)."""

    def __init__(self, enabled, workdir):
        self.enabled, self.workdir, self.reports = enabled, workdir, {}

    def start(self, scenario, server, seconds):
        if not self.enabled or server.name != "sigma" or scenario not in ("1", "2", "3", "5-attack", "7"):
            return None
        out = self.workdir / f"perf-{scenario}.data"
        # Not real-time: a SCHED_FIFO perf spinning on the load core would
        # starve wrk (and its own children). Stopped with SIGINT in finish().
        argv = ["taskset", "-c", LOAD_CPU, "perf", "record", "-F", "1999", "-g", "-o", out,
                "-p", str(server.proc.pid)]
        return (scenario, out, subprocess.Popen([str(a) for a in argv],
                                                stdout=subprocess.DEVNULL,
                                                stderr=subprocess.DEVNULL))

    def finish(self, handle):
        if handle is None:
            return
        scenario, out, p = handle
        p.send_signal(signal.SIGINT)
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

        def report(*extra):
            rep = subprocess.run(["perf", "report", "-i", str(out), "--no-children", "--stdio",
                                  "-g", "none", *extra], capture_output=True, text=True)
            return [re.sub(r"\s+$", "", l) for l in rep.stdout.splitlines()
                    if re.match(r"\s+\d+\.\d+%", l)]

        self.reports[scenario] = (
            ["where the time goes (by binary):"] + report("--sort", "dso")[:5]
            + ["", "top symbols (kernel and user):"]
            + report("--sort", "dso,symbol", "--percent-limit", "1")[:15]
            + ["", "top symbols in user space (sigma, libc):"]
            + [l for l in report("--sort", "dso,symbol", "--percent-limit", "0.3")
               if "[kernel" not in l][:15])


def measure(server, fn, perf, scenario, seconds, tail=0):
    """Runs `fn` while watching the server's CPU time. `cpu` is the
    server's CPU use over the `seconds` that ended `tail` seconds before
    `fn` returned, the measured window (sampled every 0.1 s), so that a
    load generator's connect phase and warm-up (sigma-load pubsub opens
    thousands of subscribers first) and its grace period (`tail`) are not
    counted."""
    samples, done = [(time.time(), server.ticks())], threading.Event()

    def sample():
        while not done.wait(0.1):
            samples.append((time.time(), server.ticks()))

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    h = perf.start(scenario, server, seconds)
    try:
        r = fn()
    finally:
        done.set()
        watcher.join()
    samples.append((time.time(), server.ticks()))
    perf.finish(h)

    def at(t):
        return min(samples, key=lambda x: abs(x[0] - t))

    t1, c1 = at(samples[-1][0] - tail)
    t0, c0 = at(t1 - seconds)
    r["cpu"] = (c1 - c0) / CLK_TCK / max(t1 - t0, 1e-9) * 100
    r["hwm_kib"] = server.hwm_kib()
    return r


# Scenario 1's references, beside the peers: what the load generator and
# the loopback path allow when the server does (almost) nothing.
FLOORS = ["floor (epoll)", "floor (io_uring)"]


def slice_weight(r):
    """(responses or messages, seconds) of one measured slice."""
    secs = r["duration_us"] / 1e6 if "duration_us" in r else r.get("duration_s", 0)
    return r["rate"] * secs, secs


def mixed_quantile(parts, q):
    """The `q`-th percentile of the slices' latencies taken together: each
    slice reports its distribution as (percentile, µs) points
    (`quantiles_us`); the mixture's CDF is the count-weighted sum of the
    slices' CDFs (linear between points), and its inverse at `q` is
    found by bisection. 0 when no slice counted anything (as wrk reports
    an empty histogram)."""
    dists = [(slice_weight(r)[0], sorted((v, p) for p, v in r["quantiles_us"]))
             for r in parts]
    total = sum(n for n, _ in dists)
    if total <= 0:
        return 0.0

    def cdf(v):
        acc = 0.0
        for n, pts in dists:
            i = bisect.bisect_right(pts, (v, float("inf")))
            if i == 0:
                f = 0.0
            elif i == len(pts):
                f = 100.0
            else:
                (v0, p0), (v1, p1) = pts[i - 1], pts[i]
                f = p0 + (p1 - p0) * ((v - v0) / (v1 - v0) if v1 > v0 else 1.0)
            acc += n * f
        return acc / total

    lo = min(pts[0][0] for _, pts in dists)
    hi = max(pts[-1][0] for _, pts in dists)
    for _ in range(60):
        mid = (lo + hi) / 2
        if cdf(mid) < q:
            lo = mid
        else:
            hi = mid
    return hi


def combine_slices(parts):
    """One server's measurement from its slices: throughput over the sum
    of the slices' windows, errors summed, CPU time-weighted, peak RSS
    the highest, p50/p99 of all the slices' latencies together. The
    slices' own statistics (their other percentiles, their counts) stay
    only in `slices`, so that no field holds one slice's value as if it
    were the row's."""
    counts = [slice_weight(p) for p in parts]
    secs = sum(t for _, t in counts) or 1e-9
    r = {"rate": sum(n for n, _ in counts) / secs,
         "errors_total": sum(p["errors_total"] for p in parts),
         "hwm_kib": max(p["hwm_kib"] for p in parts),
         "p50_us": mixed_quantile(parts, 50), "p99_us": mixed_quantile(parts, 99),
         "slices": parts}
    for k in ("cpu", "load_cpu"):
        if all(p.get(k) is not None for p in parts):
            r[k] = sum(p[k] * t for p, (_, t) in zip(parts, counts)) / secs
    return r


def slicing(args):
    """(slices, seconds per slice) of the interleaved scenarios."""
    n = max(1, args.slices)
    return n, max(1, round(args.duration / n))


def interleaved(key, names, make, load, args, perf, optional=(), prepare=None):
    """The throughput scenarios' measurement. Each round starts every
    server of `names` at once (fresh, all on the server core; only the one
    under load works), warms each up, then measures `args.slices` slices
    of `duration ÷ slices` seconds per server, the servers taking turns
    (the order reversed every other slice), so that every server sees the
    same stretches of the machine's speed. `load(name, server, seconds,
    quiet)` runs the load generator; `make(name)` makes the server;
    `prepare(server)` (optional) returns extra fields for its result. A
    server in `optional` that cannot start leaves its row out. Returns
    each server's median round."""
    names = list(names)
    runs = {n: [] for n in names}
    n_slices, secs = slicing(args)
    for rnd in range(args.rounds):
        started = {}
        try:
            for name in list(names):
                s = make(name)
                log(f"  [{key}] {name} (round {rnd + 1}/{args.rounds}) on :{s.port}")
                try:
                    s.start(key)
                except RuntimeError as e:
                    # A reference that cannot run here (io_uring disabled
                    # by the kernel) leaves its row out; a server that
                    # cannot is an error.
                    if name not in optional:
                        raise
                    log(f"  [{key}] {name}: {e}; its row is left out")
                    names.remove(name)
                    runs.pop(name)
                    continue
                started[name] = s
            extra = {n: prepare(s) if prepare else {} for n, s in started.items()}
            for name, s in started.items():
                load(name, s, args.warmup, True)
            parts = {n: [] for n in started}
            order = list(started)
            for i in range(n_slices):
                for name in order if i % 2 == 0 else order[::-1]:
                    s = started[name]
                    parts[name].append(measure(s, lambda: load(name, s, secs, False),
                                               perf, key, secs))
            for name, p in parts.items():
                r = combine_slices(p)
                r.update(extra[name])
                runs[name].append(r)
        finally:
            for s in started.values():
                s.stop()
    return {n: median_run(v) for n, v in runs.items()}


def scenario_http(key, depth, args, servers, workdir, perf):
    names = ["sigma", "nginx", "axum"] + (FLOORS if key == "1" else [])
    return interleaved(key, names, lambda n: servers[n](),
                       lambda n, s, t, quiet: wrk(key, n, s, t, depth, quiet=quiet),
                       args, perf, optional=FLOORS)


def negotiated(port):
    """TLS version and cipher suite `openssl s_client` gets from `port`."""
    p = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}",
                        "-servername", "localhost"], input="", capture_output=True,
                       text=True, timeout=15)
    m = re.search(r"^New, (\S+), Cipher is (\S+)", p.stdout, re.M)
    return f"{m.group(1)} {m.group(2)}" if m else "unknown"


def scenario_tls(key, args, servers, workdir, perf, close):
    """8: keep-alive over TLS 1.3; 9 (`close`): one request per connection,
    so every request is a new handshake (handshakes/s). wrk offers each
    new connection the session ticket of its previous one, so with both
    servers these are TLS 1.3 resumptions (PSK with a fresh X25519 key
    exchange, no certificate): a packet capture shows the server's first
    flight 219 bytes (sigma) and 245 (nginx) instead of 718 and 787."""
    conns = 16 if close else 64
    # Close-per-request wrk at SCHED_FIFO livelocks its own core (it never
    # yields to the softirqs that finish its loopback connections: wrk
    # hangs, against sigma and nginx alike), so scenario 9 runs the load
    # generator at normal priority, still pinned to its core.
    pin = ["taskset", "-c", LOAD_CPU] if close else None
    makers = {"sigma": "sigma-tls", "nginx": "nginx-tls"}
    return interleaved(
        key, ["sigma", "nginx"], lambda n: servers[makers[n]](),
        lambda n, s, t, quiet: wrk(key, n, s, t, 1, conns, quiet=quiet, pin=pin, close=close),
        args, perf, prepare=lambda s: {"negotiated": negotiated(s.port)})


def scenario_ws_echo(key, args, servers, workdir, perf):
    return interleaved(key, ["sigma", "tokio-tungstenite"], lambda n: servers[n](),
                       lambda n, s, t, quiet: sigma_load_echo(key, n, s, t, 0, quiet=quiet),
                       args, perf)


def scenario_fanout(key, args, servers, workdir):
    """10 000 subscribers on one channel, one publisher at a fixed rate
    (open loop): deliveries/s, the share of expected deliveries that
    arrived, and the publish-to-delivery latency."""
    out = {}
    n, rate = args.fanout_subscribers, args.fanout_rate
    for name in ["sigma", "ws-fanout"]:
        out[name] = fanout_run(key, name, servers[name](), n, rate, args, workdir)
    return out


# sigma-load pubsub counts the deliveries of the publishes sent in the
# window, reading on this many seconds after it for the last ones.
PUBSUB_GRACE = 1


def fanout_run(key, name, s, n, rate, args, workdir, pin=None):
    """Starts `s`, runs scenario 6's load against it (`n` subscribers on one
    channel, one publisher at `rate` per second), stops it."""
    log(f"  [{key}] {name}: {n} subscribers, {rate:g} publishes/s on :{s.port}")
    s.start(key)
    try:
        argv = [LOAD, "--json", "-H", f"Cookie: {s.cookie}", "--connect-concurrency", "200",
                "pubsub", "--url", f"ws://127.0.0.1:{s.port}/broadcast",
                "--subscribers", str(n), "--publishers", "1", "--channels", "1",
                "--rate", f"{rate:g}", "-s", "64", "--subscribe-timeout", "60s",
                "--grace", f"{PUBSUB_GRACE}s", "-d", f"{args.duration}s",
                "-w", f"{args.warmup}s"]
        return measure(s, lambda: run_pubsub(key, name, argv, args, pin),
                       Perf(False, workdir), key, args.duration, tail=PUBSUB_GRACE)
    finally:
        s.stop()


def scenario_scaling(key, args, servers, workdir, perf):
    """11: multi-core scaling. Scenario 1's keep-alive load against sigma
    with 1 worker (scenario 1's layout: server on core 0, wrk on core 1),
    sigma with 2 workers and nginx with 2 workers (servers on cores 0-1,
    which wrk shares: the machine has 2 cores); `--rounds` rounds, servers
    alternating, median shown. Then scenario 6's fan-out load against sigma
    with 1 and 2 workers and ws-fanout with 2 worker threads (one run
    each, the 2-worker ones sharing cores 0-1 with sigma-load)."""
    shared = pinned(SHARED_CPUS)
    http = [("sigma, 1 worker", "sigma", 1), ("sigma, 2 workers", "sigma", 2),
            ("nginx, 2 workers", "nginx", 2)]
    runs = {label: [] for label, _, _ in http}
    for rnd in range(args.rounds):
        for label, make, workers in http:
            cpus = SHARED_CPUS if workers > 1 else None
            pin = shared if workers > 1 else None
            s = servers[make](workers=workers, cpus=cpus)
            log(f"  [{key}] {label} (round {rnd + 1}/{args.rounds}) on :{s.port}")
            s.start(key)
            try:
                wrk(key, label, s, args.warmup, 1, quiet=True, pin=pin)
                r = measure(s, lambda: wrk(key, label, s, args.duration, 1, pin=pin),
                            Perf(False, workdir), key, args.duration)
            finally:
                s.stop()
            r["workers"] = workers
            r["cpus"] = cpus or SERVER_CPU
            runs[label].append(r)
    out = {"http": {label: median_run(v) for label, v in runs.items()}, "fanout": {}}
    n, rate = args.fanout_subscribers, args.fanout_rate
    for label, make, workers in [("sigma, 1 worker", "sigma", 1),
                                 ("sigma, 2 workers", "sigma", 2),
                                 ("ws-fanout, 2 threads", "ws-fanout", 2)]:
        cpus = SHARED_CPUS if workers > 1 else None
        r = fanout_run(key, label, servers[make](workers=workers, cpus=cpus), n, rate, args,
                       workdir, pin=shared if workers > 1 else None)
        r["workers"] = workers
        r["cpus"] = cpus or SERVER_CPU
        out["fanout"][label] = r
    return out


# Scenario 12's pass mark (DESIGN §10) and search bounds.
FANOUT_DELIVERED = 0.999
FANOUT_P99_US = 100_000
FANOUT_START_RATE = 50
FANOUT_BISECT_STEPS = 3
FANOUT_MAX_PROBES = 10
FANOUT_MAX_RATE = 200_000


def fanout_passes(r):
    return r["delivered"] >= FANOUT_DELIVERED and 0 < r["p99_us"] < FANOUT_P99_US


def scenario_max_fanout(key, args, servers, workdir):
    """12: the highest publish rate at which scenario 6's fan-out still
    delivers 99.9 % with p99 under 100 ms, for sigma and ws-fanout. Starting
    at 50/s the rate doubles while a probe passes (halves while it fails),
    then bisects between the highest pass and the lowest failure for 3
    steps. Every probe is scenario 6's run (warm-up + duration) on a freshly
    started server, so a failed probe (dropped subscribers, a backlog)
    leaves nothing behind. At most 10 probes, and no new probe after
    15 × (warm-up + duration) seconds per server (3 minutes by default)."""
    n = args.fanout_subscribers
    budget = 15 * (args.warmup + args.duration)
    out = {}
    for name in ["sigma", "ws-fanout"]:
        probes = []  # (rate, passed, result)
        lo = hi = None  # highest passing rate, lowest failing rate
        rate, bisects, t0, stop = FANOUT_START_RATE, 0, time.time(), ""
        while True:
            r = fanout_run(key, name, servers[name](), n, rate, args, workdir)
            ok = fanout_passes(r)
            log(f"    {rate}/s: {r['delivered'] * 100:.2f} % delivered, p99 "
                f"{fmt_us(r['p99_us'])}: {'pass' if ok else 'fail'}")
            probes.append((rate, ok, r))
            if ok:
                lo = rate if lo is None else max(lo, rate)
            else:
                hi = rate if hi is None else min(hi, rate)
            if lo is not None and hi is not None:
                nxt = (lo + hi) // 2
                if bisects >= FANOUT_BISECT_STEPS or nxt in (lo, hi):
                    stop = "bisected"
                    break
                bisects += 1
            elif hi is None:
                nxt = rate * 2
                if nxt > FANOUT_MAX_RATE:
                    stop = f"no failure up to the cap of {FANOUT_MAX_RATE}/s"
                    break
            else:
                nxt = rate // 2
                if nxt < 1:
                    stop = "failed even at 1/s"
                    break
            if len(probes) >= FANOUT_MAX_PROBES:
                stop = f"probe limit ({FANOUT_MAX_PROBES}) reached"
                break
            if time.time() - t0 > budget:
                stop = f"time budget ({budget} s) spent"
                break
            rate = nxt
        best = max((p for p in probes if p[1]), key=lambda p: p[0], default=None)
        res = dict(best[2]) if best else {}
        res.update({"best_rate": best[0] if best else None, "lowest_fail": hi,
                    "probes": [(p[0], p[1], p[2]["delivered"], p[2]["p99_us"],
                                p[2]["rate"], p[2].get("load_cpu", 0), p[2]["errors_total"],
                                p[2].get("closes") or {}) for p in probes],
                    "stop": stop, "seconds": time.time() - t0, "subscribers": n})
        out[name] = res
    return out


# Scenario 13's echo payload: a chat-like JSON text message (sigma-load
# `echo --json-payload`), compressible the way real traffic is.
DEFLATE_ECHO_SIZE = 256


def scenario_compression(key, args, servers, workdir, res):
    """13: permessage-deflate (DESIGN §10: with it on, report messages/s and
    memory per idle connection). (a) scenario 3's echo load (100
    connections, 1 in flight) with 256-byte JSON-like text messages,
    against sigma with `[websocket] compression = true` and `sigma-load
    --deflate` (every message compressed both ways), and against plain
    sigma with the same payload uncompressed; `--rounds` rounds, servers
    alternating, median shown. (b) scenario 4 (idle WebSockets, RSS per
    connection) with `--deflate` against the compressing sigma; the
    uncompressed number is scenario 4's when it ran, else measured here."""
    payload = ["--json-payload"]
    cases = [("sigma", "sigma", False), ("sigma-deflate", "sigma-deflate", True)]
    runs = {label: [] for label, _, _ in cases}
    for rnd in range(args.rounds):
        for label, make, deflate in cases:
            s = servers[make]()
            log(f"  [{key}] {label} echo (round {rnd + 1}/{args.rounds}) on :{s.port}")
            s.start(key)
            try:
                sigma_load_echo(key, label, s, args.warmup, 0, quiet=True,
                                size=DEFLATE_ECHO_SIZE, payload=payload, deflate=deflate)
                r = measure(s, lambda: sigma_load_echo(key, label, s, args.duration, 0,
                                                       size=DEFLATE_ECHO_SIZE,
                                                       payload=payload, deflate=deflate),
                            Perf(False, workdir), key, args.duration)
            finally:
                s.stop()
            runs[label].append(r)
    out = {"echo": {label: median_run(v) for label, v in runs.items()}, "idle": {}}
    n = args.idle_connections
    if "sigma" in res.get("4", {}):
        plain = dict(res["4"]["sigma"])
        plain["from_scenario"] = "4"
    else:
        plain = idle_run(key, "sigma", servers["sigma"](), n)
    out["idle"]["sigma"] = plain
    out["idle"]["sigma-deflate"] = idle_run(key, "sigma-deflate", servers["sigma-deflate"](), n,
                                            deflate=True)
    return out


class Nodes:
    """Several servers measured as one (CPU and peak RSS summed)."""

    def __init__(self, servers):
        self.servers = servers
        self.name = "+".join(x.name for x in servers)

    def ticks(self):
        return sum(x.ticks() for x in self.servers)

    def hwm_kib(self):
        return sum(x.hwm_kib() for x in self.servers)


def psql(url, sql):
    subprocess.run(["psql", url, "-XAtqc", sql], check=True, capture_output=True, text=True)


def scenario_cluster_fanout(key, args, workdir):
    """Scenario 6 with `[store] url` and `[cluster] redis`: one node with
    every subscriber, then two nodes (both on the server core) with the
    subscribers split between them and the publisher on the first, so
    that half the deliveries cross Redis; then the same two nodes with the
    second on core 1 (shared with the load generator: what a second
    machine gives, as far as a 2-core machine can). PostgreSQL and Redis come from
    BENCH_POSTGRES / BENCH_REDIS (bench/run sets them with
    scripts/services.sh); each run gets its own database and key prefix."""
    admin = os.environ.get("BENCH_POSTGRES", "postgres://postgres@127.0.0.1:5432/postgres")
    redis = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/0")
    tmpl = (BENCH / "sigma.toml.in").read_text()
    n, rate = args.fanout_subscribers, args.fanout_rate
    out = {}
    # (nodes, whether the second node gets its own core: core 1, shared
    # with the load generator, as a second machine would give it one)
    for nodes, spread in ((1, False), (2, False), (2, True)):
        db = f"sigma_bench_{os.getpid()}_{nodes}_{int(spread)}"
        psql(admin, f"CREATE DATABASE {db}")
        url = admin.rsplit("/", 1)[0] + "/" + db
        prefix = f"sigma_bench_{os.getpid()}_{nodes}_{int(spread)}:"
        servers = []
        try:
            for i in range(nodes):
                port = free_port()
                cfg = workdir / f"sigma-cluster-{port}.toml"
                cfg.write_text(tmpl.replace("@DATA@", str(workdir / f"data-{port}"))
                               + f'\n[store]\nurl = "{url}"\n\n[cluster]\n'
                                 f'redis = "{redis}"\nprefix = "{prefix}"\n')
                s = Server(f"sigma-node{i + 1}", [SIGMA, "serve", "--config", cfg, "--pipeline",
                                                  f"T127.0.0.1:{port}[HA]", "--workers", "1"],
                           port, workdir)
                if i == 0:
                    s.before = ([SIGMA, "user", "add", BENCH_USER, "--password-stdin",
                                 "--config", cfg], BENCH_PASSWORD)
                s.login = True
                if spread and i == 1:
                    s.pin = SERVER_PIN[:-1] + [LOAD_CPU]
                elif nodes == 2 and PRIO[:2] == ["chrt", "-f"]:
                    # Two nodes on one core: SCHED_FIFO lets a node that is
                    # always busy (a fan-out walk that never catches up)
                    # keep the core until it blocks, and the other, starved
                    # for seconds, took its Redis PING's missing answer for
                    # a lost connection (1011 to all its subscribers).
                    # SCHED_RR at the same priority makes them take turns.
                    s.pin = ["chrt", "-r"] + SERVER_PIN[2:]
                servers.append(s)
            for s in servers:
                s.start(key)
            a = servers[0]
            log(f"  [{key}] {nodes} node(s){', a core each' if spread else ''}: "
                f"{n} subscribers, {rate} publishes/s")
            argv = [LOAD, "--json", "-H", f"Cookie: {a.cookie}", "--connect-concurrency", "200",
                    "pubsub", "--url", f"ws://127.0.0.1:{a.port}/broadcast",
                    "--subscribers", str(n), "--publishers", "1", "--channels", "1",
                    "--rate", str(rate), "-s", "64", "--subscribe-timeout", "60s",
                    "--grace", f"{PUBSUB_GRACE}s", "-d", f"{args.duration}s",
                    "-w", f"{args.warmup}s"]
            if nodes == 2:
                argv[argv.index("--subscribers"):argv.index("--subscribers")] = [
                    "--split-url", f"ws://127.0.0.1:{servers[1].port}/broadcast"]
            name = f"sigma ×{nodes} (Redis)" + (", node 2 on core 1 with the load" if spread
                                                else "")
            out[name] = measure(Nodes(servers), lambda: run_pubsub(key, name, argv, args),
                                Perf(False, workdir), key, args.duration, tail=PUBSUB_GRACE)
        finally:
            for s in servers:
                s.stop()
            try:
                psql(admin, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
            except subprocess.CalledProcessError:
                pass
    return out


def run_pubsub(key, name, argv, args, pin=None):
    p = run_load(key, name, argv, args.duration + args.warmup + 180, pin)
    line = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ""
    try:
        r = json.loads(line)
    except json.JSONDecodeError:
        raise RuntimeError(f"sigma-load pubsub failed:\n{p.stdout}\n{p.stderr}")
    r["rate_param"] = r.get("rate", "?")  # the publish rate asked for
    r["rate"] = r["msgs_per_s"]
    r["delivered"] = r["received"] / r["expected"] if r["expected"] else 0
    r["errors_total"] = r["errors"] + r["connect_errors"] + r["bad_replies"]
    r["load_cpu"] = p.load_cpu
    return r


def median_run(runs):
    runs = sorted(runs, key=lambda r: r["rate"])
    r = dict(runs[len(runs) // 2])
    r["all_rates"] = [x["rate"] for x in runs]
    return r


def scenario_idle(key, args, servers, workdir):
    out = {}
    n = args.idle_connections
    for name in ["sigma", "tokio-tungstenite"]:
        out[name] = idle_run(key, name, servers[name](), n)
    return out


def idle_run(key, name, s, n, deflate=False):
    """Starts `s`, opens `n` idle WebSockets (`--deflate`: permessage-deflate
    negotiated on each), measures the server's RSS per connection, stops
    it."""
    log(f"  [{key}] {name}: {n} idle WebSockets{' (--deflate)' if deflate else ''} "
        f"on :{s.port}")
    s.start(key)
    try:
        time.sleep(0.5)
        before = s.rss_kib()
        argv = [*LOAD_PIN, LOAD, "--json"] + (["--deflate"] if deflate else []) + [
                "-H", f"Cookie: {s.cookie}", "idle", "--url",
                f"ws://127.0.0.1:{s.port}/echo", "-c", str(n), "--hold", "300s"]
        record(key, name, argv)
        p = subprocess.Popen([str(a) for a in argv], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=ENV)
        try:
            line = p.stdout.readline()
            m = re.match(r"open (\d+) failed (\d+)", line)
            if not m:
                raise RuntimeError(f"sigma-load idle: {line!r} {p.stderr.read()}")
            opened, failed = int(m.group(1)), int(m.group(2))
            time.sleep(2)  # let the server finish whatever the handshakes left
            after = s.rss_kib()
            hwm = s.hwm_kib()
        finally:
            p.terminate()
            p.wait()
    finally:
        s.stop()
    per = (after - before) / max(opened, 1)
    return {"opened": opened, "failed": failed, "rss_before_kib": before,
            "rss_after_kib": after, "per_conn_kib": per, "hwm_kib": hwm}


def socket_fds(pid):
    """Open sockets of a process (slowhttptest: one per attack connection)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return 0
    n = 0
    for fd in fds:
        try:
            n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return n


class Attack:
    """Keeps `target` slow connections of one kind (`-H` slow headers, `-B`
    slow body) open against a server, as a real attacker reconnects.

    slowhttptest opens its `-c` connections at `-r` per second and never
    replaces the ones the server closes (it exits when none is left). So,
    like an attacker that reconnects, this tops up: whenever fewer than
    `target` are open, it starts another slowhttptest for the difference.
    Connections are counted as the socket descriptors of each slowhttptest
    process (its probe connection included, so one per process is
    subtracted)."""

    RATE = 1000  # connections per second while ramping (slowhttptest -r)

    def __init__(self, key, server, mode, target, url, workdir):
        self.key, self.server, self.mode, self.target = key, server, mode, target
        self.url, self.workdir = url, workdir
        self.procs = []  # (Popen, log file, started, connections asked for)
        self.launched = 0
        self.seen = {}  # pid -> CPU ticks last seen
        self.last_open = {}  # pid -> connections open at the last look

    def held(self):
        return sum(max(socket_fds(p.pid) - 1, 0) for p, _, _, _ in self.procs
                   if p.poll() is None)

    def pending(self):
        """Connections that instances still ramping up have yet to open (an
        instance ramps for n / RATE seconds, longer while its count still
        grows, at most 10 s)."""
        now, total = time.time(), 0
        for p, _, t, n in self.procs:
            if p.poll() is not None:
                continue
            open_now = socket_fds(p.pid) - 1
            growing = open_now > self.last_open.get(p.pid, -1)
            self.last_open[p.pid] = open_now
            age = now - t
            if age < 1.0 + n / self.RATE or (growing and age < 10):
                total += max(n - open_now, 0)
        return total

    def tick(self):
        """Starts a top-up instance when connections are missing."""
        missing = self.target - self.held() - self.pending()
        if missing < max(10, self.target // 50):
            return
        # On the load core as SCHED_IDLE (never real-time): slowhttptest's
        # bursts (up to half a core while it opens or feeds 2 000
        # connections) must not take the core from wrk, or the run measures
        # the attacker's CPU use instead of the server (an attacker has its
        # own machines). It gets what wrk leaves, preempted at once whenever
        # wrk wakes, and `held` shows what it managed to keep open.
        argv = ["chrt", "-i", "0", "taskset", "-c", LOAD_CPU, "slowhttptest", self.mode,
                "-c", str(missing),
                "-r", str(self.RATE), "-i", "10", "-l", "600", "-s", "8192", "-u", self.url]
        if self.launched < 2:
            record(self.key, self.server, argv)
        logf = open(self.workdir / f"slowhttptest{self.mode}-{self.server}-{self.launched}.log",
                    "w")
        p = subprocess.Popen([str(a) for a in argv], stdout=logf, stderr=subprocess.STDOUT,
                             env=ENV, start_new_session=True)
        self.procs.append((p, logf, time.time(), missing))
        self.launched += 1

    def ticks(self):
        """CPU ticks used so far (an instance's last sample once it exits)."""
        for p, _, _, _ in self.procs:
            if p.poll() is None:
                self.seen[p.pid] = max(self.seen.get(p.pid, 0), proc_ticks(p.pid))
        return sum(self.seen.values())

    def stop(self):
        for p, logf, _, _ in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            logf.close()


def scenario_attack(key, args, servers, workdir, perf):
    # The measuring wrk runs SCHED_FIFO in this scenario whatever --sched
    # says (as root): slowhttptest polls without pause and takes every idle
    # moment of the load core, so wrk must get the core the instant it
    # wakes, as if the attacker had machines of its own. Its runs without
    # the attack use the same scheduling, so the ratio compares like with
    # like.
    #
    # `--rounds` rounds, servers alternating; each round is a fresh server,
    # the baseline, the attack and the baseline again. Each server's result
    # is its median round by kept share, with every round's kept share in
    # `kept_all` (the target is checked on every round).
    pin = LOAD_PIN
    if os.geteuid() == 0 and LOAD_PIN[0] != "chrt":
        pin = ["chrt", "-f", "10"] + LOAD_PIN[LOAD_PIN.index("taskset"):]
    names = ["sigma", "nginx"]
    rounds = {n: [] for n in names}
    for rnd in range(args.rounds):
        for name in names:
            s = servers[name]()
            log(f"  [{key}] {name} (round {rnd + 1}/{args.rounds}) on :{s.port}")
            rounds[name].append(attack_round(key, name, s, args, pin, perf, workdir))
    out = {}
    for name, runs in rounds.items():
        ranked = sorted(runs, key=lambda x: x["kept"])
        x = dict(ranked[len(ranked) // 2])
        x["kept_all"] = [r["kept"] for r in runs]
        x["rounds"] = runs
        out[name] = x
    return out


def attack_round(key, name, s, args, pin, perf, workdir):
    """One round of scenario 5 against the fresh server `s`."""
    s.start(key)
    url = f"http://127.0.0.1:{s.port}/echo"
    attacks = [Attack(key, name, "-H", args.slow_headers, url, workdir),
               Attack(key, name, "-B", args.slow_bodies, url, workdir)]
    try:
        wrk(key, name, s, args.warmup, 1, quiet=True, pin=pin)
        base = measure(s, lambda: wrk(key, name, s, args.duration, 1, pin=pin), perf,
                       key + "-base", args.duration)
        deadline = time.time() + 20
        while time.time() < deadline:
            for a in attacks:
                a.tick()
            if all(a.held() >= a.target * 0.95 for a in attacks):
                break
            time.sleep(0.25)
        at_start = [a.held() for a in attacks]
        log(f"    attack holds {at_start[0]} slow-header + {at_start[1]} slow-body "
            "connections; measuring")
        samples = []
        argv = [*pin, "wrk", "-t1", "-c64", f"-d{args.duration}s",
                "--timeout", "10s", "-H", f"Cookie: {s.cookie}", "-s", LUA, url, "--", "1"]

        def attacked():
            record(key, name, argv)
            p = subprocess.Popen([str(a) for a in argv], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=ENV)
            while p.poll() is None:
                time.sleep(0.25)
                for a in attacks:
                    a.ticks()
                    a.tick()
                samples.append(sum(a.held() for a in attacks))
            stdout = p.stdout.read()
            m = re.search(r"^wrk-json (\{.*\})$", stdout, re.M)
            if not m:
                raise RuntimeError(f"wrk printed no result:\n{stdout}")
            r = json.loads(m.group(1))
            r["rate"] = r["requests"] / (r["duration_us"] / 1e6)
            r["errors_total"] = sum(r["errors"].values())
            return r

        a0, t0 = sum(a.ticks() for a in attacks), time.time()
        under = measure(s, attacked, perf, key + "-attack", args.duration)
        attacker_cpu = max(0, (sum(a.ticks() for a in attacks) - a0) / CLK_TCK
                           / (time.time() - t0) * 100)
        for a in attacks:
            a.stop()
        # The same wrk again without the attack: the baseline is the mean
        # of before and after, so that drift on the machine cancels out.
        time.sleep(1)
        base2 = measure(s, lambda: wrk(key, name, s, args.duration, 1, pin=pin), perf,
                        key + "-base", args.duration)
    finally:
        for a in attacks:
            a.stop()
        s.stop()
    base_rate = (base["rate"] + base2["rate"]) / 2
    return {"base": base, "base_after": base2, "base_rate": base_rate, "attack": under,
            "held_at_start": at_start,
            "held_min": min(samples) if samples else 0,
            "held_max": max(samples) if samples else 0,
            "held_mean": statistics.mean(samples) if samples else 0,
            "slowhttptest_runs": [a.launched for a in attacks],
            "attacker_cpu": attacker_cpu,
            "kept": under["rate"] / base_rate if base_rate else 0}


# ---------------------------------------------------------------- reporting

def fmt_rate(x, unit):
    return f"{x:,.0f} {unit}".replace(",", " ")


def fmt_us(us):
    if not us:  # wrk reports 0 when its corrected histogram overflows
        return "n/a"
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} µs"


def fmt_kib(k):
    return f"{k / 1024:.1f} MiB" if k >= 1024 else f"{k} KiB"


def verdict(ok):
    return "met" if ok else "**missed**"


def build_rows(res):
    rows = []  # scenario, server, result, p50, p99, rss, cpu, ratio, target

    def tput(key, title, unit, names, target_names, want=1.0, p50=False):
        """Rows of a throughput scenario; the target is DESIGN §10's:
        sigma ≥ `want`× each of `target_names` (and, with `p50`, a p50
        latency no higher than theirs)."""
        r = res.get(key)
        if not r:
            return
        sig = r["sigma"]["rate"]
        for n in names:
            x = r.get(n)
            if x is None:  # a reference that could not run (scenario 1's floors)
                continue
            ratio = target = ""
            if n != "sigma":
                q = sig / x["rate"] if x["rate"] else 0
                ratio = f"{q:.2f}×"
                if n in target_names:
                    target = f"≥ {want:.1f}× {n}: {verdict(q >= want)}"
                    if p50:
                        ok = r["sigma"]["p50_us"] <= x["p50_us"]
                        target += f"; p50 ≤ {n}'s: {verdict(ok)}"
            errs = f" ({x['errors_total']} errors)" if x["errors_total"] else ""
            rows.append([title, n, fmt_rate(x["rate"], unit) + errs, fmt_us(x["p50_us"]),
                         fmt_us(x["p99_us"]), fmt_kib(x["hwm_kib"]), f"{x['cpu']:.0f} %",
                         ratio, target])

    tput("1", "1 HTTP keep-alive, 64 conns", "req/s", ["sigma", "nginx", "axum"] + FLOORS,
         ["nginx", "axum"], want=1.1, p50=True)
    tput("2", "2 HTTP pipelined ×16, 64 conns", "req/s", ["sigma", "nginx", "axum"],
         ["nginx", "axum"], want=2.0)
    tput("3", "3 WebSocket echo 64 B, 100 conns", "msg/s", ["sigma", "tokio-tungstenite"],
         ["tokio-tungstenite"], want=1.5)

    r = res.get("4")
    if r:
        sig = r["sigma"]["per_conn_kib"]
        for n in ["sigma", "tokio-tungstenite"]:
            x = r[n]
            fail = f", {x['failed']} failed" if x["failed"] else ""
            ratio = target = ""
            if n == "sigma":
                target = f"≤ 8 KiB/conn: {verdict(sig <= 8)}"
            elif x["per_conn_kib"] > 0:
                ratio = f"{sig / x['per_conn_kib']:.2f}× (lower is better)"
            rows.append([f"4 idle WebSockets ({x['opened']} open{fail})", n,
                         f"{x['per_conn_kib']:.1f} KiB/conn", "–", "–",
                         fmt_kib(x["hwm_kib"]), "–", ratio, target])

    r = res.get("5")
    if r:
        sig = r["sigma"]["attack"]["rate"]
        for n in ["sigma", "nginx"]:
            x = r[n]
            b, a = x["base"], x["attack"]
            b2 = x["base_after"]
            rows.append(["5 no attack (wrk, 64 conns)", n,
                         fmt_rate(x["base_rate"], "req/s") + f" (mean of {b['rate'] / 1000:.0f}k "
                         f"before and {b2['rate'] / 1000:.0f}k after)",
                         fmt_us(b["p50_us"]), fmt_us(b["p99_us"]), fmt_kib(b["hwm_kib"]),
                         f"{b['cpu']:.0f} %", "", ""])
            ratio = target = ""
            if n != "sigma" and a["rate"]:
                ratio = f"{sig / a['rate']:.2f}×"
            errs = f", {a['errors_total']} errors" if a["errors_total"] else ""
            kept_all = x.get("kept_all", [x["kept"]])
            k = len(kept_all)
            if n == "sigma":
                met = sum(1 for v in kept_all if v >= 0.9)
                rounds = f"{met}/{k} round{'s' if k > 1 else ''}"
                target = f"≥ 90 % kept: met in {rounds}" if met == k \
                    else f"≥ 90 % kept: **missed** (met in {rounds})"
            spread = f"; median of {k} rounds, {min(kept_all) * 100:.0f}–" \
                f"{max(kept_all) * 100:.0f} %" if k > 1 else ""
            rows.append([f"5 under attack ({x['held_min']}–{x['held_max']} slow conns held)", n,
                         fmt_rate(a["rate"], "req/s")
                         + f" = {x['kept'] * 100:.0f} % kept{spread}{errs}",
                         fmt_us(a["p50_us"]), fmt_us(a["p99_us"]), fmt_kib(a["hwm_kib"]),
                         f"{a['cpu']:.0f} %", ratio, target])
    r = res.get("6")
    if r:
        sig = r["sigma"]["rate"]
        for n in ["sigma", "ws-fanout"]:
            x = r[n]
            ratio = ""
            if n != "sigma" and x["rate"]:
                ratio = f"{sig / x['rate']:.2f}×"
            closes = ", closes " + ", ".join(f"{c}×{k}" for k, c in x["closes"].items()) \
                if x.get("closes") else ""
            errs = f", {x['errors_total']} errors" if x["errors_total"] else ""
            rows.append([f"6 fan-out, {x['connected'] - 1} subscribers, {x['rate_param']}/s",
                         n, fmt_rate(x["rate"], "deliveries/s")
                         + f" ({x['delivered'] * 100:.1f} % of expected{errs}{closes})",
                         fmt_us(x["p50_us"]), fmt_us(x["p99_us"]), fmt_kib(x["hwm_kib"]),
                         f"{x['cpu']:.0f} %", ratio, "report" if n == "sigma" else ""])
    r = res.get("10")
    if r:
        one = r.get("sigma ×1 (Redis)", {}).get("rate")
        for n, x in r.items():
            ratio = f"{x['rate'] / one:.2f}× one node" if one and n != "sigma ×1 (Redis)" else ""
            errs = f", {x['errors_total']} errors" if x["errors_total"] else ""
            closes = ", closes " + ", ".join(f"{c}×{k}" for k, c in x["closes"].items()) \
                if x.get("closes") else ""
            rows.append([f"10 cluster fan-out, {x['connected'] - 1} subscribers, "
                         f"{x['rate_param']}/s", n, fmt_rate(x["rate"], "deliveries/s")
                         + f" ({x['delivered'] * 100:.1f} % of expected{errs}{closes})",
                         fmt_us(x["p50_us"]), fmt_us(x["p99_us"]), fmt_kib(x["hwm_kib"]),
                         f"{x['cpu']:.0f} %", ratio, "report"])
    r = res.get("7")
    if r:
        x = r["sigma"]
        base = res.get("3", {}).get("sigma")
        ratio = f"{x['rate'] / base['rate']:.2f}× its plain echo (3)" \
            if base and base["rate"] else ""
        errs = f" ({x['errors_total']} errors)" if x["errors_total"] else ""
        met = ""
        if base and base["rate"]:
            # The performance issue asks ≥ 0.15× with 8 messages in flight
            # per world, docs/design.md §10 0.2×: both are checked.
            share = x["rate"] / base["rate"]
            met = (f"≥ 0.15× its echo: {'met' if share >= 0.15 else '**missed**'}; "
                   f"≥ 0.2×: {'met' if share >= 0.2 else '**missed**'}")
        rows.append(["7 signed world messages, 100 worlds × 8 in flight → &echo", "sigma",
                     fmt_rate(x["rate"], "msgs/s") + errs, fmt_us(x["p50_us"]),
                     fmt_us(x["p99_us"]), fmt_kib(x["hwm_kib"]), f"{x['cpu']:.0f} %",
                     ratio, met or "≥ 0.15× its echo; ≥ 0.2×"])
    tput("8", "8 HTTPS keep-alive (TLS 1.3), 64 conns", "req/s", ["sigma", "nginx"],
         ["nginx"])
    tput("9", "9 new TLS handshakes, 16 conns", "handshakes/s", ["sigma", "nginx"], ["nginx"])

    r = res.get("11")
    if r:
        h = r["http"]
        one, two = h.get("sigma, 1 worker"), h.get("sigma, 2 workers")
        for n, x in h.items():
            ratio = ""
            if n == "sigma, 2 workers" and one and one["rate"]:
                ratio = f"{x['rate'] / one['rate']:.2f}× sigma 1 worker (scaling)"
            elif n.startswith("nginx") and two and x["rate"]:
                ratio = f"{two['rate'] / x['rate']:.2f}× (sigma 2 workers ÷ nginx 2 workers)"
            errs = f" ({x['errors_total']} errors)" if x["errors_total"] else ""
            rows.append([f"11 HTTP keep-alive, 64 conns, {layout(x)}", n,
                         fmt_rate(x["rate"], "req/s") + errs, fmt_us(x["p50_us"]),
                         fmt_us(x["p99_us"]), fmt_kib(x["hwm_kib"]), f"{x['cpu']:.0f} %",
                         ratio, "report"])
        f = r["fanout"]
        one = f.get("sigma, 1 worker")
        for n, x in f.items():
            ratio = ""
            if n == "sigma, 2 workers" and one and one["rate"]:
                ratio = f"{x['rate'] / one['rate']:.2f}× sigma 1 worker (scaling)"
            elif n.startswith("ws-fanout") and x["rate"] and "sigma, 2 workers" in f:
                ratio = f"{f['sigma, 2 workers']['rate'] / x['rate']:.2f}× (sigma 2 workers " \
                    "÷ ws-fanout 2 threads)"
            rows.append([f"11 fan-out, {x['connected'] - 1} subscribers, "
                         f"{x['rate_param']}/s, {layout(x)}", n,
                         fmt_rate(x["rate"], "deliveries/s") + f" ({delivery(x)})",
                         fmt_us(x["p50_us"]), fmt_us(x["p99_us"]), fmt_kib(x["hwm_kib"]),
                         f"{x['cpu']:.0f} %", ratio, "report"])

    r = res.get("12")
    if r:
        sig = (r.get("sigma") or {}).get("best_rate")
        for n, x in r.items():
            title = f"12 highest fan-out rate with ≥ 99.9 % delivered and p99 < 100 ms, " \
                f"{x['subscribers']} subscribers"
            ratio = ""
            if n != "sigma" and sig and x.get("best_rate"):
                ratio = f"{sig / x['best_rate']:.2f}× (highest rates)"
            if x.get("best_rate") is None:
                lowest = min(p[0] for p in x["probes"]) if x["probes"] else "?"
                rows.append([title, n, f"none passed (lowest rate tried {lowest}/s)", "–", "–",
                             "–", "–", ratio, "report"])
                continue
            fail = f", {x['lowest_fail']}/s failed" if x.get("lowest_fail") else ", no failure"
            rows.append([title, n, f"{x['best_rate']} publishes/s = "
                         + fmt_rate(x["rate"], "deliveries/s")
                         + f" ({x['delivered'] * 100:.2f} % delivered{fail})",
                         fmt_us(x["p50_us"]), fmt_us(x["p99_us"]), fmt_kib(x["hwm_kib"]),
                         f"{x['cpu']:.0f} %", ratio, "report"])

    r = res.get("13")
    if r:
        e = r["echo"]
        plain = e.get("sigma")
        for n, x in e.items():
            deflated = x.get("deflated_size")
            what = f"{x.get('size', DEFLATE_ECHO_SIZE)} B JSON-like text"
            if n == "sigma-deflate":
                what += f", permessage-deflate ({deflated} B on the wire)" if deflated \
                    else ", permessage-deflate"
            else:
                what += ", uncompressed"
            ratio = ""
            if n != "sigma" and plain and plain["rate"]:
                ratio = f"{x['rate'] / plain['rate']:.2f}× uncompressed"
            errs = f" ({x['errors_total']} errors)" if x["errors_total"] else ""
            rows.append([f"13 WebSocket echo, {what}, 100 conns", n,
                         fmt_rate(x["rate"], "msg/s") + errs, fmt_us(x["p50_us"]),
                         fmt_us(x["p99_us"]), fmt_kib(x["hwm_kib"]), f"{x['cpu']:.0f} %",
                         ratio, "report"])
        i = r["idle"]
        plain = i.get("sigma")
        for n, x in i.items():
            fail = f", {x['failed']} failed" if x["failed"] else ""
            if n == "sigma":
                what = "uncompressed" + (", scenario 4's run" if x.get("from_scenario")
                                         else "")
            else:
                what = "permessage-deflate negotiated"
            ratio = ""
            if n != "sigma" and plain and plain["per_conn_kib"] > 0:
                ratio = f"{x['per_conn_kib'] / plain['per_conn_kib']:.2f}× uncompressed"
            rows.append([f"13 idle WebSockets, {what} ({x['opened']} open{fail})", n,
                         f"{x['per_conn_kib']:.1f} KiB/conn", "–", "–", fmt_kib(x["hwm_kib"]),
                         "–", ratio, "report"])
    return rows


def layout(x):
    """Where a scenario 11 server ran."""
    if x.get("workers", 1) > 1:
        return f"{x['workers']} workers on cores {SERVER_CPU}–{LOAD_CPU}, shared with the load"
    return f"1 worker on core {SERVER_CPU}, load on core {LOAD_CPU}"


def delivery(x):
    """A fan-out run's share of expected deliveries, errors and closes."""
    errs = f", {x['errors_total']} errors" if x["errors_total"] else ""
    closes = ", closes " + ", ".join(f"{c}×{k}" for k, c in x["closes"].items()) \
        if x.get("closes") else ""
    return f"{x['delivered'] * 100:.1f} % of expected{errs}{closes}"


HEADER = ["scenario", "server", "throughput / result", "p50", "p99", "peak RSS",
          "server CPU", "sigma ÷ peer", "target"]


def text_table(rows):
    cols = list(zip(*([HEADER] + rows)))
    widths = [max(len(str(c)) for c in col) for col in cols]
    lines = []
    for i, row in enumerate([HEADER] + rows):
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def md_table(rows):
    out = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for r in rows:
        out.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(out)


def observations(res):
    """Short, automatic notes on what bounded each number."""
    notes = []
    for key, title in (("1", "scenario 1"), ("2", "scenario 2"), ("3", "scenario 3"),
                       ("7", "scenario 7"), ("8", "scenario 8"), ("9", "scenario 9")):
        r = res.get(key)
        if not r:
            continue
        for n, x in r.items():
            if x.get("negotiated"):
                notes.append(f"{title}, {n}: negotiated {x['negotiated']}.")
            if x["cpu"] < 85:
                notes.append(f"{title}, {n}: the server core was {x['cpu']:.0f} % busy, so the "
                             "load generator's core or loopback wake-ups bound this number, "
                             "not the server.")
            rates = x.get("all_rates", [])
            if len(rates) > 1:
                spread = (max(rates) - min(rates)) / max(statistics.median(rates), 1) * 100
                notes.append(f"{title}, {n}: rounds ranged {min(rates):,.0f}–{max(rates):,.0f} "
                             f"({spread:.0f} % spread).")
    r = res.get("5")
    if r:
        for n, x in r.items():
            runs_of = x.get("rounds", [x])
            many = len(runs_of) > 1
            if many:
                notes.append(f"scenario 5, {n}: kept per round "
                             + ", ".join(f"{v['kept'] * 100:.0f} %" for v in runs_of)
                             + " (the row shows the median round).")
            held = []
            for i, v in enumerate(runs_of):
                title = f"scenario 5, {n}" + (f", round {i + 1}" if many else "")
                b1, b2 = v["base"]["rate"], v["base_after"]["rate"]
                drift = abs(b1 - b2) / max(min(b1, b2), 1) * 100
                if drift > 10:
                    notes.append(f"{title}: the same unattacked wrk run gave {b1:,.0f} "
                                 f"before and {b2:,.0f} req/s after the attack ({drift:.0f} % "
                                 "apart), with the server core saturated both times: other "
                                 "work on the machine changed the cost per request. "
                                 "Differences of this size between servers in this run are "
                                 "noise.")
                h, b = v["held_at_start"]
                runs = v["slowhttptest_runs"]
                held.append((f"round {i + 1}: " if many else "")
                            + f"{h} slow-header and {b} slow-body connections when measuring "
                            f"started, {v['held_min']}–{v['held_max']} (mean "
                            f"{v['held_mean']:.0f}) during the measurement, slowhttptest "
                            f"started {runs[0]} + {runs[1]} times, "
                            f"{v['attacker_cpu']:.0f} % of the load core")
            notes.append(f"scenario 5, {n}: the attack held " + "; ".join(held)
                         + " (slowhttptest is restarted to top the connections up as the "
                         "server closes them; its CPU is on the load core, where wrk runs "
                         "too).")
    r = res.get("11")
    if r:
        notes.append("scenario 11: server CPU is the total of the server's threads (100 % = "
                     f"one core; 2 workers can use up to 200 %). The 1-worker rows use "
                     f"scenario 1's layout (server on core {SERVER_CPU}, load on core "
                     f"{LOAD_CPU}); with 2 workers the server and the load generator share "
                     f"cores {SERVER_CPU}–{LOAD_CPU} (the machine has "
                     f"{os.cpu_count()}), so the server gets what the load leaves: the "
                     "scaling factor is a lower bound of what a second core gives on a "
                     "machine with a core to spare for the load.")
        for part, tool, unit in (("http", "wrk (one thread)", "request"),
                                 ("fanout", "sigma-load", "delivery")):
            what = "keep-alive" if part == "http" else "fan-out"
            cost = ", ".join(f"{n}: {x['cpu'] / 100 / x['rate'] * 1e6:.2f} µs"
                             for n, x in r[part].items() if x["rate"])
            notes.append(f"scenario 11, {what}: server CPU per {unit}: {cost} (more for 2 "
                         "workers = what spreading the work over two cores costs).")
            for n, x in r[part].items():
                lc = x.get("load_cpu", 0)
                both = ""
                if x.get("workers", 1) > 1:
                    both = (f"; server and load together used {x['cpu'] + lc:.0f} % of the "
                            f"2 cores")
                if lc >= 85 or both:
                    notes.append(f"scenario 11, {n} ({what}): {tool} used {lc:.0f} % of a core"
                                 + (", so the load generator may bound this number" if lc >= 85
                                    else "") + both + ".")
        f = r["fanout"]
        sig = [x for n, x in f.items() if n.startswith("sigma")]
        if sig and all(x["delivered"] >= FANOUT_DELIVERED for x in sig):
            notes.append("scenario 11, fan-out: every sigma run delivered ≥ 99.9 % of the "
                         f"fixed {sig[0]['rate_param']} publishes/s, so deliveries/s are set "
                         "by the offered load and cannot show scaling; compare server CPU "
                         "(" + ", ".join(f"{n}: {x['cpu']:.0f} %" for n, x in f.items())
                         + ") and p99; scenario 12 searches for the highest rate.")
    r = res.get("12")
    if r:
        for n, x in r.items():
            probes = "; ".join(
                f"{rate}/s {'pass' if ok else 'fail'} ({dl * 100:.2f} %, p99 {fmt_us(p99)}, "
                + (f"{errs} errors, " if errs else "")
                + ("closes " + ", ".join(f"{c}×{k}" for k, c in closes.items()) + ", "
                   if closes else "")
                + f"load {lc:.0f} %)"
                for rate, ok, dl, p99, _, lc, errs, closes in x["probes"])
            notes.append(f"scenario 12, {n}: {len(x['probes'])} probes in "
                         f"{x['seconds']:.0f} s, each on a freshly started server "
                         f"({probes}); stopped: {x['stop']}. \"load\" is sigma-load's CPU "
                         "(percent of its one core) over the whole probe, connecting "
                         "included.")
            fails = [p for p in x["probes"] if not p[1]]
            if fails and min(fails)[5] >= 85:
                notes.append(f"scenario 12, {n}: sigma-load used {min(fails)[5]:.0f} % of its "
                             f"core at the lowest failing rate ({min(fails)[0]}/s): the load "
                             "generator may be what failed, so the highest rate is a lower "
                             "bound of the server's.")
        if SERVER_PIN[0] == "chrt":
            notes.append("scenario 12: under SCHED_FIFO a saturated server stalls ~50 ms once "
                         "a second (the kernel's real-time throttling, see Scheduling above), "
                         "which counts against the p99 < 100 ms mark near the limit; "
                         "`--sched none` on a quiet machine avoids it.")
    r = res.get("13")
    if r:
        d = r["echo"].get("sigma-deflate")
        if d:
            notes.append(f"scenario 13: the echo payload is a {d.get('size')}-byte chat-like "
                         "JSON text message (`sigma-load echo --json-payload`: a stamp, "
                         "type, channel, from and English text), "
                         f"{d.get('deflated_size', '?')} bytes once deflated by sigma-load "
                         "(zlib level 6, no context takeover, so every message is compressed "
                         "on its own); sigma compresses every echo too. sigma-load used "
                         f"{d.get('load_cpu', 0):.0f} % of its core compressed, "
                         f"{r['echo'].get('sigma', {}).get('load_cpu', 0):.0f} % "
                         "uncompressed"
                         + (" (85 % or more: the load generator may bound the compressed "
                            "number)" if d.get("load_cpu", 0) >= 85 else "") + ".")
        i = r["idle"].get("sigma-deflate")
        if i:
            notes.append("scenario 13, idle: sigma negotiates no context takeover in either "
                         "direction, so an idle compressed connection holds no zlib state; "
                         "these connections have sent no message, and the number shows what "
                         "the negotiation itself costs.")
    return notes


def machine():
    model = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = proc_meminfo("MemTotal")

    def ver(argv):
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (p.stdout + p.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                             capture_output=True, text=True).stdout.strip()
    except OSError:
        rev = "?"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "mem": f"{mem / 1024 / 1024:.1f} GiB" if mem else "?",
        "rustc": ver(["rustc", "--version"]),
        "nginx": ver(["nginx", "-v"]),
        "wrk": re.sub(r"\s*Copyright.*", "", ver(["wrk", "-v"])),
        "slowhttptest": slowhttptest_version(),
        "git": rev,
    }


def slowhttptest_version():
    try:
        p = subprocess.run(["slowhttptest", "-h"], capture_output=True, text=True, timeout=10)
        m = re.search(r"version ([\d.]+)", p.stdout + p.stderr)
        return m.group(1) if m else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def proc_meminfo(key):
    try:
        for line in open("/proc/meminfo"):
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def cpu_busy(seconds=2.0):
    """Whole-machine CPU use (percent of all cores) over `seconds`, and the
    processes that used the most, before the bench starts."""
    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]

    def procs():
        out = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                t = proc_ticks(int(d))
                try:
                    comm = open(f"/proc/{d}/comm").read().strip()
                except OSError:
                    continue
                out[int(d)] = (t, comm)
        return out

    (t0, i0), p0 = snap(), procs()
    time.sleep(seconds)
    (t1, i1), p1 = snap(), procs()
    busy = 100 * (1 - (i1 - i0) / max(t1 - t0, 1))
    top = sorted(((p1[k][0] - p0[k][0], p1[k][1]) for k in p1 if k in p0), reverse=True)
    top = [f"{c} ({t / CLK_TCK / seconds * 100:.0f} % of a core)" for t, c in top[:3]
           if t / CLK_TCK / seconds > 0.05]
    return busy, top


def write_markdown(path, m, args, rows, res, notes, perf, busy, wall):
    lines = [
        "# sigma benchmarks",
        "",
        "Generated by `bench/run` (see `bench/README.md`); do not edit by hand, run it again.",
        "The hand-written analysis lives in `bench/limits.md` and is copied in below.",
        "",
        "## Run",
        "",
        f"- Date: {m['date']}; sigma at `{m['git']}`; the bench took {wall / 60:.1f} min.",
        f"- Machine: `nproc` = {m['nproc']}, CPU: {m['cpu']}, memory {m['mem']}, "
        f"kernel {m['kernel']}.",
        f"- Tools: {m['rustc']}; {m['nginx']}; {m['wrk']}; slowhttptest {m['slowhttptest']}.",
        f"- CPU budget: every server on core {SERVER_CPU} (`taskset -c {SERVER_CPU}`), one "
        f"worker (sigma `--workers 1`, tokio runtimes with one worker thread, nginx "
        f"`worker_processes 1`); every load generator on core {LOAD_CPU}. Except in "
        f"scenario 11's 2-worker rows (sigma `--workers 2`, nginx `worker_processes 2`, "
        f"ws-fanout with 2 tokio worker threads): server and load generator there share "
        f"cores {SHARED_CPUS} (`taskset -c {SHARED_CPUS}`).",
        f"- Scheduling: servers and load generators run as `{' '.join(SERVER_PIN[:-3]) or 'default (CFS, nice 0)'}`"
        + (" (SCHED_FIFO: their wake-ups preempt other work on the machine; the kernel "
           "keeps 5 % of each core for the rest, so a saturated server tops out near 95 % "
           "CPU and stalls ~50 ms once a second, which inflates every p99 alike; "
           "scenario 10's two nodes on one core run SCHED_RR at the same priority, "
           "so that they take turns in 100 ms slices instead of one starving the other)"
           if SERVER_PIN[0] == "chrt" else "") + ".",
        f"- Each measurement: {args.warmup} s warm-up (discarded), then {args.duration} s "
        f"measured; scenarios 1–3, 5, 7–9, 11 (keep-alive) and 13 (echo): {args.rounds} "
        "round(s), servers alternating, median shown (scenario 5: the median round by kept "
        "share, its target checked on every round). In scenarios 1–3, 8 and 9 a round "
        "starts all of its servers at once and measures each in "
        "{} slices of {} s, ".format(*slicing(args)) +
        "the servers taking turns, so that each sees the same stretches of the machine's "
        "speed; a row's throughput is over all its slices, its p50/p99 of all its slices' "
        "latencies together. Scenario 12 probes publish rates, each "
        "probe one such measurement on a fresh server.",
        f"- Background: the machine was {busy[0]:.0f} % busy before the bench started"
        + (f" (top: {', '.join(busy[1])})" if busy[1] else "") + ".",
        "",
        "## Results",
        "",
        md_table(rows),
        "",
        "Columns: *throughput* is responses (or echoed messages) per second over the "
        "measured window; *p50/p99* are latencies from wrk (per pipelined batch in "
        "scenario 2) or sigma-load's HDR histogram; *peak RSS* is `VmHWM` of the server's "
        "processes (nginx: master + worker) at the end of the run, each scenario on a "
        "freshly started server; *server CPU* is the server's user + system time over the "
        "measured window (100 % = one core; scenario 11's 2-worker servers can use 200 %); "
        "*sigma ÷ peer* is sigma's throughput "
        "divided by that peer's (for scenario 4, sigma's bytes per connection divided by "
        "the peer's). Scenario 4: (RSS with all connections open − RSS before) ÷ "
        "connections.",
        "",
    ]
    if "4" in res:
        lines.append("Scenario 4 detail: " + "; ".join(
            f"{n}: RSS {fmt_kib(x['rss_before_kib'])} before → {fmt_kib(x['rss_after_kib'])} "
            f"with {x['opened']} open" for n, x in res["4"].items()) + ".")
        lines.append("")
    if "13" in res:
        lines.append("Scenario 13 idle detail: " + "; ".join(
            f"{n}: RSS {fmt_kib(x['rss_before_kib'])} before → {fmt_kib(x['rss_after_kib'])} "
            f"with {x['opened']} open" for n, x in res["13"]["idle"].items()) + ".")
        lines.append("")
    lines += ["## What limits it", ""]
    lines += [f"- {n}" for n in notes]
    limits = BENCH / "limits.md"
    if limits.exists():
        # limits.md's links are relative to bench/, BENCHMARKS.md sits
        # one level up.
        lines += ["", limits.read_text().strip().replace("](../", "](")]
    lines.append("")
    if perf.reports:
        lines += ["## Profile of sigma (`perf record`, self time by symbol)", ""]
        for sc, top in sorted(perf.reports.items()):
            lines += [f"Scenario {sc}:", "", "```"] + top + ["```", ""]
    lines += ["## Commands", "",
              f"Driver: `{' '.join(shlex.quote(a) for a in sys.argv[1:]) or '(defaults)'}` "
              "given to `bench/run`, which ran `cargo build --release --locked -p sigma "
              "-p sigma-load`, `cargo build --release --locked --manifest-path "
              "bench/peers/Cargo.toml`, then these, in order (ports are picked free per run; "
              "the configuration files are `bench/sigma.toml.in` and `bench/nginx.conf.in` "
              "filled in, `sigma-deflate` with `[websocket] compression = true` appended; "
              "each measured wrk or sigma-load run is preceded by the same command "
              "for the warm-up seconds, not listed; slowhttptest top-ups after the first two "
              "are not listed either):",
              "", "```"]
    lines += [f"[{sc}] {cmd}" for sc, srv, cmd in COMMANDS]
    lines += ["```", ""]
    path.write_text("\n".join(lines))


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10, help="measured seconds per run")
    ap.add_argument("--warmup", type=int, default=2, help="warm-up seconds per run")
    ap.add_argument("--slices", type=int, default=5,
                    help="scenarios 1-3, 8, 9: each server's measured seconds in this many "
                         "slices, the servers taking turns")
    ap.add_argument("--rounds", type=int, default=1,
                    help="rounds of scenarios 1-3, 5, 7-9, 11 (keep-alive) and 13 (echo); "
                         "servers alternate, the median is shown (scenario 5: median kept "
                         "share, the target checked on every round)")
    ap.add_argument("--scenarios", default="1,2,3,4,5,6,7,8,9,10,11,12,13",
                    help="comma-separated subset")
    ap.add_argument("--idle-connections", type=int, default=10000,
                    help="idle WebSockets of scenarios 4 and 13")
    ap.add_argument("--slow-headers", type=int, default=2000)
    ap.add_argument("--slow-bodies", type=int, default=500)
    ap.add_argument("--fanout-subscribers", type=int, default=10000,
                    help="subscribers of scenarios 6, 10, 11 and 12")
    ap.add_argument("--fanout-rate", type=float, default=50.0,
                    help="scenarios 6, 10 and 11: publishes per second (each goes to every "
                         "subscriber); scenario 12 searches for its own")
    ap.add_argument("--perf", action="store_true",
                    help="profile sigma with perf during its measured runs")
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"),
                    help="Markdown report ('-' for none)")
    ap.add_argument("--sched", choices=["auto", "fifo", "nice", "none"], default="auto",
                    help="scheduling of servers and load generators: fifo = chrt -f 10, "
                         "nice = nice -n -19, none; auto (default) = fifo as root, else "
                         "none. Use none on a quiet, dedicated machine for clean p99s")
    ap.add_argument("--sigma-bin", default=None,
                    help="measure this sigma binary instead of target/release/sigma "
                         "(e.g. a build of an earlier commit, for before/after rows)")
    args = ap.parse_args()
    # Servers and load generators wake each other thousands of times a
    # second; with other work on the machine (builds, fuzzers), each wake-up
    # waits for that work's time slice and the run measures the scheduler.
    # SCHED_FIFO makes every wake-up preempt it (the kernel still keeps 5 %
    # of each core for others), the same for every server.
    # SCHED_FIFO's price: the kernel throttles real-time tasks to 950 ms
    # per second, so a saturated server stalls ~50 ms once a second, which
    # shows in p99 (for every server alike).
    wanted = set(args.scenarios.split(","))
    if args.sigma_bin:
        global SIGMA
        SIGMA = Path(args.sigma_bin).resolve()

    # Only what the chosen scenarios run (8 and 9 need sigma and nginx).
    need = {SIGMA: True, LOAD: bool(wanted & {"3", "4", "6", "7", "10", "11", "12", "13"}),
            PEERS / "axum-hello": bool(wanted & {"1", "2"}),
            PEERS / "ws-echo": bool(wanted & {"3", "4"}),
            PEERS / "ws-fanout": bool(wanted & {"6", "11", "12"})}
    for exe in (e for e, n in need.items() if n):
        if not exe.exists():
            sys.exit(f"missing {exe}: run bench/run (it builds everything)")

    start = time.time()
    busy = cpu_busy()
    sched = args.sched
    if sched == "auto":
        # Other work can start at any moment on a shared machine (it did,
        # mid-run, while this was written), so as root always fifo.
        sched = "fifo" if os.geteuid() == 0 else "none"
    if busy[0] > 10:
        log(f"warning: the machine is already {busy[0]:.0f} % busy "
            f"({', '.join(busy[1])}); scheduling: {sched}")
    global SERVER_PIN, LOAD_PIN, PRIO
    prio = {"fifo": ["chrt", "-f", "10"], "nice": ["nice", "-n", "-19"], "none": []}
    PRIO = prio[sched]
    SERVER_PIN = pinned(SERVER_CPU)
    LOAD_PIN = pinned(LOAD_CPU)
    workdir = Path(tempfile.mkdtemp(prefix="sigma-bench-"))
    log(f"work directory: {workdir}")
    servers = make_servers(workdir)
    perf = Perf(args.perf, workdir)
    res = {}
    if "1" in wanted:
        log("scenario 1: HTTP keep-alive")
        res["1"] = scenario_http("1", 1, args, servers, workdir, perf)
    if "2" in wanted:
        log("scenario 2: HTTP pipelining ×16")
        res["2"] = scenario_http("2", 16, args, servers, workdir, perf)
    if "3" in wanted:
        log("scenario 3: WebSocket echo")
        res["3"] = scenario_ws_echo("3", args, servers, workdir, perf)
    if "4" in wanted:
        log("scenario 4: idle WebSockets")
        res["4"] = scenario_idle("4", args, servers, workdir)
    if "5" in wanted:
        log("scenario 5: slow-client attack")
        res["5"] = scenario_attack("5", args, servers, workdir, perf)
    if "6" in wanted:
        log("scenario 6: &broadcast fan-out")
        res["6"] = scenario_fanout("6", args, servers, workdir)
    if "10" in wanted:
        log("scenario 10: &broadcast fan-out across two nodes (PostgreSQL + Redis)")
        res["10"] = scenario_cluster_fanout("10", args, workdir)
    if "7" in wanted:
        log("scenario 7: signed world messages")
        res["7"] = scenario_world("7", args, servers, workdir, perf)
    if "8" in wanted:
        log("scenario 8: HTTPS keep-alive (TLS 1.3)")
        res["8"] = scenario_tls("8", args, servers, workdir, perf, close=False)
    if "9" in wanted:
        log("scenario 9: new TLS handshakes")
        res["9"] = scenario_tls("9", args, servers, workdir, perf, close=True)
    if "11" in wanted:
        log("scenario 11: multi-core scaling (1 → 2 workers)")
        res["11"] = scenario_scaling("11", args, servers, workdir, perf)
    if "12" in wanted:
        log("scenario 12: highest fan-out rate (≥ 99.9 % delivered, p99 < 100 ms)")
        res["12"] = scenario_max_fanout("12", args, servers, workdir)
    if "13" in wanted:
        log("scenario 13: permessage-deflate (echo, idle)")
        res["13"] = scenario_compression("13", args, servers, workdir, res)

    wall = time.time() - start
    rows = build_rows(res)
    notes = observations(res)
    print()
    print(text_table(rows))
    print()
    for n in notes:
        print(f"- {n}")
    for sc, top in sorted(perf.reports.items()):
        print(f"\nperf, sigma, scenario {sc}:")
        print("\n".join(top))
    (workdir / "results.json").write_text(json.dumps(res, indent=2, default=str))
    log(f"\nraw results: {workdir / 'results.json'}")
    if args.out != "-":
        write_markdown(Path(args.out), machine(), args, rows, res, notes, perf, busy, wall)
        log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
