// @tidings/client against a real Tidings server process (target/debug/tidings).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import { TidingsClient } from '../../packages/client/dist/index.js';
import { makeClient } from '../helpers/client.mjs';
import { sleep, startServer, waitFor } from '../helpers/server.mjs';

function collect(client, channel, options) {
  const events = [];
  const subscribed = [];
  const sub = client.subscribe(channel, (e) => events.push(e), options);
  sub.on('subscribed', (info) => subscribed.push(info));
  return { sub, events, subscribed };
}

describe('connect, subscribe, receive', () => {
  let server;
  before(async () => {
    server = await startServer();
  });
  after(() => server.stop());

  test('receives events published through the server API, with clientId and meta', async () => {
    const { client } = makeClient(server);
    const { sub, events } = collect(client, 'workspace:acme:applications');
    await waitFor(() => sub.state === 'subscribed', { message: 'subscribed' });
    assert.equal(client.state, 'connected');
    assert.equal(client.transport, 'websocket');
    assert.match(client.clientId, /^c_/);
    await server.entityEvent({
      workspace: 'acme',
      entity: { type: 'applications', id: 'a1', version: 2 },
      action: 'updated',
      data: { name: 'x' },
      actor: 'u7',
    });
    await waitFor(() => events.length === 1, { message: 'event' });
    assert.equal(events[0].event, 'applications.updated');
    assert.deepEqual(events[0].data, { name: 'x' });
    assert.deepEqual(events[0].meta.entity, { type: 'applications', id: 'a1', version: 2 });
    assert.equal(events[0].meta.actor, 'u7');
    // exclude_client skips this connection.
    await server.publish('workspace:acme:applications', 'skip', {}, { exclude_client: client.clientId });
    await server.publish('workspace:acme:applications', 'keep', {});
    await waitFor(() => events.length === 2, { message: 'second event' });
    assert.equal(events[1].event, 'keep');
    client.close();
  });

  test('several subscriptions of one channel share one server subscription', async () => {
    const { client } = makeClient(server);
    const a = collect(client, 'workspace:acme:x');
    const b = collect(client, 'workspace:acme:x');
    await waitFor(() => a.sub.state === 'subscribed' && b.sub.state === 'subscribed');
    await server.publish('workspace:acme:x', 'one', 1);
    await waitFor(() => a.events.length === 1 && b.events.length === 1);
    a.sub.unsubscribe();
    await server.publish('workspace:acme:x', 'two', 2);
    await waitFor(() => b.events.length === 2);
    assert.equal(a.events.length, 1);
    assert.equal(a.sub.state, 'unsubscribed');
    client.close();
  });

  test('a refused subscription is in state error with the server code', async () => {
    const { client } = makeClient(server);
    const { sub } = collect(client, 'workspace:other');
    await waitFor(() => sub.state === 'error', { message: 'error state' });
    assert.equal(sub.error.code, 'permission_denied');
    client.close();
  });

  test('a server-side unsubscribe ends the subscription with its reason', async () => {
    const { client } = makeClient(server, { claims: { sub: 'u-unsub' } });
    const { sub } = collect(client, 'workspace:acme:y');
    const states = [];
    sub.on('state', (s) => states.push(s));
    await waitFor(() => sub.state === 'subscribed');
    await server.unsubscribeUser('u-unsub', 'workspace:acme:y');
    await waitFor(() => sub.state === 'unsubscribed', { message: 'unsubscribed' });
    assert.ok(states.at(-1).reason);
    client.close();
  });

  test('history and client publish requests resolve with the reply; errors reject', async () => {
    const { client } = makeClient(server);
    const published = await client.publish('chat:room1', 'msg', { text: 'hi' });
    assert.equal(published.type, 'published');
    assert.equal(published.offset, 1);
    const history = await client.history('chat:room1');
    assert.equal(history.events.length, 1);
    await assert.rejects(client.publish('workspace:acme', 'x', {}), { code: 'permission_denied' });
    // Presence may or may not be on this server build yet: either way the promise
    // settles with the server's answer.
    const status = await client.setStatus('away').catch((err) => err);
    assert.ok(status.type === 'status' || status.code === 'not_available', String(status));
    client.close();
  });
});

