// @tidings/client over SSE and HTTP long-polling, against real server processes
// whose WebSocket (and SSE) endpoints are switched off.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import { TidingsClient } from '../../packages/client/dist/index.js';
import { makeClient } from '../helpers/client.mjs';
import { sleep, startServer, waitFor } from '../helpers/server.mjs';

const NO_WEBSOCKET = { TIDINGS_TRANSPORTS__WEBSOCKET: 'false' };
const POLLING_ONLY = { TIDINGS_TRANSPORTS__WEBSOCKET: 'false', TIDINGS_TRANSPORTS__SSE: 'false' };

function collect(client, channel, options) {
  const events = [];
  const subscribed = [];
  const states = [];
  const sub = client.subscribe(channel, (e) => events.push(e), options);
  sub.on('subscribed', (info) => subscribed.push(info));
  sub.on('state', (s) => states.push(s));
  return { sub, events, subscribed, states };
}

/** Publishes `event` with `{i}` = 1, 2, … on `channel` every `every` ms until stopped; resolves with the count. */
function publisher(server, channel, every = 5) {
  let stop = false;
  let count = 0;
  const done = (async () => {
    while (!stop) {
      count++;
      await server.publish(channel, 'tick', { i: count });
      await sleep(every);
    }
    return count;
  })();
  return {
    get count() {
      return count;
    },
    stop: () => {
      stop = true;
      return done;
    },
  };
}

const range = (n) => Array.from({ length: n }, (_, k) => k + 1);

