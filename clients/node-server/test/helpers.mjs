// Real Tidings server processes (target/debug/tidings) and real WebSocket
// subscribers for the tests of @tidings/server.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import net from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';

import { mintToken } from '../dist/index.js';

const here = dirname(fileURLToPath(import.meta.url));
export const PACKAGE_ROOT = resolve(here, '..');
export const REPO_ROOT = resolve(here, '../../..');
export const SERVER_BIN = process.env.TEST_TIDINGS_BIN ?? join(REPO_ROOT, 'target/debug/tidings');

/** A port nobody listens on right now. */
export async function freePort() {
  const server = net.createServer();
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address();
  await new Promise((r) => server.close(r));
  return port;
}

/** Starts the real server on `port` (0: a free one); resolves once it listens. */
export async function startServer({ port = 0, apiKey = `key-${randomBytes(12).toString('hex')}` } = {}) {
  if (!existsSync(SERVER_BIN)) throw new Error(`no server binary at ${SERVER_BIN}: cargo build -p tidings-server`);
  const secret = randomBytes(24).toString('hex');
  const child = spawn(SERVER_BIN, [], {
    env: {
      PATH: process.env.PATH,
      TIDINGS_JWT_SECRET: secret,
      TIDINGS_API_KEY: apiKey,
      TIDINGS_LISTEN: `127.0.0.1:${port}`,
      TIDINGS_CONSOLE: 'false',
      TIDINGS_LOG_LEVEL: 'warn',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const address = await new Promise((resolveAddress, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`server did not start within 20 s\n${stderr}`)), 20_000);
    child.stdout.on('data', (d) => {
      out += d;
      const m = /listening on (\S+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolveAddress(m[1]);
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code}\n${stderr}`));
    });
  });
  const exited = new Promise((r) => child.once('exit', r));
  return {
    url: `http://${address}`,
    wsUrl: `ws://${address}/ws`,
    port: Number(address.split(':').pop()),
    secret,
    apiKey,
    token: (claims) => mintToken({ secret, sub: 'u1', workspaces: ['acme'], ...claims }),
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

/** A real WebSocket client: connects with `token`, subscribes, and collects messages. */
export async function subscriber(wsUrl, token, channels) {
  const ws = new WebSocket(wsUrl, { headers: { Authorization: `Bearer ${token}` } });
  const messages = [];
  const waiters = [];
  let closeCode;
  let failure;
  ws.on('error', (err) => {
    failure = err;
    for (const w of [...waiters]) w();
  });
  ws.on('message', (raw) => {
    const message = JSON.parse(String(raw));
    if (message.type === 'ping') return ws.send('{"type":"pong"}');
    messages.push(message);
    for (const w of [...waiters]) w();
  });
  ws.on('close', (code) => {
    closeCode = code;
    for (const w of [...waiters]) w();
  });
  const next = (predicate, what, timeout = 10_000) =>
    new Promise((resolveMessage, reject) => {
      const check = () => {
        if (failure) {
          done();
          return reject(failure);
        }
        const found = messages.find(predicate);
        if (found) {
          done();
          resolveMessage(found);
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`no ${what} within ${timeout} ms; saw ${JSON.stringify(messages)}`));
      }, timeout);
      const done = () => {
        clearTimeout(timer);
        waiters.splice(waiters.indexOf(check), 1);
      };
      waiters.push(check);
      check();
    });
  const closed = (timeout = 10_000) =>
    new Promise((resolveCode, reject) => {
      if (closeCode !== undefined) return resolveCode(closeCode);
      const timer = setTimeout(() => reject(new Error('socket not closed')), timeout);
      ws.once('close', (code) => {
        clearTimeout(timer);
        resolveCode(code);
      });
    });
  await next((m) => m.type === 'connected', 'connected');
  for (const [i, channel] of channels.entries()) {
    ws.send(JSON.stringify({ type: 'subscribe', id: i + 1, channel }));
    const reply = await next((m) => m.id === i + 1, `reply to subscribe ${channel}`);
    if (reply.type !== 'subscribed') throw new Error(`subscribe ${channel}: ${JSON.stringify(reply)}`);
  }
  return {
    messages,
    event: (predicate = () => true, timeout) =>
      next((m) => m.type === 'event' && predicate(m), 'matching event', timeout),
    next,
    closed,
    close: () => ws.close(),
  };
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
