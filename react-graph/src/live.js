// Live updates: the server's SSE stream says only that something changed
// (events `ready`, `changed`, `ping`); the island then fetches the flow JSON
// again, at most once per interval.

/** Calls `task` (async) when requested, never two at once, runs at least `interval()` ms apart. */
export function throttle(task, interval) {
  let timer = null;
  let running = false;
  let pending = false;
  let last = -Infinity;
  let stopped = false;

  const schedule = () => {
    if (stopped || running || timer !== null || !pending) return;
    const wait = Math.max(0, last + interval() - performance.now());
    timer = setTimeout(run, wait);
  };
  const run = async () => {
    timer = null;
    if (stopped || !pending) return;
    pending = false;
    running = true;
    last = performance.now();
    try {
      await task();
    } catch {
      // The caller reports failures itself; the next change tries again.
    } finally {
      running = false;
      schedule();
    }
  };
  return {
    request() {
      pending = true;
      schedule();
    },
    stop() {
      stopped = true;
      if (timer !== null) clearTimeout(timer);
    },
  };
}

/** Opens the event stream; `onChange` on ready/changed, `onStatus` with 'live' | 'reconnecting' | 'closed'. */
export function subscribe(url, onChange, onStatus) {
  if (!url || typeof EventSource === 'undefined') return () => {};
  const source = new EventSource(url);
  source.addEventListener('ready', () => {
    onStatus('live');
    onChange();
  });
  source.addEventListener('changed', () => onChange());
  source.addEventListener('ping', () => onStatus('live'));
  source.addEventListener('error', () => {
    onStatus(source.readyState === EventSource.CLOSED ? 'closed' : 'reconnecting');
  });
  return () => source.close();
}

/**
 * The same, heard from the page's own htmx SSE connection instead of a second
 * one: `source` is the element htmx's sse extension connected (`sse-connect`,
 * with `sse:ready` and `sse:changed` among its triggers). A browser holds few
 * connections per server; a page needs only one stream.
 */
export function listen(source, onChange, onStatus) {
  const handlers = {
    'sse:ready': () => {
      onStatus('live');
      onChange();
    },
    'sse:changed': () => onChange(),
    'htmx:sseOpen': () => onStatus('live'),
    'htmx:sseError': () => onStatus('reconnecting'),
  };
  for (const [name, handler] of Object.entries(handlers)) source.addEventListener(name, handler);
  onChange(); // the stream may have opened before the island listened: catch up once
  return () => {
    for (const [name, handler] of Object.entries(handlers)) source.removeEventListener(name, handler);
  };
}

/** `next` with the node objects of `previous` kept where nothing changed (cheap React updates). */
export function reconcile(previous, next) {
  if (!previous) return next;
  const before = new Map();
  for (const node of previous.nodes || []) before.set(node.id, node);
  let same = (previous.nodes || []).length === (next.nodes || []).length
    && previous.root_id === next.root_id;
  const nodes = (next.nodes || []).map((node, i) => {
    const old = before.get(node.id);
    if (old && JSON.stringify(old) === JSON.stringify(node)) {
      if (previous.nodes[i] !== old) same = false;
      return old;
    }
    same = false;
    return node;
  });
  if (same && JSON.stringify(previous.edges) === JSON.stringify(next.edges)) return previous;
  return { ...next, nodes };
}
