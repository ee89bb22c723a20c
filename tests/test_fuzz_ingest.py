"""Fuzzing the decoder and the ingestor: what the decoder accepts, the store can hold.

Two targets, each with a bounded Hypothesis budget: byte strings and JSON
frames of any shape into :func:`decode_frame` (only :class:`FrameError` may
come out), and events that are valid in type but hostile in value (times,
ids, nesting, sizes) through the decoder into a real store, once per backend
(every event it accepts is written, and read back). The triggers found by hand
are kept as regression cases in ``tests/test_poison.py``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stemtrace.core import events as ev
from stemtrace.core.jsonio import encode
from stemtrace.store import Backend, open_store
from tests.factories import examples, unchecked

INT = st.integers(min_value=-(2**80), max_value=2**80)
json_scalars = (
    st.none() | st.booleans() | INT | st.floats() | st.text(max_size=30)
    | st.sampled_from(["\x00", "a" * 5000, "<b>", "\ud800"])
)  # fmt: skip
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=5),
    max_leaves=25,
)  # fmt: skip
fuzz = settings(
    max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@fuzz
@given(st.binary(max_size=300))
def test_bytes_never_break_the_decoder(data: bytes) -> None:
    with contextlib.suppress(ev.FrameError):
        ev.decode_frame(data)


@fuzz
@given(json_values | st.fixed_dictionaries({"v": json_values, "events": json_values}))
def test_any_json_never_breaks_the_decoder(frame: Any) -> None:
    try:
        decoded = ev.decode_frame(encode(frame))
    except ev.FrameError:
        return
    for event in decoded.events:
        assert ev.validate_event(event) is None


def deep(levels: int) -> Any:
    value: Any = 0
    for _ in range(levels):
        value = [value]
    return value


NOW = time.time()


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` nine times in ten: most events get through to the store, some do not."""
    return st.integers(0, 9).flatmap(lambda i: bad if i == 0 else good)


GOOD_TIMES = st.floats(min_value=NOW - 86_400 * 400, max_value=NOW)
TIMES = mostly(GOOD_TIMES, st.floats() | INT | st.sampled_from([1e15, -1.0, 2.6e11]))
GOOD_IDS = st.text(
    st.characters(categories=("L", "N", "P", "S"), max_codepoint=0x2FFF), min_size=1, max_size=40
)
IDS = mostly(GOOD_IDS, st.text(max_size=300) | st.sampled_from(["a\x00b", "x" * 256]))


def of_type(types: tuple[type, ...]) -> st.SearchStrategy[Any]:
    """Values a field of these declared types may hold: right in type, hostile in value."""
    if not types:
        return json_values | st.sampled_from([deep(990), ["q"] * 3000, "s" * 100_000])
    found: list[st.SearchStrategy[Any]] = []
    for kind in types:
        if kind is str:
            found += [IDS, IDS, st.text(max_size=70_000).map(lambda s: s * 3)]
        elif kind is int:
            found.append(INT)
        elif kind is float:
            found.append(TIMES)
        elif kind is bool:
            found.append(st.booleans())
        elif kind is list:
            found.append(st.lists(json_values | GOOD_IDS, max_size=5) | st.just([deep(990)]))
        elif kind is type(None):
            found.append(st.none())
    return st.one_of(found)


@st.composite
def hostile_events(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(sorted(ev.KINDS)))
    eid, ts, host, pid = draw(IDS), draw(TIMES), draw(IDS), draw(st.integers(1, 99) | INT)
    event = unchecked(kind, ts, host, pid, eid=eid)
    if kind in ev.TASK_KINDS:
        event["task_id"] = draw(IDS)
        event["name"] = draw(IDS | st.none())
    for name in draw(st.sets(st.sampled_from(sorted(ev.OPTIONAL_FIELDS)), max_size=5)):
        if name in ("chain", "callbacks", "errbacks"):
            event[name] = draw(st.lists(st.fixed_dictionaries(
                {"id": IDS | st.none(), "name": IDS | st.none()}), max_size=3))  # fmt: skip
        else:
            event[name] = draw(of_type(ev.OPTIONAL_FIELDS[name]))
    return event


@pytest.fixture(scope="module")
def store(module_target: str) -> Iterator[Backend]:
    """One store per backend for the module's examples: each adds to what the last left."""
    found = open_store(module_target)
    yield found
    found.close()


@fuzz
@given(st.lists(hostile_events(), min_size=1, max_size=6))
def test_every_event_the_decoder_accepts_is_stored(store: Backend, batch: list[Any]) -> None:
    decoded = ev.decode_frame(encode({"v": 1, "events": batch}))
    store.open_writer().ingest(decoded.events)  # raises if one cannot be stored
    for event in decoded.events:
        assert ev.MIN_TS <= event["ts"] <= time.time() + ev.MAX_AHEAD
        for name in ev.ID_FIELDS:
            value = event.get(name)
            assert value is None or (len(value) <= ev.MAX_ID and value.isprintable())
    for event in decoded.events:  # and read back: its task, its event in the task's history
        if event["kind"] in ev.TASK_KINDS:
            task = store.get_task(event["task_id"])
            assert task is not None and task["id"] == event["task_id"]
            # (an eid is kept once per task: the module's examples may have stored it)
            assert event["eid"] in {found["eid"] for found in store.task_events(task["id"])}
