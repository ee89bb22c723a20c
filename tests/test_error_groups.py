"""Error groups: one group for one problem, whatever values its messages carry."""

from __future__ import annotations

import re
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stemtrace.core import errors
from stemtrace.core.errors import MAX_LENGTH, fingerprint, normalize

SAME_PROBLEM = [
    pytest.param(
        "ValueError",
        "order 1841 not found",
        "order 77 not found",
        "order <n> not found",
        id="numbers",
    ),
    pytest.param(
        "celery.exceptions.TimeoutError",
        f"task {uuid.UUID(int=1)} did not finish",
        f"task {uuid.uuid4()} did not finish",
        "task <id> did not finish",
        id="celery-task-id",
    ),
    pytest.param(
        "celery.exceptions.Retry",
        "Retry in 10s: ConnectionError('Error 111 connecting to localhost:6379.')",
        "Retry in 250s: ConnectionError('Error 113 connecting to 10.1.2.3:6380.')",
        "Retry in <n>s: ConnectionError('<v>')",
        id="celery-retry",
    ),
    pytest.param(
        "billiard.exceptions.WorkerLostError",
        "Worker exited prematurely: signal 9 (SIGKILL) Job: 12.",
        "Worker exited prematurely: signal 9 (SIGKILL) Job: 40312.",
        "Worker exited prematurely: signal <n> (SIGKILL) Job: <n>.",
        id="celery-worker-lost",
    ),
    pytest.param(
        "celery.exceptions.TimeLimitExceeded",
        "TimeLimitExceeded(300,)",
        "TimeLimitExceeded(60.5,)",
        "TimeLimitExceeded(<n>,)",
        id="celery-time-limit",
    ),
    pytest.param(
        "requests.exceptions.ConnectionError",
        "HTTPSConnectionPool(host='api.example.com', port=443): Max retries exceeded with url: "
        "/v1/users/123?expand=true (Caused by NewConnectionError('<urllib3.connection."
        "HTTPSConnection object at 0x7f8b8c0d0e50>: Failed to establish a new connection: "
        "[Errno 111] Connection refused'))",
        "HTTPSConnectionPool(host='billing.example.org', port=8443): Max retries exceeded with "
        "url: /v1/users/98?expand=false&page=2 (Caused by NewConnectionError('<urllib3."
        "connection.HTTPSConnection object at 0x10a2b3c40>: Failed to establish a new "
        "connection: [Errno 111] Connection refused'))",
        "HTTPSConnectionPool(host='<v>', port=<n>): Max retries exceeded with url: "
        "/<id>/users/<n>?<q> (Caused by NewConnectionError('<v>'))",
        id="requests-connection",
    ),
    pytest.param(
        "requests.exceptions.HTTPError",
        "404 Client Error: Not Found for url: https://api.example.com/users/123?token=abc",
        "404 Client Error: Not Found for url: https://api.example.com/users/9?token=zz9",
        "<n> Client Error: Not Found for url: https://api.example.com/users/<n>?<q>",
        id="requests-http-error",
    ),
    pytest.param(
        "sqlalchemy.exc.IntegrityError",
        "(psycopg2.errors.UniqueViolation) duplicate key value violates unique constraint "
        '"users_email_key"\nDETAIL:  Key (email)=(ann@example.com) already exists.\n\n'
        "[SQL: INSERT INTO users (email) VALUES (%(email)s) RETURNING users.id]\n"
        "[parameters: {'email': 'ann@example.com'}]\n"
        "(Background on this error at: https://sqlalche.me/e/20/gkpj)",
        "(psycopg2.errors.UniqueViolation) duplicate key value violates unique constraint "
        '"users_email_key"\nDETAIL:  Key (email)=(bob+2@test.org) already exists.\n\n'
        "[SQL: INSERT INTO users (email) VALUES (%(email)s) RETURNING users.id]\n"
        "[parameters: {'email': 'bob+2@test.org'}]\n"
        "(Background on this error at: https://sqlalche.me/e/20/gkpj)",
        '(<id>.errors.UniqueViolation) duplicate key value violates unique constraint "<v>" '
        "DETAIL: Key (email)=(<v>) already exists. [SQL: INSERT INTO users (email) VALUES "
        "(%(email)s) RETURNING users.id] [parameters: {'<v>': '<v>'}] "
        "(Background on this error at: https://sqlalche.me/e/<n>/gkpj)",
        id="sqlalchemy-unique",
    ),
    pytest.param(
        "psycopg.OperationalError",
        'connection failed: connection to server at "10.0.0.12", port 5432 failed: '
        'FATAL:  password authentication failed for user "app"',
        'connection failed: connection to server at "192.168.1.7", port 6432 failed: '
        'FATAL:  password authentication failed for user "billing"',
        'connection failed: connection to server at "<v>", port <n> failed: '
        'FATAL: password authentication failed for user "<v>"',
        id="psycopg-auth",
    ),
    pytest.param(
        "psycopg2.OperationalError",
        "could not connect to server: Connection refused\n\tIs the server running on host "
        '"db-1" (10.0.0.5) and accepting\n\tTCP/IP connections on port 5432?',
        "could not connect to server: Connection refused\n\tIs the server running on host "
        '"db-2" (10.0.0.6) and accepting\n\tTCP/IP connections on port 5433?',
        'could not connect to server: Connection refused Is the server running on host "<v>" '
        "(<ip>) and accepting TCP/IP connections on port <n>?",
        id="psycopg2-refused",
    ),
    pytest.param(
        "RuntimeError",
        "lock held since 2024-12-04T18:20:31.123456+00:00 by 3f2a9c1e",
        "lock held since 2025-01-30 07:02:11Z by 88aa01ff",
        "lock held since <ts> by <id>",
        id="timestamps-and-hex",
    ),
    pytest.param(
        "FileNotFoundError",
        "[Errno 2] No such file or directory: '/tmp/tmpa8x9k2l/report-2024-12.csv'",
        "[Errno 2] No such file or directory: '/tmp/tmpq01zz3/report-2025-01.csv'",
        "[Errno <n>] No such file or directory: '<v>'",
        id="quoted-path",
    ),
    pytest.param(
        "OSError",
        "cannot read /data/2024/12/04/batch_17.parquet at 12:30:05",
        "cannot read /data/2025/01/30/batch_4.parquet at 09:01:59.5",
        "cannot read /data/<n>/<n>/<n>/<id>.parquet at <ts>",
        id="path-with-digits",
    ),
    pytest.param(
        "KeyError",
        "missing ids [1, 2, 3, 4] and 0xdeadbeef",
        "missing ids [1841] and 0x1",
        "missing ids [<n>] and <id>",
        id="lists-of-values",
    ),
    pytest.param(
        "ConnectionError",
        "cannot reach redis://:s3cret@cache-1:6379/0 from fe80::1ff:fe23:4567:890a",
        "cannot reach redis://admin:hunter2@cache-1:6380/3 from 2001:db8::8a2e:370:7334",
        "cannot reach redis://<v>@cache-<n>/<n> from <ip>",
        id="credentials-and-ipv6",
    ),
    pytest.param(
        "smtplib.SMTPRecipientsRefused",
        "mail to bob.smith+tag@example.co.uk bounced",
        "mail to eve@example.com bounced",
        "mail to <email> bounced",
        id="email",
    ),
]


