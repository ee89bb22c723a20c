// Far out on a big flow, thousands of nodes would be on screen at once: too
// many DOM elements to stay responsive. There the island hides React Flow's
// nodes and draws this overview instead: one canvas, a rectangle per node (by
// state colour, ghosts faded) and a line per edge, redrawn on every pan/zoom.

const FILL = {
  success: '#1f7a3d', failure: '#b3261e', revoked: '#b3261e', retry: '#d08a00',
  started: '#1a5fb4', waiting: '#8d9196', ghost: '#c4c7c5', unknown: '#c4c7c5',
};
const STROKE = {
  spawned: '#9aa0a6', chain: '#3c4043', group: '#bdc1c6', chord: '#8430ce', other: '#bdc1c6',
};

/** `look`: how states look (model.js `stateLooks`); a node's fill is its state's class. */
export function drawOverview(canvas, viewport, graph, layout, currentId, look) {
  const dpr = window.devicePixelRatio || 1;
  const box = canvas.getBoundingClientRect();
  const width = Math.round(box.width * dpr);
  const height = Math.round(box.height * dpr);
  if (canvas.width !== width || canvas.height !== height) {
    canvas.width = width;
    canvas.height = height;
  }
  const ctx = canvas.getContext('2d');
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const { x, y, zoom } = viewport;
  ctx.setTransform(dpr * zoom, 0, 0, dpr * zoom, dpr * x, dpr * y);
  const left = -x / zoom;
  const top = -y / zoom;
  const right = left + box.width / zoom;
  const bottom = top + box.height / zoom;
  const visible = (x0, y0, x1, y1) => x1 >= left && x0 <= right && y1 >= top && y0 <= bottom;
  const onePixel = 1 / zoom;

  ctx.lineWidth = onePixel;
  ctx.setLineDash([4 * onePixel, 3 * onePixel]);
  ctx.strokeStyle = '#b0b4b8';
  for (const block of layout.blocks) {
    if (visible(block.x, block.y, block.x + block.w, block.y + block.h)) {
      ctx.strokeRect(block.x, block.y, block.w, block.h);
    }
  }
  ctx.setLineDash([]);

  const byKind = new Map();
  for (const edge of layout.edges) {
    const s = layout.positions.get(edge.source);
    const t = layout.positions.get(edge.target);
    if (!s || !t) continue;
    const sx = s.x + s.w / 2;
    const sy = s.y + s.h;
    const tx = t.x + t.w / 2;
    const ty = t.y;
    if (!visible(Math.min(sx, tx), Math.min(sy, ty), Math.max(sx, tx), Math.max(sy, ty))) continue;
    const kind = STROKE[edge.kind] ? edge.kind : 'other';
    if (!byKind.has(kind)) byKind.set(kind, []);
    byKind.get(kind).push(sx, sy, tx, ty);
  }
  for (const [kind, points] of byKind) {
    ctx.strokeStyle = STROKE[kind];
    ctx.lineWidth = (kind === 'chord' ? 3 : 1.5) * Math.max(onePixel, 1);
    ctx.beginPath();
    for (let i = 0; i < points.length; i += 4) {
      ctx.moveTo(points[i], points[i + 1]);
      ctx.lineTo(points[i + 2], points[i + 3]);
    }
    ctx.stroke();
  }

  const byFill = new Map();
  for (const [id, node] of graph.nodes) {
    const p = layout.positions.get(id);
    if (!p || !visible(p.x, p.y, p.x + p.w, p.y + p.h)) continue;
    const { cls } = look(node.state);
    const key = `${cls}${cls === 'ghost' ? ':ghost' : ''}`;
    if (!byFill.has(key)) byFill.set(key, []);
    byFill.get(key).push(p);
  }
  for (const [key, places] of byFill) {
    const [cls, ghost] = key.split(':');
    ctx.globalAlpha = ghost ? 0.45 : 1;
    ctx.fillStyle = FILL[cls] || FILL.unknown;
    for (const p of places) ctx.fillRect(p.x, p.y, p.w, p.h);
  }
  ctx.globalAlpha = 1;

  const current = currentId ? layout.positions.get(currentId) : null;
  if (current) {
    const pad = Math.max(6 * onePixel, 4);
    ctx.strokeStyle = '#f4b400';
    ctx.lineWidth = 4 * onePixel;
    ctx.strokeRect(current.x - pad, current.y - pad, current.w + 2 * pad, current.h + 2 * pad);
  }
}
