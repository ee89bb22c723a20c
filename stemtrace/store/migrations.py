"""The schema as migrations, in order, and the column lists ingest and queries share.

Each migration runs once per database, at start-up (:class:`stemtrace.store.schema.Store`);
never edit one that has shipped: add the next.
"""

from __future__ import annotations

import logging

from sqlite_utils import Database, Migrations

from stemtrace.store import rollups, tally

logger = logging.getLogger("stemtrace")

migrations = Migrations("stemtrace")


@migrations()
def m001_initial(db: Database) -> None:
    db.executescript(
        """
        CREATE TABLE tasks (
            id TEXT PRIMARY KEY,
            name TEXT,
            state TEXT NOT NULL,
            state_attempt INTEGER NOT NULL,
            state_rank INTEGER NOT NULL,
            state_ts REAL NOT NULL,
            parent_id TEXT,
            root_id TEXT,
            group_id TEXT,
            group_index INTEGER,
            chord_id TEXT,
            chord_name TEXT,
            trace_id TEXT,
            worker TEXT,
            retries INTEGER NOT NULL DEFAULT 0,
            queue TEXT,
            routing_key TEXT,
            eta TEXT,
            expires TEXT,
            sent_at REAL,
            received_at REAL,
            started_at REAL,
            finished_at REAL,
            runtime REAL,
            args TEXT,
            kwargs TEXT,
            result TEXT,
            exc_type TEXT,
            exc_message TEXT,
            traceback TEXT,
            chain TEXT,
            instrumented INTEGER,
            seen_at REAL NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE INDEX tasks_seen ON tasks (seen_at DESC, id DESC);
        CREATE INDEX tasks_state ON tasks (state, seen_at DESC);
        CREATE INDEX tasks_name ON tasks (name, seen_at DESC);
        CREATE INDEX tasks_worker ON tasks (worker, seen_at DESC);
        CREATE INDEX tasks_trace ON tasks (trace_id);
        CREATE INDEX tasks_root ON tasks (root_id);
        CREATE INDEX tasks_parent ON tasks (parent_id) WHERE parent_id IS NOT NULL;
        CREATE INDEX tasks_group ON tasks (group_id) WHERE group_id IS NOT NULL;
        CREATE INDEX tasks_chord ON tasks (chord_id) WHERE chord_id IS NOT NULL;

        CREATE TABLE events (
            task_id TEXT NOT NULL,
            eid TEXT NOT NULL,
            kind TEXT NOT NULL,
            ts REAL NOT NULL,
            data TEXT NOT NULL,
            PRIMARY KEY (task_id, eid)
        ) WITHOUT ROWID;

        CREATE TABLE workers (
            hostname TEXT PRIMARY KEY,
            state TEXT NOT NULL,
            online_at REAL,
            offline_at REAL,
            last_seen REAL NOT NULL,
            last_heartbeat REAL,
            heartbeat_freq REAL,
            pool TEXT,
            concurrency INTEGER,
            sw_ver TEXT,
            queues TEXT,
            active INTEGER,
            processed INTEGER,
            loadavg TEXT,
            dropped INTEGER,
            pid INTEGER
        );

        CREATE TABLE registry (
            name TEXT PRIMARY KEY,
            module TEXT,
            signature TEXT,
            queue TEXT,
            max_retries INTEGER,
            default_retry_delay REAL,
            autoretry_for TEXT,
            retry_backoff TEXT,
            rate_limit TEXT,
            time_limit REAL,
            soft_time_limit REAL,
            acks_late INTEGER,
            ignore_result INTEGER,
            workers TEXT,
            updated_at REAL NOT NULL
        );

        CREATE TABLE cursors (
            source TEXT PRIMARY KEY,
            position TEXT NOT NULL,
            updated_at REAL NOT NULL
        );
        """
    )


