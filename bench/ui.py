"""What a person sees: live latency in the browser, 100 SSE clients, a 10,000-task flow.

One real ``stemtrace run`` (free port, temporary database, its own stream key
in ``--db`` of Redis on 127.0.0.1:6379), one real prefork worker
(``tests.support.celery_worker`` on ``tests.proj``) and Debian's Chromium
driven by Playwright, measured in one run:

1. **State change to pixels**: ``--tasks`` ``proj.slow`` tasks, sent one at a
   time, with the executions page open. For each, the worker's own timestamps
   of ``started`` and ``succeeded`` (the events stemtrace recorded, from
   ``GET /api/tasks/{id}``; same machine, same clock) against ``Date.now()``
   in the page when the row's badge text changed. A ``MutationObserver``
   installed with ``page.add_init_script`` reports through
   ``page.expose_binding``: both are injected by Playwright outside the page's
   Content-Security-Policy, which forbids inline scripts and eval.
2. **100 SSE clients**: ``--load-seconds`` of ``--rate`` tasks per second
   through the worker with no SSE client, then the same load with ``--clients``
   raw connections to ``/live`` that read and discard. The server's RSS
   (``VmRSS``) and CPU time (``utime + stime``) are sampled every second.
3. **A 10,000-task flow**: one root and ``--flow`` children (``parent_id`` and
   ``root_id`` set, ``sent`` + ``succeeded`` each, so every one is a task node),
   appended to the real stream as capture would (``XADD ... d <frame>``).
   Then ``/flows/{root}`` is opened ``--runs`` times until the graph island says
   ``data-graph-state="ready"`` and a node is visible, and
   ``GET /api/flows/{root}`` is timed alone.

Usage, from the repository root, with Redis on 127.0.0.1:6379::

    python -m bench.ui [--tasks 30] [--clients 100] [--load-seconds 30] [--flow 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx  # the HTTP client pyproject's test extra declares
import redis

from bench.capture_overhead import sigterm_as_exit, tail

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("STEMTRACE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]  # fmt: skip
LIVE_TARGET_S = 1.0  # p95, state change in the worker to the badge in the page
FLOW_TARGET_S = 2.0  # the 10,000-task flow page until the graph shows
RSS_SLACK_MB = 2.0  # "flat": RSS grows by less than this more than with no client
CPU_SLACK = 5.0  # "near the baseline": mean CPU % of one core above the 0-client window
BADGES = {"started": "▶ started", "succeeded": "✓ success"}

# Runs in every document before its own scripts. Reports each row's badge text
# whenever it changes, with the page's clock, and when the flow graph is ready.
OBSERVER = """
(() => {
  const seen = new Map();
  let graphReported = false;
  const scan = () => {
    const now = Date.now();
    const rows = document.getElementById('rows');  // the executions table's live tbody
    for (const row of rows ? rows.children : []) {
      const badge = row.id.startsWith('task-') && row.querySelector('.badge.state');
      if (!badge) continue;
      const text = badge.textContent.replace(/\\s+/g, ' ').trim();
      if (seen.get(row.id) !== text) {
        seen.set(row.id, text);
        window.__stemtraceBadge(row.id.slice(5), text, now);
      }
    }
    const graph = !graphReported && document.getElementById('flow-graph');
    if (graph && graph.dataset.graphState === 'ready') {
      const node = document.querySelector('.react-flow__node');
      if (node) {
        const box = node.getBoundingClientRect();
        if (box.width > 0 && box.height > 0) {
          graphReported = true;
          window.__stemtraceGraphReady = performance.now();
        }
      }
    }
  };
  const start = () => {
    new MutationObserver(scan).observe(document.documentElement, {
      subtree: true, childList: true, characterData: true, attributes: true,
      attributeFilter: ['data-graph-state'],
    });
    scan();
  };
  if (document.documentElement) start();
  else document.addEventListener('DOMContentLoaded', start);
})();
"""


class BenchError(RuntimeError):
    pass


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(math.ceil(0.95 * len(ordered)) - 1, 0)]


def wait(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(interval)
    raise BenchError(f"{what}: not within {timeout:.0f} s")


# -- the processes --------------------------------------------------------------------


class Server:
    """``stemtrace run`` in a subprocess of its own session; stopped by its pid."""

    def __init__(self, broker: str, stream: str, db: Path, log: Path) -> None:
        from tests.support import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {k: v for k, v in os.environ.items() if not k.startswith("STEMTRACE_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        command = [sys.executable, "-m", "stemtrace.cli", "run", "--port", str(self.port),
                   "--broker", broker, "--stream", stream, "--db", str(db),
                   "--log-level", "warning"]  # fmt: skip
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.clock_tick = os.sysconf("SC_CLK_TCK")

    def wait_ready(self, client: httpx.Client) -> None:
        def answers() -> bool:
            if self.process.poll() is not None:
                raise BenchError(f"server exited ({self.process.returncode}):\n{tail(self.log)}")
            with contextlib.suppress(httpx.HTTPError):
                return client.get("/api/health", timeout=5).status_code == 200
            return False

        wait(answers, 60, "server health")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise BenchError("no VmRSS for the server")

    def cpu_s(self) -> float:
        """User + system CPU seconds of the server process, all its threads."""
        stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / self.clock_tick

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@dataclass
class Run:
    args: argparse.Namespace
    scenario: Any
    server: Server
    client: httpx.Client
    app: Any
    page: Any
    sent: list[str] = field(default_factory=list)
    badges: dict[str, dict[str, float]] = field(default_factory=dict)

    def on_badge(self, source: Any, task_id: str, text: str, ms: float) -> None:
        self.badges.setdefault(task_id, {}).setdefault(text, ms / 1000)

    def task(self, task_id: str) -> dict[str, Any] | None:
        response = self.client.get(f"/api/tasks/{task_id}")
        return response.json() if response.status_code == 200 else None

    def send(self, name: str, *args: Any) -> str:
        task_id = str(self.app.tasks[name].apply_async(args).id)
        self.sent.append(task_id)
        return task_id


# -- 1. state change to the page ------------------------------------------------------


def measure_live(run: Run) -> dict[str, Any]:
    page, args = run.page, run.args
    warm = run.send("proj.add", 1, 1)  # the page shows the table, not "No tasks yet"
    wait(lambda: run.task(warm), 30, "the warm-up task in the store")
    page.goto(run.server.url + "/")
    page.locator("#rows[sse-connect]").wait_for(timeout=15_000)

    def shown(task_id: str, text: str) -> bool:
        return text in run.badges.get(task_id, {})

    # Playwright delivers binding calls while it waits: poll with page waits.
    def page_wait(check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise BenchError(f"{what}: not within {timeout:.0f} s")
            page.wait_for_timeout(20)

    page_wait(lambda: shown(warm, BADGES["succeeded"]), 15, "the observer reporting a row")
    lags: dict[str, list[float]] = {"started": [], "succeeded": []}
    missed = 0
    for number in range(args.tasks):
        task_id = run.send("proj.slow", args.sleep)
        page_wait(lambda t=task_id: shown(t, BADGES["succeeded"]), 30, f"task {task_id} in page")
        detail = wait(lambda t=task_id: run.task(t), 10, f"task {task_id} in the API")
        worker_ts = {e["kind"]: e["ts"] for e in detail["events"] if e["kind"] in BADGES}
        seen = run.badges[task_id]
        for kind, text in BADGES.items():
            if kind in worker_ts and text in seen:
                lags[kind].append(seen[text] - worker_ts[kind])
            elif kind == "started":
                missed += 1  # success came in the same refresh as started
        if (number + 1) % 10 == 0:
            print(f"  {number + 1}/{args.tasks} tasks seen in the page", flush=True)
        page.wait_for_timeout(100)
    page.goto("about:blank")  # no SSE client of ours during the load test
    return {"lags": lags, "missed_started": missed}


# -- 2. SSE clients under load ---------------------------------------------------------


class SSEClients:
    """``count`` raw HTTP/1.1 connections to ``/live``, in a thread with its own loop."""

    def __init__(self, port: int, count: int) -> None:
        self.port, self.count = port, count
        self.ready = 0
        self.changed = 0
        self.bytes = 0
        self.errors: list[str] = []
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def __enter__(self) -> SSEClients:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        await asyncio.gather(*(self._one() for _ in range(self.count)))

    async def _one(self) -> None:
        assert self._stop is not None
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError as exc:
            self.errors.append(repr(exc))
            return
        request = (f"GET /live HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                   "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n")  # fmt: skip
        writer.write(request.encode())
        stop = asyncio.create_task(self._stop.wait())
        counted_ready = False
        try:
            while True:
                read = asyncio.create_task(reader.read(65536))
                done, _ = await asyncio.wait({read, stop}, return_when=asyncio.FIRST_COMPLETED)
                if stop in done:
                    read.cancel()
                    return
                chunk = read.result()
                if not chunk:
                    self.errors.append("closed by the server")
                    return
                self.bytes += len(chunk)
                self.changed += chunk.count(b"event: changed")
                if not counted_ready and b"event: ready" in chunk:
                    counted_ready = True
                    self.ready += 1
        except OSError as exc:
            self.errors.append(repr(exc))
        finally:
            stop.cancel()
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def load_window(run: Run, clients: int) -> dict[str, Any]:
    """``--load-seconds`` of tasks at ``--rate``/s, the server sampled every second."""
    server, args = run.server, run.args
    tasks_before = run.client.get("/api/health").json()["store"]["tasks"]
    result: dict[str, Any] = {"clients": clients, "rss_start": server.rss_mb()}
    with contextlib.ExitStack() as stack:
        sse = None
        if clients:
            sse = stack.enter_context(SSEClients(server.port, clients))
            wait(lambda: sse.ready + len(sse.errors) >= clients, 30, f"{clients} SSE clients")
            if sse.errors:
                raise BenchError(f"SSE clients failed: {sse.errors[:3]}")
            time.sleep(1)
        result["rss_connected"] = server.rss_mb()
        samples = [(time.monotonic(), server.cpu_s(), server.rss_mb())]
        began = samples[0][0]
        sent = 0
        while (now := time.monotonic()) < began + args.load_seconds:
            due = int((now - began) * args.rate) + 1
            while sent < due:
                run.send("proj.add", sent, 1)
                sent += 1
            if now >= began + len(samples):  # on the second, without drift
                samples.append((now, server.cpu_s(), server.rss_mb()))
            time.sleep(min(1 / args.rate, 0.05))
        samples.append((time.monotonic(), server.cpu_s(), server.rss_mb()))
        result["rss_end"] = server.rss_mb()
        if sse is not None:
            result["changed_per_client"] = sse.changed / clients
            result["sse_errors"] = list(sse.errors)
    # Everything sent reached the store: the load was real.
    expected = tasks_before + sent
    with contextlib.suppress(BenchError):
        wait(lambda: run.client.get("/api/health").json()["store"]["tasks"] >= expected, 20, "")
    result["stored"] = run.client.get("/api/health").json()["store"]["tasks"] - tasks_before
    result["sent"] = sent
    result["samples"] = samples
    if clients:
        time.sleep(1)
        result["rss_after_disconnect"] = server.rss_mb()
    return result


def cpu_windows(samples: list[tuple[float, float, float]], width: float = 5.0) -> list[float]:
    """CPU % (of one core) in consecutive ``width``-second windows from the first sample."""
    found: list[float] = []
    start, edge = samples[0], samples[0][0] + width
    for sample in samples[1:]:
        if sample[0] >= edge - 0.5:
            found.append(100 * (sample[1] - start[1]) / (sample[0] - start[0]))
            start, edge = sample, edge + width
    return found


def rss_growth(samples: list[tuple[float, float, float]]) -> float:
    """Median RSS of the last quarter minus that of the first quarter, in MB."""
    quarter = max(len(samples) // 4, 1)
    first = statistics.median(s[2] for s in samples[:quarter])
    last = statistics.median(s[2] for s in samples[-quarter:])
    return last - first


# -- 3. the big flow -------------------------------------------------------------------


def feed_flow(run: Run) -> tuple[str, str]:
    """A root that spawned ``--flow`` children, through the real stream. Returns ids."""
    from stemtrace.core.events import encode_frame
    from stemtrace.transports.redis import FRAME_FIELD

    root, now = uuid.uuid4().hex, time.time()
    base = {"host": "celery@bench", "pid": 1}
    events: list[dict[str, Any]] = [
        {**base, "kind": "sent", "eid": "r0", "ts": now, "task_id": root,
         "name": "proj.fanout", "root_id": root, "args": [run.args.flow], "kwargs": {}},
        {**base, "kind": "started", "eid": "r1", "ts": now + 0.001, "task_id": root,
         "name": "proj.fanout"},
    ]  # fmt: skip
    last = root
    for i in range(run.args.flow):
        last = f"{root[:8]}-{i:05d}"
        common = {**base, "task_id": last, "name": "proj.add", "parent_id": root, "root_id": root}
        events.append({**common, "kind": "sent", "eid": f"s{i}", "ts": now + 0.002 + i * 1e-5,
                       "args": [i, i], "kwargs": {}})  # fmt: skip
        events.append({**common, "kind": "succeeded", "eid": f"d{i}", "ts": now + 1 + i * 1e-5,
                       "result": 2 * i, "runtime": 0.01})  # fmt: skip
    events.append({**base, "kind": "succeeded", "eid": "r2", "ts": now + 0.5, "task_id": root,
                   "name": "proj.fanout", "result": None, "runtime": 0.5})  # fmt: skip
    client = redis.Redis.from_url(run.scenario.broker)
    try:
        for start in range(0, len(events), 500):
            frame = encode_frame(events[start : start + 500])
            client.xadd(run.scenario.stream, {FRAME_FIELD: frame})
    finally:
        client.close()
    return root, last


def measure_flow(run: Run) -> dict[str, Any]:
    began = time.perf_counter()
    root, last = feed_flow(run)
    wait(lambda: run.task(root) and run.task(last), 120, "the flow in the store", interval=0.2)
    ingest_s = time.perf_counter() - began
    api_s, size, nodes = [], 0, 0
    for _ in range(run.args.runs):
        start = time.perf_counter()
        response = run.client.get(f"/api/flows/{root}", timeout=120)
        api_s.append(time.perf_counter() - start)
        if response.status_code != 200:
            raise BenchError(f"/api/flows: {response.status_code} {response.text[:300]}")
        size, nodes = len(response.content), len(response.json()["nodes"])
    html_s, html_bytes = [], 0
    for _ in range(run.args.runs):
        start = time.perf_counter()
        response = run.client.get(f"/flows/{root}", timeout=120)
        html_s.append(time.perf_counter() - start)
        html_bytes = len(response.content)
    page = run.page
    runs: list[dict[str, float]] = []
    for _ in range(run.args.runs):
        page.goto("about:blank")
        start = time.perf_counter()
        page.goto(f"{run.server.url}/flows/{root}", wait_until="commit", timeout=120_000)
        page.locator('#flow-graph[data-graph-state="ready"]').wait_for(timeout=120_000)
        page.locator(".react-flow__node").first.wait_for(state="visible", timeout=120_000)
        wall = time.perf_counter() - start
        timing = page.evaluate(
            "() => ({html: performance.getEntriesByType('navigation')[0].responseEnd,"
            " dom: performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd,"
            " ready: window.__stemtraceGraphReady || null,"
            " nodes: document.getElementById('flow-graph').dataset.graphNodes,"
            " layout: document.getElementById('flow-graph').dataset.graphLayout})"
        )
        runs.append({"wall": wall, **timing})
    page.goto("about:blank")
    return {
        "root": root,
        "ingest_s": ingest_s,
        "api_s": api_s,
        "api_bytes": size,
        "api_nodes": nodes,
        "html_s": html_s,
        "html_bytes": html_bytes,
        "runs": runs,
    }


# -- the report ------------------------------------------------------------------------


def report(args: argparse.Namespace, live: dict[str, Any], loads: list[dict[str, Any]],
           flow: dict[str, Any]) -> str:  # fmt: skip
    lines = [f"{'measure':<44} {'value':>24}  {'target':<14} verdict"]

    def row(label: str, value: str, target: str = "", ok: bool | None = None) -> None:
        verdict = "" if ok is None else ("ok" if ok else "MISSED")
        lines.append(f"{label:<44} {value:>24}  {target:<14} {verdict}")

    for kind, label in (("started", "started"), ("succeeded", "success")):
        lags = live["lags"][kind]
        if not lags:
            row(f"worker {kind} -> badge '{label}'", "never seen", "p95 < 1 s", False)
            continue
        high = p95(lags)
        row(
            f"worker {kind} -> badge '{label}' (n={len(lags)})",
            f"median {statistics.median(lags):.3f} s, p95 {high:.3f} s",
            f"p95 < {LIVE_TARGET_S:.0f} s",
            high < LIVE_TARGET_S,
        )
    if live["missed_started"]:
        row("  'started' never shown (went to success)", f"{live['missed_started']} tasks")
    base, many = loads
    growth, growth0 = rss_growth(many["samples"]), rss_growth(base["samples"])
    row(
        f"RSS, {many['clients']} SSE clients: start/conn/end",
        f"{many['rss_start']:.0f} / {many['rss_connected']:.0f} / {many['rss_end']:.0f} MB",
    )
    row(
        f"  RSS growth in the window, {many['clients']} vs 0 clients",
        f"{growth:+.1f} vs {growth0:+.1f} MB",
        f"flat: < +{RSS_SLACK_MB:.0f} MB",
        growth < growth0 + RSS_SLACK_MB,
    )
    row("  RSS, 0 clients: start/end", f"{base['rss_start']:.0f} / {base['rss_end']:.0f} MB")
    row(f"  RSS after the {many['clients']} disconnected", f"{many['rss_after_disconnect']:.0f} MB")
    cpu0, cpu1 = cpu_windows(base["samples"]), cpu_windows(many["samples"])
    mean0, mean1 = statistics.mean(cpu0), statistics.mean(cpu1)
    row(
        f"server CPU, {many['clients']} clients vs 0 (mean)",
        f"{mean1:.1f}% vs {mean0:.1f}% ({mean1 / max(mean0, 0.1):.1f}x)",
        f"< +{CPU_SLACK:.0f} points",
        mean1 < mean0 + CPU_SLACK,
    )
    row("  per 5 s, 0 clients", " ".join(f"{c:.0f}" for c in cpu0))
    row(f"  per 5 s, {many['clients']} clients", " ".join(f"{c:.0f}" for c in cpu1))
    row(
        f"  load: tasks sent/stored at {args.rate:g}/s",
        f"{base['sent']}/{base['stored']}, {many['sent']}/{many['stored']}",
    )
    row("  'changed' events per SSE client", f"{many['changed_per_client']:.0f}")
    walls = [r["wall"] for r in flow["runs"]]
    row(
        f"/flows/<{args.flow:,} tasks> to graph ready (n={len(walls)})",
        f"median {statistics.median(walls):.2f} s, max {max(walls):.2f} s",
        f"< {FLOW_TARGET_S:.0f} s",
        max(walls) < FLOW_TARGET_S,
    )
    for key, label in (("html", "HTML received"), ("dom", "DOMContentLoaded"),
                       ("ready", "graph ready, a node drawn")):  # fmt: skip
        found = [r[key] / 1000 for r in flow["runs"] if r[key]]
        if found:
            row(f"  in the page: {label}", f"median {statistics.median(found):.2f} s")
    alone = [
        ("api_s", "GET /api/flows/<root>", flow["api_bytes"]),
        ("html_s", "GET /flows/<root> (HTML)", flow["html_bytes"]),
    ]
    for key, label, size in alone:
        took = flow[key]
        row(
            f"{label} alone (n={len(took)})",
            f"median {statistics.median(took):.2f} s, max {max(took):.2f} s",
        )
        row("  size", f"{size / 1e6:.1f} MB")
    last = flow["runs"][-1]
    row("flow nodes: API / drawn", f"{flow['api_nodes']} / {last['nodes']} ({last['layout']})")
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------


@contextlib.contextmanager
def browser_page(run_badge: Callable[..., None]) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            context.expose_binding("__stemtraceBadge", run_badge)
            context.add_init_script(OBSERVER)
            yield context.new_page()
        finally:
            browser.close()


def cleanup_redis(scenario: Any, sent: list[str], worker_name: str | None) -> None:
    """Delete our keys: stream, queue and its bindings, results, the worker's pidbox."""
    client = redis.Redis.from_url(scenario.broker)
    try:
        ours = [scenario.stream, *client.scan_iter(match=f"*{scenario.queue}*", count=1000)]
        client.delete(*ours)
        for start in range(0, len(sent), 1000):
            client.delete(*(f"celery-task-meta-{t}" for t in sent[start : start + 1000]))
        if worker_name:
            for key in client.scan_iter(match="_kombu.binding.*", count=1000):
                if client.type(key) != b"set":
                    continue
                for member in client.smembers(key):
                    if worker_name.encode() in member:
                        client.srem(key, member)
            client.delete(f"{worker_name}.celery.pidbox")
        for tag, raw in client.hscan_iter("unacked"):
            if scenario.queue.encode() in raw:
                client.hdel("unacked", tag)
                client.zrem("unacked_index", tag)
    finally:
        client.close()


