// Where each node goes: dagre (top to bottom) for ordinary flows, a plain
// layered layout when there are too many nodes for dagre to finish quickly.
// Deterministic: the same graph always gets the same positions.
//
// Fan-outs of many like leaves (a task that spawned 10,000 children, the
// loaded members of a group) are packed into one "block": a grid drawn inside
// a frame, with one edge to the frame instead of one per member. That keeps
// both the layout and the number of drawn edges small.

import { Graph, layout as dagreLayout } from '@dagrejs/dagre';

export const TASK_W = 220;
export const TASK_H = 84;
export const GROUP_W = 270;
export const GROUP_H = 118;
export const BLOCK_MIN = 8;
export const DAGRE_MAX = 300;

const GRID_GAP_X = 16;
const GRID_GAP_Y = 14;
const BLOCK_PAD = 14;
const BLOCK_HEAD = 30;
const NODE_SEP = 36;
const RANK_SEP = 64;
const ROW_MAX = 200;

export function nodeSize(node) {
  return node.kind === 'task' ? { w: TASK_W, h: TASK_H } : { w: GROUP_W, h: GROUP_H };
}

export function edgeId(kind, source, target) {
  return JSON.stringify([kind, source, target]);
}

function findBlocks(graph) {
  const classes = new Map();
  for (const [id, node] of graph.nodes) {
    if (node.kind !== 'task') continue;
    const ins = graph.parents.get(id);
    const outs = graph.children.get(id);
    if (ins.length !== 1 || outs.length > 1) continue;
    const out = outs.length ? `\u0000${outs[0].kind}\u0000${outs[0].target}` : '';
    const key = `${ins[0].source}\u0000${ins[0].kind}${out}`;
    let found = classes.get(key);
    if (!found) {
      found = { parent: ins[0].source, kind: ins[0].kind, members: [] };
      classes.set(key, found);
    }
    found.members.push(id);
  }
  const blocks = [];
  for (const [key, found] of classes) {
    const { members } = found;
    if (members.length < BLOCK_MIN) continue;
    const id = JSON.stringify(['block', ...key.split('\u0000')]);
    const n = members.length;
    const cols = Math.min(n, Math.max(BLOCK_MIN, Math.ceil(Math.sqrt(n))));
    const rows = Math.ceil(n / cols);
    blocks.push({
      id,
      parent: found.parent,
      kind: found.kind,
      members,
      cols,
      w: cols * TASK_W + (cols - 1) * GRID_GAP_X + 2 * BLOCK_PAD,
      h: BLOCK_HEAD + rows * TASK_H + (rows - 1) * GRID_GAP_Y + 2 * BLOCK_PAD,
    });
  }
  return blocks;
}

/**
 * Positions (top-left corners) of every node, the blocks, and the edges to
 * draw (member edges replaced by one edge to or from their block).
 */
export function layoutGraph(graph) {
  const blocks = findBlocks(graph);
  const blockOf = new Map();
  for (const block of blocks) for (const id of block.members) blockOf.set(id, block.id);

  const sizes = new Map();
  const order = [];
  for (const [id, node] of graph.nodes) {
    if (blockOf.has(id)) continue;
    sizes.set(id, nodeSize(node));
    order.push(id);
  }
  for (const block of blocks) {
    sizes.set(block.id, { w: block.w, h: block.h });
    order.push(block.id);
  }
  const edges = [];
  const seen = new Set();
  for (const edge of graph.edges) {
    const source = blockOf.get(edge.source) ?? edge.source;
    const target = blockOf.get(edge.target) ?? edge.target;
    const id = edgeId(edge.kind, source, target);
    if (source === target || seen.has(id)) continue;
    seen.add(id);
    edges.push({ id, source, target, kind: edge.kind });
  }

  const centers = order.length <= DAGRE_MAX
    ? dagreCenters(order, sizes, edges)
    : layeredCenters(order, sizes, edges);

  const positions = new Map();
  for (const id of order) {
    const { w, h } = sizes.get(id);
    const c = centers.get(id);
    positions.set(id, { x: c.x - w / 2, y: c.y - h / 2, w, h });
  }
  for (const block of blocks) {
    const origin = positions.get(block.id);
    block.x = origin.x;
    block.y = origin.y;
    block.members.forEach((id, i) => {
      const col = i % block.cols;
      const row = Math.floor(i / block.cols);
      positions.set(id, {
        x: origin.x + BLOCK_PAD + col * (TASK_W + GRID_GAP_X),
        y: origin.y + BLOCK_PAD + BLOCK_HEAD + row * (TASK_H + GRID_GAP_Y),
        w: TASK_W,
        h: TASK_H,
      });
    });
  }
  return { positions, blocks, blockOf, edges, engine: order.length <= DAGRE_MAX ? 'dagre' : 'layered' };
}

