"""Server settings: one frozen object filled from CLI flags and ``STEMTRACE_*`` variables."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from stemtrace.core.env import parse_env
from stemtrace.core.thresholds import Thresholds
from stemtrace.store import DEFAULT_DB, BadTarget, parse_target, postgres_driver_missing

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
_THRESHOLD_RANGES = (
    ("problem_wait_seconds", 0, 86400 * 30),
    ("problem_wait_factor", 1, 1000),
    ("problem_held_seconds", 0, 86400 * 30),
    ("problem_late_seconds", 0, 86400 * 30),
    ("problem_late_factor", 1, 1000),
    ("problem_overdue_seconds", 0, 86400 * 30),
    ("problem_retries", 0, 10_000),
    ("problem_failure_factor", 1, 1000),
    ("problem_failure_minutes", 1, 1440),
    ("worker_timeout_seconds", 1, 86400),
    ("problem_inflight_limit", 400, 1_000_000),
)
"""Each threshold's bounds; one outside is refused with the flag's or variable's name."""


class SettingError(ValueError):
    """One setting out of range: ``name`` is the field, so that the error can name the
    flag or the ``STEMTRACE_*`` variable it came from instead (``source``)."""

    def __init__(self, name: str, problem: str, source: str | None = None) -> None:
        super().__init__(f"{source or name} {problem}")
        self.name = name
        self.problem = problem
        self.source = source


