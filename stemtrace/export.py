"""A flow as Graphviz DOT (always) and SVG (when the ``dot`` program is installed)."""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from typing import Any

import graphviz

from stemtrace import states

STATE_COLOURS = {
    states.SUCCESS: "#1f7a3d",
    states.FAILURE: "#b3261e",
    states.REVOKED: "#b3261e",
    states.REJECTED: "#b3261e",
    states.RETRY: "#9a5b00",
    states.STARTED: "#1a5fb4",
    states.RECEIVED: "#6b6f73",
    states.PENDING: "#6b6f73",
}
EDGE_STYLES = {
    "chain": {"style": "solid"},
    "spawned": {"style": "dashed"},
    "group": {"style": "solid", "color": "#9aa0a6"},
    "chord": {"style": "bold", "color": "#5b3cc4"},
}


class DotNotInstalled(RuntimeError):
    """SVG needs Graphviz's ``dot`` program (``apt-get install graphviz``)."""


def to_graph(flow: dict[str, Any], critical: AbstractSet[str] = frozenset()) -> graphviz.Digraph:
    """The flow as a Digraph; every label from task data is escaped (``graphviz.escape``)."""
    graph = graphviz.Digraph("flow", graph_attr={"rankdir": "TB", "fontname": "Helvetica"})
    graph.attr("node", fontname="Helvetica", fontsize="10", shape="box", style="rounded")
    for node in flow["nodes"]:
        state = node.get("state") or "UNKNOWN"
        if node["kind"] == "task":
            lines = [node.get("name") or node["id"], f"{state.lower()}"]
            if node.get("attempts", 0) > 1:
                lines.append(f"{node['attempts']} attempts")
        else:
            counts = ", ".join(f"{c} {s.lower()}" for s, c in (node.get("counts") or {}).items())
            lines = [f"{node['kind']} of {node.get('size')}", counts]
        attrs = {
            "label": _label(lines),
            "color": STATE_COLOURS.get(state, "#9aa0a6"),
            "tooltip": graphviz.escape(node["id"]),
        }
        if node.get("planned") or node.get("placeholder"):
            attrs["style"] = "rounded,dashed"
            attrs["fontcolor"] = "#9aa0a6"
        if node["kind"] != "task":
            attrs["shape"] = "folder" if node["kind"] == "group" else "component"
        if node["id"] in critical:
            attrs["penwidth"] = "3"
        graph.node(graphviz.escape(node["id"]), **attrs)
    for edge in flow["edges"]:
        graph.edge(
            graphviz.escape(edge["source"]),
            graphviz.escape(edge["target"]),
            label=edge["kind"],
            fontsize="8",
            **EDGE_STYLES.get(edge["kind"], {}),
        )
    return graph


def _label(lines: list[str]) -> Any:
    """Lines of untrusted text as one DOT label: backslashes escaped, never an HTML label."""
    return graphviz.nohtml("\\n".join(str(line).replace("\\", "\\\\") for line in lines))


def to_dot(flow: dict[str, Any], critical: AbstractSet[str] = frozenset()) -> str:
    return str(to_graph(flow, critical).source)


def to_svg(flow: dict[str, Any], critical: AbstractSet[str] = frozenset()) -> bytes:
    try:
        return bytes(to_graph(flow, critical).pipe(format="svg"))
    except graphviz.ExecutableNotFound:
        raise DotNotInstalled(
            "SVG export needs Graphviz's dot program: apt-get install graphviz"
            " (or brew install graphviz); DOT export works without it"
        ) from None
