// `npm start`: Tidings (target/debug/tidings of this repository, or $LIVE_BOARD_TIDINGS_BIN),
// the backend, and the built page, on 127.0.0.1.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startBackend } from './server.mjs';

const here = dirname(fileURLToPath(import.meta.url));
export const TIDINGS_BIN = process.env.LIVE_BOARD_TIDINGS_BIN ?? resolve(here, '../../target/debug/tidings');

/** Starts the Tidings server; resolves `{url, port, stop(), kill()}` once it listens. */
export async function startTidings({ port = 0, secret, apiKey, env = {} }) {
  if (!existsSync(TIDINGS_BIN)) throw new Error(`${TIDINGS_BIN} missing: run cargo build -p tidings-server in the repository root`);
  const child = spawn(TIDINGS_BIN, ['--listen', `127.0.0.1:${port}`], {
    env: { PATH: process.env.PATH, TIDINGS_JWT_SECRET: secret, TIDINGS_API_KEY: apiKey, TIDINGS_CONSOLE: 'false', TIDINGS_LOG_LEVEL: 'warn', ...env },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  // 'error' (e.g. the binary cannot be executed) may come without 'exit'.
  const exited = new Promise((r) => {
    child.once('exit', (code, signal) => r(code ?? signal));
    child.once('error', r);
  });
  const address = await new Promise((resolveAddress, reject) => {
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      const m = /listening on (\S+)/.exec(out);
      if (m) resolveAddress(m[1]);
    });
    exited.then((how) => reject(new Error(`tidings exited with ${how?.message ?? how}`)));
  });
  const kill = (signal = 'SIGTERM') => {
    if (child.exitCode === null && child.signalCode === null) child.kill(signal);
  };
  return {
    url: `http://${address}`,
    port: Number(address.split(':').pop()),
    async stop(signal = 'SIGTERM') {
      kill(signal);
      await exited;
    },
    kill, // synchronous, for process 'exit' handlers
  };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const secret = randomBytes(32).toString('hex'); // ≥ 32 bytes
  const apiKey = randomBytes(16).toString('hex');
  const tidingsPort = Number(process.env.LIVE_BOARD_TIDINGS_PORT ?? 8787);
  let tidings;
  try {
    tidings = await startTidings({ port: tidingsPort, secret, apiKey });
  } catch (err) {
    // Tidings has printed its own reason on stderr (e.g. "Address already in use").
    const hint = /exited with 1$/.test(err.message) ? `: is port ${tidingsPort} taken? (set LIVE_BOARD_TIDINGS_PORT)` : '';
    console.error(`${err.message}${hint}`);
    process.exit(1);
  }
  // However this process ends (an uncaught error in the backend, process.exit),
  // Tidings must not stay behind holding its port.
  process.on('exit', () => tidings.kill());
  let dying = false;
  const die = async (what, err) => {
    if (dying) return;
    dying = true;
    console.error(`live-board backend died (${what}): ${err?.stack ?? err}`);
    await tidings.stop();
    process.exit(1);
  };
  process.on('uncaughtException', (err) => die('uncaught exception', err));
  process.on('unhandledRejection', (err) => die('unhandled rejection', err));
  let backend;
  try {
    backend = await startBackend({
      port: Number(process.env.PORT ?? 5173),
      tidings: { url: tidings.url, apiUrl: tidings.url, apiKey, secret },
      staticDir: join(here, 'dist'),
    });
  } catch (err) {
    // E.g. the port is taken (5173 is also Vite's default): do not leave
    // Tidings running on its port behind us.
    await tidings.stop();
    console.error(`the backend could not start: ${err.message}`);
    process.exit(1);
  }
  console.log(`Tidings on ${tidings.url}\nOpen ${backend.url}/?user=alice (acme), ?user=bob (acme), ?user=carol (globex)`);
  const stop = async () => {
    await backend.close();
    await tidings.stop();
    process.exit(0);
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  process.on('SIGHUP', stop);
}
