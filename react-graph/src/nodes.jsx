// Node components. Every value shown here comes from untrusted tasks and is
// rendered as React text (or a plain attribute value), nothing else.

import { memo } from 'react';
import { Handle, Position } from '@xyflow/react';
import {
  countBuckets, duration, formatClock, formatDuration, plural,
} from './model.js';
import { useLooks } from './looks.js';

export function classes(...names) {
  return names.filter(Boolean).join(' ');
}

function Handles() {
  return (
    <>
      <Handle type="target" position={Position.Top} isConnectable={false} />
      <Handle type="source" position={Position.Bottom} isConnectable={false} />
    </>
  );
}

export function StateLabel({ state }) {
  const info = useLooks()(state);
  return (
    <span className={classes('stg-state', `st-${info.cls}`)}>
      <span className="stg-icon" aria-hidden="true">{info.icon}</span>
      {info.word}
    </span>
  );
}

function TaskNodeView({ data, selected }) {
  const { node, current, critical } = data;
  const info = useLooks()(node.state);
  const started = formatClock(node.started_at);
  const took = duration(node, Date.now() / 1000);
  let title = node.name || node.id;
  if (node.placeholder) title = 'parent not captured';
  return (
    <div
      className={classes(
        'stg-node', 'stg-task', `st-${info.cls}`,
        info.cls === 'ghost' && 'stg-ghost',
        node.placeholder && 'stg-placeholder',
        current && 'stg-current',
        critical && 'stg-critical',
        selected && 'stg-selected',
      )}
    >
      <Handles />
      <div className="stg-title-row">
        <div className="stg-title" title={String(node.name || node.id)}>{title}</div>
        {current && <span className="stg-tag">this task</span>}
      </div>
      <div className="stg-line">
        <StateLabel state={node.state} />
        {node.attempts > 1 && <span className="stg-attempts">{plural(node.attempts, 'attempt')}</span>}
        {node.attempts === 1 && <span className="stg-attempts muted">1 attempt</span>}
        {node.lost && <span className="stg-lost" title={String(node.lost)}>lost with its worker</span>}
      </div>
      <div className="stg-line stg-meta">
        {started ? <span title="started at">{started}</span> : <span>not started</span>}
        {took && (
          <span title={took.running ? 'running for' : 'run time'}>
            {formatDuration(took.seconds)}
            {took.running ? ' so far' : ''}
          </span>
        )}
      </div>
    </div>
  );
}

export function GroupCounts({ counts, size }) {
  const buckets = countBuckets(counts, useLooks());
  return (
    <>
      <div className="stg-bar" aria-hidden="true">
        {buckets.map((b) => (
          <span key={b.key} className={`st-${b.cls}`} style={{ width: `${(100 * b.n) / Math.max(size, 1)}%` }} />
        ))}
      </div>
      <div className="stg-counts">
        {buckets.map((b) => (
          <span key={b.key} className={`st-${b.cls}`}>
            <span aria-hidden="true">{b.icon}</span>
            {` ${b.n.toLocaleString('en-US')} ${b.key}`}
          </span>
        ))}
      </div>
    </>
  );
}

export function ExpandButton({ node, expansion, onExpand, compact }) {
  if (!node.collapsed || !onExpand) return null;
  const loaded = expansion?.members.length ?? 0;
  const size = expansion?.size ?? node.size ?? 0;
  if (expansion?.loading) {
    return <button type="button" className="stg-expand nodrag nopan" disabled>Loading…</button>;
  }
  if (loaded >= size && loaded > 0) {
    return compact ? null : <span className="stg-note">All {plural(size, 'member')} shown</span>;
  }
  const label = loaded ? `Load ${Math.min(100, size - loaded)} more` : 'Expand: load members';
  return (
    <button
      type="button"
      className="stg-expand nodrag nopan"
      onClick={(event) => {
        event.stopPropagation();
        onExpand(node.id);
      }}
      onKeyDown={(event) => event.stopPropagation()}
    >
      {label}
    </button>
  );
}

function GroupNodeView({ data, selected }) {
  const { node, current, expansion, onExpand } = data;
  const info = useLooks()(node.state);
  const size = Number(node.size) || 0;
  return (
    <div
      className={classes(
        'stg-node', 'stg-group', node.kind === 'chord' ? 'stg-chord' : null, `st-${info.cls}`,
        current && 'stg-current', selected && 'stg-selected',
      )}
    >
      <Handles />
      <div className="stg-line stg-spread">
        <span>
          <span className="stg-kind">{kindLabel(node)}</span>
          {` ${plural(size, node.kind === 'trace' ? 'task' : 'member')}`}
        </span>
        <StateLabel state={node.state} />
      </div>
      <div className="stg-title" title={String(node.name ?? '')}>{node.name}</div>
      <GroupCounts counts={node.counts} size={size} />
      <ExpandButton node={node} expansion={expansion} onExpand={onExpand} compact />
      {expansion?.error && <div className="stg-error">{expansion.error}</div>}
    </div>
  );
}

function BlockNodeView({ data }) {
  const { block, group, expansion, onExpand } = data;
  let label = `${plural(block.members.length, `${block.kind} task`)}`;
  if (group) {
    const size = expansion?.size ?? group.size;
    label = `${block.members.length.toLocaleString('en-US')} of ${plural(size, 'member')} shown`;
  }
  return (
    <div className={classes('stg-block', `kind-${edgeClass(block.kind)}`)}>
      <Handles />
      <div className="stg-block-head">
        <span>{label}</span>
        {group && <ExpandButton node={group} expansion={expansion} onExpand={onExpand} compact />}
      </div>
    </div>
  );
}

/** What a node that is not a task is: a chord, a group, or the trace above a trace's flows. */
export function kindLabel(node) {
  return node.kind === 'chord' || node.kind === 'trace' ? node.kind : 'group';
}

export function edgeClass(kind) {
  return ['spawned', 'chain', 'group', 'chord'].includes(kind) ? kind : 'other';
}

export const nodeTypes = {
  stTask: memo(TaskNodeView),
  stGroup: memo(GroupNodeView),
  stBlock: memo(BlockNodeView),
};
