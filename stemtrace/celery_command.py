"""``celery -A proj stemtrace``: stemtrace as a Celery sub-command, as Flower does it.

The broker comes from the app; every other ``stemtrace run`` option passes
through (``celery -A proj stemtrace --port 9000 --db /data/st.db``).
"""

from __future__ import annotations

from typing import Any

import click
from celery.bin.base import CeleryCommand


@click.command(cls=CeleryCommand, context_settings={"ignore_unknown_options": True})
@click.argument("run_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def stemtrace(ctx: Any, run_args: tuple[str, ...]) -> None:
    """Serve stemtrace for this app (options as for `stemtrace run`)."""
    from stemtrace.cli import main

    app = ctx.obj.app
    args = ["run", *run_args]
    if "--broker" not in run_args:
        broker = app.connection_for_write().as_uri(include_password=True)
        args += ["--broker", broker]
    raise SystemExit(main(args))
