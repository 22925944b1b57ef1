// Server limits and outages the client must live with: the request rate limit,
// max_message_size, max_channels over SSE, error answers of POST /request
// without an id, a server gone while idle over SSE/polling, token refresh
// failures, and the default of retrying forever.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { makeClient } from '../helpers/client.mjs';
import { sleep, startServer, waitFor } from '../helpers/server.mjs';

const range = (n) => Array.from({ length: n }, (_, i) => i);

function subscribeAll(client, channels) {
  const got = new Map(channels.map((c) => [c, []]));
  const subs = channels.map((channel) => {
    const sub = client.subscribe(channel, (e) => got.get(channel).push(e));
    sub.resubscribed = 0;
    sub.on('subscribed', (info) => {
      if (info.resubscribed) sub.resubscribed += 1;
    });
    return sub;
  });
  return { subs, got };
}

function summary(subs) {
  const counts = {};
  for (const s of subs) {
    const key = s.state + (s.error ? `:${s.error.code}` : '');
    counts[key] = (counts[key] ?? 0) + 1;
  }
  return JSON.stringify(counts);
}

describe('request rate limit (small request_burst)', () => {
  let server;
  before(async () => {
    server = await startServer({
      env: { TIDINGS_CONNECTION_REQUESTS_PER_SECOND: '20', TIDINGS_CONNECTION_REQUEST_BURST: '20' },
    });
  });
  after(() => server.stop());

  test('60 subscribes at once over WebSocket all end subscribed and get events, also after a reconnect', async () => {
    const { client, states } = makeClient(server, { claims: { sub: 'u-burst' }, transports: ['websocket'] });
    const channels = range(60).map((i) => `room:burst-${i}`);
    const { subs, got } = subscribeAll(client, channels);
    await waitFor(() => subs.every((s) => s.state === 'subscribed'), { timeout: 30_000, message: 'every subscription settled' });
    for (const channel of channels) await server.publish(channel, 'one', {});
    await waitFor(() => channels.every((c) => got.get(c).length === 1), { timeout: 10_000, message: 'first events' });

    await server.disconnectUser('u-burst', 4000);
    await waitFor(() => client.state === 'reconnecting', { message: 'reconnecting' });
    await waitFor(() => subs.every((s) => s.resubscribed === 1 && s.state === 'subscribed'), {
      timeout: 30_000,
      message: 'all resubscribed',
    });
    for (const channel of channels) await server.publish(channel, 'two', {});
    await waitFor(() => channels.every((c) => got.get(c).length === 2), { timeout: 10_000, message: 'events after the reconnect' });
    // No 4004 (rate limited too long): one reconnect only, the one asked for.
    assert.deepEqual(
      states.filter((s) => s.state === 'reconnecting').map((s) => s.reason?.code),
      [4000],
    );
    client.close();
  });
});

describe('limits of the default server', () => {
  let server;
  before(async () => {
    server = await startServer();
  });
  after(() => server.stop());

  test('a publish over maxMessageSize rejects with limit_exceeded without being sent; the connection stays', async () => {
    const { client, states } = makeClient(server, { claims: { sub: 'u-big' }, transports: ['websocket'] });
    const sub = client.subscribe('chat:big', () => {});
    await waitFor(() => sub.state === 'subscribed');
    await assert.rejects(client.publish('chat:big', 'x', { s: 'a'.repeat(70_000) }), (err) => {
      assert.equal(err.name, 'TidingsError');
      assert.equal(err.code, 'limit_exceeded');
      return true;
    });
    const published = await client.publish('chat:big', 'x', { s: 'small' });
    assert.equal(published.type, 'published');
    assert.equal(client.state, 'connected');
    assert.ok(!states.some((s) => s.state !== 'connected' && s.previous === 'connected'), 'no close');
    // Just under the limit goes through.
    const near = await client.publish('chat:big', 'x', { s: 'a'.repeat(60_000) });
    assert.equal(near.type, 'published');
    client.close();
  });

  for (const transport of ['sse', 'polling']) {
    test(`${transport}: POST /request answered 413 without an id settles the request at once (limit_exceeded)`, async () => {
      // A client that believes the server takes more than it does.
      const { client } = makeClient(server, {
        claims: { sub: `u-413-${transport}` },
        transports: [transport],
        maxMessageSize: 1_000_000,
        requestTimeout: 8000,
      });
      const sub = client.subscribe('chat:big413', () => {});
      await waitFor(() => sub.state === 'subscribed');
      const start = Date.now();
      await assert.rejects(client.publish('chat:big413', 'x', { s: 'a'.repeat(100_000) }), (err) => {
        assert.equal(err.code, 'limit_exceeded');
        return true;
      });
      assert.ok(Date.now() - start < 3000, `settled after ${Date.now() - start} ms`);
      const published = await client.publish('chat:big413', 'x', { s: 'small' });
      assert.equal(published.type, 'published');
      client.close();
    });
  }

  test('sse: 300 subscriptions before the stream opens: 256 subscribed, the others refused one by one with limit_exceeded', async () => {
    const { client, states } = makeClient(server, { claims: { sub: 'u-sse-300' }, transports: ['sse'] });
    const channels = range(300).map((i) => `room:many-${i}`);
    const { subs, got } = subscribeAll(client, channels);
    await waitFor(() => subs.every((s) => s.state !== 'subscribing'), { timeout: 20_000, message: 'every subscription settled' });
    assert.equal(subs.filter((s) => s.state === 'subscribed').length, 256, summary(subs));
    const refused = subs.filter((s) => s.state === 'error');
    assert.equal(refused.length, 44);
    for (const s of refused) assert.equal(s.error.code, 'limit_exceeded');
    assert.equal(client.state, 'connected');
    assert.ok(!states.some((s) => s.state === 'reconnecting' || s.state === 'failed'), 'no reconnect');
    const live = subs.find((s) => s.state === 'subscribed').channel;
    await server.publish(live, 'hello', {});
    await waitFor(() => got.get(live).length === 1, { message: 'event' });
    client.close();
  });
});

