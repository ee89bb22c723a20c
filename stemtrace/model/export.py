"""A flow as Graphviz DOT (always) and SVG (when the ``dot`` program is installed).

The DOT text is written here rather than through ``graphviz.Digraph``: the library
reads an edge's ``a:b`` as node ``a``, port ``b`` (and ``a:b:c`` puts ``c`` into the
source unquoted), while a task or group id may hold colons and any other character.
Every id, label and attribute value goes out as one quoted DOT string.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from typing import Any

import graphviz

from stemtrace.core import states

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
GRAPH_ATTRS = {"rankdir": "TB", "fontname": "Helvetica"}
NODE_DEFAULTS = {"fontname": "Helvetica", "fontsize": "10", "shape": "box", "style": "rounded"}

# DOT has no escape for these: NUL ends dot's scan, a newline after a backslash joins lines.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class DotNotInstalled(RuntimeError):
    """SVG needs Graphviz's ``dot`` program (``apt-get install graphviz``)."""


def _escaped(text: str) -> str:
    r"""``text`` as the inside of a DOT string, one to one (distinct ids stay distinct).

    Backslashes are doubled, so an escString attribute (label, tooltip) shows them
    as typed and never expands ``\N`` or ``\G``; a control character becomes ``\uXXXX``.
    """
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    return _CONTROL.sub(lambda match: f"\\u{ord(match[0]):04x}", text)


def _quote(text: str) -> str:
    return f'"{_escaped(text)}"'


def _label(lines: Iterable[object]) -> str:
    """Lines of untrusted text as one quoted DOT label: never an HTML label."""
    return '"' + "\\n".join(_escaped(str(line)) for line in lines) + '"'


def _attrs(attrs: Mapping[str, str]) -> str:
    return "[" + " ".join(f"{name}={value}" for name, value in attrs.items()) + "]"


def _quoted(attrs: Mapping[str, str]) -> dict[str, str]:
    return {name: _quote(value) for name, value in attrs.items()}


def _node_attrs(node: dict[str, Any], critical: AbstractSet[str]) -> dict[str, str]:
    state = node.get("state") or "UNKNOWN"
    if node["kind"] == "task":
        lines = [node.get("name") or node["id"], state.lower()]
        if node.get("attempts", 0) > 1:
            lines.append(f"{node['attempts']} attempts")
        if node.get("lost"):
            lines.append("lost with its worker")
    else:
        counts = ", ".join(f"{c} {s.lower()}" for s, c in (node.get("counts") or {}).items())
        lines = [f"{node['kind']} of {node.get('size')}", counts]
    attrs = {"color": STATE_COLOURS.get(state, "#9aa0a6"), "tooltip": str(node["id"])}
    if node.get("planned") or node.get("placeholder"):
        attrs["style"] = "rounded,dashed"
        attrs["fontcolor"] = "#9aa0a6"
    if node["kind"] != "task":
        attrs["shape"] = "folder" if node["kind"] == "group" else "component"
    if node["id"] in critical:
        attrs["penwidth"] = "3"
    return {"label": _label(lines), **_quoted(attrs)}


def to_dot(flow: dict[str, Any], critical: AbstractSet[str] = frozenset()) -> str:
    out = [
        "digraph flow {",
        f"\tgraph {_attrs(_quoted(GRAPH_ATTRS))}",
        f"\tnode {_attrs(_quoted(NODE_DEFAULTS))}",
    ]
    for node in flow["nodes"]:
        out.append(f"\t{_quote(str(node['id']))} {_attrs(_node_attrs(node, critical))}")
    for edge in flow["edges"]:
        attrs = {"label": str(edge["kind"]), "fontsize": "8", **EDGE_STYLES.get(edge["kind"], {})}
        source, target = _quote(str(edge["source"])), _quote(str(edge["target"]))
        out.append(f"\t{source} -> {target} {_attrs(_quoted(attrs))}")
    out.append("}")
    return "\n".join(out) + "\n"


def to_svg(flow: dict[str, Any], critical: AbstractSet[str] = frozenset()) -> bytes:
    try:
        return bytes(graphviz.pipe("dot", "svg", to_dot(flow, critical).encode()))
    except graphviz.ExecutableNotFound:
        raise DotNotInstalled(
            "SVG export needs Graphviz's dot program: apt-get install graphviz"
            " (or brew install graphviz); DOT export works without it"
        ) from None
