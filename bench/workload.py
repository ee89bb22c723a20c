"""A simulated Celery deployment that emits stemtrace events, for the store benchmarks.

Two web processes send work to four workers (one main process and four pool
children each). What they send is a mix of single tasks, tasks that spawn a
few children, retries, failures, chains, groups and chords, with the fields
that capture (``stemtrace/capture/capture.py``) puts on each kind, shaped
arguments and results, tracebacks, and worker online and heartbeat events.
Optionally one big flow: a root task that spawns a chord of thousands of
members and its callback.

Events come out in timestamp order, the way a consumer reading a stream fed by
all these processes would see them. Everything is drawn from a seeded
``random.Random``: the same arguments give the same events.
"""

from __future__ import annotations

import heapq
import itertools
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

Event = dict[str, Any]

GENERATOR_VERSION = 3
"""Bump when the events change, so cached databases are rebuilt."""

HEARTBEAT = 10.0
"""Seconds between worker heartbeats (capture's default ``heartbeat_interval``)."""


@dataclass(frozen=True)
class TaskType:
    name: str
    weight: float
    queue: str
    runtime: float  # mean seconds
    failure: float  # chance an execution fails for good
    retry: float  # chance the first attempt raises and is retried


TASK_TYPES = (
    TaskType("shop.orders.process_order", 14, "orders", 0.35, 0.01, 0.03),
    TaskType("shop.orders.reserve_stock", 9, "orders", 0.08, 0.005, 0.02),
    TaskType("shop.orders.cancel_order", 1.5, "orders", 0.2, 0.01, 0.01),
    TaskType("shop.payments.charge_card", 8, "payments", 0.9, 0.02, 0.06),
    TaskType("shop.payments.refund", 1, "payments", 0.7, 0.03, 0.05),
    TaskType("shop.payments.reconcile_batch", 0.5, "payments", 4.0, 0.02, 0.02),
    TaskType("shop.emails.send_receipt", 12, "emails", 0.4, 0.004, 0.04),
    TaskType("shop.emails.send_newsletter", 3, "emails", 0.6, 0.002, 0.03),
    TaskType("shop.emails.send_password_reset", 1, "emails", 0.3, 0.002, 0.02),
    TaskType("shop.search.index_product", 10, "celery", 0.05, 0.001, 0.005),
    TaskType("shop.search.reindex_category", 0.5, "celery", 6.0, 0.01, 0.0),
    TaskType("shop.images.make_thumbnail", 9, "celery", 0.25, 0.003, 0.0),
    TaskType("shop.images.optimize", 4, "celery", 1.2, 0.004, 0.0),
    TaskType("shop.inventory.sync_supplier", 2, "celery", 3.0, 0.05, 0.1),
    TaskType("shop.analytics.track_event", 14, "celery", 0.01, 0.0005, 0.0),
    TaskType("shop.analytics.rollup_hour", 0.3, "celery", 8.0, 0.01, 0.0),
    TaskType("shop.reports.build_monthly", 0.2, "celery", 2.0, 0.02, 0.0),
    TaskType("shop.reports.render_page", 0.2, "celery", 0.12, 0.002, 0.0),
    TaskType("shop.reports.merge_pages", 0.1, "celery", 1.5, 0.01, 0.0),
    TaskType("shop.webhooks.deliver", 6, "celery", 0.5, 0.03, 0.08),
)
BY_NAME = {t.name: t for t in TASK_TYPES}
NAMES = [t.name for t in TASK_TYPES]
WEIGHTS = [t.weight for t in TASK_TYPES]

EXCEPTIONS = (
    (
        "requests.exceptions.Timeout",
        "HTTPSConnectionPool(host='api.example.com', port=443): Read timed out. (read timeout=10)",
    ),
    (
        "requests.exceptions.ConnectionError",
        "('Connection aborted.', RemoteDisconnected("
        "'Remote end closed connection without response'))",
    ),
    ("shop.payments.CardDeclined", "card declined: insufficient_funds"),
    ("KeyError", "'sku'"),
    ("ValueError", "invalid literal for int() with base 10: 'n/a'"),
    (
        "psycopg2.errors.DeadlockDetected",
        "deadlock detected\nDETAIL:  Process 4242 waits for"
        " ShareLock on transaction 1234567; blocked by process 4243.",
    ),
)

