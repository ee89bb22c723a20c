"""DOT and SVG export, read back by the real ``dot``: every edge lands on the nodes it names.

``dot -Tjson`` gives the graph as Graphviz parsed it, so a node id that DOT split
into ``node:port``, or text that escaped its string into a statement, shows up as
a node, an edge end or an attribute the flow does not have.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from starlette.testclient import TestClient

from stemtrace.model import flows
from stemtrace.model.export import to_dot, to_svg
from stemtrace.server.app import create_app
from stemtrace.settings import Settings
from stemtrace.store.ingest import Ingestor
from stemtrace.store.schema import Store
from tests.factories import lifecycle, task

pytestmark = pytest.mark.skipif(shutil.which("dot") is None, reason="needs Graphviz's dot")

INJECTION = 'p:q:n -> evil; evil [label="PWNED" URL="javascript:alert(document.domain)"]; x'
# each id and the node name dot reads back: DOT keeps an escaped backslash as two
HOSTILE_IDS = {
    INJECTION: INJECTION,
    'raw-js-javascript:alert("J")': 'raw-js-javascript:alert("J")',
    "a:b:c": "a:b:c",
    "graph": "graph",
    "<b>bold</b>": "<b>bold</b>",
    "ends\\": "ends\\\\",
    "\\N \\G": "\\\\N \\\\G",
    'q\\"uote': 'q\\\\"uote',
    "line\nbreak": "line\\u000abreak",
    "nul\x00": "nul\\u0000",
}
# what dot adds to every node and edge when it lays the graph out
LAYOUT = {"_gvid", "name", "_draw_", "_ldraw_", "_hdraw_", "_tdraw_", "height", "width", "pos"}
NODE_ATTRS = {"label", "color", "tooltip", "style", "fontcolor", "shape", "penwidth"}
NODE_ATTRS |= {"fontname", "fontsize"}
SVG = "{http://www.w3.org/2000/svg}"
EDGE_ATTRS = {"tail", "head", "label", "fontsize", "style", "color", "lp"}


def run_dot(source: str, fmt: str) -> str:
    done = subprocess.run(
        ["dot", f"-T{fmt}"], input=source.encode(), capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0 and done.stderr == b"", done.stderr.decode()
    return done.stdout.decode()


def as_read(flow: dict[str, Any], names: dict[str, str] | None = None) -> dict[str, Any]:
    """Nodes and edges as dot read the flow's DOT, each node by the name dot gave it."""
    names = names or {}
    layout = json.loads(run_dot(to_dot(flow), "json"), strict=False)
    objects = layout.get("objects", [])
    for obj in objects:
        assert set(obj) <= LAYOUT | NODE_ATTRS, obj["name"]
    for edge in layout.get("edges", []):
        assert set(edge) <= LAYOUT | EDGE_ATTRS, edge
    return {
        "nodes": sorted(obj["name"] for obj in objects),
        "edges": sorted(
            (objects[e["tail"]]["name"], objects[e["head"]]["name"], e["label"])
            for e in layout.get("edges", [])
        ),
        "tooltips": {obj["name"]: obj["tooltip"] for obj in objects},
        "expected_nodes": sorted(names.get(n["id"], n["id"]) for n in flow["nodes"]),
        "expected_edges": sorted(
            (names.get(e["source"], e["source"]), names.get(e["target"], e["target"]), e["kind"])
            for e in flow["edges"]
        ),
    }


def every_edge_kind() -> dict[str, Any]:
    """a -> chord(b1, b2) -> c, c spawns k, k spawns a collapsed group of 60."""
    rows = [
        task("a", 0.0, 1.0, chain=[{"id": "g", "name": "celery.chord"}]),
        task("b1", 1.0, 2.0, group_id="g", chord_id="c", parent_id="a"),
        task("b2", 1.0, 3.0, group_id="g", chord_id="c", parent_id="a"),
        task("c", 3.1, 4.0, group_id="g", parent_id="b2", name="proj.sum"),
        task("k", 4.0, 5.0, parent_id="c"),
        *[task(f"m{i}", 5.0, 6.0, group_id="big", parent_id="k") for i in range(60)],
    ]
    return flows.build_flow(rows)


