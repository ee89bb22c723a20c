// The legend panel: the edge kinds drawn, the node highlights, and notes on
// the view (overview, layered layout), the live stream and refresh errors.

import { useMemo } from 'react';
import { DAGRE_MAX } from './layout.js';
import { edgeClass } from './nodes.jsx';

const ORDER = ['chain', 'group', 'chord', 'spawned'];
const LIVE_WORDS = {
  live: '● live', connecting: '○ connecting…', reconnecting: '○ reconnecting…', closed: '○ not live', off: null,
};

export function Legend({
  layout, count, live, problem, overview,
}) {
  const kinds = useMemo(() => new Set(layout.edges.map((e) => edgeClass(e.kind))), [layout]);
  return (
    <details className="stg-legend" open>
      <summary>Legend</summary>
      <ul>
        {ORDER.filter((k) => kinds.has(k) || k === 'chain' || k === 'spawned').map((kind) => (
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
      {layout.engine === 'layered' && (
        <p className="stg-note">{count.toLocaleString('en-US')} nodes: simple layered layout (more than {DAGRE_MAX} to place).</p>
      )}
      {LIVE_WORDS[live] && <p className={`stg-live stg-live-${live}`}>{LIVE_WORDS[live]}</p>}
      {problem && <p className="stg-error" role="status">{problem}</p>}
    </details>
  );
}
