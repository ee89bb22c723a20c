"""The server's domain errors: what views raise, and what each becomes on the wire."""

from __future__ import annotations


class NotFound(LookupError):
    """No task, flow, group or trace of that id is known to this server."""

    status_code = 404

    def __init__(self, what: str, value: str) -> None:
        super().__init__(f"no {what} {value!r} is known to this stemtrace server")
        self.what = what
        self.value = value


class BadParameter(ValueError):
    """A query parameter that cannot be read (a time, a state); the message says why."""

    status_code = 422
