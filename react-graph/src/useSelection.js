// The node whose details the side panel shows: opened by a click, the
// keyboard or a link in the panel; closing the panel returns the focus to it.

import { useCallback, useState } from 'react';

export function useSelection(focusNode) {
  const [selectedId, setSelectedId] = useState(null);
  const onNodeClick = useCallback((_, node) => {
    if (node.type !== 'stBlock') setSelectedId(node.id);
  }, []);
  const onPaneClick = useCallback(() => setSelectedId(null), []);
  const onSelectFromPanel = useCallback((id) => {
    setSelectedId(id);
    focusNode(id);
  }, [focusNode]);
  const onClosePanel = useCallback(() => {
    setSelectedId(null);
    focusNode(selectedId);
  }, [focusNode, selectedId]);
  return {
    selectedId, select: setSelectedId, onNodeClick, onPaneClick, onSelectFromPanel, onClosePanel,
  };
}
