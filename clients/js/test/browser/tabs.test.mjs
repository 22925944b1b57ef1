// shareAcrossTabs in real Chromium against a real Tidings server.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { chromiumSuite } from '../helpers/chromium.mjs';
import { sleep, waitFor } from '../helpers/server.mjs';

const PAGE = `<!doctype html><html><head><meta charset="utf-8"><title>tab</title></head><body>
<script type="module">
  import { TidingsClient } from '/client/index.js';
  window.log = { events: [], states: [], subscribed: [] };
  window.startClient = ({ url, token, channel }) => {
    const client = new TidingsClient({
      url,
      getToken: async () => token,
      shareAcrossTabs: true,
      tabChannelName: 'tidings-test',
      reconnect: { minDelay: 100, maxDelay: 300 },
    });
    client.on('state', (s) => window.log.states.push(s.state));
    const sub = client.subscribe(channel, (e) => window.log.events.push(e.offset));
    sub.on('subscribed', (i) => window.log.subscribed.push(i));
    window.client = client;
    window.sub = sub;
  };
  window.ready = true;
</script></body></html>`;

describe('shareAcrossTabs in Chromium', () => {
  const suite = chromiumSuite(PAGE);

  test('three tabs share one connection; every tab gets every event; closing the leader loses nothing', async () => {
    const context = await suite.browser.newContext();
    const channel = 'workspace:acme:shared';
    const token = suite.server.token({ sub: 'u-tabs' });
    const tabs = [];
    for (let i = 0; i < 3; i++) {
      const page = await suite.openPage(context, (p) => p.on('pageerror', (err) => console.error(`tab ${i} error:`, err)));
      await page.evaluate((args) => window.startClient(args), { url: suite.server.url, token, channel });
      tabs.push(page);
    }
    const leaders = async (list) => (await Promise.all(list.map((p) => p.evaluate(() => window.client.isLeader)))).filter(Boolean).length;
    await waitFor(async () => (await leaders(tabs)) === 1, { message: 'one leader' });
    await waitFor(
      async () => (await Promise.all(tabs.map((p) => p.evaluate(() => window.sub.state)))).every((s) => s === 'subscribed'),
      { message: 'all tabs subscribed' },
    );
    assert.equal(await suite.server.connections(), 1, '/metrics shows one connection for three tabs');
    const refCounts = await Promise.all(tabs.map((p) => p.evaluate((c) => window.client.hub?.refCount(c) ?? null, channel)));
    assert.deepEqual(refCounts.filter((n) => n !== null), [3], 'the leader counts three tabs on the channel');
    const states = await Promise.all(tabs.map((p) => p.evaluate(() => [window.client.state, window.client.clientId])));
    assert.ok(states.every(([s, id]) => s === 'connected' && id === states[0][1]), JSON.stringify(states));

    for (let i = 1; i <= 5; i++) await suite.server.publish(channel, 'tick', { i });
    for (const page of tabs) {
      await page.waitForFunction(() => window.log.events.length >= 5);
    }
    for (const page of tabs) assert.deepEqual(await page.evaluate(() => window.log.events), [1, 2, 3, 4, 5]);

    // Requests from a follower go through the leader.
    const follower = (await Promise.all(tabs.map(async (p) => [p, await p.evaluate(() => window.client.isLeader)]))).find(([, l]) => !l)[0];
    const reply = await follower.evaluate(() => window.client.publish('chat:tabs', 'hello', { from: 'follower' }));
    assert.equal(reply.type, 'published');

    // Close the leader tab while events keep coming.
    const leaderIndex = (await Promise.all(tabs.map((p) => p.evaluate(() => window.client.isLeader)))).indexOf(true);
    const [leader] = tabs.splice(leaderIndex, 1);
    await leader.close();
    for (let i = 6; i <= 15; i++) {
      await suite.server.publish(channel, 'tick', { i });
      await sleep(20);
    }
    await waitFor(async () => (await leaders(tabs)) === 1, { message: 'a new leader' });
    for (let i = 16; i <= 18; i++) await suite.server.publish(channel, 'tick', { i });
    const expected = Array.from({ length: 18 }, (_, k) => k + 1);
    for (const page of tabs) {
      await page.waitForFunction((n) => window.log.events.length >= n, 18, { timeout: 15_000 });
    }
    await sleep(200);
    for (const page of tabs) {
      assert.deepEqual(await page.evaluate(() => window.log.events), expected, 'every event once, in order');
    }
    const counts = await Promise.all(tabs.map((p) => p.evaluate((c) => window.client.hub?.refCount(c) ?? null, channel)));
    assert.deepEqual(counts.filter((n) => n !== null), [2], 'the new leader counts the two remaining tabs');
    const subscribed = await tabs[0].evaluate(() => window.log.subscribed);
    assert.ok(subscribed.some((s) => s.recovered === true), `recovered on the new leader: ${JSON.stringify(subscribed)}`);
    await waitFor(async () => (await suite.server.connections()) === 1, { message: 'one connection after the handover' });
    await context.close();
    await waitFor(async () => (await suite.server.connections()) === 0, { message: 'no connection after all tabs closed' });
  });

  test('the presence status set through the leader carries over to the next leader', async () => {
    const context = await suite.browser.newContext();
    const channel = 'room:status-handover';
    const token = suite.server.token({ sub: 'u-away' });
    const tabs = [];
    for (let i = 0; i < 2; i++) {
      const page = await suite.openPage(context, (p) => p.on('pageerror', (err) => console.error(`tab ${i} error:`, err)));
      await page.evaluate((args) => window.startClient(args), { url: suite.server.url, token, channel });
      tabs.push(page);
    }
    const isLeader = () => Promise.all(tabs.map((p) => p.evaluate(() => window.client.isLeader)));
    await waitFor(async () => (await isLeader()).filter(Boolean).length === 1, { message: 'one leader' });
    await waitFor(
      async () => (await Promise.all(tabs.map((p) => p.evaluate(() => window.sub.state)))).every((s) => s === 'subscribed'),
      { message: 'both tabs subscribed' },
    );
    const status = async () => (await suite.server.presence(channel)).members?.map((m) => `${m.user}:${m.status}`) ?? [];
    assert.deepEqual(await status(), ['u-away:online']);
    // Set by the leader itself: the follower learns it only from the leader's broadcast.
    const leaderIndex = (await isLeader()).indexOf(true);
    const [leader] = tabs.splice(leaderIndex, 1);
    const reply = await leader.evaluate(() => window.client.setStatus('away'));
    assert.equal(reply.status, 'away');
    await waitFor(async () => (await status()).join() === 'u-away:away', { message: 'away before the handover' });
    const before = await tabs[0].evaluate(() => window.client.clientId);
    await leader.close();
    let now = null;
    await waitFor(
      async () => {
        const [lead, state, id] = await tabs[0].evaluate(() => [window.client.isLeader, window.client.state, window.client.clientId]);
        now = id;
        return lead && state === 'connected' && id !== before;
      },
      { message: 'the follower leads a new connection' },
    );
    // Only the new connection listed: its status is its own, not the old one's.
    await waitFor(async () => JSON.stringify((await suite.server.presence(channel)).members?.[0]?.clients) === JSON.stringify([now]), {
      message: 'the new connection alone in the listing',
    });
    assert.deepEqual(await status(), ['u-away:away'], 'still away on the new connection');
    await context.close();
  });
});
