/**
 * The SSE transport (docs/protocol.md §5): `GET /sse?channel=a&channel=b`, read
 * with `fetch` as a stream so the token goes in the `Authorization` header (not
 * the URL) and HTTP statuses are visible.
 *
 * - The stream names its channels, so every change of the channel set reopens
 *   it with the new list and the last resume token (`last_event_id`): channels
 *   that were already on the stream resume where they were (nothing lost,
 *   nothing twice) and are not reported to the app again unless they could not
 *   be recovered; new channels start fresh. Changes made together are batched
 *   into one reopen.
 * - The resume token is kept across reconnects (`TransportContext.resume`), so
 *   after a `disconnect` or a dropped stream the next stream resumes every
 *   channel with the server's recovery guarantee.
 * - `publish`/`history`/`presence`/`ping` go to `POST /request`; `status` and
 *   `refresh` too, naming the stream with `X-Tidings-Client` (the `client` of
 *   its `connected`). The status is set again on every new stream.
 * - With no channel there is no stream: the transport checks that `/sse` is
 *   served and that the token is accepted, reports `connected` without a client
 *   id, and opens a stream with the first subscription.
 */
import type { RequestId, ServerMessage, StreamPosition, SubscribedMessage } from '../protocol.js';
import type { ClientMessage, PresenceStatus } from '../protocol.js';
import { authHeaders, postRequest, requestsInOrder, readError, validChannel, verifyRefresh, type RequestSink } from './http.js';
import type { Transport, TransportContext } from './types.js';
import { tokenExpiry, tokenSubject } from '../jwt.js';

/** Splits an SSE byte stream into messages (WHATWG event-stream rules). */
export class SseParser {
  #buffer = '';
  #data: string[] = [];
  #event = '';
  #id: string | undefined;
  onMessage: (message: { event: string; data: string; id: string | undefined }) => void = () => {};
  onComment: () => void = () => {};

