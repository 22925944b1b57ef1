// The client against two Tidings nodes sharing a real redis-server: events
// across nodes, and what the client does when Redis restarts (the server asks
// it to resubscribe; it learns it must reload) or is away when it subscribes
// (`engine_unavailable` is retried until Redis is back).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { makeClient } from '../helpers/client.mjs';
import { sleep, startServer, waitFor } from '../helpers/server.mjs';

async function freePort() {
  return new Promise((resolve) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** A redis-server on a free port in a temporary directory, without persistence. */
async function startRedis() {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'tidings-js-redis-'));
  let child;
  const up = async () => {
    child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir], {
      stdio: 'ignore',
    });
    await waitFor(
      () =>
        new Promise((resolve) => {
          const socket = connect(port, '127.0.0.1', () => {
            socket.end();
            resolve(true);
          });
          socket.on('error', () => resolve(false));
        }),
      { message: 'redis-server listening' },
    );
  };
  const down = async () => {
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await exited;
  };
  await up();
  return {
    url: `redis://127.0.0.1:${port}/0`,
    down,
    async restart() {
      await down();
      await up();
    },
    async stop() {
      await down();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

describe('several nodes on Redis', () => {
  let redis;
  let a;
  let b;
  before(async () => {
    redis = await startRedis();
    const env = {
      TIDINGS_ENGINE_TYPE: 'redis',
      TIDINGS_ENGINE_REDIS_URL: redis.url,
      TIDINGS_ENGINE_REDIS_TIMEOUT: '500ms',
    };
    a = await startServer({ env });
    b = await startServer({ env, secret: a.secret, apiKey: a.apiKey });
  });
  after(async () => {
    await a?.stop();
    await b?.stop();
    await redis?.stop();
  });

  test('an event published on one node reaches a client of the other; a Redis restart makes it resubscribe and report recovered: false', async () => {
    const { client } = makeClient(a, { claims: { sub: 'u-redis' } });
    const events = [];
    const subscribed = [];
    const sub = client.subscribe('workspace:acme', (e) => events.push(e));
    sub.on('subscribed', (info) => subscribed.push(info));
    await waitFor(() => sub.state === 'subscribed', { message: 'subscribed' });
    await b.publish('workspace:acme', 'x.created', { n: 1 });
    await waitFor(() => events.length === 1, { message: 'the event from node b' });
    assert.equal(events[0].offset, 1);

    await redis.restart();
    await waitFor(() => subscribed.length === 2, { timeout: 15_000, message: 'resubscribed after the Redis restart' });
    assert.equal(subscribed[1].recovered, false, 'history was lost with Redis: reload');
    assert.equal(subscribed[1].resubscribed, true);
    assert.equal(client.state, 'connected', 'the connection itself stayed up');
    await waitFor(async () => {
      try {
        await b.publish('workspace:acme', 'x.created', { n: 2 });
        return true;
      } catch {
        return false;
      }
    }, { message: 'publish after the restart' });
    await waitFor(() => events.length === 2, { message: 'the event after the restart' });
    assert.equal(events[1].offset, 1, 'a new epoch starts at offset 1');
    client.close();
  });

  test('a subscribe while Redis is down is retried until Redis is back', async () => {
    const { client } = makeClient(a, { claims: { sub: 'u-retry' } });
    await waitFor(() => client.state === 'connected', { message: 'connected' });
    await redis.down();
    const events = [];
    const sub = client.subscribe('workspace:acme:retry', (e) => events.push(e));
    await sleep(1500);
    assert.notEqual(sub.state, 'subscribed');
    assert.notEqual(sub.state, 'error', 'engine_unavailable is temporary, not an error state');
    await redis.restart();
    await waitFor(() => sub.state === 'subscribed', { timeout: 20_000, message: 'subscribed once Redis is back' });
    await waitFor(async () => {
      try {
        await b.publish('workspace:acme:retry', 'x', {});
        return true;
      } catch {
        return false;
      }
    }, { message: 'publish' });
    await waitFor(() => events.length === 1, { message: 'event' });
    client.close();
  });
});