def worker_name_from(log: Path) -> str | None:
    for line in log.read_text(errors="replace").splitlines():
        if ".> " not in line and "@" in line and line.lstrip().startswith("-------------- w"):
            return line.split()[1]
    return None


def measure(args: argparse.Namespace, tmp: Path) -> str:
    import stemtrace
    from tests.proj import make_app
    from tests.support import ROOT as TESTS_ROOT
    from tests.support import Scenario, celery_worker

    scenario = Scenario(db=args.db)
    server = Server(scenario.broker, scenario.stream, tmp / "ui.db", tmp / "server.log")
    sent: list[str] = []
    worker_log = TESTS_ROOT / ".pytest_cache" / f"worker-{scenario.queue}.log"
    worker_name = None
    app = make_app(scenario.broker, scenario.queue)
    capture = stemtrace.init(app, stream=scenario.stream, flush_interval=args.flush_interval)
    try:
        with contextlib.ExitStack() as stack:
            client = stack.enter_context(httpx.Client(base_url=server.url, timeout=30))
            server.wait_ready(client)
            print(f"server pid {server.process.pid} on {server.url}; stream {scenario.stream}, "
                  f"queue {scenario.queue} in {scenario.broker}", flush=True)  # fmt: skip
            flush = {"STEMTRACE_FLUSH_INTERVAL": str(args.flush_interval)}
            worker = stack.enter_context(celery_worker(scenario, pool="prefork", **flush))
            worker_name = worker_name_from(worker_log)
            print(f"worker pid {worker.pid} ({worker_name}), prefork -c 2", flush=True)
            run = Run(args, scenario, server, client, app, None, sent)
            run.page = stack.enter_context(browser_page(run.on_badge))

            print(f"1. {args.tasks} x proj.slow({args.sleep}) one at a time, page open", flush=True)
            live = measure_live(run)
            loads = []
            for clients in (0, args.clients):
                print(f"2. {args.load_seconds:.0f} s of {args.rate:g} tasks/s, "
                      f"{clients} SSE clients", flush=True)  # fmt: skip
                loads.append(load_window(run, clients))
            print(f"3. a flow of {args.flow} tasks through the stream, {args.runs} page loads",
                  flush=True)  # fmt: skip
            flow = measure_flow(run)
    finally:
        if capture is not None:
            capture.publisher.close(2)
        app.close()
        server.stop()
        cleanup_redis(scenario, sent, worker_name)
        worker_log.unlink(missing_ok=True)
    return report(args, live, loads, flow)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ui",
        description="Live latency in the browser, 100 SSE clients, a 10,000-task flow.",
    )
    parser.add_argument("--tasks", type=int, default=30, help="tasks timed in the browser")
    parser.add_argument("--sleep", type=float, default=0.3, help="seconds each proj.slow sleeps")
    parser.add_argument("--flush-interval", type=float, default=0.2,
                        help="capture's flush interval (its default is 0.2 s)")  # fmt: skip
    parser.add_argument("--clients", type=int, default=100, help="concurrent SSE clients")
    parser.add_argument("--load-seconds", type=float, default=30.0, help="length of a load window")
    parser.add_argument("--rate", type=float, default=20.0, help="tasks per second under load")
    parser.add_argument("--flow", type=int, default=10_000, help="children of the big flow")
    parser.add_argument("--runs", type=int, default=5, help="timed loads of the flow page")
    parser.add_argument("--db", type=int, default=12, help="Redis database (127.0.0.1:6379)")
    args = parser.parse_args(argv)
    if min(args.tasks, args.clients, args.flow, args.runs) < 1 or args.load_seconds < 10:
        parser.error("need --tasks, --clients, --flow, --runs >= 1 and --load-seconds >= 10")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-ui-"))
    print(f"logs in {tmp}", flush=True)
    began = time.monotonic()
    try:
        with sigterm_as_exit():
            summary = measure(args, tmp)
    except (BenchError, AssertionError) as exc:
        print(f"benchmark failed: {exc}\nserver log:\n{tail(tmp / 'server.log')}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    for path in tmp.iterdir():
        path.unlink()
    tmp.rmdir()
    print(f"\nfinished in {time.monotonic() - began:.0f} s\n")
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
