// The island: React Flow over the flow JSON, a legend, a side panel, live updates.

import {
  useCallback, useEffect, useLayoutEffect, useMemo, useRef, useState,
} from 'react';
import {
  Background, ControlButton, Controls, MarkerType, Panel, ReactFlow, ReactFlowProvider,
  getViewportForBounds, useReactFlow,
} from '@xyflow/react';
import {
  buildGraph, fillTemplate, isTerminalFlow, memberNode, stateInfo, structureKey,
} from './model.js';
import { DAGRE_MAX, layoutGraph } from './layout.js';
import { edgeClass, kindLabel, nodeTypes } from './nodes.jsx';
import { SidePanel } from './Panel.jsx';
import {
  listen, reconcile, subscribe, throttle,
} from './live.js';
import { drawOverview } from './overview.js';

const PAGE = 100;
const REFRESH_MS = 500;
const SETTLED_REFRESH_MS = 3000;
const RENDER_ALL_UP_TO = 400;
const FIT_UP_TO = 300;
const FAR_ZOOM = 0.45;
// Big flows below this zoom: nodes hidden, the canvas overview drawn instead.
const OVERVIEW_ZOOM = 0.35;
const MIN_ZOOM = 0.03;
const FIT = { padding: 0.12, maxZoom: 1.1 };
const NO_EDGES = [];
const NODE_HELP = 'Press Enter or Space to open its details, arrow keys to move to a linked or neighbouring node, Escape to close the details.';
const A11Y = {
  'node.a11yDescription.default': NODE_HELP,
  'node.a11yDescription.keyboardDisabled': NODE_HELP,
  'edge.a11yDescription.default': '',
};

const EDGE_COLOURS = {
  spawned: '#80868b', chain: '#3c4043', group: '#9aa0a6', chord: '#8430ce', other: '#9aa0a6',
};

function taskHandles(w, h) {
  return [
    { type: 'target', position: 'top', x: w / 2 - 3, y: -3, width: 6, height: 6 },
    { type: 'source', position: 'bottom', x: w / 2 - 3, y: h - 3, width: 6, height: 6 },
  ];
}

function ariaLabel(node) {
  const what = node.kind === 'task' ? 'task' : kindLabel(node);
  const name = node.name || (node.placeholder ? 'parent not captured' : node.id);
  return `${what} ${name}: ${stateInfo(node.state).word}`;
}

async function getJson(url) {
  const response = await fetch(url, {
    headers: { Accept: 'application/json' }, credentials: 'same-origin', cache: 'no-store',
  });
  if (!response.ok) throw new Error(`${response.status} ${response.statusText}`.trim());
  return response.json();
}

export function FlowGraph(props) {
  return (
    <ReactFlowProvider>
      <Graph {...props} />
    </ReactFlowProvider>
  );
}

