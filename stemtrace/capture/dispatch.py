"""A short cut through Celery's ``Signal.send`` for the signals every task sends.

Celery's ``Signal.send`` takes a lock, works out the sender's id and filters
the connected receivers on every call: about 20,000 instructions before any
receiver runs. Every task sends four signals stemtrace listens to
(``before_task_publish`` where it is sent, ``task_received`` in the worker's
main process, ``task_prerun`` and ``task_success`` where it runs), and those
sends cost about as much as stemtrace's receivers themselves.

While stemtrace's receiver is the only one connected to such a signal, the
short cut hands the send's keyword arguments, as the one dictionary Python
already made of them, straight to stemtrace's *handler* (``handler(sender,
named)``): no lock, no filtering, and no second unpacking of the arguments
into a receiver's parameters. It answers as ``Signal.send`` would, a list of
``(receiver, response)``. As soon as anything else is connected to that
signal, or stemtrace's receiver is not, each call goes through Celery's own
``send``, unchanged, which calls the connected receiver (made by
:func:`receiver_for`) with Celery's usual keyword arguments.

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

Handler = Callable[[Any, dict[str, Any]], Any]
"""``handler(sender, named)``: a signal's sender and its other keyword arguments."""


def receiver_for(handler: Handler, name: str) -> Callable[..., Any]:
    """The receiver to connect for ``handler``, called the way Celery calls receivers."""

    def receiver(sender: Any = None, **named: Any) -> Any:
        named.pop("signal", None)
        return handler(sender, named)

    receiver.__name__ = receiver.__qualname__ = name
    return receiver


_direct_sends: set[Callable[..., Any]] = set()


def direct_send(
    signal: Any, receiver: Callable[..., Any], handler: Handler, original: Any
) -> Callable[..., Any]:
    """``signal.send`` that calls ``handler`` directly while ``receiver`` is the signal's only one.

    A closure rather than an object with ``__call__``: Python calls a function
    for about half of what an instance costs.
    """

    def send(sender: Any = None, **named: Any) -> list[tuple[Any, Any]]:
        receivers = signal.receivers  # read each time: Celery replaces the list
        if len(receivers) == 1 and receivers[0][1] is receiver:
            return [(receiver, handler(sender, named))]
        return original(sender, **named)  # type: ignore[no-any-return]

    send.__qualname__ = send.__name__ = f"direct_send[{getattr(signal, 'name', '?')}]"
    _direct_sends.add(send)
    return send


def is_direct(send: Any) -> bool:
    """Whether ``send`` is one of :func:`direct_send`'s."""
    return send in _direct_sends


def install(signal: Any, receiver: Callable[..., Any], handler: Handler) -> bool:
    """Route ``signal``'s sends straight to ``handler`` while ``receiver`` is alone on it.

    ``receiver`` must be connected strongly (``weak=False``): the check is by
    identity with what the signal holds. Returns True if the short cut is in
    place (now or from an earlier call).
    """
    original = signal.__dict__.get("send")
    if original is not None and is_direct(original):
        return True
    bound = getattr(signal, "send", None)
    if original is not None or not _bound_to(bound, signal):
        return False  # someone else's send: leave it alone
    direct = direct_send(signal, receiver, handler, bound)
    signal.send = direct
    trace_name = _TRACE_NAMES.get(getattr(signal, "name", ""))
    if trace_name is not None:
        from celery.app import trace

        if getattr(trace, trace_name, None) == bound:
            setattr(trace, trace_name, direct)
    return True


def _bound_to(method: Any, owner: object) -> bool:
    return getattr(method, "__self__", None) is owner
