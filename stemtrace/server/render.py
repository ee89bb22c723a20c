"""Turning data into what the pages show: times, durations, values, trees, bars.

:func:`pretty` is the one place task data becomes HTML outside Jinja's own
autoescaping, so it escapes every string it emits.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

from fastapi import Path
from markupsafe import Markup

from stemtrace.core import states
from stemtrace.core.bounds import MARKER, MORE_KEY, finite

PathId = Path(min_length=1, max_length=255)
LOCK = Markup(
    '<svg class="lock" viewBox="0 0 12 14" width="10" height="12" aria-hidden="true">'
    '<path d="M3 6V4a3 3 0 0 1 6 0v2h1.5v8h-9V6zm1.5 0h3V4a1.5 1.5 0 0 0-3 0z"/></svg>'
)
"""The scrubbed badge's mark: drawn, so that it needs no emoji font (the island draws it too)."""

STATE_ICONS = {state: look[0] for state, look in states.LOOKS.items()}
"""Each state's icon, as :data:`stemtrace.core.states.LOOKS` defines it."""


def when(ts: float | None) -> str:
    """A UTC time to the millisecond; any number at all gives text, never an error."""
    if ts is None:
        return "—"
    try:
        moment = datetime.fromtimestamp(ts, UTC)
    except (ValueError, OverflowError, OSError, TypeError):
        return f"not a time ({str(ts)[:30]})"
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def ago(ts: float | None, now: float) -> str:
    if ts is None:
        return "—"
    if not finite(ts):
        return "—"
    age = max(now - ts, 0.0)
    return (duration(age) if age < 10 else duration(float(int(age)))) + " ago"


