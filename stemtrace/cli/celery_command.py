"""``celery -A proj stemtrace``: stemtrace as a Celery sub-command, as Flower does it.

The broker comes from the app; every other ``stemtrace run`` option passes
through (``celery -A proj stemtrace --port 9000 --db /data/st.db``).
"""

from __future__ import annotations

from typing import Any

import click
from celery.bin.base import CeleryCommand

APP_BROKER = "Redis or RabbitMQ URL the events come from (default: the app's broker)"


class _PassingOn(CeleryCommand):  # type: ignore[misc]
    """Its ``--help`` lists the ``stemtrace run`` flags it passes on, not just RUN_ARGS."""

    def format_options(self, ctx: Any, formatter: Any) -> None:
        from stemtrace.cli.main import run_options

        own = [p.get_help_record(ctx) for p in self.get_params(ctx) if isinstance(p, click.Option)]
        with formatter.section("Options"):
            formatter.write_dl([record for record in own if record])
        passed = [
            (flags, APP_BROKER if flags.startswith("--broker ") else text)
            for flags, text in run_options()
        ]
        with formatter.section("Options passed on to `stemtrace run`"):
            formatter.write_dl(passed)


@click.command(cls=_PassingOn, context_settings={"ignore_unknown_options": True})
@click.argument("run_args", nargs=-1, type=click.UNPROCESSED, metavar="[RUN OPTIONS]...")
@click.pass_context
def stemtrace(ctx: Any, run_args: tuple[str, ...]) -> None:
    """Serve stemtrace for this app (options as for `stemtrace run`)."""
    from stemtrace.cli.main import main

    app = ctx.obj.app
    args = ["run", *run_args]
    if "--broker" not in run_args:
        broker = app.connection_for_write().as_uri(include_password=True)
        args += ["--broker", broker]
    raise SystemExit(main(args))
