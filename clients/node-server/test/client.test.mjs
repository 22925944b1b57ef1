// @tidings/server against the real server binary: every method, idempotent
// retries, no retry on 4xx, timeouts.
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';

import {
  Tidings,
  TidingsApiError,
  TidingsError,
  TidingsConnectionError,
  TidingsTimeoutError,
  mintToken,
} from '../dist/index.js';
import { freePort, sleep, startServer, subscriber } from './helpers.mjs';

let server;
let tidings;

before(async () => {
  server = await startServer();
  tidings = new Tidings({ url: server.url, apiKey: server.apiKey, minBackoffMs: 50, maxBackoffMs: 200 });
});
after(async () => {
  await server?.stop();
});

describe('every method', () => {
  test('publish reaches a subscriber and history, with meta, audience and exclusion', async () => {
    const sub = await subscriber(server.wsUrl, server.token({ sub: 'u7', roles: ['admin'] }), ['workspace:acme:pub']);
    const other = await subscriber(server.wsUrl, server.token({ sub: 'u8' }), ['workspace:acme:pub']);
    const published = await tidings.publish({
      channel: 'workspace:acme:pub',
      event: 'applications.updated',
      data: { id: 'app1' },
      meta: { actor: 'u7', correlation_id: 'req-1', entity: { type: 'applications', id: 'app1', version: 2 } },
      audience: { roles: ['admin'] },
      excludeClient: 'c_nobody',
    });
    assert.equal(published.channel, 'workspace:acme:pub');
    assert.equal(published.offset, 1);
    assert.match(published.id, /^e_/);
    const event = await sub.event();
    assert.deepEqual(event.data, { id: 'app1' });
    assert.deepEqual(event.meta, {
      actor: 'u7',
      correlation_id: 'req-1',
      entity: { type: 'applications', id: 'app1', version: 2 },
    });
    await sleep(200);
    assert.equal(other.messages.filter((m) => m.type === 'event').length, 0, 'audience excluded u8');
    sub.close();
    other.close();
  });

  test('a url without http(s) is refused at construction; the key is trimmed', async () => {
    for (const url of ['127.0.0.1:8000', 'localhost:8000', 'tidings', 'ftp://tidings', 'http://']) {
      assert.throws(
        () => new Tidings({ url, apiKey: server.apiKey }),
        (e) => e instanceof TypeError && /http:\/\/ or https:\/\//.test(e.message),
        url,
      );
    }
    const client = new Tidings({ url: server.url, apiKey: `  ${server.apiKey}\n`, retries: 0 });
    assert.equal((await client.info()).engine, 'memory');
    assert.throws(() => new Tidings({ url: server.url, apiKey: ' \n' }), /apiKey/);
  });

  test('the X-API-Key scheme works too', async () => {
    const viaHeader = new Tidings({ url: server.url, apiKey: server.apiKey, apiKeyHeader: true });
    const info = await viaHeader.info();
    assert.equal(info.engine, 'memory');
  });

  test('broadcast: one id across channels', async () => {
    const results = await tidings.broadcast({
      channels: ['workspace:acme:b1', 'user:u42'],
      event: 'notice',
      data: { text: 'hi' },
    });
    assert.deepEqual(
      results.map((r) => r.channel),
      ['workspace:acme:b1', 'user:u42'],
    );
    assert.equal(results[0].id, results[1].id);
  });

  test('entityEvent takes any action name and reaches all three scopes', async () => {
    const sub = await subscriber(server.wsUrl, server.token({ sub: 'u1' }), [
      'workspace:acme:orders',
      'workspace:acme:orders:o1',
    ]);
    for (const action of ['approved', 'status_changed']) {
      const result = await tidings.entityEvent({
        workspace: 'acme',
        entity: { type: 'orders', id: 'o1', version: 3 },
        action,
        data: { status: action },
        actor: 'u7',
        correlationId: 'req-9',
      });
      assert.equal(result.event, `orders.${action}`);
      assert.deepEqual(
        result.results.map((r) => r.channel),
        ['workspace:acme', 'workspace:acme:orders', 'workspace:acme:orders:o1'],
      );
    }
    const listEvent = await sub.event((e) => e.channel === 'workspace:acme:orders' && e.event === 'orders.status_changed');
    assert.equal(listEvent.meta.correlation_id, 'req-9');
    assert.deepEqual(listEvent.meta.entity, { type: 'orders', id: 'o1', version: 3 });
    await sub.event((e) => e.channel === 'workspace:acme:orders:o1' && e.event === 'orders.approved');
    sub.close();
  });

  test('presence, unsubscribe and disconnect act on a real connection', async () => {
    const sub = await subscriber(server.wsUrl, server.token({ sub: 'u42' }), ['workspace:acme:room']);
    const presence = await tidings.presence('workspace:acme:room');
    assert.equal(presence.channel, 'workspace:acme:room');
    assert.deepEqual(
      presence.members.map((m) => [m.user, m.status, m.clients.length]),
      [['u42', 'online', 1]],
    );
    assert.equal(await tidings.unsubscribe({ user: 'u42', channel: 'workspace:acme:room', reason: 'moved' }), 1);
    const notice = await sub.next((m) => m.type === 'unsubscribed', 'unsubscribed');
    assert.equal(notice.channel, 'workspace:acme:room');
    assert.equal(await tidings.disconnect({ user: 'u42', code: 4000, reason: 'bye' }), 1);
    assert.equal(await sub.closed(), 4000);
    assert.equal(await tidings.disconnect({ user: 'nobody' }), 0);
  });

  test('history: since, epoch, limit, order', async () => {
    for (let i = 1; i <= 3; i++) await tidings.publish({ channel: 'workspace:acme:h', event: 'n', data: i });
    const all = await tidings.history({ channel: 'workspace:acme:h' });
    assert.equal(all.type, 'history');
    assert.equal(all.offset, 3);
    assert.equal(all.complete, true);
    assert.deepEqual(
      all.events.map((e) => e.data),
      [1, 2, 3],
    );
    const newest = await tidings.history({ channel: 'workspace:acme:h', order: 'newest', limit: 2 });
    assert.deepEqual(
      newest.events.map((e) => e.offset),
      [3, 2],
    );
    const since = await tidings.history({ channel: 'workspace:acme:h', since: 2, epoch: all.epoch });
    assert.deepEqual(
      since.events.map((e) => e.offset),
      [3],
    );
    const otherEpoch = await tidings.history({ channel: 'workspace:acme:h', since: 0, epoch: 'not-the-epoch' });
    assert.deepEqual(otherEpoch.events, []);
    assert.equal(otherEpoch.complete, false);
  });

  test('info lists this node', async () => {
    const info = await tidings.info();
    assert.equal(info.version, '0.1.0');
    assert.equal(info.engine, 'memory');
    assert.equal(info.nodes.length, 1);
    assert.equal(info.nodes[0].name, info.node);
  });

  test('mintToken makes tokens the server accepts, with the claims given', async () => {
    const token = mintToken({ sub: 'minted', workspaces: ['acme'], roles: ['admin'], ttl: 60, secret: server.secret });
    const claims = JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString());
    assert.equal(claims.sub, 'minted');
    assert.deepEqual(claims.workspaces, ['acme']);
    assert.deepEqual(claims.roles, ['admin']);
    assert.equal(claims.exp - claims.iat, 60);
    const sub = await subscriber(server.wsUrl, token, ['workspace:acme']);
    sub.close();
    const forged = mintToken({ sub: 'x', workspaces: ['acme'], secret: 'another-secret-of-at-least-32-bytes!!' });
    await assert.rejects(subscriber(server.wsUrl, forged, []), /Unexpected server response: 401|no connected/);
  });
});

