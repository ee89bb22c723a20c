"""The ``stemtrace`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from stemtrace import __version__
from stemtrace.settings import LOG_LEVELS, Settings
from stemtrace.store.schema import DEFAULT_DB


def _server_options(parser: argparse.ArgumentParser, *, web: bool) -> None:
    """Flags of the settings object; each defaults to its ``STEMTRACE_*`` variable."""
    add = parser.add_argument
    add("--broker", help="Redis URL the events are read from (STEMTRACE_BROKER)")
    add("--stream", help="stream key init(app) publishes to (STEMTRACE_STREAM)")
    add("--db", help=f"SQLite database file (STEMTRACE_DB; default ./{DEFAULT_DB})")
    add(
        "--retention-days",
        type=float,
        metavar="DAYS",
        help="forget tasks first seen longer ago; 0 keeps forever (STEMTRACE_RETENTION_DAYS)",
    )
    add(
        "--max-tasks",
        type=int,
        metavar="N",
        help="forget the oldest tasks beyond N; 0 for no limit (STEMTRACE_MAX_TASKS)",
    )
    add("--log-level", choices=LOG_LEVELS, help="logging level (STEMTRACE_LOG_LEVEL)")
    if web:
        add("--host", help="address to bind (STEMTRACE_HOST; default 127.0.0.1)")
        add("--auth-user", help="HTTP basic auth user, with --auth-password (STEMTRACE_AUTH_USER)")
        add("--auth-password", help="HTTP basic auth password (STEMTRACE_AUTH_PASSWORD)")
        add("--auth-token", help="accept 'Authorization: Bearer TOKEN' (STEMTRACE_AUTH_TOKEN)")
        add("--no-auth", action="store_const", const=True,
            help="serve a non-loopback --host without auth (STEMTRACE_NO_AUTH=1)")  # fmt: skip
        add("--port", type=int, help="port to listen on (STEMTRACE_PORT; default 8000)")
        add("--no-consumer", dest="consumer", action="store_const", const=False,
            help="do not read the stream here: a separate `stemtrace consume` feeds the db"
            " (STEMTRACE_CONSUMER=0)")  # fmt: skip


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
    tail.add_argument("--broker", help="Redis URL of the event stream (STEMTRACE_BROKER)")
    tail.add_argument("--stream", help="stream key (STEMTRACE_STREAM)")
    tail.add_argument(
        "--from-start", action="store_true", help="print the whole stream first, then follow"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "from_start")}
    try:
        settings = Settings.from_env(**overrides)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "run":
        try:
            settings.check_exposure()
        except ValueError as exc:
            parser.error(str(exc))
        return run(settings)
    if args.command == "consume":
        return consume(settings)
    return tail(settings.broker, settings.stream, args.from_start)


def run(settings: Settings) -> int:
    import uvicorn

    from stemtrace.server.app import create_app

    app = create_app(settings)
    print(f"stemtrace {__version__}: http://{settings.host}:{settings.port}/  (db: {settings.db})")
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level)
    return 0


def consume(settings: Settings) -> int:
    from stemtrace.consumer import build_consumer, source_name
    from stemtrace.store.schema import Store

    store = Store(settings.db)
    consumer = build_consumer(settings, store)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    consumer.start()
    print(f"stemtrace {__version__}: reading {source_name(settings)} into {settings.db}")
    stop.wait()
    consumer.stop()
    store.close()
    return 0


def tail(broker: str, stream: str, from_start: bool) -> int:
    import redis

    from stemtrace.events import FrameError, decode_frame
    from stemtrace.transports.redis import FRAME_FIELD, connect

    client = connect(broker, timeout=10)
    cursor = "0" if from_start else "$"
    try:
        while True:
            try:
                reply: Any = client.xread({stream: cursor}, count=100, block=5000)
            except redis.RedisError as exc:
                print(f"stemtrace: cannot read {stream} from {broker}: {exc}", file=sys.stderr)
                return 1
            for _key, entries in reply or ():
                for entry_id, fields in entries:
                    cursor = entry_id
                    try:
                        decoded = decode_frame(fields.get(FRAME_FIELD, b""))
                    except FrameError as exc:
                        print(f"skipped entry {entry_id!r}: {exc}", file=sys.stderr)
                        continue
                    for event in decoded.events:
                        print(json.dumps(event, ensure_ascii=False), flush=True)
                    for error in decoded.errors:
                        print(f"skipped in entry {entry_id!r}: {error}", file=sys.stderr)
    except KeyboardInterrupt:
        return 0
    finally:
        client.close()


if __name__ == "__main__":
    raise SystemExit(main())