describe('SSE (WebSocket switched off on the server)', () => {
  let server;
  before(async () => {
    server = await startServer({ env: NO_WEBSOCKET });
  });
  after(() => server.stop());

  test('falls back to SSE: events arrive; publish, history, presence and status go through POST /request', async () => {
    const { client, states } = makeClient(server, { claims: { sub: 'u-sse' } });
    const orders = collect(client, 'workspace:acme:orders');
    const chat = collect(client, 'chat:sse-room');
    const denied = collect(client, 'workspace:globex');
    await waitFor(() => orders.sub.state === 'subscribed' && chat.sub.state === 'subscribed', { message: 'subscribed' });
    await waitFor(() => denied.sub.state === 'error', { message: 'refused channel' });
    assert.equal(denied.sub.error.code, 'permission_denied');
    assert.equal(client.state, 'connected');
    assert.equal(client.transport, 'sse');
    assert.deepEqual([...new Set(states.map((s) => s.transport).filter(Boolean))], ['websocket', 'sse']);
    assert.match(client.clientId, /^c_/);
    assert.equal(client.stateInfo.user, 'u-sse');

    await server.entityEvent({
      workspace: 'acme',
      entity: { type: 'orders', id: 'o1', version: 3 },
      action: 'created',
      data: { total: 5 },
      actor: 'u7',
    });
    await waitFor(() => orders.events.length === 1, { message: 'event over SSE' });
    assert.equal(orders.events[0].event, 'orders.created');
    assert.deepEqual(orders.events[0].data, { total: 5 });
    assert.deepEqual(orders.events[0].meta, { actor: 'u7', entity: { type: 'orders', id: 'o1', version: 3 } });

    // Client publish where the namespace allows it (chat: publish = [{}]); meta.actor is the token's sub.
    const published = await client.publish('chat:sse-room', 'message', { text: 'hi' });
    assert.equal(published.type, 'published');
    assert.equal(published.offset, 1);
    await waitFor(() => chat.events.length === 1, { message: 'own publish over SSE' });
    assert.equal(chat.events[0].meta.actor, 'u-sse');
    await assert.rejects(client.publish('workspace:acme:orders', 'x', {}), { code: 'permission_denied' });
    await assert.rejects(client.publish('nowhere:x', 'x', {}), { code: 'unknown_channel' });

    const history = await client.history('chat:sse-room');
    assert.deepEqual(
      history.events.map((e) => e.data),
      [{ text: 'hi' }],
    );

    // status and presence name this stream (X-Tidings-Client).
    const status = await client.setStatus('busy');
    assert.equal(status.type, 'status');
    assert.equal(status.status, 'busy');
    const presence = await client.presence('workspace:acme:orders');
    assert.deepEqual(
      presence.members.map((m) => [m.user, m.status, m.clients]),
      [['u-sse', 'busy', [client.clientId]]],
    );
    client.close();
  });

  test('subscription changes reopen the stream: channels already on it lose and repeat nothing and are not re-reported', async () => {
    const { client } = makeClient(server, { claims: { sub: 'u-reopen' } });
    const channel = 'workspace:acme:feed';
    const feed = collect(client, channel);
    await waitFor(() => feed.sub.state === 'subscribed');
    const firstClient = client.clientId;
    const pub = publisher(server, channel, 3);
    const others = [];
    for (let k = 0; k < 6; k++) {
      // Add a channel, wait for it, drop the previous one: each change is a new stream.
      const next = collect(client, `workspace:acme:side${k}`);
      others.push(next);
      await waitFor(() => next.sub.state === 'subscribed', { message: `side${k} subscribed` });
      if (k > 0) others[k - 1].sub.unsubscribe();
      await sleep(20);
    }
    const total = await pub.stop();
    await waitFor(() => feed.events.length >= total, { message: `${total} events` });
    await sleep(100);
    assert.deepEqual(
      feed.events.map((e) => e.data.i),
      range(total),
      'every event once, in order',
    );
    assert.equal(feed.subscribed.length, 1, 'the reopens are not reported as (re)subscriptions');
    assert.deepEqual(
      feed.states.map((s) => s.state),
      ['subscribed'],
      'the subscription state did not move',
    );
    assert.equal(feed.sub.state, 'subscribed');
    assert.notEqual(client.clientId, firstClient, 'each stream has its own client id');
    assert.ok(total >= 10, `published ${total} events during the reopens`);
    // The last side channel is live on the current stream.
    await server.publish('workspace:acme:side5', 'x', { ok: true });
    await waitFor(() => others[5].events.length === 1);
    // Dropping every channel closes the stream; subscribing again opens one.
    feed.sub.unsubscribe();
    others[5].sub.unsubscribe();
    await waitFor(() => client.clientId === null, { message: 'no stream, no client id' });
    assert.equal(client.state, 'connected');
    const again = collect(client, channel);
    await waitFor(() => again.sub.state === 'subscribed');
    assert.match(client.clientId, /^c_/);
    client.close();
  });

  test('a channel the reopened stream cannot resume is reported with recovered: false and stays subscribed', async () => {
    const { client } = makeClient(server, { claims: { sub: 'u-gone' } });
    const channel = 'workspace:acme:gone';
    const gone = collect(client, channel);
    await waitFor(() => gone.sub.state === 'subscribed');
    await server.publish(channel, 'seen', {});
    await waitFor(() => gone.events.length === 1);
    // Events this stream is excluded from do not move its resume position; once
    // more of them than the history keeps (100) are published, the position is gone.
    for (let i = 0; i < 101; i++) await server.publish(channel, 'hidden', {}, { exclude_client: client.clientId });
    const other = collect(client, 'workspace:acme:other');
    await waitFor(() => other.sub.state === 'subscribed' && gone.subscribed.length === 2, { message: 'reported' });
    assert.deepEqual(
      gone.subscribed.map((s) => [s.recovered, s.resubscribed]),
      [
        [undefined, false],
        [false, true],
      ],
    );
    assert.equal(gone.subscribed[1].offset, 102);
    assert.equal(gone.sub.state, 'subscribed');
    assert.deepEqual(gone.sub.position, { offset: 102, epoch: gone.subscribed[0].epoch });
    await server.publish(channel, 'live', {});
    await waitFor(() => gone.events.length === 2);
    assert.deepEqual(
      gone.events.map((e) => [e.event, e.offset]),
      [
        ['seen', 1],
        ['live', 103],
      ],
    );
    client.close();
  });

  test('the server closes the stream (disconnect 4000) while events are published: reconnects and recovers each event once, in order', async () => {
    const { client, states } = makeClient(server, {
      claims: { sub: 'u-sse-4000' },
      reconnect: { minDelay: 200, maxDelay: 300, maxAttempts: 10 },
    });
    const channel = 'workspace:acme:stream';
    const { sub, events, subscribed } = collect(client, channel);
    await waitFor(() => sub.state === 'subscribed');
    const pub = publisher(server, channel, 5);
    await waitFor(() => events.length >= 5, { message: 'first events' });
    const firstClient = client.clientId;
    await server.disconnectUser('u-sse-4000', 4000);
    await waitFor(() => client.state === 'reconnecting', { message: 'reconnecting' });
    await waitFor(() => client.state === 'connected' && subscribed.length === 2, { message: 'resubscribed' });
    await sleep(100);
    const total = await pub.stop();
    await waitFor(() => events.length >= total, { message: `${total} events` });
    await sleep(100);
    assert.deepEqual(
      events.map((e) => e.data.i),
      range(total),
    );
    assert.deepEqual(
      events.map((e) => e.offset),
      range(total),
    );
    assert.equal(subscribed[1].recovered, true);
    assert.equal(subscribed[1].resubscribed, true);
    assert.notEqual(client.clientId, firstClient);
    assert.equal(client.transport, 'sse');
    const lost = states.find((s) => s.state === 'reconnecting');
    assert.equal(lost.reason.code, 4000);
    client.close();
  });

  test('disconnect 4502 from the server API stops: disconnected, no reconnect', async () => {
    const { client, tokenRequests } = makeClient(server, { claims: { sub: 'u-sse-4502' } });
    const { sub } = collect(client, 'workspace:acme');
    await waitFor(() => sub.state === 'subscribed');
    await server.disconnectUser('u-sse-4502');
    await waitFor(() => client.state === 'disconnected', { message: 'disconnected' });
    assert.equal(client.stateInfo.reason.code, 4502);
    await sleep(300);
    assert.equal(client.state, 'disconnected');
    assert.deepEqual(tokenRequests, ['initial']);
    client.close();
  });

  test('the token is refreshed before it expires: checked by a ping while there is no stream, through POST /request (X-Tidings-Client) on a stream', async () => {
    // No leeway: an expired token is refused at once.
    const strict = await startServer({ env: { ...NO_WEBSOCKET, TIDINGS_JWT_LEEWAY: '0s' } });
    try {
      const reasons = [];
      const states = [];
      const client = new TidingsClient({
        url: strict.url,
        WebSocket,
        getToken: async (request) => {
          reasons.push(request.reason);
          return strict.token({ sub: 'u-sse-refresh', ttl: 3 });
        },
        refreshMargin: 1500,
        watchNetwork: false,
      });
      client.on('state', (s) => states.push(s.state));
      await waitFor(() => client.state === 'connected');
      assert.equal(client.clientId, null, 'no stream yet');
      await sleep(3500); // past the first token's expiry
      assert.ok(reasons.includes('refresh'), `reasons ${reasons}`);
      const published = await client.publish('chat:refresh', 'm', {});
      assert.equal(published.type, 'published', 'requests carry the refreshed token');

      const { sub, events } = collect(client, 'workspace:acme:refresh');
      await waitFor(() => sub.state === 'subscribed');
      const id = client.clientId;
      const refreshes = reasons.filter((r) => r === 'refresh').length;
      await sleep(3500); // past the expiry of the token the stream was opened with
      assert.ok(reasons.filter((r) => r === 'refresh').length > refreshes, `reasons ${reasons}`);
      assert.equal(client.state, 'connected');
      assert.equal(client.clientId, id, 'same stream: the server extended it');
      assert.ok(!states.includes('reconnecting'), `states ${states}`);
      await strict.publish('workspace:acme:refresh', 'still', {});
      await waitFor(() => events.length === 1);
      client.close();
    } finally {
      await strict.stop();
    }
  });
});

