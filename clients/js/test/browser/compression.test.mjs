// In real Chromium: the browser negotiates permessage-deflate with the server
// by itself, and a large compressed event arrives intact.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { chromiumSuite } from '../helpers/chromium.mjs';

const PAGE = `<!doctype html><html><head><meta charset="utf-8"><title>compression</title></head><body>
<script type="module">
  import { TidingsClient } from '/client/index.js';
  // Keeps the page's sockets to read the negotiated extensions.
  window.sockets = [];
  const NativeWebSocket = window.WebSocket;
  window.WebSocket = class extends NativeWebSocket {
    constructor(...args) {
      super(...args);
      window.sockets.push(this);
    }
  };
  window.events = [];
  window.startClient = ({ url, token }) => {
    window.client = new TidingsClient({ url, getToken: async () => token, transports: ['websocket'] });
    window.sub = window.client.subscribe('workspace:acme:compressed', (e) => window.events.push(e));
  };
  window.ready = true;
</script></body></html>`;

describe('permessage-deflate in Chromium', () => {
  const suite = chromiumSuite(PAGE);

  test('negotiated natively; a large event arrives intact', async () => {
    const context = await suite.browser.newContext();
    try {
      const page = await suite.openPage(context);
      await page.evaluate((args) => window.startClient(args), { url: suite.server.url, token: suite.server.token({ sub: 'u-deflate' }) });
      await page.waitForFunction(() => window.sub.state === 'subscribed');
      const extensions = await page.evaluate(() => window.sockets.at(-1).extensions);
      assert.match(extensions, /permessage-deflate/);
      const rows = Array.from({ length: 400 }, (_, i) => ({ id: `row_${i}`, status: i % 3 ? 'open' : 'closed', n: i }));
      await suite.server.publish('workspace:acme:compressed', 'large', { rows });
      await page.waitForFunction(() => window.events.length === 1);
      assert.deepEqual(await page.evaluate(() => window.events[0].data), { rows });
      await page.evaluate(() => window.client.close());
    } finally {
      await context.close();
    }
  });
});
