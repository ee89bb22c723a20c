// The flow graph as the island sees it: the server's flow JSON plus the
// members of collapsed groups that the user loaded. Pure functions, no DOM.
//
// Everything in a node (names, ids, exception types) comes from untrusted
// tasks: it is only ever rendered as React text or attribute values.

export const TERMINAL_STATES = new Set([
  'SUCCESS', 'FAILURE', 'REVOKED', 'REJECTED', 'NOT_RUN', 'UNKNOWN',
]);

/**
 * How states look, from the table the page hands over (stemtrace.core.states
 * LOOKS as JSON, `{state: [icon, word, class]}`; see main.jsx): a function of
 * a state giving `{icon, word, cls}`. Colour is never the only cue: every
 * state has an icon and a word. A state not in the table (or no table) looks
 * unknown; its class never comes from the data.
 */
export function stateLooks(table) {
  const known = new Map();
  for (const [state, look] of Object.entries(table && typeof table === 'object' ? table : {})) {
    if (Array.isArray(look) && look.length === 3) {
      const [icon, word, cls] = look.map(String);
      known.set(state, { icon, word, cls });
    }
  }
  return (state) => known.get(state)
    || { icon: '?', word: String(state ?? 'unknown').toLowerCase(), cls: 'unknown' };
}

// Group counts folded into the buckets a group node shows, in display order;
// each looks like its first state.
export const COUNT_BUCKETS = [
  { key: 'succeeded', states: ['SUCCESS'] },
  { key: 'failed', states: ['FAILURE', 'REJECTED'] },
  { key: 'revoked', states: ['REVOKED'] },
  { key: 'running', states: ['STARTED'] },
  { key: 'retrying', states: ['RETRY'] },
  { key: 'waiting', states: ['PENDING', 'RECEIVED'] },
];

export function countBuckets(counts, look) {
  const found = [];
  const known = new Set();
  for (const bucket of COUNT_BUCKETS) {
    let n = 0;
    for (const state of bucket.states) {
      known.add(state);
      n += Number(counts?.[state]) || 0;
    }
    const { icon, cls } = look(bucket.states[0]);
    if (n) found.push({ ...bucket, icon, cls, n });
  }
  let other = 0;
  for (const [state, n] of Object.entries(counts || {})) {
    if (!known.has(state)) other += Number(n) || 0;
  }
  const { icon, cls } = look('UNKNOWN');
  if (other) found.push({ key: 'other', icon, cls, n: other });
  return found;
}

export function isTerminalFlow(flow) {
  return (flow?.nodes || []).every((n) => TERMINAL_STATES.has(n.state));
}

/** A member row of `GET /api/groups/{gid}/members` as a task node of the flow JSON. */
export function memberNode(row) {
  const started = row.started_at ?? null;
  return {
    id: String(row.id),
    kind: 'task',
    name: row.name ?? null,
    state: row.state,
    worker: row.worker ?? null,
    group_id: row.group_id ?? null,
    sent_at: row.sent_at ?? null,
    received_at: row.received_at ?? null,
    started_at: started,
    finished_at: row.finished_at ?? null,
    runtime: row.runtime ?? null,
    attempts: row.attempts ?? (started !== null ? (Number(row.retries) || 0) + 1 : 0),
    exc_type: row.exc_type ?? null,
    lost: row.lost ?? null,
  };
}

/**
 * The graph to draw: flow nodes and edges plus loaded members of collapsed
 * groups (`expansions`: group node id -> {members}), with adjacency.
 */
