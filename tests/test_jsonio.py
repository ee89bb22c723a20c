"""The fast JSON path gives exactly what the standard library gives."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stemtrace.core import jsonio

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


def same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True) and type(a) is type(b)


@given(json_values)
def test_loads_matches_the_standard_library(value: Any) -> None:
    text = json.dumps(value, ensure_ascii=False)
    for data in (text, text.encode("utf-8", "surrogatepass")):
        assert same(jsonio.loads(data), json.loads(data))


@given(json_values)
def test_dumps_round_trips(value: Any) -> None:
    assert same(json.loads(jsonio.dumps(value)), value)


@pytest.mark.parametrize(
    "data",
    [
        b"[123456789012345678901234567890]",  # beyond 64 bits: orjson would read a float
        b"[-18446744073709551617]",
        b'["\\ud800"]',  # a lone surrogate: orjson refuses it
        b"[NaN, Infinity]",
        b'{"a": 1e400}',
        '{"a": "\u00e9"}',
    ],
)
def test_what_orjson_would_get_wrong_or_refuse_goes_to_the_standard_library(
    data: bytes | str,
) -> None:
    found, expected = jsonio.loads(data), json.loads(data)
    assert repr(found) == repr(expected)


def test_big_integers_stay_exact() -> None:
    assert jsonio.loads(b'{"id": 340282366920938463463374607431768211455}')["id"] == 2**128 - 1
    assert jsonio.dumps([2**100]) == f"[{2**100}]"


@pytest.mark.parametrize("data", [b"nope", b"\xff\xfe", b"{", ""])
def test_invalid_json_raises_value_error(data: bytes | str) -> None:
    with pytest.raises(ValueError):
        jsonio.loads(data)


def test_dumps_writes_valid_json_for_what_json_cannot_hold() -> None:
    assert jsonio.dumps({"s": {1, 2}}) == '{"s":"{1, 2}"}'  # repr
    assert jsonio.dumps([math.nan, math.inf]) == "[null,null]"  # not JSON: null
