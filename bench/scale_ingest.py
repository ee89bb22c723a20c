"""Ingest into PostgreSQL by one consumer and by two, against SQLite's single writer.

Issue 18 asks, measured side by side in one run: events per second into
PostgreSQL with one consumer and with two on the same group (target: two at
least 1.6 times one), against SQLite's one writer; and the memory of a consumer.

``--events`` events of :mod:`bench.workload` (``make_events`` of :mod:`bench.ingest`)
are encoded in frames of ``--frame`` events and appended once to a Redis stream of
the run's own. Then, in rounds whose order rotates so that noise hits each alike,
each configuration (``--configs``; ``sqlite``, or ``pg-N`` for N consumers) runs
real ``python -m stemtrace.cli consume`` processes:

* ``sqlite``: one consumer (no group, the default) into a fresh SQLite file;
* ``pg-1``: one consumer of a group (``--group``) into a fresh PostgreSQL database;
* ``pg-2``: ``--consumers 2`` on the group (two processes) into a fresh database.

Each run gets a fresh database (``CREATE DATABASE`` on ``--pg``, dropped after)
and a fresh stream. The consumers start on an empty stream key; once each has
said it reads and has had a second to settle, a copy of the filled stream (with
the group already made, from its start) is renamed onto that key, which wakes
their blocked reads: start-up and migrations are left out of the timing. The
clock runs from the rename until every entry is stored: the SQLite cursor
(committed with its batch) is the last entry's id, or the group has handed out
the last entry and has none pending (entries are acknowledged after their batch
commits). Polled every 50 ms. After each run the tasks are counted; every run must
store the same number.

Where the time went (CPU and run-queue seconds of consumers, PostgreSQL backends,
the server's own processes, Redis and the rest of the machine, from ``/proc``, see
:mod:`bench.procstat`; the backends' states sampled from ``pg_stat_activity`` every
100 ms) and the peak memory (``VmHWM``) of each consumer and backend: see
``bench/README.md`` and :mod:`bench.scale_report`.

Usage, from the repository root, with Redis on 127.0.0.1:6379 and PostgreSQL on
127.0.0.1:5432 (user postgres, may create databases)::

    python -m bench.scale_ingest [--events 100000] [--rounds 3] [--frame 50]
        [--configs sqlite,pg-1,pg-2] [--pg postgresql://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis
from psycopg import sql

from bench import add_redis_options, procstat
from bench.capture_overhead import sigterm_as_exit
from bench.ingest import fill_stream, make_events
from bench.scale_report import report, run_line
from bench.workload import frames
from stemtrace.core.events import encode_frame

GROUP = "bench"
SETTLE = 1.0
"""Seconds the consumers sit on the empty stream before the clock starts."""
POLL = 0.05
AUX_TYPES = ("checkpointer", "background writer", "walwriter", "autovacuum launcher")


class BenchError(RuntimeError):
    pass


@dataclass(frozen=True)
class Config:
    name: str
    consumers: int  # 0: SQLite, one consumer without a group

    @property
    def postgres(self) -> bool:
        return self.consumers > 0

    @property
    def label(self) -> str:
        if not self.postgres:
            return "SQLite, 1 consumer"
        return f"PostgreSQL, {self.consumers} consumer{'s' if self.consumers > 1 else ''}"


def parse_config(name: str) -> Config:
    if name == "sqlite":
        return Config(name, 0)
    if name.startswith("pg-") and name[3:].isdigit() and 1 <= int(name[3:]) <= 16:
        return Config(name, int(name[3:]))
    raise ValueError(f"unknown configuration {name!r} (sqlite, pg-1, pg-2, ... pg-16)")


@dataclass
class Consumers:
    """The ``stemtrace consume`` process of one run (and its children)."""

    process: subprocess.Popen[bytes]
    log: Path
    pids: list[int] = field(default_factory=list)

    def log_tail(self, size: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-size:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # --consumers stops its children
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        for pid in self.pids[1:]:  # children the parent failed to stop, by their id
            if procstat.cmdline(pid):
                os.kill(pid, signal.SIGKILL)


class Bench:
    """The run's Redis stream, PostgreSQL admin connection and scratch directory."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.url = f"redis://{args.host}:{args.port}/{args.db}"
        self.redis = redis.Redis.from_url(self.url)
        self.redis.ping()
        self.admin = psycopg.connect(args.pg, autocommit=True, connect_timeout=10)
        self.prefix = f"bench-scale:{uuid.uuid4().hex[:8]}"
        self.master = f"{self.prefix}:events"
        self.workdir = Path(tempfile.mkdtemp(prefix="bench-scale-"))
        self.databases: set[str] = set()
        self.runs = 0
        info: Any = self.redis.info("server")
        self.redis_pid = int(info["process_id"]) if procstat.cmdline(int(info["process_id"])) else 0
        self.last_id = ""
        self.events = 0

    # -- set-up and clean-up ---------------------------------------------------------

    def fill(self) -> dict[str, Any]:
        count, size = self.args.events, self.args.frame
        print(f"generating {count} events ...", flush=True)
        events = make_events(count)
        encoded = [encode_frame(batch) for batch in frames(events, size)]
        fill_stream(self.url, self.master, encoded)
        last: Any = self.redis.xrevrange(self.master, count=1)
        self.last_id = last[0][0].decode()
        self.events = count
        del events
        gc.collect()
        return {"events": count, "frames": len(encoded), "bytes": sum(map(len, encoded))}

    def close(self) -> None:
        keys: Any = self.redis.keys(f"{self.prefix}:*")
        if keys:
            self.redis.delete(*keys)
        for name in sorted(self.databases):
            self.drop(name)
        self.admin.close()
        self.redis.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def create(self) -> str:
        name = f"bench_scale_{uuid.uuid4().hex[:12]}"
        self.admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.databases.add(name)
        return name

    def drop(self, name: str) -> None:
        self.admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        self.databases.discard(name)

    def pg_url(self, name: str) -> str:
        base = psycopg.conninfo.conninfo_to_dict(self.args.pg)
        base["dbname"] = name
        user, host = base.get("user", "postgres"), base.get("host", "127.0.0.1")
        return f"postgresql://{user}@{host}:{base.get('port', 5432)}/{name}"

    # -- one run ---------------------------------------------------------------------

    def run(self, config: Config) -> dict[str, Any]:
        self.runs += 1
        stream = f"{self.prefix}:run{self.runs}"
        staging = f"{stream}:staging"
        database = self.create() if config.postgres else None
        sqlite_path = self.workdir / f"run{self.runs}.db"
        db = self.pg_url(database) if database else str(sqlite_path)
        self.redis.copy(self.master, staging)
        if config.postgres:
            self.redis.xgroup_create(staging, GROUP, id="0")
        consumers = self.start(config, stream, db)
        try:
            self.wait_ready(config, consumers, stream)
            found = self.timed(config, consumers, stream, staging, database, sqlite_path)
            consumers.stop()
            found["tasks"] = self.count_tasks(database, sqlite_path)
        except BaseException:
            consumers.stop()
            raise
        finally:
            self.redis.delete(stream, staging)
            if database:
                self.drop(database)
            for suffix in ("", "-wal", "-shm"):
                Path(f"{sqlite_path}{suffix}").unlink(missing_ok=True)
        return found

    def start(self, config: Config, stream: str, db: str) -> Consumers:
        command = [
            sys.executable, "-m", "stemtrace.cli", "consume", "--broker", self.url,
            "--stream", stream, "--db", db, "--no-celery-events", "--queue-poll-seconds", "0",
            "--log-level", "warning",
        ]  # fmt: skip
        if config.postgres:
            command += ["--group", GROUP, "--consumer-name", f"c{self.runs}"]
            if config.consumers > 1:
                command += ["--consumers", str(config.consumers)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("STEMTRACE_")}
        log = self.workdir / f"run{self.runs}-{config.name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        return Consumers(process, log)

    def wait_ready(self, config: Config, consumers: Consumers, stream: str) -> None:
        """Until each consumer said it reads, and (in a group) the group knows them all."""
        wanted = max(1, config.consumers)
        deadline = time.monotonic() + 120
        while True:
            if consumers.process.poll() is not None:
                raise BenchError(f"{config.name}: consume exited:\n{consumers.log_tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"{config.name}: consumers not ready:\n{consumers.log_tail()}")
            said = consumers.log_tail(100_000).count(": reading ")
            if said >= wanted and (not config.postgres or self.members(stream) >= wanted):
                break
            time.sleep(0.1)
        time.sleep(SETTLE)
        consumers.pids = procstat.descendants(consumers.process.pid)

    def members(self, stream: str) -> int:
        try:
            groups: Any = self.redis.xinfo_groups(stream)
        except redis.ResponseError:
            return 0
        return sum(int(g["consumers"]) for g in groups if g["name"] in (GROUP, GROUP.encode()))

    def done(self, config: Config, stream: str, cursor: sqlite3.Connection | None) -> bool:
        if config.postgres:
            groups: Any = self.redis.xinfo_groups(stream)
            mine = next((g for g in groups if g["name"] in (GROUP, GROUP.encode())), None)
            if mine is None:
                return False
            handed = mine["last-delivered-id"]
            handed = handed.decode() if isinstance(handed, bytes) else str(handed)
            return handed == self.last_id and int(mine["pending"]) == 0
        assert cursor is not None
        try:
            row = cursor.execute("SELECT position FROM cursors").fetchone()
        except sqlite3.Error:  # busy a moment, or not there yet
            return False
        return row is not None and row[0] == self.last_id

    def timed(
        self,
        config: Config,
        consumers: Consumers,
        stream: str,
        staging: str,
        database: str | None,
        sqlite_path: Path,
    ) -> dict[str, Any]:
        cursor = None
        if not config.postgres:
            cursor = sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True, timeout=0.01)
        backends, aux = self.pg_pids(database)
        before = {
            "consumers": procstat.usages(consumers.pids),
            "backends": procstat.usages(backends),
            "aux": procstat.usages(aux),
        }
        redis_before = self.redis_usage()
        machine_before, own_before = procstat.machine(), time.process_time()
        load_before = procstat.loadavg()
        activity: Counter[str] = Counter()
        start = time.monotonic()
        self.redis.rename(staging, stream)
        polls = 0
        deadline = start + max(300.0, self.events / 200)
        while not self.done(config, stream, cursor):
            if time.monotonic() > deadline:
                raise BenchError(f"{config.name}: not done in time:\n{consumers.log_tail()}")
            if consumers.process.poll() is not None:
                raise BenchError(f"{config.name}: consume exited:\n{consumers.log_tail()}")
            polls += 1
            if database and polls % 2 == 0:
                activity.update(self.activity(database))
            time.sleep(POLL)
        wall = time.monotonic() - start
        backends_after, aux_after = self.pg_pids(database)
        used = {
            "consumers": procstat.used_since(
                before["consumers"], procstat.usages(procstat.descendants(consumers.process.pid))
            ),
            "backends": procstat.used_since(before["backends"], procstat.usages(backends_after)),
            "aux": procstat.used_since(before["aux"], procstat.usages(aux_after)),
            "redis": self.redis_usage() - redis_before,
        }
        machine = procstat.machine() - machine_before
        own = time.process_time() - own_before
        if cursor is not None:
            cursor.close()
        return {
            "wall": wall,
            "used": used,
            "machine": machine,
            "own": own,
            "others": machine.busy - own - sum(u.cpu for u in used.values()),
            "load": (load_before, procstat.loadavg()),
            "activity": dict(activity),
            "memory": self.memory(consumers, backends_after),
        }

    def pg_pids(self, database: str | None) -> tuple[list[int], list[int]]:
        """The run's backends (and autovacuum workers on its database); the server's own."""
        if database is None:
            return [], []
        rows = self.admin.execute(
            "SELECT pid, backend_type, datname FROM pg_stat_activity"
            " WHERE datname = %s OR backend_type = ANY(%s)",
            (database, list(AUX_TYPES)),
        ).fetchall()
        backends = [pid for pid, _kind, name in rows if name == database]
        aux = [pid for pid, kind, name in rows if name != database]
        postmaster = procstat.parent_of(aux[0]) if aux else None
        return backends, aux + ([postmaster] if postmaster else [])

    def activity(self, database: str) -> Counter[str]:
        """What each client backend of the run's database is doing now."""
        found: Counter[str] = Counter()
        for state, kind, event, query in self.admin.execute(
            "SELECT state, wait_event_type, wait_event, left(query, 60) FROM pg_stat_activity"
            " WHERE datname = %s AND backend_type = 'client backend'",
            (database,),
        ):
            if state == "active" and kind == "Lock":  # on what: the statement's first words
                found[f"Lock:{event} in {' '.join((query or '').split()[:3])}"] += 1
            elif state == "active":
                found["on CPU" if kind is None else f"{kind}:{event}"] += 1
            elif state == "idle in transaction":
                found["idle in transaction"] += 1
            else:
                found["idle"] += 1
        return found

    def redis_usage(self) -> procstat.Usage:
        if self.redis_pid:
            return procstat.usage(self.redis_pid)
        info: Any = self.redis.info("cpu")
        return procstat.Usage(float(info["used_cpu_user"]) + float(info["used_cpu_sys"]))

    def memory(self, consumers: Consumers, backends: list[int]) -> dict[str, Any]:
        """Peak memory of the processes that ingest, the ``--consumers`` parent apart."""
        ingesting, parent = [], None
        for pid in procstat.descendants(consumers.process.pid):
            line = procstat.cmdline(pid)
            if "resource_tracker" in line:
                continue
            if pid == consumers.process.pid and "--consumers" in line:
                parent = procstat.memory(pid)
            else:
                ingesting.append(procstat.memory(pid))
        return {
            "consumers": ingesting,
            "parent": parent,
            "backends": [procstat.memory(pid) for pid in backends],
        }

    def count_tasks(self, database: str | None, sqlite_path: Path) -> int:
        if database:
            with psycopg.connect(self.pg_url(database), connect_timeout=10) as conn:
                row = conn.execute("SELECT COUNT(*) FROM tasks").fetchone()
        else:
            with sqlite3.connect(sqlite_path) as conn:
                row = conn.execute("SELECT COUNT(*) FROM tasks").fetchone()
        return int(row[0]) if row else 0


