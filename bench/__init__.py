"""Benchmarks: scripts that print ratios measured side by side in one run; not tests."""

import argparse

MODES = ("plain", "stemtrace", "celery-events")
"""Capture configurations compared: none, ``stemtrace.init(app)``, Celery's own events."""


def add_redis_options(parser: argparse.ArgumentParser, *, db_help: str = "") -> None:
    """``--host``, ``--port`` and ``--db``: the Redis a benchmark uses (database 13, its own)."""
    parser.add_argument("--host", default="127.0.0.1", help="Redis host")
    parser.add_argument("--port", type=int, default=6379, help="Redis port")
    parser.add_argument(
        "--db", type=int, default=13, help=db_help or "Redis database used only by this"
    )
