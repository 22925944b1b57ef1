/**
 * The HTTP long-polling transport (docs/protocol.md §5):
 * `GET /events?channel=…&since=…&epoch=…&limit=…&wait=…` →
 * `{channel, epoch, offset, recovered?, more, events}`, one long-poll loop per
 * channel.
 *
 * - `GET /events` without a channel is the probe: it checks the token and
 *   answers `connected` (there is no client id: polling is stateless).
 * - A subscribe's first poll has `wait=0`: with `since` it answers at once with
 *   `recovered` and the missed events; without, it gives the channel's current
 *   top. Later polls wait up to 25 s for the next event.
 * - A later poll answering `recovered: false` (the channel's history moved on
 *   past the position, or the server restarted) is reported like a
 *   resubscription that could not recover.
 * - `publish`/`history`/`presence`/`ping` go to `POST /request`. `status` is
 *   not available (no connection to carry it). `refresh` has no server state to
 *   update: the new token is checked by the server (a `ping` with it), must be
 *   for the same user, and is used for the following polls.
 * - Browsers open at most about six HTTP/1.1 connections per host: with more
 *   channels than that, prefer SSE (one stream for every channel) or HTTP/2.
 */
import type { ClientMessage, RequestId, ServerMessage, StreamPosition } from '../protocol.js';
import { authHeaders, postRequest, requestsInOrder, readError, validChannel, verifyRefresh, type RequestSink } from './http.js';
import type { Transport, TransportContext } from './types.js';

/** Seconds a poll waits for the next event. */
const WAIT_SECONDS = 25;
/** Events per poll. */
const LIMIT = 100;
/** A poll without an answer this long after its wait is given up as lost. */
const POLL_SLACK_MS = 15_000;
/**
 * Least time between the starts of two polls of a channel while events keep
 * coming (polls count against the user's request budget); events published
 * meanwhile come together in the next answer. A poll waiting on a quiet
 * channel still answers as soon as an event is published.
 */
const MIN_POLL_INTERVAL_MS = 100;
/** First and largest pause after `429 rate_limited`. */
const RATE_LIMIT_PAUSE_MS = [500, 8000] as const;

const sleep = (ms: number, signal: AbortSignal): Promise<void> =>
  new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done(): void {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done);
  });

interface PollReply {
  channel: string;
  epoch: string;
  offset: number;
  recovered?: boolean;
  more?: boolean;
  events: Extract<ServerMessage, { type: 'event' }>[];
}

