"""PostgreSQL's reads built so far give SQLite's answers on the same events.

One task (``get_task``, ``task_events``, ``children``) and the tasks list with
each of its filters, walked page by page through the cursors, after the same
shuffled and re-delivered workload went into both stores.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from stemtrace.store import BadCursor, Store, TaskFilters
from stemtrace.store.pg import PgStore
from tests.factories import ADD_OLD, EMAIL_RETRY, STEP, W1, W2, task_event
from tests.pg import NOW, filled_pair, workload
from tests.site import copy_of

pytestmark = pytest.mark.usefixtures("fixed_clock")


@pytest.fixture(scope="module")
def both(
    tmp_path_factory: pytest.TempPathFactory, migrated: Path, pg_server: str, pg_migrated: str
) -> Iterator[tuple[Store, PgStore]]:
    """A SQLite store and a PostgreSQL store fed the same events, shuffled, twice over:
    filled once for the module, whose tests only read them."""
    events = workload() * 2
    random.Random(18).shuffle(events)
    # Ids that sort differently by code point than by a language's collation.
    events += [task_event("sent", task_id, NOW - 5, name="proj.tasks.case")
               for task_id in ("B-1", "a-1", "_x", "Z", "é")]  # fmt: skip
    path = copy_of(migrated, tmp_path_factory.mktemp("reads") / "s.db")
    with filled_pair(path, pg_server, pg_migrated, events, 23) as pair:
        yield pair


def all_ids(store: Store) -> list[str]:
    rows, _ = store.list_tasks(TaskFilters(), None, 10_000)
    return [row["id"] for row in rows]


def test_one_task_reads_the_same(both: tuple[Store, PgStore]) -> None:
    sqlite, pg = both
    ids = all_ids(sqlite)
    assert len(ids) > 20
    for task_id in [*ids, "no-such-task"]:
        assert pg.get_task(task_id) == sqlite.get_task(task_id), task_id
        assert pg.task_events(task_id) == sqlite.task_events(task_id), task_id
        assert pg.children(task_id) == sqlite.children(task_id), task_id
    assert pg.task_events(EMAIL_RETRY) and pg.children(ADD_OLD) and pg.children(STEP[1])
    assert pg.children(ADD_OLD, limit=0) == []


FILTERS = [
    TaskFilters(),
    TaskFilters(states=("FAILURE", "RETRY")),
    TaskFilters(states=("SUCCESS",), name="proj.tasks.fetch_page"),
    TaskFilters(name="proj.tasks.add"),
    TaskFilters(worker=W2),
    TaskFilters(worker=W1, states=("STARTED",)),
    TaskFilters(trace_id="trace-shop"),
    TaskFilters(root_id=ADD_OLD),
    TaskFilters(queue="celery"),
    TaskFilters(since=NOW - 2000, until=NOW - 500),
    TaskFilters(q="email"),
    TaskFilters(q="EMAIL"),  # SQLite's LIKE ignores ASCII case: so does this
    TaskFilters(q="100%"),  # a wildcard in the text is text
    TaskFilters(q="cus_"),
    TaskFilters(q="insufficient"),
    TaskFilters(q="é"),
    TaskFilters(q="nothing like it"),
]


@pytest.mark.parametrize("filters", FILTERS, ids=repr)
def test_the_tasks_list_reads_the_same_page_by_page(
    both: tuple[Store, PgStore], filters: TaskFilters
) -> None:
    sqlite, pg = both
    cursor: str | None = None
    pages = 0
    while True:
        expected = sqlite.list_tasks(filters, cursor, 4)
        assert pg.list_tasks(filters, cursor, 4) == expected, (filters, cursor)
        pages += 1
        cursor = expected[1]
        if cursor is None:
            break
    whole = sqlite.list_tasks(filters, None, 1000)
    assert pg.list_tasks(filters, None, 1000) == whole
    assert whole[1] is None
    if filters.q != "nothing like it":
        assert whole[0], "the filter finds something"


def test_a_cursor_not_made_here_is_refused(both: tuple[Store, PgStore]) -> None:
    _, pg = both
    with pytest.raises(BadCursor):
        pg.list_tasks(TaskFilters(), "not-a-cursor", 10)
