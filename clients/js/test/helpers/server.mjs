// Starts real Tidings server processes (target/debug/tidings) for the tests.
import { spawn } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = resolve(here, '../../../..');
export const SERVER_BIN = process.env.TEST_TIDINGS_BIN ?? join(REPO_ROOT, 'target/debug/tidings');

export function requireServerBinary() {
  if (!existsSync(SERVER_BIN)) {
    throw new Error(
      `Tidings server binary not found at ${SERVER_BIN}.\n` +
        `Build it first: (cd ${REPO_ROOT} && cargo build -p tidings-server)\n` +
        `or point TEST_TIDINGS_BIN at a built binary.`,
    );
  }
}

/** Test configuration: the builtin namespaces plus `chat`, where clients may publish. */
const CONFIG = `
[namespaces.chat]
min_segments = 2
max_segments = 3
subscribe = [{}]
publish = [{}]
history = [{}]
history_size = 1000

[namespaces.room]
subscribe = [{}]
presence = [{}]
`;

let configPath;
function configFile() {
  if (!configPath) {
    // Under target/ so that a worker ended without its `exit` event leaves
    // nothing behind in the system's temporary directory.
    const parent = join(REPO_ROOT, 'target', 'tmp');
    mkdirSync(parent, { recursive: true });
    const dir = mkdtempSync(join(parent, 'js-test-'));
    process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
    configPath = join(dir, 'tidings.toml');
    writeFileSync(configPath, CONFIG);
  }
  return configPath;
}

function b64url(input) {
  return Buffer.from(input).toString('base64url');
}

/** HS256 JWT with the claims the server reads. */
export function mintToken(secret, { sub = 'u1', workspaces = ['acme'], roles = [], ttl = 3600, exp } = {}) {
  const header = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const now = Math.floor(Date.now() / 1000);
  const payload = b64url(JSON.stringify({ sub, exp: exp ?? now + ttl, iat: now, workspaces, roles }));
  const signature = createHmac('sha256', secret).update(`${header}.${payload}`).digest('base64url');
  return `${header}.${payload}.${signature}`;
}

/**
 * Starts a server. `port` 0 picks a free one; pass the old port to restart in
 * place. Resolves once it printed `listening on …`.
 */
export async function startServer({ env = {}, port = 0, secret, apiKey } = {}) {
  requireServerBinary();
  secret ??= randomBytes(24).toString('hex');
  apiKey ??= `key-${randomBytes(12).toString('hex')}`;
  const child = spawn(SERVER_BIN, ['--config', configFile(), '--listen', `127.0.0.1:${port}`], {
    env: {
      PATH: process.env.PATH,
      TIDINGS_JWT_SECRET: secret,
      TIDINGS_API_KEY: apiKey,
      TIDINGS_CONSOLE: 'false',
      TIDINGS_LOG_LEVEL: process.env.TEST_TIDINGS_LOG ?? 'warn',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (d) => {
    stderr += d;
    if (process.env.TEST_TIDINGS_LOG) process.stderr.write(d);
  });
  const address = await new Promise((resolveAddr, reject) => {
    let out = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`server did not start within 20 s\n${stderr}`));
    }, 20_000);
    child.stdout.on('data', (d) => {
      out += d;
      const m = /listening on (\S+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolveAddr(m[1]);
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code}\n${stderr}`));
    });
  });
  const exited = new Promise((r) => child.once('exit', r));
  const base = `http://${address}`;
  const boundPort = Number(address.split(':').pop());

  async function api(path, body) {
    const res = await fetch(`${base}${path}`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${apiKey}`, 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
    });
    const json = await res.json();
    if (!res.ok) throw new Error(`${path} → ${res.status} ${JSON.stringify(json)}`);
    return json;
  }

  return {
    url: base,
    port: boundPort,
    secret,
    apiKey,
    child,
    token: (claims) => mintToken(secret, claims),
    publish: (channel, event, data, extra = {}) => api('/api/publish', { channel, event, data, ...extra }),
    entityEvent: (body) => api('/api/events', body),
    disconnectUser: (user, code) => api('/api/disconnect', code === undefined ? { user } : { user, code }),
    unsubscribeUser: (user, channel) => api('/api/unsubscribe', { user, channel }),
    async presence(channel) {
      const res = await fetch(`${base}/api/presence?channel=${encodeURIComponent(channel)}`, {
        headers: { Authorization: `Bearer ${apiKey}` },
      });
      return res.json();
    },
    async connections() {
      const text = await (await fetch(`${base}/metrics`)).text();
      const m = /^tidings_connections\s+(\d+)/m.exec(text);
      return m ? Number(m[1]) : NaN;
    },
    /** SIGTERM (clients get 1012) and wait for exit. */
    async stop(signal = 'SIGTERM') {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill(signal);
      const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
      await exited;
      clearTimeout(timer);
    },
    pause: () => child.kill('SIGSTOP'),
    resume: () => child.kill('SIGCONT'),
  };
}

/** Polls `predicate` every 10 ms until true, or throws after `timeout` ms. */
export async function waitFor(predicate, { timeout = 10_000, message = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${message}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
