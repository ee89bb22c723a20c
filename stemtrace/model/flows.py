"""Flow reconstruction: the graph of one workflow from its task rows. Pure functions.

Nodes are tasks plus synthetic ``group`` and ``chord`` nodes; edges are

* ``spawned`` - a task sent another from inside its body;
* ``chain`` - one chain link to the next (from the links each task was sent with);
* ``group`` - a group (or chord header) to each member;
* ``chord`` - each chord header member to the callback (from a collapsed
  group: the group to the callback).

A task retried under one id is one node with an attempt count. Chain links
and chord callbacks that were planned but never sent are nodes too: ``NOT_RUN``
when an earlier link broke (failed, revoked, rejected), else ``PLANNED``. A
parent that was never captured becomes a ``placeholder`` node.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from stemtrace.core import states
from stemtrace.model import timeline

COLLAPSE_OVER = 200
"""Groups with more members than this come as one node with counts."""


def group_node_id(group_id: str) -> str:
    return f"group:{group_id}"


def build_flow(
    rows: list[dict[str, Any]],
    *,
    collapse_over: int = COLLAPSE_OVER,
    expand: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """``{"root_id", "nodes", "edges"}`` for the flow made of ``rows``.

    Groups in ``expand`` are never collapsed. The phases run in this order, each
    adding to one graph: the order of nodes and edges is the order they are found.
    """
    tasks = {row["id"]: row for row in rows}
    groups = _Groups.of(rows, collapse_over, expand)
    graph = _Graph()
    _add_group_nodes(graph, groups)
    _add_task_nodes(graph, rows, groups)
    chain_next = _add_chain_links(graph, rows, tasks, groups)
    header_chain_heads = _hang_header_chains(graph, rows, groups)
    _add_planned_callbacks(graph, groups)
    _add_parent_edges(graph, rows, tasks, groups, chain_next, header_chain_heads)
    return {
        "root_id": _root_id(rows, graph.nodes, graph.edges),
        "nodes": list(graph.nodes.values()),
        "edges": list(graph.edges.values()),
    }


@dataclass
class _Graph:
    """The nodes and edges of a flow as :func:`build_flow` finds them."""

    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    edges: dict[tuple[str, str, str], dict[str, str]] = field(default_factory=dict)

    def edge(self, source: str, target: str, kind: str) -> None:
        if source != target:
            self.edges.setdefault(
                (source, target, kind), {"source": source, "target": target, "kind": kind}
            )


@dataclass(frozen=True)
class _Groups:
    """Which tasks are members of which group, and which groups come collapsed."""

    members: dict[str, list[dict[str, Any]]]
    callbacks: set[str]
    collapsed: set[str]
    member_of: dict[str, str]

    @classmethod
    def of(cls, rows: list[dict[str, Any]], collapse_over: int, expand: frozenset[str]) -> _Groups:
        members: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            if row.get("group_id"):
                members.setdefault(row["group_id"], []).append(row)
        # A task is in a group as a member only if it is not the chord callback
        # (Celery gives the callback the header's group id too).
        callbacks = {row["chord_id"] for row in rows if row.get("chord_id")}
        for group_id, group_rows in list(members.items()):
            members[group_id] = [r for r in group_rows if r["id"] not in callbacks]
            if not members[group_id]:
                del members[group_id]
        collapsed = {
            group_id
            for group_id, group_rows in members.items()
            if len(group_rows) > collapse_over and group_id not in expand
        }
        member_of = {
            row["id"]: group_id for group_id, group_rows in members.items() for row in group_rows
        }
        return cls(members, callbacks, collapsed, member_of)

    def node_of(self, task_id: str) -> str:
        """The node a task is drawn as: its group's when that is collapsed, else its own."""
        group_id = self.member_of.get(task_id)
        return group_node_id(group_id) if group_id in self.collapsed and group_id else task_id


def _add_group_nodes(graph: _Graph, groups: _Groups) -> None:
    """A node per group or chord header, and the chord edges from it or its members."""
    for group_id, group_rows in groups.members.items():
        chord_ids = {r["chord_id"] for r in group_rows if r.get("chord_id")}
        node_id = group_node_id(group_id)
        graph.nodes[node_id] = _group_node(group_id, group_rows, chord_ids, groups.collapsed)
        for callback_id in chord_ids:
            if group_id in groups.collapsed:
                graph.edge(node_id, callback_id, "chord")
            else:
                for row in group_rows:
                    graph.edge(row["id"], callback_id, "chord")


