// Our own rewrite, case by case, of the upstream Engine.IO v4 and Socket.IO v5
// protocol suites (socketio/engine.io-protocol and socketio/socket.io-protocol,
// test-suite/test-suite.js), run against `cargo run --example
// socketio-conformance` (the server's Engine.IO/Socket.IO code: a bare
// Engine.IO echo at /engine.io/, the Socket.IO echo handlers at /socket.io/).
// The upstream code is not copied; the behaviours checked are the same.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import WebSocket from 'ws';
import { REPO_ROOT } from '../../clients/js/test/helpers/server.mjs';

const BIN =
  process.env.TEST_SOCKETIO_CONFORMANCE_BIN ?? join(REPO_ROOT, 'target/debug/examples/socketio-conformance');
const PING_INTERVAL = 300;
const PING_TIMEOUT = 200;
const SEP = '\x1e';

let child;
let URL;
let WS_URL;

before(async () => {
  if (!existsSync(BIN)) {
    throw new Error(`${BIN} missing: cargo build -p tidings --example socketio-conformance`);
  }
  child = spawn(BIN, ['--listen', '127.0.0.1:0'], { stdio: ['ignore', 'pipe', 'inherit'] });
  const address = await new Promise((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      const m = /listening on (\S+)/.exec(out);
      if (m) resolve(m[1]);
    });
    child.once('exit', (code) => reject(new Error(`exited with ${code}`)));
  });
  URL = `http://${address}`;
  WS_URL = `ws://${address}`;
});

after(() => child?.kill());

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * The next event of `type`. Messages are queued from the socket's opening, so
 * two frames that arrive in one TCP read are not missed between awaits.
 */
function waitFor(socket, type) {
  if (type === 'message' && socket.inbox) {
    if (socket.inbox.length > 0) return Promise.resolve({ data: socket.inbox.shift() });
    return new Promise((resolve) => socket.waiters.push(resolve));
  }
  return new Promise((resolve) => socket.addEventListener(type, resolve, { once: true }));
}

function open(query = 'EIO=4&transport=websocket', path = 'socket.io') {
  const socket = new WebSocket(`${WS_URL}/${path}/?${query}`);
  socket.binaryType = 'arraybuffer';
  socket.on('error', () => {});
  socket.inbox = [];
  socket.waiters = [];
  socket.addEventListener('message', (event) => {
    const data = typeof event.data === 'string' ? event.data : event.data;
    const waiter = socket.waiters.shift();
    if (waiter) waiter({ data });
    else socket.inbox.push(data);
  });
  return socket;
}

/** Messages except pings, `count` of them. */
async function waitForPackets(socket, count) {
  const packets = [];
  while (packets.length < count) {
    const { data } = await waitFor(socket, 'message');
    if (data !== '2') packets.push(data);
  }
  return packets;
}

async function initLongPollingSession(path = 'socket.io') {
  const response = await fetch(`${URL}/${path}/?EIO=4&transport=polling`);
  const text = await response.text();
  return JSON.parse(text.substring(1)).sid;
}

const poll = (path, sid, extra = '') => fetch(`${URL}/${path}/?EIO=4&transport=polling&sid=${sid}${extra}`);
const push = (path, sid, body) =>
  fetch(`${URL}/${path}/?EIO=4&transport=polling&sid=${sid}`, { method: 'POST', body });

async function initSocketIOConnection() {
  const socket = open();
  await waitFor(socket, 'message'); // Engine.IO handshake
  socket.send('40');
  await waitFor(socket, 'message'); // Socket.IO handshake
  await waitFor(socket, 'message'); // auth packet
  return socket;
}

function checkHandshake(value, upgrades) {
  assert.deepEqual(Object.keys(value).sort(), ['maxPayload', 'pingInterval', 'pingTimeout', 'sid', 'upgrades']);
  assert.equal(typeof value.sid, 'string');
  assert.deepEqual(value.upgrades, upgrades);
  assert.equal(value.pingInterval, PING_INTERVAL);
  assert.equal(value.pingTimeout, PING_TIMEOUT);
  assert.equal(value.maxPayload, 1000000);
}

