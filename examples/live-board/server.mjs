// The demo's backend: items in memory, a login that mints Tidings tokens, and
// every change published to Tidings (POST /api/events, with the actor).
import { createHmac, randomUUID } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { createServer } from 'node:http';
import { extname, join, resolve, sep } from 'node:path';

/** Demo users and the workspace each belongs to. */
export const USERS = { alice: 'acme', bob: 'acme', carol: 'globex' };

const b64 = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
function mintToken(secret, user) {
  const now = Math.floor(Date.now() / 1000);
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub: user, exp: now + 3600, iat: now, workspaces: [USERS[user]] })}`;
  return `${body}.${createHmac('sha256', secret).update(body).digest('base64url')}`;
}

/** Starts the backend; `tidings` = {url (for the browser), apiUrl, apiKey, secret}. */
export async function startBackend({ port = 0, tidings, staticDir }) {
  const items = new Map(); // id → {id, workspace, title, version, updatedBy}
  async function tidingsApi(path, body) {
    try {
      const res = await fetch(`${tidings.apiUrl}${path}`, {
        method: 'POST',
        headers: { Authorization: `Bearer ${tidings.apiKey}`, 'Content-Type': 'application/json' },
        body: JSON.stringify(body),
      });
      if (!res.ok) console.warn(`tidings ${path}: HTTP ${res.status}`);
    } catch (err) {
      // Tidings down: the change is saved; clients refetch after their failed recovery.
      console.warn(`tidings ${path}: ${err.message}`);
    }
  }
  async function publish(user, action, item) {
    const { workspace, ...data } = item;
    await tidingsApi('/api/events', {
      workspace,
      entity: { type: 'items', id: item.id, version: item.version },
      action,
      data,
      actor: user,
    });
    if (action !== 'created') return;
    for (const [other, ws] of Object.entries(USERS)) {
      if (ws === workspace && other !== user) {
        await tidingsApi('/api/publish', { channel: `user:${other}`, event: 'notification.new', data: { text: `${user} created “${item.title}”` } });
      }
    }
  }
  async function handle(req, res) {
    const url = new URL(req.url ?? '/', 'http://x'); // resolves `..` and `%2e%2e` segments
    const send = (status, body) => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    if (!url.pathname.startsWith('/api/')) return serveStatic(staticDir, url.pathname, res);
    const user = req.headers['x-user'];
    const workspace = Object.hasOwn(USERS, user) ? USERS[user] : undefined; // not `__proto__` & co.
    if (!workspace) return send(401, { error: 'unknown user' });
    let body = {};
    if (req.method === 'POST' || req.method === 'PUT') {
      let text = '';
      for await (const chunk of req) {
        text += chunk;
        if (text.length > 64 * 1024) return send(413, { error: 'body too large' });
      }
      try {
        body = text ? JSON.parse(text) : {};
      } catch {
        return send(400, { error: 'invalid JSON body' });
      }
      if (typeof body !== 'object' || body === null || Array.isArray(body)) return send(400, { error: 'the body must be a JSON object' });
    }
    const [, , route, id] = url.pathname.split('/'); // /api/{route}/{id}
    if (route === 'session') return send(200, { user, workspace, token: mintToken(tidings.secret, user), tidingsUrl: tidings.url });
    if (route !== 'items') return send(404, { error: 'not found' });
    const item = id ? items.get(id) : undefined;
    if (id && (!item || item.workspace !== workspace)) return send(404, { error: 'no such item' });
    if (req.method === 'GET' && !id) return send(200, [...items.values()].filter((i) => i.workspace === workspace).reverse());
    if (req.method === 'GET') return send(200, item);
    if (req.method === 'POST' && !id) {
      const created = { id: randomUUID().slice(0, 8), workspace, title: String(body.title ?? ''), version: 1, updatedBy: user };
      items.set(created.id, created);
      await publish(user, 'created', created);
      return send(201, created);
    }
    if (req.method === 'PUT' && item) {
      Object.assign(item, { title: String(body.title ?? item.title), version: item.version + 1, updatedBy: user });
      await publish(user, 'updated', item);
      return send(200, item);
    }
    if (req.method === 'DELETE' && item) {
      items.delete(id);
      await publish(user, 'deleted', { ...item, version: item.version + 1, updatedBy: user });
      return send(200, { id });
    }
    send(405, { error: 'method not allowed' });
  }
  // Whatever goes wrong in one request answers 500 (or drops that request) and
  // never takes the process — and with it `npm start`'s Tidings — down.
  const server = createServer((req, res) => {
    handle(req, res).catch((err) => {
      console.error(`${req.method} ${req.url}: ${err?.stack ?? err}`);
      if (res.headersSent) return res.destroy();
      res.writeHead(500, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: 'internal error' }));
    });
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  return { url: `http://127.0.0.1:${server.address().port}`, close: () => new Promise((r) => server.close(r)) };
}

const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css', '.svg': 'image/svg+xml' };
/** Regular files under `dir` only: directories, missing files and anything outside answer 404. */
function serveStatic(dir, path, res) {
  const root = resolve(dir);
  const file = resolve(join(root, path === '/' ? 'index.html' : path));
  let content;
  try {
    if (!file.startsWith(root + sep) || !statSync(file).isFile()) throw new Error('not a file');
    content = readFileSync(file);
  } catch {
    res.writeHead(404, { 'content-type': 'text/plain' });
    return res.end('not found');
  }
  res.writeHead(200, { 'content-type': TYPES[extname(file)] ?? 'application/octet-stream' });
  res.end(content);
}
