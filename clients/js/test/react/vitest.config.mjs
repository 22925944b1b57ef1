// The hook tests run twice: against React 19 (the root devDependency) and
// against React 18 (the `test/react18` workspace), by aliasing `react` and
// `react-dom` for every module vitest loads, dependencies included.
import { defineConfig } from 'vitest/config';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('.', import.meta.url));
const react18 = fileURLToPath(new URL('../react18/node_modules/', import.meta.url));
// RTL's `main` is CommonJS, whose `require('react-dom/client')` no alias reaches: use its ESM build.
const rtlEsm = fileURLToPath(
  new URL('../../node_modules/@testing-library/react/dist/@testing-library/react.esm.js', import.meta.url),
);

const common = {
  environment: 'jsdom',
  include: ['**/*.test.tsx'],
  testTimeout: 30_000,
  hookTimeout: 30_000,
  fileParallelism: false,
};

export default defineConfig({
  root,
  test: {
    projects: [
      { root, test: { ...common, name: 'react19', env: { EXPECT_REACT: '19' } } },
      {
        root,
        resolve: {
          alias: [
            { find: /^react$/, replacement: `${react18}react/index.js` },
            { find: /^react\/(.*)$/, replacement: `${react18}react/$1` },
            { find: /^react-dom$/, replacement: `${react18}react-dom/index.js` },
            { find: /^react-dom\/(.*)$/, replacement: `${react18}react-dom/$1` },
            { find: /^@testing-library\/react$/, replacement: rtlEsm },
          ],
        },
        test: {
          ...common,
          name: 'react18',
          env: { EXPECT_REACT: '18' },
          // Load these through vite so the aliases reach their `react` imports too.
          server: { deps: { inline: [/@testing-library\//, /@tanstack\//] } },
        },
      },
    ],
  },
});
