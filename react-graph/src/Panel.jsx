// The side panel: details of the node the user opened, and a link to its task page.

import { useEffect, useRef, useState } from 'react';
import {
  duration, fillTemplate, formatDateTime, formatDuration, plural,
} from './model.js';
import { ExpandButton, GroupCounts, StateLabel, kindLabel } from './nodes.jsx';
import { Value } from './values.jsx';

function Fact({ label, children }) {
  if (children === null || children === undefined || children === '') return null;
  return (
    <>
      <dt>{label}</dt>
      <dd>{children}</dd>
    </>
  );
}

function taskNote(node) {
  if (node.placeholder) return 'This parent task was never captured by stemtrace.';
  if (node.state === 'NOT_RUN') return 'Planned but never sent: an earlier link of its chain (or chord header) broke.';
  if (node.state === 'PLANNED') return 'Planned: it will be sent when the steps before it finish.';
  return null;
}

const NO_DETAIL = { key: null, data: null, error: null };

/**
 * The task's own record (`GET /api/tasks/{id}`): its exception message, args,
 * kwargs and result, which the flow JSON leaves out. Fetched again when the
 * node's state, end or attempts change.
 */
function useTaskDetail(template, node, real) {
  const [detail, setDetail] = useState(NO_DETAIL);
  const key = real && template
    ? [node.id, node.state, node.finished_at, node.attempts].map(String).join('\u0000')
    : null;
  useEffect(() => {
    if (!key) return undefined;
    const controller = new AbortController();
    fetch(fillTemplate(template, node.id), {
      headers: { Accept: 'application/json' },
      credentials: 'same-origin',
      cache: 'no-store',
      signal: controller.signal,
    })
      .then((response) => {
        if (!response.ok) throw new Error(`${response.status} ${response.statusText}`.trim());
        return response.json();
      })
      .then((data) => setDetail({ key, data, error: null }))
      .catch((error) => {
        if (!controller.signal.aborted) setDetail({ key, data: null, error: error.message });
      });
    return () => controller.abort();
  }, [key]);
  // While a newer record loads, the last one of the same node stays on screen.
  if (!key || !detail.key || !detail.key.startsWith(`${node.id}\u0000`)) return NO_DETAIL;
  return detail;
}

function TaskValues({ detail }) {
  const { data, error } = detail;
  if (error) return <p className="stg-error">{`Could not load the task's details: ${error}`}</p>;
  if (!data) return null;
  const exception = data.exception;
  return (
    <div className="stg-values">
      {exception && (
        <>
          <h3>Failure</h3>
          <p className="stg-exc">
            <strong>{String(exception.type)}</strong>
            {exception.message ? `: ${String(exception.message)}` : ''}
          </p>
        </>
      )}
      <h3>args</h3>
      <div className="stg-value">{data.args == null ? '—' : <Value value={data.args} />}</div>
      <h3>kwargs</h3>
      <div className="stg-value">{data.kwargs == null ? '—' : <Value value={data.kwargs} />}</div>
      <h3>result</h3>
      <div className="stg-value">{data.state === 'SUCCESS' ? <Value value={data.result} /> : '—'}</div>
    </div>
  );
}

export function SidePanel({ node, graph, expansion, config, onClose, onExpand, onSelect }) {
  const heading = useRef(null);
  useEffect(() => {
    heading.current?.focus({ preventScroll: true });
  }, [node.id]);

  const isTask = node.kind === 'task';
  const real = isTask && !node.planned && !node.placeholder;
  const href = real ? fillTemplate(config.taskUrlTemplate, node.id) : null;
  const took = isTask ? duration(node, Date.now() / 1000) : null;
  const parents = graph.parents.get(node.id) || [];
  const children = graph.children.get(node.id) || [];
  const title = node.name || (node.placeholder ? 'parent not captured' : node.id);
  const detail = useTaskDetail(config.taskApiUrlTemplate, node, real);

  return (
    <aside
      className="stg-panel"
      aria-label="Details of the selected node"
      onKeyDown={(event) => {
        if (event.key === 'Escape') onClose();
      }}
    >
      <div className="stg-panel-head">
        <h2 tabIndex={-1} ref={heading}>
          {!isTask && <span className="stg-kind">{kindLabel(node)}</span>}
          <span className="stg-panel-title">{title}</span>
        </h2>
        <button type="button" className="stg-close" onClick={onClose} aria-label="Close details">×</button>
      </div>
      <p><StateLabel state={node.state} /></p>
      {isTask && taskNote(node) && <p className="stg-note">{taskNote(node)}</p>}
      {href && (
        <p><a className="stg-link" href={href}>Open task page →</a></p>
      )}
      {!isTask && (
        <>
          <GroupCounts counts={node.counts} size={Number(node.size) || 0} />
          <p>
            <ExpandButton node={node} expansion={expansion} onExpand={onExpand} />
            {expansion && expansion.members.length > 0 && (
              <span className="stg-note">
                {` ${expansion.members.length.toLocaleString('en-US')} of ${plural(expansion.size, 'member')} loaded`}
              </span>
            )}
          </p>
          {expansion?.error && <p className="stg-error">{expansion.error}</p>}
        </>
      )}
      <dl className="stg-facts">
        <Fact label="id"><code>{isTask ? node.id : node.group_id}</code></Fact>
        {isTask ? (
          <>
            <Fact label="worker">{node.worker}</Fact>
            <Fact label="lost">{node.lost ? `never finished: ${node.lost}` : null}</Fact>
            <Fact label="attempts">{node.attempts ? String(node.attempts) : null}</Fact>
            <Fact label="sent">{formatDateTime(node.sent_at)}</Fact>
            <Fact label="received">{formatDateTime(node.received_at)}</Fact>
            <Fact label="started">{formatDateTime(node.started_at)}</Fact>
            <Fact label="finished">{formatDateTime(node.finished_at)}</Fact>
            <Fact label={took?.running ? 'running for' : 'run time'}>{took ? formatDuration(took.seconds) : null}</Fact>
            <Fact label="exception">{node.exc_type}</Fact>
            <Fact label="group">{node.group_id ? <code>{node.group_id}</code> : null}</Fact>
          </>
        ) : (
          <>
            <Fact label={node.kind === 'trace' ? 'tasks' : 'members'}>{String(Number(node.size) || 0)}</Fact>
            <Fact label="started">{formatDateTime(node.started_at)}</Fact>
            <Fact label="finished">{formatDateTime(node.finished_at)}</Fact>
          </>
        )}
      </dl>
      {real && <TaskValues detail={detail} />}
      <Neighbours label="From" edges={parents} end="source" graph={graph} onSelect={onSelect} />
      <Neighbours label="To" edges={children} end="target" graph={graph} onSelect={onSelect} />
    </aside>
  );
}

const NEIGHBOURS_SHOWN = 20;

function Neighbours({ label, edges, end, graph, onSelect }) {
  if (!edges.length) return null;
  return (
    <>
      <h3>{label}</h3>
      <ul className="stg-neighbours">
        {edges.slice(0, NEIGHBOURS_SHOWN).map((edge) => {
          const other = graph.nodes.get(edge[end]);
          return (
            <li key={edge.id}>
              <span className="stg-edge-kind">{edge.kind}</span>
              <button type="button" className="stg-linkish" onClick={() => onSelect(edge[end])}>
                {other?.name || other?.id || edge[end]}
              </button>
            </li>
          );
        })}
        {edges.length > NEIGHBOURS_SHOWN && (
          <li className="stg-note">and {plural(edges.length - NEIGHBOURS_SHOWN, 'more', 'more')}</li>
        )}
      </ul>
    </>
  );
}
