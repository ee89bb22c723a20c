"""The Celery app the integration tests run in real workers (``celery -A tests.proj``).

Configured from the environment so that each test gets its own broker
database, queue and stream key: ``STEMTRACE_TEST_BROKER``,
``STEMTRACE_TEST_QUEUE``, ``STEMTRACE_TEST_BACKEND`` (default: the broker)
and the usual ``STEMTRACE_*`` capture options.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded

import stemtrace


class Unserializable:
    """Pickles fine, but is not JSON and has a hostile repr."""

    def __repr__(self) -> str:
        return "<Unserializable <script>alert(1)</script>>"


class BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("repr exploded")


def make_app(broker: str, queue: str, backend: str | None = None) -> Celery:  # noqa: C901
    app = Celery("proj", broker=broker, backend=backend or broker, set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        accept_content=["json", "pickle"],
        result_accept_content=["json", "pickle"],
        result_serializer="pickle",
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        result_expires=600,
    )

    @app.task(shared=False, name="proj.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(shared=False, name="proj.tsum")
    def tsum(values: list[int]) -> int:
        return sum(values)

    @app.task(shared=False, name="proj.fail")
    def fail(x: Any) -> None:
        raise ValueError(f"broken link at {x}")

    @app.task(shared=False, name="proj.flaky", bind=True, max_retries=3)
    def flaky(self: Any, value: int) -> int:
        if self.request.retries < 2:
            try:
                raise ConnectionError(f"attempt {self.request.retries + 1} failed")
            except ConnectionError as exc:
                raise self.retry(exc=exc, countdown=0.2) from exc
        return value

    @app.task(shared=False, name="proj.autoretry", bind=True, autoretry_for=(ConnectionError,),
              retry_kwargs={"max_retries": 4, "countdown": 1})  # fmt: skip
    def autoretry(self: Any, value: int, password: str = "hunter2") -> int:
        return value

    @app.task(shared=False, name="proj.spawn")
    def spawn(count: int) -> list[str]:
        return [add.delay(i, i).id for i in range(count)]

    @app.task(shared=False, name="proj.slow")
    def slow(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    @app.task(shared=False, name="proj.limited", soft_time_limit=1, time_limit=60)
    def limited(seconds: float) -> float:
        """Runs on past its soft time limit: the limit's exception is caught."""
        try:
            time.sleep(seconds)
        except SoftTimeLimitExceeded:
            time.sleep(seconds)
        return seconds

    @app.task(shared=False, name="proj.login")
    def login(user: str, password: str, options: dict[str, Any] | None = None) -> str:
        return f"welcome {user}"

    @app.task(shared=False, name="proj.echo", serializer="pickle")
    def echo(value: Any) -> Any:
        return value

    return app


app = make_app(
    os.environ.get("STEMTRACE_TEST_BROKER", "redis://127.0.0.1:6379/0"),
    os.environ.get("STEMTRACE_TEST_QUEUE", "stemtrace-tests"),
    os.environ.get("STEMTRACE_TEST_BACKEND"),
)
if os.environ.get("STEMTRACE_TEST_CAPTURE", "1") == "1":
    stemtrace.init(app)