describe('the server crashes while an HTTP transport has no subscription', () => {
  for (const transport of ['sse', 'polling']) {
    test(`${transport}: a publish waits in the queue, the client reconnects, the publish is applied once`, async () => {
      let server = await startServer();
      const { client, states } = makeClient(server, {
        claims: { sub: `u-crash-${transport}` },
        transports: [transport],
        requestTimeout: 20_000,
      });
      await waitFor(() => client.state === 'connected');
      await server.stop('SIGKILL');
      const publish = client.publish('chat:crash', 'x', { n: 1 });
      let settled = false;
      publish.then(
        () => (settled = true),
        () => (settled = true),
      );
      await waitFor(() => client.state !== 'connected', { message: 'left connected' });
      await sleep(300);
      assert.equal(settled, false, 'not rejected while the server is away');
      server = await startServer({ port: server.port, secret: server.secret, apiKey: server.apiKey });
      try {
        const reply = await publish;
        assert.equal(reply.type, 'published');
        assert.equal(client.state, 'connected');
        assert.ok(states.some((s) => s.state === 'reconnecting'));
        const history = await client.history('chat:crash');
        assert.equal(history.events.length, 1);
      } finally {
        client.close();
        await server.stop();
      }
    });
  }
});

describe('token refresh', () => {
  let server;
  before(async () => {
    server = await startServer();
  });
  after(() => server.stop());

  test('a getToken that fails once at refresh time is retried before the token expires: no 4003, same session', async () => {
    const requests = [];
    let failOnce = true;
    const { client, states } = makeClient(server, {
      getToken: async ({ reason }) => {
        requests.push(reason);
        if (reason === 'refresh' && failOnce) {
          failOnce = false;
          throw new Error('token endpoint down');
        }
        return server.token({ sub: 'u-refresh-retry', ttl: 6 });
      },
    });
    const sub = client.subscribe('workspace:acme:refresh', () => {});
    await waitFor(() => sub.state === 'subscribed');
    const session = client.clientId;
    await sleep(8000);
    assert.equal(client.state, 'connected');
    assert.equal(client.clientId, session, 'the same session');
    assert.ok(!states.some((s) => s.state === 'reconnecting'), JSON.stringify(states.map((s) => s.reason)));
    assert.deepEqual(requests.slice(0, 3), ['initial', 'refresh', 'refresh']);
    client.close();
  });
});

describe('default reconnect policy', () => {
  test('retries forever by default: still trying after 15 attempts, connects once the server is back', async () => {
    let server = await startServer();
    const { port, secret, apiKey } = server;
    await server.stop();
    const { client, states } = makeClient(server, { reconnect: { minDelay: 10, maxDelay: 20 } });
    await waitFor(() => client.stateInfo.attempt >= 15, { message: '15 attempts' });
    assert.ok(!states.some((s) => s.state === 'failed'));
    server = await startServer({ port, secret, apiKey });
    try {
      await waitFor(() => client.state === 'connected', { timeout: 10_000, message: 'connected' });
    } finally {
      client.close();
      await server.stop();
    }
  });
});
