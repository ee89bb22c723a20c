// Pure parts of the island: run with `npm test` (node's own test runner).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import {
  buildGraph, countBuckets, fillTemplate, formatDuration, memberNode, stateLooks, structureKey,
} from '../src/model.js';
import { BLOCK_MIN, DAGRE_MAX, layoutGraph } from '../src/layout.js';
import { reconcile } from '../src/live.js';

// The states table as the page hands it over: tests/test_render.py holds it to core/states.LOOKS.
const LOOKS = JSON.parse(readFileSync(new URL('./states.json', import.meta.url), 'utf8'));
const look = stateLooks(LOOKS);

const task = (id, state = 'SUCCESS') => ({ id, kind: 'task', name: id, state, attempts: 1 });

function fanOut(n) {
  const nodes = [task('root')];
  const edges = [];
  for (let i = 0; i < n; i += 1) {
    nodes.push(task(`c${i}`));
    edges.push({ source: 'root', target: `c${i}`, kind: 'spawned' });
  }
  return { root_id: 'root', nodes, edges };
}

test('task URLs encode the id, whatever it holds', () => {
  assert.equal(fillTemplate('/t/{id}', 'a/b?c=<x>#'), '/t/a%2Fb%3Fc%3D%3Cx%3E%23');
  assert.equal(fillTemplate('/t/%7Bid%7D', 'x y'), '/t/x%20y');
  assert.equal(fillTemplate(null, 'x'), null);
});

test('states look as the table the page hands over says', () => {
  assert.deepEqual(look('NOT_RUN'), { icon: LOOKS.NOT_RUN[0], word: 'not run', cls: 'ghost' });
  for (const [state, [icon, word, cls]] of Object.entries(LOOKS)) {
    assert.deepEqual(look(state), { icon, word, cls });
  }
});

test('unknown states get a word, never a class taken from data', () => {
  const odd = look('"><img src=x>');
  assert.equal(odd.cls, 'unknown');
  assert.equal(odd.word, '"><img src=x>');
  // No table (the page left it out): every state reads as its own word, looks unknown.
  assert.deepEqual(stateLooks(null)('SUCCESS'), { icon: '?', word: 'success', cls: 'unknown' });
  assert.equal(stateLooks({ SUCCESS: 'not a look' })('SUCCESS').cls, 'unknown');
});

test("a group's count buckets look like their states", () => {
  const buckets = countBuckets({ SUCCESS: 2, REJECTED: 1, RECEIVED: 3, ODD: 4 }, look);
  assert.deepEqual(
    buckets.map((b) => [b.key, b.icon, b.cls, b.n]),
    [
      ['succeeded', LOOKS.SUCCESS[0], 'success', 2],
      ['failed', LOOKS.FAILURE[0], 'failure', 1],
      ['waiting', LOOKS.PENDING[0], 'waiting', 3],
      ['other', LOOKS.UNKNOWN[0], 'unknown', 4],
    ],
  );
});

test('member rows become task nodes with an attempt count', () => {
  const node = memberNode({ id: 'm1', name: 'n', state: 'SUCCESS', retries: 2, started_at: 1.5 });
  assert.equal(node.attempts, 3);
  assert.equal(memberNode({ id: 'm2', state: 'PENDING', retries: 0, started_at: null }).attempts, 0);
});

test('loaded members hang off their collapsed group', () => {
  const flow = {
    nodes: [{ id: 'group:g', kind: 'group', group_id: 'g', size: 3, counts: {}, collapsed: true }],
    edges: [],
  };
  const graph = buildGraph(flow, new Map([['group:g', { members: [task('a'), task('b')] }]]));
  assert.deepEqual(graph.children.get('group:g').map((e) => e.target), ['a', 'b']);
});

test('a big fan-out is one block with one edge, and the layout is deterministic', () => {
  const graph = buildGraph(fanOut(10_000), new Map());
  const first = layoutGraph(graph);
  assert.equal(first.blocks.length, 1);
  assert.equal(first.blocks[0].members.length, 10_000);
  assert.equal(first.edges.length, 1);
  const again = layoutGraph(buildGraph(fanOut(10_000), new Map()));
  assert.deepEqual([...again.positions.entries()], [...first.positions.entries()]);
});

test('a small fan-out stays in dagre, unblocked', () => {
  const layout = layoutGraph(buildGraph(fanOut(BLOCK_MIN - 1), new Map()));
  assert.equal(layout.blocks.length, 0);
  assert.equal(layout.engine, 'dagre');
});

test('many distinct nodes use the layered layout, with children below parents', () => {
  const nodes = [task('root')];
  const edges = [];
  for (let c = 0; c < 40; c += 1) {
    for (let i = 0; i < 20; i += 1) {
      nodes.push(task(`c${c}-${i}`));
      edges.push({ source: i ? `c${c}-${i - 1}` : 'root', target: `c${c}-${i}`, kind: i ? 'chain' : 'spawned' });
    }
  }
  assert.ok(nodes.length > DAGRE_MAX);
  const layout = layoutGraph(buildGraph({ nodes, edges }, new Map()));
  assert.equal(layout.engine, 'layered');
  for (const edge of edges) {
    assert.ok(layout.positions.get(edge.target).y > layout.positions.get(edge.source).y);
  }
});

test('a cycle in hostile data does not hang the layered layout', () => {
  const flow = fanOut(DAGRE_MAX + 10);
  for (let i = 0; i < DAGRE_MAX + 10; i += 1) {
    flow.edges.push({ source: `c${i}`, target: `c${(i + 1) % (DAGRE_MAX + 10)}`, kind: 'chain' });
  }
  const layout = layoutGraph(buildGraph(flow, new Map()));
  assert.equal(layout.positions.size, DAGRE_MAX + 11);
});

test('reconcile keeps unchanged node objects and the whole flow when nothing changed', () => {
  const before = fanOut(3);
  const same = JSON.parse(JSON.stringify(before));
  assert.equal(reconcile(before, same), before);
  const changed = JSON.parse(JSON.stringify(before));
  changed.nodes[1].state = 'FAILURE';
  const next = reconcile(before, changed);
  assert.notEqual(next, before);
  assert.equal(next.nodes[0], before.nodes[0]);
  assert.notEqual(next.nodes[1], before.nodes[1]);
  assert.equal(structureKey(buildGraph(next, new Map())), structureKey(buildGraph(before, new Map())));
});

test('durations read as on the server pages (the cases tests/test_render.py checks too)', () => {
  const cases = JSON.parse(readFileSync(new URL('./durations.json', import.meta.url), 'utf8'));
  for (const [seconds, shown] of cases) assert.equal(formatDuration(seconds), shown, String(seconds));
  assert.equal(formatDuration(null), null);
  assert.equal(formatDuration(Infinity), null);
});
