// Launches Debian's Chromium through playwright-core, and serves test pages.
import { existsSync, readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { dirname, extname, join, normalize, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

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