function dagreCenters(order, sizes, edges) {
  const g = new Graph();
  g.setGraph({ rankdir: 'TB', nodesep: NODE_SEP, ranksep: RANK_SEP, marginx: 0, marginy: 0 });
  g.setDefaultEdgeLabel(() => ({}));
  for (const id of order) {
    const { w, h } = sizes.get(id);
    g.setNode(id, { width: w, height: h });
  }
  for (const edge of edges) g.setEdge(edge.source, edge.target);
  dagreLayout(g);
  const centers = new Map();
  for (const id of order) {
    const n = g.node(id);
    centers.set(id, { x: n.x, y: n.y });
  }
  return centers;
}

/** Ranks by longest path (cycles broken in input order), rows centred, long ranks wrapped. */
function layeredCenters(order, sizes, edges) {
  const index = new Map(order.map((id, i) => [id, i]));
  const outs = new Map(order.map((id) => [id, []]));
  const ins = new Map(order.map((id) => [id, []]));
  for (const edge of edges) {
    outs.get(edge.source).push(edge.target);
    ins.get(edge.target).push(edge.source);
  }
  const rank = new Map();
  const waiting = new Map(order.map((id) => [id, ins.get(id).length]));
  const ready = order.filter((id) => waiting.get(id) === 0);
  for (let head = 0; rank.size < order.length;) {
    if (head === ready.length) {
      // A cycle: start again from the first node not placed yet.
      const next = order.find((id) => !rank.has(id) && !ready.includes(id));
      ready.push(next);
    }
    const id = ready[head++];
    let r = 0;
    for (const p of ins.get(id)) if (rank.has(p)) r = Math.max(r, rank.get(p) + 1);
    rank.set(id, r);
    for (const c of outs.get(id)) {
      waiting.set(c, waiting.get(c) - 1);
      if (waiting.get(c) === 0 && !rank.has(c)) ready.push(c);
    }
  }
  const ranks = [];
  for (const id of order) (ranks[rank.get(id)] ||= []).push(id);
  const slot = new Map();
  const centers = new Map();
  let y = 0;
  for (const members of ranks) {
    if (!members) continue;
    const key = (id) => {
      const placed = ins.get(id).filter((p) => slot.has(p));
      if (!placed.length) return Number.MAX_SAFE_INTEGER;
      return placed.reduce((sum, p) => sum + slot.get(p), 0) / placed.length;
    };
    const keyed = members.map((id) => [key(id), index.get(id), id]);
    keyed.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    let counter = 0;
    for (let start = 0; start < keyed.length; start += ROW_MAX) {
      const row = keyed.slice(start, start + ROW_MAX).map((k) => k[2]);
      const widths = row.map((id) => sizes.get(id).w);
      const height = Math.max(...row.map((id) => sizes.get(id).h));
      let x = -(widths.reduce((a, b) => a + b, 0) + NODE_SEP * (row.length - 1)) / 2;
      row.forEach((id, i) => {
        centers.set(id, { x: x + widths[i] / 2, y: y + height / 2 });
        slot.set(id, counter++);
        x += widths[i] + NODE_SEP;
      });
      y += height + NODE_SEP;
    }
    y += RANK_SEP - NODE_SEP;
  }
  return centers;
}
