"""What an id that has not run (or is not a task) stands for in its flow. Pure functions.

Celery assigns ids ahead of time: every link of a chain, a chord's callback,
a group. ``chain(...).apply_async().id`` is the last link's, which never runs
when an earlier link fails. :func:`describe` says what such an id is, from
the flow it belongs to: which link of which chain, or which chord's callback,
and what it waits for or what stopped it.
"""

from __future__ import annotations

from typing import Any

from stemtrace.core import states

BROKE = {states.FAILURE: "failed", states.REVOKED: "was revoked", states.REJECTED: "was rejected"}
"""How each broken state reads after a task's name."""


def describe(flow: dict[str, Any], node_id: str) -> dict[str, Any] | None:
    """``{id, name, state, role, position, size, blocked_by, waiting_for, summary}``.

    ``node_id`` is a planned task node of ``flow`` or the id of one of its
    groups; ``None`` when it is neither. ``blocked_by`` is the task that broke
    the way to it, ``waiting_for`` the unfinished tasks it waits on.
    """
    nodes = {n["id"]: n for n in flow["nodes"]}
    node = nodes.get(node_id) or nodes.get(f"group:{node_id}")
    if node is None or not (node.get("planned") or node["kind"] in ("group", "chord")):
        return None
    into: dict[str, list[dict[str, str]]] = {}
    for edge in flow["edges"]:
        into.setdefault(edge["target"], []).append(edge)
    if node["kind"] != "task":
        return _group(node)
    kinds = {e["kind"] for e in into.get(node["id"], ())}
    role, position, size = "planned task", None, None
    if "chain" in kinds:
        role, position = "chain link", _chain_position(node["id"], into)
    elif "chord" in kinds:
        role = "chord callback"
        size = _chord_size(node["id"], into, nodes)
    blocked, waiting = _ahead(node["id"], into, nodes)
    found = {
        "id": node["id"],
        "name": node.get("name"),
        "state": node["state"],
        "role": role,
        "position": position,
        "size": size,
        "blocked_by": _brief(blocked) if blocked else None,
        "waiting_for": [_brief(n) for n in waiting],
    }
    found["summary"] = _summary(found)
    return found


def _group(node: dict[str, Any]) -> dict[str, Any]:
    counts = ", ".join(f"{c} {s.lower().replace('_', ' ')}" for s, c in node["counts"].items())
    kind = "chord header" if node["kind"] == "chord" else "group"
    return {
        "id": node["group_id"],
        "name": node.get("name"),
        "state": node["state"],
        "role": kind,
        "position": None,
        "size": node["size"],
        "blocked_by": None,
        "waiting_for": [],
        "summary": f"a {kind} of {_count(node['size'], 'task')}: {counts}",
    }


def _chain_position(node_id: str, into: dict[str, list[dict[str, str]]]) -> int:
    position, current, seen = 1, node_id, {node_id}
    while True:
        previous = next((e["source"] for e in into.get(current, ()) if e["kind"] == "chain"), None)
        if previous is None or previous in seen:
            return position
        position, current = position + 1, previous
        seen.add(previous)


def _chord_size(
    node_id: str, into: dict[str, list[dict[str, str]]], nodes: dict[str, dict[str, Any]]
) -> int:
    size = 0
    for edge in into.get(node_id, ()):
        if edge["kind"] == "chord":
            source = nodes.get(edge["source"], {})
            size += source.get("size", 1) if source.get("kind") in ("group", "chord") else 1
    return size


def _ahead(
    node_id: str, into: dict[str, list[dict[str, str]]], nodes: dict[str, dict[str, Any]]
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The nearest broken task before ``node_id``, and the unfinished ones it waits on.

    Walks back along chain and chord edges, through other planned nodes, to
    the tasks (or collapsed groups of them) that were sent.
    """
    waiting: list[dict[str, Any]] = []
    frontier, seen = [node_id], {node_id}
    while frontier:
        ahead: list[str] = []
        for current in frontier:
            for edge in into.get(current, ()):
                source = edge["source"]
                if edge["kind"] not in ("chain", "chord") or source in seen:
                    continue
                seen.add(source)
                before = nodes.get(source)
                if before is None:
                    continue
                if before["state"] in states.BROKEN:
                    return before, []
                if before.get("planned"):
                    ahead.append(source)
                elif before["state"] not in states.TERMINAL:
                    waiting.append(before)
        frontier = ahead
    return None, waiting


def _brief(node: dict[str, Any]) -> dict[str, Any]:
    task_id = node.get("group_id") if node["kind"] != "task" else node["id"]
    return {"id": task_id, "name": node.get("name"), "state": node["state"], "kind": node["kind"]}


def _summary(found: dict[str, Any]) -> str:
    if found["role"] == "chain link":
        what = f"link {found['position']} of a chain"
    elif found["role"] == "chord callback":
        what = f"callback of a chord of {_count(found['size'], 'task')}"
    else:
        what = "planned"
    blocked = found["blocked_by"]
    if blocked:
        verb = BROKE.get(blocked["state"], "broke")
        return f"{what}; not run because {_label(blocked)} {verb}"
    waiting = found["waiting_for"]
    if waiting:
        others = f" and {len(waiting) - 1} more" if len(waiting) > 1 else ""
        return f"{what}; planned, waiting for {_label(waiting[0])}{others}"
    return f"{what}; planned, not sent yet"


def _label(brief: dict[str, Any]) -> str:
    return str(brief["name"] or brief["id"])


def _count(number: int | None, noun: str) -> str:
    number = number or 0
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"