def _group_node(
    group_id: str, group_rows: list[dict[str, Any]], chord_ids: set[str], collapsed: set[str]
) -> dict[str, Any]:
    node_id = group_node_id(group_id)
    counts = Counter(r["state"] for r in group_rows)
    return {
        "id": node_id,
        "kind": "chord" if chord_ids else "group",
        "group_id": group_id,
        "name": _group_name(group_rows),
        "state": _group_state(counts, len(group_rows)),
        "size": len(group_rows),
        "counts": dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),  # most first
        "collapsed": group_id in collapsed,
        "callback_id": next(iter(chord_ids)) if chord_ids else None,
        "started_at": _min(r.get("started_at") for r in group_rows),
        "finished_at": _max(r.get("finished_at") for r in group_rows)
        if all(r["state"] in states.TERMINAL for r in group_rows)
        else None,
    }


def _add_task_nodes(graph: _Graph, rows: list[dict[str, Any]], groups: _Groups) -> None:
    """A node per task outside collapsed groups, with the edge from its group."""
    for row in rows:
        member = groups.member_of.get(row["id"])
        if member in groups.collapsed:
            continue
        graph.nodes[row["id"]] = _task_node(row)
        if member is not None:
            graph.edge(group_node_id(member), row["id"], "group")


def _add_chain_links(
    graph: _Graph,
    rows: list[dict[str, Any]],
    tasks: dict[str, dict[str, Any]],
    groups: _Groups,
) -> dict[str, str]:
    """Chain edges, and planned nodes for links never sent; each task's next link.

    Each task lists the links still to come after it. A link that is a group or
    chord ends the walk: its callback's own links go on.
    """
    nodes = graph.nodes
    chain_next: dict[str, str] = {}
    for row in rows:
        previous = row["id"]
        broken = row["state"] in states.BROKEN
        for link in row.get("chain") or []:
            link_id = link.get("id") if isinstance(link, dict) else None
            if not link_id:
                break
            chain_next.setdefault(previous, link_id)
            if link_id in groups.members:
                graph.edge(groups.node_of(previous), group_node_id(link_id), "chain")
                break
            if link_id not in tasks and link_id not in nodes:
                nodes[link_id] = _planned_node(link_id, link.get("name"), broken)
            elif nodes.get(link_id, {}).get("planned") and broken:
                nodes[link_id]["state"] = states.NOT_RUN
            graph.edge(groups.node_of(previous), link_id, "chain")
            previous = link_id
            broken = broken or (link_id in tasks and tasks[link_id]["state"] in states.BROKEN)
    return chain_next


def _hang_header_chains(
    graph: _Graph, rows: list[dict[str, Any]], groups: _Groups
) -> dict[str, str]:
    """Chains inside a group or chord header, by their first link: ``{task id: group id}``.

    The first link hangs off the group node, and the member at the chain's end
    is reached through the chain (its own edge from the group goes).
    """
    header_chain_heads: dict[str, str] = {}
    for row in rows:
        links = [str(link.get("id")) for link in row.get("chain") or [] if isinstance(link, dict)]
        header = groups.member_of.get(links[-1]) if links else None
        if header is None or row["id"] in groups.member_of or header in groups.collapsed:
            continue
        header_chain_heads[row["id"]] = header
        graph.edge(group_node_id(header), row["id"], "group")
        for link_id in links:
            graph.edges.pop((group_node_id(header), link_id, "group"), None)
    return header_chain_heads


def _add_planned_callbacks(graph: _Graph, groups: _Groups) -> None:
    """Planned nodes for chord callbacks that were never sent."""
    for group_rows in groups.members.values():
        for callback_id in {r["chord_id"] for r in group_rows if r.get("chord_id")}:
            if callback_id not in graph.nodes:
                name = next((r.get("chord_name") for r in group_rows if r.get("chord_name")), None)
                broken = any(r["state"] in states.BROKEN for r in group_rows)
                graph.nodes[callback_id] = _planned_node(callback_id, name, broken)