def duration(seconds: float | None) -> str:
    """A duration in the one format every page, and the graph island, uses.

    The unit is chosen after rounding, so a value never reads "1000 ms" or
    "60 s". Rounding is half up on the float's own value, written out by hand
    so that react-graph/src/model.js ``formatDuration`` gives the very same
    text (react-graph/test/durations.json holds both to it).
    """
    if seconds is None:
        return "—"
    if not finite(seconds):
        return "∞" if seconds == math.inf else "—"
    if seconds < 0:
        return "-" + duration(-seconds)
    if seconds >= 1e12:  # a broken clock's difference; past this the units overflow
        return "over 30,000 years"
    tenths_ms = _half_up(seconds * 10_000)
    if tenths_ms < 1000:
        return f"{tenths_ms // 10}.{tenths_ms % 10} ms"
    ms = _half_up(seconds * 1000)
    if ms < 1000:
        return f"{ms} ms"
    hundredths = _half_up(seconds * 100)
    if hundredths < 1000:
        return f"{hundredths // 100}.{hundredths % 100:02d} s"
    whole = _half_up(seconds)
    if whole < 60:
        return f"{whole} s"
    minutes, rest = divmod(whole, 60)
    if minutes < 60:
        return _two(minutes, "min", rest, "s")
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return _two(hours, "h", minutes, "min")
    return _two(hours // 24, "d", hours % 24, "h")


def _half_up(value: float) -> int:
    return math.floor(value + 0.5)


def _two(big: int, big_unit: str, small: int, small_unit: str) -> str:
    return f"{big} {big_unit} {small} {small_unit}" if small else f"{big} {big_unit}"


def retry_policy(policy: Any) -> tuple[str, str]:
    """What the registry says of a task's retries: how many and when; which errors retry.

    ``policy`` is :func:`stemtrace.capture.registry.retry_policy`'s, as a worker sent it.
    """
    if not isinstance(policy, dict):
        return "", ""
    limit = _number(policy.get("max_retries"))
    parts = ["no limit" if limit is None else f"max {limit}"]
    factor, most = _number(policy.get("backoff")), _number(policy.get("backoff_max"))
    countdown = _number(policy.get("countdown"))
    if factor is not None and factor > 0:
        steps = [factor * 2**n if most is None else min(factor * 2**n, most) for n in range(3)]
        parts.append("backoff " + ", ".join(_seconds(step) for step in steps) + ", …")
        if most is not None:
            parts.append(f"at most {_seconds(most)}")
        if policy.get("jitter"):
            parts.append("jittered")
    elif countdown is not None:
        parts.append(f"every {_seconds(countdown)}")
    auto = ", ".join(str(name) for name in policy.get("autoretry_for") or [])
    if auto:
        auto = f"auto on {auto}"
        dont = ", ".join(str(name) for name in policy.get("dont_autoretry_for") or [])
        if dont:
            auto += f", not on {dont}"
    return ", ".join(parts), auto


def _number(value: Any) -> int | float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _seconds(value: float) -> str:
    return f"{value:g} s"


def short_id(value: str | None) -> str:
    if not value:
        return ""
    return value if len(value) <= 13 else value[:8] + "…"


def json_text(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)


def pretty(value: Any, depth: int = 0) -> Markup:
    """A JSON value as nested HTML; stemtrace's markers become visible badges."""
    if depth > 40 and isinstance(value, dict | list):
        return Markup('<span class="badge cut">nested too deep to show</span>')
    if isinstance(value, dict):
        marker = value.get(MARKER)
        if isinstance(marker, str) and depth < 50:
            return _marker(marker, value)
        if not value:
            return Markup('<span class="v-empty">{}</span>')
        items = []
        for key, item in value.items():
            if key == MORE_KEY and isinstance(item, dict):
                items.append(Markup("<li>{}</li>").format(pretty(item, depth + 1)))
                continue
            items.append(
                Markup('<li><span class="v-key">{}</span>: {}</li>').format(
                    key, pretty(item, depth + 1)
                )
            )
        return Markup('<ul class="v-map">{}</ul>').format(Markup("").join(items))
    if isinstance(value, list):
        if not value:
            return Markup('<span class="v-empty">[]</span>')
        items = [Markup("<li>{}</li>").format(pretty(item, depth + 1)) for item in value]
        return Markup('<ol class="v-list" start="0">{}</ol>').format(Markup("").join(items))
    if isinstance(value, str):
        return Markup('<span class="v-str">"{}"</span>').format(value)
    if value is None:
        return Markup('<span class="v-null">null</span>')
    if isinstance(value, bool):
        return Markup('<span class="v-bool">{}</span>').format("true" if value else "false")
    return Markup('<span class="v-num">{}</span>').format(value)


def _marker(kind: str, value: dict[str, Any]) -> Markup:
    if kind == "scrubbed":
        return Markup(
            '<span class="badge scrubbed" title="removed by scrubbing">{} scrubbed</span>'
        ).format(LOCK)
    if kind == "truncated":
        return Markup(
            '<span class="badge cut" title="cut by stemtrace">truncated: {} characters</span> '
            '<span class="v-str">{}…</span>'
        ).format(value.get("length"), str(value.get("preview", ""))[:2000])
    if kind == "repr":
        return Markup(
            '<span class="badge repr" title="not JSON: shown as repr">{}</span> <code>{}</code>'
        ).format(value.get("type"), value.get("repr"))
    if kind == "more":
        return Markup('<span class="badge cut">… {} more</span>').format(value.get("count"))
    if kind == "error":
        return Markup('<span class="badge cut">not recorded: {}</span>').format(value.get("error"))
    return Markup("<code>{}</code>").format(json.dumps(value, default=str))


def timeline_bar(phases: list[dict[str, Any]], width: float = 1000.0) -> list[dict[str, Any]]:
    """SVG rectangles (x, width in a 0..``width`` box) for the task's phases."""
    timed = [p for p in phases if p["phase"] != "finished" and p["duration"] is not None]
    total = sum(p["duration"] for p in timed)
    if total <= 0:
        return []
    bar, x = [], 0.0
    for phase in timed:
        size = max(width * phase["duration"] / total, 2.0)
        bar.append({**phase, "x": round(x, 2), "width": round(size, 2)})
        x += size
    scale = width / x
    for item in bar:
        item["x"] = round(item["x"] * scale, 2)
        item["width"] = round(item["width"] * scale, 2)
    return bar


def flow_tree(flow: dict[str, Any]) -> list[dict[str, Any]]:
    """The flow as an indented list: ``{node, depth, edge, seen}`` in depth-first order.

    A node reached again (a chord callback from each member) is listed once in
    full; later mentions are marked ``seen``.
    """
    nodes = {n["id"]: n for n in flow["nodes"]}
    children: dict[str, list[dict[str, str]]] = {}
    targets = set()
    for edge in flow["edges"]:
        children.setdefault(edge["source"], []).append(edge)
        targets.add(edge["target"])
    roots = [n for n in nodes if n not in targets]
    if flow.get("root_id") in roots:
        roots.remove(flow["root_id"])
        roots.insert(0, flow["root_id"])
    order: list[dict[str, Any]] = []
    shown: set[str] = set()

    def visit(node_id: str, depth: int, edge: str | None) -> None:
        node = nodes.get(node_id)
        if node is None:
            return
        seen = node_id in shown
        order.append({"node": node, "depth": depth, "edge": edge, "seen": seen})
        if seen or depth > 200:
            return
        shown.add(node_id)
        for child in children.get(node_id, ()):
            visit(child["target"], depth + 1, child["kind"])

    for root in roots:
        visit(root, 0, None)
    for node_id in nodes:  # cycles or detached parts
        if node_id not in shown:
            visit(node_id, 0, None)
    return order


def count(number: int | None, noun: str) -> str:
    """``1 task``, ``2 tasks``: a number with its noun, in the right number."""
    number = number or 0
    return f"{number:,} {noun}" if number == 1 else f"{number:,} {noun}s"


def waterfall_svg(
    rows: list[dict[str, Any]], critical: set[str], width: float = 1000.0, limit: int = 500
) -> dict[str, Any]:
    """Positions for a server-drawn waterfall: one bar row per task, time across."""
    shown = rows[:limit]
    if not shown:
        return {"rows": [], "height": 0, "hidden": 0, "ticks": []}
    start = min(r["start"] for r in shown)
    end = max(r["end"] for r in shown)
    span = max(end - start, 1e-6)
    row_height = 18
    placed = []
    for index, row in enumerate(shown):
        segments = [
            {
                **segment,
                "x": round((segment["start"] - start) / span * width, 2),
                "width": round(max((segment["end"] - segment["start"]) / span * width, 1.0), 2),
            }
            for segment in row["segments"]
        ]
        placed.append({**row, "y": index * row_height, "bars": segments,
                       "critical": row["id"] in critical})  # fmt: skip
    ticks = [{"x": round(width * i / 4, 2), "label": duration(span * i / 4)} for i in range(5)]
    return {
        "rows": placed,
        "height": len(placed) * row_height,
        "row_height": row_height,
        "hidden": len(rows) - len(shown),
        "ticks": ticks,
        "span": span,
    }
