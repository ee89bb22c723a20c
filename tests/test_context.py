from __future__ import annotations

import asyncio
import threading

import pytest

import stemtrace
from stemtrace.capture.middleware import trace_id_from_headers


def test_trace_as_context_manager_and_decorator() -> None:
    assert stemtrace.current_trace_id() is None
    with stemtrace.trace("outer") as outer:
        assert outer == "outer" == stemtrace.current_trace_id()
        with stemtrace.trace() as fresh:
            assert len(fresh) == 32 and stemtrace.current_trace_id() == fresh
        assert stemtrace.current_trace_id() == "outer"
    assert stemtrace.current_trace_id() is None

    @stemtrace.trace("decorated")
    def work() -> str | None:
        return stemtrace.current_trace_id()

    @stemtrace.trace("async")
    async def async_work() -> str | None:
        await asyncio.sleep(0)
        return stemtrace.current_trace_id()

    assert work() == "decorated"
    assert asyncio.run(async_work()) == "async"
    assert stemtrace.current_trace_id() is None


def test_each_thread_has_its_own_trace() -> None:
    seen: list[str | None] = []
    with stemtrace.trace("main"):
        thread = threading.Thread(target=lambda: seen.append(stemtrace.current_trace_id()))
        thread.start()
        thread.join()
    assert seen == [None]


@pytest.mark.parametrize("bad", ["", "x" * 129, "has space", "<script>"])
def test_invalid_trace_ids_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid trace id"):
        stemtrace.trace(bad)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (
            [(b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")],
            "4bf92f3577b34da6a3ce929d0e0e4736",
        ),
        ([(b"Traceparent", b"00-00000000000000000000000000000000-00f067aa0ba902b7-01")], None),
        ([(b"traceparent", b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")], None),
        ([(b"x-request-id", b"req-1")], "req-1"),
        ([(b"x-request-id", b"<script>")], None),
        (
            [
                (b"x-request-id", b"req-1"),
                (b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            ],
            "4bf92f3577b34da6a3ce929d0e0e4736",
        ),
        ([], None),
    ],
)
def test_trace_id_from_request_headers(
    headers: list[tuple[bytes, bytes]], expected: str | None
) -> None:
    assert trace_id_from_headers(headers) == expected
