"""``stemtrace demo``: a real Celery app, running in this process, making realistic flows.

Nothing to install or start: the broker is kombu's in-process ``memory://``
transport, results live in ``cache+memory://`` (so chords work), two real
Celery workers run in threads with the ``threads`` pool (``shop@`` on the
``celery`` queue, four threads; ``reports@`` on the ``reports`` queue, one
thread and one message prefetched), and ``init(app)`` publishes to the
in-process ``memory://demo`` stream that the server reads. The server counts
the broker's queues through the same memory transport (``queue_broker``).

The tasks are a small shop, and also an example of what stemtrace shows:

* an order (with its own trace id) fans out into a chord: stock is reserved
  for each item in parallel, then the payment is charged, then a receipt sent;
* the payment gateway times out now and then: the charge retries and succeeds;
* one supplier's feed is malformed: its import chain breaks, later links never run;
* a newsletter sends one email task per subscriber from inside its body;
* a sales report takes several seconds;
* API keys and passwords in task arguments arrive scrubbed;
* an abandoned cart sets off a reminder with a countdown: listed as scheduled, with
  when it is due, on the queues page;
* the month-end close (at once, then every :data:`CLOSE_EVERY` seconds) sends the
  single-slot ``reports@`` worker a search-index rebuild that runs past its soft time
  limit (the threads pool does not enforce it: a late task on the problems page) and
  three reports: the first is held by the worker behind the rebuild, the others wait
  in the broker (a backlog), and all of them clear as the slot frees;
* an order export goes to the ``exports`` queue that no worker consumes (one a minute,
  at most :data:`MAX_EXPORTS`): that queue and its waiting tasks stay problems, as
  they would in production.
"""

# Celery ships no type hints, so mypy sees ``@app.task`` as an untyped decorator.
# mypy: disable-error-code="untyped-decorator"

from __future__ import annotations

import itertools
import logging
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

from celery import Celery, chain, chord, signals
from celery.app import trace as celery_trace
from celery.concurrency.thread import TaskPool as ThreadsPool

import stemtrace

EVENTS_URL = "memory://demo"
"""Where ``init(app)`` publishes and the demo server reads: an in-process stream."""
BROKER_URL = "memory://localhost/"
"""The Celery app's broker: kombu's in-process transport, whose queues the server counts."""
SOFT_LIMIT = 8.0
"""The search-index rebuild's soft time limit, in seconds (it runs well past it)."""
REBUILD_SECONDS = 90.0
"""How long the search-index rebuild runs: the held and late problems last as long."""
CLOSE_EVERY = 180.0
"""Seconds between month-end closes: the ``reports@`` slot is busy for about 110 of them."""
EXPORT_EVERY = 60.0
MAX_EXPORTS = 30
"""Exports sent to the queue nobody consumes, one every :data:`EXPORT_EVERY` seconds."""

logger = logging.getLogger("stemtrace.cli.demo")

