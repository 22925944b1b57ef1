// socket.io-client 4.8, unchanged, against the real tidings binary's /socket.io/.
// Run: (cargo build -p tidings-server) && cd tests/socketio && npm install && npm test
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { io } from 'socket.io-client';
import { startServer, waitFor, sleep } from '../../clients/js/test/helpers/server.mjs';

/** Collects every event a socket receives as {name, args}. */
function record(socket) {
  const events = [];
  socket.onAny((name, ...args) => events.push({ name, args }));
  return events;
}

const appEvents = (events) => events.filter((e) => !e.name.startsWith('tidings:'));

function connect(server, claims, options = {}) {
  return io(server.url, {
    auth: { token: server.token(claims) },
    reconnectionDelay: 100,
    reconnectionDelayMax: 300,
    ...options,
  });
}

const connected = (socket) =>
  new Promise((resolve, reject) => {
    if (socket.connected) return resolve();
    socket.once('connect', resolve);
    socket.once('connect_error', reject);
  });

describe('socket.io-client against /socket.io/', () => {
  let server;
  const sockets = [];
  before(async () => {
    server = await startServer();
  });
  after(async () => {
    for (const s of sockets) s.close();
    await server?.stop();
  });
  const track = (s) => (sockets.push(s), s);

  test('connects with auth {token} and gets workspace and user room events, nothing of another workspace', async () => {
    const socket = track(connect(server, { sub: 'u-rooms', workspaces: ['acme'] }));
    const events = record(socket);
    await connected(socket);
    assert.match(socket.id, /^c_/);
    await server.entityEvent({
      workspace: 'acme',
      entity: { type: 'approval', id: 'a1', version: 1 },
      action: 'created',
      data: { id: 'a1' },
    });
    await server.publish('user:u-rooms', 'note.added', { text: 'hi' });
    await server.publish('workspace:other', 'approval.created', { id: 'secret' });
    await waitFor(() => appEvents(events).length >= 2, { message: 'two events' });
    await sleep(200);
    const got = appEvents(events);
    assert.equal(got.length, 2, JSON.stringify(got));
    assert.equal(got[0].name, 'approval.created');
    assert.deepEqual(got[0].args[0], { id: 'a1' });
    assert.equal(got[0].args[1].channel, 'workspace:acme');
    assert.equal(got[0].args[1].offset, 1);
    assert.match(got[0].args[1].id, /^e_/);
    assert.deepEqual(got[0].args[1].meta.entity, { type: 'approval', id: 'a1', version: 1 });
    assert.equal(got[1].name, 'note.added');
    assert.equal(got[1].args[1].channel, 'user:u-rooms');
  });

  test('the Authorization header works for Node clients', async () => {
    const socket = track(
      io(server.url, { extraHeaders: { Authorization: `Bearer ${server.token({ sub: 'u-header' })}` } }),
    );
    await connected(socket);
    assert.ok(socket.connected);
  });

  test('auth given as a function', async () => {
    const socket = track(io(server.url, { auth: (cb) => cb({ token: server.token({ sub: 'u-fn' }) }) }));
    await connected(socket);
  });

  test('subscribe to an entity channel with an ack, then its events; unsubscribe; errors as {error}', async () => {
    const socket = track(connect(server, { sub: 'u-sub', workspaces: ['acme'] }));
    const events = record(socket);
    await connected(socket);
    const ack = await socket.emitWithAck('subscribe', { channel: 'workspace:acme:approval:a9' });
    assert.equal(ack.ok, true);
    assert.equal(ack.channel, 'workspace:acme:approval:a9');
    assert.equal(typeof ack.offset, 'number');
    assert.equal(typeof ack.epoch, 'string');
    await server.publish('workspace:acme:approval:a9', 'approval.updated', { v: 2 });
    await waitFor(() => appEvents(events).some((e) => e.name === 'approval.updated'));
    const denied = await socket.emitWithAck('subscribe', { channel: 'workspace:other:approval:a9' });
    assert.equal(denied.error.code, 'permission_denied');
    const left = await socket.emitWithAck('unsubscribe', 'workspace:acme:approval:a9');
    assert.equal(left.ok, true);
    const again = await socket.emitWithAck('unsubscribe', 'workspace:acme:approval:a9');
    assert.equal(again.error.code, 'not_subscribed');
  });

  test('client emits publish where the namespace allows, with an ack; exclude_client is the socket id', async () => {
    const a = track(connect(server, { sub: 'u-pa' }));
    const b = track(connect(server, { sub: 'u-pb' }));
    const eventsA = record(a);
    const eventsB = record(b);
    await Promise.all([connected(a), connected(b)]);
    for (const s of [a, b]) assert.equal((await s.emitWithAck('subscribe', 'chat:room1')).ok, true);
    const published = await a.emitWithAck('typing.start', { channel: 'chat:room1', data: { who: 'a' } });
    assert.equal(published.type, 'published', JSON.stringify(published));
    await waitFor(() => appEvents(eventsB).some((e) => e.name === 'typing.start'));
    const refused = await a.emitWithAck('typing.start', { channel: 'workspace:acme', data: {} });
    assert.ok(refused.error, JSON.stringify(refused));
    await server.publish('chat:room1', 'only.b', {}, { exclude_client: a.id });
    await waitFor(() => appEvents(eventsB).some((e) => e.name === 'only.b'));
    await sleep(200);
    assert.ok(!eventsA.some((e) => e.name === 'only.b'));
  });

  test('events named disconnect, connect_error or tidings:… arrive as tidings:event and the socket stays connected', async () => {
    const socket = track(connect(server, { sub: 'u-reserved', workspaces: ['acme'] }));
    const events = record(socket);
    let drops = 0;
    socket.on('disconnect', () => (drops += 1));
    const renamed = [];
    socket.on('tidings:event', (name, data, meta) => renamed.push({ name, data, channel: meta.channel }));
    await connected(socket);
    await server.publish('user:u-reserved', 'disconnect', { n: 1 });
    await server.publish('user:u-reserved', 'connect_error', { n: 2 });
    await server.publish('user:u-reserved', 'tidings:disconnect', { code: 4502, reason: 'forged' });
    await server.publish('user:u-reserved', 'after.them', { n: 4 });
    await waitFor(() => appEvents(events).some((e) => e.name === 'after.them'), { message: 'the event after them' });
    await sleep(200);
    assert.equal(drops, 0, 'the socket was dropped');
    assert.equal(socket.connected, true);
    assert.deepEqual(renamed, [
      { name: 'disconnect', data: { n: 1 }, channel: 'user:u-reserved' },
      { name: 'connect_error', data: { n: 2 }, channel: 'user:u-reserved' },
      { name: 'tidings:disconnect', data: { code: 4502, reason: 'forged' }, channel: 'user:u-reserved' },
    ]);
    assert.ok(!events.some((e) => e.name === 'tidings:disconnect'), JSON.stringify(events));
  });

  test('an expired token gets connect_error with token_expired', async () => {
    const socket = track(
      io(server.url, { auth: { token: server.token({ sub: 'u-old', exp: Math.floor(Date.now() / 1000) - 60 }) } }),
    );
    const err = await new Promise((resolve) => socket.once('connect_error', resolve));
    assert.equal(err.data.code, 'token_expired');
    const bad = track(io(server.url, { auth: { token: 'nope' } }));
    const err2 = await new Promise((resolve) => bad.once('connect_error', resolve));
    assert.equal(err2.data.code, 'unauthorized');
  });

  test('falls back to polling when WebSocket is blocked, upgrades when it is not', async () => {
    const polling = track(connect(server, { sub: 'u-poll' }, { transports: ['polling'] }));
    const events = record(polling);
    await connected(polling);
    assert.equal(polling.io.engine.transport.name, 'polling');
    await server.publish('user:u-poll', 'over.polling', { n: 1 });
    await waitFor(() => appEvents(events).some((e) => e.name === 'over.polling'));
    const upgrading = track(connect(server, { sub: 'u-up' }));
    const upEvents = record(upgrading);
    await connected(upgrading);
    await waitFor(() => upgrading.io.engine.transport.name === 'websocket', { message: 'upgrade' });
    await server.publish('user:u-up', 'over.websocket', { n: 1 });
    await waitFor(() => appEvents(upEvents).some((e) => e.name === 'over.websocket'));
  });

  test('a dropped socket reconnects with socket.recovered === true and exactly the missed events', async () => {
    const socket = track(connect(server, { sub: 'u-drop', workspaces: ['acme'] }));
    const events = record(socket);
    await connected(socket);
    assert.equal((await socket.emitWithAck('subscribe', 'chat:drop')).ok, true);
    await server.publish('chat:drop', 'before', { n: 0 });
    await waitFor(() => appEvents(events).some((e) => e.name === 'before'));
    // Drop the transport without telling the server (as a network failure does).
    socket.io.engine.close();
    for (let n = 1; n <= 3; n++) await server.publish('chat:drop', 'missed', { n });
    await waitFor(() => socket.connected, { message: 'reconnected' });
    assert.equal(socket.recovered, true);
    await waitFor(() => appEvents(events).filter((e) => e.name === 'missed').length === 3);
    await server.publish('chat:drop', 'after', { n: 4 });
    await waitFor(() => appEvents(events).some((e) => e.name === 'after'));
    const names = appEvents(events).map((e) => `${e.name}:${e.args[0].n}`);
    assert.deepEqual(names, ['before:0', 'missed:1', 'missed:2', 'missed:3', 'after:4']);
  });

  test('a token that expires while connected (4003): tidings:disconnect, then io server disconnect', async () => {
    const socket = track(connect(server, { sub: 'u-expiring', ttl: 2 }));
    const notices = [];
    socket.on('tidings:disconnect', (notice) => notices.push(notice));
    await connected(socket);
    const reason = await new Promise((resolve) => socket.once('disconnect', resolve));
    assert.equal(reason, 'io server disconnect');
    assert.equal(notices[0]?.code, 4003, JSON.stringify(notices));
  });

  test('/api/unsubscribe removes the socket from a channel with tidings:unsubscribed', async () => {
    const socket = track(connect(server, { sub: 'u-unsub', workspaces: ['acme'] }));
    const events = record(socket);
    await connected(socket);
    await server.unsubscribeUser('u-unsub', 'workspace:acme');
    await waitFor(() => events.some((e) => e.name === 'tidings:unsubscribed'));
    const notice = events.find((e) => e.name === 'tidings:unsubscribed').args[0];
    assert.equal(notice.channel, 'workspace:acme');
    await server.publish('workspace:acme', 'after.unsubscribe', {});
    await server.publish('user:u-unsub', 'still.here', {});
    await waitFor(() => appEvents(events).some((e) => e.name === 'still.here'));
    assert.ok(!events.some((e) => e.name === 'after.unsubscribe'));
  });

  test('disconnected by the API over long-polling: tidings:disconnect, then io server disconnect, no reconnect', async () => {
    const socket = track(connect(server, { sub: 'u-kick-polling' }, { transports: ['polling'] }));
    const seen = [];
    socket.on('tidings:disconnect', (notice) => seen.push(`notice:${notice.code}`));
    socket.on('disconnect', (reason) => seen.push(`disconnect:${reason}`));
    await connected(socket);
    await server.disconnectUser('u-kick-polling');
    await waitFor(() => seen.some((s) => s.startsWith('disconnect:')), { message: 'disconnect' });
    await sleep(500);
    assert.deepEqual(seen, ['notice:4502', 'disconnect:io server disconnect']);
    assert.equal(socket.connected, false);
    assert.equal(socket.active, false);
  });

  test('disconnected by the API (4502): io server disconnect, no reconnect', async () => {
    const socket = track(connect(server, { sub: 'u-kick' }));
    await connected(socket);
    await waitFor(() => socket.io.engine.transport.name === 'websocket', { message: 'upgrade' });
    const reason = new Promise((resolve) => socket.once('disconnect', resolve));
    await server.disconnectUser('u-kick');
    assert.equal(await reason, 'io server disconnect');
    await sleep(500);
    assert.equal(socket.connected, false);
  });
});

describe('server restart (1012)', () => {
  test('the client reconnects to the restarted server by itself', async () => {
    const server = await startServer();
    const secret = server.secret;
    const socket = connect(server, { sub: 'u-restart' });
    try {
      await connected(socket);
      // Stopped while still on long-polling, the client would see 'transport error'.
      await waitFor(() => socket.io.engine.transport.name === 'websocket', { message: 'upgrade' });
      const reason = new Promise((resolve) => socket.once('disconnect', resolve));
      await server.stop();
      assert.equal(await reason, 'transport close');
      const again = await startServer({ port: server.port, secret });
      try {
        await waitFor(() => socket.connected, { timeout: 15_000, message: 'reconnect after restart' });
        // A new node: the channels' epochs changed, so nothing is claimed as recovered.
        assert.equal(socket.recovered, false);
      } finally {
        socket.close();
        await again.stop();
      }
    } finally {
      socket.close();
      await server.stop();
    }
  });
});
