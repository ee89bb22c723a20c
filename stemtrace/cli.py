"""The ``stemtrace`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from stemtrace import __version__

DEFAULT_BROKER = "redis://127.0.0.1:6379/0"
DEFAULT_STREAM = "stemtrace:events"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stemtrace", description="Celery task-flow observability."
    )
    parser.add_argument("--version", action="version", version=f"stemtrace {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    tail = commands.add_parser(
        "tail", help="print events from the stream as they arrive (one JSON object a line)"
    )
    tail.add_argument(
        "--broker",
        default=os.environ.get("STEMTRACE_BROKER", DEFAULT_BROKER),
        help="Redis URL of the event stream (env STEMTRACE_BROKER; default %(default)s)",
    )
    tail.add_argument(
        "--stream",
        default=os.environ.get("STEMTRACE_STREAM", DEFAULT_STREAM),
        help="stream key (env STEMTRACE_STREAM; default %(default)s)",
    )
    tail.add_argument(
        "--from-start", action="store_true", help="print the whole stream first, then follow"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "tail":
        return tail(args.broker, args.stream, args.from_start)
    parser.print_help()
    return 2


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