export function pollingTransport(context: TransportContext): Transport {
  const { handlers } = context;
  const doFetch = context.fetch;
  let token = context.token;
  const loops = new Map<string, AbortController>();
  let done = false;
  let connected = false;

  const emit = (message: ServerMessage): void => {
    if (!done) handlers.message(message);
  };
  const reply = (message: ServerMessage): void => {
    queueMicrotask(() => emit(message));
  };
  const sink: RequestSink = {
    message: emit,
    fail: (id, text, unsent) => {
      if (done) return;
      if (unsent) handlers.unsent(id);
      else handlers.fail(id, 'connection_lost', text);
      // The server is out of reach (or the request was lost on the way): the
      // connection is in doubt, so it reconnects; a request that certainly did
      // not leave waits in the offline queue for the next connection.
      queueMicrotask(() => finish(1006, text, true));
    },
  };
  // Sent one at a time, in call order; not once the transport closed (the
  // client has then failed them with `connection_lost`).
  const request = requestsInOrder(context, sink, () => done);

  const withId = (id: RequestId | undefined): { id?: RequestId } => (id !== undefined ? { id } : {});
  const finish = (code: number, reason: string, reachable: boolean, status?: number): void => {
    if (done) return;
    done = true;
    for (const c of loops.values()) c.abort();
    loops.clear();
    handlers.close(status === undefined ? { code, reason, reachable } : { code, reason, reachable, status });
  };

  /** GET with the token, given up after `limitMs`. */
  const get = async (url: string, signal: AbortSignal | undefined, limitMs: number): Promise<Response> => {
    const timer = new AbortController();
    const timeout = setTimeout(() => timer.abort(new Error(`no answer within ${limitMs} ms`)), limitMs);
    const abort = (): void => timer.abort(signal?.reason);
    signal?.addEventListener('abort', abort);
    try {
      return await doFetch!(url, { headers: authHeaders(token), signal: timer.signal, cache: 'no-store' });
    } finally {
      clearTimeout(timeout);
      signal?.removeEventListener('abort', abort);
    }
  };

  const probe = async (): Promise<void> => {
    if (!doFetch) return finish(1006, 'no fetch implementation', false);
    let response: Response;
    try {
      response = await get(`${context.httpUrl}/events`, undefined, POLL_SLACK_MS);
    } catch (err) {
      return finish(1006, `polling request failed: ${String(err)}`, false);
    }
    if (done) return;
    if (response.status === 401 || response.status === 403) {
      const error = await readError(response, 'unauthorized');
      emit({ type: 'error', code: error.code, message: error.message });
      return finish(4500, error.message, true, response.status);
    }
    if (response.status === 429) {
      // Over the user's request budget: reconnect after a backoff, like close 4004.
      const error = await readError(response, 'rate_limited');
      return finish(4004, error.message, true, response.status);
    }
    if (!response.ok) {
      // 404/405: not served here; 5xx: not usable now.
      return finish(1006, `polling not available: HTTP ${response.status}`, false, response.status);
    }
    let body: { user?: unknown; heartbeat?: unknown; expires_at?: unknown; node?: unknown; version?: unknown };
    try {
      body = (await response.json()) as typeof body;
    } catch {
      return finish(1006, 'polling probe: not JSON', false, response.status);
    }
    if (done) return;
    connected = true;
    const heartbeat = typeof body.heartbeat === 'number' ? body.heartbeat : 0;
    emit({
      type: 'connected',
      client: '',
      user: typeof body.user === 'string' ? body.user : '',
      // A poll answers within its wait; each answer counts as a heartbeat.
      heartbeat: Math.max(heartbeat, (WAIT_SECONDS + 5) * 1000),
      ...(typeof body.expires_at === 'string' ? { expires_at: body.expires_at } : {}),
      node: typeof body.node === 'string' ? body.node : '',
      version: typeof body.version === 'string' ? body.version : '1',
    });
  };

  const loop = async (channel: string, since: StreamPosition | undefined, id: RequestId | undefined): Promise<void> => {
    loops.get(channel)?.abort();
    const controller = new AbortController();
    loops.set(channel, controller);
    const alive = (): boolean => !done && !controller.signal.aborted;
    const forget = (): void => {
      if (loops.get(channel) === controller) loops.delete(channel);
    };
    let position = since;
    let first = true;
    let started = 0;
    let busy = false;
    let limited = 0;
    while (alive()) {
      const elapsed = Date.now() - started;
      if (busy && elapsed < MIN_POLL_INTERVAL_MS) await sleep(MIN_POLL_INTERVAL_MS - elapsed, controller.signal);
      if (!alive()) return;
      started = Date.now();
      const url = new URL(`${context.httpUrl}/events`);
      url.searchParams.set('channel', channel);
      if (position) {
        url.searchParams.set('since', String(position.offset));
        url.searchParams.set('epoch', position.epoch);
      }
      url.searchParams.set('limit', String(LIMIT));
      const wait = first ? 0 : WAIT_SECONDS;
      url.searchParams.set('wait', String(wait));
      let body: PollReply;
      try {
        const response = await get(url.toString(), controller.signal, wait * 1000 + POLL_SLACK_MS);
        if (!alive()) return;
        if (!response.ok) {
          const error = await readError(response, 'bad_request');
          if (!alive()) return;
          if (response.status === 429) {
            // Over the user's request budget: pause, then ask again.
            const pause = Math.min(RATE_LIMIT_PAUSE_MS[1], RATE_LIMIT_PAUSE_MS[0] * 2 ** limited++);
            await sleep(pause * (0.5 + Math.random() / 2), controller.signal);
            continue;
          }
          if (first) {
            forget();
            emit({ type: 'error', ...withId(id), code: error.code, message: error.message });
            return;
          }
          if (response.status === 401) {
            return finish(error.code === 'token_expired' ? 4003 : 4500, error.message, true, response.status);
          }
          if (response.status === 403 || response.status === 404) {
            // The channel is no longer allowed (or no longer exists).
            forget();
            emit({ type: 'error', channel, code: error.code, message: error.message });
            return;
          }
          return finish(1006, `poll failed: HTTP ${response.status} ${error.message}`, true, response.status);
        }
        body = (await response.json()) as PollReply;
        limited = 0;
      } catch (err) {
        if (!alive()) return;
        return finish(1006, `poll failed: ${String(err)}`, true);
      }
      if (!alive()) return;
      if (first) {
        first = false;
        emit({
          type: 'subscribed',
          ...withId(id),
          channel,
          offset: body.offset,
          epoch: body.epoch,
          recoverable: true,
          ...(since ? { recovered: body.recovered === true } : {}),
        });
      } else if (body.recovered === false) {
        // Where this loop stood is gone: continue from the top; the app reloads.
        emit({ type: 'subscribed', channel, offset: body.offset, epoch: body.epoch, recoverable: true, recovered: false });
      }
      for (const event of body.events) {
        if (!alive()) return;
        emit(event);
      }
      position = { offset: body.offset, epoch: body.epoch };
      busy = body.events.length > 0 && body.more !== true;
      // Every answer proves the server is there (the connection's watchdog).
      emit({ type: 'ping' });
    }
  };

  void probe();

  return {
    name: 'polling',
    send(message: ClientMessage) {
      if (done || !connected) return;
      switch (message.type) {
        case 'subscribe':
          if (!validChannel(message.channel)) {
            reply({ type: 'error', ...withId(message.id), code: 'bad_request', message: `invalid channel name: ${message.channel}` });
            return;
          }
          void loop(message.channel, message.since, message.id);
          return;
        case 'unsubscribe':
          loops.get(message.channel)?.abort();
          loops.delete(message.channel);
          reply({ type: 'unsubscribed', ...withId(message.id), channel: message.channel });
          return;
        case 'publish':
        case 'history':
        case 'presence':
        case 'ping':
          request(() => token, message);
          return;
        case 'refresh': {
          const next = message.token;
          void verifyRefresh(context, token, next, message.id, sink).then((ok) => {
            if (ok) token = next;
          });
          return;
        }
        case 'status':
          reply({
            type: 'error',
            ...withId(message.id),
            code: 'not_available',
            message: 'status needs a connection: not available over polling',
          });
          return;
        case 'pong':
        case 'auth':
          return;
      }
    },
    close() {
      done = true;
      for (const c of loops.values()) c.abort();
      loops.clear();
    },
    idle() {
      return connected && loops.size === 0;
    },
  };
}
