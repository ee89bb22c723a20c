"""The ``stemtrace`` command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import fields
from typing import Any

from stemtrace import __version__
from stemtrace.cli import gc as collector
from stemtrace.core.env import parse_env
from stemtrace.settings import LOG_LEVELS, SettingError, Settings
from stemtrace.store import BadTarget

DEMO_DB = "stemtrace-demo.db"
"""The demo's made-up shop gets its own file, so it never mixes into ``stemtrace.db``."""
DEMO_INTERVAL = 2.0
DEMO_DEFAULTS = {
    "STEMTRACE_DB": DEMO_DB,
    "STEMTRACE_PROBLEM_WAIT_SECONDS": "15",
    "STEMTRACE_PROBLEM_HELD_SECONDS": "10",
    "STEMTRACE_QUEUE_POLL_SECONDS": "2",
}
"""The demo's problems show within a minute; each flag or variable still overrides these."""
DEFAULTS: dict[str, Any] = {spec.name: spec.default for spec in fields(Settings)}


def _help(text: str, name: str, default: object = None) -> str:
    """``text``, then the variable behind the flag and its default (the settings' own)."""
    value = DEFAULTS[name] if default is None else default
    shown = f"{value:g}" if isinstance(value, float) else str(value)
    return f"{text} (STEMTRACE_{name.upper()}; default {shown})"


def _server_options(parser: argparse.ArgumentParser, *, web: bool) -> None:
    """Flags of the settings object; each defaults to its ``STEMTRACE_*`` variable."""
    add = parser.add_argument
    add("--broker", help=_help("Redis or RabbitMQ URL the events come from", "broker"))
    add("--stream", help=_help("stream key or exchange init(app) publishes to", "stream"))
    add("--queue", help=_help("RabbitMQ: this server's own queue", "queue", "from host and --db"))
    add("--group", metavar="NAME",
        help=_help("a consumer group: its consumers split the stream (Redis XREADGROUP;"
                   " RabbitMQ: one shared queue)", "group", "none: read it all"))  # fmt: skip
    add("--consumer-name", metavar="NAME",
        help=_help("this consumer's name in --group", "consumer_name", "host-pid"))  # fmt: skip
    add("--claim-idle-seconds", type=float, metavar="SECONDS",
        help=_help("--group: take over entries a dead consumer left pending this long",
                   "claim_idle_seconds"))  # fmt: skip
    if not web:
        add("--consumers", type=int, metavar="N",
            help=_help("run N consumer processes on --group (not with a SQLite --db)",
                       "consumers"))  # fmt: skip
    add("--no-celery-events", dest="celery_events", action="store_const", const=False,
        help="do not read Celery's own events (-E) (STEMTRACE_CELERY_EVENTS=0)")  # fmt: skip
    add("--db", help=_help("SQLite database file (a path, or sqlite:///path)", "db"))
    add(
        "--retention-days",
        type=float,
        metavar="DAYS",
        help=_help("forget tasks first seen longer ago; 0 keeps forever", "retention_days"),
    )
    add(
        "--max-tasks",
        type=int,
        metavar="N",
        help=_help("forget the oldest tasks beyond N; 0 for no limit", "max_tasks"),
    )
    add(
        "--rollup-minutes-days",
        type=float,
        metavar="DAYS",
        help=_help("keep the rollups' per-minute rows DAYS days, then fold them into hours",
                   "rollup_minutes_days"),
    )  # fmt: skip
    add(
        "--queue-poll-seconds",
        type=float,
        metavar="SECONDS",
        help=_help("read the broker's queue lengths this often (read-only); 0: never",
                   "queue_poll_seconds"),
    )  # fmt: skip
    add("--queue-broker", metavar="URL",
        help=_help("the Celery broker whose queues are counted, if not --broker", "queue_broker",
                   "--broker"))  # fmt: skip
    add("--log-level", choices=LOG_LEVELS, help=_help("logging level", "log_level"))
    if web:
        _web_options(parser)
        add("--no-consumer", dest="consumer", action="store_const", const=False,
            help="do not read the stream here: a separate `stemtrace consume` feeds the db"
            " (STEMTRACE_CONSUMER=0)")  # fmt: skip


