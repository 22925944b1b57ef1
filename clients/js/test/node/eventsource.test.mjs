// The server's SSE endpoint read by a plain EventSource (the `eventsource`
// package, a WHATWG EventSource for Node), not by the SDK: what a browser app
// without the SDK gets.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { EventSource } from 'eventsource';
import { sleep, startServer, waitFor } from '../helpers/server.mjs';

/** Fast reconnects: the stream's `retry:` becomes 100 ms. */
const ENV = { TIDINGS_TRANSPORTS__SSE_RETRY: '100ms' };

/**
 * An EventSource on `channels`. `auth: 'header'` sends the token as
 * `Authorization` through a custom fetch, `'query'` as `?token=`. Records the
 * `Last-Event-ID` header of every request, and every message by name.
 */
function open(server, channels, { user = 'u-es', auth = 'header', lastEventId, names = [] } = {}) {
  const token = server.token({ sub: user });
  const url = new URL(`${server.url}/sse`);
  for (const channel of channels) url.searchParams.append('channel', channel);
  if (auth === 'query') url.searchParams.set('token', token);
  if (lastEventId) url.searchParams.set('last_event_id', lastEventId);
  const requests = [];
  const source = new EventSource(url.toString(), {
    fetch: (input, init) => {
      const headers = { ...init.headers };
      requests.push({ lastEventId: headers['Last-Event-ID'] ?? headers['last-event-id'] });
      if (auth === 'header') headers.Authorization = `Bearer ${token}`;
      return fetch(input, { ...init, headers });
    },
  });
  const log = { connected: [], subscribed: [], unrecoverable: [], disconnect: [], error: [], events: [], unnamed: 0, failures: 0 };
  const parse = (kind) => (e) => log[kind].push({ data: JSON.parse(e.data), lastEventId: e.lastEventId });
  for (const kind of ['connected', 'subscribed', 'unrecoverable', 'disconnect']) source.addEventListener(kind, parse(kind));
  // `error` is both the server's control message (with data) and EventSource's own failure event.
  source.addEventListener('error', (e) => {
    if (typeof e.data === 'string') log.error.push({ data: JSON.parse(e.data) });
    else log.failures++;
  });
  for (const name of names) {
    source.addEventListener(name, (e) => log.events.push({ name, data: JSON.parse(e.data), lastEventId: e.lastEventId }));
  }
  source.addEventListener('message', () => log.unnamed++);
  return { source, log, requests };
}