describe('SSE across a server restart', () => {
  test('the resume token of the old process is unrecoverable: recovered false, live events continue', async () => {
    let server = await startServer({ env: NO_WEBSOCKET });
    const { port, secret, apiKey } = server;
    const { client } = makeClient(server, { reconnect: { minDelay: 100, maxDelay: 300, maxAttempts: 50 } });
    const channel = 'workspace:acme:restart';
    const { sub, events, subscribed } = collect(client, channel);
    await waitFor(() => sub.state === 'subscribed');
    await server.publish(channel, 't', { n: 1 });
    await waitFor(() => events.length === 1);
    await server.stop('SIGTERM');
    server = await startServer({ port, secret, apiKey, env: NO_WEBSOCKET });
    try {
      await waitFor(() => subscribed.length === 2, { timeout: 15_000, message: 'resubscribed after restart' });
      assert.equal(subscribed[1].recovered, false);
      assert.notEqual(subscribed[1].epoch, subscribed[0].epoch);
      assert.equal(client.transport, 'sse');
      await server.publish(channel, 't', { n: 2 });
      await waitFor(() => events.length === 2);
      assert.equal(events[1].offset, 1);
      client.close();
    } finally {
      await server.stop();
    }
  });
});

describe('long-polling (WebSocket and SSE switched off)', () => {
  let server;
  before(async () => {
    // No leeway, so a poll with an expired token is refused at once (the refresh test).
    server = await startServer({ env: { ...POLLING_ONLY, TIDINGS_JWT_LEEWAY: '0s' } });
  });
  after(() => server.stop());

  test('falls back to polling: events arrive, a publish during a long poll arrives at once; requests over POST /request', async () => {
    const { client, states } = makeClient(server, { claims: { sub: 'u-poll' } });
    const { sub, events, subscribed } = collect(client, 'workspace:acme:polled');
    const chat = collect(client, 'chat:poll-room');
    await waitFor(() => sub.state === 'subscribed' && chat.sub.state === 'subscribed', { message: 'subscribed' });
    assert.equal(client.transport, 'polling');
    assert.deepEqual([...new Set(states.map((s) => s.transport).filter(Boolean))], ['websocket', 'sse', 'polling']);
    assert.equal(client.clientId, null, 'polling has no client id');
    assert.equal(client.stateInfo.user, 'u-poll');
    assert.equal(subscribed[0].recovered, undefined);

    await sleep(500); // the next poll is now waiting (wait=25)
    const started = Date.now();
    await server.publish('workspace:acme:polled', 'ping', { n: 1 });
    await waitFor(() => events.length === 1, { timeout: 5000, message: 'event over polling' });
    const latency = Date.now() - started;
    assert.ok(latency < 1000, `arrived after ${latency} ms`);
    assert.deepEqual(events[0].data, { n: 1 });

    for (let n = 2; n <= 30; n++) await server.publish('workspace:acme:polled', 'ping', { n });
    await waitFor(() => events.length === 30, { message: '30 events' });
    assert.deepEqual(
      events.map((e) => e.data.n),
      range(30),
    );

    const published = await client.publish('chat:poll-room', 'message', { text: 'polled' });
    assert.equal(published.offset, 1);
    await waitFor(() => chat.events.length === 1);
    assert.equal(chat.events[0].meta.actor, 'u-poll');
    await assert.rejects(client.publish('workspace:acme:polled', 'x', {}), { code: 'permission_denied' });
    const history = await client.history('workspace:acme:polled', { limit: 2 });
    assert.deepEqual(
      history.events.map((e) => e.offset),
      [1, 2],
    );
    await assert.rejects(client.setStatus('away'), { code: 'not_available' });

    const denied = collect(client, 'workspace:globex');
    await waitFor(() => denied.sub.state === 'error');
    assert.equal(denied.sub.error.code, 'permission_denied');
    sub.unsubscribe();
    chat.sub.unsubscribe();
    client.close();
  });

  test('a token refreshed over polling is checked by the server and used for the next polls: no reconnect at expiry', async () => {
    const reasons = [];
    const states = [];
    const client = new TidingsClient({
      url: server.url,
      WebSocket,
      getToken: async (request) => {
        reasons.push(request.reason);
        return server.token({ sub: 'u-poll-refresh', ttl: 3 });
      },
      refreshMargin: 1500,
      watchNetwork: false,
    });
    client.on('state', (s) => states.push(s.state));
    const { sub, events } = collect(client, 'workspace:acme:poll-refresh');
    await waitFor(() => sub.state === 'subscribed');
    // An event every 300 ms ends each long poll, so new polls keep starting past the first token's expiry.
    for (let n = 1; n <= 15; n++) {
      await server.publish('workspace:acme:poll-refresh', 'tick', { n });
      await sleep(300);
    }
    await waitFor(() => events.length === 15);
    assert.ok(reasons.includes('refresh'), `reasons ${reasons}`);
    assert.ok(!states.includes('reconnecting'), `states ${states}`);
    client.close();
  });

  test('after a server restart the polls resume with since and report recovered: false', async () => {
    let own = await startServer({ env: POLLING_ONLY });
    const { port, secret, apiKey } = own;
    const { client } = makeClient(own, { reconnect: { minDelay: 100, maxDelay: 300, maxAttempts: 50 } });
    const { sub, events, subscribed } = collect(client, 'workspace:acme:poll-restart');
    await waitFor(() => sub.state === 'subscribed');
    await own.publish('workspace:acme:poll-restart', 't', { n: 1 });
    await waitFor(() => events.length === 1);
    await own.stop();
    own = await startServer({ port, secret, apiKey, env: POLLING_ONLY });
    try {
      await waitFor(() => subscribed.length === 2, { timeout: 15_000, message: 'resubscribed' });
      assert.equal(subscribed[1].recovered, false);
      await own.publish('workspace:acme:poll-restart', 't', { n: 2 });
      await waitFor(() => events.length === 2);
      client.close();
    } finally {
      await own.stop();
    }
  });
});