@dataclass(frozen=True)
class Settings:
    """What ``stemtrace run`` and ``stemtrace consume`` do; each field is ``STEMTRACE_<NAME>``."""

    broker: str = "redis://127.0.0.1:6379/0"
    """Where captured events are read from (the Redis that ``init(app)`` publishes to)."""
    stream: str = "stemtrace:events"
    """The stream key (Redis) or exchange name (RabbitMQ) ``init(app)`` publishes to."""
    queue: str | None = None
    """RabbitMQ: this server's own queue (default: from the host name and the db path, or
    from ``group``)."""
    group: str | None = None
    """A consumer group: the consumers of one group split the stream instead of each
    reading all of it (Redis ``XREADGROUP``; RabbitMQ: one queue shared by the group)."""
    consumer_name: str | None = None
    """This consumer's name in ``group`` (default: host name and process id)."""
    claim_idle_seconds: float = 60.0
    """Group mode: take over entries another consumer has held unacknowledged this long
    (it died); longer than a batch can take to write."""
    consumers: int = 1
    """``stemtrace consume``: this many consumer processes on ``group`` (above 1 needs a
    store several processes can write: not SQLite)."""
    db: str = DEFAULT_DB
    """The store: a SQLite file (created when missing), or a PostgreSQL database
    (``postgresql://user@host:port/dbname``, with ``pip install 'stemtrace[postgres]'``)."""
    host: str = "127.0.0.1"
    """Address the web server binds to."""
    port: int = 8000
    """Port the web server listens on."""
    retention_days: float | None = 7.0
    """Forget tasks first seen longer ago than this (0 or empty: keep forever)."""
    max_tasks: int | None = 1_000_000
    """Forget the oldest tasks beyond this many (0 or empty: no limit)."""
    rollup_minutes_days: float = 2.0
    """The rollups keep a row per minute this many days, then fold the minutes into hours."""
    celery_events: bool = True
    """Also read Celery's own events (workers started with ``-E`` but without ``init(app)``)."""
    consumer: bool = True
    """Run the consumer in the server; off when a separate ``stemtrace consume`` feeds the db."""
    queue_poll_seconds: float = 5.0
    """How often the consumer reads the broker's count of each known queue (read-only;
    0: never, and the queues page shows stemtrace's own counts only)."""
    queue_broker: str | None = None
    """The Celery broker whose queues are counted, when it is not ``broker`` (events on
    Redis, tasks on RabbitMQ; the demo's in-process ``memory://``)."""
    log_level: str = "info"
    """Logging level: critical, error, warning, info or debug."""
    auth_user: str | None = None
    """Standalone server: HTTP basic auth user name (with ``auth_password``)."""
    auth_password: str | None = None
    """Standalone server: HTTP basic auth password."""
    auth_token: str | None = None
    """Standalone server: a bearer token accepted in ``Authorization: Bearer ...``."""
    no_auth: bool = False
    """Allow binding to a non-loopback address without any auth."""
    metrics_names: int = 100
    """``/metrics``: task names with series of their own (the busiest); the rest fold into
    ``name="other"``, so that a flood of names cannot flood Prometheus (0: only ``other``)."""
    problem_wait_seconds: float = 60.0
    """Problems: a task waiting in a queue (sent, not received) at least this long ..."""
    problem_wait_factor: float = 3.0
    """... and longer than this many times its queue's usual (p95) wait of the last day."""
    problem_held_seconds: float = 60.0
    """Problems: a task received by a worker and not started for this long."""
    problem_late_seconds: float = 60.0
    """Problems: a task running at least this long ..."""
    problem_late_factor: float = 3.0
    """... and longer than this many times its name's usual (p99) run time of the last day."""
    problem_overdue_seconds: float = 30.0
    """Problems: grace after a task's ETA before it is overdue."""
    problem_retries: int = 3
    """Problems: a task retried more often than this."""
    problem_failure_factor: float = 3.0
    """Problems: a task name failing this many times more often than over the last day ..."""
    problem_failure_minutes: float = 15.0
    """... in a window of this many minutes."""
    problem_inflight_limit: int = 20_000
    """Problems: tasks in flight one look reads at most (a quarter per state)."""
    worker_timeout_seconds: float = 60.0
    """A worker silent this long (or three heartbeats, if longer) is lost, and so are the
    tasks it was running."""

    def __post_init__(self) -> None:
        if not self.broker or "://" not in self.broker:
            raise SettingError(
                "broker", f"must be a URL such as redis://host:6379/0, not {self.broker!r}"
            )
        if self.queue_broker is not None and "://" not in self.queue_broker:
            raise SettingError(
                "queue_broker",
                f"must be a URL such as amqp://host:5672//, not {self.queue_broker!r}",
            )
        if not self.stream:
            raise SettingError("stream", "must not be empty")
        if not 0 < self.port < 65536:
            raise SettingError("port", f"must be between 1 and 65535, not {self.port}")
        if self.retention_days is not None and self.retention_days < 0:
            raise SettingError(
                "retention_days", f"must not be negative, not {self.retention_days:g}"
            )
        if not 0 <= self.rollup_minutes_days <= 3650:
            raise SettingError(
                "rollup_minutes_days",
                f"must be between 0 and 3650 days, not {self.rollup_minutes_days:g}",
            )
        if not 0 <= self.queue_poll_seconds <= 3600:
            raise SettingError(
                "queue_poll_seconds",
                f"must be between 0 and 3600 seconds, not {self.queue_poll_seconds:g}",
            )
        if self.max_tasks is not None and self.max_tasks < 0:
            raise SettingError("max_tasks", f"must not be negative, not {self.max_tasks}")
        if self.metrics_names < 0:
            raise SettingError("metrics_names", f"must not be negative, not {self.metrics_names}")
        self._check_thresholds()
        self._check_db()
        self._check_group()
        if self.log_level not in LOG_LEVELS:
            raise SettingError("log_level", f"must be one of {', '.join(LOG_LEVELS)}")
        if bool(self.auth_user) != bool(self.auth_password):
            raise ValueError("auth_user and auth_password go together: set both or neither")

    def _check_thresholds(self) -> None:
        for name, low, high in _THRESHOLD_RANGES:
            value = getattr(self, name)
            if not low <= value <= high:
                raise SettingError(name, f"must be between {low:g} and {high:g}, not {value:g}")

    def _check_group(self) -> None:
        if self.group is not None and not self.group.strip():
            raise SettingError("group", "must not be empty")
        if self.group is not None and self.broker.startswith("memory:"):
            raise SettingError("group", "needs a Redis or RabbitMQ --broker, not memory://")
        if self.consumer_name is not None and not self.consumer_name.strip():
            raise SettingError("consumer_name", "must not be empty")
        if not 0.1 <= self.claim_idle_seconds <= 86400:
            raise SettingError(
                "claim_idle_seconds",
                f"must be between 0.1 and 86400 seconds, not {self.claim_idle_seconds:g}",
            )
        if not 1 <= self.consumers <= 64:
            raise SettingError("consumers", f"must be between 1 and 64, not {self.consumers}")
        if self.consumers > 1 and self.group is None:
            raise SettingError("consumers", "above 1 needs --group: the consumers split a group")
        if self.consumers > 1 and parse_target(self.db).kind != "postgresql":
            raise SettingError(
                "consumers",
                f"above 1 needs a PostgreSQL --db: SQLite ({self.db}) has one writer per file;"
                " run one consumer per SQLite file",
            )

    @property
    def consumer_id(self) -> str:
        """This process's name in its group: ``consumer_name``, or host name and pid."""
        return self.consumer_name or f"{socket.gethostname()}-{os.getpid()}"

    def _check_db(self) -> None:
        try:
            target = parse_target(self.db)
        except BadTarget as exc:
            raise SettingError("db", str(exc)) from None
        missing = postgres_driver_missing() if target.kind == "postgresql" else None
        if missing is not None:
            raise SettingError("db", missing)

    @property
    def thresholds(self) -> Thresholds:
        """When a task in flight counts as a problem (the ``problem_*`` settings)."""
        return Thresholds(
            wait_seconds=self.problem_wait_seconds,
            wait_factor=self.problem_wait_factor,
            held_seconds=self.problem_held_seconds,
            late_seconds=self.problem_late_seconds,
            late_factor=self.problem_late_factor,
            overdue_seconds=self.problem_overdue_seconds,
            retries=self.problem_retries,
            failure_factor=self.problem_failure_factor,
            failure_window=self.problem_failure_minutes * 60,
            worker_timeout=self.worker_timeout_seconds,
            inflight_limit=self.problem_inflight_limit,
        )

    @property
    def queue_name(self) -> str:
        """Stable per database file, so a restarted server resumes its own queue."""
        if self.queue:
            return self.queue
        if self.group is not None:  # one queue the group's consumers share
            return f"{self.stream}.group.{self.group}"
        digest = hashlib.sha1(os.path.abspath(self.db).encode()).hexdigest()[:10]
        return f"stemtrace.{socket.gethostname()}.{digest}"

    @property
    def has_auth(self) -> bool:
        return bool(self.auth_token or (self.auth_user and self.auth_password))

    def check_exposure(self) -> None:
        """Refuse to serve a non-loopback address without auth unless told to."""
        if not is_loopback(self.host) and not self.has_auth and not self.no_auth:
            raise ValueError(
                f"refusing to serve {self.host} without authentication: task arguments and "
                "results would be open to the network. Set --auth-token or --auth-user and "
                "--auth-password, or pass --no-auth if something in front already checks users"
            )

    @property
    def retention_seconds(self) -> float | None:
        return self.retention_days * 86400 if self.retention_days else None

    @property
    def task_limit(self) -> int | None:
        return self.max_tasks or None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then ``STEMTRACE_*`` variables, then ``overrides`` (not ``None``).

        A value out of range that came from a variable is reported under its name.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for spec in fields(cls):
            name = f"STEMTRACE_{spec.name.upper()}"
            if name in environ:
                values[spec.name] = parse_env(name, environ[name], str(spec.type))
        given = {k: v for k, v in overrides.items() if v is not None}
        values.update(given)
        try:
            return cls(**values)
        except SettingError as exc:
            if exc.name in given or exc.name not in values:
                raise
            raise SettingError(exc.name, exc.problem, f"STEMTRACE_{exc.name.upper()}") from None


def is_loopback(host: str) -> bool:
    if host in ("localhost", "::1"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
