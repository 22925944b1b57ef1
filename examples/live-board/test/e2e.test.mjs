// The live-board demo in real Chromium (playwright-core + /usr/bin/chromium)
// against the real Tidings binary and the demo backend: three users in two
// workspaces, one of them with two tabs sharing one connection. The whole
// scenario runs over WebSocket, then again with WebSocket switched off (SSE).
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { startBackend } from '../server.mjs';
import { startTidings } from '../start.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
const SHOTS = join(root, 'docs');

async function api(backend, user, method, path, body) {
  const res = await fetch(`${backend.url}${path}`, {
    method,
    headers: { 'X-User': user, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  assert.ok(res.ok, `${method} ${path}: ${res.status}`);
  return res.json();
}

const status = (page) => page.locator('.tidings-status');
const notice = (page) => page.locator('.tidings-notice');
const rows = (page) => page.locator('[data-testid=items] li a');
async function expectText(locator, text, timeout = 10_000) {
  await locator.filter({ hasText: text }).first().waitFor({ timeout });
}
async function waitStatus(page, kind, timeout = 15_000) {
  await page.locator(`.tidings-status[data-status=${kind}]`).waitFor({ timeout });
}
async function titles(page) {
  return rows(page).allTextContents();
}
async function expectEventually(predicate, what, timeout = 10_000) {
  const deadline = Date.now() + timeout;
  while (!(await predicate())) {
    assert.ok(Date.now() < deadline, `timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
/** Waits until the list shows exactly `expected` (in order). */
async function expectTitles(page, expected, timeout = 10_000) {
  const deadline = Date.now() + timeout;
  let seen;
  while (Date.now() < deadline) {
    seen = await titles(page);
    if (JSON.stringify(seen) === JSON.stringify(expected)) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.deepEqual(seen, expected);
}

for (const transport of ['websocket', 'sse']) {
  describe(`live-board over ${transport}`, () => {
    const secret = randomBytes(32).toString('hex');
    const apiKey = randomBytes(16).toString('hex');
    const env = transport === 'sse' ? { TIDINGS_TRANSPORTS__WEBSOCKET: 'false' } : {};
    let tidings;
    let backend;
    let browser;
    const errors = [];
    before(async () => {
      tidings = await startTidings({ secret, apiKey, env });
      backend = await startBackend({ tidings: { url: tidings.url, apiUrl: tidings.url, apiKey, secret }, staticDir: join(root, 'dist') });
      browser = await chromium.launch({
        executablePath: CHROMIUM,
        args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
          '--disable-component-update', '--disable-sync', '--disable-background-timer-throttling', '--disable-renderer-backgrounding',
          '--disable-backgrounding-occluded-windows'],
      });
    });
    after(async () => {
      await browser?.close();
      await backend?.close();
      await tidings?.stop();
    });

    async function open(context, user) {
      const page = await context.newPage();
      page.on('pageerror', (err) => errors.push(`${user}: ${err}`));
      await page.setViewportSize({ width: 900, height: 520 });
      await page.goto(`${backend.url}/?user=${user}`);
      await waitStatus(page, 'connected');
      return page;
    }

    test('lists, notices, conflicts, deletes, badges, outage and offline', async () => {
      const shots = transport === 'websocket';
      if (shots) mkdirSync(SHOTS, { recursive: true });
      const aliceContext = await browser.newContext();
      const bobContext = await browser.newContext();
      const carolContext = await browser.newContext();
      const a1 = await open(aliceContext, 'alice');
      const a2 = await open(aliceContext, 'alice'); // second tab: shares the first tab's connection
      const b = await open(bobContext, 'bob');
      const c = await open(carolContext, 'carol');
      assert.equal(await a2.evaluate(() => document.querySelector('[data-testid=who]').textContent), 'alice · acme');
      // Three connections for four pages (alice's tabs share one), over the transport under test.
      const metric = async (name) => Number(new RegExp(`^${name}\\s+(\\d+)`, 'm').exec(await (await fetch(`${tidings.url}/metrics`)).text())?.[1]);
      await expectEventually(async () => (await metric('tidings_connections')) === 3, 'three connections');
      assert.equal(await metric('tidings_sse_streams'), transport === 'sse' ? 3 : 0);

      // Create → the row appears for bob and in both of alice's tabs; "New item" for bob only; bob's badge.
      await a1.getByLabel('New item title').fill('Alpha');
      await a1.getByRole('button', { name: 'Add' }).click();
      for (const page of [a1, a2, b]) await expectText(rows(page), 'Alpha');
      await expectText(b.getByTestId('arrived'), 'New item: Alpha');
      await expectText(b.getByTestId('badge'), '1');
      assert.equal(await a2.getByTestId('arrived').textContent(), '');
      const id = await b.locator('[data-testid=items] li').first().getAttribute('data-id');

      // Update from a1's detail page → the row updates in place in a2 and for bob.
      await a1.goto(`${backend.url}/?user=alice#/items/${id}`);
      await a1.getByRole('button', { name: 'Edit' }).click();
      await a1.getByLabel('Title').fill('Alpha 2');
      await a1.getByRole('button', { name: 'Save' }).click();
      for (const page of [a2, b]) await expectText(rows(page), 'Alpha 2');
      await expectTitles(b, ['Alpha 2']);
      if (shots) await b.screenshot({ path: join(SHOTS, 'list.png') });

      // Detail: bob sees "Updated by alice" with the version; alice's other tab sees no notice.
      await b.getByRole('link', { name: 'Alpha 2' }).click();
      await a2.getByRole('link', { name: 'Alpha 2' }).click();
      await expectText(b.getByTestId('title'), 'Alpha 2');
      await a1.getByRole('button', { name: 'Edit' }).click();
      await a1.getByLabel('Title').fill('Alpha 3');
      await a1.getByRole('button', { name: 'Save' }).click();
      await expectText(notice(b), 'Updated by alice (version 3)');
      if (shots) await b.screenshot({ path: join(SHOTS, 'detail-notice.png') });
      await expectText(a2.getByTestId('title'), 'Alpha 3'); // refreshed quietly: own change
      assert.equal(await notice(a2).textContent(), '');
      assert.equal(await notice(a1).textContent(), '');
      assert.equal(await b.getByTestId('title').textContent(), 'Alpha 2', 'not replaced under the reader');
      await b.getByRole('button', { name: 'Refresh' }).click();
      await expectText(b.getByTestId('title'), 'Alpha 3');
      assert.equal(await notice(b).textContent(), '');

      // The notice goes by itself after 10 s.
      await api(backend, 'alice', 'PUT', `/api/items/${id}`, { title: 'Alpha 4' });
      await expectText(notice(b), 'Updated by alice (version 4)');
      const shownAt = Date.now();
      await b.locator('.tidings-notice:empty').waitFor({ state: 'attached', timeout: 15_000 });
      const shownFor = Date.now() - shownAt;
      assert.ok(shownFor > 8500 && shownFor < 13_000, `notice shown for ${shownFor} ms`);

      // Edit conflict, live: bob edits while alice saves.
      // (bob's page still shows version 3: he dismissed nothing and refreshed nothing.)
      await b.getByRole('button', { name: 'Edit' }).click();
      await b.getByLabel('Title').fill('Bob was here');
      await api(backend, 'alice', 'PUT', `/api/items/${id}`, { title: 'Alpha 5' });
      const banner = b.locator('.tidings-conflict');
      await expectText(banner, 'Updated by alice (version 5) while you were editing');
      assert.equal(await banner.getAttribute('data-seen'), 'live');
      assert.equal(await b.getByLabel('Title').inputValue(), 'Bob was here', 'the edits are kept');
      if (shots) await b.screenshot({ path: join(SHOTS, 'conflict.png') });
      await b.getByRole('button', { name: 'Continue editing' }).click();
      await banner.waitFor({ state: 'detached' });

      // Tidings killed: everyone shows Reconnecting…; a change and a create made meanwhile.
      await a2.goto(`${backend.url}/?user=alice#/`);
      await waitStatus(a2, 'connected');
      await tidings.stop('SIGKILL');
      for (const page of [a1, a2, b, c]) await expectText(status(page), 'Reconnecting…');
      if (shots) await a2.screenshot({ path: join(SHOTS, 'reconnecting.png') });
      await api(backend, 'alice', 'PUT', `/api/items/${id}`, { title: 'Alpha 6' });
      await api(backend, 'alice', 'POST', '/api/items', { title: 'Beta' });
      tidings = await startTidings({ port: tidings.port, secret, apiKey, env });
      for (const page of [a1, a2, b, c]) await waitStatus(page, 'connected', 30_000);
      // Lists are right afterwards (refetched after the failed recovery).
      await expectText(rows(a2), 'Beta');
      await expectTitles(a2, ['Beta', 'Alpha 6']);
      // Edit conflict after the outage: bob's form is on version 5, the server has 6.
      await expectText(banner, 'Updated by alice (version 6)');
      assert.equal(await banner.getAttribute('data-seen'), 'stale');
      await b.getByRole('button', { name: 'Cancel' }).click();

      // Delete: bob's detail page says so and lands on the list.
      await api(backend, 'alice', 'DELETE', `/api/items/${id}`);
      await expectText(b.getByRole('alert'), 'was deleted by alice');
      await b.waitForURL(/#\/$/, { timeout: 10_000 });
      await expectText(b.locator('.flash'), 'was deleted by alice');
      await expectTitles(b, ['Beta']);
      // alice's own deletion also takes her other tab, on that item, back to the list.
      // (Its message was shown while bob's was checked; the list repeats it.)
      await a1.waitForURL(/#\/$/, { timeout: 10_000 });
      await expectText(a1.locator('.flash'), 'was deleted by you, in another tab');
      await expectText(rows(a2), 'Beta');
      await expectTitles(a2, ['Beta']);

      // Badges: bob got one notification (Beta was created while Tidings was down); alice none; reset.
      assert.equal((await b.getByTestId('badge').textContent()).trim(), 'Inbox 1');
      assert.equal((await a1.getByTestId('badge').textContent()).trim(), 'Inbox 0');
      await api(backend, 'alice', 'POST', '/api/items', { title: 'Gamma' });
      await expectText(b.getByTestId('badge'), '2');
      await b.getByTestId('badge').click();
      await expectText(b.getByTestId('badge'), '0');

      // The other workspace saw nothing.
      await c.getByLabel('New item title').fill('Carol only');
      await c.getByRole('button', { name: 'Add' }).click();
      await expectText(rows(c), 'Carol only');
      await expectTitles(c, ['Carol only']);
      assert.equal((await c.getByTestId('badge').textContent()).trim(), 'Inbox 0');
      assert.equal(await c.getByTestId('arrived').textContent(), '');
      assert.ok(!(await titles(b)).includes('Carol only'));

      // Browser offline → the indicator says so within 2 s; online → connected.
      await bobContext.setOffline(true);
      await waitStatus(b, 'offline', 2000);
      await bobContext.setOffline(false);
      await waitStatus(b, 'connected');

      assert.deepEqual(errors, []);
      for (const context of [aliceContext, bobContext, carolContext]) await context.close();
    });
  });
}
