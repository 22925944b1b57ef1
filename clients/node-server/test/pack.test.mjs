// `npm pack` makes an installable artifact: installed into a clean temporary
// project, it imports (ESM), type-checks (its .d.ts) and talks to the real server.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';

import { PACKAGE_ROOT, startServer } from './helpers.mjs';

const run = promisify(execFile);
let server;
let dir;
before(async () => {
  server = await startServer();
  dir = mkdtempSync(join(tmpdir(), 'tidings-server-pack-'));
});
after(async () => {
  await server?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('the packed tarball installs, imports, type-checks and works', async () => {
  await run('npm', ['pack', '--silent', '--pack-destination', dir], { cwd: PACKAGE_ROOT, timeout: 120_000 });
  const tarball = readdirSync(dir).find((f) => f.endsWith('.tgz'));
  assert.ok(tarball, 'npm pack wrote a tarball');
  const { stdout: listing } = await run('tar', ['-tzf', join(dir, tarball)]);
  assert.match(listing, /package\/dist\/index\.js/);
  assert.match(listing, /package\/dist\/index\.d\.ts/);
  assert.match(listing, /package\/LICENSE/);
  assert.doesNotMatch(listing, /package\/src\/|package\/test\//);

  const project = join(dir, 'app');
  await run('mkdir', ['-p', project]);
  writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module' }));
  await run('npm', ['install', '--no-audit', '--no-fund', '--offline', join(dir, tarball)], { cwd: project, timeout: 120_000 });
  writeFileSync(
    join(project, 'main.mjs'),
    `import { Tidings, mintToken, TidingsApiError } from '@tidings/server';
     const tidings = new Tidings({ url: process.env.TIDINGS_URL, apiKey: process.env.TIDINGS_API_KEY });
     const info = await tidings.info();
     const published = await tidings.publish({ channel: 'workspace:acme', event: 'packed', data: 1 });
     const error = await tidings.publish({ channel: 'nowhere:x', event: 'x', data: 1 }).catch((e) => e);
     console.log(JSON.stringify({ engine: info.engine, offset: published.offset,
       typed: error instanceof TidingsApiError && error.code, token: mintToken({ sub: 'a', secret: 's' }).split('.').length }));`,
  );
  const { stdout } = await run(process.execPath, ['main.mjs'], {
    cwd: project,
    env: { PATH: process.env.PATH, TIDINGS_URL: server.url, TIDINGS_API_KEY: server.apiKey },
  });
  assert.deepEqual(JSON.parse(stdout), { engine: 'memory', offset: 1, typed: 'unknown_channel', token: 3 });

  // The declarations are usable from a strict TypeScript project.
  writeFileSync(
    join(project, 'check.ts'),
    `import { Tidings, type Published, type InfoResult, TidingsApiError } from '@tidings/server';
     const tidings = new Tidings({ url: 'http://127.0.0.1:1', apiKey: 'k' });
     export async function go(): Promise<number> {
       const p: Published = await tidings.publish({ channel: 'c', event: 'e', data: { a: 1 } });
       const i: InfoResult = await tidings.info();
       const n: number = await tidings.disconnect({ user: 'u' });
       const e = new TidingsApiError('m', 'bad_request', 400, 1);
       return p.offset + i.nodes.length + n + e.status;
     }`,
  );
  writeFileSync(
    join(project, 'tsconfig.json'),
    JSON.stringify({
      compilerOptions: {
        strict: true, noEmit: true, module: 'NodeNext', moduleResolution: 'NodeNext', target: 'ES2022',
        lib: ['ES2022', 'DOM'], types: [], skipLibCheck: false,
      },
      files: ['check.ts'],
    }),
  );
  await run(process.execPath, [join(PACKAGE_ROOT, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.json'], { cwd: project });
});
