import { defineConfig } from 'vite';

export default defineConfig({
  // The SDK packages are linked from clients/js: use this app's single React.
  resolve: { dedupe: ['react', 'react-dom', '@tanstack/react-query'] },
  build: { sourcemap: true },
});
