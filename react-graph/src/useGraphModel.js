// The graph to draw and where its nodes go: the flow plus the members of
// collapsed groups that the user loaded, a page at a time. The layout is
// computed again only when the structure (ids, kinds, edges) changes.

import { useCallback, useMemo, useRef, useState } from 'react';
import { buildGraph, memberNode, structureKey } from './model.js';
import { layoutGraph } from './layout.js';
import { getMembers } from './api.js';

const PAGE = 100;
const REFETCH_PAGE = 1000;

export function useGraphModel(flow, membersUrlTemplate) {
  const [expansions, setExpansions] = useState(() => new Map());
  const graph = useMemo(() => buildGraph(flow, expansions), [flow, expansions]);
  const laidOut = useRef({ key: null, layout: null });
  const layout = useMemo(() => {
    const key = structureKey(graph);
    if (laidOut.current.key !== key) laidOut.current = { key, layout: layoutGraph(graph) };
    return laidOut.current.layout;
  }, [graph]);

  const expansionsRef = useRef(expansions);
  expansionsRef.current = expansions;
  const graphRef = useRef(graph);
  graphRef.current = graph;

  // Expanding a collapsed group: the next page of its members.
  const onExpand = useCallback(async (groupNodeId) => {
    const group = graphRef.current.nodes.get(groupNodeId);
    const before = expansionsRef.current.get(groupNodeId);
    if (!group || !membersUrlTemplate || before?.loading) return;
    const offset = before?.members.length ?? 0;
    const update = (change) => setExpansions((old) => {
      const next = new Map(old);
      const current = old.get(groupNodeId) || { members: [], size: group.size, loading: false };
      next.set(groupNodeId, { ...current, ...change(current) });
      return next;
    });
    update(() => ({ loading: true, error: null }));
    try {
      const page = await getMembers(membersUrlTemplate, group.group_id, offset, PAGE);
      const rows = Array.isArray(page.members) ? page.members.map(memberNode) : [];
      update((current) => ({
        loading: false,
        size: Number(page.size) || current.size,
        members: [...current.members.slice(0, offset), ...rows],
      }));
    } catch (error) {
      update(() => ({ loading: false, error: `Could not load members: ${error.message}` }));
    }
  }, [membersUrlTemplate]);

  // Live: the loaded members of a group whose counts moved are fetched again
  // (unchanged member objects kept, for cheap React updates).
  const refetchMembers = useCallback(async (previous, next) => {
    const before = new Map((previous?.nodes || []).map((n) => [n.id, n]));
    for (const node of next.nodes || []) {
      const expansion = expansionsRef.current.get(node.id);
      if (!node.collapsed || !expansion?.members.length) continue;
      if (JSON.stringify(before.get(node.id)?.counts) === JSON.stringify(node.counts)) continue;
      const rows = [];
      for (let offset = 0; offset < expansion.members.length; offset += REFETCH_PAGE) {
        const limit = Math.min(REFETCH_PAGE, expansion.members.length - offset);
        const page = await getMembers(membersUrlTemplate, node.group_id, offset, limit);
        rows.push(...(page.members || []).map(memberNode));
      }
      setExpansions((old) => {
        const current = old.get(node.id);
        if (!current) return old;
        const known = new Map(current.members.map((m) => [m.id, m]));
        const members = rows.map((m) => {
          const was = known.get(m.id);
          return was && JSON.stringify(was) === JSON.stringify(m) ? was : m;
        });
        return new Map(old).set(node.id, { ...current, members, size: node.size });
      });
    }
  }, [membersUrlTemplate]);

  const expand = membersUrlTemplate ? onExpand : null;
  return { graph, layout, expansions, expand, refetchMembers };
}