app = Celery("shop", broker=BROKER_URL, backend="cache+memory://")
app.conf.update(
    # The memory transport polls its queues; once a second by default.
    broker_transport_options={"polling_interval": 0.05},
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

stopping = threading.Event()
"""Set when the demo stops: pretend work ends at once, so Ctrl-C is quick."""


def work(seconds: float) -> None:
    """Pretend to work (a real task would call a database or an API here)."""
    stopping.wait(seconds)


# -- an order: chord(reserve each item) -> charge (flaky, retries) -> receipt ----------


@app.task(name="shop.reserve_stock")
def reserve_stock(order_id: str, sku: str, quantity: int) -> dict[str, Any]:
    work(random.uniform(0.2, 1.0))
    return {"sku": sku, "reserved": quantity, "warehouse": random.choice(["ams-1", "fra-2"])}


@app.task(
    bind=True,
    name="shop.charge_payment",
    autoretry_for=(ConnectionError,),
    retry_kwargs={"max_retries": 4, "countdown": 1},
)
def charge_payment(
    self: Any, reservations: list[dict[str, Any]], order_id: str, amount: float, api_key: str
) -> dict[str, Any]:
    work(0.3)
    if self.request.retries < 2 and random.random() < 0.6:
        raise ConnectionError("payment gateway timed out after 0.3s")
    return {"order_id": order_id, "charged": amount, "items": len(reservations)}


@app.task(name="shop.send_receipt")
def send_receipt(charge: dict[str, Any], email: str) -> str:
    work(0.2)
    return f"receipt for {charge['order_id']} sent to {email}"


CATALOG = {"mug-blue": 12.5, "tee-black-m": 24.0, "poster-a2": 18.0, "stickers": 4.5,
           "notebook": 9.0, "socks-stripes": 7.5}  # fmt: skip
CUSTOMERS = ["ada@example.com", "grace@example.com", "alan@example.com", "edsger@example.com"]


def place_order() -> None:
    """What a web request would do: one trace id for everything the order sets off."""
    order_id = f"order-{_new_id()}"
    items = {sku: random.randint(1, 3) for sku in random.sample(sorted(CATALOG), 3)}
    amount = round(sum(CATALOG[sku] * quantity for sku, quantity in items.items()), 2)
    with stemtrace.trace(order_id):
        workflow = chain(
            chord(
                [reserve_stock.s(order_id, sku, quantity) for sku, quantity in items.items()],
                charge_payment.s(order_id, amount, api_key="sk_test_not_a_real_key"),
            ),
            send_receipt.s(email=random.choice(CUSTOMERS)),
        )
        workflow.apply_async()


# -- a supplier feed import: a chain that breaks on a malformed feed -------------------


@app.task(name="shop.download_feed")
def download_feed(supplier: str) -> dict[str, Any]:
    work(0.5)
    return {"supplier": supplier, "rows": random.randint(200, 900)}


@app.task(name="shop.parse_feed")
def parse_feed(feed: dict[str, Any]) -> dict[str, Any]:
    work(0.3)
    if feed["supplier"] == "initech":
        raise ValueError("malformed CSV at line 42: expected 5 columns, got 3")
    return {**feed, "parsed": feed["rows"]}


@app.task(name="shop.update_prices")
def update_prices(feed: dict[str, Any]) -> int:
    work(0.4)
    return int(feed["parsed"])


@app.task(name="shop.publish_catalog")
def publish_catalog(changed: int) -> str:
    work(0.2)
    return f"catalog published ({changed} prices changed)"


SUPPLIERS = ["acme", "globex", "initech"]


def import_feeds() -> None:
    """One chain per supplier: download, parse, update prices, publish the catalog."""
    with stemtrace.trace(f"feed-import-{_new_id()}"):
        for supplier in SUPPLIERS:
            chain(
                download_feed.s(supplier), parse_feed.s(), update_prices.s(), publish_catalog.s()
            ).apply_async()


# -- a newsletter: children sent with .delay() from inside a task ----------------------


@app.task(name="shop.send_newsletter")
def send_newsletter(campaign: str, subscribers: list[str]) -> int:
    for address in subscribers:
        send_email.delay(address, subject=f"{campaign} at the shop")
    return len(subscribers)


@app.task(name="shop.send_email")
def send_email(address: str, subject: str) -> str:
    work(random.uniform(0.1, 0.4))
    return f"sent {subject!r} to {address}"


def newsletter() -> None:
    campaign = random.choice(["Summer sale", "New arrivals", "Back in stock"])
    send_newsletter.delay(campaign, random.sample(CUSTOMERS, random.randint(2, 4)))


# -- a sign-up (a password in the kwargs) and a slow report ----------------------------


@app.task(name="shop.create_account")
def create_account(email: str, password: str) -> str:
    work(0.3)
    return f"account {email} created"


def sign_up() -> None:
    user = f"user-{_new_id()}"
    with stemtrace.trace(f"signup-{user}"):
        create_account.delay(email=f"{user}@example.com", password="correct horse battery")


@app.task(name="shop.build_sales_report")
def build_sales_report(day: str) -> dict[str, Any]:
    work(random.uniform(4.0, 7.0))
    return {"day": day, "orders": random.randint(80, 300), "revenue": random.randint(2, 9) * 1000}


def sales_report() -> None:
    build_sales_report.delay(day=(date.today() - timedelta(days=1)).isoformat())


# -- a reminder with a countdown: scheduled, then run --------------------------------


@app.task(name="shop.remind_cart")
def remind_cart(email: str, items: int) -> str:
    work(0.1)
    return f"reminded {email} of {items} items in the cart"


def abandoned_cart() -> None:
    remind_cart.apply_async(
        (random.choice(CUSTOMERS), random.randint(1, 4)), countdown=random.uniform(30, 60)
    )


# -- the month-end close: one slot, a late rebuild, reports held and queued behind it --


@app.task(name="shop.rebuild_search_index", queue="reports", soft_time_limit=SOFT_LIMIT)
def rebuild_search_index() -> int:
    work(REBUILD_SECONDS)
    return random.randint(2000, 5000)


def close_the_month() -> None:
    with stemtrace.trace(f"month-end-{_new_id()}"):
        rebuild_search_index.delay()
        for region in ("emea", "americas", "apac"):
            build_sales_report.apply_async(kwargs={"day": f"month-{region}"}, queue="reports")


# -- an export to a queue no worker consumes -------------------------------------------


@app.task(name="shop.export_orders", queue="exports")
def export_orders(since: str) -> int:
    work(1.0)
    return random.randint(10, 90)


def export() -> None:
    export_orders.delay(since=(date.today() - timedelta(days=1)).isoformat())


def _new_id() -> str:
    return uuid.uuid4().hex[:8]


FLOWS: list[Callable[[], None]] = [
    place_order, import_feeds, place_order, newsletter,
    place_order, sign_up, abandoned_cart, place_order, sales_report,
]  # fmt: skip
"""One flow starts every interval, in this order, round and round."""


# -- running it all in this process ----------------------------------------------------


class Demo:
    """The workers' threads, and a thread that starts one flow every ``interval`` seconds."""

    def __init__(self, *, interval: float = 2.0, stream: str = "stemtrace:events") -> None:
        self.interval = interval
        self.stream = stream
        self.workers: list[tuple[Any, threading.Thread]] = []
        self._flows_thread: threading.Thread | None = None
        self._exports = 0

    def start(self, timeout: float = 30.0) -> None:
        """Start the workers and, once they are ready, the flows."""
        stopping.clear()
        capture = stemtrace.init(
            app, transport_url=EVENTS_URL, stream=self.stream, stream_maxlen=5000, enabled=True
        )
        host = socket.gethostname()
        # As ``celery worker`` does: make this the default app (pool threads look their
        # tasks up there); each pool tells its tasks which worker runs them.
        celery_trace.setup_worker_optimizations(app, f"shop@{host}")
        # One after the other: a worker picks its queues from the app's, as it starts.
        self._start_worker(f"shop@{host}", ["celery"], 4, timeout)
        self._start_worker(f"reports@{host}", ["reports"], 1, timeout, prefetch_multiplier=1)
        # Send the workers' first events now: the in-process stream then exists with the
        # cap above (not the reader's default) before the server opens it, so memory stays
        # bounded however long the demo runs.
        assert capture is not None
        capture.publisher.flush(timeout)
        self._flows_thread = _thread(self._make_flows, "demo-flows")

    def _start_worker(
        self, hostname: str, queues: list[str], concurrency: int, timeout: float, **options: Any
    ) -> None:
        ready = threading.Event()

        def on_ready(consumer: Any) -> None:
            # What ``celery worker`` does when ready; stemtrace announces the worker then.
            signals.worker_ready.send(sender=consumer)
            ready.set()

        worker = app.WorkController(
            pool_cls=_threads_pool(hostname),
            concurrency=concurrency,
            hostname=hostname,
            queues=queues,
            without_mingle=True,
            without_gossip=True,
            without_heartbeat=True,
            ready_callback=on_ready,
            **options,
        )
        self.workers.append((worker, _thread(worker.start, f"demo-worker-{hostname}")))
        if not ready.wait(timeout):
            raise RuntimeError(f"the demo's Celery worker {hostname} did not start in {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop making flows, then the workers: a warm shutdown, quick since ``work`` ends."""
        stopping.set()
        flows, self._flows_thread = self._flows_thread, None
        if flows is not None:
            flows.join(timeout)
        workers, self.workers = self.workers, []
        for worker, _ in workers:
            worker.stop(in_sighandler=False)
        for _, thread in workers:
            thread.join(timeout)

    def _make_flows(self) -> None:
        # Now and then, by the clock (however short the interval): bounded work.
        timed: list[tuple[float, Callable[[], None]]] = [
            (CLOSE_EVERY, close_the_month),
            (EXPORT_EVERY, self._export),
        ]
        due = [time.monotonic()] * len(timed)
        for flow in itertools.cycle(FLOWS):
            for index, (every, timed_flow) in enumerate(timed):
                if time.monotonic() >= due[index]:
                    due[index] = time.monotonic() + every
                    _run(timed_flow)
            _run(flow)
            if stopping.wait(self.interval):
                return

    def _export(self) -> None:
        if self._exports < MAX_EXPORTS:
            self._exports += 1
            export()


def _run(flow: Callable[[], None]) -> None:
    try:
        flow()
    except Exception:
        logger.exception("stemtrace demo: could not start %s", flow.__name__)


def _threads_pool(hostname: str) -> type[Any]:
    """Celery's threads pool, telling its tasks which worker runs them.

    Celery's tracer takes a task's ``request.hostname`` from one process-wide slot
    (``setup_worker_optimizations``), made for one worker a process; with two in
    threads, each pool hands the tracer its own worker's name.
    """

    class Pool(ThreadsPool):  # type: ignore[misc]
        def on_apply(
            self, target: Any, args: Any = None, kwargs: Any = None, *rest: Any, **options: Any
        ) -> Any:
            if target is celery_trace.fast_trace_task:
                tasks, accept, _ = celery_trace._localized
                kwargs = {**(kwargs or {}), "_loc": [tasks, accept, hostname]}
            return super().on_apply(target, args, kwargs, *rest, **options)

    Pool.__module__ = ThreadsPool.__module__  # so workers still read as the threads pool
    return Pool


def _thread(target: Callable[[], None], name: str) -> threading.Thread:
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread
