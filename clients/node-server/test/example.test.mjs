// The NestJS-style example (examples/nest-style) run as a process against the
// real server: a WebSocket subscriber receives the event it publishes after
// its repository write.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';

import { PACKAGE_ROOT, startServer, subscriber } from './helpers.mjs';

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.stop();
});

test('the NestJS-style service publishes applications.approved after the write', async () => {
  const sub = await subscriber(server.wsUrl, server.token({ sub: 'reviewer', workspaces: ['acme'] }), [
    'workspace:acme:applications:app123',
  ]);
  const { stdout } = await promisify(execFile)(
    process.execPath,
    [join(PACKAGE_ROOT, 'examples/dist/nest-style/main.js')],
    { env: { PATH: process.env.PATH, TIDINGS_URL: server.url, TIDINGS_API_KEY: server.apiKey }, timeout: 30_000 },
  );
  const written = JSON.parse(stdout);
  assert.deepEqual(written, { id: 'app123', workspace: 'acme', status: 'approved', version: 2 });
  const event = await sub.event((e) => e.event === 'applications.approved');
  assert.equal(event.channel, 'workspace:acme:applications:app123');
  assert.deepEqual(event.data, { status: 'approved' });
  assert.deepEqual(event.meta, { actor: 'u7', entity: { type: 'applications', id: 'app123', version: 2 } });
  sub.close();
});
