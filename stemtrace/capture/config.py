"""Capture settings: one frozen object from keyword arguments and ``STEMTRACE_*`` variables."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from stemtrace.capture.payload import Scrubber
from stemtrace.core.env import parse_env

ENV_PREFIX = "STEMTRACE_"


@dataclass(frozen=True)
class CaptureConfig:
    """How ``init(app)`` captures and publishes. Each field is also ``STEMTRACE_<NAME>``."""

    enabled: bool = True
    """Turn capture off without removing ``init(app)``."""
    transport_url: str | None = None
    """Where events go; default: the app's ``broker_url`` when it is Redis."""
    stream: str = "stemtrace:events"
    """Redis stream key the events are appended to."""
    stream_maxlen: int = 100_000
    """Approximate cap on stream entries (each holds one batch) so Redis memory stays bounded."""
    buffer_size: int = 10_000
    """Events held in memory per process while the transport is slow or down; more are dropped."""
    batch_size: int = 200
    """Most events sent in one stream entry."""
    flush_interval: float = 0.2
    """Seconds between sends of whatever is buffered."""
    shutdown_timeout: float = 2.0
    """Most seconds spent flushing when a process or worker stops."""
    heartbeat_interval: float = 10.0
    """Seconds between worker heartbeat events."""
    capture_args: bool = True
    """Record task args and kwargs."""
    capture_result: bool = True
    """Record task return values."""
    max_field_size: int = 8192
    """Approximate size cap (characters of JSON) of one args, kwargs or result field."""
    max_string: int = 2048
    """Longest string kept whole inside args, kwargs and results."""
    max_traceback: int = 32_768
    """Longest traceback or exception message kept (head and tail are kept)."""
    scrub: bool = True
    """Replace values under secret-looking keys and parameter names."""
    scrub_keys: tuple[str, ...] = ()
    """More key patterns to scrub, added to the built-in ones (comma-separated in env)."""
    scrubber: Scrubber | None = None
    """Your own ``scrubber(field, value) -> value``, run after the built-in rules (keyword only)."""

    @classmethod
    def build(
        cls, options: Mapping[str, Any], environ: Mapping[str, str] | None = None
    ) -> CaptureConfig:
        """Keyword ``options`` win over ``STEMTRACE_*`` variables, which win over defaults."""
        environ = os.environ if environ is None else environ
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise TypeError(f"stemtrace: unknown option(s) {', '.join(unknown)}")
        values: dict[str, Any] = {}
        for name, spec in known.items():
            env_name = ENV_PREFIX + name.upper()
            if name in options:
                values[name] = options[name]
            elif env_name in environ and name != "scrubber":
                try:
                    values[name] = parse_env(env_name, environ[env_name], str(spec.type))
                except ValueError as exc:
                    raise ValueError(f"stemtrace: {exc}") from None
        config = cls(**values)
        config.check()
        return config

    def check(self) -> None:
        """Raise ``ValueError`` naming the first setting that is out of range."""
        positive = (
            "stream_maxlen",
            "buffer_size",
            "batch_size",
            "max_field_size",
            "max_string",
            "max_traceback",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"stemtrace: {name} must be a positive integer, not {value!r}")
        for name in ("flush_interval", "shutdown_timeout", "heartbeat_interval"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"stemtrace: {name} must be a positive number, not {value!r}")
        if not self.stream:
            raise ValueError("stemtrace: stream must not be empty")
        if self.scrubber is not None and not callable(self.scrubber):
            raise ValueError("stemtrace: scrubber must be callable")

    def replace(self, **changes: Any) -> CaptureConfig:
        return dataclasses.replace(self, **changes)
