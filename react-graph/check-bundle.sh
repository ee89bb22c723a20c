#!/usr/bin/env bash
# Freshness check: rebuilds the island from react-graph/ (exact versions from
# package-lock.json) into a temporary directory and compares it byte for byte
# with the committed bundle in stemtrace/static/graph/. Exit 0: fresh; 1:
# stale (rebuild with `npm run build` here and commit the result).
set -euo pipefail
cd "$(dirname "$0")"
committed=../stemtrace/static/graph
npm ci --no-audit --no-fund --loglevel=error
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
npx vite build --outDir "$out" --emptyOutDir --logLevel error
stale=0
for name in $( (ls "$out"; ls "$committed") | sort -u); do
  if ! cmp -s "$out/$name" "$committed/$name"; then
    echo "stale or missing: stemtrace/static/graph/$name" >&2
    stale=1
  fi
done
if [ "$stale" -ne 0 ]; then
  echo "The committed graph bundle does not match react-graph/: run 'npm run build' in react-graph/ and commit." >&2
  exit 1
fi
echo "graph bundle is fresh"
