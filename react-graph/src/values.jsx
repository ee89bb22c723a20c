// A task's args, kwargs or result as the task page shows them
// (stemtrace/server/render.py `pretty`): nested lists, stemtrace's markers as
// badges. Every value is untrusted and rendered as React text, nothing else.

const MARKER = '__stemtrace__';
const MORE_KEY = '__stemtrace_more__';

function isObject(value) {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

/** The scrubbed badge's lock, drawn: no emoji font needed (the server draws the same). */
export function Lock() {
  return (
    <svg className="lock" viewBox="0 0 12 14" width="10" height="12" aria-hidden="true">
      <path d="M3 6V4a3 3 0 0 1 6 0v2h1.5v8h-9V6zm1.5 0h3V4a1.5 1.5 0 0 0-3 0z" />
    </svg>
  );
}

function Marker({ kind, value }) {
  if (kind === 'scrubbed') {
    return <span className="badge scrubbed stg-scrubbed" title="removed by scrubbing"><Lock /> scrubbed</span>;
  }
  if (kind === 'truncated') {
    return (
      <>
        <span className="badge cut" title="cut by stemtrace">{`truncated: ${String(value.length)} characters`}</span>
        {' '}
        <span className="v-str">{`${String(value.preview ?? '').slice(0, 2000)}…`}</span>
      </>
    );
  }
  if (kind === 'repr') {
    return (
      <>
        <span className="badge repr" title="not JSON: shown as repr">{String(value.type)}</span>
        {' '}
        <code>{String(value.repr)}</code>
      </>
    );
  }
  if (kind === 'more') return <span className="badge cut">{`… ${String(value.count)} more`}</span>;
  if (kind === 'error') return <span className="badge cut">{`not recorded: ${String(value.error)}`}</span>;
  return <code>{JSON.stringify(value)}</code>;
}

export function Value({ value, depth = 0 }) {
  if (depth > 40 && value !== null && typeof value === 'object') {
    return <span className="badge cut">nested too deep to show</span>;
  }
  if (Array.isArray(value)) {
    if (!value.length) return <span className="v-empty">[]</span>;
    return (
      <ol className="v-list" start={0}>
        {value.map((item, i) => <li key={i}><Value value={item} depth={depth + 1} /></li>)}
      </ol>
    );
  }
  if (isObject(value)) {
    if (typeof value[MARKER] === 'string' && depth < 50) return <Marker kind={value[MARKER]} value={value} />;
    const entries = Object.entries(value);
    if (!entries.length) return <span className="v-empty">{'{}'}</span>;
    return (
      <ul className="v-map">
        {entries.map(([key, item]) => (
          <li key={key}>
            {key === MORE_KEY && isObject(item) ? null : <><span className="v-key">{key}</span>: </>}
            <Value value={item} depth={depth + 1} />
          </li>
        ))}
      </ul>
    );
  }
  if (typeof value === 'string') return <span className="v-str">{`"${value}"`}</span>;
  if (value === null || value === undefined) return <span className="v-null">null</span>;
  if (typeof value === 'boolean') return <span className="v-bool">{value ? 'true' : 'false'}</span>;
  return <span className="v-num">{String(value)}</span>;
}
