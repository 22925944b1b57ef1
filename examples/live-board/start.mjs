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

/** Starts the Tidings server; resolves `{url, port, stop()}` once it listens. */
export async function startTidings({ port = 0, secret, apiKey, env = {} }) {
  if (!existsSync(TIDINGS_BIN)) throw new Error(`${TIDINGS_BIN} missing: run cargo build -p tidings-server in the repository root`);
  const child = spawn(TIDINGS_BIN, ['--listen', `127.0.0.1:${port}`], {
    env: { PATH: process.env.PATH, TIDINGS_JWT_SECRET: secret, TIDINGS_API_KEY: apiKey, TIDINGS_CONSOLE: 'false', TIDINGS_LOG_LEVEL: 'warn', ...env },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const exited = new Promise((r) => child.once('exit', r));
  const address = await new Promise((resolveAddress, reject) => {
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      const m = /listening on (\S+)/.exec(out);
      if (m) resolveAddress(m[1]);
    });
    child.once('exit', (code) => reject(new Error(`tidings exited with ${code}`)));
  });
  return {
    url: `http://${address}`,
    port: Number(address.split(':').pop()),
    async stop(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      await exited;
    },
  };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const secret = randomBytes(32).toString('hex'); // ≥ 32 bytes
  const apiKey = randomBytes(16).toString('hex');
  const tidings = await startTidings({ port: Number(process.env.LIVE_BOARD_TIDINGS_PORT ?? 8787), secret, apiKey });
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
}