export function buildGraph(flow, expansions) {
  const nodes = new Map();
  const edges = [];
  const seen = new Set();
  const addEdge = (source, target, kind) => {
    const id = `${kind}\u0000${source}\u0000${target}`;
    if (source === target || seen.has(id)) return;
    seen.add(id);
    edges.push({ id, source, target, kind });
  };
  for (const node of flow?.nodes || []) {
    if (node && node.id != null) nodes.set(String(node.id), node);
  }
  for (const edge of flow?.edges || []) {
    const source = String(edge.source);
    const target = String(edge.target);
    if (nodes.has(source) && nodes.has(target)) addEdge(source, target, String(edge.kind));
  }
  for (const [groupNodeId, expansion] of expansions || []) {
    const group = nodes.get(groupNodeId);
    if (!group || !group.collapsed) continue;
    for (const member of expansion.members) {
      if (!nodes.has(member.id)) nodes.set(member.id, member);
      addEdge(groupNodeId, member.id, 'group');
    }
  }
  const children = new Map();
  const parents = new Map();
  for (const id of nodes.keys()) {
    children.set(id, []);
    parents.set(id, []);
  }
  for (const edge of edges) {
    children.get(edge.source).push(edge);
    parents.get(edge.target).push(edge);
  }
  const critical = new Set((flow?.critical_path?.nodes || []).map(String));
  const criticalEdges = new Set(
    (flow?.critical_path?.edges || []).map((e) => `${e.source}\u0000${e.target}`),
  );
  return { nodes, edges, children, parents, critical, criticalEdges };
}

/** The ids and edges, as one string: equal strings need no new layout. */
export function structureKey(graph) {
  const parts = [];
  for (const [id, node] of graph.nodes) parts.push(`${id}\u0001${node.kind}`);
  for (const edge of graph.edges) parts.push(edge.id);
  return parts.join('\u0002');
}

export function fillTemplate(template, id) {
  if (!template) return null;
  const value = encodeURIComponent(String(id));
  return template.split('{id}').join(value).split('%7Bid%7D').join(value);
}

// Times are epoch seconds (floats) in the flow JSON.

function pad(n, width = 2) {
  return String(n).padStart(width, '0');
}

export function formatClock(ts) {
  if (typeof ts !== 'number' || !Number.isFinite(ts)) return null;
  const d = new Date(ts * 1000);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

export function formatDateTime(ts) {
  if (typeof ts !== 'number' || !Number.isFinite(ts)) return null;
  const d = new Date(ts * 1000);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${formatClock(ts)}`;
}

// One duration format, the server's (stemtrace/server/render.py `duration`):
// the unit is chosen after rounding (never "1000 ms" or "60 s"), rounding is
// half up on the float itself, written out so both sides give the same text.
// test/durations.json holds both to the same cases.
function halfUp(value) {
  return Math.floor(value + 0.5);
}

function two(big, bigUnit, small, smallUnit) {
  return small ? `${big} ${bigUnit} ${small} ${smallUnit}` : `${big} ${bigUnit}`;
}

export function formatDuration(seconds) {
  if (typeof seconds !== 'number' || !Number.isFinite(seconds)) return null;
  if (seconds < 0) return `-${formatDuration(-seconds)}`;
  const tenthsMs = halfUp(seconds * 10000);
  if (tenthsMs < 1000) return `${Math.floor(tenthsMs / 10)}.${tenthsMs % 10} ms`;
  const ms = halfUp(seconds * 1000);
  if (ms < 1000) return `${ms} ms`;
  const hundredths = halfUp(seconds * 100);
  if (hundredths < 1000) return `${Math.floor(hundredths / 100)}.${pad(hundredths % 100)} s`;
  const whole = halfUp(seconds);
  if (whole < 60) return `${whole} s`;
  const minutes = Math.floor(whole / 60);
  if (minutes < 60) return two(minutes, 'min', whole % 60, 's');
  const hours = Math.floor(minutes / 60);
  if (hours < 48) return two(hours, 'h', minutes % 60, 'min');
  return two(Math.floor(hours / 24), 'd', hours % 24, 'h');
}

/** Run time of a task node: its runtime, else finished - started, else so far (running). */
export function duration(node, now) {
  if (typeof node.runtime === 'number') return { seconds: node.runtime, running: false };
  if (typeof node.started_at === 'number') {
    if (typeof node.finished_at === 'number') {
      return { seconds: node.finished_at - node.started_at, running: false };
    }
    if (!TERMINAL_STATES.has(node.state) && typeof now === 'number') {
      return { seconds: Math.max(0, now - node.started_at), running: true };
    }
  }
  return null;
}

export function plural(n, word, many = `${word}s`) {
  return `${n.toLocaleString('en-US')} ${n === 1 ? word : many}`;
}