describe('reconnect and recovery', () => {
  let server;
  before(async () => {
    server = await startServer();
  });
  after(() => server.stop());

  test('server-forced close 4000: reconnects, resubscribes with since, recovers every missed event once, in order', async () => {
    const { client, states } = makeClient(server, {
      claims: { sub: 'u-4000' },
      reconnect: { minDelay: 300, maxDelay: 400, maxAttempts: 5 },
    });
    const channel = 'workspace:acme:orders';
    const { sub, events, subscribed } = collect(client, channel);
    await waitFor(() => sub.state === 'subscribed');
    for (let i = 1; i <= 3; i++) await server.publish(channel, 'order.created', { i });
    await waitFor(() => events.length === 3);
    const firstClient = client.clientId;

    await server.disconnectUser('u-4000', 4000);
    await waitFor(() => client.state === 'reconnecting', { message: 'reconnecting' });
    // Published while the client is away (it waits ≥ 300 ms before reconnecting).
    for (let i = 4; i <= 8; i++) await server.publish(channel, 'order.created', { i });
    await waitFor(() => client.state === 'connected' && subscribed.length === 2, { message: 'resubscribed' });
    assert.equal(subscribed[1].recovered, true);
    assert.equal(subscribed[1].resubscribed, true);
    for (let i = 9; i <= 10; i++) await server.publish(channel, 'order.created', { i });
    await waitFor(() => events.length >= 10, { message: '10 events' });
    await sleep(100);
    assert.deepEqual(
      events.map((e) => e.data.i),
      [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
    );
    assert.deepEqual(
      events.map((e) => e.offset),
      [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
    );
    assert.notEqual(client.clientId, firstClient);
    const lost = states.find((s) => s.state === 'reconnecting');
    assert.equal(lost.reason.code, 4000);
    client.close();
  });

  test('a presence status set with setStatus is set again on the next connection, before the resubscribe', async () => {
    const { client } = makeClient(server, {
      claims: { sub: 'u-status' },
      reconnect: { minDelay: 200, maxDelay: 300, maxAttempts: 5 },
    });
    const channel = 'workspace:acme';
    const { sub, subscribed } = collect(client, channel);
    await waitFor(() => sub.state === 'subscribed');
    const reply = await client.setStatus('away');
    assert.equal(reply.status, 'away');
    const firstClient = client.clientId;
    await server.disconnectUser('u-status', 4000);
    await waitFor(() => client.state === 'connected' && subscribed.length === 2, { message: 'resubscribed' });
    assert.notEqual(client.clientId, firstClient);
    const { members } = await server.presence(channel);
    const me = members.find((m) => m.user === 'u-status');
    assert.deepEqual(me?.clients, [client.clientId]);
    assert.equal(me?.status, 'away');
    client.close();
  });

  test('heartbeat: pings are answered; a silent server trips the watchdog and the client reconnects', async () => {
    const fast = await startServer({
      env: { TIDINGS_CONNECTION_HEARTBEAT: '300ms', TIDINGS_CONNECTION_PONG_TIMEOUT: '300ms' },
    });
    try {
      const { client, states } = makeClient(fast, { heartbeatGrace: 400 });
      await waitFor(() => client.state === 'connected');
      const id = client.clientId;
      await sleep(1500); // several pings, each answered in time
      assert.equal(client.clientId, id, 'stayed on one connection');
      fast.pause(); // the server stops answering anything
      try {
        await waitFor(() => client.state === 'reconnecting', { timeout: 3000, message: 'watchdog' });
        const dead = states.find((s) => s.state === 'reconnecting');
        assert.equal(dead.reason.code, 4001);
        assert.match(dead.reason.message, /no message within 700 ms/);
      } finally {
        fast.resume();
      }
      await waitFor(() => client.state === 'connected', { timeout: 10_000, message: 'reconnected' });
      client.close();
    } finally {
      await fast.stop();
    }
  });
});

describe('server restart', () => {
  test('reconnects, resubscribes with since, reports recovered: false so the app reloads', async () => {
    let server = await startServer();
    const { port, secret, apiKey } = server;
    const { client, states } = makeClient(server, { reconnect: { minDelay: 100, maxDelay: 300, maxAttempts: 50 } });
    const channel = 'workspace:acme:tickets';
    const { sub, events, subscribed } = collect(client, channel);
    await waitFor(() => sub.state === 'subscribed');
    await server.publish(channel, 't', { n: 1 });
    await waitFor(() => events.length === 1);
    const epoch = subscribed[0].epoch;

    await server.stop('SIGTERM');
    await waitFor(() => client.state === 'reconnecting' || client.state === 'connecting');
    const lost = states.find((s) => s.state === 'reconnecting');
    assert.equal(lost.reason.code, 1012);
    server = await startServer({ port, secret, apiKey });
    try {
      await waitFor(() => subscribed.length === 2, { timeout: 15_000, message: 'resubscribed after restart' });
      assert.equal(subscribed[1].recovered, false, 'history is gone with the in-memory engine');
      assert.notEqual(subscribed[1].epoch, epoch);
      await server.publish(channel, 't', { n: 2 });
      await waitFor(() => events.length === 2);
      assert.equal(events[1].data.n, 2);
      assert.equal(events[1].offset, 1, 'a new epoch starts again at 1');
      client.close();
    } finally {
      await server.stop();
    }
  });
});

describe('giving up and stopping', () => {
  test('failed after maxAttempts against a stopped server; retry() connects once it is back', async () => {
    let server = await startServer();
    const { port, secret, apiKey } = server;
    await server.stop();
    const { client, states } = makeClient(server, { reconnect: { minDelay: 20, maxDelay: 40, maxAttempts: 3 } });
    await waitFor(() => client.state === 'failed', { message: 'failed' });
    const attempts = states.filter((s) => s.state === 'connecting' || s.state === 'failed').map((s) => s.attempt);
    assert.equal(client.stateInfo.attempt, 3);
    assert.ok(attempts.includes(1) && attempts.includes(2), `attempts ${attempts}`);
    await sleep(200);
    assert.equal(client.state, 'failed', 'no attempts after failed');
    assert.equal(client.stateInfo.transport, 'polling', 'the last attempt ended on the last transport');
    server = await startServer({ port, secret, apiKey });
    try {
      const seen = states.length;
      client.retry();
      assert.deepEqual(
        [states[seen]?.state, states[seen]?.transport],
        ['connecting', 'websocket'],
        'the fresh start names the transport it tries first',
      );
      await waitFor(() => client.state === 'connected', { message: 'connected after retry' });
      client.close();
    } finally {
      await server.stop();
    }
  });

  test('retry() while the first connect is failing attempts at once instead of waiting', async () => {
    let server = await startServer();
    const { port, secret, apiKey } = server;
    await server.stop();
    const { client, states } = makeClient(server, { reconnect: { minDelay: 8000, maxDelay: 8000, maxAttempts: 5 } });
    try {
      await waitFor(() => client.state === 'connecting' && client.stateInfo.nextAttemptAt, {
        message: 'waiting before the next attempt',
      });
      assert.ok(client.stateInfo.nextAttemptAt - Date.now() > 4000, 'a long wait is scheduled');
      server = await startServer({ port, secret, apiKey });
      const started = Date.now();
      client.retry();
      await waitFor(() => client.state === 'connected', { timeout: 4000, message: 'connected right after retry()' });
      assert.ok(Date.now() - started < 4000);
      assert.ok(!states.some((s) => s.state === 'failed' || s.state === 'reconnecting'), 'no restart, no reconnecting');
    } finally {
      client.close();
      await server.stop();
    }
  });

  test('close() ends in disconnected with one state event, clientId null', async () => {
    const server = await startServer();
    try {
      const { client, states } = makeClient(server);
      collect(client, 'workspace:acme:closing');
      await waitFor(() => client.state === 'connected');
      assert.match(client.clientId, /^c_/);
      const seen = states.length;
      client.close();
      assert.equal(client.state, 'disconnected');
      assert.equal(client.clientId, null);
      assert.equal(client.stateInfo.previous, 'connected');
      assert.deepEqual(client.stateInfo.reason, { code: 1000, message: 'client closed' });
      assert.equal(client.stateInfo.nextAttemptAt, undefined);
      assert.deepEqual(
        states.slice(seen).map((s) => s.state),
        ['disconnected'],
        'one state event',
      );
      client.close();
      await sleep(100);
      assert.equal(states.length, seen + 1, 'a second close() emits nothing');
      await waitFor(async () => (await server.connections()) === 0, { message: 'socket closed' });
      await assert.rejects(client.publish('chat:r', 'e', {}), { code: 'disconnected' });
    } finally {
      await server.stop();
    }
  });

  test('close 4500 (and 4502) stop: disconnected, no reconnect', async () => {
    const server = await startServer();
    try {
      for (const code of [4500, undefined]) {
        const user = `u-stop-${code}`;
        const { client, tokenRequests } = makeClient(server, { claims: { sub: user } });
        await waitFor(() => client.state === 'connected');
        await server.disconnectUser(user, code);
        await waitFor(() => client.state === 'disconnected', { message: `disconnected after ${code}` });
        assert.equal(client.stateInfo.reason.code, code ?? 4502);
        await sleep(300);
        assert.equal(client.state, 'disconnected');
        assert.equal(tokenRequests.length, 1);
        await assert.rejects(client.publish('chat:r', 'e', {}), { code: 'not_connected' });
        client.close();
      }
      await waitFor(async () => (await server.connections()) === 0, { message: 'no connections' });
    } finally {
      await server.stop();
    }
  });

  test('a token the server refuses in the first message stops with 4500 (unauthorized)', async () => {
    const server = await startServer();
    try {
      const client = new TidingsClient({
        url: server.url,
        WebSocket,
        getToken: async () => 'not-a-jwt',
        reconnect: { minDelay: 20, maxDelay: 40 },
      });
      await waitFor(() => client.state === 'disconnected' && client.stateInfo.reason);
      assert.equal(client.stateInfo.reason.code, 4500);
      assert.equal(client.stateInfo.reason.error, 'unauthorized');
      client.close();
    } finally {
      await server.stop();
    }
  });
});

describe('tokens', () => {
  let server;
  before(async () => {
    server = await startServer();
  });
  after(() => server.stop());

  test('4003 fetches a new token before reconnecting', async () => {
    const { client, tokenRequests } = makeClient(server, { claims: { sub: 'u-4003' } });
    await waitFor(() => client.state === 'connected');
    const { sub } = collect(client, 'workspace:acme');
    await waitFor(() => sub.state === 'subscribed');
    await server.disconnectUser('u-4003', 4003);
    await waitFor(() => tokenRequests.length === 2, { message: 'second token request' });
    assert.deepEqual(tokenRequests, ['initial', 'expired']);
    await waitFor(() => client.state === 'connected' && sub.state === 'subscribed');
    // An ordinary reconnect reuses the cached, still valid token.
    await server.disconnectUser('u-4003', 4000);
    await waitFor(() => client.state === 'reconnecting');
    await waitFor(() => client.state === 'connected');
    assert.deepEqual(tokenRequests, ['initial', 'expired']);
    client.close();
  });

  test('a token that expires on the server (real 4003) is replaced and the connection resumes', async () => {
    let calls = 0;
    const client = new TidingsClient({
      url: server.url,
      WebSocket,
      // First token lives 2 s and the app cannot refresh it in band (getToken fails).
      getToken: async (request) => {
        calls++;
        if (request.reason === 'refresh') throw new Error('refresh endpoint down');
        return server.token({ sub: 'u-exp', ttl: calls === 1 ? 2 : 3600 });
      },
      reconnect: { minDelay: 50, maxDelay: 100 },
    });
    const states = [];
    client.on('state', (s) => states.push(s));
    await waitFor(() => client.state === 'connected');
    await waitFor(() => states.some((s) => s.reason?.code === 4003), { timeout: 6000, message: 'close 4003' });
    await waitFor(() => client.state === 'connected', { message: 'reconnected with a new token' });
    client.close();
  });

  test('the token is refreshed in band before it expires: same connection past the old expiry', async () => {
    const reasons = [];
    const client = new TidingsClient({
      url: server.url,
      WebSocket,
      getToken: async (request) => {
        reasons.push(request.reason);
        return server.token({ sub: 'u-refresh', ttl: 3 });
      },
      refreshMargin: 1500,
    });
    await waitFor(() => client.state === 'connected');
    const id = client.clientId;
    await sleep(4500);
    assert.equal(client.state, 'connected');
    assert.equal(client.clientId, id, 'no reconnect');
    assert.ok(reasons.filter((r) => r === 'refresh').length >= 1, `reasons ${reasons}`);
    client.close();
  });

  test('reauthenticate() reconnects with a new token and keeps subscriptions', async () => {
    let user = 'u-a';
    const client = new TidingsClient({
      url: server.url,
      WebSocket,
      getToken: async () => server.token({ sub: user }),
    });
    const { sub, events } = collect(client, 'workspace:acme:re');
    await waitFor(() => sub.state === 'subscribed');
    assert.equal(client.stateInfo.user, 'u-a');
    user = 'u-b';
    client.reauthenticate();
    await waitFor(() => client.state === 'connected' && client.stateInfo.user === 'u-b');
    await waitFor(() => sub.state === 'subscribed');
    await server.publish('workspace:acme:re', 'e', {});
    await waitFor(() => events.length === 1);
    client.close();
  });
});

describe('offline queue', () => {
  let server;
  before(async () => {
    server = await startServer();
  });
  after(() => server.stop());

  test('publish calls made while disconnected are sent in order after reconnect', async () => {
    const { client } = makeClient(server, {
      claims: { sub: 'u-queue' },
      reconnect: { minDelay: 300, maxDelay: 400 },
    });
    const watcher = makeClient(server, { claims: { sub: 'u-watch' } }).client;
    const seen = collect(watcher, 'chat:queue');
    await waitFor(() => client.state === 'connected' && seen.sub.state === 'subscribed');
    await server.disconnectUser('u-queue', 4000);
    await waitFor(() => client.state === 'reconnecting');
    const calls = [];
    for (let i = 0; i < 5; i++) calls.push(client.publish('chat:queue', 'msg', { i }));
    const replies = await Promise.all(calls);
    assert.deepEqual(
      replies.map((r) => r.offset),
      [1, 2, 3, 4, 5],
    );
    await waitFor(() => seen.events.length === 5);
    assert.deepEqual(
      seen.events.map((e) => e.data.i),
      [0, 1, 2, 3, 4],
    );
    assert.equal(seen.events[0].meta.actor, 'u-queue');
    client.close();
    watcher.close();
  });

  test('the queue is bounded and each call times out', async () => {
    const { client } = makeClient(server, {
      claims: { sub: 'u-bounded' },
      offlineQueueSize: 2,
      reconnect: { minDelay: 2000, maxDelay: 3000 },
    });
    await waitFor(() => client.state === 'connected');
    await server.disconnectUser('u-bounded', 4000);
    await waitFor(() => client.state === 'reconnecting');
    const a = client.publish('chat:b', 'e', 1, { timeout: 200 });
    const b = client.publish('chat:b', 'e', 2, { timeout: 200 });
    await assert.rejects(client.publish('chat:b', 'e', 3), { code: 'queue_full' });
    await assert.rejects(a, { code: 'timeout' });
    await assert.rejects(b, { code: 'timeout' });
    client.close();
  });
});

describe('transport fallback', () => {
  test('a WebSocket refused by the origin check (as by a blocking proxy) falls back to SSE', async () => {
    // The upgrade is refused with 403; Node's fetch sends no Origin, so /sse is allowed.
    const server = await startServer({ env: { TIDINGS_ALLOWED_ORIGINS: '["https://app.example"]' } });
    try {
      class BlockedWebSocket extends WebSocket {
        constructor(url, protocols) {
          super(url, protocols, { origin: 'https://elsewhere.example' });
        }
      }
      const tried = [];
      const client = new TidingsClient({
        url: server.url,
        WebSocket: BlockedWebSocket,
        getToken: async () => server.token({}),
        reconnect: { minDelay: 50, maxDelay: 100, maxAttempts: 1 },
      });
      client.on('state', (s) => {
        if (s.transport && tried.at(-1) !== s.transport) tried.push(s.transport);
      });
      const { sub, events } = collect(client, 'workspace:acme:fallback');
      await waitFor(() => sub.state === 'subscribed', { message: 'subscribed over SSE' });
      assert.deepEqual(tried, ['websocket', 'sse']);
      assert.equal(client.transport, 'sse');
      await server.publish('workspace:acme:fallback', 'e', {});
      await waitFor(() => events.length === 1);
      client.close();
    } finally {
      await server.stop();
    }
  });
});