@migrations()
def m002_sources(db: Database) -> None:
    """Which sources described a task, and how rich the best one was.

    ``sources`` is a bit set (1: stemtrace's own capture, 2: Celery's events);
    ``detail_rank`` lets richer capture data replace what Celery's events said.
    """
    db.executescript(
        """
        ALTER TABLE tasks ADD COLUMN sources INTEGER NOT NULL DEFAULT 1;
        ALTER TABLE tasks ADD COLUMN detail_rank INTEGER NOT NULL DEFAULT 2;
        """
    )


@migrations()
def m003_events_by_rowid(db: Database) -> None:
    """History rows appended in arrival order, found through an index.

    A table clustered on random task ids wrote each row to a random page,
    which slowed ingestion as the store grew; the unique index keeps the
    de-duplication by ``(task_id, eid)``. Also an index for the tasks a
    worker is running now.
    """
    db.executescript(
        """
        CREATE TABLE events_new (
            task_id TEXT NOT NULL,
            eid TEXT NOT NULL,
            kind TEXT NOT NULL,
            ts REAL NOT NULL,
            data TEXT NOT NULL
        );
        INSERT INTO events_new (task_id, eid, kind, ts, data)
            SELECT task_id, eid, kind, ts, data FROM events;
        DROP TABLE events;
        ALTER TABLE events_new RENAME TO events;
        CREATE UNIQUE INDEX events_task ON events (task_id, eid);
        CREATE INDEX tasks_running ON tasks (worker, seen_at DESC) WHERE state = 'STARTED';
        """
    )


@migrations()
def m004_drop_unused_chord_index(db: Database) -> None:
    """Nothing looks tasks up by ``chord_id``: callbacks are found by their own id."""
    db.execute("DROP INDEX IF EXISTS tasks_chord")


# The fields of a task event that vary from one event to the next: columns of
# its history row. The rest of an event is held by the task row (ROW_FIELDS)
# or, when neither, kept as JSON in the history row's ``extra``.
HISTORY_COLUMNS = (
    "host", "pid", "worker", "retries", "runtime", "exc_type", "exc_message", "traceback",
    "retry_at",
)  # fmt: skip
ROW_FIELDS = (
    "name", "trace_id", "parent_id", "root_id", "group_id", "group_index", "chord_id",
    "chord_name", "chain", "callbacks", "errbacks", "queue", "exchange", "routing_key", "eta",
    "expires", "instrumented", "args", "kwargs", "result",
)  # fmt: skip
# Celery's own events: the task row keeps no args, kwargs or result of theirs
# (repr strings), so their history rows do.
CELERY_ROW_FIELDS = tuple(f for f in ROW_FIELDS if f not in ("args", "kwargs", "result"))


@migrations()
def m005_history_columns(db: Database) -> None:
    """History rows as columns instead of one JSON document per event.

    Encoding each event again cost more than writing it. An event's structure
    (name, parent, group, args ...) is its task row's, so a history row keeps
    what varies per event, and anything else in ``extra``.
    """

    def paths(names: tuple[str, ...]) -> str:
        return ", ".join(f"'$.{name}'" for name in names)

    columns = ", ".join(HISTORY_COLUMNS)
    extracted = ", ".join(f"json_extract(data, '$.{c}')" for c in HISTORY_COLUMNS)
    db.executescript(
        f"""
        CREATE TABLE events_new (
            task_id TEXT NOT NULL,
            eid TEXT NOT NULL,
            kind TEXT NOT NULL,
            ts REAL NOT NULL,
            host TEXT,
            pid INTEGER,
            worker TEXT,
            retries INTEGER,
            runtime REAL,
            exc_type TEXT,
            exc_message TEXT,
            traceback TEXT,
            retry_at REAL,
            extra TEXT
        );
        INSERT INTO events_new (task_id, eid, kind, ts, {columns}, extra)
            SELECT task_id, eid, kind, ts, {extracted},
                NULLIF(CASE WHEN json_extract(data, '$.source') = 'celery'
                    THEN json_remove(data, {paths(HISTORY_COLUMNS + CELERY_ROW_FIELDS)})
                    ELSE json_remove(data, {paths(HISTORY_COLUMNS + ROW_FIELDS)}) END, '{{}}')
            FROM events WHERE json_valid(data);
        DROP TABLE events;
        ALTER TABLE events_new RENAME TO events;
        CREATE UNIQUE INDEX events_task ON events (task_id, eid);
        """
    )