function Graph({ initialFlow, config, onReady }) {
  const [flow, setFlow] = useState(initialFlow);
  const [expansions, setExpansions] = useState(() => new Map());
  const [selectedId, setSelectedId] = useState(null);
  const [live, setLive] = useState(config.liveSource || config.liveUrl ? 'connecting' : 'off');
  const [problem, setProblem] = useState(null);
  const [size, setSize] = useState(null);
  const [overview, setOverview] = useState(false);
  const wrap = useRef(null);
  const canvas = useRef(null);
  const viewportRef = useRef(null);
  const rf = useReactFlow();

  const graph = useMemo(() => buildGraph(flow, expansions), [flow, expansions]);
  const laidOut = useRef({ key: null, layout: null });
  const layout = useMemo(() => {
    const key = structureKey(graph);
    if (laidOut.current.key !== key) laidOut.current = { key, layout: layoutGraph(graph) };
    return laidOut.current.layout;
  }, [graph]);

  // Expanding a collapsed group: pages of its members from the members URL.
  const expansionsRef = useRef(expansions);
  expansionsRef.current = expansions;
  const graphRef = useRef(graph);
  graphRef.current = graph;
  const onExpand = useCallback(async (groupNodeId) => {
    const group = graphRef.current.nodes.get(groupNodeId);
    const before = expansionsRef.current.get(groupNodeId);
    if (!group || !config.membersUrlTemplate || before?.loading) return;
    const offset = before?.members.length ?? 0;
    const update = (change) => setExpansions((old) => {
      const next = new Map(old);
      const current = old.get(groupNodeId) || { members: [], size: group.size, loading: false };
      next.set(groupNodeId, { ...current, ...change(current) });
      return next;
    });
    update(() => ({ loading: true, error: null }));
    try {
      const url = new URL(fillTemplate(config.membersUrlTemplate, group.group_id), window.location.href);
      url.searchParams.set('offset', String(offset));
      url.searchParams.set('limit', String(PAGE));
      const page = await getJson(url);
      const rows = Array.isArray(page.members) ? page.members.map(memberNode) : [];
      update((current) => ({
        loading: false,
        size: Number(page.size) || current.size,
        members: [...current.members.slice(0, offset), ...rows],
      }));
    } catch (error) {
      update(() => ({ loading: false, error: `Could not load members: ${error.message}` }));
    }
  }, [config.membersUrlTemplate]);
  const expand = config.membersUrlTemplate ? onExpand : null;

  // React Flow nodes: rebuilt only for nodes whose data, place or highlight changed.
  const cache = useRef(new Map());
  const nodes = useMemo(() => {
    const out = [];
    const fresh = new Map();
    const keep = (id, deps, make) => {
      const old = cache.current.get(id);
      const same = old && old.deps.length === deps.length && old.deps.every((d, i) => d === deps[i]);
      const node = same ? old.node : make();
      fresh.set(id, same ? old : { deps, node });
      out.push(node);
    };
    for (const block of layout.blocks) {
      const group = graph.nodes.get(block.parent);
      const expansion = group?.collapsed && block.kind === 'group' ? expansions.get(block.parent) : null;
      keep(block.id, [block, expansion, group, overview], () => ({
        id: block.id,
        type: 'stBlock',
        position: { x: block.x, y: block.y },
        width: block.w,
        height: block.h,
        measured: { width: block.w, height: block.h },
        handles: taskHandles(block.w, block.h),
        data: { block, group: expansion ? group : null, expansion, onExpand: expand },
        draggable: false,
        selectable: false,
        focusable: false,
        zIndex: -1,
        hidden: overview,
      }));
    }
    for (const [id, node] of graph.nodes) {
      const place = layout.positions.get(id);
      const selected = id === selectedId;
      const current = id === config.current;
      const critical = graph.critical.has(id);
      const expansion = node.kind !== 'task' ? expansions.get(id) : undefined;
      keep(id, [node, place, selected, current, expansion, overview, critical], () => ({
        id,
        type: node.kind === 'task' ? 'stTask' : 'stGroup',
        position: { x: place.x, y: place.y },
        width: place.w,
        height: place.h,
        measured: { width: place.w, height: place.h },
        handles: taskHandles(place.w, place.h),
        data: { node, current, critical, expansion, onExpand: expand },
        selected,
        draggable: false,
        ariaLabel: ariaLabel(node),
        hidden: overview,
      }));
    }
    cache.current = fresh;
    return out;
  }, [graph, layout, selectedId, expansions, config.current, expand, overview]);

  const edges = useMemo(() => layout.edges.map((edge) => {
    const kind = edgeClass(edge.kind);
    const critical = graph.criticalEdges.has(`${edge.source}\u0000${edge.target}`);
    return {
      id: edge.id,
      source: edge.source,
      target: edge.target,
      className: `stg-edge kind-${kind}${critical ? ' stg-critical-edge' : ''}`,
      markerEnd: {
        type: MarkerType.ArrowClosed,
        color: EDGE_COLOURS[kind],
        width: kind === 'chord' ? 14 : 18,
        height: kind === 'chord' ? 14 : 18,
      },
      focusable: false,
      selectable: false,
    };
  }), [layout, graph]);

  // The first view: everything for small flows, else the current task (or root) at a readable zoom.
  useLayoutEffect(() => {
    const box = wrap.current.getBoundingClientRect();
    setSize({ width: box.width, height: box.height });
  }, []);
  const initialViewport = useMemo(() => {
    if (!size) return null;
    const current = layout.positions.get(config.current);
    const focus = current || layout.positions.get(flow?.root_id) || layout.positions.values().next().value;
    if (!focus) return { x: 0, y: 0, zoom: 1 };
    const zoom = 0.9;
    return {
      x: size.width / 2 - (focus.x + focus.w / 2) * zoom,
      // The current task in the middle; else the root near the top, its descendants below.
      y: current ? size.height / 2 - (focus.y + focus.h / 2) * zoom : 56 - focus.y * zoom,
      zoom,
    };
    // Only ever for the first layout: later changes keep the user's viewport.
  }, [size]);
  const fitFirst = useRef(graph.nodes.size <= FIT_UP_TO).current;
  // Once the user pans or zooms, the view is theirs: new nodes no longer move it.
  const userMoved = useRef(false);
  const onMoveStart = useCallback((event) => {
    if (event) userMoved.current = true;  // null: a move made by code, not by the user
  }, []);
  const onUserZoom = useCallback(() => {
    userMoved.current = true;
  }, []);
  const large = nodes.length > RENDER_ALL_UP_TO;

  // Tell the page (and tests) that the graph is drawn.
  useEffect(() => {
    onReady?.({ nodes: graph.nodes.size, edges: graph.edges.length, layout: layout.engine });
  }, [graph, layout, onReady]);

  // Live: re-fetch the flow on every change notice, throttled.
  const flowRef = useRef(flow);
  flowRef.current = flow;
  useEffect(() => {
    if (!config.flowUrl || !(config.liveSource || config.liveUrl)) return undefined;
    let cost = 0;
    const refresh = throttle(async () => {
      const started = performance.now();
      try {
        const next = await getJson(config.flowUrl);
        setFlow((previous) => reconcile(previous, next));
        setProblem(null);
        await refreshMembers(next);
      } catch (error) {
        setProblem(`Could not refresh the flow: ${error.message}`);
        throw error;
      } finally {
        cost = performance.now() - started;
      }
    }, () => Math.max(
      isTerminalFlow(flowRef.current) ? SETTLED_REFRESH_MS : REFRESH_MS,
      3 * cost,
    ));
    // Loaded members of a group whose counts moved are fetched again too.
    const refreshMembers = async (next) => {
      const before = new Map((flowRef.current?.nodes || []).map((n) => [n.id, n]));
      for (const node of next.nodes || []) {
        const expansion = expansionsRef.current.get(node.id);
        if (!node.collapsed || !expansion?.members.length) continue;
        if (JSON.stringify(before.get(node.id)?.counts) === JSON.stringify(node.counts)) continue;
        const rows = [];
        for (let offset = 0; offset < expansion.members.length; offset += 1000) {
          const url = new URL(fillTemplate(config.membersUrlTemplate, node.group_id), window.location.href);
          url.searchParams.set('offset', String(offset));
          url.searchParams.set('limit', String(Math.min(1000, expansion.members.length - offset)));
          const page = await getJson(url);
          rows.push(...(page.members || []).map(memberNode));
        }
        setExpansions((old) => {
          const current = old.get(node.id);
          if (!current) return old;
          const known = new Map(current.members.map((m) => [m.id, m]));
          const members = rows.map((m) => {
            const was = known.get(m.id);
            return was && JSON.stringify(was) === JSON.stringify(m) ? was : m;
          });
          return new Map(old).set(node.id, { ...current, members, size: node.size });
        });
      }
    };
    const unsubscribe = config.liveSource
      ? listen(config.liveSource, () => refresh.request(), setLive)
      : subscribe(config.liveUrl, () => refresh.request(), setLive);
    return () => {
      unsubscribe();
      refresh.stop();
    };
  }, [config.flowUrl, config.liveSource, config.liveUrl, config.membersUrlTemplate]);

  // Keyboard: Enter/Space opens a node, arrows move between nodes, Escape closes.
  const focusNode = useCallback((id) => {
    const place = layout.positions.get(id);
    if (!place) return;
    const { x, y, zoom } = rf.getViewport();
    const box = wrap.current.getBoundingClientRect();
    const left = -x / zoom;
    const top = -y / zoom;
    const inside = place.x >= left && place.y >= top
      && place.x + place.w <= left + box.width / zoom && place.y + place.h <= top + box.height / zoom;
    if (!inside) {
      userMoved.current = true;  // the user is finding their way: keep the view where it goes
      rf.setCenter(place.x + place.w / 2, place.y + place.h / 2, { zoom: Math.max(zoom, 0.6) });
    }
    let tries = 0;
    const attempt = () => {
      const element = wrap.current?.querySelector(`.react-flow__node[data-id="${CSS.escape(id)}"]`);
      if (element) element.focus({ preventScroll: true });
      else if (tries++ < 20) requestAnimationFrame(attempt);
    };
    requestAnimationFrame(attempt);
  }, [layout, rf]);

  const neighbour = useCallback((id, key) => {
    const here = layout.positions.get(id);
    if (!here) return null;
    const inBlock = layout.blockOf.has(id);
    const down = key === 'ArrowDown';
    if (!inBlock && (key === 'ArrowDown' || key === 'ArrowUp')) {
      const linked = (down ? graph.children : graph.parents).get(id) || [];
      const ids = linked.map((e) => (down ? e.target : e.source));
      ids.sort((a, b) => (layout.positions.get(a)?.x ?? 0) - (layout.positions.get(b)?.x ?? 0));
      if (ids.length) return ids[0];
    }
    let best = null;
    let bestScore = Infinity;
    for (const [other, place] of layout.positions) {
      if (other === id || !graph.nodes.has(other)) continue;
      const dx = place.x - here.x;
      const dy = place.y - here.y;
      let score;
      if (key === 'ArrowLeft' || key === 'ArrowRight') {
        if (Math.abs(dy) > 1 || (key === 'ArrowLeft' ? dx >= 0 : dx <= 0)) continue;
        score = Math.abs(dx);
      } else {
        if (down ? dy <= 1 : dy >= -1) continue;
        score = Math.abs(dy) * 1e6 + Math.abs(dx);
      }
      if (score < bestScore) {
        bestScore = score;
        best = other;
      }
    }
    return best;
  }, [graph, layout]);

  const onKeyDown = useCallback((event) => {
    const element = event.target.closest?.('.react-flow__node');
    if (event.key === 'Escape') {
      setSelectedId(null);
      return;
    }
    if (!element || element !== event.target) return;
    const id = element.getAttribute('data-id');
    if (!graph.nodes.has(id)) return;
    if (event.key === 'Enter' || event.key === ' ') {
      event.preventDefault();
      setSelectedId(id);
    } else if (event.key.startsWith('Arrow')) {
      const target = neighbour(id, event.key);
      event.preventDefault();
      if (target) focusNode(target);
    }
  }, [graph, neighbour, focusNode]);

  const onNodeClick = useCallback((_, node) => {
    if (node.type !== 'stBlock') setSelectedId(node.id);
  }, []);

  const onSelectFromPanel = useCallback((id) => {
    setSelectedId(id);
    focusNode(id);
  }, [focusNode]);

  // Far out, node details are hidden by CSS (a class on the wrapper, no React
  // render); on big flows the nodes give way to the canvas overview.
  const drawn = useRef({ graph, layout, current: config.current });
  drawn.current = { graph, layout, current: config.current };
  const frame = useRef(0);
  const redraw = useCallback(() => {
    if (frame.current) return;
    frame.current = requestAnimationFrame(() => {
      frame.current = 0;
      const { graph: g, layout: l, current } = drawn.current;
      if (canvas.current && viewportRef.current) drawOverview(canvas.current, viewportRef.current, g, l, current);
    });
  }, []);
  const onMove = useCallback((_, viewport) => {
    viewportRef.current = viewport;
    wrap.current?.classList.toggle('stg-far', viewport.zoom < FAR_ZOOM);
    const far = large && viewport.zoom < OVERVIEW_ZOOM;
    setOverview(far);
    if (far) redraw();
  }, [large, redraw]);
  useEffect(() => {
    if (overview) redraw();
  }, [overview, graph, layout, redraw]);

  // Fit view: on a big flow that ends in the overview, hide the nodes first, so
  // that React Flow never renders thousands of them for one frame.
  const fitAll = useCallback(() => {
    let x0 = Infinity;
    let y0 = Infinity;
    let x1 = -Infinity;
    let y1 = -Infinity;
    for (const p of layout.positions.values()) {
      x0 = Math.min(x0, p.x);
      y0 = Math.min(y0, p.y);
      x1 = Math.max(x1, p.x + p.w);
      y1 = Math.max(y1, p.y + p.h);
    }
    if (x0 === Infinity) return;
    const box = wrap.current.getBoundingClientRect();
    const target = getViewportForBounds(
      { x: x0, y: y0, width: x1 - x0, height: y1 - y0 }, box.width, box.height, MIN_ZOOM, FIT.maxZoom, FIT.padding,
    );
    if (large && target.zoom < OVERVIEW_ZOOM) {
      setOverview(true);
      requestAnimationFrame(() => rf.setViewport(target));
    } else {
      rf.setViewport(target);
    }
  }, [layout, large, rf]);
  const onFitClick = useCallback(() => {
    userMoved.current = false;  // asked for everything: later nodes are fitted in too
    fitAll();
  }, [fitAll]);

  // Live: a flow that gains nodes is fitted into view again, as it was at first,
  // unless the user has moved the view. (Members the user loads do not count.)
  const flowShape = `${flow?.nodes?.length ?? 0}\u0000${flow?.edges?.length ?? 0}`;
  const fittedShape = useRef(flowShape);
  useEffect(() => {
    if (fittedShape.current === flowShape) return;
    fittedShape.current = flowShape;
    if (fitFirst && !userMoved.current && graph.nodes.size <= FIT_UP_TO) fitAll();
  }, [flowShape, fitFirst, graph, fitAll]);

  const selected = selectedId ? graph.nodes.get(selectedId) : null;
  const kinds = useMemo(() => new Set(layout.edges.map((e) => edgeClass(e.kind))), [layout]);

  return (
    <div className="stg-root" ref={wrap} onKeyDown={onKeyDown}>
      {initialViewport && (
        <ReactFlow
          nodes={nodes}
          edges={overview ? NO_EDGES : edges}
          nodeTypes={nodeTypes}
          onNodeClick={onNodeClick}
          onPaneClick={() => setSelectedId(null)}
          onMove={onMove}
          onMoveStart={onMoveStart}
          onInit={(instance) => onMove(null, instance.getViewport())}
          defaultViewport={initialViewport}
          fitView={fitFirst}
          fitViewOptions={{ ...FIT, minZoom: 0.1 }}
          minZoom={MIN_ZOOM}
          maxZoom={2}
          onlyRenderVisibleElements={large}
          nodesDraggable={false}
          nodesConnectable={false}
          elementsSelectable={false}
          edgesFocusable={false}
          deleteKeyCode={null}
          selectionKeyCode={null}
          multiSelectionKeyCode={null}
          panActivationKeyCode={null}
          zoomOnDoubleClick={false}
          ariaLabelConfig={A11Y}
        >
          <Background gap={24} size={1} />
          {large && <canvas ref={canvas} className={overview ? 'stg-overview' : 'stg-overview stg-off'} aria-hidden="true" />}
          <Controls showInteractive={false} showFitView={false} onZoomIn={onUserZoom} onZoomOut={onUserZoom}>
            <ControlButton className="react-flow__controls-fitview" onClick={onFitClick} title="Fit view" aria-label="Fit view">
              <svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 30" aria-hidden="true">
                <path d={FIT_ICON} />
              </svg>
            </ControlButton>
          </Controls>
          <Panel position="top-left" className="stg-legend-panel">
            <Legend kinds={kinds} live={live} problem={problem} engine={layout.engine} count={graph.nodes.size} overview={overview} />
          </Panel>
        </ReactFlow>
      )}
      {selected && (
        <SidePanel
          node={selected}
          graph={graph}
          expansion={expansions.get(selected.id)}
          config={config}
          onClose={() => {
            const id = selectedId;
            setSelectedId(null);
            focusNode(id);
          }}
          onExpand={expand}
          onSelect={onSelectFromPanel}
        />
      )}
    </div>
  );
}

