"""A trace (everything one request set off) as its flows, and as one graph. Pure functions.

A trace holds several flows: the tasks a web request sent one by one, each
with whatever it set off. Flows are found as the flow page finds them
(:func:`stemtrace.model.flows.build_flow`), not by ``root_id``: the members of a
group or chord each carry their own root id, yet belong to one flow. The
trace's graph is the graph of all its flows under one ``trace`` node.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from stemtrace.core import states
from stemtrace.model import flows


def trace_node_id(trace_id: str) -> str:
    return f"trace:{trace_id}"


def trace_flows(trace_id: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"graph", "flows"}``: the trace as one graph, and its flows, failures first.

    ``graph`` is a flow graph (:func:`stemtrace.model.flows.build_flow`) of every
    task of the trace plus a ``trace`` node with an edge of kind ``trace`` to
    each flow's root. Each flow: ``root`` (the root node), ``id`` (the id its
    flow page opens: the root task's, or the root group's), ``tasks`` (its
    rows: failed first, then in the order they were seen), ``failures``,
    ``started_at``, ``finished_at`` (``None`` while one runs), ``wall_time``.
    """
    graph = _without_placeholders(flows.build_flow(rows))
    nodes = {n["id"]: n for n in graph["nodes"]}
    component = _components(list(nodes), graph["edges"])
    tasks_by_id = {row["id"]: row for row in rows}
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        node_id = row["id"]
        if node_id not in nodes:  # a member of a collapsed group: the group's node has it
            node_id = flows.group_node_id(row.get("group_id") or "")
        grouped.setdefault(component.get(node_id, node_id), []).append(row)
    targets = {e["target"] for e in graph["edges"]}
    found = []
    for key, members in grouped.items():
        roots = [n for n, c in component.items() if c == key and n not in targets]
        root_id = min(roots, key=lambda n: _seen(nodes[n], tasks_by_id)) if roots else key
        found.append(_summary(nodes.get(root_id) or _node_of(members[0]), members))
    found.sort(key=lambda f: (-f["failures"], f["started_at"], f["id"]))
    top = trace_node_id(trace_id)
    counts = Counter(row["state"] for row in rows)
    graph["nodes"].insert(
        0,
        {
            "id": top,
            "kind": "trace",
            "name": trace_id,
            "state": _trace_state(found),
            "size": len(rows),
            "counts": dict(counts),
            "collapsed": False,
        },
    )
    graph["edges"][:0] = [
        {"source": top, "target": f["root"]["id"], "kind": "trace"}
        for f in sorted(found, key=lambda f: (f["started_at"], f["id"]))
    ]
    graph["root_id"] = top
    return {"graph": graph, "flows": found}


def _without_placeholders(graph: dict[str, Any]) -> dict[str, Any]:
    """A parent outside the trace is not part of what the trace set off."""
    outside = {n["id"] for n in graph["nodes"] if n.get("placeholder")}
    graph["nodes"] = [n for n in graph["nodes"] if n["id"] not in outside]
    graph["edges"] = [e for e in graph["edges"] if e["source"] not in outside]
    return graph


def _components(node_ids: list[str], edges: list[dict[str, str]]) -> dict[str, str]:
    """Each node's connected component, named by one of its nodes (union-find)."""
    parent = {n: n for n in node_ids}

    def find(n: str) -> str:
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for edge in edges:
        if edge["source"] in parent and edge["target"] in parent:
            parent[find(edge["source"])] = find(edge["target"])
    return {n: find(n) for n in node_ids}


def _seen(node: dict[str, Any], rows: dict[str, dict[str, Any]]) -> tuple[float, str]:
    row = rows.get(node["id"], {})
    return (row.get("seen_at") or node.get("sent_at") or node.get("started_at") or 0.0, node["id"])


def _node_of(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "kind": "task", "name": row.get("name"), "state": row["state"]}


def _summary(root: dict[str, Any], members: list[dict[str, Any]]) -> dict[str, Any]:
    starts = [r.get("sent_at") or r["seen_at"] for r in members]
    ends = [r["finished_at"] for r in members if r.get("finished_at") is not None]
    done = len(ends) == len(members)
    failures = sum(r["state"] in states.BROKEN for r in members)
    members = sorted(members, key=lambda r: (r["state"] not in states.BROKEN, r["seen_at"]))
    return {
        "id": root.get("group_id") if root["kind"] != "task" else root["id"],
        "root": root,
        "tasks": members,
        "failures": failures,
        "started_at": min(starts),
        "finished_at": max(ends) if done else None,
        "wall_time": round(max(ends) - min(starts), 6) if done else None,
    }


def _trace_state(found: list[dict[str, Any]]) -> str:
    if any(f["failures"] for f in found):
        return states.FAILURE
    if all(f["finished_at"] is not None for f in found):
        return states.SUCCESS
    return states.STARTED
