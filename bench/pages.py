"""Server time of the pages on a big store: executions (plain and filtered), task detail.

Uses the database ``bench/store_queries.py`` generates (1,000,000 tasks by
default), served by a real ``stemtrace run --no-consumer``. Prints median and
p95 per page against the target (p95 < 50 ms), the HTML size, and the
server's RSS.

    python -m bench.pages [--db /tmp/stemtrace-bench-1000000.db] [--requests 30]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx

TARGET_MS = 50.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pages", description=__doc__)
    parser.add_argument("--db", type=Path, default=Path("/tmp/stemtrace-bench-1000000.db"))
    parser.add_argument("--requests", type=int, default=30)
    args = parser.parse_args(argv)
    if not args.db.exists():
        parser.error(f"{args.db} does not exist: run python -m bench.store_queries first")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "stemtrace.cli", "run", "--db", str(args.db), "--port", str(port),
         "--no-consumer", "--log-level", "warning", "--retention-days", "0", "--max-tasks", "0"],
    )  # fmt: skip
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        for _ in range(120):
            try:
                if client.get("/api/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        sample = client.get("/api/tasks", params={"limit": 1}).json()["tasks"][0]
        failed = client.get("/api/tasks", params={"limit": 1, "state": "FAILURE"}).json()
        pages = {
            "executions, first page": "/",
            "executions, by name": f"/?name={sample['name']}",
            "executions, by state": "/?state=FAILURE",
            "executions, by name and state": f"/?name={sample['name']}&state=FAILURE",
            "task detail": f"/tasks/{sample['id']}",
        }
        if failed["tasks"]:
            pages["task detail, a failure"] = f"/tasks/{failed['tasks'][0]['id']}"
        print(
            f"{'page':32s} {'median':>9s} {'p95':>9s} {'HTML':>8s}  target p95 < {TARGET_MS:.0f} ms"
        )
        for label, url in pages.items():
            for _ in range(3):
                client.get(url)
            times = []
            for _ in range(args.requests):
                start = time.perf_counter()
                response = client.get(url)
                times.append((time.perf_counter() - start) * 1000)
            times.sort()
            p95 = times[max(int(0.95 * len(times)) - 1, 0)]
            verdict = "ok" if p95 < TARGET_MS else "MISSED"
            print(f"{label:32s} {statistics.median(times):7.1f}ms {p95:7.1f}ms "
                  f"{len(response.content) / 1024:6.0f}KB  {verdict}")  # fmt: skip
        status = Path(f"/proc/{server.pid}/status").read_text()
        rss = next(line for line in status.splitlines() if line.startswith("VmRSS"))
        print(f"server RSS: {int(rss.split()[1]) // 1024} MB")
    finally:
        server.terminate()
        server.wait(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