def _add_parent_edges(
    graph: _Graph,
    rows: list[dict[str, Any]],
    tasks: dict[str, dict[str, Any]],
    groups: _Groups,
    chain_next: dict[str, str],
    header_chain_heads: dict[str, str],
) -> None:
    """Spawned edges: children from their parents, and groups sent from a task.

    None where a chain or chord edge already says it; a parent never captured
    becomes a placeholder node.
    """
    member_of = groups.member_of
    for row in rows:
        parent_id = row.get("parent_id")
        if not parent_id or parent_id == row["id"]:
            continue
        in_group = member_of.get(row["id"])
        target = group_node_id(in_group) if in_group else row["id"]
        if row["id"] in groups.callbacks and member_of.get(parent_id):
            continue  # the chord edge already says it: its parent is the last member
        following = chain_next.get(parent_id)
        if following is not None and following in (row["id"], in_group):
            continue  # a chain link, drawn above
        if row["id"] in header_chain_heads:
            target = group_node_id(header_chain_heads[row["id"]])
            if chain_next.get(parent_id) == header_chain_heads[row["id"]]:
                continue
        source = groups.node_of(parent_id)
        if parent_id not in tasks and source not in graph.nodes:
            graph.nodes[parent_id] = _placeholder_node(parent_id)
        graph.edge(source, target, "spawned")


def group_members(
    rows: list[dict[str, Any]], group_id: str, offset: int, limit: int
) -> list[dict[str, Any]]:
    """One page of a (collapsed) group's member nodes, in group order."""
    callbacks = {row["chord_id"] for row in rows if row.get("chord_id")}
    found = [r for r in rows if r.get("group_id") == group_id and r["id"] not in callbacks]
    found.sort(
        key=lambda r: (r.get("group_index") is None, r.get("group_index") or 0, r["seen_at"])
    )
    return [_task_node(r) for r in found[offset : offset + limit]]


def _task_node(row: dict[str, Any]) -> dict[str, Any]:
    started = row.get("started_at")
    return {
        "id": row["id"],
        "kind": "task",
        "name": row.get("name"),
        "state": row["state"],
        "worker": row.get("worker"),
        "group_id": row.get("group_id"),
        "sent_at": row.get("sent_at"),
        "received_at": row.get("received_at"),
        "started_at": started,
        "finished_at": row.get("finished_at"),
        "runtime": row.get("runtime"),
        "attempts": (row.get("retries") or 0) + 1 if started is not None else 0,
        "exc_type": row.get("exc_type"),
        "lost": row.get("lost"),
    }


def _planned_node(task_id: str, name: Any, broken: bool) -> dict[str, Any]:
    return {
        "id": task_id,
        "kind": "task",
        "name": name if isinstance(name, str) else None,
        "state": states.NOT_RUN if broken else states.PLANNED,
        "planned": True,
        "attempts": 0,
    }


def _placeholder_node(task_id: str) -> dict[str, Any]:
    return {
        "id": task_id,
        "kind": "task",
        "name": None,
        "state": "UNKNOWN",
        "placeholder": True,
        "attempts": 0,
    }


def _group_name(rows: list[dict[str, Any]]) -> str:
    names = Counter(r.get("name") or "?" for r in rows)
    if len(names) == 1:
        return f"{next(iter(names))} x {len(rows)}"
    return ", ".join(f"{n} x {c}" for n, c in names.most_common(3))


def _group_state(counts: Counter[str], size: int) -> str:
    for state in (states.FAILURE, states.REVOKED, states.REJECTED):
        if counts.get(state):
            return state
    if counts.get(states.SUCCESS) == size:
        return states.SUCCESS
    if any(counts.get(s) for s in (states.STARTED, states.RETRY, states.SUCCESS)):
        return states.STARTED
    return states.PENDING if not counts.get(states.RECEIVED) else states.RECEIVED


def _root_id(
    rows: list[dict[str, Any]],
    nodes: dict[str, dict[str, Any]],
    edges: dict[tuple[str, str, str], Any],
) -> str | None:
    targets = {target for _, target, _ in edges}
    roots = [node_id for node_id in nodes if node_id not in targets]
    if not roots:
        return rows[0]["id"] if rows else None
    by_time = {r["id"]: r.get("seen_at") or 0.0 for r in rows}
    return min(roots, key=lambda n: (by_time.get(n, float("inf")), n))


def _min(values: Any) -> float | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None