def _web_options(parser: argparse.ArgumentParser) -> None:
    """Where to listen, and the built-in auth: flags of every command that serves pages."""
    add = parser.add_argument
    add("--host", help=_help("address to bind", "host"))
    add("--auth-user", help="HTTP basic auth user, with --auth-password (STEMTRACE_AUTH_USER)")
    add("--auth-password", help="HTTP basic auth password (STEMTRACE_AUTH_PASSWORD)")
    add("--auth-token", help="accept 'Authorization: Bearer TOKEN' (STEMTRACE_AUTH_TOKEN)")
    add("--no-auth", action="store_const", const=True,
        help="serve a non-loopback --host without auth (STEMTRACE_NO_AUTH=1)")  # fmt: skip
    add("--port", type=int, help=_help("port to listen on", "port"))
    add(
        "--metrics-names",
        type=int,
        metavar="N",
        help=_help("/metrics: the N busiest task names get series, the rest fold into"
                   " name=\"other\"", "metrics_names"),
    )  # fmt: skip
    _problem_options(parser)


THRESHOLD_HELP = {
    "problem_wait_seconds": "a task waiting in a queue this long",
    "problem_wait_factor": "... and this many times its queue's usual (p95) wait",
    "problem_held_seconds": "a task held by a worker, not started, this long",
    "problem_late_seconds": "a task running this long",
    "problem_late_factor": "... and this many times its name's usual (p99) run time",
    "problem_overdue_seconds": "grace after an ETA before a task is overdue",
    "problem_retries": "a task retried more often than this",
    "problem_failure_factor": "a name failing this many times more often than its day",
    "problem_failure_minutes": "... over this many minutes",
    "worker_timeout_seconds": "a worker silent this long is lost, with its running tasks",
    "problem_inflight_limit": "tasks in flight one look for problems reads at most",
}
"""The problems page's thresholds: one flag each (see README, "Problems")."""


def _problem_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("problems (what counts as stuck, late or lost)")
    for name, text in THRESHOLD_HELP.items():
        kind = int if isinstance(DEFAULTS[name], int) else float
        group.add_argument(
            "--" + name.replace("_", "-"), type=kind, metavar="N", help=_help(text, name)
        )


def run_options() -> list[tuple[str, str]]:
    """Each flag of ``stemtrace run`` with its help, for commands that pass them on."""
    parser = argparse.ArgumentParser(add_help=False)
    _server_options(parser, web=True)
    found = []
    for action in parser._actions:
        flags = ", ".join(action.option_strings)
        if action.choices:
            flags += " [" + "|".join(map(str, action.choices)) + "]"
        elif action.nargs != 0:
            flags += " " + (
                action.metavar if isinstance(action.metavar, str) else action.dest.upper()
            )
        found.append((flags, action.help or ""))
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stemtrace", description="Celery task-flow observability."
    )
    parser.add_argument("--version", action="version", version=f"stemtrace {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser("run", help="serve the API with the consumer inside")
    _server_options(run, web=True)
    consume = commands.add_parser(
        "consume", help="only read the stream into the database (for a separate server)"
    )
    _server_options(consume, web=False)
    tail = commands.add_parser(
        "tail", help="print events from the stream as they arrive (one JSON object a line)"
    )
    tail.add_argument("--broker", help=_help("Redis URL of the event stream", "broker"))
    tail.add_argument("--stream", help=_help("stream key", "stream"))
    tail.add_argument(
        "--from-start", action="store_true", help="print the whole stream first, then follow"
    )
    demo = commands.add_parser(
        "demo",
        help="serve the UI on a real Celery app making example flows in this process (no Redis)",
    )
    demo.add_argument(
        "--db",
        help=_help("SQLite database file, apart from the real one", "db", DEMO_DB),
    )
    demo.add_argument(
        "--interval",
        type=float,
        metavar="SECONDS",
        help=f"seconds between new flows (STEMTRACE_INTERVAL; default {DEMO_INTERVAL:g})",
    )
    demo.add_argument("--log-level", choices=LOG_LEVELS, help=_help("logging level", "log_level"))
    _web_options(demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    overrides = {
        k: v for k, v in vars(args).items() if k not in ("command", "from_start", "interval")
    }
    environ: Mapping[str, str] = os.environ
    if args.command == "demo":
        from stemtrace.cli.demo import BROKER_URL, EVENTS_URL

        # The demo's own database and quicker problems unless told otherwise, and always
        # its in-process stream and broker.
        environ = {**DEMO_DEFAULTS, **os.environ}
        overrides.update(broker=EVENTS_URL, queue_broker=BROKER_URL, consumer=True)
    try:
        settings = Settings.from_env(environ, **overrides)
        interval = _demo_interval(args.interval) if args.command == "demo" else 0.0
    except SettingError as exc:
        if exc.source is None and getattr(args, exc.name, None) is not None:
            parser.error(f"argument --{exc.name.replace('_', '-')}: {exc.problem}")
        parser.error(str(exc))
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command in ("run", "demo"):
        try:
            settings.check_exposure()
        except ValueError as exc:
            parser.error(str(exc))
    try:
        if args.command == "run":
            return run(settings)
        if args.command == "demo":
            return demo(settings, interval)
        if args.command == "consume":
            return consume(settings)
    except BadTarget as exc:  # a store --db names but this version cannot serve yet
        parser.error(str(exc))
    return tail(settings.broker, settings.stream, args.from_start)


def run(settings: Settings) -> int:
    import uvicorn

    from stemtrace.server.app import create_app

    app = create_app(settings)
    collector.tune()
    print(f"stemtrace {__version__}: http://{settings.host}:{settings.port}/  (db: {settings.db})")
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level)
    return 0


def _demo_interval(flag: float | None) -> float:
    if flag is not None:
        interval = flag
    else:
        raw = os.environ.get("STEMTRACE_INTERVAL")
        interval = DEMO_INTERVAL if raw is None else parse_env("STEMTRACE_INTERVAL", raw, "float")
    if not (math.isfinite(interval) and interval > 0):
        problem = f"must be a positive number of seconds, not {interval:g}"
        raise SettingError("interval", problem, None if flag is not None else "STEMTRACE_INTERVAL")
    return interval


def demo(settings: Settings, interval: float) -> int:
    import uvicorn

    from stemtrace.cli.demo import Demo
    from stemtrace.server.app import create_app

    _quiet_celery(settings.log_level)
    flows = Demo(interval=interval, stream=settings.stream)
    app = create_app(settings)
    _stop_first(app, flows.stop)
    collector.tune()
    server = uvicorn.Server(
        uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level)
    )
    # SIGTERM stops the demo as Ctrl-C does (uvicorn re-raises it once it has shut down).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        flows.start()
        print(
            f"stemtrace {__version__} demo: http://{settings.host}:{settings.port}/  "
            f"(db: {settings.db}; two Celery workers run in this process, a new flow "
            f"every {interval:g}s; Ctrl-C to stop)",
            flush=True,
        )
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        flows.stop()
    return 0


