from __future__ import annotations

import datetime
import decimal
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stemtrace.capture.payload import MARKER, MORE_KEY, SCRUBBED, SecretKeys, Shaper


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "PASSWORD",
        "db_password",
        "userPassword",
        "X-Api-Key",
        "apikey",
        "api_key",
        "Authorization",
        "session_id",
        "credit_card",
        "cardNumber",
        "cvv",
        "user_ssn",
        "client_secret",
        "refresh_token",
        "private_key",
        "AWS_ACCESS_KEY_ID",
        "pin",
    ],
)
def test_secret_keys_are_recognised(key: str) -> None:
    assert SecretKeys(
        [
            "password",
            "api_key",
            "authorization",
            "session",
            "credit_card",
            "card_number",
            "cvv",
            "ssn",
            "secret",
            "token",
            "private_key",
            "access_key",
            "pin",
        ]
    )(key)


@pytest.mark.parametrize("key", ["user", "classname", "spinner", "lessons", "name", "count"])
def test_ordinary_keys_are_left_alone(key: str) -> None:
    assert not Shaper().is_secret(key)


def test_nested_values_under_secret_keys_are_scrubbed() -> None:
    shaped = Shaper().value(
        "kwargs",
        {
            "user": "ada",
            "auth": {"token": "t0k", "scopes": ["a"]},
            "items": [{"password": "p", "id": 1}],
            "headers": {"Authorization": "Bearer x"},
        },
    )
    assert shaped == {
        "user": "ada",
        "auth": {"token": SCRUBBED, "scopes": ["a"]},
        "items": [{"password": SCRUBBED, "id": 1}],
        "headers": {"Authorization": SCRUBBED},
    }


def test_positional_args_are_scrubbed_through_parameter_names() -> None:
    args, kwargs = Shaper().call(["ada", "hunter2"], {"remember": True}, ("user", "password"))
    assert args == ["ada", SCRUBBED] and kwargs == {"remember": True}


def test_extra_keys_and_a_custom_scrubber() -> None:
    def mask_emails(field: str, value: Any) -> Any:
        return json.loads(json.dumps(value).replace("ada@example.com", "***"))

    shaper = Shaper(secret_keys=["iban"], scrubber=mask_emails)
    assert shaper.value("kwargs", {"iban": "DE00", "to": "ada@example.com"}) == {
        "iban": SCRUBBED,
        "to": "***",
    }


def test_a_failing_scrubber_fails_closed() -> None:
    def broken(field: str, value: Any) -> Any:
        raise RuntimeError("nope")

    shaped = Shaper(scrubber=broken).value("args", ["secret data"])
    assert shaped[MARKER] == "error" and "secret data" not in json.dumps(shaped)


def test_scrubbing_can_be_turned_off() -> None:
    assert Shaper(scrub=False).value("kwargs", {"password": "p"}) == {"password": "p"}


def test_passwords_in_urls_are_masked() -> None:
    shaper = Shaper()
    assert shaper.value("args", ["redis://:s3cret@cache:6379/0"]) == ["redis://:***@cache:6379/0"]
    assert "s3cret" not in shaper.text("exc_message", "cannot reach amqp://u:s3cret@mq//", 1000)


def test_non_json_values_become_repr_markers() -> None:
    shaped = Shaper().value(
        "args",
        [decimal.Decimal("1.5"), datetime.date(2024, 1, 2), b"\x00\xff", float("nan"), object()],
    )
    assert [item[MARKER] for item in shaped] == ["repr"] * 5
    assert shaped[0] == {MARKER: "repr", "type": "decimal.Decimal", "repr": "Decimal('1.5')"}
    assert shaped[2]["type"] == "bytes"
    json.dumps(shaped, allow_nan=False)


def test_long_strings_containers_and_depth_are_cut_visibly() -> None:
    shaper = Shaper(max_string=10, max_items=3, max_depth=2)
    assert shaper.value("args", "abcdefghijklmnop") == {
        MARKER: "truncated",
        "preview": "abcdefghij",
        "length": 16,
    }
    assert shaper.value("args", [1, 2, 3, 4, 5]) == [1, 2, 3, {MARKER: "more", "count": 2}]
    assert shaper.value("args", {"a": 1, "b": 2, "c": 3, "d": 4}) == {
        "a": 1,
        "b": 2,
        "c": 3,
        MORE_KEY: {MARKER: "more", "count": 1},
    }
    deep = shaper.value("args", [[["too deep"]]])
    assert deep[0][0][MARKER] == "repr"


def test_a_field_over_the_size_cap_becomes_one_truncated_marker() -> None:
    shaped = Shaper(max_field_size=1000).value("args", [{"n": i, "s": "y" * 50} for i in range(80)])
    assert shaped[MARKER] == "truncated"
    assert len(shaped["preview"]) <= 1000
    assert shaped["length"] > 1000


def test_text_keeps_head_and_tail() -> None:
    text = "HEAD" + "x" * 10_000 + "TAIL"
    cut = Shaper().text("traceback", text, 400)
    assert cut.startswith("HEAD") and cut.endswith("TAIL") and len(cut) < 500
    assert "characters cut by stemtrace" in cut


class Hostile:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")

    def __str__(self) -> str:
        raise RuntimeError("no str either")


def test_hostile_objects_never_raise() -> None:
    shaper = Shaper()
    assert shaper.value("result", Hostile())[MARKER] == "repr"
    assert "unprintable" in shaper.text("exc_message", Hostile(), 100)
    assert shaper.value("kwargs", {Hostile(): 1})  # a key that cannot be printed


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(),
    lambda children: (
        st.lists(children)
        | st.dictionaries(st.text(), children)
        | st.tuples(children, children)
        | st.frozensets(st.integers())
    ),
    max_leaves=40,
)


@given(json_values)
def test_anything_shapes_to_strict_json_within_the_cap(value: Any) -> None:
    shaper = Shaper(max_field_size=2000)
    shaped = shaper.value("args", value)
    json.dumps(shaped, allow_nan=False)  # strict JSON
    # The cap counts characters of the JSON text as stored (non-ASCII unescaped);
    # it is approximate, and the estimate errs small.
    assert len(json.dumps(shaped, ensure_ascii=False)) <= 2000 + 400
