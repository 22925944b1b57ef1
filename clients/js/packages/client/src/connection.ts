/**
 * The connection engine: one logical connection to a Tidings server over a
 * fallback chain of transports, with the state machine, reconnects with backoff,
 * token refresh, the heartbeat watchdog, subscriptions kept across reconnects and
 * the offline request queue. The public client and the cross-tab hub sit on top.
 */
import { backoffDelay } from './backoff.js';
import { Emitter } from './emitter.js';
import { TidingsError } from './errors.js';
import { tokenExpiry } from './jwt.js';
import {
  shouldReconnect,
  type ClientMessage,
  type ConnectedMessage,
  type EventEnvelope,
  type PresenceStatus,
  type RequestId,
  type ServerMessage,
  type StreamPosition,
  type SubscribedMessage,
} from './protocol.js';
import type {
  Transport,
  TransportClose,
  TransportFactory,
  TransportName,
  WebSocketConstructor,
} from './transports/types.js';

export type ConnectionState = 'connecting' | 'connected' | 'reconnecting' | 'disconnected' | 'failed';

/** Why the state changed. */
export interface StateReason {
  /** Close code, when a close caused it. */
  code?: number;
  /** Server error code or SDK code (`offline`, `connection_lost`, `max_attempts`, …). */
  error?: string;
  message: string;
}

/** A snapshot of the connection, as emitted on every `state` change. */
export interface StateInfo {
  state: ConnectionState;
  previous: ConnectionState | null;
  reason?: StateReason;
  /** The transport in use (or being tried). */
  transport: TransportName | null;
  /** The server's id for this connection (send it as `exclude_client`). */
  clientId: string | null;
  /** The user of the token. */
  user: string | null;
  /** Reconnect attempts made since the last successful connect. */
  attempt: number;
  /** When the next attempt starts (epoch ms), while waiting for one. */
  nextAttemptAt?: number;
  /** False while the browser reports being offline (attempts are paused). */
  online: boolean;
}

/** The snapshot before anything has happened. */
export function initialStateInfo(): StateInfo {
  return {
    state: 'disconnected',
    previous: null,
    transport: null,
    clientId: null,
    user: null,
    attempt: 0,
    online: true,
  };
}

export interface TokenRequest {
  /** `initial`, `expired` (4003 or an expired token was refused), `refresh` (before expiry), `reauthenticate` (the app asked). */
  reason: 'initial' | 'expired' | 'refresh' | 'reauthenticate';
}

export interface ConnectionOptions {
  url: string;
  getToken: (request: TokenRequest) => Promise<string>;
  transports: TransportName[];
  transportFactories: Partial<Record<TransportName, TransportFactory>>;
  WebSocket: WebSocketConstructor | undefined;
  fetch: typeof fetch | undefined;
  minDelay: number;
  maxDelay: number;
  maxAttempts: number;
  heartbeatGrace: number;
  refreshMargin: number;
  offlineQueueSize: number;
  /** Largest request the server takes, in bytes of JSON (its `connection.max_message_size`). */
  maxMessageSize: number;
  /** Most channels on one connection (the server's `connection.max_channels`). */
  maxChannels: number;
  random: () => number;
  watchNetwork: boolean;
}

export interface SubscribedInfo {
  channel: string;
  offset: number;
  epoch: string;
  recoverable: boolean;
  /** `true`: every missed event follows; `false`: events were missed, reload; absent: fresh subscription. */
  recovered?: boolean;
  /** Whether this was a resubscription after a reconnect. */
  resubscribed: boolean;
}

export interface ConnectionEvents {
  state: StateInfo;
  event: EventEnvelope;
  subscribed: SubscribedInfo;
  subscribeError: { channel: string; error: TidingsError };
  /** The server removed a subscription (`unsubscribed` push). */
  serverUnsubscribed: { channel: string; reason: string };
  /** The server confirmed a new presence status for this connection. */
  presenceStatus: PresenceStatus;
}

interface ChannelEntry {
  /** Where to resume from; advanced by every delivered event. */
  position?: StreamPosition;
  /** `waiting`: refused with `engine_unavailable`, subscribed again after a pause. */
  status: 'pending' | 'waiting' | 'subscribing' | 'subscribed' | 'error';
  /** Request id of the subscribe in flight. */
  requestId?: number;
  /** Set once subscribed at least once (so the next one is a resubscription). */
  everSubscribed: boolean;
  /** Epoch of the current server subscription. */
  epoch?: string;
  /** Subscribes refused with `engine_unavailable` in a row (for the retry delay). */
  engineRetries?: number;
}

/** First and largest pause before subscribing again after `engine_unavailable` or `rate_limited`. */
const ENGINE_RETRY_MIN = 500;
const ENGINE_RETRY_MAX = 10_000;
/**
 * Most subscribes sent over a WebSocket without their reply. A reconnect with
 * hundreds of channels sends them in these steps, and once the server refuses
 * one with `rate_limited` none is sent until a pause has passed: so at most
 * this many are refused in a row, far below the `request_burst` (200 by
 * default) of refusals in a row that make the server close with 4004.
 */
const SUBSCRIBE_WINDOW = 16;

interface PendingRequest {
  message: ClientMessage & { id?: RequestId };
  resolve: (reply: ServerMessage) => void;
  reject: (error: TidingsError) => void;
  timer: ReturnType<typeof setTimeout>;
  sent: boolean;
}