describe('mintToken ids', () => {
  test('one string is one workspace or role, and integer ids are their decimal strings', async () => {
    const token = mintToken({ sub: 42, workspaces: 'acme', roles: 'admin', ttl: 60, secret: server.secret });
    const claims = JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString());
    assert.equal(claims.sub, '42');
    assert.deepEqual(claims.workspaces, ['acme']);
    assert.deepEqual(claims.roles, ['admin']);
    const big = mintToken({ sub: 9007199254740993n, workspaces: [7, 'acme'], secret: server.secret });
    const bigClaims = JSON.parse(Buffer.from(big.split('.')[1], 'base64url').toString());
    assert.equal(bigClaims.sub, '9007199254740993');
    assert.deepEqual(bigClaims.workspaces, ['7', 'acme']);

    const channel = `workspace:acme:ids-${Date.now()}`;
    const sub = await subscriber(server.wsUrl, token, [channel]);
    const numeric = await subscriber(server.wsUrl, big, ['workspace:7']);
    await tidings.publish({ channel, event: 'to.user', data: 1, audience: { users: ['42'] } });
    await tidings.publish({ channel, event: 'to.role', data: 2, audience: { roles: ['admin'] } });
    await sub.event((e) => e.event === 'to.user');
    await sub.event((e) => e.event === 'to.role');
    const presence = await tidings.presence(channel);
    assert.deepEqual(
      presence.members.map((m) => m.user),
      ['42'],
    );
    await tidings.publish({ channel: 'workspace:7', event: 'x', data: 3 });
    assert.equal((await numeric.event()).data, 3);
    sub.close();
    numeric.close();

    for (const bad of [{ sub: true }, { sub: 1.5 }, { sub: NaN }, { sub: 2 ** 60 }, { workspaces: [null] }, { roles: [{}] }]) {
      assert.throws(() => mintToken({ sub: 'u1', secret: server.secret, ...bad }), (e) => e instanceof TypeError && /mintToken/.test(e.message));
    }
  });
});