TRACEBACK = """Traceback (most recent call last):
  File "/venv/lib/python3.11/site-packages/celery/app/trace.py", line 453, in trace_task
    R = retval = fun(*args, **kwargs)
                 ^^^^^^^^^^^^^^^^^^^^
  File "/venv/lib/python3.11/site-packages/celery/app/trace.py", line 736, in __protected_call__
    return self.run(*args, **kwargs)
           ^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/app/shop/{module}.py", line {line}, in {func}
    response = client.post(url, json=payload, timeout=10)
               ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/app/shop/http.py", line 88, in post
    return self._request("POST", url, **kwargs)
           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/app/shop/http.py", line 61, in _request
    raise translate(exc) from exc
{exc_type}: {exc_message}
"""

REGISTRY = [
    {
        "name": t.name,
        "module": t.name.rsplit(".", 1)[0],
        "signature": "(order_id, customer_id=None, *, priority='normal')",
        "queue": t.queue,
        "max_retries": 3,
        "default_retry_delay": 180,
        "autoretry_for": ["requests.exceptions.Timeout"] if t.retry else [],
        "retry_backoff": "True" if t.retry else "False",
        "rate_limit": None,
        "time_limit": None,
        "soft_time_limit": 300,
        "acks_late": True,
        "ignore_result": False,
    }
    for t in TASK_TYPES
]


class Process:
    """One emitting process: host name, pid, and event ids made as capture's publisher does."""

    def __init__(self, rng: random.Random, host: str, pid: int) -> None:
        self.host = host
        self.pid = pid
        self.prefix = f"{rng.getrandbits(64):016x}"
        self.counter = itertools.count()

    def eid(self) -> str:
        return f"{self.prefix}{next(self.counter):08x}"


class Worker:
    """A Celery worker node: its main process and four pool processes."""

    def __init__(self, rng: random.Random, index: int) -> None:
        self.name = f"celery@worker-{index}"
        base = 100 + index * 1000
        self.main = Process(rng, self.name, base)
        self.pool = [Process(rng, self.name, base + 1 + i) for i in range(4)]
        self.processed = 0


@dataclass(slots=True)
class Task:
    """One task id and its place in its workflow, as its ``sent`` event describes it."""

    id: str
    name: str
    trace: str
    root: str | None
    parent: str | None = None
    group: str | None = None
    index: int | None = None
    chord: tuple[str, str] | None = None  # callback id and name, for chord header members
    chain: list[dict[str, str]] = field(default_factory=list)
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)


Ran = tuple[float, Process] | None
"""When a task succeeded and the pool process that ran it."""


