// Builds the graph island as one IIFE script and one stylesheet with fixed
// names (no hashes), into stemtrace/static/graph/, where the Python package
// serves them. `npx vite build --outDir DIR` builds the same bytes elsewhere:
// the freshness test compares the two.
import { defineConfig } from 'vite';

export default defineConfig({
  // React reads process.env.NODE_ENV; a library build does not replace it by itself.
  define: { 'process.env.NODE_ENV': '"production"' },
  oxc: { jsx: { runtime: 'automatic' } },
  build: {
    outDir: '../stemtrace/static/graph',
    emptyOutDir: true,
    target: 'es2020',
    sourcemap: false,
    reportCompressedSize: true,
    copyPublicDir: false,
    // The licences of the bundled packages (React, React Flow, d3, dagre), shipped beside the bundle.
    license: { fileName: 'THIRD-PARTY-LICENSES.md' },
    rolldownOptions: {
      onwarn(warning, warn) {
        // React Flow starts with "use client" (for React Server Components): meaningless here.
        if (warning.code === 'MODULE_LEVEL_DIRECTIVE') return;
        warn(warning);
      },
    },
    lib: {
      entry: 'src/main.jsx',
      formats: ['iife'],
      name: 'StemtraceGraph',
      fileName: () => 'stemtrace-graph.js',
      cssFileName: 'stemtrace-graph',
    },
  },
});