def test_every_edge_kind_lands_on_the_nodes_it_joins() -> None:
    flow = every_edge_kind()
    kinds = {edge["kind"] for edge in flow["edges"]}
    assert kinds == {"chain", "group", "chord", "spawned"}
    assert {"group:g", "group:big"} <= {node["id"] for node in flow["nodes"]}
    read = as_read(flow)
    assert read["nodes"] == read["expected_nodes"]
    assert read["edges"] == read["expected_edges"]


@pytest.mark.parametrize("hostile", list(HOSTILE_IDS))
def test_a_hostile_id_is_one_node_wherever_it_stands(hostile: str) -> None:
    """As a task id, a missing parent, a group id and a chord's group: never a port,
    never a statement of its own, never an attribute."""
    rows = [
        task(hostile, 0.0, 1.0, parent_id="root " + hostile),
        task("child", 1.0, 2.0, parent_id=hostile, group_id=hostile, chord_id="c"),
        task("other", 1.0, 2.0, parent_id=hostile, group_id=hostile, chord_id="c"),
        task("after", 2.1, 3.0, parent_id="other", group_id=hostile, name=hostile),
    ]
    flow = flows.build_flow(rows)
    name = HOSTILE_IDS[hostile]
    names = {hostile: name, "root " + hostile: "root " + name, f"group:{hostile}": f"group:{name}"}
    assert f"group:{hostile}" in {node["id"] for node in flow["nodes"]}
    read = as_read(flow, names)
    assert read["nodes"] == read["expected_nodes"]
    assert read["edges"] == read["expected_edges"]
    assert read["tooltips"][name] == name  # the tooltip holds the id, not a port of it


def svg_facts(svg: bytes) -> tuple[set[str], list[str]]:
    """The node titles of a Graphviz SVG, and every link target it carries."""
    root = ET.fromstring(svg)
    titles = {g.findtext(f"{SVG}title") for g in root.iter(f"{SVG}g") if g.get("class") == "node"}
    links = [v for e in root.iter() for k, v in e.attrib.items() if k.endswith("href")]
    return titles, links


def test_svg_of_injected_ids_has_no_link_and_no_stray_node() -> None:
    rows = [task("x", 0.0, 1.0, parent_id=INJECTION), task("y", 1.0, 2.0, parent_id="x")]
    titles, links = svg_facts(to_svg(flows.build_flow(rows)))
    assert titles == {INJECTION, "x", "y"}
    assert links == []


def test_svg_endpoint_draws_a_flow_whose_ids_hold_colons_and_quotes(tmp_path: Path) -> None:
    now = time.time()
    child = 'raw-js-javascript:alert("J")'
    events = [
        *lifecycle("root-1", "proj.a", now - 10, parent_id=INJECTION, root_id="root-1"),
        *lifecycle(child, "proj.b", now - 5, parent_id="root-1", root_id="root-1"),
    ]
    store = Store(tmp_path / "t.db")
    try:
        Ingestor(store.writer()).ingest(events)
    finally:
        store.close()
    app = create_app(Settings(db=str(tmp_path / "t.db"), consumer=False))
    with TestClient(app, raise_server_exceptions=False) as client:
        for task_id in ("root-1", child):
            url = f"/api/flows/{quote(task_id, safe='')}/graph"
            svg = client.get(url + ".svg")
            assert svg.status_code == 200, svg.text
            titles, links = svg_facts(svg.content)
            assert titles == {INJECTION, "root-1", child} and links == []
            dot = client.get(url + ".dot")
            assert dot.status_code == 200
            names = {o["name"] for o in json.loads(run_dot(dot.text, "json"))["objects"]}
            assert names == {INJECTION, "root-1", child}