describe('data JSON cannot carry', () => {
  test('is a rejected promise with invalid_request, never a synchronous throw, and nothing is sent', async () => {
    const counting = await flakyFront(server.url, []);
    const client = new Tidings({ url: counting.url, apiKey: server.apiKey });
    const circular = { name: 'loop' };
    circular.self = circular;
    const channel = 'workspace:acme:notjson';
    const calls = [
      () => client.publish({ channel, event: 'x', data: { n: 10n } }),
      () => client.publish({ channel, event: 'x', data: circular }),
      () => client.publish({ channel, event: 'x', data: { ratio: NaN } }),
      () => client.publish({ channel, event: 'x', data: [1, Infinity] }),
      () => client.publish({ channel, event: 'x', data: 1, meta: { entity: { type: 't', id: '1', version: -Infinity } } }),
      () => client.broadcast({ channels: [channel], event: 'x', data: { n: 1n } }),
      () => client.entityEvent({ workspace: 'acme', entity: { type: 't', id: '1' }, action: 'x', data: { ratio: NaN } }),
    ];
    for (const call of calls) {
      let returned;
      assert.doesNotThrow(() => {
        returned = call();
      });
      assert.ok(returned instanceof Promise);
      const error = await returned.then(
        (value) => assert.fail(`resolved to ${JSON.stringify(value)}`),
        (e) => e,
      );
      assert.ok(error instanceof TidingsError, String(error));
      assert.equal(error.code, 'invalid_request');
      assert.equal(error.attempts, 0);
    }
    assert.equal(counting.requests.length, 0, 'no request was made');
    assert.equal((await tidings.history({ channel })).events.length, 0);
    counting.close();
  });
});

