// Keyboard: Enter/Space opens a node, arrows move between nodes, Escape closes.

import { useCallback } from 'react';
import { neighbour } from './navigation.js';

/**
 * Moves the keyboard focus to a node, first bringing it into view if it is
 * outside (`onViewMoved`: the view is the user's now). React Flow may render
 * the node a few frames later: the focus waits for it.
 */
export function useFocusNode(wrap, rf, layout, onViewMoved) {
  return useCallback((id) => {
    const place = layout.positions.get(id);
    if (!place) return;
    const { x, y, zoom } = rf.getViewport();
    const box = wrap.current.getBoundingClientRect();
    const left = -x / zoom;
    const top = -y / zoom;
    const inside = place.x >= left && place.y >= top
      && place.x + place.w <= left + box.width / zoom && place.y + place.h <= top + box.height / zoom;
    if (!inside) {
      onViewMoved();
      rf.setCenter(place.x + place.w / 2, place.y + place.h / 2, { zoom: Math.max(zoom, 0.6) });
    }
    let tries = 0;
    const attempt = () => {
      const element = wrap.current?.querySelector(`.react-flow__node[data-id="${CSS.escape(id)}"]`);
      if (element) element.focus({ preventScroll: true });
      else if (tries++ < 20) requestAnimationFrame(attempt);
    };
    requestAnimationFrame(attempt);
  }, [wrap, rf, layout, onViewMoved]);
}

/** The wrapper's keydown handler: `select(id | null)` opens or closes the side panel. */
export function useKeyboard(graph, layout, select, focusNode) {
  return useCallback((event) => {
    const element = event.target.closest?.('.react-flow__node');
    if (event.key === 'Escape') {
      select(null);
      return;
    }
    if (!element || element !== event.target) return;
    const id = element.getAttribute('data-id');
    if (!graph.nodes.has(id)) return;
    if (event.key === 'Enter' || event.key === ' ') {
      event.preventDefault();
      select(id);
    } else if (event.key.startsWith('Arrow')) {
      const target = neighbour(graph, layout, id, event.key);
      event.preventDefault();
      if (target) focusNode(target);
    }
  }, [graph, layout, select, focusNode]);
}
