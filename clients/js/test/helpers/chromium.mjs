// Launches Debian's Chromium through playwright-core, and serves test pages.
import { existsSync, readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { dirname, extname, join, normalize, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before } from 'node:test';
import { chromium } from 'playwright-core';
import { startServer } from './server.mjs';

export const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
const here = dirname(fileURLToPath(import.meta.url));
const CLIENT_DIST = resolve(here, '../../packages/client/dist');

export function requireChromium() {
  if (!existsSync(CHROMIUM)) {
    throw new Error(
      `Chromium not found at ${CHROMIUM}.\n` +
        `Install it first: apt-get update && apt-get install -y chromium\n` +
        `(or point CHROMIUM_BIN at a Chromium binary).`,
    );
  }
  if (!existsSync(join(CLIENT_DIST, 'index.js'))) {
    throw new Error(`${CLIENT_DIST}/index.js missing: run npm run build first`);
  }
}

export async function launchChromium() {
  requireChromium();
  return chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      // Keep timers of background tabs running at full speed.
      '--disable-background-timer-throttling',
      '--disable-renderer-backgrounding',
      '--disable-backgrounding-occluded-windows',
    ],
  });
}

const TYPES = { '.js': 'text/javascript', '.html': 'text/html', '.map': 'application/json' };

/** Serves `/client/*` from the built client and `/` as `html`. */
export async function servePages(html) {
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    if (url.pathname === '/') {
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end(html);
      return;
    }
    if (url.pathname.startsWith('/client/')) {
      const file = normalize(join(CLIENT_DIST, url.pathname.slice('/client/'.length)));
      if (file.startsWith(CLIENT_DIST) && existsSync(file)) {
        res.writeHead(200, { 'content-type': TYPES[extname(file)] ?? 'application/octet-stream' });
        res.end(readFileSync(file));
        return;
      }
    }
    res.writeHead(404);
    res.end();
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address();
  return { url: `http://127.0.0.1:${port}/`, close: () => new Promise((r) => server.close(r)) };
}

/**
 * Registers the before/after hooks of a Chromium suite: a real Tidings server
 * (started with `serverOptions`), `html` served with the built client, and
 * Chromium. The returned object's `server`, `pages` and `browser` are set once
 * the `before` hook has run.
 */
export function chromiumSuite(html, serverOptions) {
  const suite = {
    server: undefined,
    pages: undefined,
    browser: undefined,
    /** A new page of `context` with `html` loaded; `prepare(page)` runs before it loads (listeners). */
    async openPage(context, prepare) {
      const page = await context.newPage();
      prepare?.(page);
      await page.goto(suite.pages.url);
      await page.waitForFunction(() => window.ready === true);
      return page;
    },
  };
  before(async () => {
    suite.server = await startServer(serverOptions);
    suite.pages = await servePages(html);
    suite.browser = await launchChromium();
  });
  after(async () => {
    await suite.browser?.close();
    await suite.pages?.close();
    await suite.server?.stop();
  });
  return suite;
}
