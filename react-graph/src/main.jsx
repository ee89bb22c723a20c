// Entry point of the built bundle (stemtrace-graph.js, an IIFE loaded with
// `defer`): mounts the graph on #flow-graph. The page's contract is in
// react-graph/README.md. No inline scripts or styles are needed: the flow JSON
// and the states table are read from non-executable
// <script type="application/json"> elements and all CSS is in
// stemtrace-graph.css.

import '@xyflow/react/dist/style.css';
import './graph.css';
import { StrictMode } from 'react';
import { createRoot } from 'react-dom/client';
import { FlowGraph } from './FlowGraph.jsx';
import { stateLooks } from './model.js';

function readJson(id) {
  const source = document.getElementById(id);
  if (!source) return null;
  try {
    return JSON.parse(source.textContent);
  } catch {
    return null;
  }
}

async function loadFlow(url) {
  const response = await fetch(url, { headers: { Accept: 'application/json' }, credentials: 'same-origin' });
  if (!response.ok) throw new Error(`${response.status} ${response.statusText}`.trim());
  return response.json();
}

export async function mount(element) {
  if (!element || element.dataset.graphState) return;
  element.dataset.graphState = 'loading';
  const config = {
    flowUrl: element.dataset.flowUrl || null,
    taskUrlTemplate: element.dataset.taskUrlTemplate || null,
    membersUrlTemplate: element.dataset.membersUrlTemplate || null,
    taskApiUrlTemplate: element.dataset.taskApiUrlTemplate || null,
    liveUrl: element.dataset.liveUrl || null,
    // The page's own stream, when it has one (see live.js `listen`).
    liveSource: (element.dataset.liveSource && document.getElementById(element.dataset.liveSource)) || null,
    current: element.dataset.current || null,
  };
  let flow = readJson(element.dataset.flowData || 'flow-data');
  if (!flow && config.flowUrl) {
    try {
      flow = await loadFlow(config.flowUrl);
    } catch (error) {
      element.dataset.graphState = 'error';
      element.textContent = `The flow graph could not be loaded: ${error.message}`;
      return;
    }
  }
  if (!flow || !Array.isArray(flow.nodes)) {
    element.dataset.graphState = 'error';
    element.textContent = 'The flow graph has no data.';
    return;
  }
  // How states look: stemtrace.core.states LOOKS, as the page carries it.
  const look = stateLooks(readJson('state-looks'));
  element.classList.add('stg-mounted');
  const onReady = ({ nodes, edges, layout }) => {
    element.dataset.graphState = 'ready';
    element.dataset.graphNodes = String(nodes);
    element.dataset.graphEdges = String(edges);
    element.dataset.graphLayout = layout;
  };
  createRoot(element).render(
    <StrictMode>
      <FlowGraph initialFlow={flow} config={config} onReady={onReady} look={look} />
    </StrictMode>,
  );
}

function start() {
  mount(document.getElementById('flow-graph'));
}

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
else start();
