// In real Chromium: the page going offline is reported at once (not after the
// heartbeat watchdog), and an unreachable server costs few console errors and
// one `state` event per reconnect attempt.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { chromiumSuite } from '../helpers/chromium.mjs';
import { sleep, startServer } from '../helpers/server.mjs';

const PAGE = `<!doctype html><html><head><meta charset="utf-8"><title>network</title></head><body>
<script type="module">
  import { TidingsClient } from '/client/index.js';
  window.states = [];
  window.startClient = ({ url, token }) => {
    window.client = new TidingsClient({
      url,
      getToken: async () => token,
      reconnect: { minDelay: 300, maxDelay: 300, maxAttempts: 100 },
    });
    window.client.on('state', (s) => window.states.push({ state: s.state, attempt: s.attempt, online: s.online, at: Date.now() }));
    window.client.subscribe('workspace:acme:net', () => {});
  };
  window.ready = true;
</script></body></html>`;

describe('network conditions in Chromium', () => {
  const suite = chromiumSuite(PAGE);

  test('browser offline → state reconnecting with online=false within 2 s; online → connected again', async () => {
    const context = await suite.browser.newContext();
    try {
      const page = await suite.openPage(context);
      await page.evaluate((args) => window.startClient(args), { url: suite.server.url, token: suite.server.token({ sub: 'u-net' }) });
      await page.waitForFunction(() => window.client.state === 'connected');
      const t0 = Date.now();
      await context.setOffline(true);
      await page.waitForFunction(() => window.client.stateInfo.online === false && window.client.state !== 'connected', null, {
        timeout: 2000,
      });
      assert.ok(Date.now() - t0 < 2000);
      assert.equal(await page.evaluate(() => window.client.state), 'reconnecting');
      await context.setOffline(false);
      await page.waitForFunction(() => window.client.state === 'connected', null, { timeout: 10_000 });
      await page.evaluate(() => window.client.close());
    } finally {
      await context.close();
    }
  });

  test('server down: about one console error and one state event per attempt', async () => {
    const own = await startServer();
    const context = await suite.browser.newContext();
    try {
      const errors = [];
      const page = await suite.openPage(context, (p) =>
        p.on('console', (m) => {
          if (m.type() === 'error') errors.push(m.text());
        }),
      );
      await page.evaluate((args) => window.startClient(args), { url: own.url, token: own.token({ sub: 'u-noise' }) });
      await page.waitForFunction(() => window.client.state === 'connected');
      const before = await page.evaluate(() => window.states.length);
      errors.length = 0;
      await own.stop();
      await sleep(4000);
      const states = (await page.evaluate(() => window.states)).slice(before);
      const attempts = states.at(-1).attempt;
      assert.ok(attempts >= 4, `attempts ${attempts}`);
      // One event for the drop, then one per failed attempt, plus one per change
      // of transport in the attempts that try the whole chain (every fourth).
      const fullChains = Math.ceil(attempts / 4);
      assert.ok(states.length <= attempts + 2 + 3 * fullChains, `${states.length} state events for ${attempts} attempts`);
      // The transport that worked is retried alone; every fourth attempt tries the whole chain (3 requests).
      const allowed = attempts + 2 * Math.ceil(attempts / 4) + 2;
      assert.ok(errors.length <= allowed, `${errors.length} console errors for ${attempts} attempts:\n${errors.join('\n')}`);
      assert.ok(
        states.every((s) => s.state !== 'connecting'),
        'a lost session reports reconnecting, never connecting',
      );
      await page.evaluate(() => window.client.close());
    } finally {
      await context.close();
      await own.stop();
    }
  });
});