describe('HTTP transports: heartbeat and request budget', () => {
  test('SSE: with no channel there is no stream and no watchdog; a stream that goes silent trips it', async () => {
    const server = await startServer({
      env: { ...NO_WEBSOCKET, TIDINGS_CONNECTION_HEARTBEAT: '300ms' },
    });
    try {
      const { client, states } = makeClient(server, { heartbeatGrace: 400 });
      await waitFor(() => client.state === 'connected');
      assert.equal(client.transport, 'sse');
      assert.equal(client.clientId, null, 'no channel, no stream');
      await sleep(1200); // longer than heartbeat + grace
      assert.ok(!states.some((s) => s.state === 'reconnecting'), 'idle: nothing to watch');
      const { sub } = collect(client, 'workspace:acme:hb');
      await waitFor(() => sub.state === 'subscribed');
      const id = client.clientId;
      await sleep(1200); // `: ping` every 300 ms keeps the stream alive
      assert.equal(client.clientId, id, 'same stream');
      server.pause();
      try {
        await waitFor(() => client.state === 'reconnecting', { timeout: 3000, message: 'watchdog' });
        assert.equal(states.find((s) => s.state === 'reconnecting').reason.code, 4001);
      } finally {
        server.resume();
      }
      await waitFor(() => client.state === 'connected' && sub.state === 'subscribed', { message: 'back' });
      client.close();
    } finally {
      await server.stop();
    }
  });

  test('polling: polls over the request budget (429) pause and resume; nothing is lost, no reconnect', async () => {
    const server = await startServer({
      env: { ...POLLING_ONLY, TIDINGS_CONNECTION_REQUESTS_PER_SECOND: '4', TIDINGS_CONNECTION_REQUEST_BURST: '4' },
    });
    try {
      const statuses = [];
      const { client, states } = makeClient(server, {
        claims: { sub: 'u-budget' },
        fetch: async (input, init) => {
          const response = await fetch(input, init);
          statuses.push(response.status);
          return response;
        },
      });
      const { sub, events } = collect(client, 'workspace:acme:budget');
      await waitFor(() => sub.state === 'subscribed');
      for (let n = 1; n <= 40; n++) {
        await server.publish('workspace:acme:budget', 'tick', { n });
        await sleep(40);
      }
      await waitFor(() => events.length === 40, { timeout: 15_000, message: '40 events' });
      assert.deepEqual(
        events.map((e) => e.data.n),
        range(40),
      );
      assert.ok(!states.some((s) => s.state === 'reconnecting'), 'no reconnect');
      assert.ok(statuses.includes(429), 'some polls were over the budget');
      const metrics = await (await fetch(`${server.url}/metrics`)).text();
      const polls = Number(/^tidings_polls_total\s+(\d+)/m.exec(metrics)?.[1]);
      assert.ok(polls < 40, `${polls} polls for 40 events`);
      client.close();
    } finally {
      await server.stop();
    }
  });
});