describe('retries and idempotency', () => {
  test('a repeated idempotency key publishes once', async () => {
    const first = await tidings.publish({ channel: 'workspace:acme:idem', event: 'x', data: 1, idempotencyKey: 'k-1' });
    const again = await tidings.publish({ channel: 'workspace:acme:idem', event: 'x', data: 1, idempotencyKey: 'k-1' });
    assert.deepEqual(again, first);
    assert.equal((await tidings.history({ channel: 'workspace:acme:idem' })).events.length, 1);
  });

  test('the server down for a moment: the retry delivers the event exactly once', async () => {
    const port = await freePort();
    const apiKey = 'retry-test-api-key-0123456789';
    const client = new Tidings({ url: `http://127.0.0.1:${port}`, apiKey, retries: 10, minBackoffMs: 200, maxBackoffMs: 400 });
    let late;
    const startLater = (async () => {
      await sleep(700);
      late = await startServer({ port, apiKey });
    })();
    const began = Date.now();
    const published = await client.publish({ channel: 'workspace:acme:down', event: 'x', data: { n: 1 } });
    await startLater;
    assert.ok(Date.now() - began >= 600, 'the first attempt failed and a later one succeeded');
    assert.equal(published.offset, 1);
    const history = await client.history({ channel: 'workspace:acme:down' });
    assert.equal(history.events.length, 1);
    await late.stop();
  });

  test('an answer lost after the server published: the retry reuses the key, one event', async () => {
    const proxy = await lossyProxy(server.port, { dropFirstResponses: 1 });
    const client = new Tidings({ url: `http://127.0.0.1:${proxy.port}`, apiKey: server.apiKey, minBackoffMs: 50 });
    const published = await client.publish({ channel: 'workspace:acme:lost', event: 'x', data: 1 });
    assert.equal(proxy.connections(), 2, 'the first answer was dropped, the second attempt went through');
    assert.equal(published.offset, 1, 'the retry got the first publish’s result');
    const history = await tidings.history({ channel: 'workspace:acme:lost' });
    assert.equal(history.events.length, 1);
    proxy.close();
  });

  test('503 engine_unavailable and other 5xx are retried with the same key', async () => {
    const flaky = await flakyFront(server.url, [
      [503, { error: { code: 'engine_unavailable', message: 'engine down' } }],
      [502, '<html>bad gateway</html>'],
    ]);
    const client = new Tidings({ url: flaky.url, apiKey: server.apiKey, minBackoffMs: 20 });
    const published = await client.publish({ channel: 'workspace:acme:flaky', event: 'x', data: 1 });
    assert.equal(flaky.requests.length, 3);
    const keys = flaky.requests.map((body) => JSON.parse(body).idempotency_key);
    assert.ok(keys[0]);
    assert.deepEqual(keys, [keys[0], keys[0], keys[0]], 'one key across the retries');
    assert.equal(published.offset, 1);
    // A new logical publish gets a new key.
    await client.publish({ channel: 'workspace:acme:flaky', event: 'x', data: 1 });
    assert.notEqual(JSON.parse(flaky.requests[3]).idempotency_key, keys[0]);
    assert.equal((await tidings.history({ channel: 'workspace:acme:flaky' })).events.length, 2);
    flaky.close();
  });

  test('503 for good: the error carries engine_unavailable after every retry', async () => {
    const failing = await flakyFront(server.url, Array(10).fill([503, { error: { code: 'engine_unavailable', message: 'down' } }]));
    const client = new Tidings({ url: failing.url, apiKey: server.apiKey, retries: 2, minBackoffMs: 10 });
    const error = await client.info().then(
      () => assert.fail('info succeeded'),
      (e) => e,
    );
    assert.ok(error instanceof TidingsApiError);
    assert.equal(error.code, 'engine_unavailable');
    assert.equal(error.status, 503);
    assert.equal(error.attempts, 3);
    assert.equal(failing.requests.length, 3);
    failing.close();
  });

  test('4xx is not retried and surfaces its code and status', async () => {
    const counting = await flakyFront(server.url, []);
    const client = new Tidings({ url: counting.url, apiKey: server.apiKey, retries: 5, minBackoffMs: 1000 });
    const cases = [
      [() => client.publish({ channel: 'nowhere:x', event: 'x', data: 1 }), 'unknown_channel', 404],
      [() => client.publish({ channel: 'workspace:acme', event: '', data: 1 }), 'bad_request', 400],
      [() => client.entityEvent({ workspace: 'a:b', entity: { type: 't', id: '1' }, action: 'x' }), 'bad_request', 400],
      [() => client.disconnect({ user: 'u1', code: 1000 }), 'bad_request', 400],
      [() => new Tidings({ url: counting.url, apiKey: 'wrong-key-0123456789', retries: 5 }).info(), 'unauthorized', 401],
    ];
    for (const [call, code, status] of cases) {
      const before = counting.requests.length;
      const began = Date.now();
      const error = await call().then(
        () => assert.fail(`expected ${code}`),
        (e) => e,
      );
      assert.ok(error instanceof TidingsApiError, String(error));
      assert.equal(error.code, code);
      assert.equal(error.status, status);
      assert.equal(error.attempts, 1);
      assert.equal(counting.requests.length - before, 1, `${code}: one request`);
      assert.ok(Date.now() - began < 1000, 'no backoff wait');
    }
    counting.close();
  });

  test('a body over the server limit is a 413, not a dropped connection, and is not retried', async () => {
    // The server refuses it on its Content-Length and drains the rest, so
    // fetch reads the answer instead of failing on a reset while sending.
    const client = new Tidings({ url: server.url, apiKey: server.apiKey, retries: 3, minBackoffMs: 10 });
    for (let i = 0; i < 3; i++) {
      const error = await client.publish({ channel: 'workspace:acme', event: 'x', data: 'x'.repeat(8 * 1024 * 1024) }).then(
        () => assert.fail('published'),
        (e) => e,
      );
      assert.ok(error instanceof TidingsApiError, String(error));
      assert.equal(error.code, 'limit_exceeded');
      assert.equal(error.status, 413);
      assert.equal(error.attempts, 1);
    }
  });

  test('a 2xx that is not the API answer is unexpected_response with its status, not retried', async () => {
    const calls = [
      () => client.info(),
      () => client.disconnect({ user: 'u1' }),
      () => client.publish({ channel: 'workspace:acme', event: 'x' }),
      () => client.publish({ channel: 'workspace:acme', event: 'x' }),
      () => client.broadcast({ channels: ['workspace:acme'], event: 'x' }),
      () => client.entityEvent({ workspace: 'acme', entity: { type: 't', id: '1' }, action: 'x' }),
      () => client.presence('workspace:acme'),
      () => client.history({ channel: 'workspace:acme' }),
      () => client.info(),
      () => client.unsubscribe({ user: 'u1', channel: 'workspace:acme' }),
      () => client.broadcast({ channels: ['workspace:acme'], event: 'x' }),
      () => client.disconnect({ user: 'u1' }),
    ];
    const answers = ['<html>portal</html>', { foo: 1 }, [1, 2], ...Array(7).fill({ foo: 1 }), { results: [1] }, { disconnected: 1.5 }];
    const front = await flakyFront(
      server.url,
      answers.map((answer) => [200, answer]),
    );
    const client = new Tidings({ url: front.url, apiKey: server.apiKey, retries: 5, minBackoffMs: 10 });
    for (const call of calls) {
      const error = await call().then(
        (value) => assert.fail(`resolved to ${JSON.stringify(value)}`),
        (e) => e,
      );
      assert.ok(error instanceof TidingsApiError, String(error));
      assert.equal(error.code, 'unexpected_response');
      assert.equal(error.status, 200);
      assert.equal(error.attempts, 1);
    }
    assert.equal(front.requests.length, calls.length, 'one request each');
    front.close();
  });
  test('a redirect is not followed: any 3xx is unexpected_response, not retried', async () => {
    // The redirect target answers like a publish; a followed 301/302 would
    // turn the POST into a bodyless GET and take that answer as the result.
    let targetHits = 0;
    const target = http.createServer((req, res) => {
      targetHits += 1;
      req.resume();
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ channel: 'workspace:acme', offset: 1, id: 'e_fake' }));
    });
    await new Promise((r) => target.listen(0, '127.0.0.1', r));
    const targetUrl = `http://127.0.0.1:${target.address().port}`;
    try {
      for (const status of [301, 302, 307, 308]) {
        const redirector = await flakyFront(server.url, [[status, '']], { location: `${targetUrl}/api/publish` });
        try {
          const client = new Tidings({ url: redirector.url, apiKey: server.apiKey, retries: 3, minBackoffMs: 10 });
          const error = await client.publish({ channel: 'workspace:acme', event: 'x', data: 1 }).then(
            (value) => assert.fail(`${status}: resolved to ${JSON.stringify(value)}`),
            (e) => e,
          );
          assert.ok(error instanceof TidingsApiError, String(error));
          assert.equal(error.code, 'unexpected_response');
          assert.equal(error.status, status);
          assert.equal(error.attempts, 1);
          assert.equal(redirector.requests.length, 1);
        } finally {
          redirector.close();
        }
      }
      assert.equal(targetHits, 0, 'the redirect target was never called');
    } finally {
      target.close();
    }
  });
});