def _max(values: Any) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def _span_of(node: dict[str, Any], now: float) -> tuple[float, float] | None:
    start = _first_known(node.get("sent_at"), node.get("received_at"), node.get("started_at"))
    if start is None:
        return None
    end = node.get("finished_at")
    if end is None:
        end = now if node.get("state") not in states.TERMINAL else start
    return float(start), float(max(end, start))


def critical_path(flow: dict[str, Any], now: float) -> dict[str, Any]:
    """The chain of tasks that set the flow's total duration, with the time it spans.

    Walks back from the task that finished last, each time to the predecessor
    that finished latest (the one it waited for: the slowest chord member, the
    previous chain link, the parent that spawned it). Group and chord nodes are
    fan-out points: the walk passes through them to their own predecessors.
    ``{"nodes": [ids from first to last], "edges": [...], "duration", "start", "end"}``.
    """
    nodes = {n["id"]: n for n in flow["nodes"]}
    spans = {
        node_id: span
        for node_id, node in nodes.items()
        if node["kind"] == "task" and (span := _span_of(node, now)) is not None
    }
    empty: dict[str, Any] = {"nodes": [], "edges": [], "duration": 0.0, "start": None, "end": None}
    if not spans:
        return empty
    preds: dict[str, list[dict[str, str]]] = {}
    for edge in flow["edges"]:
        preds.setdefault(edge["target"], []).append(edge)
    last = max(spans, key=lambda n: (spans[n][1], n))
    path: list[str] = [last]
    path_edges: list[dict[str, str]] = []
    current, seen = last, {last}
    while True:
        # Predecessor tasks, each with the drawn edges that lead from it to here
        # (through group and chord nodes, which are fan-out points).
        trails: dict[str, list[dict[str, str]]] = {}
        frontier = [(edge, [edge]) for edge in preds.get(current, ())]
        while frontier:
            edge, trail = frontier.pop()
            source = edge["source"]
            if source in seen:
                continue
            if nodes.get(source, {}).get("kind") in ("group", "chord"):
                seen.add(source)
                frontier.extend((further, [further, *trail]) for further in preds.get(source, ()))
            elif source in spans:
                trails.setdefault(source, trail)
        if not trails:
            break
        best = max(trails, key=lambda n: (spans[n][1], n))
        path.append(best)
        path_edges[:0] = [
            {"source": e["source"], "target": e["target"], "kind": e["kind"]} for e in trails[best]
        ]
        seen.add(best)
        current = best
    path.reverse()
    start = min(spans[n][0] for n in path)
    end = spans[last][1]
    return {
        "nodes": path,
        "edges": path_edges,
        "duration": round(end - start, 6),
        "start": start,
        "end": end,
    }


def waterfall(
    flow: dict[str, Any],
    now: float,
    histories: dict[str, list[dict[str, Any]]] | None = None,
) -> list[dict[str, Any]]:
    """Rows of a Gantt chart of the flow: per task, its queued, waiting, running spans.

    Each row's segments are the task's :func:`stemtrace.model.timeline.phases`: from
    its event history when ``histories`` holds it (a retried task's attempts
    and waits), else from the times of its row.
    """
    rows = []
    for node in flow["nodes"]:
        if node["kind"] != "task" or node.get("planned") or node.get("placeholder"):
            continue
        history = (histories or {}).get(node["id"]) or timeline.row_events(node)
        running = node["state"] not in states.TERMINAL
        segments = [
            {"phase": timeline.WATERFALL_PHASES[p["state"]], "start": p["start"],
             "end": p["start"] + p["duration"]}
            for p in timeline.phases(history, now=now if running else None)
            if p["state"] in timeline.WATERFALL_PHASES and p["duration"] is not None
        ]  # fmt: skip
        first = min(
            (s["start"] for s in segments),
            default=_first_known(node.get("sent_at"), node.get("started_at")),
        )
        if first is None:
            continue
        rows.append(
            {
                "id": node["id"],
                "name": node.get("name"),
                "state": node["state"],
                "start": first,
                "end": max((s["end"] for s in segments), default=first),
                "segments": segments,
            }
        )
    rows.sort(key=lambda r: (r["start"], r["id"]))
    return rows


def _first_known(*values: float | None) -> float | None:
    return next((v for v in values if v is not None), None)