@migrations()
def m006_task_search(db: Database) -> None:
    """A trigram index of the text ``q`` searches, filled by :mod:`stemtrace.store.search`.

    ``task_search`` holds one document per task under the task's rowid, with
    its own copy of the text so that a document can be deleted whatever the
    task row says by then; ``detail='none'`` keeps only which documents hold a
    trigram, enough to narrow a search down before the real ``LIKE`` runs on
    the task rows. Every task with a rowid at or below
    ``task_search_state.position`` has an up-to-date document, except those in
    ``task_search_pending`` (not settled yet, see the indexer).
    ``task_search_spans`` bounds the first-seen times of each span of 1,024
    rowids, so that a search can stop early. The index starts empty and the
    indexer fills it, the tasks already stored included.
    """
    db.executescript(
        """
        CREATE VIRTUAL TABLE task_search USING fts5(
            name, id, args, kwargs, exc_type, exc_message, tokenize='trigram', detail='none'
        );
        CREATE TABLE task_search_state (
            one INTEGER PRIMARY KEY CHECK (one = 1),
            position INTEGER NOT NULL
        );
        INSERT INTO task_search_state (one, position) VALUES (1, 0);
        CREATE TABLE task_search_pending (
            task_rowid INTEGER PRIMARY KEY,
            indexed INTEGER NOT NULL
        );
        CREATE TABLE task_search_spans (
            span INTEGER PRIMARY KEY,
            max_seen REAL NOT NULL
        );
        """
    )


# A history record: one event as a JSON array in this order, ``extra`` being
# an object of its fields that have no place of their own (or null).
HISTORY_RECORD = ("eid", "kind", "ts", *HISTORY_COLUMNS, "extra")


@migrations()
def m007_history_by_task(db: Database) -> None:
    """A task's history as JSON arrays of records, one row per task per batch.

    One row per event cost an index entry and a dozen bound values each: a
    fifth of ingestion. A batch now writes one row per task it touched, holding
    that batch's events of the task as :data:`HISTORY_RECORD` arrays. Rows are
    found by the task's rowid, not its id: rowids grow with first sight, so the
    index entries a batch adds (mostly for recent tasks) land together at its
    end instead of on a random page each, which is what slowed a big store
    down. An event delivered twice (a broker redelivering after a crash) may be
    stored twice; readers keep the first record of each ``eid``.
    """
    record = ", ".join(
        f"CASE WHEN json_valid(e.{name}) THEN json(e.{name}) END"
        if name == "extra"
        else f"e.{name}"
        for name in HISTORY_RECORD
    )
    db.executescript(
        f"""
        CREATE TABLE history (
            task_rowid INTEGER NOT NULL,
            events TEXT NOT NULL
        );
        INSERT INTO history (task_rowid, events)
            SELECT t.rowid, json_group_array(json_array({record}))
            FROM (SELECT * FROM events ORDER BY task_id, ts) AS e
            JOIN tasks AS t ON t.id = e.task_id
            GROUP BY e.task_id;
        DROP TABLE events;
        CREATE INDEX history_task ON history (task_rowid);
        """
    )


@migrations()
def m008_skipped(db: Database) -> None:
    """Skipped input, lasting: counts by reason, and the newest raw samples."""
    db.executescript(
        """
        CREATE TABLE skipped (
            reason TEXT PRIMARY KEY,
            count INTEGER NOT NULL,
            first_at REAL NOT NULL,
            last_at REAL NOT NULL
        );
        CREATE TABLE skipped_samples (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at REAL NOT NULL,
            source TEXT NOT NULL,
            place TEXT NOT NULL,
            reason TEXT NOT NULL,
            sample TEXT NOT NULL
        );
        """
    )