describe('timeouts and cancellation', () => {
  test('a server that never answers times out per attempt, and each attempt is retried', async () => {
    const silent = await silentListener();
    const client = new Tidings({ url: `http://127.0.0.1:${silent.port}`, apiKey: 'k', timeoutMs: 300, minBackoffMs: 10, maxBackoffMs: 20 });
    let began = Date.now();
    let error = await client.publish({ channel: 'workspace:acme', event: 'x', data: 1 }, { retries: 0 }).catch((e) => e);
    assert.ok(error instanceof TidingsTimeoutError, String(error));
    assert.equal(error.code, 'timeout');
    assert.equal(error.attempts, 1);
    let took = Date.now() - began;
    assert.ok(took >= 280 && took < 3000, `one attempt took ${took} ms`);

    began = Date.now();
    error = await client.history({ channel: 'workspace:acme' }, { retries: 2 }).catch((e) => e);
    took = Date.now() - began;
    assert.ok(error instanceof TidingsTimeoutError, String(error));
    assert.equal(error.attempts, 3);
    assert.ok(took >= 850 && took < 6000, `three attempts took ${took} ms`);
    silent.close();
  });

  test('an answer whose body never decodes still times out per attempt, and is retried', async () => {
    // A 200 claiming gzip, its garbage body sent after the headers: undici's
    // body read does not settle after the abort, so only a hard limit ends it.
    const broken = await brokenGzipServer();
    const client = new Tidings({ url: broken.url, apiKey: 'k', timeoutMs: 300, retries: 1, minBackoffMs: 10, maxBackoffMs: 20 });
    for (let i = 0; i < 3; i++) {
      const began = Date.now();
      const outcome = await Promise.race([
        client.publish({ channel: 'workspace:acme', event: 'x', data: 1 }).catch((e) => e),
        sleep(5000).then(() => 'still pending after 5 s'),
      ]);
      const took = Date.now() - began;
      assert.ok(outcome instanceof TidingsTimeoutError, String(outcome));
      assert.equal(outcome.code, 'timeout');
      assert.equal(outcome.attempts, 2);
      assert.ok(took >= 580 && took < 3000, `two attempts took ${took} ms`);
    }
    assert.equal(broken.requests(), 6);
    broken.close();
  });

  test('an aborted call stops at once and is not retried', async () => {
    const silent = await silentListener();
    const client = new Tidings({ url: `http://127.0.0.1:${silent.port}`, apiKey: 'k', timeoutMs: 10_000 });
    const controller = new AbortController();
    setTimeout(() => controller.abort(new Error('caller gave up')), 200);
    const began = Date.now();
    await assert.rejects(client.info({ signal: controller.signal }), /caller gave up/);
    assert.ok(Date.now() - began < 3000);
    silent.close();
  });

  test('a closed port is a connection error after the retries', async () => {
    const port = await freePort();
    const client = new Tidings({ url: `http://127.0.0.1:${port}`, apiKey: 'k', retries: 2, minBackoffMs: 10 });
    const error = await client.info().catch((e) => e);
    assert.ok(error instanceof TidingsConnectionError, String(error));
    assert.equal(error.code, 'connection_failed');
    assert.equal(error.attempts, 3);
  });
});