describe('transport fallback order', () => {
  test('every transport switched off: websocket, sse, polling are tried in order, then failed with http_404', async () => {
    const server = await startServer({
      env: { ...POLLING_ONLY, TIDINGS_TRANSPORTS__POLLING: 'false' },
    });
    try {
      const tried = [];
      const { client } = makeClient(server, { reconnect: { minDelay: 20, maxDelay: 40, maxAttempts: 1 } });
      client.on('state', (s) => {
        if (s.transport && tried.at(-1) !== s.transport) tried.push(s.transport);
      });
      await waitFor(() => client.state === 'failed', { message: 'failed' });
      assert.deepEqual(tried, ['websocket', 'sse', 'polling']);
      assert.equal(client.stateInfo.reason.error, 'http_404');
      client.close();
    } finally {
      await server.stop();
    }
  });

  test('a bad token over SSE stops with 4500 unauthorized, as over WebSocket', async () => {
    const server = await startServer({ env: NO_WEBSOCKET });
    try {
      for (const channels of [[], ['workspace:acme']]) {
        const client = new TidingsClient({
          url: server.url,
          WebSocket,
          getToken: async () => 'not-a-jwt',
          reconnect: { minDelay: 20, maxDelay: 40 },
          watchNetwork: false,
        });
        for (const channel of channels) client.subscribe(channel);
        await waitFor(() => client.state === 'disconnected' && client.stateInfo.reason, { message: 'stopped' });
        assert.equal(client.transport, 'sse');
        assert.equal(client.stateInfo.reason.code, 4500);
        assert.equal(client.stateInfo.reason.error, 'unauthorized');
        client.close();
      }
    } finally {
      await server.stop();
    }
  });
});

