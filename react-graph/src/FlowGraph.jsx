// The island: React Flow over the flow JSON, a legend, a side panel, live
// updates. This module only composes; each concern is a hook of its own:
// the graph and its layout (useGraphModel), live updates (useLiveFlow), the
// overview of big flows (useOverview), the view and fitting (useViewport),
// what React Flow draws (useFlowElements), the opened node (useSelection)
// and the keyboard (useKeyboard).

import { useEffect, useRef, useState } from 'react';
import {
  Background, Panel, ReactFlow, ReactFlowProvider, useReactFlow,
} from '@xyflow/react';
import { nodeTypes } from './nodes.jsx';
import { SidePanel } from './Panel.jsx';
import { Legend } from './Legend.jsx';
import { ViewControls } from './ViewControls.jsx';
import { useGraphModel } from './useGraphModel.js';
import { useLiveFlow } from './useLiveFlow.js';
import { useOverview } from './useOverview.js';
import { FIT, MIN_ZOOM, useViewport } from './useViewport.js';
import { useFlowEdges, useFlowNodes } from './useFlowElements.js';
import { useSelection } from './useSelection.js';
import { useFocusNode, useKeyboard } from './useKeyboard.js';
import { LooksContext } from './looks.js';

const NO_EDGES = [];
const FIT_FIRST = { ...FIT, minZoom: 0.1 };
const NODE_HELP = 'Press Enter or Space to open its details, arrow keys to move to a linked or neighbouring node, Escape to close the details.';
const A11Y = {
  'node.a11yDescription.default': NODE_HELP,
  'node.a11yDescription.keyboardDisabled': NODE_HELP,
  'edge.a11yDescription.default': '',
};

/** `look`: how states look, from the table the page hands over (model.js `stateLooks`). */
export function FlowGraph({ look, ...props }) {
  return (
    <ReactFlowProvider>
      <LooksContext.Provider value={look}>
        <Graph look={look} {...props} />
      </LooksContext.Provider>
    </ReactFlowProvider>
  );
}

function Graph({
  initialFlow, config, onReady, look,
}) {
  const wrap = useRef(null);
  const rf = useReactFlow();
  const [flow, setFlow] = useState(initialFlow);
  const {
    graph, layout, expansions, expand, refetchMembers,
  } = useGraphModel(flow, config.membersUrlTemplate);

  // Tell the page (and tests) that the graph is drawn.
  useEffect(() => {
    onReady?.({ nodes: graph.nodes.size, edges: graph.edges.length, layout: layout.engine });
  }, [graph, layout, onReady]);

  const { live, problem } = useLiveFlow(config, flow, setFlow, refetchMembers);
  const {
    large, overview, canvas, onMove, hideNodesFor,
  } = useOverview(wrap, graph, layout, config.current, look);
  const view = useViewport({
    wrap, rf, flow, graph, layout, current: config.current, hideNodesFor,
  });
  const focusNode = useFocusNode(wrap, rf, layout, view.onViewMoved);
  const selection = useSelection(focusNode);
  const onKeyDown = useKeyboard(graph, layout, selection.select, focusNode);
  const nodes = useFlowNodes({
    graph, layout, expansions, selectedId: selection.selectedId, current: config.current, expand, hidden: overview, look,
  });
  const edges = useFlowEdges(graph, layout);
  const selected = selection.selectedId ? graph.nodes.get(selection.selectedId) : null;

  return (
    <div className="stg-root" ref={wrap} onKeyDown={onKeyDown}>
      {view.initialViewport && (
        <ReactFlow
          nodes={nodes}
          edges={overview ? NO_EDGES : edges}
          nodeTypes={nodeTypes}
          onNodeClick={selection.onNodeClick}
          onPaneClick={selection.onPaneClick}
          onMove={onMove}
          onMoveStart={view.onMoveStart}
          onInit={(instance) => onMove(null, instance.getViewport())}
          defaultViewport={view.initialViewport}
          fitView={view.fitFirst}
          fitViewOptions={FIT_FIRST}
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
          <ViewControls onZoom={view.onViewMoved} onFit={view.onFitClick} />
          <Panel position="top-left" className="stg-legend-panel">
            <Legend layout={layout} count={graph.nodes.size} live={live} problem={problem} overview={overview} />
          </Panel>
        </ReactFlow>
      )}
      {selected && (
        <SidePanel
          node={selected}
          graph={graph}
          expansion={expansions.get(selected.id)}
          config={config}
          onClose={selection.onClosePanel}
          onExpand={expand}
          onSelect={selection.onSelectFromPanel}
        />
      )}
    </div>
  );
}