/**
 * A TCP proxy to the real server that forwards every request but cuts the
 * connection instead of returning the first `dropFirstResponses` answers.
 */
async function lossyProxy(targetPort, { dropFirstResponses }) {
  let connections = 0;
  const proxy = net.createServer((client) => {
    connections += 1;
    const drop = connections <= dropFirstResponses;
    const upstream = net.connect(targetPort, '127.0.0.1');
    client.pipe(upstream);
    upstream.on('data', (chunk) => {
      if (drop) {
        client.destroy();
        upstream.destroy();
      } else {
        client.write(chunk);
      }
    });
    upstream.on('end', () => client.end());
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
  });
  await new Promise((r) => proxy.listen(0, '127.0.0.1', r));
  return { port: proxy.address().port, connections: () => connections, close: () => proxy.close() };
}

/**
 * An HTTP front for the real server: answers with `failures` (status, body)
 * first, then forwards each request to `target`; records every request body.
 */
async function flakyFront(target, failures, { location } = {}) {
  const pending = [...failures];
  const requests = [];
  const front = http.createServer(async (req, res) => {
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    const body = Buffer.concat(chunks).toString();
    requests.push(body);
    const failure = pending.shift();
    if (failure) {
      const [status, reply] = failure;
      const json = typeof reply !== 'string';
      res.writeHead(status, {
        'content-type': json ? 'application/json' : 'text/html',
        ...(location && status >= 300 && status < 400 ? { location } : {}),
      });
      return res.end(json ? JSON.stringify(reply) : reply);
    }
    const headers = { ...req.headers };
    delete headers.host;
    delete headers['content-length'];
    const upstream = await fetch(target + req.url, {
      method: req.method,
      headers,
      body: req.method === 'GET' ? undefined : body,
    });
    res.writeHead(upstream.status, { 'content-type': upstream.headers.get('content-type') ?? 'application/json' });
    res.end(await upstream.text());
  });
  await new Promise((r) => front.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${front.address().port}`,
    requests,
    close: () => front.close(),
  };
}

/** Answers every request with a 200 that claims gzip, its garbage body sent a moment after the headers. */
async function brokenGzipServer() {
  let requests = 0;
  const server = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      requests += 1;
      const body = Buffer.from('\x1f\x8bgarbage', 'latin1');
      res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': 'gzip', 'content-length': body.length });
      res.flushHeaders();
      setTimeout(() => res.end(body), 20);
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    requests: () => requests,
    close: () => server.close(),
  };
}

/** A TCP listener that accepts connections and never answers. */
async function silentListener() {
  const sockets = new Set();
  const listener = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('error', () => {});
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise((r) => listener.listen(0, '127.0.0.1', r));
  return {
    port: listener.address().port,
    close: () => {
      for (const s of sockets) s.destroy();
      listener.close();
    },
  };
}