  push(chunk: string): void {
    this.#buffer += chunk;
    let index: number;
    while ((index = this.#buffer.search(/\r\n|\r|\n/)) >= 0) {
      // A lone CR at the end of a chunk may be the first half of CRLF.
      if (this.#buffer[index] === '\r' && index === this.#buffer.length - 1) break;
      const line = this.#buffer.slice(0, index);
      const eol = this.#buffer[index] === '\r' && this.#buffer[index + 1] === '\n' ? 2 : 1;
      this.#buffer = this.#buffer.slice(index + eol);
      this.#line(line);
    }
  }

  #line(line: string): void {
    if (line === '') {
      if (this.#data.length > 0) {
        this.onMessage({ event: this.#event || 'message', data: this.#data.join('\n'), id: this.#id });
      }
      this.#data = [];
      this.#event = '';
      return;
    }
    if (line.startsWith(':')) {
      this.onComment();
      return;
    }
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'data') this.#data.push(value);
    else if (field === 'event') this.#event = value;
    else if (field === 'id' && !value.includes('\0')) this.#id = value;
  }
}

/**
 * Where the last stream stood: its resume token and, per channel, the position
 * the token carries (kept from the messages, never read from the opaque token).
 */
class SseResume {
  token: string | undefined;
  readonly positions = new Map<string, StreamPosition>();

  copy(): SseResume {
    const copy = new SseResume();
    copy.token = this.token;
    for (const [channel, position] of this.positions) copy.positions.set(channel, { ...position });
    return copy;
  }
}

interface ChannelState {
  /** The connection's `subscribe`, answered by this channel's next `subscribed`. */
  request?: { id: RequestId | undefined; since: StreamPosition | undefined };
  /** Subscribed on an earlier stream of this transport (a reopen resumes it quietly). */
  active: boolean;
  /** The last position handed to the connection. */
  position?: StreamPosition;
  /** Epoch of the channel on the current stream. */
  epoch?: string;
}

interface Stream {
  controller: AbortController;
  channels: string[];
  /** The `client` of the stream's `connected`; null until it arrived. */
  clientId: string | null;
  disconnect?: { code: number; reason: string };
  /** Whether the request carried `last_event_id`. */
  resumed: boolean;
  /** Channels whose `subscribed` (or `error`) arrived on this stream. */
  seen: Set<string>;
}

type ControlMessage = Extract<ClientMessage, { type: 'status' | 'refresh' }>;

const samePosition = (a: StreamPosition | undefined, b: StreamPosition | undefined): boolean =>
  a !== undefined && b !== undefined && a.epoch === b.epoch && a.offset === b.offset;

export function sseTransport(context: TransportContext): Transport {
  const { handlers } = context;
  const doFetch = context.fetch;
  let token = context.token;
  const resume = context.resume instanceof SseResume ? context.resume.copy() : new SseResume();
  handlers.saveResume(resume);
  const channels = new Map<string, ChannelState>();
  let stream: Stream | null = null;
  let done = false;
  let connected = false;
  let reopenQueued = false;
  /** Status to (re)apply on every stream; `online` is every stream's default. */
  let presenceStatus: PresenceStatus = 'online';
  /** `status`/`refresh` waiting for the stream being opened. */
  let deferred: ControlMessage[] = [];

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

  const finish = (code: number, reason: string, reachable: boolean, status?: number): void => {
    if (done) return;
    done = true;
    stream?.controller.abort();
    stream = null;
    handlers.close(status === undefined ? { code, reason, reachable } : { code, reason, reachable, status });
  };
  const withId = (id: RequestId | undefined): { id?: RequestId } => (id !== undefined ? { id } : {});

  // ---- the stream ---------------------------------------------------------

  const open = (names: string[]): void => {
    if (!doFetch) return finish(1006, 'no fetch implementation', false);
    stream?.controller.abort();
    const own: Stream = { controller: new AbortController(), channels: names, clientId: null, resumed: false, seen: new Set() };
    stream = own;
    // The server resumes only the channels of the URL; the token it sends next
    // carries only those.
    for (const channel of resume.positions.keys()) {
      if (!names.includes(channel)) resume.positions.delete(channel);
    }
    const url = new URL(`${context.httpUrl}/sse`);
    for (const channel of names) url.searchParams.append('channel', channel);
    if (resume.token !== undefined) {
      url.searchParams.set('last_event_id', resume.token);
      own.resumed = true;
    }
    void read(own, url.toString());
  };

  const read = async (own: Stream, url: string): Promise<void> => {
    let response: Response;
    try {
      response = await doFetch!(url, {
        headers: { ...authHeaders(token), Accept: 'text/event-stream' },
        signal: own.controller.signal,
        cache: 'no-store',
      });
    } catch (err) {
      if (own !== stream) return;
      return finish(1006, `SSE request failed: ${String(err)}`, connected);
    }
    if (own !== stream) {
      void response.body?.cancel().catch(() => {});
      return;
    }
    if (!response.ok || !response.body) return refused(own, response);
    const parser = new SseParser();
    parser.onComment = () => {
      if (own === stream) emit({ type: 'ping' });
    };
    parser.onMessage = ({ data, id }) => {
      if (own !== stream || done) return;
      let parsed: unknown;
      try {
        parsed = JSON.parse(data);
      } catch {
        return;
      }
      if (!parsed || typeof parsed !== 'object' || typeof (parsed as { type?: unknown }).type !== 'string') return;
      if (id !== undefined && id !== '') {
        resume.token = id;
      }
      onMessage(own, parsed as ServerMessage | { type: 'unrecoverable' });
    };
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    try {
      for (;;) {
        const { value, done: ended } = await reader.read();
        if (ended || own !== stream) break;
        parser.push(value);
      }
    } catch {
      // Aborted or broken: decided below.
    }
    if (own !== stream) {
      void reader.cancel().catch(() => {});
      return;
    }
    const end = own.disconnect;
    if (end) finish(end.code, end.reason, true);
    else finish(1006, 'SSE stream ended', true);
  };

  /** The stream was refused before it started. */
  const refused = async (own: Stream, response: Response): Promise<void> => {
    const status = response.status;
    const error = await readError(response, status === 401 ? 'unauthorized' : 'bad_request');
    if (own !== stream || done) return;
    if (status === 401 || status === 403) {
      if (!connected) {
        // Before `connected`: the connection reads it as an authentication failure.
        emit({ type: 'error', code: error.code, message: error.message });
        return finish(4500, error.message, true, status);
      }
      if (error.code === 'token_expired') return finish(4003, error.message, true, status);
      return finish(4500, error.message, true, status);
    }
    // 429: the user's or the node's connection limit (as close 4503), or a request budget (as 4004).
    if (status === 429) return finish(error.code === 'rate_limited' ? 4004 : 4503, error.message, true, status);
    if (status === 400) {
      if (own.resumed) {
        // A resume token this server cannot read (another server, or a version
        // it no longer reads): open fresh; each channel reports what it missed.
        resume.token = undefined;
        resume.positions.clear();
        return open(own.channels);
      }
      // The channel list itself was refused: fail the subscribes that changed it.
      let failed = false;
      for (const [channel, state] of [...channels]) {
        if (!state.request || state.active) continue;
        channels.delete(channel);
        emit({ type: 'error', ...withId(state.request.id), code: error.code, message: error.message });
        failed = true;
      }
      if (failed && connected) return reopen();
      return finish(1006, `SSE refused: ${error.message}`, true, status);
    }
    // 404/405: this server (or a proxy) does not serve SSE.
    finish(1006, `SSE not available: HTTP ${status}`, connected, status);
  };

  const onMessage = (own: Stream, message: ServerMessage | { type: 'unrecoverable' }): void => {
    switch (message.type) {
      case 'connected':
        return onConnected(own, message);
      case 'subscribed':
        own.seen.add(message.channel);
        return onSubscribed(message);
      case 'unrecoverable':
        // `subscribed` with `recovered: false` follows and says it all.
        return;
      case 'event': {
        const state = channels.get(message.channel);
        if (state?.epoch === undefined) return;
        const position = { offset: message.offset, epoch: state.epoch };
        resume.positions.set(message.channel, position);
        state.position = position;
        // Only channels whose `subscribed` was handed on; a channel dropped or
        // asked for again waits for the next stream.
        if (state.active) emit(message);
        return;
      }
      case 'error':
        if (message.channel !== undefined) own.seen.add(message.channel);
        return onChannelError(message);
      case 'unsubscribed':
        // The server removed the channel (the server API): it is gone from the stream.
        channels.delete(message.channel);
        resume.positions.delete(message.channel);
        return emit(message);
      case 'disconnect':
        own.disconnect = { code: message.code, reason: message.reason };
        return emit(message);
      default:
        return emit(message);
    }
  };

  const onConnected = (own: Stream, message: Extract<ServerMessage, { type: 'connected' }>): void => {
    own.clientId = message.client;
    if (!connected) {
      connected = true;
      // The connection sends its subscribes from inside this call.
      emit(message);
      // Channels the stream was opened with that nobody asked for any more.
      let stale = false;
      for (const [channel, state] of [...channels]) {
        if (!state.request && !state.active) {
          channels.delete(channel);
          stale = true;
        }
      }
      if (stale) scheduleReopen();
    } else {
      emit(message);
    }
    const waiting = deferred;
    deferred = [];
    if (presenceStatus !== 'online' && !waiting.some((m) => m.type === 'status')) {
      const again: ControlMessage = { type: 'status', status: presenceStatus };
      void postRequest(context, token, again, { message: () => {}, fail: () => {} }, message.client);
    }
    for (const request of waiting) control(request);
  };

  const onSubscribed = (message: SubscribedMessage): void => {
    const channel = message.channel;
    const state = channels.get(channel);
    const inToken = resume.positions.get(channel);
    if (message.recovered !== true) resume.positions.set(channel, { offset: message.offset, epoch: message.epoch });
    if (!state) return;
    state.epoch = message.epoch;
    const request = state.request;
    if (request) {
      state.request = undefined;
      state.active = true;
      const since = request.since;
      const answer: SubscribedMessage = {
        type: 'subscribed',
        ...withId(request.id),
        channel,
        offset: message.offset,
        epoch: message.epoch,
        recoverable: message.recoverable,
      };
      if (since) {
        if (message.recovered === true) {
          // The server replayed from the token's position: enough when that is
          // not past where the connection stands (it drops what it already had).
          answer.recovered =
            inToken !== undefined && inToken.epoch === since.epoch && inToken.offset <= since.offset && message.epoch === since.epoch;
        } else if (message.recovered === false) {
          answer.recovered = false;
        } else {
          // Not in the token: fresh, so nothing was replayed. Only a channel
          // where nothing happened since is whole.
          answer.recovered = samePosition(since, { offset: message.offset, epoch: message.epoch });
        }
      }
      state.position = answer.recovered === true && since ? since : { offset: message.offset, epoch: message.epoch };
      emit(answer);
      return;
    }
    if (!state.active) return;
    // A reopen of a channel already subscribed.
    const whole =
      message.recovered === true ||
      (message.recovered === undefined && samePosition(state.position, { offset: message.offset, epoch: message.epoch }));
    if (whole) return;
    state.position = { offset: message.offset, epoch: message.epoch };
    // Tell the connection (without an id): events were missed, reload.
    emit({ ...message, recovered: false });
  };

  const onChannelError = (message: Extract<ServerMessage, { type: 'error' }>): void => {
    const channel = message.channel;
    if (channel === undefined) return emit(message);
    resume.positions.delete(channel);
    const state = channels.get(channel);
    if (!state) return;
    channels.delete(channel);
    if (state.request) {
      emit({ ...message, ...withId(state.request.id) });
    } else if (state.active) {
      emit(message);
    }
  };

  // ---- channel changes ----------------------------------------------------

  let forceReopen = false;
  /** Reopens once after the current burst of changes; `force` even when the channel list is the same. */
  const scheduleReopen = (force = false): void => {
    if (force) forceReopen = true;
    if (reopenQueued) return;
    reopenQueued = true;
    queueMicrotask(() => {
      reopenQueued = false;
      if (!done) reopen();
    });
  };

  /**
   * The channels for a stream: at most `maxChannels` (the server refuses the
   * whole stream beyond), those already on it first. The others are refused
   * one by one with `limit_exceeded`, as a WebSocket subscribe past the limit.
   */
  const withinLimit = (): string[] => {
    const names = [...channels.keys()];
    if (names.length <= context.maxChannels) return names;
    const first = names.filter((name) => channels.get(name)?.active === true);
    const rest = names.filter((name) => channels.get(name)?.active !== true);
    const keep = [...first, ...rest].slice(0, context.maxChannels);
    const kept = new Set(keep);
    for (const name of names) {
      if (kept.has(name)) continue;
      const state = channels.get(name);
      channels.delete(name);
      resume.positions.delete(name);
      if (!state?.request) continue;
      reply({
        type: 'error',
        ...withId(state.request.id),
        code: 'limit_exceeded',
        message: `at most ${context.maxChannels} channels on one connection`,
      });
    }
    return keep;
  };

  const reopen = (): void => {
    const names = withinLimit();
    const force = forceReopen;
    forceReopen = false;
    const current = stream;
    if (!force && current && names.length === current.channels.length && names.every((n) => current.channels.includes(n))) {
      return;
    }
    if (names.length > 0) return open(names);
    // No channel left: no stream.
    stream?.controller.abort();
    const had = stream?.clientId;
    stream = null;
    for (const request of deferred.splice(0)) control(request);
    if (connected && had) emit(idleConnected());
  };

  // ---- no stream: probe ----------------------------------------------------

  /** `connected` without a stream: no client id; the user is the token's. */
  const idleConnected = (): ServerMessage => {
    const expiry = tokenExpiry(token);
    return {
      type: 'connected',
      client: '',
      user: tokenSubject(token) ?? '',
      heartbeat: 25_000,
      // So the connection refreshes the token before it expires.
      ...(expiry !== undefined ? { expires_at: new Date(expiry).toISOString() } : {}),
      node: '',
      version: '1',
    };
  };

  /**
   * With no channel to open a stream on: `GET /sse` without a channel answers
   * 400 where SSE is served (404 where not), and `POST /request` `ping` checks
   * the token.
   */
  const probe = async (): Promise<void> => {
    if (!doFetch) return finish(1006, 'no fetch implementation', false);
    let served: Response;
    try {
      served = await doFetch(`${context.httpUrl}/sse`, { headers: { Accept: 'text/event-stream' }, cache: 'no-store' });
      void served.body?.cancel().catch(() => {});
    } catch (err) {
      return finish(1006, `SSE request failed: ${String(err)}`, false);
    }
    if (done) return;
    if (served.status !== 400) {
      return finish(1006, `SSE not available: HTTP ${served.status}`, false, served.status);
    }
    let verdict: ServerMessage | undefined;
    await postRequest(context, token, { type: 'ping', id: 'probe' }, {
      message: (m) => {
        verdict = m;
      },
      fail: () => {},
    });
    if (done) return;
    if (!verdict) return finish(1006, 'POST /request failed', false);
    if (verdict.type === 'error' && (verdict.code === 'unauthorized' || verdict.code === 'token_expired')) {
      emit({ type: 'error', code: verdict.code, message: verdict.message });
      return finish(4500, verdict.message, true, 401);
    }
    connected = true;
    emit(idleConnected());
    // Subscribes sent from inside `connected` are batched into the first stream.
  };

  // ---- requests -----------------------------------------------------------

  /** `status` and `refresh` act on the stream. */
  const control = (message: ControlMessage): void => {
    const id = message.id;
    if (stream && stream.clientId === null) {
      deferred.push(message);
      return;
    }
    if (stream && stream.clientId) {
      const client = stream.clientId;
      void postRequest(context, token, message, sink, client).then((answer) => {
        if (answer?.type === 'status') presenceStatus = answer.status;
        if (answer?.type === 'refreshed' && message.type === 'refresh') token = message.token;
      });
      return;
    }
    // No stream: nothing on the server to change now.
    if (message.type === 'status') {
      presenceStatus = message.status;
      reply({ type: 'status', ...withId(id), status: message.status });
      return;
    }
    void verifyRefresh(context, token, message.token, id, sink).then((ok) => {
      if (ok) token = message.token;
    });
  };

  if (context.channels.size > 0) {
    const names: string[] = [];
    for (const channel of context.channels.keys()) {
      if (!validChannel(channel)) continue;
      channels.set(channel, { active: false });
      names.push(channel);
    }
    // The others are subscribed (and refused) once the stream is up.
    if (names.length > 0) open(names.slice(0, context.maxChannels));
    else void probe();
  } else {
    void probe();
  }

  return {
    name: 'sse',
    send(message: ClientMessage) {
      if (done) return;
      switch (message.type) {
        case 'subscribe': {
          if (!validChannel(message.channel)) {
            reply({ type: 'error', ...withId(message.id), code: 'bad_request', message: `invalid channel name: ${message.channel}` });
            return;
          }
          const state = channels.get(message.channel) ?? { active: false };
          state.request = { id: message.id, since: message.since ? { ...message.since } : undefined };
          if (message.since) state.position = { ...message.since };
          state.active = false;
          channels.set(message.channel, state);
          // Answered by the stream being opened, if it names the channel and has
          // not answered for it yet; otherwise by a new stream.
          const pending = stream !== null && stream.channels.includes(message.channel) && !stream.seen.has(message.channel);
          if (!pending) scheduleReopen(stream !== null && stream.channels.includes(message.channel));
          return;
        }
        case 'unsubscribe':
          channels.delete(message.channel);
          reply({ type: 'unsubscribed', ...withId(message.id), channel: message.channel });
          scheduleReopen();
          return;
        case 'status':
        case 'refresh':
          control(message);
          return;
        case 'publish':
        case 'history':
        case 'presence':
        case 'ping':
          request(() => token, message);
          return;
        case 'pong':
        case 'auth':
          return;
      }
    },
    close() {
      done = true;
      stream?.controller.abort();
      stream = null;
    },
    idle() {
      return connected && stream === null;
    },
  };
}