describe('EventSource against /sse', () => {
  let server;
  before(async () => {
    server = await startServer({ env: ENV });
  });
  after(() => server.stop());

  test('control messages and application events arrive by name; data is the WebSocket envelope; ids are resume tokens', async () => {
    const { source, log } = open(server, ['workspace:acme:es', 'user:u-es', 'workspace:globex'], {
      names: ['orders.created', 'note'],
    });
    try {
      await waitFor(() => log.subscribed.length === 2 && log.error.length === 1, { message: 'subscribed ×2 + error' });
      assert.equal(log.connected.length, 1);
      const connected = log.connected[0].data;
      assert.equal(connected.type, 'connected');
      assert.match(connected.client, /^c_/);
      assert.equal(connected.user, 'u-es');
      assert.deepEqual(
        log.subscribed.map((s) => [s.data.channel, s.data.offset, s.data.recovered]),
        [
          ['workspace:acme:es', 0, undefined],
          ['user:u-es', 0, undefined],
        ],
      );
      for (const s of log.subscribed) assert.ok(s.lastEventId, 'each subscribed carries a resume token');
      // A channel the token may not read does not refuse the stream: it gets an error naming it.
      assert.equal(log.error[0].data.channel, 'workspace:globex');
      assert.equal(log.error[0].data.code, 'permission_denied');

      await server.publish('workspace:acme:es', 'orders.created', { id: 'o1' }, { meta: { actor: 'u7' } });
      await server.publish('user:u-es', 'note', { text: 'for you' });
      await waitFor(() => log.events.length === 2, { message: 'two events' });
      const [order, note] = log.events;
      assert.equal(order.name, 'orders.created');
      assert.equal(order.data.type, 'event');
      assert.equal(order.data.channel, 'workspace:acme:es');
      assert.equal(order.data.offset, 1);
      assert.deepEqual(order.data.data, { id: 'o1' });
      assert.deepEqual(order.data.meta, { actor: 'u7' });
      assert.match(order.data.id, /^e_/);
      assert.equal(note.name, 'note');
      assert.equal(note.data.channel, 'user:u-es');
      assert.notEqual(order.lastEventId, note.lastEventId);
      assert.equal(log.unnamed, 0, 'nothing arrives as an unnamed message');
      assert.equal(log.failures, 0);
    } finally {
      source.close();
    }
  });

  test('the server closes the stream (4000) while events are published: EventSource reconnects with Last-Event-ID and gets each event once, in order', async () => {
    const channel = 'workspace:acme:es-resume';
    const { source, log, requests } = open(server, [channel], { user: 'u-es-4000', auth: 'query', names: ['tick'] });
    try {
      await waitFor(() => log.subscribed.length === 1);
      let stop = false;
      let published = 0;
      const publishing = (async () => {
        while (!stop) {
          published++;
          await server.publish(channel, 'tick', { i: published });
          await sleep(5);
        }
      })();
      await waitFor(() => log.events.length >= 5, { message: 'first events' });
      const before = log.events.at(-1).lastEventId;
      await server.disconnectUser('u-es-4000', 4000);
      await waitFor(() => log.connected.length === 2, { message: 'reconnected by EventSource itself' });
      await sleep(100);
      stop = true;
      await publishing;
      await waitFor(() => log.events.length >= published, { message: `${published} events` });
      await sleep(100);

      assert.deepEqual(
        log.disconnect.map((d) => [d.data.code, d.data.reconnect]),
        [[4000, true]],
      );
      assert.equal(requests.length, 2);
      assert.equal(requests[0].lastEventId, undefined);
      assert.ok(requests[1].lastEventId, 'the reconnect sends Last-Event-ID');
      assert.ok(
        log.events.some((e) => e.lastEventId === requests[1].lastEventId),
        'Last-Event-ID is the id of an event received before the close',
      );
      assert.ok(before);
      assert.equal(log.subscribed[1].data.recovered, true);
      assert.deepEqual(
        log.events.map((e) => e.data.offset),
        Array.from({ length: published }, (_, k) => k + 1),
        'every offset once, in order',
      );
      assert.deepEqual(
        log.events.map((e) => e.data.data.i),
        Array.from({ length: published }, (_, k) => k + 1),
      );

      // `reconnect: false` (4502): the app closes the EventSource, as the docs say.
      source.addEventListener('disconnect', (e) => {
        if (!JSON.parse(e.data).reconnect) source.close();
      });
      await server.disconnectUser('u-es-4000');
      await waitFor(() => log.disconnect.length === 2);
      assert.deepEqual([log.disconnect[1].data.code, log.disconnect[1].data.reconnect], [4502, false]);
      await sleep(300);
      assert.equal(source.readyState, EventSource.CLOSED);
      assert.equal(requests.length, 2, 'no reconnect after reconnect: false');
    } finally {
      source.close();
    }
  });

  test('unrecoverable: a resume token past the channel history (history_gone)', async () => {
    const channel = 'workspace:acme:es-gone';
    const first = open(server, [channel], { user: 'u-es-gone' });
    let lastEventId;
    try {
      await waitFor(() => first.log.subscribed.length === 1);
      lastEventId = first.log.subscribed[0].lastEventId;
    } finally {
      first.source.close();
    }
    // The workspace namespace keeps 100 events.
    for (let i = 1; i <= 101; i++) await server.publish(channel, 'tick', { i });
    const second = open(server, [channel], { user: 'u-es-gone', lastEventId, names: ['tick'] });
    try {
      await waitFor(() => second.log.subscribed.length === 1, { message: 'subscribed' });
      assert.deepEqual(
        second.log.unrecoverable.map((u) => u.data),
        [{ type: 'unrecoverable', channel, epoch: second.log.subscribed[0].data.epoch, offset: 101, reason: 'history_gone' }],
      );
      assert.equal(second.log.subscribed[0].data.recovered, false);
      await server.publish(channel, 'tick', { i: 102 });
      await waitFor(() => second.log.events.length === 1);
      assert.equal(second.log.events[0].data.offset, 102, 'nothing replayed, live from the top');
    } finally {
      second.source.close();
    }
  });
});

describe('EventSource across a server restart', () => {
  test('reconnects by itself; the old process token is unrecoverable (epoch_changed), then live events flow', async () => {
    let server = await startServer({ env: ENV });
    const { port, secret, apiKey } = server;
    const channel = 'workspace:acme:es-restart';
    const { source, log, requests } = open(server, [channel], { names: ['tick'] });
    try {
      await waitFor(() => log.subscribed.length === 1);
      await server.publish(channel, 'tick', { i: 1 });
      await waitFor(() => log.events.length === 1);
      await server.stop('SIGTERM');
      assert.deepEqual(log.disconnect.map((d) => [d.data.code, d.data.reconnect]), [[1012, true]]);
      server = await startServer({ port, secret, apiKey, env: ENV });
      await waitFor(() => log.subscribed.length === 2, { timeout: 15_000, message: 'resubscribed after restart' });
      assert.ok(requests.at(-1).lastEventId, 'resumed with Last-Event-ID');
      assert.deepEqual(
        log.unrecoverable.map((u) => [u.data.channel, u.data.reason]),
        [[channel, 'epoch_changed']],
      );
      assert.equal(log.subscribed[1].data.recovered, false);
      assert.notEqual(log.subscribed[1].data.epoch, log.subscribed[0].data.epoch);
      await server.publish(channel, 'tick', { i: 2 });
      await waitFor(() => log.events.length === 2);
      assert.equal(log.events[1].data.offset, 1, 'a new epoch starts at 1');
    } finally {
      source.close();
      await server.stop();
    }
  });
});