/** Request options. */
export interface RequestOptions {
  /** ms until the promise rejects with `timeout`, counted from the call (default 10000). */
  timeout?: number;
}

const DEFAULT_REQUEST_TIMEOUT = 10_000;
/** Close code the SDK reports when its heartbeat watchdog fires. */
export const HEARTBEAT_TIMEOUT_CODE = 4001;

export { tokenExpiry };

export function toUrls(url: string): { httpUrl: string; wsUrl: string } {
  const trimmed = url.replace(/\/+$/, '').replace(/\/ws$/, '');
  if (/^wss?:\/\//i.test(trimmed)) {
    return { wsUrl: trimmed, httpUrl: trimmed.replace(/^ws/i, 'http') };
  }
  if (/^https?:\/\//i.test(trimmed)) {
    return { httpUrl: trimmed, wsUrl: trimmed.replace(/^http/i, 'ws') };
  }
  throw new TypeError(`Tidings url must start with http(s):// or ws(s)://, got ${url}`);
}

const encoder = new TextEncoder();
function utf8Length(text: string): number {
  return encoder.encode(text).length;
}

export class Connection extends Emitter<ConnectionEvents> {
  readonly options: ConnectionOptions;
  #urls: { httpUrl: string; wsUrl: string };
  #info: StateInfo;
  #transport: Transport | null = null;
  #transportIndex = 0;
  /** Index of the last transport this attempt may try. */
  #lastTransportIndex = 0;
  /** Index of the transport of the last session that reached `connected`. */
  #workingTransportIndex: number | null = null;
  /** Bumped whenever the current attempt/session is abandoned. */
  #generation = 0;
  #token: string | null = null;
  #tokenFresh = false;
  #needNewToken = false;
  #connected: ConnectedMessage | null = null;
  #everConnected = false;
  #retryTimer: ReturnType<typeof setTimeout> | null = null;
  #waitingForNetwork = false;
  #watchdog: ReturnType<typeof setTimeout> | null = null;
  #refreshTimer: ReturnType<typeof setTimeout> | null = null;
  #lastDisconnect: { code: number; reason: string; reconnect: boolean } | null = null;
  #authError: TidingsError | null = null;
  #channels = new Map<string, ChannelEntry>();
  /** While set, no subscribe is sent (a subscribe met `rate_limited`): the pause's end. */
  #subscribePause: ReturnType<typeof setTimeout> | null = null;
  /** `rate_limited` pauses in a row (reset by a subscribe that succeeds). */
  #rateLimitStreak = 0;
  #pending = new Map<RequestId, PendingRequest>();
  #queue: PendingRequest[] = [];
  #nextId = 1;
  #removeNetworkListeners: (() => void) | null = null;
  /** Resume state the last transport used saved (the SSE resume token). */
  #resume: { transport: TransportName; state: unknown } | null = null;
  /** The last presence status the server confirmed, sent again on each new connection. */
  #presenceStatus: PresenceStatus = 'online';

  /** The presence status set on each new server connection. @internal */
  get presenceStatus(): PresenceStatus {
    return this.#presenceStatus;
  }

  /**
   * Takes over the status set on another tab's connection (`shareAcrossTabs`:
   * the leader tab changed), to be set on the next server connection. @internal
   */
  presetStatus(status: PresenceStatus): void {
    this.#presenceStatus = status;
  }

  constructor(options: ConnectionOptions) {
    super();
    this.options = options;
    this.#urls = toUrls(options.url);
    this.#info = initialStateInfo();
    if (options.watchNetwork) this.#watchNetwork();
  }

  get info(): StateInfo {
    return this.#info;
  }

  get urls(): { httpUrl: string; wsUrl: string } {
    return this.#urls;
  }

