// Backoff timing with fake timers and a WebSocket that can never connect.
import assert from 'node:assert/strict';
import { mock, test } from 'node:test';
import { TidingsClient, backoffDelay, backoffUpperBound } from '../../packages/client/dist/index.js';

test('backoffDelay stays within [min, min(max, min + min(max, min·2^n))]', () => {
  const opts = { minDelay: 1000, maxDelay: 30_000 };
  for (let n = 0; n < 12; n++) {
    assert.equal(backoffDelay(n, opts, () => 0), 1000);
    const hi = backoffDelay(n, opts, () => 0.999999);
    assert.ok(hi <= backoffUpperBound(n, opts) && hi > backoffUpperBound(n, opts) - 1);
    for (let i = 0; i < 200; i++) {
      const d = backoffDelay(n, opts);
      assert.ok(d >= 1000 && d <= backoffUpperBound(n, opts), `attempt ${n}: ${d}`);
    }
  }
  assert.equal(backoffUpperBound(0, opts), 2000);
  assert.equal(backoffUpperBound(3, opts), 9000);
  assert.equal(backoffUpperBound(10, opts), 30_000);
});

/** A WebSocket that fails like a refused TCP connection. */
function failingWebSocket(log) {
  return class {
    readyState = 0;
    onopen = null;
    onmessage = null;
    onerror = null;
    onclose = null;
    constructor(url) {
      log.push(url);
      queueMicrotask(() => {
        this.readyState = 3;
        this.onerror?.({});
        this.onclose?.({ code: 1006, reason: '' });
      });
    }
    send() {}
    close() {}
  };
}

const flush = async () => {
  for (let i = 0; i < 5; i++) await Promise.resolve();
};

test('reconnect attempts wait exactly the jittered backoff (fake timers), then failed after maxAttempts', async () => {
  mock.timers.enable({ apis: ['setTimeout'] });
  try {
    const opened = [];
    const randoms = [0.5, 0.1, 0.9, 0.3, 0.7];
    let r = 0;
    const states = [];
    const client = new TidingsClient({
      url: 'http://127.0.0.1:9',
      WebSocket: failingWebSocket(opened),
      transports: ['websocket'],
      getToken: async () => 'token',
      random: () => randoms[r++ % randoms.length],
      reconnect: { minDelay: 1000, maxDelay: 30_000, maxAttempts: 5 },
      watchNetwork: false,
    });
    client.on('state', (s) => states.push(s.state));
    await flush();
    assert.equal(opened.length, 1, 'the first attempt is immediate');
    const opts = { minDelay: 1000, maxDelay: 30_000 };
    for (let n = 1; n <= 4; n++) {
      // After failure n the delay is backoffDelay(n) with the next random value.
      const expected = Math.min(opts.maxDelay, opts.minDelay + randoms[n - 1] * Math.min(opts.maxDelay, opts.minDelay * 2 ** n));
      assert.ok(expected >= 1000 && expected <= backoffUpperBound(n, opts));
      mock.timers.tick(Math.floor(expected) - 1);
      await flush();
      assert.equal(opened.length, n, `attempt ${n + 1} not before ${expected} ms`);
      mock.timers.tick(1);
      await flush();
      assert.equal(opened.length, n + 1, `attempt ${n + 1} at ${expected} ms`);
    }
    await flush();
    assert.equal(client.state, 'failed');
    assert.equal(client.stateInfo.attempt, 5);
    mock.timers.tick(120_000);
    await flush();
    assert.equal(opened.length, 5, 'nothing after failed');
    assert.ok(states.includes('connecting') && states.at(-1) === 'failed');
    client.retry();
    await flush();
    assert.equal(opened.length, 6, 'retry() starts a new round at once');
    client.close();
  } finally {
    mock.timers.reset();
  }
});

test('offline pauses attempts; online triggers one at once', async () => {
  mock.timers.enable({ apis: ['setTimeout'] });
  const target = new EventTarget();
  const saved = { add: globalThis.addEventListener, remove: globalThis.removeEventListener };
  globalThis.addEventListener = target.addEventListener.bind(target);
  globalThis.removeEventListener = target.removeEventListener.bind(target);
  try {
    const opened = [];
    const client = new TidingsClient({
      url: 'http://127.0.0.1:9',
      WebSocket: failingWebSocket(opened),
      transports: ['websocket'],
      getToken: async () => 'token',
      random: () => 0,
      reconnect: { minDelay: 5000, maxDelay: 10_000, maxAttempts: 100 },
    });
    await flush();
    assert.equal(opened.length, 1);
    target.dispatchEvent(new Event('offline'));
    assert.equal(client.stateInfo.online, false);
    assert.equal(client.stateInfo.reason.error, 'offline');
    mock.timers.tick(60_000);
    await flush();
    assert.equal(opened.length, 1, 'no attempt while offline');
    target.dispatchEvent(new Event('online'));
    await flush();
    assert.equal(opened.length, 2, 'immediate attempt on online');
    client.close();
  } finally {
    globalThis.addEventListener = saved.add;
    globalThis.removeEventListener = saved.remove;
    mock.timers.reset();
  }
});