describe('HTTP transports: requests in call order', () => {
  test('sse: a stalled request holds the ones behind it only while its caller waits; one that timed out meanwhile is never sent', async () => {
    const server = await startServer({ env: NO_WEBSOCKET });
    try {
      const sent = [];
      // The first publish's POST /request hangs until the SDK gives it up.
      const stallingFetch = async (url, init) => {
        if (String(url).endsWith('/request') && init?.body) {
          const i = JSON.parse(init.body).data?.i;
          sent.push(i);
          if (i === 1) {
            await new Promise((_, reject) => init.signal?.addEventListener('abort', () => reject(new Error('aborted'))));
          }
        }
        return fetch(url, init);
      };
      const { client } = makeClient(server, { claims: { sub: 'u-stall' }, fetch: stallingFetch });
      const { sub } = collect(client, 'chat:stall');
      await waitFor(() => client.state === 'connected' && sub.state === 'subscribed', { message: 'subscribed' });
      assert.equal(client.transport, 'sse');
      const first = assert.rejects(client.publish('chat:stall', 'm', { i: 1 }, { timeout: 1500 }), { code: 'timeout' });
      const second = assert.rejects(client.publish('chat:stall', 'm', { i: 2 }, { timeout: 500 }), { code: 'timeout' });
      const third = client.publish('chat:stall', 'm', { i: 3 });
      await first;
      await second;
      const placed = await third;
      assert.equal(placed.offset, 1, 'the third is the first placed');
      assert.deepEqual(sent, [1, 3], 'the second, timed out while waiting, was never sent');
      client.close();
    } finally {
      await server.stop();
    }
  });

  for (const [name, env] of [
    ['sse', NO_WEBSOCKET],
    ['polling', POLLING_ONLY],
  ]) {
    test(`${name}: a burst of publishes, and publishes queued while reconnecting, are placed in call order`, async () => {
      const server = await startServer({ env });
      try {
        const user = `u-order-${name}`;
        const channel = `chat:order-${name}`;
        const { client } = makeClient(server, { claims: { sub: user }, reconnect: { minDelay: 300, maxDelay: 400 } });
        const { sub } = collect(client, channel);
        await waitFor(() => client.state === 'connected' && sub.state === 'subscribed', { message: 'subscribed' });
        assert.equal(client.transport, name);
        // Each is its own POST /request: concurrent fetches placed them in any order.
        const burst = await Promise.all(range(8).map((i) => client.publish(channel, 'm', { i })));
        assert.deepEqual(
          burst.map((r) => r.offset),
          range(8),
        );
        if (name === 'sse') {
          await server.disconnectUser(user, 4000);
          await waitFor(() => client.state === 'reconnecting');
          const queued = await Promise.all(range(5).map((i) => client.publish(channel, 'm', { i })));
          assert.deepEqual(
            queued.map((r) => r.offset),
            range(5).map((k) => 8 + k),
          );
        }
        client.close();
      } finally {
        await server.stop();
      }
    });
  }
});
