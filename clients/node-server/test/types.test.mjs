// The public types as a strict TypeScript user sees them, and the values they
// allow accepted by the real server.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';

import { Tidings } from '../dist/index.js';
import { PACKAGE_ROOT, startServer } from './helpers.mjs';

const DIST = join(PACKAGE_ROOT, 'dist/index.js');

/** Runs `tsc --strict --noEmit` on `program`; resolves to its exit code and output. */
async function typecheck(program) {
  const dir = await mkdtemp(join(tmpdir(), 'tidings-types-'));
  try {
    const file = join(dir, 'program.ts');
    await writeFile(file, program);
    const args = [
      join(PACKAGE_ROOT, 'node_modules/typescript/bin/tsc'),
      '--strict', '--noEmit', '--skipLibCheck', '--target', 'ES2022', '--lib', 'ES2022',
      '--module', 'NodeNext', '--moduleResolution', 'NodeNext',
      '--types', 'node', '--typeRoots', join(PACKAGE_ROOT, 'node_modules/@types'),
      file,
    ];
    return await promisify(execFile)(process.execPath, args, { timeout: 60_000 }).then(
      ({ stdout }) => ({ code: 0, stdout }),
      (err) => ({ code: err.code, stdout: err.stdout }),
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

test('EntityRef.version takes null; history order and token ids are typed', async () => {
  const allowed = await typecheck(`
import { mintToken, Tidings, type EntityRef, type HistoryResult } from ${JSON.stringify(DIST)};
export async function use(tidings: Tidings): Promise<number | null | undefined> {
  const entity: EntityRef = { type: 't', id: '1', version: null };
  await tidings.entityEvent({ workspace: 'acme', entity, action: 'updated' });
  await tidings.publish({ channel: 'workspace:acme', event: 'x', data: 1, meta: { entity: { type: 't', id: '1', version: null } } });
  const history: HistoryResult = await tidings.history({ channel: 'workspace:acme', order: 'newest' });
  mintToken({ sub: 42, workspaces: 'acme', roles: ['admin', 7, 8n], secret: 's'.repeat(32) });
  return history.events[0]?.meta?.entity?.version;
}
`);
  assert.equal(allowed.code, 0, allowed.stdout);
  const refused = await typecheck(`
import { Tidings } from ${JSON.stringify(DIST)};
export async function use(tidings: Tidings): Promise<void> {
  await tidings.history({ channel: 'workspace:acme', order: 'sideways' });
}
`);
  assert.notEqual(refused.code, 0);
  assert.match(refused.stdout, /sideways/);
});

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.stop();
});

test('a null entity version is accepted by the server', async () => {
  const tidings = new Tidings({ url: server.url, apiKey: server.apiKey });
  const id = `o${Date.now()}`;
  const result = await tidings.entityEvent({ workspace: 'acme', entity: { type: 'orders', id, version: null }, action: 'updated' });
  assert.equal(result.event, 'orders.updated');
  const history = await tidings.history({ channel: `workspace:acme:orders:${id}` });
  assert.equal(history.events[0].meta.entity.id, id);
});