@pytest.mark.parametrize(("exc_type", "first", "second", "normalized"), SAME_PROBLEM)
def test_the_same_error_with_other_values_forms_one_group(
    exc_type: str, first: str, second: str, normalized: str
) -> None:
    assert normalize(first) == normalized
    assert normalize(second) == normalized
    assert fingerprint(exc_type, first) == fingerprint(exc_type, second)


def test_different_exception_types_form_different_groups() -> None:
    message = "order 12 not found"
    found = {fingerprint(kind, message) for kind in ("ValueError", "KeyError", "LookupError")}
    assert len(found) == 3
    assert fingerprint("ValueError", message) != fingerprint(None, message)


def test_different_messages_form_different_groups() -> None:
    assert fingerprint("ValueError", "order 1 not found") != fingerprint(
        "ValueError", "customer 1 not found"
    )
    assert fingerprint("ValueError", "") != fingerprint("ValueError", "x")


def test_a_key_error_keeps_its_key() -> None:
    """str(KeyError('user_id')) is the key quoted: there the quoted text is the error."""
    assert normalize(str(KeyError("user_id"))) == "'user_id'"
    assert fingerprint("KeyError", "'user_id'") != fingerprint("KeyError", "'email'")
    assert normalize("'order_12'") == "'<id>'"


