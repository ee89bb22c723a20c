"""``stemtrace consume``: one consumer in this process, or ``--consumers N`` processes.

The N consumers are processes, not threads: decoding frames and preparing rows
is Python work that one interpreter's lock would serialise, and a process that
dies (or is killed) leaves its pending entries for the others to claim, which
is the failure the consumer group is there to survive. The parent only starts
them, restarts one that exits, and stops them all on SIGINT or SIGTERM.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
from typing import Any

from stemtrace import __version__
from stemtrace.cli import gc as collector
from stemtrace.settings import Settings

logger = logging.getLogger("stemtrace")

RESTART_DELAY = 1.0
"""Seconds between a consumer process exiting and its replacement starting."""


def consume(settings: Settings) -> int:
    if settings.consumers > 1:
        return consume_many(settings)
    return consume_one(settings, settings.consumer_id, first=True)


def consume_one(settings: Settings, name: str, *, first: bool) -> int:
    """Read the stream into the store until SIGINT or SIGTERM; ``first``: also read
    Celery's own events and poll the queues (once, not once per consumer)."""
    from stemtrace.ingest.consumer import (
        build_celery_events_consumer,
        build_consumer,
        source_name,
    )
    from stemtrace.store import open_store

    store = open_store(settings.db)
    consumers = [build_consumer(settings, store, consumer_name=name, poll=first)]
    celery_events = build_celery_events_consumer(settings, store) if first else None
    if celery_events is not None:
        consumers.append(celery_events)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    collector.tune()
    for consumer in consumers:
        consumer.start()
    member = f" as {name} of group {settings.group}" if settings.group is not None else ""
    print(f"stemtrace {__version__}: reading {source_name(settings)}{member} into {settings.db}",
          flush=True)  # fmt: skip
    stop.wait()
    for consumer in consumers:
        consumer.stop()
    store.close()
    return 0


def _child(settings: Settings, name: str, first: bool) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    consume_one(settings, name, first=first)


def consume_many(settings: Settings) -> int:
    """``settings.consumers`` processes on ``settings.group``, each its own name."""
    base = settings.consumer_name or f"{socket.gethostname()}-{os.getpid()}"
    names = [f"{base}-{index + 1}" for index in range(settings.consumers)]
    context = multiprocessing.get_context("spawn")  # no inherited threads, locks or sockets
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())

    def start(index: int) -> Any:
        process = context.Process(
            target=_child, args=(settings, names[index], index == 0), name=names[index]
        )
        process.start()
        return process

    processes = [start(index) for index in range(len(names))]
    while not stop.wait(RESTART_DELAY):
        for index, process in enumerate(processes):
            if not process.is_alive():
                logger.warning(
                    "stemtrace: consumer %s exited (%s); starting it again",
                    names[index], process.exitcode,
                )  # fmt: skip
                processes[index] = start(index)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(15.0)
        if process.is_alive():
            process.kill()
    return 0