const FIT_ICON = 'M3.692 4.63c0-.53.4-.938.939-.938h5.215V0H4.708C2.13 0 0 2.054 0 4.63v5.216h3.692V4.631zM27.354 0h-5.2v3.692h5.17c.53 0 .984.4.984.939v5.215H32V4.631A4.624 4.624 0 0027.354 0zm.954 24.83c0 .532-.4.94-.939.94h-5.215v3.768h5.215c2.577 0 4.631-2.13 4.631-4.707v-5.139h-3.692v5.139zm-23.677.94c-.531 0-.939-.4-.939-.94v-5.138H0v5.139c0 2.577 2.13 4.707 4.708 4.707h5.138V25.77H4.631z';

const LIVE_WORDS = {
  live: '● live', connecting: '○ connecting…', reconnecting: '○ reconnecting…', closed: '○ not live', off: null,
};

function Legend({ kinds, live, problem, engine, count, overview }) {
  const order = ['chain', 'group', 'chord', 'spawned'];
  return (
    <details className="stg-legend" open>
      <summary>Legend</summary>
      <ul>
        {order.filter((k) => kinds.has(k) || k === 'chain' || k === 'spawned').map((kind) => (
          <li key={kind}>
            <svg width="36" height="10" aria-hidden="true" className={`stg-edge kind-${kind}`}>
              <path className="react-flow__edge-path" d="M2 5 H34" />
            </svg>
            {kind}
          </li>
        ))}
        <li><span className="stg-sample stg-ghost" aria-hidden="true" />not run / planned</li>
        <li><span className="stg-sample stg-current" aria-hidden="true" />this task</li>
        <li><span className="stg-sample stg-critical" aria-hidden="true" />critical path</li>
      </ul>
      {overview && <p className="stg-note">Zoomed out: an overview of every node. Zoom in to see and open them.</p>}
      {engine === 'layered' && (
        <p className="stg-note">{count.toLocaleString('en-US')} nodes: simple layered layout (more than {DAGRE_MAX} to place).</p>
      )}
      {LIVE_WORDS[live] && <p className={`stg-live stg-live-${live}`}>{LIVE_WORDS[live]}</p>}
      {problem && <p className="stg-error" role="status">{problem}</p>}
    </details>
  );
}
