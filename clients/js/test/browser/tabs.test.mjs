// shareAcrossTabs in real Chromium against a real Tidings server.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { chromiumSuite } from '../helpers/chromium.mjs';
import { sleep, waitFor } from '../helpers/server.mjs';

const PAGE = `<!doctype html><html><head><meta charset="utf-8"><title>tab</title></head><body>
<script type="module">
  import { TidingsClient } from '/client/index.js';
  window.log = { events: [], states: [], infos: [], subscribed: [] };
  window.startClient = ({ url, token, channel }) => {
    const client = new TidingsClient({
      url,
      getToken: async () => token,
      shareAcrossTabs: true,
      tabChannelName: 'tidings-test',
      reconnect: { minDelay: 100, maxDelay: 300 },
    });
    client.on('state', (s) => {
      window.log.states.push(s.state);
      window.log.infos.push(s);
    });
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

  test('states during a handover: reconnecting then connected, no disconnected; resubscribed; no repeats when a tab joins', async () => {
    const context = await suite.browser.newContext();
    const channel = 'workspace:acme:handover-states';
    const token = suite.server.token({ sub: 'u-handover' });
    const tabs = [];
    const open = async (i) => {
      const page = await suite.openPage(context, (p) => p.on('pageerror', (err) => console.error(`tab ${i} error:`, err)));
      await page.evaluate((args) => window.startClient(args), { url: suite.server.url, token, channel });
      tabs.push(page);
      return page;
    };
    const read = (page) => page.evaluate(() => ({ leader: window.client.isLeader, state: window.client.state, sub: window.sub.state, log: window.log }));
    const allReady = async () => (await Promise.all(tabs.map(read))).every((t) => t.state === 'connected' && t.sub === 'subscribed');
    await open(0);
    await open(1);
    await waitFor(allReady, { message: 'two tabs connected and subscribed' });
    for (const page of tabs) {
      const { log } = await read(page);
      assert.ok(!log.states.includes('disconnected'), `no disconnected on start: ${JSON.stringify(log.infos)}`);
    }
    const [first, second] = await Promise.all(tabs.map(read));
    assert.equal([first, second].filter((t) => t.leader).length, 1, 'one leader');
    const follower = tabs[first.leader ? 1 : 0];
    const before = (await read(follower)).log.infos.length;

    // (c) A tab joining: the leader answers its hello to every tab; the others repeat nothing.
    await open(2);
    await waitFor(allReady, { message: 'the third tab connected and subscribed' });
    await sleep(300);
    const joined = (await read(follower)).log.infos;
    assert.deepEqual(joined.slice(before), [], `no state event in a follower when a tab joins: ${JSON.stringify(joined)}`);
    for (let i = 0; i < joined.length - 1; i++) {
      assert.notDeepEqual(joined[i + 1], joined[i], `consecutive state events differ: ${JSON.stringify(joined)}`);
    }

    await suite.server.publish(channel, 'tick', { i: 1 });
    for (const page of tabs) await page.waitForFunction(() => window.log.events.length >= 1);

    // Handover: close the leader.
    const infos = await Promise.all(tabs.map(read));
    const leaderIndex = infos.findIndex((t) => t.leader);
    const [leader] = tabs.splice(leaderIndex, 1);
    const marks = await Promise.all(tabs.map((p) => p.evaluate(() => [window.log.infos.length, window.log.subscribed.length])));
    const oldClientId = infos[leaderIndex === 0 ? 1 : 0].log.infos.at(-1).clientId;
    await leader.close();
    await suite.server.publish(channel, 'tick', { i: 2 });
    await waitFor(async () => (await Promise.all(tabs.map(read))).filter((t) => t.leader).length === 1, { message: 'a new leader' });
    await waitFor(
      async () =>
        (await Promise.all(tabs.map((p) => p.evaluate(() => [window.client.state, window.client.clientId, window.log.events.length])))).every(
          ([state, id, n]) => state === 'connected' && id !== oldClientId && n >= 2,
        ),
      { message: 'every tab connected through the new leader' },
    );
    await sleep(300);
    for (const [k, page] of tabs.entries()) {
      const { leader: isLeader, log } = await read(page);
      const who = isLeader ? 'new leader' : 'follower';
      const after = log.infos.slice(marks[k][0]);
      const seq = after.map((s) => s.state);
      assert.ok(!seq.includes('disconnected'), `${who}: no disconnected during the handover: ${JSON.stringify(after)}`);
      assert.equal(seq[0], 'reconnecting', `${who}: reconnecting first: ${JSON.stringify(after)}`);
      assert.equal(seq.at(-1), 'connected', `${who}: connected at the end: ${JSON.stringify(after)}`);
      assert.ok(seq.slice(0, -1).every((s) => s === 'reconnecting'), `${who}: reconnecting until connected: ${JSON.stringify(after)}`);
      assert.equal(seq.filter((s) => s === 'connected').length, 1, `${who}: one connected: ${JSON.stringify(after)}`);
      assert.equal(after[0].previous, 'connected', `${who}: from connected: ${JSON.stringify(after[0])}`);
      assert.equal(after[0].clientId, null, `${who}: no client id while reconnecting`);
      assert.ok(after[0].reason?.message, `${who}: a reason: ${JSON.stringify(after[0])}`);
      assert.equal(after[0].reason.error, 'connection_lost', `${who}: reason: ${JSON.stringify(after[0])}`);
      assert.equal(after[0].user, 'u-handover', `${who}: the user stays known`);
      for (let i = 0; i < after.length - 1; i++) {
        assert.notDeepEqual(after[i + 1], after[i], `${who}: consecutive state events differ: ${JSON.stringify(after)}`);
      }
      const subscribed = log.subscribed.slice(marks[k][1]);
      assert.ok(subscribed.length >= 1, `${who}: subscribed again after the handover`);
      for (const info of subscribed) {
        assert.equal(info.resubscribed, true, `${who}: a resubscription: ${JSON.stringify(subscribed)}`);
        assert.equal(info.recovered, true, `${who}: recovered: ${JSON.stringify(subscribed)}`);
      }
      assert.deepEqual(log.events, [1, 2], `${who}: every event once`);
    }
    await context.close();
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
