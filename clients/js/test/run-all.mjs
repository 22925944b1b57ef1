// `npm test`: every suite, in order, against the real server binary and Chromium.
// Missing prerequisites fail loudly; nothing is skipped silently.
import { spawnSync } from 'node:child_process';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { requireChromium } from './helpers/chromium.mjs';
import { requireServerBinary } from './helpers/server.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
try {
  requireServerBinary();
  requireChromium();
} catch (err) {
  console.error(`\nnpm test: missing prerequisite\n${err.message}\n`);
  process.exit(1);
}

const suites = [
  ['node (client over WebSocket/SSE/polling, EventSource, against the real server; packaging)', ['node', '--test', '--test-concurrency=1', '--test-timeout=60000', 'test/node/']],
  ['react (hooks, RTL + jsdom, React 19 and 18, real server)', ['node', 'node_modules/vitest/vitest.mjs', 'run', '--config', 'test/react/vitest.config.mjs']],
  ['browser (Chromium: shareAcrossTabs, SSE fallback, offline and console noise)', ['node', '--test', '--test-concurrency=1', '--test-timeout=60000', 'test/browser/']],
];
const failed = [];
for (const [name, [cmd, ...args]] of suites) {
  console.log(`\n=== ${name}: ${[cmd, ...args].join(' ')}`);
  const result = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', timeout: 10 * 60_000 });
  if (result.status !== 0) failed.push(name);
}
if (failed.length) {
  console.error(`\nFAILED: ${failed.join(', ')}`);
  process.exit(1);
}
console.log('\nall suites passed');
