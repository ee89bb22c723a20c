// Where an arrow key goes from a node: down and up follow links (child,
// parent) outside blocks; otherwise, and sideways, to the nearest node in
// that direction (on the same row for left and right). Pure, no DOM.

export function neighbour(graph, layout, id, key) {
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
}
