#!/usr/bin/env python3
"""Load benchmark: Outpost against nginx (proxy_cache) and Varnish on the same origin, same machine, same run.

Started by benches/load.sh. Starts the demo backend as the origin, Outpost, nginx and Varnish in front of it,
warms them, runs wrk for each scenario (RUNS runs, alternating the proxies) and prints a table of medians:
Outpost | nginx | Varnish | Outpost / the better of the two. Also writes it to target/bench/results.md.
Timings here never decide a test.

LOGGING=on gives every proxy its default request log, written to a file: Outpost its info line, nginx
`access_log`, Varnish `varnishncsa`; off (the default): no per-request logs anywhere.
URLS=2000,20000,100000: the working sets of scenario 8 (1 KiB hits at random over that many cached URLs).
OUTPOST_MEMORY=64MiB sets Outpost's `[cache] memory` (its default otherwise).
FLOOR=on (the default) also runs scenarios 1 and 8 against examples/floor.rs: hyper answering every request
with the same 1 KiB and a hit's header fields, and doing nothing else. It is no proxy; it shows how much of
the machine a server on hyper and tokio can reach here, and how far below it Outpost is.
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
FLOOR_BIN = os.path.join(BIN, "examples", "floor")
FLOOR = os.environ.get("FLOOR", "on") == "on"
RUNS = int(os.environ.get("RUNS", "5"))
# ONLY=1,2,3 runs just those scenarios (for profiling; the recorded table runs all).
ONLY = {int(x) for x in os.environ.get("ONLY", "1,2,3,4,5,6,7,8,9").split(",") if x.strip()}
LOGGING = os.environ.get("LOGGING", "off") == "on"
URLS = [int(x) for x in os.environ.get("URLS", "2000,20000,100000").split(",") if x.strip()]
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


def tree_cpu_s(pid):
    """CPU seconds (user + system) of pid and its children, over all their threads."""
    tck = os.sysconf("SC_CLK_TCK")
    total = 0
    try:
        kids = [int(k) for t in os.listdir(f"/proc/{pid}/task")
                for k in open(f"/proc/{pid}/task/{t}/children").read().split()]
    except OSError:
        kids = []
    for p in [pid] + kids:
        try:
            fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / tck


def settle(proxy, limit=60.0):
    """Waits until the proxy's process tree is idle (under 3 % of a core over a second: background work
    after the fills, such as RocksDB's compactions, finished), at most `limit` seconds. Seconds waited."""
    t0 = time.time()
    while time.time() - t0 < limit:
        c0 = tree_cpu_s(proxy.p.pid)
        time.sleep(1)
        if tree_cpu_s(proxy.p.pid) - c0 < 0.03:
            break
    return time.time() - t0


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
        memory = f'[cache]\nmemory = "{os.environ["OUTPOST_MEMORY"]}"\n' if os.environ.get("OUTPOST_MEMORY") else ""
        with open(cfg, "w") as f:
            f.write(f"""listen = "127.0.0.1:{self.port}"
admin_listen = "127.0.0.1:{self.admin}"
data_dir = "{self.data}"
default_upstream = "api"
max_size = "8GB"
{memory}

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
        level = os.environ.get("OUTPOST_LOG", "info" if LOGGING else "warn")
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
        access = f"access_log {self.dir}/access.log;" if LOGGING else "access_log off;"
        for k, v in {"WORKERS": str(THREADS), "PORT": str(self.port), "DIR": self.dir, "ACCESS_LOG": access,
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


class Varnish:
    name = "Varnish"

    def __init__(self, origin, work):
        self.port = free_port()
        self.dir = os.path.join(work, "varnish")
        os.makedirs(self.dir, exist_ok=True)
        with open(os.path.join(ROOT, "benches", "varnish.vcl.in")) as f:
            vcl = f.read()
        for k, v in {"API_PORT": str(origin.api), "MEDIA_PORT": str(origin.media)}.items():
            vcl = vcl.replace("@" + k + "@", v)
        path = os.path.join(self.dir, "bench.vcl")
        with open(path, "w") as f:
            f.write(vcl)
        self.p = subprocess.Popen(["varnishd", "-F", "-j", "none", "-n", self.dir, "-a", f"127.0.0.1:{self.port}",
                                   "-f", path, "-s", "malloc,256m"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        self.ncsa = None
        if LOGGING:
            # Varnish logs through shared memory; varnishncsa is its access log writer.
            self.ncsa = subprocess.Popen(["varnishncsa", "-n", self.dir, "-w", os.path.join(self.dir, "access.log")],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def rss_peak_kb(self):
        # varnishd's manager and its cache child.
        return tree_kb(self.p.pid, "VmHWM")

    def stop(self):
        if self.ncsa:
            self.ncsa.terminate()
            self.ncsa.wait()
        self.p.terminate()
        try:
            self.p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


class Floor:
    """examples/floor.rs: not a proxy, the most a hyper server reaches on this machine (see FLOOR)."""
    name = "hyper floor"

    def __init__(self):
        self.port = free_port()
        self.p = subprocess.Popen([FLOOR_BIN, str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def rss_peak_kb(self):
        return proc_kb(self.p.pid, "VmHWM")

    def stop(self):
        self.p.terminate()
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


def run_scenario(proxies, title, path, conns, script, unit, rows):
    res = {p.name: [] for p in proxies}
    for _ in range(RUNS):
        for proxy in proxies:
            res[proxy.name].append(wrk(proxy.url(path), conns, script))
    rows.append((title, unit, res))
    print(title, {k: (median([r[unit] for r in v]), median([r["p99_ms"] for r in v])) for k, v in res.items()},
          flush=True)


def warm_many(proxies, work, n):
    """Fetches /api/v1/sized/1024?i=0..n-1 once through each proxy (wrk, each connection its own slice,
    each thread stopping when its slice is done), then checks a random sample is answered from the cache."""
    script = lua(work, f"warm{n}.lua", f"""
local n = {n}
local id = 0
setup = function(thread)
  thread:set("first", id)
  id = id + 1
end
init = function(args)
  i = first
  done_count = 0
end
request = function()
  local k = i
  i = i + {THREADS}
  return wrk.format("GET", "/api/v1/sized/1024?i=" .. (k % n))
end
response = function(status, headers, body)
  done_count = done_count + 1
  if done_count * {THREADS} == n then
    local f = io.open("{work}/warm-done-" .. first, "w")
    f:close()
    wrk.thread:stop()
  end
end
""")
    import random
    warmed = []
    for proxy in proxies:
        # Every URL fetched once (the cap is only a guard); how long that took is the proxy's fill rate.
        # (A stopped wrk thread does not end wrk's run: each thread leaves a file, then wrk is interrupted.)
        for f in os.listdir(work):
            if f.startswith("warm-done-"):
                os.remove(os.path.join(work, f))
        t0 = time.time()
        run = subprocess.Popen(["wrk", f"-t{THREADS}", "-c16", f"-d{max(30, n // 200)}s", "-s", script,
                                proxy.url("/")], stdout=subprocess.DEVNULL)
        while run.poll() is None and sum(f.startswith("warm-done-") for f in os.listdir(work)) < THREADS:
            time.sleep(0.1)
        took = time.time() - t0
        run.send_signal(signal.SIGINT)
        run.wait()
        time.sleep(1)  # fills commit after their answers are sent
        hits = 0
        for k in random.sample(range(n), min(n, 200)):
            st, h, _ = http("GET", proxy.url(f"/api/v1/sized/1024?i={k}"))
            assert st == 200, (proxy.name, k, st)
            hits += (h.get("x-outpost-cache") or h.get("X-Cache-Status") or "").upper() == "HIT"
        warmed.append((proxy, f"{proxy.name} {hits}/{min(n, 200)} (filled in {took:.1f} s"))
    # Measured in a steady state: every proxy's background work after its fills (RocksDB's compactions,
    # cache writes) is done before the first round.
    warmed = [f"{text}, idle {settle(proxy):.0f} s later)" for proxy, text in warmed]
    return f"warm check over {n:,} URLs (random sample answered from the cache): " + ", ".join(warmed)


def main():
    for tool in ("wrk", "nginx", "varnishd"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: apt-get install -y wrk nginx varnish")
    work = tempfile.mkdtemp(prefix="outpost-bench-")
    origin = Origin()
    op = Outpost(origin, work)
    ng = Nginx(origin, work)
    vn = Varnish(origin, work)
    proxies = [op, ng, vn]
    floor = [Floor()] if FLOOR else []
    rows = []
    notes = [f"Logging: {'each proxy with its default request log to a file (Outpost info line, nginx access_log, varnishncsa)' if LOGGING else 'no per-request logs anywhere (Outpost RUST_LOG=warn, nginx access_log off, no varnishncsa)'}."]
    try:
        json1k = "/api/v1/sized/1024"
        snap = "/api/v1/sized/204800"
        audio = "/media/renders/a1.mp3"
        stale = "/api/v1/sized/1024?max_age=1"
        for proxy in proxies:
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
            if int(title[0]) in ONLY:
                extra = floor if title.startswith("1.") else []
                run_scenario(proxies + extra, title, path, conns, script, unit, rows)

        # 8. The working set: 1 KiB hits at random over N cached URLs, each its own body.
        if 8 in ONLY:
            for n in URLS:
                notes.append(warm_many(proxies, work, n))
                print(notes[-1], flush=True)
                script = lua(work, f"random{n}.lua", f"""
local counter = 0
setup = function(thread)
  thread:set("seed", counter)
  counter = counter + 1
end
init = function(args)
  math.randomseed(os.time() * 7 + seed)
end
request = function()
  return wrk.format("GET", "/api/v1/sized/1024?i=" .. math.random(0, {n - 1}))
end
""")
                run_scenario(proxies + floor, f"8. 1 KiB hits over {n:,} URLs, 64 conns", "/", 64, script, "rps", rows)
                # Outpost reads its records through memory-mapped files: what it holds itself (anon) is
                # told apart from page-cache pages that count towards its RSS once touched (file).
                notes.append(f"Outpost after {n:,} URLs: RSS {proc_kb(op.p.pid, 'VmRSS') / 1024:.0f} MiB = "
                             f"{proc_kb(op.p.pid, 'RssAnon') / 1024:.0f} MiB its own (anon) + "
                             f"{proc_kb(op.p.pid, 'RssFile') / 1024:.0f} MiB mapped table files (page cache)")
                print(notes[-1], flush=True)
        peak = {p.name: p.rss_peak_kb() for p in proxies}

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
            return finish(rows, notes, peak, [], [], proxies + floor, origin, work)
        # 4. Offline: the origin black-holed; stale answers served (Varnish: grace).
        time.sleep(1.5)
        origin.fault("black_hole")
        for proxy in proxies:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                st, h, _ = http("GET", proxy.url(stale), timeout=5)
                if st == 200 and (proxy is not op or h.get("x-outpost-cache") in ("OFFLINE", "STALE")):
                    break
                time.sleep(0.2)
        run_scenario(proxies, "4. offline (origin black-holed), stale 1 KiB hit", stale, 64, None, "rps", rows)

        # 5. Durable enqueue while offline (Outpost only: nginx and Varnish have no write queue).
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
        rows.append(("5. durable enqueue offline, 32 conns", "rps", {op.name: enq}))
        notes.append("Enqueue runs: non-2xx answers " + ", ".join(str(r["non2xx"]) for r in enq) +
                     " (every acknowledged write was a synced RocksDB write).")
        print("enqueue", median([r["rps"] for r in enq]), flush=True)

        # 9. Memory under 300 concurrent write bodies of 512 KiB, offline. The peak is this scenario's own
        # (the kernel's high-water mark reset just before it, `clear_refs` 5).
        if 9 in ONLY:
            peak_before = op.rss_peak_kb()
            try:
                with open(f"/proc/{op.p.pid}/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass
            before = op.rss_kb()
            big_post = lua(work, "bigpost.lua", f"""
wrk.method = "POST"
wrk.body = string.rep("x", {512 * 1024})
wrk.headers["Content-Type"] = "application/octet-stream"
""")
            r9 = wrk(op.url("/api/v1/threads/t2/messages"), 300, big_post, duration="5s")
            peak9 = op.rss_peak_kb()
            time.sleep(5)
            notes.append(f"9. 300 connections posting 512 KiB bodies offline for 5 s (Outpost): {r9['rps']:,.0f} "
                         f"writes/s queued, non-2xx {r9['non2xx']}, socket errors {r9['errors']}; RSS before "
                         f"{before / 1024:.1f} MiB, peak during it {peak9 / 1024:.1f} MiB, 5 s after "
                         f"{op.rss_kb() / 1024:.1f} MiB (peak before it, over the whole run: "
                         f"{peak_before / 1024:.1f} MiB).")
            print(notes[-1], flush=True)
        origin.fault("up")
    finally:
        for p in proxies + floor:
            p.stop()

    return finish(rows, notes, peak, None, None, None, origin, work)


def finish(rows, notes, peak, starts, rest, proxies, origin, work):
    """Cold start (6) and RSS at rest (7) unless skipped, then the table."""
    if proxies is not None:
        for p in proxies:
            p.stop()
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
    names = [Outpost.name, Nginx.name, Varnish.name]
    lines = ["| scenario | Outpost | nginx | Varnish | Outpost / best other |", "|---|---|---|---|---|"]
    for title, unit, res in rows:
        label = "req/s" if unit == "rps" else "MB/s"
        fmt = (lambda v: f"{v:,.0f}") if unit == "rps" else (lambda v: f"{v:,.1f}")
        val = {n: median([r[unit] for r in res.get(n, [])]) for n in names}
        p99 = {n: median([r["p99_ms"] for r in res.get(n, [])]) for n in names}
        mx = {n: max((r["max_ms"] or 0 for r in res.get(n, [])), default=0) for n in names}
        others = [n for n in names[1:] if val[n]]
        cell = lambda n, f: f(n) if val[n] else "n/a"
        if others:
            best = max(others, key=lambda n: val[n])
            lines.append(f"| {title}: {label} | " + " | ".join(cell(n, lambda n: fmt(val[n])) for n in names)
                         + f" | {val[Outpost.name] / val[best]:.2f}× ({best}) |")
            lines.append(f"| {title}: p99 / max ms | " + " | ".join(
                cell(n, lambda n: f"{p99[n]:.2f} / {mx[n]:.1f}") for n in names) + " | |")
            # The spread: each Outpost run against the better other run of the same round.
            pairs = []
            for i, o in enumerate(res[Outpost.name]):
                best_run = max((res[n][i][unit] for n in others if i < len(res[n])), default=0)
                if best_run:
                    pairs.append(o[unit] / best_run)
            won = sum(1 for r in pairs if r >= 1.0)
            if res.get(Floor.name):
                fl = median([r[unit] for r in res[Floor.name]])
                notes.append(f"{title}: hyper floor (examples/floor.rs, no proxy) {fl:,.0f} req/s; Outpost at "
                             f"{val[Outpost.name] / fl:.0%} of it, the better other at {val[best] / fl:.0%}")
            notes.append(f"{title}: per-round ratios to the better other " + ", ".join(f"{r:.2f}" for r in pairs)
                         + f" (Outpost ahead in {won} of {len(pairs)})")
        else:
            lines.append(f"| {title}: {label} | {fmt(val[Outpost.name])} | n/a | n/a | n/a |")
            lines.append(f"| {title}: p99 / max ms | {p99[Outpost.name]:.2f} / {mx[Outpost.name]:.1f} | n/a | n/a | |")
    if starts:
        lines.append(f"| 6. cold start to first cached byte, 100k entries + 1 GiB blobs: ms | {median(starts):.0f} | n/a | n/a | |")
    lines.append(f"| 7. peak RSS during 1-3 and 8: MiB | " + " | ".join(f"{peak[n] / 1024:.1f}" for n in names) + " | |")
    if rest:
        lines.append(f"| 7. RSS at rest with 100k entries: MiB | {median(rest) / 1024:.1f} | n/a | n/a | |")
    machine = subprocess.run("lscpu | grep 'Model name' | sed 's/.*: *//'; nproc; uname -r; nginx -v 2>&1; "
                             "varnishd -V 2>&1 | head -1; wrk -v 2>&1 | head -1",
                             shell=True, capture_output=True, text=True).stdout.split("\n")
    head = (f"Machine: {machine[0].strip()}, {machine[1].strip()} cores, Linux {machine[2].strip()}; "
            f"{machine[3].strip()}; {machine[4].strip()}; {machine[5].strip()}. {RUNS} runs of {DURATION} per "
            f"scenario and proxy, alternating; medians (max = worst over all runs); wrk -t{THREADS} shares the cores.")
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