describe('Engine.IO protocol', () => {
  describe('handshake', () => {
    test('polling: opens a session', async () => {
      const response = await fetch(`${URL}/engine.io/?EIO=4&transport=polling`);
      assert.equal(response.status, 200);
      const text = await response.text();
      assert.ok(text.startsWith('0'));
      checkHandshake(JSON.parse(text.substring(1)), ['websocket']);
    });
    test("polling: invalid 'EIO' → 400", async () => {
      assert.equal((await fetch(`${URL}/engine.io/?transport=polling`)).status, 400);
      assert.equal((await fetch(`${URL}/engine.io/?EIO=abc&transport=polling`)).status, 400);
    });
    test("polling: invalid 'transport' → 400", async () => {
      assert.equal((await fetch(`${URL}/engine.io/?EIO=4`)).status, 400);
      assert.equal((await fetch(`${URL}/engine.io/?EIO=4&transport=abc`)).status, 400);
    });
    test('polling: invalid request method → 400', async () => {
      const url = `${URL}/engine.io/?EIO=4&transport=polling`;
      assert.equal((await fetch(url, { method: 'post' })).status, 400);
      assert.equal((await fetch(url, { method: 'put' })).status, 400);
    });
    test('websocket: opens a session', async () => {
      const socket = open(undefined, 'engine.io');
      const { data } = await waitFor(socket, 'message');
      assert.ok(data.startsWith('0'));
      checkHandshake(JSON.parse(data.substring(1)), []);
      socket.close();
    });
    test("websocket: invalid 'EIO' is closed", async () => {
      await Promise.all([waitFor(open('transport=websocket', 'engine.io'), 'close'), waitFor(open('EIO=abc&transport=websocket', 'engine.io'), 'close')]);
    });
    test("websocket: invalid 'transport' is closed", async () => {
      await Promise.all([waitFor(open('EIO=4', 'engine.io'), 'close'), waitFor(open('EIO=4&transport=abc', 'engine.io'), 'close')]);
    });
  });

  describe('message', () => {
    test('polling: one plain text packet', async () => {
      const sid = await initLongPollingSession('engine.io');
      const pushed = await push('engine.io', sid, '4hello');
      assert.equal(pushed.status, 200);
      assert.equal(await pushed.text(), 'ok');
      const response = await poll('engine.io', sid);
      assert.equal(response.status, 200);
      assert.equal(await response.text(), '4hello');
    });
    test('polling: several plain text packets', async () => {
      const sid = await initLongPollingSession('engine.io');
      const pushed = await push('engine.io', sid, `4test1${SEP}4test2${SEP}4test3`);
      assert.equal(await pushed.text(), 'ok');
      assert.equal(await (await poll('engine.io', sid)).text(), `4test1${SEP}4test2${SEP}4test3`);
    });
    test('polling: plain text and binary packets', async () => {
      const sid = await initLongPollingSession('engine.io');
      const pushed = await push('engine.io', sid, `4hello${SEP}bAQIDBA==`);
      assert.equal(await pushed.text(), 'ok');
      assert.equal(await (await poll('engine.io', sid)).text(), `4hello${SEP}bAQIDBA==`);
    });
    test('polling: an invalid packet closes the session', async () => {
      const sid = await initLongPollingSession('engine.io');
      const pushed = await push('engine.io', sid, 'abc');
      assert.equal(pushed.status, 400);
      assert.equal((await poll('engine.io', sid)).status, 400);
    });
    test('polling: duplicate polls close the session', async () => {
      const sid = await initLongPollingSession('engine.io');
      const responses = await Promise.all([poll('engine.io', sid), sleep(5).then(() => poll('engine.io', sid, '&t=burst'))]);
      assert.equal(responses[0].status, 200);
      assert.equal(await responses[0].text(), '1');
      assert.ok([400, 500].includes(responses[1].status));
      assert.equal((await poll('engine.io', sid)).status, 400);
    });
    test('websocket: a plain text packet', async () => {
      const socket = open(undefined, 'engine.io');
      await waitFor(socket, 'message');
      socket.send('4hello');
      const { data } = await waitFor(socket, 'message');
      assert.equal(data, '4hello');
      socket.close();
    });
    test('websocket: a binary packet', async () => {
      const socket = open(undefined, 'engine.io');
      await waitFor(socket, 'message');
      socket.send(Uint8Array.from([1, 2, 3, 4]));
      const { data } = await waitFor(socket, 'message');
      assert.deepEqual(new Uint8Array(data), Uint8Array.from([1, 2, 3, 4]));
      socket.close();
    });
    test('websocket: an invalid packet closes the session', async () => {
      const socket = open(undefined, 'engine.io');
      await waitFor(socket, 'message');
      socket.send('abc');
      await waitFor(socket, 'close');
    });
  });

  describe('heartbeat', () => {
    test('polling: ping every pingInterval, answered by pong', async () => {
      const sid = await initLongPollingSession('engine.io');
      for (let i = 0; i < 3; i++) {
        const response = await poll('engine.io', sid);
        assert.equal(response.status, 200);
        assert.equal(await response.text(), '2');
        assert.equal((await push('engine.io', sid, '3')).status, 200);
      }
    });
    test('polling: no pong within pingTimeout closes the session', async () => {
      const sid = await initLongPollingSession('engine.io');
      await sleep(PING_INTERVAL + PING_TIMEOUT + 100);
      assert.equal((await poll('engine.io', sid)).status, 400);
    });
    test('websocket: ping every pingInterval, answered by pong', async () => {
      const socket = open(undefined, 'engine.io');
      await waitFor(socket, 'message');
      for (let i = 0; i < 3; i++) {
        const { data } = await waitFor(socket, 'message');
        assert.equal(data, '2');
        socket.send('3');
      }
      socket.close();
    });
    test('websocket: no pong closes the session', async () => {
      const socket = open(undefined, 'engine.io');
      await waitFor(socket, 'close');
    });
  });

  describe('close', () => {
    test('polling: a close packet ends the session; the pending poll gets noop', async () => {
      const sid = await initLongPollingSession('engine.io');
      const [pollResponse] = await Promise.all([poll('engine.io', sid), push('engine.io', sid, '1')]);
      assert.equal(pollResponse.status, 200);
      assert.equal(await pollResponse.text(), '6');
      assert.equal((await poll('engine.io', sid)).status, 400);
    });
    test('websocket: a close packet ends the session', async () => {
      const socket = open(undefined, 'engine.io');
      await waitFor(socket, 'message');
      socket.send('1');
      await waitFor(socket, 'close');
    });
  });

  describe('upgrade', () => {
    test('polling → websocket', async () => {
      const sid = await initLongPollingSession('engine.io');
      const socket = open(`EIO=4&transport=websocket&sid=${sid}`, 'engine.io');
      await waitFor(socket, 'open');
      socket.send('2probe');
      assert.equal((await waitFor(socket, 'message')).data, '3probe');
      const response = await poll('engine.io', sid);
      assert.equal(response.status, 200);
      assert.equal(await response.text(), '6');
      socket.send('5');
      socket.send('4hello');
      const { data } = await waitFor(socket, 'message');
      assert.equal(data, '4hello');
      socket.close();
    });
    test('HTTP requests with the sid are refused after the upgrade', async () => {
      const sid = await initLongPollingSession('engine.io');
      const socket = open(`EIO=4&transport=websocket&sid=${sid}`, 'engine.io');
      await waitFor(socket, 'open');
      socket.send('2probe');
      assert.equal((await waitFor(socket, 'message')).data, '3probe');
      socket.send('5');
      assert.equal((await waitFor(socket, 'message')).data, '6');
      assert.equal((await poll('engine.io', sid)).status, 400);
      socket.close();
    });
    test('a second WebSocket with the sid is refused after the upgrade', async () => {
      const sid = await initLongPollingSession('engine.io');
      const socket = open(`EIO=4&transport=websocket&sid=${sid}`, 'engine.io');
      await waitFor(socket, 'open');
      socket.send('2probe');
      assert.equal((await waitFor(socket, 'message')).data, '3probe');
      socket.send('5');
      assert.equal((await waitFor(socket, 'message')).data, '6');
      await waitFor(open(`EIO=4&transport=websocket&sid=${sid}`, 'engine.io'), 'close');
      socket.close();
    });
  });
});

