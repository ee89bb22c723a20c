"""A short cut through Celery's ``Signal.send`` for the signals every task sends.

Celery's ``Signal.send`` takes a lock, works out the sender's id and filters
the connected receivers on every call: about 20,000 instructions before any
receiver runs. Every task sends four signals stemtrace listens to
(``before_task_publish`` where it is sent, ``task_received`` in the worker's
main process, ``task_prerun`` and ``task_success`` where it runs), and those
sends cost about as much as stemtrace's receivers themselves.

While stemtrace's receiver is the only one connected to such a signal,
:func:`direct_send` calls it at once, as ``Signal.send`` would (same keyword
arguments, same return value). As soon as anything else is connected to that
signal, or stemtrace's receiver is not, each call goes through Celery's own
``send``, unchanged.

It is installed as the signal's ``send`` attribute (which
``celery.worker.strategy`` looks up for every message, and an app's task
producer binds when it is first made: one made before ``init(app)`` keeps
Celery's own), and in
``celery.app.trace`` for ``send_prerun`` and ``send_success``, which that
module binds once at import. Each only where the name still holds Celery's
own bound method: another Celery version, or another library's patch, is left
as it was, and the signals then work as they always do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# ``celery.app.trace`` names of the bound ``send`` of each signal, where it has one.
_TRACE_NAMES = {"task_prerun": "send_prerun", "task_success": "send_success"}


_direct_sends: set[Callable[..., Any]] = set()


def direct_send(signal: Any, receiver: Callable[..., Any], original: Any) -> Callable[..., Any]:
    """``signal.send`` that calls ``receiver`` directly while it is the signal's only one.

    A closure rather than an object with ``__call__``: Python calls a function
    for about half of what an instance costs.
    """

    def send(sender: Any = None, **named: Any) -> list[tuple[Any, Any]]:
        receivers = signal.receivers  # read each time: Celery replaces the list
        if len(receivers) == 1 and receivers[0][1] is receiver:
            return [(receiver, receiver(signal=signal, sender=sender, **named))]
        return original(sender, **named)  # type: ignore[no-any-return]

    send.__qualname__ = send.__name__ = f"direct_send[{getattr(signal, 'name', '?')}]"
    _direct_sends.add(send)
    return send


def is_direct(send: Any) -> bool:
    """Whether ``send`` is one of :func:`direct_send`'s."""
    return send in _direct_sends


def install(signal: Any, receiver: Callable[..., Any]) -> bool:
    """Route ``signal``'s sends straight to ``receiver`` while it is alone; True if installed.

    ``receiver`` must be connected strongly (``weak=False``): the check is by
    identity with what the signal holds.
    """
    original = signal.__dict__.get("send")
    if original is not None and is_direct(original):
        return True
    bound = getattr(signal, "send", None)
    if original is not None or not _bound_to(bound, signal):
        return False  # someone else's send: leave it alone
    direct = direct_send(signal, receiver, bound)
    signal.send = direct
    trace_name = _TRACE_NAMES.get(getattr(signal, "name", ""))
    if trace_name is not None:
        from celery.app import trace

        if getattr(trace, trace_name, None) == bound:
            setattr(trace, trace_name, direct)
    return True


def _bound_to(method: Any, owner: object) -> bool:
    return getattr(method, "__self__", None) is owner