def _stop_first(app: Any, stop: Callable[[], None]) -> None:
    """Call ``stop`` as the server shuts down, before its consumer does, so that the
    demo's last events (tasks finishing, the worker going offline) reach the database."""
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[Any]:
        async with inner(app) as state:
            try:
                yield state
            finally:
                await asyncio.to_thread(stop)

    app.router.lifespan_context = lifespan


def _quiet_celery(level: str) -> None:
    """Keep the console readable: the demo's failures are deliberate, see them in the UI."""
    if level != "debug":
        threshold = max(logging.WARNING, logging.getLevelName(level.upper()))
        logging.getLogger("celery").setLevel(threshold)
        logging.getLogger("celery.app.trace").setLevel(logging.CRITICAL)


def consume(settings: Settings) -> int:
    from stemtrace.cli.consume import consume as run_consumers

    return run_consumers(settings)


def tail(broker: str, stream: str, from_start: bool) -> int:
    from stemtrace.core.events import FrameError, decode_frame
    from stemtrace.transports.redis import RedisStreamReader

    reader = RedisStreamReader(broker, stream=stream)
    try:
        position = None if from_start else reader.newest()
        while True:
            try:
                entries = reader.read(position, 100, 5.0)
            except Exception as exc:  # the broker's errors: say so and stop
                print(f"stemtrace: cannot read {stream} from {broker}: {exc}", file=sys.stderr)
                return 1
            for entry_id, frame in entries:
                position = entry_id
                try:
                    decoded = decode_frame(frame)
                except FrameError as exc:
                    print(f"skipped entry {entry_id!r}: {exc}", file=sys.stderr)
                    continue
                for event in decoded.events:
                    print(json.dumps(event, ensure_ascii=False), flush=True)
                for error in decoded.errors:
                    print(f"skipped in entry {entry_id!r}: {error}", file=sys.stderr)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # the reader has had enough (`stemtrace tail | head`)
        # Python flushes stdout once more at exit: point it at nothing, as its docs advise.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        reader.close()


if __name__ == "__main__":
    raise SystemExit(main())
