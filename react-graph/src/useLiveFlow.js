// Live: the flow fetched again on every change notice of the stream, throttled
// (slower once every node is terminal, never faster than 3x the last fetch).

import { useEffect, useRef, useState } from 'react';
import { isTerminalFlow } from './model.js';
import {
  listen, reconcile, subscribe, throttle,
} from './live.js';
import { getJson } from './api.js';

const REFRESH_MS = 500;
const SETTLED_REFRESH_MS = 3000;

/** `onFetched(previous, next)` runs after each new flow: the loaded members follow it. */
export function useLiveFlow(config, flow, setFlow, onFetched) {
  const [live, setLive] = useState(config.liveSource || config.liveUrl ? 'connecting' : 'off');
  const [problem, setProblem] = useState(null);
  const flowRef = useRef(flow);
  flowRef.current = flow;

  useEffect(() => {
    if (!config.flowUrl || !(config.liveSource || config.liveUrl)) return undefined;
    let cost = 0;
    const refresh = throttle(async () => {
      const started = performance.now();
      try {
        const next = await getJson(config.flowUrl);
        const previous = flowRef.current;
        setFlow((old) => reconcile(old, next));
        setProblem(null);
        await onFetched(previous, next);
      } catch (error) {
        setProblem(`Could not refresh the flow: ${error.message}`);
        throw error;
      } finally {
        cost = performance.now() - started;
      }
    }, () => Math.max(
      isTerminalFlow(flowRef.current) ? SETTLED_REFRESH_MS : REFRESH_MS,
      3 * cost,
    ));
    const unsubscribe = config.liveSource
      ? listen(config.liveSource, () => refresh.request(), setLive)
      : subscribe(config.liveUrl, () => refresh.request(), setLive);
    return () => {
      unsubscribe();
      refresh.stop();
    };
  }, [config.flowUrl, config.liveSource, config.liveUrl, setFlow, onFetched]);

  return { live, problem };
}
