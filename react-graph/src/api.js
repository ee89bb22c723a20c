// The island's requests: JSON from stemtrace's API, same origin, never cached.

import { fillTemplate } from './model.js';

export async function getJson(url) {
  const response = await fetch(url, {
    headers: { Accept: 'application/json' }, credentials: 'same-origin', cache: 'no-store',
  });
  if (!response.ok) throw new Error(`${response.status} ${response.statusText}`.trim());
  return response.json();
}

/** One page of a group's members: `GET /api/groups/{gid}/members?offset=&limit=`. */
export function getMembers(template, groupId, offset, limit) {
  const url = new URL(fillTemplate(template, groupId), window.location.href);
  url.searchParams.set('offset', String(offset));
  url.searchParams.set('limit', String(limit));
  return getJson(url);
}
