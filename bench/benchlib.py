#!/usr/bin/env python3
"""Switchyard benchmark helpers (Python 3.11, standard library only).

Subcommands (run.sh drives them; each appends one JSON line per measurement to --out):
  oha     run oha (the command after `--`), measure the system under test's CPU and peak RSS
          around it, summarise oha's JSON output
  stream  time-to-first-byte and total time of sequential streaming requests (raw sockets)
  slow    hold N concurrent slow streams open and measure the SUT's RSS per open stream
  table   turn the JSON lines into the Markdown report (medians, ratios vs nginx and direct)
  criterion  turn criterion's results (<target>/criterion/**/new/) into JSON lines (scenario micro)
  settle  wait (with a deadline) until the systems under test are idle: the work a run leaves
          behind (queued usage reports, the control plane storing them) must not land in the
          next measurement
  tree    print the pids of a process tree (for debugging)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- /proc helpers ---------------------------------------------------------------------------

def proc_tree(root: int) -> list[int]:
    """root and all its descendants (nginx: master + workers)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces; fields after the last ')' are fixed.
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def tree_threads(root: int):
    """(pid, tid) of every thread in the tree."""
    for p in proc_tree(root):
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tids:
            yield p, int(t)


def cpu_snapshot(root: int) -> dict[tuple[int, int], int]:
    """CPU time in ns of every thread in the tree, from /proc/<pid>/task/<tid>/schedstat
    (nanosecond precision; /proc/<pid>/stat counts 10 ms ticks, too coarse at 200 req/s)."""
    out = {}
    for p, t in tree_threads(root):
        try:
            out[(p, t)] = int(Path(f"/proc/{p}/task/{t}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            try:
                f = Path(f"/proc/{p}/task/{t}/stat").read_text()
                f = f[f.rindex(")") + 2:].split()
                out[(p, t)] = (int(f[11]) + int(f[12])) * 1_000_000_000 // CLK_TCK
            except (OSError, ValueError):
                continue
    return out


def wakeups(root: int) -> int:
    """Times any thread of the tree was scheduled in (schedstat's third field), summed."""
    n = 0
    for p, t in tree_threads(root):
        try:
            n += int(Path(f"/proc/{p}/task/{t}/schedstat").read_text().split()[2])
        except (OSError, ValueError, IndexError):
            continue
    return n


def cpu_delta(before: dict, after: dict) -> float:
    """Seconds of CPU between two snapshots. Threads that started in between count whole;
    threads that exited in between are lost (the SUTs here keep their threads)."""
    return sum(v - before.get(k, 0) for k, v in after.items()) / 1e9


def cpu_seconds(root: int) -> float:
    """utime + stime of every process in the tree (live and exited threads), in seconds."""
    total = 0
    for p in proc_tree(root):
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        f = stat[stat.rindex(")") + 2:].split()
        total += int(f[11]) + int(f[12])  # utime, stime (fields 14 and 15)
    return total / CLK_TCK


def status_kb(root: int, field: str) -> int:
    """Sum of a /proc/<pid>/status field (VmRSS, VmHWM) over the tree, in KiB."""
    total = 0
    for p in proc_tree(root):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def reset_hwm(root: int) -> None:
    """Reset VmHWM (peak RSS) of every process in the tree, so that a scenario's peak is its
    own and not an earlier one's (writing 5 to /proc/<pid>/clear_refs; needs the same user)."""
    for p in proc_tree(root):
        try:
            Path(f"/proc/{p}/clear_refs").write_text("5")
        except OSError:
            pass


def metric_value(url: str, name: str) -> float | None:
    """A sample's value from a Prometheus text page (the first series of that name)."""
    import urllib.request
    try:
        text = urllib.request.urlopen(url, timeout=2).read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def cmd_settle(a: argparse.Namespace) -> None:
    """Poll the trees' CPU over short windows until one stays under --max-util (and the
    --zero-metric reads 0), or time out."""
    roots = [p for p in a.pid if p]
    t0 = time.monotonic()
    while True:
        if a.metrics_url and a.zero_metric:
            v = metric_value(a.metrics_url, a.zero_metric)
            if v is None or v > 0:
                if time.monotonic() - t0 > a.timeout:
                    print(f"[settle] {a.zero_metric} is {v} after {a.timeout:.0f} s; measuring anyway",
                          file=sys.stderr)
                    return
                time.sleep(a.window)
                continue
        before = {r: cpu_snapshot(r) for r in roots}
        time.sleep(a.window)
        util = sum(cpu_delta(before[r], cpu_snapshot(r)) for r in roots) / a.window
        waited = time.monotonic() - t0
        if util < a.max_util:
            if waited > a.window * 2:
                print(f"[settle] idle after {waited:.1f} s", file=sys.stderr)
            return
        if waited > a.timeout:
            print(f"[settle] still {util:.0%} busy after {waited:.0f} s; measuring anyway", file=sys.stderr)
            return


def cmd_criterion(a: argparse.Namespace) -> None:
    """One record per criterion benchmark of this run: its full id and median time (ns)."""
    n = 0
    for bj in sorted(Path(a.dir).glob("**/new/benchmark.json")):
        try:
            meta = json.loads(bj.read_text())
            est = json.loads((bj.parent / "estimates.json").read_text())
        except (OSError, ValueError):
            continue
        emit(a.out, {"row": "switchyard", "scenario": "micro", "rep": 1, "name": meta["full_id"],
                     "median_ns": est["median"]["point_estimate"]})
        n += 1
    if n == 0:
        sys.exit(f"no criterion results under {a.dir}")
    # `body-copies 10MB scan+rewrite=1.0000 ...` lines of the hotpath bench: bytes allocated
    # by the rewrite over the body's size, counted by its allocator (exact, not timed).
    if a.copies:
        for line in Path(a.copies).read_text(errors="replace").splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "body-copies":
                for kv in parts[2:]:
                    k, _, v = kv.partition("=")
                    emit(a.out, {"row": "switchyard", "scenario": "micro", "rep": 1,
                                 "name": f"copies/{parts[1]}/{k}", "copies": float(v)})


def emit(out: str, rec: dict) -> None:
    with open(out, "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(json.dumps(rec), file=sys.stderr)


# --- oha ---------------------------------------------------------------------------------------

def cmd_oha(a: argparse.Namespace) -> None:
    reset_hwm(a.pid)
    c0 = cpu_snapshot(a.pid)
    x0 = cpu_snapshot(a.extra_pid) if a.extra_pid else {}
    t0 = time.monotonic()
    res = subprocess.run(a.command, capture_output=True, text=True)
    wall = time.monotonic() - t0
    c1 = cpu_snapshot(a.pid)
    x1 = cpu_snapshot(a.extra_pid) if a.extra_pid else {}
    cpu = cpu_delta(c0, c1)
    xcpu = cpu_delta(x0, x1)
    if res.returncode != 0:
        sys.exit(f"oha failed ({res.returncode}): {res.stderr.strip()[:500]}")
    d = json.loads(res.stdout)
    codes = d.get("statusCodeDistribution", {})
    ok = sum(n for c, n in codes.items() if c.startswith("2"))
    errors = sum(n for c, n in codes.items() if not c.startswith("2"))
    errors += sum(n for e, n in d.get("errorDistribution", {}).items() if "deadline" not in e)
    lat = d.get("latencyPercentiles", {})
    ms = lambda k: (lat.get(k) or 0.0) * 1000.0  # noqa: E731
    rec = {
        "row": a.row, "scenario": a.scenario, "rep": a.rep,
        "rps": d["summary"]["requestsPerSec"], "ok": ok, "errors": errors,
        "p50_ms": ms("p50"), "p99_ms": ms("p99"), "p999_ms": ms("p99.9"),
        "cpu_us_per_req": cpu * 1e6 / ok if ok else None,
        "cpu_util": cpu / wall if wall else None,
        "peak_rss_kb": status_kb(a.pid, "VmHWM"),
        "body_bytes": d["summary"].get("sizePerRequest"),
    }
    if "-q" in a.command:  # a fixed rate: recorded with the figures
        rec["rate"] = int(float(a.command[a.command.index("-q") + 1]))
    if a.extra_pid:
        # e.g. the control plane: off the request path, reported separately
        rec["extra_cpu_us_per_req"] = xcpu * 1e6 / ok if ok else None
    emit(a.out, rec)


# --- streaming TTFB --------------------------------------------------------------------------

class Conn:
    """A minimal HTTP/1.1 keep-alive client that timestamps body bytes as they arrive."""

    def __init__(self, url: str):
        u = urlsplit(url)
        self.host, self.port, self.path = u.hostname, u.port or 80, u.path + (f"?{u.query}" if u.query else "")
        self.sock = None
        self.buf = b""

    def connect(self):
        self.sock = socket.create_connection((self.host, self.port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def recv(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed")
        return chunk

    def request(self, body: bytes, headers: dict[str, str]) -> dict:
        if self.sock is None:
            self.connect()
        head = f"POST {self.path} HTTP/1.1\r\nhost: {self.host}:{self.port}\r\ncontent-type: application/json\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        head += f"content-length: {len(body)}\r\n\r\n"
        t0 = time.perf_counter()
        self.sock.sendall(head.encode() + body)
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.recv()
        t_head = time.perf_counter()
        raw_head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = raw_head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        hdrs = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:] if ":" in l)}
        t_first = None
        t_first_content = None
        arrivals: list[float] = []
        body_out = b""
        if hdrs.get("transfer-encoding", "").lower() == "chunked":
            while True:
                while b"\r\n" not in self.buf:
                    self.buf += self.recv()
                size_line, self.buf = self.buf.split(b"\r\n", 1)
                size = int(size_line.split(b";")[0], 16)
                while len(self.buf) < size + 2:
                    self.buf += self.recv()
                data, self.buf = self.buf[:size], self.buf[size + 2:]
                if size == 0:
                    break
                now = time.perf_counter()
                if t_first is None:
                    t_first = now
                if t_first_content is None and (b'"content":"' in data and b'"content":""' not in data
                                                or b"text_delta" in data):
                    t_first_content = now
                arrivals.append(now)
                body_out += data
        else:
            n = int(hdrs.get("content-length", "0"))
            while len(self.buf) < n:
                self.buf += self.recv()
            body_out, self.buf = self.buf[:n], self.buf[n:]
            t_first = time.perf_counter()
        t_end = time.perf_counter()
        if hdrs.get("connection", "").lower() == "close":
            self.sock.close()
            self.sock = None
        return {
            "status": status, "headers_ms": (t_head - t0) * 1e3,
            "ttfb_ms": ((t_first or t_end) - t0) * 1e3,
            "first_content_ms": ((t_first_content or t_end) - t0) * 1e3,
            "total_ms": (t_end - t0) * 1e3, "reads": len(arrivals),
            "events": body_out.count(b"\n\n"), "done": b"[DONE]" in body_out,
        }


def cmd_stream(a: argparse.Namespace) -> None:
    body = json.dumps({"model": a.model, "stream": True,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    headers = {"authorization": f"Bearer {a.key}"} if a.key else {}
    c = Conn(a.url)
    for _ in range(a.warmup):
        c.request(body, headers)
    results = [c.request(body, headers) for _ in range(a.n)]
    bad = [r for r in results if r["status"] != 200 or not r["done"]]
    med = lambda k: statistics.median(r[k] for r in results)  # noqa: E731
    emit(a.out, {
        "row": a.row, "scenario": a.scenario, "rep": a.rep, "n": a.n, "failed": len(bad),
        "ttfb_ms": med("ttfb_ms"), "first_content_ms": med("first_content_ms"),
        "total_ms": med("total_ms"), "headers_ms": med("headers_ms"),
        "reads": med("reads"), "events": med("events"),
    })


# --- slow streams ---------------------------------------------------------------------------

async def _open_stream(host: str, port: int, req: bytes, sem: asyncio.Semaphore, held: list):
    async with sem:
        try:
            r, w = await asyncio.open_connection(host, port)
            w.write(req)
            await w.drain()
            got = b""
            while b"\r\n\r\n" not in got or b"data:" not in got:
                chunk = await asyncio.wait_for(r.read(4096), 30)
                if not chunk:
                    return
                got += chunk
            if b" 200 " not in got.split(b"\r\n", 1)[0]:
                w.close()
                return
            held.append((r, w))
        except (OSError, asyncio.TimeoutError):
            return


async def _slow(a: argparse.Namespace) -> dict:
    u = urlsplit(a.url)
    body = json.dumps({"model": a.model, "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    auth = f"authorization: Bearer {a.key}\r\n" if a.key else ""
    req = (f"POST {u.path} HTTP/1.1\r\nhost: {u.hostname}:{u.port}\r\ncontent-type: application/json\r\n"
           f"{auth}content-length: {len(body)}\r\n\r\n{body}").encode()
    # Idle: how often the SUT wakes up with no traffic at all (timers it keeps), and its
    # CPU, over a window that starts once it has had time to go quiet.
    await asyncio.sleep(a.idle_wait)
    w0, c0, t_idle = wakeups(a.pid), cpu_snapshot(a.pid), time.monotonic()
    await asyncio.sleep(a.idle_window)
    idle_s = time.monotonic() - t_idle
    idle_wakeups = (wakeups(a.pid) - w0) / idle_s
    idle_cpu_pct = cpu_delta(c0, cpu_snapshot(a.pid)) / idle_s * 100
    rss_idle = status_kb(a.pid, "VmRSS")
    sem = asyncio.Semaphore(256)
    held: list = []
    t0 = time.monotonic()
    await asyncio.gather(*(_open_stream(u.hostname, u.port, req, sem, held) for _ in range(a.n)))
    opened = time.monotonic() - t0
    await asyncio.sleep(a.settle)  # let the SUT reach a steady state with every stream open
    rss_open = status_kb(a.pid, "VmRSS")
    for _, w in held:
        w.close()
    return {"row": a.row, "scenario": "slow_streams", "rep": a.rep, "requested": a.n, "open": len(held),
            "open_seconds": opened, "rss_idle_kb": rss_idle, "rss_open_kb": rss_open,
            "idle_wakeups_per_s": idle_wakeups, "idle_cpu_pct": idle_cpu_pct,
            "bytes_per_stream": (rss_open - rss_idle) * 1024 / len(held) if held else None}


def cmd_slow(a: argparse.Namespace) -> None:
    emit(a.out, asyncio.run(_slow(a)))


# --- report ---------------------------------------------------------------------------------

ROWS = ["direct", "nginx", "nginx-nolog", "switchyard", "switchyard-base", "switchyard-limits",
        "switchyard-translated", "switchyard-traced"]


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def cmd_table(a: argparse.Namespace) -> None:
    recs = [json.loads(l) for l in Path(a.raw).read_text().splitlines() if l.strip()]
    machine = json.loads(Path(a.machine).read_text())

    def med(row: str, scen: str, key: str):
        vals = [r[key] for r in recs if r["row"] == row and r["scenario"] == scen and r.get(key) is not None]
        return statistics.median(vals) if vals else None

    def reps(row: str, scen: str) -> int:
        return sum(1 for r in recs if r["row"] == row and r["scenario"] == scen)

    def f(v, nd=2):
        return "–" if v is None else f"{v:,.{nd}f}"

    def ratio(v, base):
        return "–" if v is None or not base else f"{v / base:.2f}×"

    rows = [r for r in ROWS if any(x["row"] == r for x in recs)]
    o = [f"# Switchyard benchmark — {machine['date']}", ""]
    o += [f"- Machine: {machine['cpu']} · {machine['nproc']} CPUs · kernel {machine['kernel']}",
          f"- Pinning: system under test on CPU {machine['sut_cpu']}; load generator and mock on CPU "
          f"{machine['load_cpu']}; Switchyard's control plane on CPU {machine.get('control_cpu', machine['sut_cpu'])}",
          f"- Tools: {machine['oha']}, {machine['nginx']}; mode: {machine['mode']}; each figure is the median "
          f"of {machine['reps']} runs",
          f"- Load average (1/5/15 min, from /proc/loadavg) at the start: {machine.get('loadavg_start', 'n/a')}; "
          f"at the end: {machine.get('loadavg_end') or loadavg()}. Above ~1 on this 2-CPU machine, other work "
          f"shared the CPUs and the tails (p99, p99.9) mostly measure the scheduler",
          "- Rows: `nginx` logs every request (buffered access log, written every 100 ms), as the "
          "Switchyard worker does (its access line, batched and written every 100 ms); `nginx-nolog` is "
          "nginx with `access_log off`. Ratios (\"vs nginx\") and the budget use `nginx`",
          f"- Notes: {machine.get('notes') or 'none'}", ""]
    if machine.get("skipped"):
        o += [f"**Skipped:** {machine['skipped']}", ""]

    def any_of(*scens: str) -> bool:
        return any(r["scenario"] in scens for r in recs)

    sections = []  # (scenario ids, first line index) so empty sections can be dropped
    sections.append((("saturation",), len(o)))
    o += ["## (a) Saturation, non-streaming, 50 connections", "",
          "| system | req/s | p50 ms | p99 ms | CPU µs/req | vs nginx | vs direct | peak RSS MiB | errors |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def load_rows(scen: str, rss: bool) -> list[str]:
        """A table row per system for an oha scenario: rate, latency, CPU and its ratios."""
        out = []
        for r in rows:
            if not reps(r, scen):
                continue
            c = med(r, scen, "cpu_us_per_req")
            cells = [r, f(med(r, scen, "rps"), 0), f(med(r, scen, "p50_ms"), 3), f(med(r, scen, "p99_ms"), 3),
                     f(c, 1), ratio(c, med("nginx", scen, "cpu_us_per_req")),
                     ratio(c, med("direct", scen, "cpu_us_per_req"))]
            if rss:
                kb = med(r, scen, "peak_rss_kb")
                cells.append(f(kb / 1024 if kb else None, 1))
            out.append("| " + " | ".join(cells + [f(med(r, scen, "errors"), 0)]) + " |")
        return out

    ng = med("nginx", "saturation", "cpu_us_per_req")
    o += load_rows("saturation", rss=True)
    o += ["", "CPU µs/req is the system under test's own CPU time (schedstat of every thread in its process tree) divided by "
          "successful responses. The direct row is the mock's own cost.", ""]

    sections.append((("equalrate",), len(o)))
    rate = next((r.get("rate") for r in recs if r["scenario"] == "equalrate" and r.get("rate")), None)
    o += [f"## (a2) Equal fixed rate, non-streaming, 50 connections{f' at {rate:,} req/s' if rate else ''}", "",
          "At saturation the load generator's CPU is the limit, so each row runs at its own rate, and a proxy "
          "that is not saturated wakes up for fewer requests at a time and pays more CPU for each (the "
          "Switchyard row also shares that CPU with its control plane, which stores the usage records). Here "
          "every row gets the same rate, below what all of them sustain.", "",
          "| system | req/s | p50 ms | p99 ms | CPU µs/req | vs nginx | vs direct | errors |",
          "|---|---:|---:|---:|---:|---:|---:|---:|"]
    ng_eq = med("nginx", "equalrate", "cpu_us_per_req")
    o += load_rows("equalrate", rss=False)
    o.append("")

    sections.append((("fixed200",), len(o)))
    o += ["## (b) Fixed rate 200 req/s (latency-corrected)", "",
          "| system | p50 ms | p99 ms | p99.9 ms | added p50 | added p99 | added p99.9 | CPU µs/req | vs nginx |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    base = {k: med("direct", "fixed200", k) for k in ("p50_ms", "p99_ms", "p999_ms")}
    ngf = med("nginx", "fixed200", "cpu_us_per_req")
    for r in rows:
        if not reps(r, "fixed200"):
            continue
        v = {k: med(r, "fixed200", k) for k in base}
        add = {k: (v[k] - base[k]) * 1000 if v[k] is not None and base[k] is not None else None for k in base}
        c = med(r, "fixed200", "cpu_us_per_req")
        o.append(f"| {r} | {f(v['p50_ms'], 3)} | {f(v['p99_ms'], 3)} | {f(v['p999_ms'], 3)} | "
                 f"{f(add['p50_ms'], 0)} µs | {f(add['p99_ms'], 0)} µs | {f(add['p999_ms'], 0)} µs | {f(c, 1)} | "
                 f"{ratio(c, ngf)} |")
    o.append("")

    sections.append((("stream_burst", "stream_paced"), len(o)))
    o += ["## (c) Streaming, 20 chunks", "",
          "| system | mode | TTFB ms | added TTFB | first content ms | total ms | added total | reads/stream |",
          "|---|---|---:|---:|---:|---:|---:|---:|"]
    for scen, label in (("stream_burst", "burst"), ("stream_paced", "paced 5 ms")):
        bt, btot = med("direct", scen, "ttfb_ms"), med("direct", scen, "total_ms")
        for r in rows:
            if not reps(r, scen):
                continue
            t, tot = med(r, scen, "ttfb_ms"), med(r, scen, "total_ms")
            o.append(f"| {r} | {label} | {f(t, 3)} | {f((t - bt) * 1000 if t and bt else None, 0)} µs | "
                     f"{f(med(r, scen, 'first_content_ms'), 3)} | {f(tot, 3)} | "
                     f"{f((tot - btot) * 1000 if tot and btot else None, 0)} µs | {f(med(r, scen, 'reads'), 0)} |")
    o += ["", "TTFB is request sent → first body byte; reads/stream counts separate arrivals (a paced "
          "stream relayed without buffering shows about one read per chunk).", ""]

    sections.append((("slow_streams",), len(o)))
    o += ["## (d) Concurrent slow streams", "",
          "| system | streams open | idle RSS MiB | RSS with streams MiB | bytes per open stream | idle wake-ups/s | idle CPU % |",
          "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if not reps(r, "slow_streams"):
            continue
        idle, full = med(r, "slow_streams", "rss_idle_kb"), med(r, "slow_streams", "rss_open_kb")
        o.append(f"| {r} | {f(med(r, 'slow_streams', 'open'), 0)} | {f(idle / 1024 if idle else None, 1)} | "
                 f"{f(full / 1024 if full else None, 1)} | {f(med(r, 'slow_streams', 'bytes_per_stream'), 0)} | "
                 f"{f(med(r, 'slow_streams', 'idle_wakeups_per_s'), 1)} | {f(med(r, 'slow_streams', 'idle_cpu_pct'), 3)} |")
    o += ["", "Idle wake-ups: how often any thread of the system under test was scheduled in over "
          "5 s with no traffic (after 3 s without any), from schedstat; the timers it keeps.", ""]

    micro = {r["name"]: r["median_ns"] for r in recs if r["scenario"] == "micro" and "median_ns" in r}
    copies = {r["name"]: r["copies"] for r in recs if r["scenario"] == "micro" and "copies" in r}

    def ns(v):
        if v is None:
            return "–"
        return f"{v:,.0f} ns" if v < 10_000 else (f"{v / 1e3:,.1f} µs" if v < 10_000_000 else f"{v / 1e6:,.1f} ms")

    sections.append((("micro",), len(o)))
    o += ["## (e) Micro-benches (criterion, median, worker code on CPU " + str(machine["sut_cpu"]) + ")", "",
          "Each strategy's pick over N endpoints:", "",
          "| strategy | 1 | 10 | 100 | 1,000 |", "|---|---:|---:|---:|---:|"]
    strategies = sorted({k.split("/")[1] for k in micro if k.startswith("pick/")})
    for st in strategies:
        o.append(f"| {st} | " + " | ".join(ns(micro.get(f"pick/{st}/{n}")) for n in (1, 10, 100, 1000)) + " |")
    o += ["", "| snapshot apply, 5,000 backends | median |", "|---|---:|"]
    for k in ("cold", "warm", "decode+warm"):
        o.append(f"| {k} | {ns(micro.get(f'snapshot_apply/{k}/5000'))} |")
    o += ["", "`warm`: a config change on a running worker (live state kept by identity); `decode+warm` adds the "
          "protobuf decode; `cold`: the first snapshot.", "",
          "| body | scan | scan+rewrite | scan+rewrite+usage | memcpy | rewrite GiB/s | bytes allocated / body |",
          "|---|---:|---:|---:|---:|---:|---:|"]
    sizes = {"1KB": 1 << 10, "100KB": 100 << 10, "10MB": 10 << 20}
    for label, size in sizes.items():
        g = lambda x: micro.get(f"body/{label}/{x}")  # noqa: E731
        sr, sc, mc = g("scan+rewrite"), g("scan"), g("memcpy")
        gib = size / sr / 1.073741824 if sr else None
        o.append(f"| {label} | {ns(sc)} | {ns(sr)} | {ns(g('scan+rewrite+usage'))} | {ns(mc)} | "
                 f"{f(gib, 2)} | {f(copies.get(f'copies/{label}/scan+rewrite'), 3)} |")
    o += ["", "Bytes allocated / body: what one scan and rewrite allocates (counted by the `copies` bench's "
          "allocator), over the body's size; 1.0 would be one copy of the body. `memcpy` is the time of one "
          "copy of the same body, for scale.", ""]

    sections.append(((), len(o)))
    # Drop the sections whose scenario was not run.
    keep = o[:sections[0][1]]
    for (scens, start), (_, end) in zip(sections, sections[1:]):
        if any_of(*scens):
            keep += o[start:end]
    o = keep + o[sections[-1][1]:]

    if "switchyard" in rows:
        sy_cpu = med("switchyard", "saturation", "cpu_us_per_req")
        sy_p99 = med("switchyard", "fixed200", "p99_ms")
        sy_ttfb = med("switchyard", "stream_paced", "ttfb_ms")
        d_ttfb = med("direct", "stream_paced", "ttfb_ms")
        sy_open = med("switchyard", "slow_streams", "rss_open_kb")
        sy_idle = med("switchyard", "slow_streams", "rss_idle_kb")

        sy_n = med("switchyard", "slow_streams", "open")
        sy_bps = med("switchyard", "slow_streams", "bytes_per_stream")
        # Fewer streams than 10k (QUICK, or a low open-files limit): extrapolate linearly.
        est10k = sy_idle * 1024 + sy_bps * 10_000 if sy_idle and sy_bps else None
        streams_cell = "–" if est10k is None else (
            f"{f(sy_open / 1024, 1)} MiB at {f(sy_n, 0)} streams"
            + ("" if sy_n and sy_n >= 10_000 else f" (≈ {f(est10k / 2**20, 1)} MiB at 10k)"))

        def verdict(ok):
            return "–" if ok is None else ("met" if ok else "**missed**")
        cpu_ratio = sy_cpu / ng if sy_cpu and ng else None
        add_p99 = (sy_p99 - base["p99_ms"]) * 1000 if sy_p99 and base["p99_ms"] else None
        add_ttfb = (sy_ttfb - d_ttfb) * 1000 if sy_ttfb and d_ttfb else None
        o += ["## Budget (issue 7)", "", "| budget | measured | verdict |", "|---|---:|---|",
              f"| CPU/req ≤ 1.25× nginx | {ratio(sy_cpu, ng)} | {verdict(None if cpu_ratio is None else cpu_ratio <= 1.25)} |",
              f"| (for reference) CPU/req vs nginx without its access log | "
              f"{ratio(sy_cpu, med('nginx-nolog', 'saturation', 'cpu_us_per_req'))} | – |",
              f"| (for reference) CPU/req vs nginx at an equal fixed rate (a2) | "
              f"{ratio(med('switchyard', 'equalrate', 'cpu_us_per_req'), ng_eq)} | – |",
              f"| added p99 at 200 req/s ≤ 150 µs | {f(add_p99, 0)} µs | {verdict(None if add_p99 is None else add_p99 <= 150)} |",
              f"| added TTFB, paced stream ≤ 150 µs | {f(add_ttfb, 0)} µs | {verdict(None if add_ttfb is None else add_ttfb <= 150)} |",
              f"| idle RSS < 30 MB | {f(sy_idle / 1024 if sy_idle else None, 1)} MiB | {verdict(None if sy_idle is None else sy_idle * 1024 < 30e6)} |",
              f"| 10k open streams < 150 MB | {streams_cell} | {verdict(None if est10k is None else est10k < 150e6)} |"]
        if micro:
            picks = [v for k, v in micro.items() if k.startswith("pick/") and k.endswith("/1000")]
            worst = max(picks) if picks else None
            warm = micro.get("snapshot_apply/warm/5000")
            dwarm = micro.get("snapshot_apply/decode+warm/5000")
            r1, r10 = micro.get("body/1KB/scan+rewrite"), micro.get("body/10MB/scan+rewrite")
            flat = (r10 / (10 << 20)) / (r1 / (1 << 10)) if r1 and r10 else None
            # At most one copy: counted when the bench printed it, else estimated from timings.
            c10 = [micro.get(f"body/10MB/{x}") for x in ("scan+rewrite", "scan", "memcpy")]
            counted = copies.get("copies/10MB/scan+rewrite")
            n_copies = counted if counted is not None else (
                (c10[0] - c10[1]) / c10[2] if all(c10) else None)
            how = "bytes allocated / body" if counted is not None else "rewrite − scan, in memcpys"
            o += [f"| strategy pick at 1,000 backends < 200 ns (slowest strategy) | {ns(worst)} | "
                  f"{verdict(None if worst is None else worst < 200)} |",
                  f"| snapshot apply at 5,000 backends < 10 ms (warm; with decode) | {ns(warm)}; {ns(dwarm)} | "
                  f"{verdict(None if warm is None else warm < 10e6)} |",
                  f"| body rewrite linear (time per byte, 10 MB vs 1 KB), at most one copy "
                  f"({how}, at 10 MB) | {f(flat, 2)}×; {f(n_copies, 3 if counted is not None else 2)} | "
                  f"{verdict(None if flat is None or n_copies is None else flat < 1.5 and n_copies < (1.1 if counted is not None else 1.5))} |"]
        o.append("")
        # The variants, each against the plain switchyard row of the same run.
        lim = med("switchyard-limits", "saturation", "cpu_us_per_req")
        tr = med("switchyard-translated", "saturation", "cpu_us_per_req")
        bw = med("switchyard-base", "saturation", "cpu_us_per_req")
        tc = med("switchyard-traced", "saturation", "cpu_us_per_req")
        if lim or tr or bw or tc:
            o += ["## Variants against the switchyard row (same run)", "",
                  "| variant | measured | verdict |", "|---|---:|---|"]
        if bw:
            o.append(f"| this build against the base worker (`BASE_WORKER`): CPU/req | "
                     f"{ratio(sy_cpu, bw)} (base {ratio(bw, ng)} nginx, this build {ratio(sy_cpu, ng)} nginx) | – |")
        if tc:
            tcr = tc / sy_cpu if sy_cpu else None
            o.append(f"| traces sampled at 1% (issue 20): CPU/req ≤ 1.03× without | "
                     f"{ratio(tc, sy_cpu)} ({ratio(tc, ng)} nginx) | {verdict(None if tcr is None else tcr <= 1.03)} |")
        if lim:
            lr = lim / sy_cpu if sy_cpu else None
            o.append(f"| three enforced limits (issue 18): CPU/req ≤ 1.05× without limits | "
                     f"{ratio(lim, sy_cpu)} ({ratio(lim, ng)} nginx) | {verdict(None if lr is None else lr <= 1.05)} |")
        if tr:
            tt = med("switchyard-translated", "stream_paced", "ttfb_ms")
            tb = med("switchyard-translated", "stream_burst", "total_ms")
            sb = med("switchyard", "stream_burst", "total_ms")
            o += [f"| translated (issue 17), OpenAI Chat ⇄ Anthropic Messages: CPU/req | "
                  f"{ratio(tr, sy_cpu)} of passthrough ({ratio(tr, ng)} nginx) | – |",
                  f"| translated: added TTFB, paced stream, over direct (over passthrough) | "
                  f"{f((tt - d_ttfb) * 1000 if tt and d_ttfb else None, 0)} µs "
                  f"({f((tt - sy_ttfb) * 1000 if tt and sy_ttfb else None, 0)} µs) | – |",
                  f"| translated: burst stream total, over passthrough | "
                  f"{f((tb - sb) * 1000 if tb and sb else None, 0)} µs | – |"]
        if lim or tr or bw or tc:
            o.append("")
    Path(a.md).write_text("\n".join(o))
    print("\n".join(o))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="sub", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", required=True, help="JSON-lines file to append to")
    common.add_argument("--row", required=True)
    common.add_argument("--rep", type=int, default=1)

    s = sub.add_parser("oha", parents=[common])
    s.add_argument("--pid", type=int, required=True, help="root pid of the system under test")
    s.add_argument("--extra-pid", type=int)
    s.add_argument("--scenario", required=True)
    s.add_argument("command", nargs=argparse.REMAINDER)
    s.set_defaults(fn=cmd_oha)

    s = sub.add_parser("stream", parents=[common])
    s.add_argument("--url", required=True)
    s.add_argument("--key")
    s.add_argument("--model", default="bench-model")
    s.add_argument("--scenario", required=True)
    s.add_argument("-n", type=int, default=100)
    s.add_argument("--warmup", type=int, default=10)
    s.set_defaults(fn=cmd_stream)

    s = sub.add_parser("slow", parents=[common])
    s.add_argument("--url", required=True)
    s.add_argument("--key")
    s.add_argument("--model", default="bench-model")
    s.add_argument("--pid", type=int, required=True)
    s.add_argument("-n", type=int, default=10000)
    s.add_argument("--settle", type=float, default=1.0)
    s.add_argument("--idle-wait", type=float, default=3.0, help="seconds before the idle window")
    s.add_argument("--idle-window", type=float, default=5.0, help="seconds of idle measured")
    s.set_defaults(fn=cmd_slow)

    s = sub.add_parser("table")
    s.add_argument("--raw", required=True)
    s.add_argument("--machine", required=True)
    s.add_argument("--md", required=True)
    s.set_defaults(fn=cmd_table)

    s = sub.add_parser("criterion")
    s.add_argument("--dir", required=True, help="criterion's output dir (<target>/criterion)")
    s.add_argument("--copies", help="the hotpath bench's output (its `body-copies` lines)")
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_criterion)

    s = sub.add_parser("settle")
    s.add_argument("--pid", type=int, action="append", required=True, help="root pid (repeatable)")
    s.add_argument("--max-util", type=float, default=0.02, help="CPU share below which a tree is idle")
    s.add_argument("--window", type=float, default=0.25)
    s.add_argument("--timeout", type=float, default=60)
    s.add_argument("--metrics-url", help="also wait until this page's --zero-metric reads 0")
    s.add_argument("--zero-metric")
    s.set_defaults(fn=cmd_settle)

    s = sub.add_parser("tree")
    s.add_argument("pid", type=int)
    s.set_defaults(fn=lambda a: print(proc_tree(a.pid)))

    a = p.parse_args()
    if getattr(a, "command", None) and a.command[0] == "--":
        a.command = a.command[1:]
    a.fn(a)


if __name__ == "__main__":
    main()