  /** Channels and their resume positions. */
  positions(): Map<string, StreamPosition | undefined> {
    return new Map([...this.#channels].map(([name, entry]) => [name, entry.position]));
  }

  // ---- lifecycle -------------------------------------------------------

  /**
   * `shareAcrossTabs`: a new leader tab's connection, before its `connect()`
   * (which waits for the other tabs' positions). Reports that attempt already:
   * `reconnecting` when it takes over a shared connection that was up (`from`:
   * what the tab last knew of it; `reason` says why), else `connecting`, so that
   * no tab sees this connection's initial `disconnected`. No-op unless it is
   * still in that initial state. @internal
   */
  announce(state: 'connecting' | 'reconnecting', from: StateInfo, reason?: StateReason): void {
    if (this.#info.state !== 'disconnected' || this.#info.previous !== null) return;
    this.#announced = true;
    // Attempts that fail before `connected` stay `reconnecting`.
    this.#everConnected = state === 'reconnecting';
    const next: StateInfo = {
      ...this.#info,
      state,
      previous: from.state,
      transport: state === 'reconnecting' && from.transport !== null ? (this.options.transports[0] ?? null) : null,
      clientId: null,
      user: from.user,
      attempt: 0,
    };
    delete next.nextAttemptAt;
    delete next.reason;
    if (reason) next.reason = reason;
    this.#info = next;
    this.emit('state', next);
  }
  /** Set by `announce()` until `connect()` (or anything else) starts or ends the attempt. */
  #announced = false;

  /** Starts connecting (no-op unless disconnected or failed, or announced). */
  connect(): void {
    if (this.#announced) {
      this.#announced = false;
      void this.#attempt();
      return;
    }
    if (this.#info.state !== 'disconnected' && this.#info.state !== 'failed') return;
    this.#everConnected = false;
    // A restart tries the first transport: say so rather than name the last
    // one used (the very first start names it when the attempt opens it).
    this.#setState({
      state: 'connecting',
      attempt: 0,
      reason: undefined,
      nextAttemptAt: undefined,
      ...(this.#info.transport !== null ? { transport: this.options.transports[0] ?? null } : {}),
    });
    void this.#attempt();
  }

  /**
   * After `failed` (or `disconnected`): starts over with a fresh attempt budget.
   * While waiting before the next attempt (`connecting` or `reconnecting`):
   * attempts at once.
   */
  retry(): void {
    const state = this.#info.state;
    if (state === 'failed' || state === 'disconnected' || this.#announced) {
      this.connect();
      return;
    }
    if ((state === 'reconnecting' || state === 'connecting') && (this.#retryTimer || this.#waitingForNetwork)) {
      this.#clearRetry();
      void this.#attempt();
    }
  }

  /** Closes for good (until `connect()`); queued requests are rejected. */
  disconnect(reason = 'client disconnected'): void {
    this.#announced = false;
    this.#abandon(1000, reason);
    this.#setState({ state: 'disconnected', reason: { code: 1000, message: reason }, nextAttemptAt: undefined });
    this.#rejectQueue('disconnected', 'the client disconnected');
  }

  /** Drops the cached token and reconnects at once with a new one (e.g. after re-login). */
  reauthenticate(): void {
    this.#token = null;
    this.#needNewToken = true;
    this.#reauthReason = true;
    this.#announced = false;
    const state = this.#info.state;
    this.#abandon(1000, 'reauthenticating');
    this.#setState({
      state: this.#everConnected || state === 'connected' ? 'reconnecting' : 'connecting',
      attempt: 0,
      reason: { error: 'reauthenticate', message: 'the token changed' },
      nextAttemptAt: undefined,
    });
    void this.#attempt();
  }
  #reauthReason = false;

  /** Stops everything and removes listeners. */
  destroy(): void {
    this.disconnect('client closed');
    this.#removeNetworkListeners?.();
    this.#removeNetworkListeners = null;
  }

  // ---- subscriptions ---------------------------------------------------

  /**
   * Wants `channel`. With `since`, the first subscribe resumes from there. If the
   * channel is already wanted but not yet sent, the earlier position wins.
   */
  addChannel(channel: string, since?: StreamPosition): void {
    const existing = this.#channels.get(channel);
    if (existing) {
      if (existing.status === 'pending' && since) {
        const current = existing.position;
        if (!current || (current.epoch === since.epoch && since.offset < current.offset)) {
          existing.position = { ...since };
        }
      }
      if (existing.status === 'error') {
        existing.status = 'pending';
        this.#pumpSubscribes();
      }
      return;
    }
    const entry: ChannelEntry = { status: 'pending', everSubscribed: false };
    if (since) entry.position = { ...since };
    this.#channels.set(channel, entry);
    this.#pumpSubscribes();
  }

  removeChannel(channel: string): void {
    const entry = this.#channels.get(channel);
    if (!entry) return;
    this.#channels.delete(channel);
    if (this.#connected && (entry.status === 'subscribed' || entry.status === 'subscribing')) {
      this.#send({ type: 'unsubscribe', channel, id: this.#nextId++ });
    }
    if (entry.status === 'subscribing') this.#pumpSubscribes();
  }

  /**
   * Sends the subscribes of the `pending` channels, in order. Over a WebSocket
   * at most `SUBSCRIBE_WINDOW` wait for their reply at a time, and none is sent
   * during a `rate_limited` pause. Other transports take them all at once (SSE
   * opens one stream for a burst of them).
   */
  #pumpSubscribes(): void {
    if (!this.#connected || !this.#transport || this.#subscribePause) return;
    const windowed = this.#transport.name === 'websocket';
    let inFlight = 0;
    if (windowed) {
      for (const entry of this.#channels.values()) if (entry.status === 'subscribing') inFlight++;
    }
    for (const [channel, entry] of this.#channels) {
      if (windowed && inFlight >= SUBSCRIBE_WINDOW) return;
      if (entry.status !== 'pending') continue;
      this.#sendSubscribe(channel, entry);
      inFlight++;
      // A transport may answer (or close) from inside `send`.
      if (!this.#connected || !this.#transport || this.#subscribePause) return;
    }
  }

  /** Holds all subscribes for a growing, jittered pause after `rate_limited`. */
  #pauseSubscribes(): void {
    if (this.#subscribePause) return;
    this.#rateLimitStreak += 1;
    const cap = Math.min(ENGINE_RETRY_MAX, ENGINE_RETRY_MIN * 2 ** (this.#rateLimitStreak - 1));
    this.#subscribePause = setTimeout(() => {
      this.#subscribePause = null;
      this.#pumpSubscribes();
    }, cap / 2 + Math.random() * (cap / 2));
  }

  #sendSubscribe(channel: string, entry: ChannelEntry): void {
    if (!this.#connected || !this.#transport) return;
    const id = this.#nextId++;
    entry.status = 'subscribing';
    entry.requestId = id;
    const message: ClientMessage = { type: 'subscribe', channel, id };
    if (entry.position) message.since = { ...entry.position };
    this.#send(message);
  }

  // ---- requests --------------------------------------------------------

  /**
   * Sends a request and resolves with the server's reply (rejects with its
   * `error`). While not connected the request waits in the bounded offline
   * queue and is sent, in order, after the next connect.
   */
  request(message: ClientMessage, options: RequestOptions = {}): Promise<ServerMessage> {
    const reply = this.#requestOnce(message, options);
    if (message.type === 'status') {
      // Remembered for the next connections: the server starts each one online.
      reply.then(
        (answer) => {
          if (answer.type === 'status' && answer.status !== this.#presenceStatus) {
            this.#presenceStatus = answer.status;
            this.emit('presenceStatus', answer.status);
          }
        },
        () => {},
      );
    }
    return reply;
  }

  #requestOnce(message: ClientMessage, options: RequestOptions): Promise<ServerMessage> {
    return new Promise<ServerMessage>((resolve, reject) => {
      // The server closes the whole connection (4501, no reconnect) on a
      // message over its `max_message_size`: such a request is refused here.
      // The id is counted at its largest.
      const size = utf8Length(JSON.stringify({ ...message, id: Number.MAX_SAFE_INTEGER }));
      if (size > this.options.maxMessageSize) {
        reject(
          new TidingsError(
            'limit_exceeded',
            `${message.type} is ${size} bytes, over the server's max_message_size (${this.options.maxMessageSize})`,
          ),
        );
        return;
      }
      const timeout = options.timeout ?? DEFAULT_REQUEST_TIMEOUT;
      const pending: PendingRequest = {
        message: { ...message },
        resolve,
        reject,
        sent: false,
        timer: setTimeout(() => {
          this.#forget(pending);
          reject(new TidingsError('timeout', `no reply to ${message.type} within ${timeout} ms`));
        }, timeout),
      };
      if (this.#connected && this.#transport) {
        this.#sendPending(pending);
        return;
      }
      if (this.#info.state === 'disconnected' || this.#info.state === 'failed') {
        clearTimeout(pending.timer);
        reject(new TidingsError('not_connected', `cannot send ${message.type}: the client is ${this.#info.state}`));
        return;
      }
      if (this.#queue.length >= this.options.offlineQueueSize) {
        clearTimeout(pending.timer);
        reject(new TidingsError('queue_full', `the offline queue holds at most ${this.options.offlineQueueSize} requests`));
        return;
      }
      this.#queue.push(pending);
    });
  }

  /** Requests waiting for a connection. */
  get queuedRequests(): number {
    return this.#queue.length;
  }

  #sendPending(pending: PendingRequest): void {
    const id = this.#nextId++;
    pending.message = { ...pending.message, id } as PendingRequest['message'];
    pending.sent = true;
    this.#pending.set(id, pending);
    this.#send(pending.message);
  }

  /** A request the transport could not send: back to the queue, in call order. */
  #requeue(id: RequestId): void {
    const pending = this.#pending.get(id);
    if (!pending) return;
    this.#pending.delete(id);
    pending.sent = false;
    // Requests still in the queue were made after every sent one.
    const at = this.#queue.findIndex((queued) => {
      const other = queued.message.id;
      return other === undefined || typeof other !== 'number' || typeof id !== 'number' || other > id;
    });
    if (at < 0) this.#queue.push(pending);
    else this.#queue.splice(at, 0, pending);
  }

  #forget(pending: PendingRequest): void {
    const index = this.#queue.indexOf(pending);
    if (index >= 0) this.#queue.splice(index, 1);
    const id = pending.message.id;
    if (id !== undefined && this.#pending.get(id) === pending) this.#pending.delete(id);
  }

  #rejectQueue(code: 'disconnected' | 'not_connected', message: string): void {
    const queued = this.#queue.splice(0);
    for (const pending of queued) {
      clearTimeout(pending.timer);
      pending.reject(new TidingsError(code, message));
    }
  }

  #rejectInFlight(): void {
    const inFlight = [...this.#pending.values()];
    this.#pending.clear();
    for (const pending of inFlight) {
      clearTimeout(pending.timer);
      pending.reject(
        new TidingsError('connection_lost', `the connection closed before the reply to ${pending.message.type}`),
      );
    }
  }

  // ---- attempts --------------------------------------------------------

  async #attempt(): Promise<void> {
    this.#clearRetry();
    if (this.#info.online === false) {
      this.#waitingForNetwork = true;
      this.#setState({ reason: { error: 'offline', message: 'waiting for the network' }, nextAttemptAt: undefined });
      return;
    }
    const generation = ++this.#generation;
    this.#authError = null;
    this.#lastDisconnect = null;
    if (!this.#token || this.#needNewToken || this.#tokenNearExpiry()) {
      const reason: TokenRequest['reason'] = this.#reauthReason
        ? 'reauthenticate'
        : this.#needNewToken || this.#token
          ? 'expired'
          : 'initial';
      try {
        const token = await this.options.getToken({ reason });
        if (generation !== this.#generation) return;
        this.#token = token;
        this.#needNewToken = false;
        this.#reauthReason = false;
      } catch (err) {
        if (generation !== this.#generation) return;
        this.#attemptFailed({ error: 'token_error', message: `getToken failed: ${String(err)}` });
        return;
      }
    }
    // After a lost session, try only the transport that worked, so that an
    // unreachable server costs one failed request per attempt instead of one per
    // transport (each logs an error in the browser console). Every fourth attempt
    // tries the whole chain again, in case that transport got blocked since.
    const working = this.#workingTransportIndex;
    const sticky = this.#everConnected && working !== null && this.#info.attempt % 4 !== 3;
    this.#transportIndex = sticky ? working : 0;
    this.#lastTransportIndex = sticky ? working : this.options.transports.length - 1;
    this.#openTransport(generation);
  }

  #tokenNearExpiry(): boolean {
    if (!this.#token) return true;
    const exp = tokenExpiry(this.#token);
    return exp !== undefined && exp - Date.now() < 1000;
  }

  #openTransport(generation: number): void {
    const name = this.options.transports[this.#transportIndex];
    const factory = name ? this.options.transportFactories[name] : undefined;
    if (!name || !factory) {
      this.#attemptFailed({ error: 'transport_failed', message: 'no transport could connect' });
      return;
    }
    // Reported only when it changes (a fallback): an attempt with the same
    // transport as before yields one `state` event, its outcome.
    this.#setState({ transport: name, nextAttemptAt: undefined }, name !== this.#info.transport);
    const token = this.#token ?? '';
    const channels = new Map<string, StreamPosition | undefined>();
    for (const [channel, entry] of this.#channels) {
      if (entry.status === 'pending') channels.set(channel, entry.position ? { ...entry.position } : undefined);
    }
    const resume = this.#resume;
    this.#transport = factory({
      ...this.#urls,
      token,
      WebSocket: this.options.WebSocket,
      fetch: this.options.fetch,
      channels,
      maxChannels: this.options.maxChannels,
      resume: resume && resume.transport === name ? resume.state : undefined,
      handlers: {
        message: (message) => {
          if (generation === this.#generation) this.#onMessage(message);
        },
        close: (info) => {
          if (generation === this.#generation) this.#onTransportClose(info, generation);
        },
        fail: (id, code, message) => {
          if (generation === this.#generation) this.#settle(id, new TidingsError(code, message));
        },
        unsent: (id) => {
          if (generation === this.#generation) this.#requeue(id);
        },
        pending: (id) => generation === this.#generation && this.#pending.has(id),
        saveResume: (state) => {
          if (generation === this.#generation) this.#resume = { transport: name, state };
        },
      },
    });
  }

  #onTransportClose(info: TransportClose, generation: number): void {
    const wasConnected = this.#connected !== null;
    this.#transport = null;
    this.#endSession();
    if (!wasConnected && !info.reachable && this.#transportIndex < this.#lastTransportIndex) {
      // This transport cannot get through (blocked, proxy): try the next one now.
      this.#transportIndex += 1;
      this.#openTransport(generation);
      return;
    }
    const disconnect = this.#lastDisconnect;
    const code = disconnect?.code ?? info.code;
    const message = disconnect?.reason ?? info.reason;
    const reason: StateReason = { code, message };
    const authError = this.#authError;
    if (authError) reason.error = authError.code;
    if (info.status !== undefined && !authError) reason.error = `http_${info.status}`;
    if (code === 4003 || authError?.code === 'token_expired') {
      // Expired: a new token is needed whatever the close code.
      this.#needNewToken = true;
      this.#token = null;
      this.#attemptOrSchedule(wasConnected, reason);
      return;
    }
    const reconnect = disconnect ? disconnect.reconnect && shouldReconnect(code) : shouldReconnect(code);
    if (!reconnect) {
      this.#generation++;
      this.#setState({ state: 'disconnected', reason, nextAttemptAt: undefined });
      this.#rejectQueue('disconnected', `the server closed the connection (${code} ${message})`);
      return;
    }
    this.#attemptOrSchedule(wasConnected, reason);
  }

  #attemptOrSchedule(wasConnected: boolean, reason: StateReason): void {
    if (wasConnected) {
      // A working session ended: start a new round of attempts.
      this.#scheduleAttempt(reason, { state: 'reconnecting', attempt: 0 });
    } else {
      this.#attemptFailed(reason);
    }
  }

  /** The current attempt did not reach `connected`. */
  #attemptFailed(reason: StateReason): void {
    this.#transport = null;
    const attempt = this.#info.attempt + 1;
    if (attempt >= this.options.maxAttempts) {
      this.#generation++;
      this.#setState({
        state: 'failed',
        attempt,
        reason: { ...reason, error: reason.error ?? 'max_attempts', message: `gave up after ${attempt} attempts: ${reason.message}` },
        nextAttemptAt: undefined,
      });
      this.#rejectQueue('disconnected', 'the connection failed');
      return;
    }
    this.#scheduleAttempt(reason, { state: this.#everConnected ? 'reconnecting' : 'connecting', attempt });
  }

  /** Waits for the next attempt; `patch` goes into the same (single) `state` event. */
  #scheduleAttempt(reason: StateReason, patch: Partial<StateInfo> = {}): void {
    this.#clearRetry();
    if (!this.#info.online) {
      this.#waitingForNetwork = true;
      this.#setState({ ...patch, reason: { ...reason, error: 'offline', message: 'waiting for the network' }, nextAttemptAt: undefined });
      return;
    }
    const delay = backoffDelay(patch.attempt ?? this.#info.attempt, this.options, this.options.random);
    this.#setState({ ...patch, reason, nextAttemptAt: Date.now() + delay });
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = null;
      void this.#attempt();
    }, delay);
  }

  #clearRetry(): void {
    if (this.#retryTimer) clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    this.#waitingForNetwork = false;
  }

  /** Drops the current transport and session without reporting a close. */
  #abandon(code: number, reason: string): void {
    this.#generation++;
    this.#clearRetry();
    const transport = this.#transport;
    this.#transport = null;
    transport?.close(code, reason);
    this.#endSession();
  }

  #endSession(): void {
    this.#connected = null;
    if (this.#subscribePause) clearTimeout(this.#subscribePause);
    this.#subscribePause = null;
    if (this.#watchdog) clearTimeout(this.#watchdog);
    if (this.#refreshTimer) clearTimeout(this.#refreshTimer);
    this.#watchdog = null;
    this.#refreshTimer = null;
    this.#rejectInFlight();
    for (const entry of this.#channels.values()) {
      if (entry.status === 'subscribing' || entry.status === 'subscribed') entry.status = 'pending';
      entry.requestId = undefined;
    }
  }

  // ---- the session -----------------------------------------------------

  #send(message: ClientMessage): void {
    this.#transport?.send(message);
  }

  #onMessage(message: ServerMessage): void {
    this.#armWatchdog();
    switch (message.type) {
      case 'connected':
        if (this.#connected) this.#onIdentity(message);
        else this.#onConnected(message);
        return;
      case 'ping':
        this.#send({ type: 'pong' });
        return;
      case 'event':
        this.#onEvent(message);
        return;
      case 'disconnect':
        this.#lastDisconnect = { code: message.code, reason: message.reason, reconnect: message.reconnect };
        return;
      case 'subscribed':
        if (message.id === undefined) {
          this.#onResubscribed(message);
          return;
        }
        if (this.#onSubscribed(message)) return;
        break;
      case 'unsubscribed':
        if (message.id === undefined && message.reason === 'resubscribe') {
          // The server lost this channel's continuity (its Redis restarted or
          // dropped messages): subscribe again from the last event seen, which
          // recovers the missed events or reports recovered: false.
          const entry = this.#channels.get(message.channel);
          if (entry) {
            entry.status = 'pending';
            this.#pumpSubscribes();
          }
          return;
        }
        if (message.id === undefined) {
          if (this.#channels.delete(message.channel)) {
            this.emit('serverUnsubscribed', { channel: message.channel, reason: message.reason ?? 'removed by the server' });
          }
          return;
        }
        break;
      case 'error':
        if (!this.#connected) {
          // An auth failure: the close follows.
          this.#authError = new TidingsError(message.code, message.message);
          return;
        }
        if (message.id !== undefined && this.#onSubscribeError(message.id, message.code, message.message)) return;
        if (message.id === undefined && message.channel !== undefined) {
          this.#onChannelError(message.channel, message.code, message.message);
          return;
        }
        break;
      default:
        break;
    }
    if ('id' in message && message.id !== undefined) {
      this.#settle(message.id, message.type === 'error' ? new TidingsError(message.code, message.message) : message);
    }
  }

  /** Resolves (or, with an error, rejects) the request `id`. */
  #settle(id: RequestId, outcome: ServerMessage | TidingsError): void {
    const pending = this.#pending.get(id);
    if (!pending) return;
    this.#pending.delete(id);
    clearTimeout(pending.timer);
    if (outcome instanceof TidingsError) pending.reject(outcome);
    else pending.resolve(outcome);
  }

  #onConnected(message: ConnectedMessage): void {
    this.#connected = message;
    // Resume state of another transport is stale once this one carried events.
    if (this.#resume && this.#resume.transport !== this.#info.transport) this.#resume = null;
    this.#everConnected = true;
    this.#workingTransportIndex = this.#transportIndex;
    this.#setState({
      state: 'connected',
      attempt: 0,
      clientId: message.client || null,
      user: message.user || null,
      reason: undefined,
      nextAttemptAt: undefined,
    });
    this.#armWatchdog();
    this.#scheduleRefresh(message.expires_at);
    // The status set on an earlier connection, before the resubscribes so
    // that each presence join carries it (polling has no presence).
    if (this.#presenceStatus !== 'online' && this.#info.transport !== 'polling') {
      this.#send({ type: 'status', status: this.#presenceStatus });
    }
    this.#pumpSubscribes();
    const queued = this.#queue.splice(0);
    for (const pending of queued) {
      if (!this.#connected) {
        this.#queue.push(pending);
        continue;
      }
      this.#sendPending(pending);
    }
  }

  /**
   * A `connected` within the session: the transport opened a new stream for it
   * (SSE reopens with each change of channels), so the client id changed.
   */
  #onIdentity(message: ConnectedMessage): void {
    this.#connected = message;
    this.#setState({ clientId: message.client || null, user: message.user || this.#info.user });
    this.#armWatchdog();
    if (message.expires_at) this.#scheduleRefresh(message.expires_at);
  }

  #onEvent(event: EventEnvelope): void {
    const entry = this.#channels.get(event.channel);
    if (!entry) return;
    const position = entry.position;
    // Offsets are per channel and epoch; the epoch is the one of the last `subscribed`.
    if (position && entry.epoch !== undefined && position.epoch === entry.epoch && event.offset <= position.offset) return;
    entry.position = { offset: event.offset, epoch: entry.epoch ?? position?.epoch ?? '' };
    this.emit('event', event);
  }

  /** Returns true when the reply was for a subscribe. */
  #onSubscribed(message: SubscribedMessage): boolean {
    const entry = this.#channels.get(message.channel);
    // Not wanted any more (removeChannel already sent the unsubscribe), or a
    // stale reply to an earlier subscribe of the same channel.
    if (!entry) return true;
    if (entry.requestId !== message.id) return false;
    entry.status = 'subscribed';
    entry.requestId = undefined;
    entry.engineRetries = undefined;
    this.#rateLimitStreak = 0;
    queueMicrotask(() => this.#pumpSubscribes());
    entry.epoch = message.epoch;
    if (message.recovered !== true) {
      // Fresh or not recoverable: continue from here.
      entry.position = { offset: message.offset, epoch: message.epoch };
    }
    const info: SubscribedInfo = {
      channel: message.channel,
      offset: message.offset,
      epoch: message.epoch,
      recoverable: message.recoverable,
      resubscribed: entry.everSubscribed,
    };
    if (message.recovered !== undefined) info.recovered = message.recovered;
    entry.everSubscribed = true;
    this.emit('subscribed', info);
    return true;
  }

  /**
   * A `subscribed` nobody asked for: the transport resubscribed a channel on its
   * own (an SSE stream reopened, a poll found its position gone) and could not
   * recover it. Reported like a resubscription after a reconnect.
   */
  #onResubscribed(message: SubscribedMessage): void {
    const entry = this.#channels.get(message.channel);
    if (!entry || entry.status !== 'subscribed') return;
    entry.epoch = message.epoch;
    if (message.recovered === true) return;
    entry.position = { offset: message.offset, epoch: message.epoch };
    this.emit('subscribed', {
      channel: message.channel,
      offset: message.offset,
      epoch: message.epoch,
      recoverable: message.recoverable,
      recovered: false,
      resubscribed: true,
    });
  }

  /** The server refused a channel that was subscribed (e.g. when an SSE stream reopened). */
  #onChannelError(channel: string, code: TidingsError['code'], text: string): void {
    const entry = this.#channels.get(channel);
    if (!entry) return;
    entry.status = 'error';
    entry.requestId = undefined;
    this.emit('subscribeError', { channel, error: new TidingsError(code, text) });
  }

  #onSubscribeError(id: RequestId, code: TidingsError['code'], text: string): boolean {
    for (const [channel, entry] of this.#channels) {
      if (entry.requestId !== id) continue;
      entry.requestId = undefined;
      if (code === 'rate_limited') {
        // Too many requests at once (e.g. the resubscribes of hundreds of
        // channels): the channel goes back in line, and no subscribe is sent
        // until a growing, jittered pause has passed.
        entry.status = 'pending';
        this.#pauseSubscribes();
        return true;
      }
      if (code === 'engine_unavailable') {
        // Temporary: the server's Redis is away. Try again with a growing,
        // jittered pause, as long as the channel is still wanted.
        entry.status = 'waiting';
        const retries = (entry.engineRetries ?? 0) + 1;
        entry.engineRetries = retries;
        const cap = Math.min(ENGINE_RETRY_MAX, ENGINE_RETRY_MIN * 2 ** (retries - 1));
        setTimeout(() => {
          if (this.#channels.get(channel) === entry && entry.status === 'waiting') {
            entry.status = 'pending';
            this.#pumpSubscribes();
          }
        }, cap / 2 + Math.random() * (cap / 2));
        queueMicrotask(() => this.#pumpSubscribes());
        return true;
      }
      entry.status = 'error';
      this.emit('subscribeError', { channel, error: new TidingsError(code, text) });
      queueMicrotask(() => this.#pumpSubscribes());
      return true;
    }
    return false;
  }

  // ---- heartbeat and token refresh ----------------------------------------

  #armWatchdog(): void {
    const connected = this.#connected;
    if (!connected) return;
    if (this.#watchdog) clearTimeout(this.#watchdog);
    const limit = connected.heartbeat + this.options.heartbeatGrace;
    this.#watchdog = setTimeout(() => {
      this.#watchdog = null;
      if (!this.#connected) return;
      if (this.#transport?.idle?.()) {
        // Nothing open that could go silent: look again later.
        this.#armWatchdog();
        return;
      }
      // Nothing arrived for a whole heartbeat plus grace: the socket is dead.
      const generation = this.#generation;
      const transport = this.#transport;
      this.#transport = null;
      transport?.close(1000, 'heartbeat timeout');
      this.#lastDisconnect = null;
      this.#onTransportClose(
        { code: HEARTBEAT_TIMEOUT_CODE, reason: `no message within ${limit} ms`, reachable: true },
        generation,
      );
    }, limit);
  }

  #scheduleRefresh(expiresAt: string | undefined): void {
    if (this.#refreshTimer) clearTimeout(this.#refreshTimer);
    this.#refreshTimer = null;
    if (!expiresAt) return;
    const expiry = Date.parse(expiresAt);
    if (Number.isNaN(expiry)) return;
    this.#expiresAt = expiry;
    this.#refreshFailures = 0;
    const ttl = expiry - Date.now();
    const margin = Math.min(this.options.refreshMargin, Math.max(ttl / 5, 0));
    const delay = Math.max(0, ttl - margin);
    // setTimeout overflows past ~24.8 days.
    if (delay > 2 ** 31 - 1) return;
    this.#refreshTimer = setTimeout(() => {
      this.#refreshTimer = null;
      void this.#refresh();
    }, delay);
  }

  /** Expiry (epoch ms) of the session's token, as the server reported it. */
  #expiresAt: number | null = null;
  /** Refreshes that failed in a row since the last one scheduled. */
  #refreshFailures = 0;

  /**
   * A refresh failed (`getToken` rejected, or the `refresh` got no answer):
   * tries again with backoff as long as the next try comes before the token
   * expires (after which the server closes with 4003 and the reconnect gets a
   * token).
   */
  #retryRefresh(): void {
    if (this.#refreshTimer) clearTimeout(this.#refreshTimer);
    this.#refreshTimer = null;
    const delay = backoffDelay(this.#refreshFailures, this.options, this.options.random);
    this.#refreshFailures += 1;
    const expiry = this.#expiresAt;
    if (expiry === null || Date.now() + delay >= expiry) return;
    this.#refreshTimer = setTimeout(() => {
      this.#refreshTimer = null;
      void this.#refresh();
    }, delay);
  }

  async #refresh(): Promise<void> {
    const generation = this.#generation;
    let token: string;
    try {
      token = await this.options.getToken({ reason: 'refresh' });
    } catch {
      // Keep the session and try again before the token expires.
      if (generation === this.#generation && this.#connected) this.#retryRefresh();
      return;
    }
    if (generation !== this.#generation || !this.#connected) return;
    this.#token = token;
    try {
      const reply = await this.request({ type: 'refresh', token });
      if (reply.type === 'refreshed') this.#scheduleRefresh(reply.expires_at);
    } catch (err) {
      if (generation !== this.#generation || !this.#connected) return;
      if (err instanceof TidingsError && (err.code === 'unauthorized' || err.code === 'token_expired')) {
        // E.g. a token for another user after re-login: reconnect with it.
        this.#abandon(1000, 'new token');
        this.#setState({ state: 'reconnecting', attempt: 0, reason: { error: err.code, message: err.message } });
        void this.#attempt();
        return;
      }
      // No answer (timeout) or refused for now (`rate_limited`, …): again later.
      this.#retryRefresh();
    }
  }

  // ---- network ---------------------------------------------------------

  #watchNetwork(): void {
    const target = globalThis as unknown as {
      addEventListener?: (name: string, fn: () => void) => void;
      removeEventListener?: (name: string, fn: () => void) => void;
      navigator?: { onLine?: boolean };
    };
    if (typeof target.addEventListener !== 'function' || typeof target.removeEventListener !== 'function') return;
    if (typeof target.navigator?.onLine === 'boolean') this.#info = { ...this.#info, online: target.navigator.onLine };
    const online = (): void => this.setOnline(true);
    const offline = (): void => this.setOnline(false);
    target.addEventListener('online', online);
    target.addEventListener('offline', offline);
    this.#removeNetworkListeners = () => {
      target.removeEventListener?.('online', online);
      target.removeEventListener?.('offline', offline);
    };
  }

  /** The browser's network status changed (`online`/`offline` events). */
  setOnline(online: boolean): void {
    if (this.#info.online === online) return;
    if (!online) {
      const state = this.#info.state;
      if (state === 'connected' || ((state === 'connecting' || state === 'reconnecting') && this.#transport)) {
        // The page has no network: the socket is dead even if it has not noticed
        // yet (it would take the heartbeat watchdog ~30 s). Drop it and wait.
        this.#abandon(1000, 'offline');
        this.#waitingForNetwork = true;
        this.#setState({
          online,
          state: state === 'connected' ? 'reconnecting' : state,
          attempt: state === 'connected' ? 0 : this.#info.attempt,
          reason: { error: 'offline', message: 'waiting for the network' },
          nextAttemptAt: undefined,
        });
        return;
      }
      this.#setState({ online });
      if (this.#retryTimer) {
        // Pause attempts until the network is back.
        this.#clearRetry();
        this.#waitingForNetwork = true;
        this.#setState({ reason: { error: 'offline', message: 'waiting for the network' }, nextAttemptAt: undefined });
      }
      return;
    }
    this.#setState({ online });
    const state = this.#info.state;
    if ((state === 'reconnecting' || state === 'connecting') && (this.#retryTimer || this.#waitingForNetwork)) {
      this.#clearRetry();
      void this.#attempt();
    } else if (state === 'failed') {
      this.connect();
    }
  }

  /** Applies `patch`; `emit: false` updates the snapshot without a `state` event. */
  #setState(patch: Partial<StateInfo>, emit = true): void {
    const previous = this.#info;
    const next: StateInfo = { ...previous, ...patch };
    if (patch.state && patch.state !== previous.state) next.previous = previous.state;
    if (next.state !== 'connected' && patch.state) {
      if (patch.state !== previous.state && previous.state === 'connected') {
        next.clientId = null;
      }
    }
    for (const key of Object.keys(next) as (keyof StateInfo)[]) {
      if (next[key] === undefined) delete next[key];
    }
    this.#info = next;
    if (emit) this.emit('state', next);
  }
}