def code_version() -> str:
    """The commit the consumers run, and whether the package differs from it (other work
    in the same checkout changes what a consumer started later imports)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        changed = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "stemtrace"],
            capture_output=True, text=True, check=True,
        ).stdout.splitlines()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return f"{root} (not a git checkout)"
    return f"{root} at {head}" + (
        f", {len(changed)} files of stemtrace/ changed since" if changed else ""
    )


def measure(bench: Bench, configs: list[Config], rounds: int) -> dict[str, Any]:
    print(f"stemtrace from {code_version()}", flush=True)
    stream = bench.fill()
    print(
        f"{stream['events']} events in {stream['frames']} frames of {bench.args.frame}"
        f" ({stream['bytes'] / stream['events']:.0f} bytes/event) on {bench.url} {bench.master};"
        f" load average {procstat.loadavg()}, {procstat.cores()} cores",
        flush=True,
    )
    results: dict[str, list[dict[str, Any]]] = {c.name: [] for c in configs}
    tasks: set[int] = set()
    for round_no in range(rounds):
        shift = round_no % len(configs)
        for config in configs[shift:] + configs[:shift]:
            found = bench.run(config)
            results[config.name].append(found)
            tasks.add(found["tasks"])
            print(
                f"round {round_no + 1}/{rounds} {run_line(config.label, found, bench.events)}",
                flush=True,
            )
            if len(tasks) > 1:
                raise BenchError(f"runs stored different numbers of tasks: {sorted(tasks)}")
    return {"stream": stream, "results": results, "tasks": tasks.pop()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scale_ingest",
        description="Ingest events/s: SQLite's one consumer, PostgreSQL's one and two.",
    )
    parser.add_argument("--events", type=int, default=100_000, help="events per run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--frame", type=int, default=50, help="events per frame (stream entry)")
    parser.add_argument("--configs", default="sqlite,pg-1,pg-2",
                        help="comma-separated: sqlite, pg-N (N consumers on a group)")  # fmt: skip
    parser.add_argument(
        "--pg",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="a PostgreSQL database to connect to and create the runs' databases from",
    )
    add_redis_options(parser)
    args = parser.parse_args(argv)
    if args.events < 1 or args.rounds < 1 or args.frame < 1:
        parser.error("need --events, --rounds and --frame >= 1")
    try:
        args.configs = [parse_config(name.strip()) for name in args.configs.split(",")]
    except ValueError as exc:
        parser.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        bench = Bench(args)
    except (redis.RedisError, psycopg.Error) as exc:
        print(f"cannot reach Redis or PostgreSQL: {exc}", file=sys.stderr)
        return 2
    try:
        with sigterm_as_exit():
            result = measure(bench, args.configs, args.rounds)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        bench.close()
    print()
    print(report(result, args.configs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
