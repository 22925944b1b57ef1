import { defineConfig } from 'vite';

export default defineConfig({
  // The SDK packages are linked from clients/js: use this app's single React.
  resolve: { dedupe: ['react', 'react-dom', '@tanstack/react-query'] },
  build: {
    sourcemap: true,
    rolldownOptions: {
      onwarn(warning, warn) {
        // TanStack Query's "use client" directives mean nothing in a client-only bundle.
        if (warning.code !== 'MODULE_LEVEL_DIRECTIVE') warn(warning);
      },
    },
  },
});