@migrations()
def m009_registry_retry_policy(db: Database) -> None:
    """The retry policy Celery applies (``retry_kwargs``, backoff, jitter), as JSON."""
    db.execute("ALTER TABLE registry ADD COLUMN retry_policy TEXT")


@migrations()
def m010_planned_ids(db: Database) -> None:
    """``planned``: each id a task row names in advance, and the first row that named it.

    A chain link after a failure, a chord callback before it runs: no row has
    their id, and the id Celery hands back for a chain is its last link's.
    Looking one up must not read every row's ``chain``: the writer records
    them here (:mod:`stemtrace.store.planned`), one entry per planned id and
    nothing for the many tasks that name none. A trigger forgets a deleted
    row's entries. (Triggers on insert and update would keep the table too,
    but any such trigger halved the writer's upserts, chains or not.)
    """
    named = """
        SELECT id FROM (
            SELECT CASE WHEN type = 'object' THEN value ->> '$.id' END AS id
            FROM json_each(CASE WHEN json_valid(OLD.chain) THEN OLD.chain END)
        ) WHERE id IS NOT NULL
        UNION ALL SELECT OLD.chord_id WHERE OLD.chord_id IS NOT NULL
    """
    db.executescript(
        f"""
        CREATE TABLE planned (
            id TEXT PRIMARY KEY,
            task_rowid INTEGER NOT NULL
        ) WITHOUT ROWID;
        INSERT OR IGNORE INTO planned (id, task_rowid)
            SELECT id, rowid FROM (
                SELECT CASE WHEN link.type = 'object' THEN link.value ->> '$.id' END AS id,
                    tasks.rowid AS rowid
                FROM tasks,
                    json_each(CASE WHEN json_valid(tasks.chain) THEN tasks.chain END) AS link
                WHERE tasks.chain IS NOT NULL
                UNION ALL
                SELECT chord_id, rowid FROM tasks WHERE chord_id IS NOT NULL
            ) WHERE id IS NOT NULL ORDER BY rowid;
        CREATE TRIGGER tasks_planned_delete AFTER DELETE ON tasks
        WHEN OLD.chain IS NOT NULL OR OLD.chord_id IS NOT NULL BEGIN
            DELETE FROM planned WHERE task_rowid = OLD.rowid AND id IN ({named});
        END;
        """
    )


@migrations()
def m011_rollups(db: Database) -> None:
    """Rollups kept by the writer (:mod:`stemtrace.store.rollups`), built for the stored tasks.

    A big store takes a while: about 40 s per million tasks, logged as it goes.
    ``rollup_hist`` is made as m013 leaves it (a row per cell, its buckets packed):
    the rollups are built by today's writer, which writes that layout. A store
    that ran m011 before has a row per bucket, and m013 packs it.
    """
    db.executescript(
        f"""
        CREATE TABLE task_tally (
            task_rowid INTEGER PRIMARY KEY, tally INTEGER NOT NULL, state TEXT,
            retries INTEGER NOT NULL, flow TEXT, trace TEXT
        );
        CREATE TABLE rollups (
            dim TEXT NOT NULL, key TEXT NOT NULL, res INTEGER NOT NULL, t INTEGER NOT NULL,
            {", ".join(f"{c} INTEGER NOT NULL DEFAULT 0" for c in rollups.OUTCOMES)},
            PRIMARY KEY (dim, key, res, t)
        ) WITHOUT ROWID;
        CREATE INDEX rollups_by_time ON rollups (dim, res, t);
        {rollups.HIST_TABLE};
        {rollups.HIST_INDEX};
        CREATE TABLE task_counts (
            name TEXT NOT NULL, state TEXT NOT NULL, n INTEGER NOT NULL,
            PRIMARY KEY (name, state)
        ) WITHOUT ROWID;
        CREATE TABLE task_names (
            name TEXT PRIMARY KEY, last_seen REAL, retried INTEGER NOT NULL DEFAULT 0
        );
        CREATE TABLE rollup_state (folded_before REAL NOT NULL);
        CREATE TABLE error_groups (
            name TEXT NOT NULL, fingerprint TEXT NOT NULL, exc_type TEXT, message TEXT,
            first_seen REAL, last_seen REAL, last_task_id TEXT,
            PRIMARY KEY (name, fingerprint)
        ) WITHOUT ROWID;
        CREATE TABLE error_hours (
            name TEXT NOT NULL, fingerprint TEXT NOT NULL, t INTEGER NOT NULL, n INTEGER NOT NULL,
            PRIMARY KEY (name, fingerprint, t)
        ) WITHOUT ROWID;
        CREATE INDEX error_hours_by_time ON error_hours (t);
        CREATE TABLE flow_index (
            key TEXT PRIMARY KEY, first_seen REAL, last_seen REAL,
            tasks INTEGER NOT NULL DEFAULT 0, failures INTEGER NOT NULL DEFAULT 0,
            running INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX flow_index_recent ON flow_index (first_seen DESC, key DESC) WHERE tasks > 0;
        CREATE TABLE trace_index (
            trace_id TEXT PRIMARY KEY, first_seen REAL, last_seen REAL,
            tasks INTEGER NOT NULL DEFAULT 0, failures INTEGER NOT NULL DEFAULT 0,
            running INTEGER NOT NULL DEFAULT 0, explicit INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX trace_index_recent ON trace_index (first_seen DESC, trace_id DESC);
        INSERT INTO rollup_state (folded_before) VALUES (0);
        """
    )
    tally.tally_all(db.conn, progress=_progress)


