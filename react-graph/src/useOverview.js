// Far out, node details are hidden by CSS (a class on the wrapper, no React
// render); on big flows the nodes give way to the canvas overview
// (overview.js), so that no zoom level puts thousands of DOM nodes on screen.

import { useCallback, useEffect, useRef, useState } from 'react';
import { drawOverview } from './overview.js';

const RENDER_ALL_UP_TO = 400;
const FAR_ZOOM = 0.45;
// Big flows below this zoom: nodes hidden, the canvas overview drawn instead.
const OVERVIEW_ZOOM = 0.35;

export function useOverview(wrap, graph, layout, current, look) {
  // As many as React Flow gets: a node per graph node and per block.
  const large = graph.nodes.size + layout.blocks.length > RENDER_ALL_UP_TO;
  const [overview, setOverview] = useState(false);
  const canvas = useRef(null);
  const viewportRef = useRef(null);
  const drawn = useRef({ graph, layout, current, look });
  drawn.current = {
    graph, layout, current, look,
  };
  const frame = useRef(0);

  const redraw = useCallback(() => {
    if (frame.current) return;
    frame.current = requestAnimationFrame(() => {
      frame.current = 0;
      const {
        graph: g, layout: l, current: c, look: k,
      } = drawn.current;
      if (canvas.current && viewportRef.current) drawOverview(canvas.current, viewportRef.current, g, l, c, k);
    });
  }, []);
  const onMove = useCallback((_, viewport) => {
    viewportRef.current = viewport;
    wrap.current?.classList.toggle('stg-far', viewport.zoom < FAR_ZOOM);
    const far = large && viewport.zoom < OVERVIEW_ZOOM;
    setOverview(far);
    if (far) redraw();
  }, [wrap, large, redraw]);
  useEffect(() => {
    if (overview) redraw();
  }, [overview, graph, layout, redraw]);

  /** Before moving to `zoom`: hides the nodes first if it ends in the overview (true then). */
  const hideNodesFor = useCallback((zoom) => {
    if (!large || zoom >= OVERVIEW_ZOOM) return false;
    setOverview(true);
    return true;
  }, [large]);

  return {
    large, overview, canvas, onMove, hideNodesFor,
  };
}
