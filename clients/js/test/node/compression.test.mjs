// permessage-deflate between @tidings/client (with `ws`) and a real server:
// negotiated, and events of every size arrive intact.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import { makeClient } from '../helpers/client.mjs';
import { startServer, waitFor } from '../helpers/server.mjs';

/** `ws`, keeping every socket the client opens so the test can read `extensions`. */
function recordingWebSocket() {
  const sockets = [];
  class RecordingWebSocket extends WebSocket {
    constructor(...args) {
      super(...args);
      sockets.push(this);
    }
  }
  return { RecordingWebSocket, sockets };
}

async function metric(server, name) {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  const m = new RegExp(`^${name}\\s+(\\d+)`, 'm').exec(text);
  return m ? Number(m[1]) : 0;
}

describe('permessage-deflate', () => {
  let server;
  before(async () => {
    server = await startServer();
  });
  after(() => server.stop());

  test('the SDK negotiates it with ws, and small and large events arrive intact', async () => {
    const { RecordingWebSocket, sockets } = recordingWebSocket();
    const { client } = makeClient(server, { WebSocket: RecordingWebSocket });
    const events = [];
    const sub = client.subscribe('workspace:acme:compressed', (e) => events.push(e));
    await waitFor(() => sub.state === 'subscribed', { message: 'subscribed' });
    assert.match(sockets.at(-1).extensions, /permessage-deflate/);
    const small = { id: 1 };
    const rows = Array.from({ length: 400 }, (_, i) => ({ id: `row_${i}`, status: i % 3 ? 'open' : 'closed', n: i }));
    const large = { rows, note: 'é✓ unicode survives' };
    await server.publish('workspace:acme:compressed', 'small', small);
    await server.publish('workspace:acme:compressed', 'large', large);
    await waitFor(() => events.length === 2, { message: 'two events' });
    assert.deepEqual(events[0].data, small);
    assert.deepEqual(events[1].data, large);
    assert.equal(await metric(server, 'tidings_ws_deflate_total'), 1);
    client.close();
  });
});
