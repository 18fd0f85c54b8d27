#!/usr/bin/env python3
"""Load benchmark: Outpost against nginx (proxy_cache) on the same origin, same machine, same run.

Started by benches/load.sh. Starts the demo backend as the origin, Outpost and nginx in front of it, warms
both, runs wrk for each scenario (RUNS runs, alternating the two proxies) and prints a table of medians:
Outpost | nginx | ratio. Also writes it to target/bench/results.md. Timings here never decide a test.
"""

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release")
OUTPOST = os.path.join(BIN, "outpost")
FILL = os.path.join(BIN, "examples", "fill_store")
RUNS = int(os.environ.get("RUNS", "5"))
# ONLY=1,2,3 runs just those scenarios (for profiling; the recorded table runs all).
ONLY = {int(x) for x in os.environ.get("ONLY", "1,2,3,4,5,6,7").split(",") if x.strip()}
DURATION = os.environ.get("DURATION", "5s")
THREADS = os.cpu_count() or 2
AUDIO = 5 * 1024 * 1024
CHUNK = 64 * 1024


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.01)
    raise RuntimeError(f"nothing listens on {port}")


def http(method, url, body=None, headers=None, timeout=10):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def proc_kb(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_kb(pid, field):
    """Sum of a /proc status field over pid and its children (nginx master + workers)."""
    total = proc_kb(pid, field)
    try:
        kids = open(f"/proc/{pid}/task/{pid}/children").read().split()
    except OSError:
        kids = []
    return total + sum(proc_kb(int(k), field) for k in kids)


def parse_wrk(out):
    r = {"rps": 0.0, "mbps": 0.0, "p99_ms": None, "max_ms": None, "non2xx": 0, "errors": 0}

    def ms(v):
        v = v.strip()
        for suffix, f in (("us", 0.001), ("ms", 1.0), ("s", 1000.0), ("m", 60000.0)):
            if v.endswith(suffix):
                return float(v[: -len(suffix)]) * f
        return float(v)

    for line in out.splitlines():
        t = line.split()
        if line.strip().startswith("Latency") and len(t) >= 4 and "Distribution" not in line:
            r["max_ms"] = ms(t[3])
        elif len(t) == 2 and t[0] == "99%":
            r["p99_ms"] = ms(t[1])
        elif line.startswith("Requests/sec:"):
            r["rps"] = float(t[1])
        elif line.startswith("Transfer/sec:"):
            v = t[1]
            mult = {"B": 1 / 1e6, "KB": 1024 / 1e6, "MB": 1024 * 1024 / 1e6, "GB": 1024**3 / 1e6}
            for u in ("GB", "MB", "KB", "B"):
                if v.endswith(u):
                    r["mbps"] = float(v[: -len(u)]) * mult[u]
                    break
        elif "Non-2xx or 3xx responses:" in line:
            r["non2xx"] = int(t[-1])
        elif line.strip().startswith("Socket errors:"):
            r["errors"] = sum(int(x.strip(",")) for x in t if x.strip(",").isdigit())
    return r


def wrk(url, conns, script=None, duration=DURATION):
    cmd = ["wrk", f"-t{THREADS}", f"-c{conns}", f"-d{duration}", "--latency", "--timeout", "2s"]
    if script:
        cmd += ["-s", script]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    return parse_wrk(out)


class Origin:
    def __init__(self):
        self.api, self.media, self.control = free_port(), free_port(), free_port()
        self.p = subprocess.Popen(
            [OUTPOST, "demo-backend", "--listen", f"127.0.0.1:{self.api}", "--media", f"127.0.0.1:{self.media}",
             "--control", f"127.0.0.1:{self.control}", "--audio-size", str(AUDIO)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "error"})
        wait_port(self.api)
        wait_port(self.control)

    def fault(self, mode):
        http("PUT", f"http://127.0.0.1:{self.control}/faults", json.dumps({"mode": mode}).encode())

    def stop(self):
        self.p.terminate()
        self.p.wait()


class Outpost:
    name = "Outpost"

    def __init__(self, origin, work, data_dir=None):
        self.port, self.admin = free_port(), free_port()
        self.data = data_dir or os.path.join(work, "outpost-data")
        cfg = os.path.join(work, "outpost.toml")
        with open(cfg, "w") as f:
            f.write(f"""listen = "127.0.0.1:{self.port}"
admin_listen = "127.0.0.1:{self.admin}"
data_dir = "{self.data}"
default_upstream = "api"
max_size = "8GB"

[upstreams.api]
url = "http://127.0.0.1:{origin.api}"
connect_timeout = "1s"
first_byte_timeout = "2s"
probe_path = "/api/v1/health"
probe_interval = "1s"

[upstreams.media]
url = "http://127.0.0.1:{origin.media}"
connect_timeout = "1s"
first_byte_timeout = "2s"

[[routes]]
name = "media"
prefix = "/media/"
strip_prefix = "/media"
upstream = "media"
kind = "audio"

[[routes]]
name = "api"
prefix = "/api/"
kind = "api"
""")
        self.cfg = cfg
        self.start_time = time.monotonic()
        # OUTPOST_LOG=info measures Outpost with its default per-request line (written to a file, as a
        # service manager would); the recorded tables use warn unless they say otherwise.
        level = os.environ.get("OUTPOST_LOG", "warn")
        self.log = open(os.path.join(work, "outpost.log"), "w") if level != "warn" else subprocess.DEVNULL
        self.p = subprocess.Popen([OUTPOST, "serve", "--config", cfg], stdout=subprocess.DEVNULL,
                                  stderr=self.log, env={**os.environ, "RUST_LOG": level})
        wait_port(self.port)

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def rss_peak_kb(self):
        return proc_kb(self.p.pid, "VmHWM")

    def rss_kb(self):
        return proc_kb(self.p.pid, "VmRSS")

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        try:
            self.p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            print("Outpost did not stop within 30 s of SIGTERM; killed", file=sys.stderr)
            self.p.kill()
            self.p.wait()


class Nginx:
    name = "nginx"

    def __init__(self, origin, work):
        self.port = free_port()
        self.dir = os.path.join(work, "nginx")
        os.makedirs(os.path.join(self.dir, "cache"), exist_ok=True)
        with open(os.path.join(ROOT, "benches", "nginx.conf.in")) as f:
            conf = f.read()
        for k, v in {"WORKERS": str(THREADS), "PORT": str(self.port), "DIR": self.dir,
                     "API": f"127.0.0.1:{origin.api}", "MEDIA": f"127.0.0.1:{origin.media}"}.items():
            conf = conf.replace("@" + k + "@", v)
        path = os.path.join(self.dir, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        self.p = subprocess.Popen(["nginx", "-p", self.dir, "-c", path, "-g", "daemon off;"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def rss_peak_kb(self):
        return tree_kb(self.p.pid, "VmHWM")

    def stop(self):
        self.p.send_signal(signal.SIGQUIT)
        try:
            self.p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


def lua(work, name, text):
    path = os.path.join(work, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def first_byte_ms(port, path, headers):
    """Milliseconds from sending a request to the first byte of the answer (one fresh connection)."""
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    req = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    t0 = time.perf_counter()
    s.sendall(req.encode())
    s.recv(1)
    t = (time.perf_counter() - t0) * 1000
    while s.recv(1 << 16):
        pass
    s.close()
    return t


def main():
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: apt-get install -y wrk nginx")
    work = tempfile.mkdtemp(prefix="outpost-bench-")
    origin = Origin()
    op = Outpost(origin, work)
    ng = Nginx(origin, work)
    rows = []
    notes = []
    try:
        json1k = "/api/v1/sized/1024"
        snap = "/api/v1/sized/204800"
        audio = "/media/renders/a1.mp3"
        stale = "/api/v1/sized/1024?max_age=1"
        for proxy in (op, ng):
            for path in (json1k, snap, audio, stale, audio):
                st, _, _ = http("GET", proxy.url(path))
                assert st == 200, (proxy.name, path, st)
        ranges = lua(work, "ranges.lua", f"""
local n = {AUDIO // CHUNK}
local i = 0
request = function()
  local s = (i % n) * {CHUNK}
  i = i + 1
  return wrk.format("GET", nil, {{["Range"] = "bytes=" .. s .. "-" .. (s + {CHUNK} - 1)}})
end
""")
        scenarios = [
            ("1. 1 KiB JSON hit, 64 conns", json1k, 64, None, "rps"),
            ("2. 200 KiB JSON hit, 64 conns", snap, 64, None, "rps"),
            ("3. 5 MB audio as 64 KiB ranges, 64 conns", audio, 64, ranges, "mbps"),
        ]
        for title, path, conns, script, unit in scenarios:
            if int(title[0]) not in ONLY:
                continue
            res = {op.name: [], ng.name: []}
            for _ in range(RUNS):
                for proxy in (op, ng):
                    res[proxy.name].append(wrk(proxy.url(path), conns, script))
            rows.append((title, unit, res))
            print(title, {k: (median([r[unit] for r in v]), median([r["p99_ms"] for r in v])) for k, v in res.items()},
                  flush=True)
        peak = {op.name: op.rss_peak_kb(), ng.name: ng.rss_peak_kb()}

        # 10 MB object, first byte of ranges (issue 4's target), Outpost only: ranges all over the file.
        big = "/api/v1/sized/10485760"
        http("GET", op.url(big))
        fb = [first_byte_ms(op.port, big, {"Range": f"bytes={(i * 1_048_573) % 10_000_000}-{(i * 1_048_573) % 10_000_000 + CHUNK - 1}"})
              for i in range(200)]
        fb.sort()
        notes.append(f"First byte of a 64 KiB range of a cached 10 MB object (Outpost, 200 ranges over the file, "
                     f"new connection each): median {statistics.median(fb):.2f} ms, p99 {fb[197]:.2f} ms, "
                     f"max {fb[-1]:.2f} ms.")

        if 4 not in ONLY:
            return finish(rows, notes, peak, [], [], op, ng, origin, work)
        # 4. Offline: the origin black-holed; stale answers served.
        time.sleep(1.5)
        origin.fault("black_hole")
        for proxy in (op, ng):
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                st, h, _ = http("GET", proxy.url(stale), timeout=5)
                if st == 200 and (proxy is ng or h.get("x-outpost-cache") in ("OFFLINE", "STALE")):
                    break
                time.sleep(0.2)
        res = {op.name: [], ng.name: []}
        for _ in range(RUNS):
            for proxy in (op, ng):
                res[proxy.name].append(wrk(proxy.url(stale), 64))
        rows.append(("4. offline (origin black-holed), stale 1 KiB hit", "rps", res))
        print("offline", {k: (median([r["p99_ms"] for r in v]), max(r["max_ms"] or 0 for r in v)) for k, v in res.items()},
              flush=True)

        # 5. Durable enqueue while offline (Outpost only: nginx has no write queue).
        origin.fault("down")
        post = lua(work, "post.lua", """
wrk.method = "POST"
wrk.body = '{"text":"offline take"}'
wrk.headers["Content-Type"] = "application/json"
""")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            st, _, _ = http("POST", op.url("/api/v1/threads/t1/messages"), b'{"text":"warm"}',
                            {"Content-Type": "application/json"})
            if st == 202:
                break
            time.sleep(0.2)
        enq = [wrk(op.url("/api/v1/threads/t1/messages"), 32, post) for _ in range(RUNS)]
        rows.append(("5. durable enqueue offline, 32 conns", "rps", {op.name: enq, ng.name: []}))
        notes.append("Enqueue runs: non-2xx answers " + ", ".join(str(r["non2xx"]) for r in enq) +
                     " (every acknowledged write was a synced RocksDB write).")
        print("enqueue", median([r["rps"] for r in enq]), flush=True)
        origin.fault("up")
    finally:
        op.stop()
        ng.stop()

    return finish(rows, notes, peak, None, None, None, None, origin, work)


def finish(rows, notes, peak, starts, rest, op_, ng_, origin, work):
    """Cold start (6) and RSS at rest (7) unless skipped, then the table."""
    if op_ is not None:
        op_.stop()
        ng_.stop()
    if starts is None:
        starts, rest = cold_start(origin, work)
    origin.stop()
    table(rows, notes, peak, starts, rest)
    shutil.rmtree(work, ignore_errors=True)


def cold_start(origin, work):
    cold_dir = os.path.join(ROOT, "target", "bench", "cold-100k")
    if not os.path.exists(os.path.join(cold_dir, "db")):
        os.makedirs(os.path.dirname(cold_dir), exist_ok=True)
        subprocess.run([FILL, cold_dir, "100000", "200"], check=True)
    starts = []
    rest = []
    for _ in range(RUNS):
        t0 = time.monotonic()
        o = Outpost(origin, work, data_dir=cold_dir)
        # Outpost(...) returned once the port accepted; now the first cached byte.
        first_byte_ms(o.port, "/api/v1/sized/1024?i=4242", {})
        starts.append((time.monotonic() - t0) * 1000)
        st, h, _ = http("GET", o.url("/api/v1/sized/1024?i=4243"))
        assert h.get("x-outpost-cache") == "HIT", h
        time.sleep(1)
        rest.append(o.rss_kb())
        o.stop()
    return starts, rest


def table(rows, notes, peak, starts, rest):
    op, ng = Outpost, Nginx
    lines = ["| scenario | Outpost | nginx | ratio (Outpost/nginx) |", "|---|---|---|---|"]
    for title, unit, res in rows:
        o_v = median([r[unit] for r in res[op.name]])
        n_v = median([r[unit] for r in res[ng.name]])
        o_p = median([r["p99_ms"] for r in res[op.name]])
        n_p = median([r["p99_ms"] for r in res[ng.name]])
        o_m = max((r["max_ms"] or 0 for r in res[op.name]), default=0)
        n_m = max((r["max_ms"] or 0 for r in res[ng.name]), default=0)
        label = "req/s" if unit == "rps" else "MB/s"
        fmt = (lambda v: f"{v:,.0f}") if unit == "rps" else (lambda v: f"{v:,.1f}")
        if n_v:
            lines.append(f"| {title}: {label} | {fmt(o_v)} | {fmt(n_v)} | {o_v / n_v:.2f}× |")
            lines.append(f"| {title}: p99 / max ms | {o_p:.2f} / {o_m:.1f} | {n_p:.2f} / {n_m:.1f} | "
                         f"{o_p / n_p:.2f}× (p99) |")
            # The spread: each Outpost run against the nginx run right after it.
            pairs = [o[unit] / n[unit] for o, n in zip(res[op.name], res[ng.name]) if n[unit]]
            won = sum(1 for r in pairs if r >= 1.0)
            notes.append(f"{title}: per-run ratios " + ", ".join(f"{r:.2f}" for r in pairs)
                         + f" (Outpost ahead in {won} of {len(pairs)})")
        else:
            lines.append(f"| {title}: {label} | {fmt(o_v)} | n/a | n/a |")
            lines.append(f"| {title}: p99 / max ms | {o_p:.2f} / {o_m:.1f} | n/a | n/a |")
    if starts:
        lines.append(f"| 6. cold start to first cached byte, 100k entries + 1 GiB blobs: ms | {median(starts):.0f} | n/a | n/a |")
    lines.append(f"| 7. peak RSS during 1-3: MiB | {peak[op.name] / 1024:.1f} | {peak[ng.name] / 1024:.1f} "
                 f"| {peak[op.name] / max(peak[ng.name], 1):.2f}× |")
    if rest:
        lines.append(f"| 7. RSS at rest with 100k entries: MiB | {median(rest) / 1024:.1f} | n/a | n/a |")
    machine = subprocess.run("lscpu | grep 'Model name' | sed 's/.*: *//'; nproc; uname -r; nginx -v 2>&1; wrk -v 2>&1 | head -1",
                             shell=True, capture_output=True, text=True).stdout.split("\n")
    head = (f"Machine: {machine[0].strip()}, {machine[1].strip()} cores, Linux {machine[2].strip()}; "
            f"{machine[3].strip()}; {machine[4].strip()}. {RUNS} runs of {DURATION} per scenario and proxy, "
            f"alternating; medians (max = worst over all runs); wrk -t{THREADS} shares the cores.")
    text = "\n".join([head, "", *lines, "", *notes, "",
                      "Cold-start runs (ms): " + ", ".join(f"{s:.0f}" for s in (starts or []))])
    print()
    print(text)
    out = os.path.join(ROOT, "target", "bench", "results.md")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