describe('Socket.IO protocol', () => {
  describe('connect', () => {
    for (const [name, sent, prefix, auth] of [
      ['the main namespace', '40', '40', '{}'],
      ['the main namespace with a payload', '40{"token":"123"}', '40', '{"token":"123"}'],
      ['a custom namespace', '40/custom,', '40/custom,', '{}'],
      ['a custom namespace with a payload', '40/custom,{"token":"abc"}', '40/custom,', '{"token":"abc"}'],
    ]) {
      test(`connects to ${name}`, async () => {
        const socket = open();
        await waitFor(socket, 'message');
        socket.send(sent);
        const { data } = await waitFor(socket, 'message');
        assert.ok(data.startsWith(prefix), data);
        const handshake = JSON.parse(data.substring(prefix.length));
        assert.deepEqual(Object.keys(handshake), ['sid']);
        const authPacket = await waitFor(socket, 'message');
        const ns = prefix === '40' ? '' : '/custom,';
        assert.equal(authPacket.data, `42${ns}["auth",${auth}]`);
        socket.close();
      });
    }
    test('refuses an unknown namespace', async () => {
      const socket = open();
      await waitFor(socket, 'message');
      socket.send('40/random');
      const { data } = await waitFor(socket, 'message');
      assert.equal(data, '44/random,{"message":"Invalid namespace"}');
      socket.close();
    });
    test('closes on an invalid handshake', async () => {
      const socket = open();
      await waitFor(socket, 'message');
      socket.send('4abc');
      await waitFor(socket, 'close');
    });
    test('closes when no namespace is joined within connectTimeout', async () => {
      const socket = open();
      await waitFor(socket, 'message');
      const started = Date.now();
      // Answer pings, so only the connect timeout can close it.
      socket.on('message', (d) => String(d) === '2' && socket.send('3'));
      await waitFor(socket, 'close');
      assert.ok(Date.now() - started >= 900, `closed after ${Date.now() - started} ms`);
    });
  });

  describe('disconnect', () => {
    test('leaving the main namespace closes the connection', async () => {
      const socket = await initSocketIOConnection();
      socket.send('41');
      await waitFor(socket, 'close');
    });
    test('connect then disconnect from a custom namespace; the main one still answers', async () => {
      const socket = await initSocketIOConnection();
      socket.send('40/custom');
      await waitFor(socket, 'message');
      await waitFor(socket, 'message');
      socket.send('41/custom');
      socket.send('42["message","message to main namespace"]');
      const [data] = await waitForPackets(socket, 1);
      assert.equal(data, '42["message-back","message to main namespace"]');
      socket.close();
    });
  });

  describe('message', () => {
    test('a plain-text packet', async () => {
      const socket = await initSocketIOConnection();
      socket.send('42["message",1,"2",{"3":[true]}]');
      const [data] = await waitForPackets(socket, 1);
      assert.equal(data, '42["message-back",1,"2",{"3":[true]}]');
      socket.close();
    });
    test('a packet with binary attachments', async () => {
      const socket = await initSocketIOConnection();
      socket.send('452-["message",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]');
      socket.send(Uint8Array.from([1, 2, 3]));
      socket.send(Uint8Array.from([4, 5, 6]));
      const packets = await waitForPackets(socket, 3);
      assert.equal(packets[0], '452-["message-back",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]');
      assert.deepEqual(new Uint8Array(packets[1]), Uint8Array.from([1, 2, 3]));
      assert.deepEqual(new Uint8Array(packets[2]), Uint8Array.from([4, 5, 6]));
      socket.close();
    });
    test('a plain-text packet with an ack', async () => {
      const socket = await initSocketIOConnection();
      socket.send('42456["message-with-ack",1,"2",{"3":[false]}]');
      const [data] = await waitForPackets(socket, 1);
      assert.equal(data, '43456[1,"2",{"3":[false]}]');
      socket.close();
    });
    test('a packet with binary attachments and an ack', async () => {
      const socket = await initSocketIOConnection();
      socket.send('452-789["message-with-ack",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]');
      socket.send(Uint8Array.from([1, 2, 3]));
      socket.send(Uint8Array.from([4, 5, 6]));
      const packets = await waitForPackets(socket, 3);
      assert.equal(packets[0], '462-789[{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]');
      assert.deepEqual(new Uint8Array(packets[1]), Uint8Array.from([1, 2, 3]));
      assert.deepEqual(new Uint8Array(packets[2]), Uint8Array.from([4, 5, 6]));
      socket.close();
    });
    for (const [why, packet] of [
      ['unknown packet type', '4abc'],
      ['invalid payload format', '42{}'],
      ['invalid ack id', '42abc["message-with-ack",1,"2",{"3":[false]}]'],
    ]) {
      test(`closes upon invalid format (${why})`, async () => {
        const socket = await initSocketIOConnection();
        socket.send(packet);
        await waitFor(socket, 'close');
      });
    }
  });
});