def test_an_apostrophe_is_not_a_quote() -> None:
    assert normalize("can't load 'a.json', won't retry") == "can't load '<v>', won't retry"


def test_whitespace_collapses_and_the_result_is_bounded() -> None:
    assert normalize("  a \n\t b  ") == "a b"
    assert len(normalize("word " * 10_000)) == MAX_LENGTH


def test_the_fingerprint_is_short_stable_hex() -> None:
    found = fingerprint("ValueError", "order 12 not found")
    assert re.fullmatch(r"[0-9a-f]{16}", found)
    assert found == fingerprint(" ValueError ", "order   99   not found")
    assert fingerprint(None, None) == fingerprint("", "")


@given(st.text(max_size=300), st.text(max_size=100))
def test_any_text_gives_a_bounded_message_and_a_fingerprint(message: str, kind: str) -> None:
    normalized = normalize(message)
    assert len(normalized) <= MAX_LENGTH
    assert normalize(normalized) == normalize(normalize(normalized))
    assert re.fullmatch(r"[0-9a-f]{16}", fingerprint(kind, message))


@given(st.integers(min_value=0, max_value=10**30), st.integers(min_value=0, max_value=10**30))
def test_numbers_never_split_a_group(a: int, b: int) -> None:
    assert fingerprint("E", f"row {a} of {b} failed") == fingerprint("E", "row 1 of 2 failed")


HOSTILE = [
    "1" * 1_000_000,
    "a" * 1_000_000,
    "'" + "a" * 1_000_000,
    "' " * 500_000,
    '"\n' * 500_000,
    "a'" * 500_000,
    "://" * 333_333,
    "://a" * 250_000,
    "?a" * 500_000,
    "?a=" * 333_333,
    ")=(" * 333_333,
    "a@" * 500_000,
    "a." * 500_000,
    "a@b" + ".b" * 500_000 + "@",
    "a-" * 500_000,
    "1." * 500_000,
    "1:" * 500_000,
    "-a:" * 333_333,
    "0000-00-00T" * 90_000,
    "deadbeef-" * 110_000,
    "<n>, " * 200_000,
    "\x00\ud800" * 500_000,
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("message", HOSTILE, ids=lambda text: repr(text[:12]))
def test_hostile_input_returns(message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A megabyte shaped against each pattern, read whole: a quadratic scan would not return.

    Each takes about a second here; a pattern that rescanned the rest of the
    text from every start would take hours, so no timing is asserted.
    """
    monkeypatch.setattr(errors, "MAX_INPUT", 2_000_000)
    normalized = normalize(message)
    assert len(normalized) <= MAX_LENGTH
    assert re.fullmatch(r"[0-9a-f]{16}", fingerprint(message[:1000], message))


def test_only_the_start_of_a_huge_message_is_read() -> None:
    head = "boom " * 20_000
    assert len(head) > errors.MAX_INPUT
    assert fingerprint("E", head + "tail one") == fingerprint("E", head + "tail two")