def _progress(done: int, total: int) -> None:
    if total >= 100_000:
        logger.warning("stemtrace: rollups built for %s of %s tasks", f"{done:,}", f"{total:,}")


INFLIGHT_STATES = "'PENDING', 'RECEIVED', 'STARTED', 'RETRY'"
"""The states of a task not finished yet, spelled as the ``tasks_inflight`` index's
condition: a query that reads the index repeats ``state IN (...)`` word for word."""
INFLIGHT_COLUMNS = (
    "state, sent_at, id, name, queue, worker, retries, eta, received_at, started_at,"
    " state_ts, seen_at"
)
"""What ``tasks_inflight`` holds (:mod:`stemtrace.store.inflight` reads only these)."""


@migrations()
def m012_inflight(db: Database) -> None:
    """What the queues, workers and problems pages read without scanning every task.

    * ``tasks_inflight`` - the tasks not finished yet (sent, received, started,
      waiting to retry), a few thousand even in a store of millions; it holds
      what the problems are found from, so reading it never touches the table;
    * ``queue_depths`` - the broker's own count of each queue's waiting messages
      (and consumers, where the broker says), as last read, and
      ``queue_depth_minutes`` the largest count of each minute, for the backlog chart;
    * ``worker_gaps`` - each silence of a worker longer than its heartbeats allow,
      and each time it was away (offline to online again).
    """
    db.executescript(
        f"""
        CREATE INDEX tasks_inflight ON tasks ({INFLIGHT_COLUMNS})
            WHERE state IN ({INFLIGHT_STATES});
        CREATE TABLE queue_depths (
            queue TEXT PRIMARY KEY, messages INTEGER, consumers INTEGER, error TEXT,
            at REAL NOT NULL
        );
        CREATE TABLE queue_depth_minutes (
            queue TEXT NOT NULL, t INTEGER NOT NULL, messages INTEGER NOT NULL,
            PRIMARY KEY (queue, t)
        ) WITHOUT ROWID;
        CREATE TABLE worker_gaps (
            hostname TEXT NOT NULL, start REAL NOT NULL, end REAL NOT NULL,
            PRIMARY KEY (hostname, start)
        ) WITHOUT ROWID;
        """
    )


@migrations()
def m013_packed_histograms(db: Database) -> None:
    """``rollup_hist`` with a row per cell, its buckets packed in one value
    (:func:`stemtrace.store.rollups.pack_histograms`)."""
    rollups.pack_histograms(db.conn)
