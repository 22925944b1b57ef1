// socket.io-client 4.8 (its browser bundle, unchanged) in Debian's Chromium,
// on a page of another origin than the server (so CORS is exercised), against
// the real binary: rooms on connect, subscribe with an ack, polling only and
// the upgrade to WebSocket, recovery after the transport drops.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { startServer, waitFor } from '../../clients/js/test/helpers/server.mjs';

const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
// The package's exports do not name its browser bundle; it ships in dist/.
const BUNDLE = join(dirname(fileURLToPath(import.meta.url)), 'node_modules/socket.io-client/dist/socket.io.min.js');

const PAGE = `<!doctype html><html><head><meta charset="utf-8"><title>socket.io</title>
<script src="/socket.io.min.js"></script></head><body><script>
  window.events = [];
  window.start = ({ url, token, transports }) => {
    window.socket = io(url, { auth: { token }, transports, reconnectionDelay: 100, reconnectionDelayMax: 300 });
    window.socket.onAny((name, data) => { if (!name.startsWith('tidings:')) window.events.push(name + ':' + JSON.stringify(data)); });
    return new Promise((resolve, reject) => {
      window.socket.once('connect', () => resolve(window.socket.id));
      window.socket.once('connect_error', (e) => reject(new Error(e.message)));
    });
  };
  window.ready = true;
</script></body></html>`;

async function servePage() {
  const server = createServer((req, res) => {
    if (req.url === '/socket.io.min.js') {
      res.writeHead(200, { 'content-type': 'text/javascript' });
      res.end(readFileSync(BUNDLE));
      return;
    }
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end(PAGE);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return { url: `http://localhost:${server.address().port}/`, close: () => server.close() };
}

describe('socket.io-client in Chromium', () => {
  let server;
  let page;
  let pages;
  let browser;
  before(async () => {
    if (!existsSync(CHROMIUM)) throw new Error(`Chromium not found at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM_BIN)`);
    server = await startServer();
    pages = await servePage();
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
    });
  });
  after(async () => {
    await browser?.close();
    pages?.close();
    await server?.stop();
  });

  async function openPage(claims, transports) {
    page = await browser.newPage();
    await page.goto(pages.url);
    await page.waitForFunction(() => window.ready === true);
    const id = await page.evaluate((args) => window.start(args), {
      url: server.url,
      token: server.token(claims),
      transports,
    });
    assert.match(id, /^c_/);
    return page;
  }

  const events = (p) => p.evaluate(() => window.events.slice());

  test('connects, gets its rooms, subscribes with an ack, upgrades to WebSocket, recovers after a drop', async () => {
    const p = await openPage({ sub: 'u-browser', workspaces: ['acme'] }, undefined);
    await waitFor(async () => (await p.evaluate(() => window.socket.io.engine.transport.name)) === 'websocket', {
      message: 'upgrade to websocket',
    });
    const ack = await p.evaluate(() => window.socket.emitWithAck('subscribe', 'workspace:acme:approval:b1'));
    assert.equal(ack.ok, true);
    await server.publish('workspace:acme', 'approval.created', { n: 1 });
    await server.publish('workspace:other', 'approval.created', { n: 99 });
    await server.publish('workspace:acme:approval:b1', 'approval.updated', { n: 2 });
    await waitFor(async () => (await events(p)).length === 2, { message: 'two events' });
    await p.evaluate(() => window.socket.io.engine.close());
    await server.publish('workspace:acme:approval:b1', 'approval.updated', { n: 3 });
    await waitFor(async () => p.evaluate(() => window.socket.connected), { message: 'reconnected' });
    assert.equal(await p.evaluate(() => window.socket.recovered), true);
    await waitFor(async () => (await events(p)).length === 3, { message: 'the missed event' });
    assert.deepEqual(await events(p), [
      'approval.created:{"n":1}',
      'approval.updated:{"n":2}',
      'approval.updated:{"n":3}',
    ]);
    await p.close();
  });

  test('polling only (WebSocket blocked) receives events', async () => {
    const p = await openPage({ sub: 'u-browser-poll', workspaces: ['acme'] }, ['polling']);
    assert.equal(await p.evaluate(() => window.socket.io.engine.transport.name), 'polling');
    await server.publish('user:u-browser-poll', 'note.added', { n: 1 });
    await waitFor(async () => (await events(p)).length === 1, { message: 'event over polling' });
    await p.close();
  });
});
