// Two tidings nodes on one redis-server behind a switchable TCP proxy (a load
// balancer's part): socket.io-client on node A, A is killed (SIGKILL), the
// client reconnects through the proxy to node B and recovers there with
// socket.recovered === true and exactly the events it missed.
// Redis: TEST_REDIS_URL (scripts/test.sh starts one), else a redis-server started here.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { io } from 'socket.io-client';
import { startServer, waitFor, sleep } from '../../clients/js/test/helpers/server.mjs';

async function freePort() {
  return new Promise((resolve) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

let redis;
async function startRedis() {
  if (process.env.TEST_REDIS_URL) return { url: process.env.TEST_REDIS_URL, stop: async () => {} };
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'tidings-sio-redis-'));
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir], {
    stdio: 'ignore',
  });
  await waitFor(
    () =>
      new Promise((resolve) => {
        const socket = connect(port, '127.0.0.1', () => (socket.end(), resolve(true)));
        socket.on('error', () => resolve(false));
      }),
    { message: 'redis-server listening' },
  );
  return {
    url: `redis://127.0.0.1:${port}/0`,
    async stop() {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGKILL');
      await exited;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A TCP proxy whose target port can be switched; connections to a dead target just fail. */
async function startProxy(target) {
  const state = { target };
  const open = new Set();
  const server = createServer((client) => {
    const upstream = connect(state.target, '127.0.0.1');
    open.add(client);
    client.on('close', () => open.delete(client));
    client.pipe(upstream).pipe(client);
    const end = () => (client.destroy(), upstream.destroy());
    client.on('error', end);
    upstream.on('error', end);
    upstream.on('close', end);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    switchTo: (port) => (state.target = port),
    close: () => {
      for (const c of open) c.destroy();
      server.close();
    },
  };
}

before(async () => {
  redis = await startRedis();
});
after(async () => {
  await redis?.stop();
});

for (const transports of [['websocket'], ['polling']]) {
  test(`a client whose node is killed recovers on the other node with nothing lost (${transports[0]})`, async () => {
    const prefix = `sio-failover-${transports[0]}-${Date.now()}`;
    const env = {
      TIDINGS_ENGINE_TYPE: 'redis',
      TIDINGS_ENGINE_REDIS_URL: redis.url,
      TIDINGS_ENGINE_REDIS_PREFIX: prefix,
      TIDINGS_ENGINE_REDIS_TIMEOUT: '500ms',
    };
    const a = await startServer({ env });
    const b = await startServer({ env, secret: a.secret, apiKey: a.apiKey });
    const proxy = await startProxy(a.port);
    const socket = io(proxy.url, {
      auth: { token: a.token({ sub: 'u-failover', workspaces: ['acme'] }) },
      transports,
      reconnectionDelay: 100,
      reconnectionDelayMax: 300,
    });
    const events = [];
    socket.onAny((name, data) => !name.startsWith('tidings:') && events.push(`${name}:${data.n}`));
    try {
      await new Promise((resolve, reject) => (socket.once('connect', resolve), socket.once('connect_error', reject)));
      assert.equal((await socket.emitWithAck('subscribe', 'chat:failover')).ok, true);
      await b.publish('chat:failover', 'before', { n: 0 });
      await b.publish('workspace:acme', 'ws.before', { n: 0 });
      await waitFor(() => events.length === 2, { message: 'events before the kill' });
      await a.stop('SIGKILL');
      for (let n = 1; n <= 3; n++) await b.publish('chat:failover', 'missed', { n });
      await b.publish('workspace:acme', 'ws.missed', { n: 1 });
      proxy.switchTo(b.port);
      await waitFor(() => socket.connected, { timeout: 20_000, message: 'reconnected to node B' });
      assert.equal(socket.recovered, true);
      await waitFor(() => events.length === 6, { message: 'the missed events' });
      await b.publish('chat:failover', 'after', { n: 4 });
      await waitFor(() => events.length === 7, { message: 'a live event on node B' });
      await sleep(200);
      assert.deepEqual(events.slice(0, 2).sort(), ['before:0', 'ws.before:0']);
      const missed = events.slice(2, 6);
      assert.deepEqual(
        missed.filter((e) => e.startsWith('missed')),
        ['missed:1', 'missed:2', 'missed:3'],
      );
      assert.ok(missed.includes('ws.missed:1'), JSON.stringify(events));
      assert.equal(events[6], 'after:4');
    } finally {
      socket.close();
      proxy.close();
      await a.stop('SIGKILL');
      await b.stop();
    }
  });
}
