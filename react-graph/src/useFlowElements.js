// What React Flow draws: a node per task, group and block of the layout, an
// edge per link. A node object is rebuilt only when what it shows changed
// (its data, place, highlight), so that React Flow re-renders only those.

import { useMemo, useRef } from 'react';
import { MarkerType } from '@xyflow/react';
import { edgeClass, kindLabel } from './nodes.jsx';

const EDGE_COLOURS = {
  spawned: '#80868b', chain: '#3c4043', group: '#9aa0a6', chord: '#8430ce', other: '#9aa0a6',
};

function taskHandles(w, h) {
  return [
    { type: 'target', position: 'top', x: w / 2 - 3, y: -3, width: 6, height: 6 },
    { type: 'source', position: 'bottom', x: w / 2 - 3, y: h - 3, width: 6, height: 6 },
  ];
}

function ariaLabel(node, look) {
  const what = node.kind === 'task' ? 'task' : kindLabel(node);
  const name = node.name || (node.placeholder ? 'parent not captured' : node.id);
  return `${what} ${name}: ${look(node.state).word}`;
}

export function useFlowNodes({
  graph, layout, expansions, selectedId, current, expand, hidden, look,
}) {
  const cache = useRef(new Map());
  return useMemo(() => {
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
      keep(block.id, [block, expansion, group, hidden], () => ({
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
        hidden,
      }));
    }
    for (const [id, node] of graph.nodes) {
      const place = layout.positions.get(id);
      const selected = id === selectedId;
      const isCurrent = id === current;
      const critical = graph.critical.has(id);
      const expansion = node.kind !== 'task' ? expansions.get(id) : undefined;
      keep(id, [node, place, selected, isCurrent, expansion, hidden, critical], () => ({
        id,
        type: node.kind === 'task' ? 'stTask' : 'stGroup',
        position: { x: place.x, y: place.y },
        width: place.w,
        height: place.h,
        measured: { width: place.w, height: place.h },
        handles: taskHandles(place.w, place.h),
        data: {
          node, current: isCurrent, critical, expansion, onExpand: expand,
        },
        selected,
        draggable: false,
        ariaLabel: ariaLabel(node, look),
        hidden,
      }));
    }
    cache.current = fresh;
    return out;
  }, [graph, layout, selectedId, expansions, current, expand, hidden, look]);
}

export function useFlowEdges(graph, layout) {
  return useMemo(() => layout.edges.map((edge) => {
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
}
