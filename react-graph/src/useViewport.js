// The view: the first one (everything for small flows, else the current task
// or the root at a readable zoom), the Fit view button, and fitting a live
// flow again as it gains nodes, until the user pans or zooms.

import {
  useCallback, useEffect, useLayoutEffect, useMemo, useRef, useState,
} from 'react';
import { getViewportForBounds } from '@xyflow/react';

const FIT_UP_TO = 300;
export const MIN_ZOOM = 0.03;
export const FIT = { padding: 0.12, maxZoom: 1.1 };

function bounds(positions) {
  let x0 = Infinity;
  let y0 = Infinity;
  let x1 = -Infinity;
  let y1 = -Infinity;
  for (const p of positions.values()) {
    x0 = Math.min(x0, p.x);
    y0 = Math.min(y0, p.y);
    x1 = Math.max(x1, p.x + p.w);
    y1 = Math.max(y1, p.y + p.h);
  }
  return x0 === Infinity ? null : { x: x0, y: y0, width: x1 - x0, height: y1 - y0 };
}

/** `hideNodesFor(zoom)`: see useOverview; a fit that ends in the overview hides the nodes first. */
export function useViewport({
  wrap, rf, flow, graph, layout, current, hideNodesFor,
}) {
  const [size, setSize] = useState(null);
  useLayoutEffect(() => {
    const box = wrap.current.getBoundingClientRect();
    setSize({ width: box.width, height: box.height });
  }, [wrap]);
  const initialViewport = useMemo(() => {
    if (!size) return null;
    const here = layout.positions.get(current);
    const focus = here || layout.positions.get(flow?.root_id) || layout.positions.values().next().value;
    if (!focus) return { x: 0, y: 0, zoom: 1 };
    const zoom = 0.9;
    return {
      x: size.width / 2 - (focus.x + focus.w / 2) * zoom,
      // The current task in the middle; else the root near the top, its descendants below.
      y: here ? size.height / 2 - (focus.y + focus.h / 2) * zoom : 56 - focus.y * zoom,
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
  const onViewMoved = useCallback(() => {
    userMoved.current = true;
  }, []);

  // On a big flow that ends in the overview, the nodes are hidden first, so
  // that React Flow never renders thousands of them for one frame.
  const fitAll = useCallback(() => {
    const box = bounds(layout.positions);
    if (!box) return;
    const { width, height } = wrap.current.getBoundingClientRect();
    const target = getViewportForBounds(box, width, height, MIN_ZOOM, FIT.maxZoom, FIT.padding);
    if (hideNodesFor(target.zoom)) requestAnimationFrame(() => rf.setViewport(target));
    else rf.setViewport(target);
  }, [wrap, layout, hideNodesFor, rf]);
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

  return {
    initialViewport, fitFirst, onMoveStart, onViewMoved, onFitClick,
  };
}