class Workload:
    """The event stream of the simulated deployment; iterate :meth:`events`.

    ``start`` is the epoch time of the first task, ``rate`` the average number
    of top-level units of work per second (about 1.7 tasks each). With
    ``big_flow_at``, once that many tasks exist, one flow of ``big_flow_size``
    tasks: a root, a chord of ``big_flow_size - 2`` members, the callback.
    """

    def __init__(
        self,
        *,
        start: float,
        rate: float,
        seed: int = 7,
        big_flow_at: int | None = None,
        big_flow_size: int = 10_000,
    ) -> None:
        self.rng = random.Random(seed)
        self.uuid_rng = random.Random(seed + 1)
        self.rate = rate
        self.start = start
        self.big_flow_at = big_flow_at
        self.big_flow_size = big_flow_size
        self.workers = [Worker(self.rng, i) for i in range(1, 5)]
        self.web = [Process(self.rng, f"web-{i}", 7000 + i) for i in range(1, 3)]
        self.tasks = 0
        self.orders = 0
        self._heap: list[tuple[float, int, Event]] = []
        self._seq = itertools.count()
        self.big_flow: dict[str, str] | None = None
        """``root_id``, ``group_id`` and ``callback_id`` of the big flow, once made."""
        self.samples: dict[str, str] = {}
        """Ids worth querying: the first retried task, the first failed task."""

    # -- the stream ------------------------------------------------------------

    def events(self, max_tasks: int | None = None) -> Iterator[Event]:
        """Events in ``ts`` order; endless unless ``max_tasks`` caps the tasks made."""
        rng = self.rng
        heap = self._heap
        now = self.start
        for worker in self.workers:
            self._worker_online(worker, now - 1.0)
        next_beat = now + HEARTBEAT
        while max_tasks is None or self.tasks < max_tasks:
            now += rng.expovariate(self.rate)
            while heap and heap[0][0] <= now:
                yield heapq.heappop(heap)[2]
            while next_beat <= now:
                for worker in self.workers:
                    self._heartbeat(worker, next_beat + rng.random() * 0.5)
                next_beat += HEARTBEAT
            big_flow_due = self.big_flow_at is not None and self.tasks >= self.big_flow_at
            if big_flow_due and self.big_flow is None:
                self._big_flow(now)
            else:
                self._unit(now)
        while heap:
            yield heapq.heappop(heap)[2]

    def _push(self, process: Process, kind: str, ts: float, **fields: Any) -> None:
        fields["kind"] = kind
        fields["eid"] = process.eid()
        fields["ts"] = round(ts, 6)
        fields["host"] = process.host
        fields["pid"] = process.pid
        heapq.heappush(self._heap, (ts, next(self._seq), fields))

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.uuid_rng.getrandbits(128), version=4))

    def _new(self, name: str, trace: str | None, **place: Any) -> Task:
        """A new task; its arguments carry a unique order reference ``ord-NNNNNNNN``."""
        rng = self.rng
        self.orders += 1
        task_id = place.pop("id", None) or self._uuid()
        fallback = place.pop("trace_default", None)
        return Task(
            id=task_id,
            name=name,
            trace=trace or fallback or task_id,
            root=place.pop("root", task_id),
            args=[rng.randrange(1, 10_000_000), f"ord-{self.orders:08d}"],
            kwargs={
                "customer_id": f"cus_{rng.getrandbits(40):010x}",
                "priority": rng.choice(("normal", "normal", "normal", "high", "low")),
                "source": rng.choice(("web", "api", "admin", "cron")),
            },
            **place,
        )

    # -- units of work ---------------------------------------------------------

    def _unit(self, now: float) -> None:
        """One thing the web app asks for: a task, a chain, a group or a chord."""
        rng = self.rng
        sender = rng.choice(self.web)
        trace = f"req-{rng.getrandbits(64):016x}" if rng.random() < 0.3 else None
        roll = rng.random()
        if roll < 0.08:
            self._chain(now, sender, trace, rng.randint(2, 4))
        elif roll < 0.12:
            self._group(now, sender, trace, rng.randint(3, 12))
        elif roll < 0.15:
            self._chord(now, sender, trace, rng.randint(3, 8))
        else:
            name = rng.choices(NAMES, weights=WEIGHTS)[0]
            task = self._new(name, trace)
            ran = self._run(now, sender, task)
            if ran is not None and rng.random() < 0.1:  # it sent a few tasks of its own
                end, process = ran
                for i in range(rng.randint(1, 3)):
                    child = self._new(rng.choice(NAMES), task.trace, root=task.id, parent=task.id)
                    self._run(end - 0.01 * (i + 1), process, child)

    def _chain(self, now: float, sender: Process, trace: str | None, length: int) -> None:
        ids = [self._uuid() for _ in range(length)]
        names = [self.rng.choice(NAMES) for _ in range(length)]
        links = [{"id": i, "name": n} for i, n in zip(ids, names, strict=True)]
        at, process, parent = now, sender, None
        for step, task_id in enumerate(ids):
            task = self._new(
                names[step],
                trace,
                id=task_id,
                trace_default=ids[0],
                root=ids[0],
                parent=parent,
                chain=links[step + 1 :],
            )
            ran = self._run(at, process, task)
            if ran is None:
                return  # it broke (or never finished): the later links are never sent
            at, process, parent = ran[0] + 0.002, ran[1], task_id

    def _group(self, now: float, sender: Process, trace: str | None, size: int) -> None:
        group_id = self._uuid()
        name = self.rng.choice(NAMES)
        for index in range(size):
            task = self._new(name, trace, trace_default=group_id, group=group_id, index=index)
            self._run(now + index * 0.0005, sender, task)

    def _chord(self, now: float, sender: Process, trace: str | None, size: int) -> None:
        group_id, callback_id = self._uuid(), self._uuid()
        chord = (callback_id, "shop.images.optimize")
        last: tuple[float, Process, str] | None = None
        for index in range(size):
            task = self._new(
                "shop.images.make_thumbnail",
                trace,
                trace_default=group_id,
                group=group_id,
                index=index,
                chord=chord,
            )
            ran = self._run(now + index * 0.0005, sender, task, may_fail=False)
            if ran is None:
                return  # a member never finished: the callback is never sent
            if last is None or ran[0] > last[0]:
                last = (ran[0], ran[1], task.id)
        assert last is not None
        end, process, member = last
        callback = self._new(
            chord[1],
            trace,
            id=callback_id,
            trace_default=group_id,
            root=member,
            parent=member,
            group=group_id,
        )
        self._run(end + 0.003, process, callback)

    def _big_flow(self, now: float) -> None:
        """A monthly report: the root sends a chord of render_page members and a merge."""
        rng = self.rng
        trace = f"req-{rng.getrandbits(64):016x}"
        root = self._new("shop.reports.build_monthly", trace)
        group_id, callback_id = self._uuid(), self._uuid()
        self._send(now, rng.choice(self.web), root)
        worker = self.workers[0]
        process = worker.pool[0]
        start = now + 0.01
        self._attempt(worker, process, root, start - 0.004, start, 0)
        slots = [start + 1.0] * 16  # four workers with four pool processes each
        last = (0.0, process, root.id)
        for index in range(self.big_flow_size - 2):
            member = self._new(
                "shop.reports.render_page",
                trace,
                root=root.id,
                parent=root.id,
                group=group_id,
                index=index,
                chord=(callback_id, "shop.reports.merge_pages"),
            )
            sent = start + 0.5 + index * 0.00005
            self._send(sent, process, member)
            slot = min(range(16), key=slots.__getitem__)
            runner = self.workers[slot // 4]
            pool = runner.pool[slot % 4]
            began = max(slots[slot], sent + 0.003)
            runtime = rng.lognormvariate(0, 0.3) * 0.12
            self._attempt(runner, pool, member, began - 0.002, began, 0)
            self._succeeded(runner, pool, member, began + runtime, runtime, 0)
            slots[slot] = began + runtime + 0.001
            if began + runtime > last[0]:
                last = (began + runtime, pool, member.id)
        self._succeeded(worker, process, root, start + 2.0, 2.0, 0)
        self.tasks += self.big_flow_size - 1
        end, pool, last_member = last
        callback = self._new(
            "shop.reports.merge_pages",
            trace,
            id=callback_id,
            root=root.id,
            parent=last_member,
            group=group_id,
        )
        self._run(end + 0.003, pool, callback, may_fail=False)
        self.big_flow = {"root_id": root.id, "group_id": group_id, "callback_id": callback_id}

    # -- one task --------------------------------------------------------------

    def _run(self, now: float, sender: Process, task: Task, *, may_fail: bool = True) -> Ran:
        """Send and run one task, with its retries; ``None`` unless it succeeded."""
        rng = self.rng
        spec = BY_NAME[task.name]
        self.tasks += 1
        self._send(now, sender, task)
        worker = rng.choice(self.workers)
        process = rng.choice(worker.pool)
        received = now + rng.uniform(0.001, 0.02)
        if rng.random() < 0.05:  # a busy moment: it waited in the queue
            received += rng.expovariate(2.0)
        started = received + rng.uniform(0.0005, 0.004)
        fate = rng.random()
        if fate < 0.002:  # lost with its worker, never heard of again
            self._received(worker, task, received, 0)
            if rng.random() < 0.5:
                self._started(worker, process, task, started, 0)
            return None
        if fate < 0.0025:  # expired in the queue
            self._received(worker, task, received, 0)
            self._push(
                worker.main,
                "revoked",
                received + 0.001,
                task_id=task.id,
                name=task.name,
                worker=worker.name,
                terminated=False,
                expired=True,
                signum=None,
            )
            return None
        self._attempt(worker, process, task, received, started, 0)
        retries = 0
        while may_fail and retries < 3 and rng.random() < (spec.retry if not retries else 0.3):
            runtime = rng.expovariate(1 / spec.runtime)
            failed_at = started + runtime
            delay = 2.0 * 2**retries + rng.random()
            self._push(
                process,
                "retry",
                failed_at,
                task_id=task.id,
                name=task.name,
                worker=worker.name,
                attempt=retries + 1,
                retries=retries,
                retry_at=round(failed_at + delay, 6),
                runtime=round(runtime, 6),
                **_exception(rng.choice(EXCEPTIONS[:2]), task.name),
            )
            self.samples.setdefault("retried_id", task.id)
            if rng.random() < 0.01:  # the retry message was lost: it stays in RETRY
                return None
            retries += 1
            self._send(failed_at + 0.001, process, task, retries=retries)
            worker = rng.choice(self.workers)
            process = rng.choice(worker.pool)
            started = failed_at + delay
            self._attempt(worker, process, task, failed_at + 0.01, started, retries)
        runtime = rng.expovariate(1 / spec.runtime)
        end = started + runtime
        if may_fail and rng.random() < spec.failure:
            self._push(
                process,
                "failed",
                end,
                task_id=task.id,
                name=task.name,
                worker=worker.name,
                retries=retries,
                runtime=round(runtime, 6),
                **_exception(rng.choice(EXCEPTIONS), task.name),
            )
            self.samples.setdefault("failed_id", task.id)
            return None
        self._succeeded(worker, process, task, end, runtime, retries)
        return end, process

    def _send(self, ts: float, sender: Process, task: Task, retries: int = 0) -> None:
        """The ``sent`` event; a retry names the task itself as its parent."""
        fields: dict[str, Any] = {
            "task_id": task.id,
            "name": task.name,
            "trace_id": task.trace,
            "parent_id": task.id if retries else task.parent,
            "root_id": task.root,
            "group_id": task.group,
            "group_index": task.index,
            "chain": task.chain,
            "retries": retries,
            "eta": None,
            "expires": None,
            "queue": BY_NAME[task.name].queue,
            "exchange": "",
            "routing_key": BY_NAME[task.name].queue,
        }
        if task.chord is not None:
            fields["chord_id"], fields["chord_name"] = task.chord
        fields["args"], fields["kwargs"] = task.args, task.kwargs
        self._push(sender, "sent", ts, **fields)

    def _received(self, worker: Worker, task: Task, ts: float, retries: int) -> None:
        self._push(
            worker.main,
            "received",
            ts,
            task_id=task.id,
            name=task.name,
            worker=worker.name,
            retries=retries,
            instrumented=True,
        )

    def _started(
        self, worker: Worker, process: Process, task: Task, ts: float, retries: int = 0
    ) -> None:
        self._push(
            process,
            "started",
            ts,
            task_id=task.id,
            name=task.name,
            worker=worker.name,
            retries=retries,
            trace_id=task.trace,
            parent_id=task.id if retries else task.parent,
            root_id=task.root,
            group_id=task.group,
        )

    def _attempt(
        self,
        worker: Worker,
        process: Process,
        task: Task,
        received: float,
        started: float,
        retries: int,
    ) -> None:
        self._received(worker, task, received, retries)
        self._started(worker, process, task, started, retries)
        worker.processed += 1

    def _succeeded(
        self,
        worker: Worker,
        process: Process,
        task: Task,
        ts: float,
        runtime: float,
        retries: int,
    ) -> None:
        rng = self.rng
        roll = rng.random()
        result: Any
        if roll < 0.5:
            result = {"ok": True, "id": rng.randrange(1, 10_000_000), "took_ms": rng.randrange(900)}
        elif roll < 0.8:
            result = None
        elif roll < 0.95:
            result = rng.randrange(1_000_000)
        else:
            result = [f"sku-{rng.randrange(100_000):06d}" for _ in range(rng.randint(1, 12))]
        self._push(
            process,
            "succeeded",
            ts,
            task_id=task.id,
            name=task.name,
            worker=worker.name,
            retries=retries,
            runtime=round(runtime, 6),
            result=result,
        )

    # -- workers ---------------------------------------------------------------

    def _worker_online(self, worker: Worker, ts: float) -> None:
        self._push(
            worker.main,
            "worker_online",
            ts,
            worker=worker.name,
            sw_ver="5.4.0",
            pool="prefork",
            concurrency=4,
            queues=["celery", "orders", "payments", "emails"],
            tasks=REGISTRY,
            freq=HEARTBEAT,
        )

    def _heartbeat(self, worker: Worker, ts: float) -> None:
        rng = self.rng
        self._push(
            worker.main,
            "worker_heartbeat",
            ts,
            worker=worker.name,
            active=rng.randint(0, 4),
            processed=worker.processed,
            freq=HEARTBEAT,
            dropped=0,
            loadavg=[round(rng.uniform(0.2, 3.0), 2) for _ in range(3)],
        )


def _exception(exc: tuple[str, str], name: str) -> dict[str, Any]:
    exc_type, message = exc
    module, func = name.rsplit(".", 1)
    text = TRACEBACK.format(
        module=module.split(".", 1)[-1],
        line=40 + len(func),
        func=func,
        exc_type=exc_type,
        exc_message=message,
    )
    return {"exc_type": exc_type, "exc_message": message, "traceback": text}


def frames(events: Iterator[Event] | list[Event], size: int) -> Iterator[list[Event]]:
    """Consecutive batches of ``size`` events (the last may be shorter)."""
    iterator = iter(events)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


# -- Celery's own events, for the comparison ----------------------------------------

_CELERY_TYPES = {
    "sent": "task-sent",
    "received": "task-received",
    "started": "task-started",
    "retry": "task-retried",
    "succeeded": "task-succeeded",
    "failed": "task-failed",
    "revoked": "task-revoked",
    "rejected": "task-rejected",
    "worker_online": "worker-online",
    "worker_heartbeat": "worker-heartbeat",
    "worker_offline": "worker-offline",
}


class CeleryTranslator:
    """Turns each stemtrace event into the event Celery (``-E``) would send for it."""

    def __init__(self) -> None:
        self.clock = itertools.count(1)
        self.calls: dict[str, dict[str, Any]] = {}

    def __call__(self, event: Event) -> dict[str, Any]:
        kind = event["kind"]
        ts = event["ts"]
        found: dict[str, Any] = {
            "hostname": event.get("worker") or event["host"],
            "utcoffset": 0,
            "pid": event["pid"],
            "clock": next(self.clock),
            "timestamp": ts,
            "type": _CELERY_TYPES[kind],
            "local_received": ts + 0.0005,
        }
        if kind.startswith("worker"):
            found.update(
                freq=event.get("freq", 2.0),
                sw_ident="py-celery",
                sw_ver="5.4.0",
                sw_sys="Linux",
                active=event.get("active", 0),
                processed=event.get("processed", 0),
                loadavg=event.get("loadavg", [0.0, 0.0, 0.0]),
            )
            return found
        task_id = event["task_id"]
        found["uuid"] = task_id
        if kind == "sent":
            call = {
                "name": event["name"],
                "args": repr(event.get("args")),
                "kwargs": repr(event.get("kwargs")),
                "root_id": event.get("root_id"),
                "parent_id": event.get("parent_id"),
            }
            self.calls[task_id] = call
            found.update(call)
            found.update(
                retries=event.get("retries", 0),
                eta=None,
                expires=None,
                queue=event.get("queue"),
                exchange="",
                routing_key=event.get("routing_key"),
            )
        elif kind == "received":
            found.update(self.calls.get(task_id, {"name": event["name"]}))
            found.update(retries=event.get("retries", 0), eta=None, expires=None)
        elif kind == "succeeded":
            found.update(result=repr(event.get("result")), runtime=event.get("runtime"))
            self.calls.pop(task_id, None)
        elif kind in ("failed", "retry"):
            found.update(
                exception=f"{event['exc_type']}({event['exc_message']!r})",
                traceback=event.get("traceback"),
            )
        elif kind == "revoked":
            found.update(terminated=False, signum=None, expired=True)
        return found
