// The demo backend and `npm start` (start.mjs) on bad input and failures: bad
// requests answer 4xx and the backend keeps serving; when the backend process
// dies, Tidings is stopped with it; a taken Tidings port gives one clear line.
// No browser; start.mjs cases use the real Tidings binary.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { request } from 'node:http';
import { createServer } from 'node:net';
import { dirname, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { startBackend } from '../server.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

/** A raw request: the path is sent as given (fetch would resolve `..`). */
function raw(base, method, path, { headers = {}, body } = {}) {
  return new Promise((resolve, reject) => {
    const req = request(`${base}${path}`, { method, headers, path }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (text += d));
      res.on('end', () => resolve({ status: res.statusCode, type: res.headers['content-type'], text }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

describe('backend on bad requests', () => {
  let backend;
  before(async () => {
    // Tidings is not needed here: publishing to a closed port only logs a warning.
    const tidings = { url: 'http://127.0.0.1:9', apiUrl: 'http://127.0.0.1:9', apiKey: 'k', secret: 'x'.repeat(64) };
    backend = await startBackend({ tidings, staticDir: join(root, 'dist') });
  });
  after(() => backend?.close());

  async function stillServes() {
    const page = await raw(backend.url, 'GET', '/');
    assert.equal(page.status, 200);
    assert.match(page.text, /<div id="root">/);
    const list = await raw(backend.url, 'GET', '/api/items', { headers: { 'X-User': 'alice' } });
    assert.equal(list.status, 200);
    assert.ok(Array.isArray(JSON.parse(list.text)));
  }

  test('a directory URL answers 404 and the backend still serves', async () => {
    for (const path of ['/assets/', '/assets', '/assets/.']) {
      assert.equal((await raw(backend.url, 'GET', path)).status, 404, path);
    }
    await stillServes();
  });

  test('paths outside dist answer 404', async () => {
    for (const path of ['/../package.json', '/%2e%2e/package.json', '/assets/%2e%2e/%2e%2e/package.json', '/..%2fpackage.json', '/no-such-file.js']) {
      assert.equal((await raw(backend.url, 'GET', path)).status, 404, path);
    }
    await stillServes();
  });

  test('a bad JSON body answers 400 and the backend still serves', async () => {
    const headers = { 'X-User': 'alice', 'Content-Type': 'application/json' };
    for (const body of ['{oops', 'null', '[1]', '"text"']) {
      const res = await raw(backend.url, 'POST', '/api/items', { headers, body });
      assert.equal(res.status, 400, body);
      assert.equal(res.type, 'application/json');
      assert.ok(JSON.parse(res.text).error, body);
    }
    await stillServes();
    const created = await raw(backend.url, 'POST', '/api/items', { headers, body: JSON.stringify({ title: 'After' }) });
    assert.equal(created.status, 201);
    const { id } = JSON.parse(created.text);
    assert.equal((await raw(backend.url, 'PUT', `/api/items/${id}`, { headers, body: '{oops' })).status, 400);
    assert.equal(JSON.parse((await raw(backend.url, 'GET', `/api/items/${id}`, { headers })).text).title, 'After');
  });

  test('unknown users, including Object.prototype names, answer 401', async () => {
    for (const user of ['__proto__', 'constructor', 'toString', 'mallory']) {
      assert.equal((await raw(backend.url, 'GET', '/api/session', { headers: { 'X-User': user } })).status, 401, user);
    }
    await stillServes();
  });
});

/** Runs start.mjs (preloading `preload`, if given) and collects its output. */
function runStart(env, preload) {
  const args = preload ? ['--import', `data:text/javascript,${encodeURIComponent(preload)}`, 'start.mjs'] : ['start.mjs'];
  const child = spawn(process.execPath, args, { cwd: root, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const run = { child, out: '', err: '' };
  child.stdout.on('data', (d) => (run.out += d));
  child.stderr.on('data', (d) => (run.err += d));
  run.exited = new Promise((r) => child.once('exit', (code) => r(code)));
  return run;
}
async function until(predicate, what, timeout = 10_000) {
  const deadline = Date.now() + timeout;
  while (!predicate()) {
    assert.ok(Date.now() < deadline, `timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
async function freePort() {
  const probe = createServer();
  await new Promise((r) => probe.listen(0, '127.0.0.1', r));
  const { port } = probe.address();
  await new Promise((r) => probe.close(r));
  return port;
}

describe('npm start (start.mjs)', () => {
  test('when the backend process dies, Tidings is stopped too and the exit is non-zero', async () => {
    // SIGUSR2 makes the process throw, as a bug in the backend would.
    const run = runStart({ PORT: '0', LIVE_BOARD_TIDINGS_PORT: '0' }, "process.on('SIGUSR2', () => { throw new Error('boom'); });");
    try {
      await until(() => /Open http/.test(run.out) || run.child.exitCode !== null, 'start.mjs to start');
      const tidingsUrl = /Tidings on (\S+)/.exec(run.out)?.[1];
      assert.ok(tidingsUrl, `${run.out}\n${run.err}`);
      assert.ok((await fetch(`${tidingsUrl}/metrics`)).ok, 'Tidings answers');
      run.child.kill('SIGUSR2');
      assert.equal(await run.exited, 1);
      assert.match(run.err, /live-board backend died \(uncaught exception\): Error: boom/);
      await assert.rejects(fetch(tidingsUrl), 'Tidings must be gone');
      // Its port is free again.
      const port = Number(new URL(tidingsUrl).port);
      const again = createServer();
      await new Promise((resolve, reject) => again.once('error', reject).listen(port, '127.0.0.1', resolve));
      await new Promise((r) => again.close(r));
    } finally {
      run.child.kill('SIGKILL');
    }
  });

  test("Tidings' port taken: one clear line, exit 1, no stack trace", async () => {
    const port = await freePort();
    const holder = createServer();
    await new Promise((r) => holder.listen(port, '127.0.0.1', r));
    try {
      const run = runStart({ PORT: '0', LIVE_BOARD_TIDINGS_PORT: String(port) });
      assert.equal(await run.exited, 1);
      assert.match(run.err, new RegExp(`tidings exited with 1: is port ${port} taken\\?`));
      assert.match(run.err, /Address already in use/); // Tidings' own line
      assert.doesNotMatch(run.err, /\n\s+at /, 'no stack trace');
    } finally {
      await new Promise((r) => holder.close(r));
    }
  });
});
