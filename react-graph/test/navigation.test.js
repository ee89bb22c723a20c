// Arrow keys between nodes (src/navigation.js): run with `npm test`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { buildGraph } from '../src/model.js';
import { layoutGraph } from '../src/layout.js';
import { neighbour } from '../src/navigation.js';

const task = (id) => ({ id, kind: 'task', name: id, state: 'SUCCESS', attempts: 1 });

// root -> a -> a2, root -> b: two children side by side, one grandchild.
const flow = {
  root_id: 'root',
  nodes: ['root', 'a', 'b', 'a2'].map(task),
  edges: [
    { source: 'root', target: 'a', kind: 'spawned' },
    { source: 'root', target: 'b', kind: 'spawned' },
    { source: 'a', target: 'a2', kind: 'chain' },
  ],
};
const graph = buildGraph(flow, new Map());
const layout = layoutGraph(graph);
const go = (id, key) => neighbour(graph, layout, id, key);

test('down and up follow links: the leftmost child, the parent', () => {
  const [left, right] = ['a', 'b'].sort((x, y) => layout.positions.get(x).x - layout.positions.get(y).x);
  assert.equal(go('root', 'ArrowDown'), left);
  assert.equal(go('a', 'ArrowDown'), 'a2');
  assert.equal(go('a2', 'ArrowUp'), 'a');
  assert.equal(go(right, 'ArrowUp'), 'root');
});

test('sideways moves along the row, and stops at its ends', () => {
  const [left, right] = ['a', 'b'].sort((x, y) => layout.positions.get(x).x - layout.positions.get(y).x);
  assert.equal(go(left, 'ArrowRight'), right);
  assert.equal(go(right, 'ArrowLeft'), left);
  assert.equal(go(right, 'ArrowRight'), null);
  assert.equal(go('root', 'ArrowUp'), null);
  assert.equal(go('missing', 'ArrowDown'), null);
});

test('inside a block, down goes to the next row of the grid, not along a link', () => {
  const nodes = [task('root')];
  const edges = [];
  for (let i = 0; i < 40; i += 1) {
    nodes.push(task(`c${i}`));
    edges.push({ source: 'root', target: `c${i}`, kind: 'spawned' });
  }
  const big = buildGraph({ root_id: 'root', nodes, edges }, new Map());
  const grid = layoutGraph(big);
  assert.equal(grid.blocks.length, 1);
  const below = neighbour(big, grid, 'c0', 'ArrowDown');
  assert.ok(below);
  assert.ok(grid.positions.get(below).y > grid.positions.get('c0').y);
  assert.equal(grid.positions.get(below).x, grid.positions.get('c0').x);
});
