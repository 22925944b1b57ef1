// The SDK's SSE fallback in real Chromium, cross-origin (the page and the
// Tidings server are on different ports), against a server without WebSocket.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { chromiumSuite } from '../helpers/chromium.mjs';
import { waitFor } from '../helpers/server.mjs';

const PAGE = `<!doctype html><html><head><meta charset="utf-8"><title>sse</title></head><body>
<script type="module">
  import { TidingsClient } from '/client/index.js';
  window.log = { events: {}, subscribed: {}, transports: [] };
  window.startClient = ({ url, token }) => {
    window.client = new TidingsClient({
      url,
      getToken: async () => token,
      reconnect: { minDelay: 100, maxDelay: 300 },
    });
    window.client.on('state', (s) => {
      if (s.transport && window.log.transports.at(-1) !== s.transport) window.log.transports.push(s.transport);
    });
  };
  window.subs = {};
  window.subscribe = (channel) => {
    window.log.events[channel] = [];
    window.log.subscribed[channel] = [];
    const sub = window.client.subscribe(channel, (e) => window.log.events[channel].push(e.offset));
    sub.on('subscribed', (i) => window.log.subscribed[channel].push(i.recovered ?? null));
    window.subs[channel] = sub;
  };
  window.ready = true;
</script></body></html>`;

describe('SSE fallback in Chromium', () => {
  const suite = chromiumSuite(PAGE, { env: { TIDINGS_TRANSPORTS__WEBSOCKET: 'false' } });

  test('cross-origin: falls back to SSE, receives, publishes and sets status over POST /request, recovers after 4000', async () => {
    const context = await suite.browser.newContext();
    try {
      const errors = [];
      const page = await suite.openPage(context, (p) => p.on('pageerror', (err) => errors.push(String(err))));
      await page.evaluate((args) => window.startClient(args), { url: suite.server.url, token: suite.server.token({ sub: 'u-browser' }) });
      const a = 'workspace:acme:browser-a';
      const b = 'chat:browser';
      await page.evaluate((c) => window.subscribe(c), a);
      await page.waitForFunction((c) => window.subs[c].state === 'subscribed', a);
      assert.deepEqual(await page.evaluate(() => window.log.transports), ['websocket', 'sse']);
      const clientId = await page.evaluate(() => window.client.clientId);
      assert.match(clientId, /^c_/, 'X-Tidings-Client is readable cross-origin (connected carries it too)');

      for (let i = 1; i <= 3; i++) await suite.server.publish(a, 'tick', { i });
      await page.waitForFunction((c) => window.log.events[c].length === 3, a);

      // A second channel reopens the stream; the first loses nothing.
      await page.evaluate((c) => window.subscribe(c), b);
      await suite.server.publish(a, 'tick', { i: 4 });
      await page.waitForFunction((c) => window.subs[c].state === 'subscribed', b);
      const reply = await page.evaluate((c) => window.client.publish(c, 'msg', { from: 'browser' }), b);
      assert.equal(reply.type, 'published');
      await page.waitForFunction((c) => window.log.events[c].length === 1, b);
      const status = await page.evaluate(() => window.client.setStatus('away'));
      assert.equal(status.status, 'away');
      const presence = await page.evaluate((c) => window.client.presence(c), a);
      assert.deepEqual(
        presence.members.map((m) => [m.user, m.status]),
        [['u-browser', 'away']],
      );

      await suite.server.disconnectUser('u-browser', 4000);
      for (let i = 5; i <= 8; i++) await suite.server.publish(a, 'tick', { i });
      await page.waitForFunction((c) => window.log.events[c].length >= 8, a, { timeout: 10_000 });
      await waitFor(async () => (await page.evaluate((c) => window.log.subscribed[c].length, a)) === 2, {
        message: 'resubscribed',
      });
      assert.deepEqual(await page.evaluate((c) => window.log.events[c], a), [1, 2, 3, 4, 5, 6, 7, 8]);
      assert.deepEqual(await page.evaluate((c) => window.log.subscribed[c], a), [null, true]);
      assert.equal(await page.evaluate(() => window.client.transport), 'sse');
      assert.deepEqual(errors, []);
      await page.evaluate(() => window.client.close());
    } finally {
      await context.close();
    }
  });
});
