/**
 * The public client: `new TidingsClient({url, getToken})`.
 */
import {
  Connection,
  initialStateInfo,
  type ConnectionState,
  type RequestOptions,
  type StateInfo,
  type StateReason,
  type SubscribedInfo,
  type TokenRequest,
} from './connection.js';
import { Emitter, reportListenerError } from './emitter.js';
import { TidingsError } from './errors.js';
import { Hub, localBackend, type Backend, type ControlOp, type ErrorShape, type HubSink } from './hub.js';
import type {
  ClientMessage,
  EventEnvelope,
  EventMap,
  HistoryMessage,
  PresenceMessage,
  PresenceStatus,
  PublishedMessage,
  ServerMessage,
  StatusMessage,
  StreamPosition,
  TypedEvent,
} from './protocol.js';
import { correlationPrefix, isOwnChange, type OwnChangeRule } from './own.js';
import { TabCoordinator } from './tabs.js';
import { pollingTransport } from './transports/polling.js';
import { sseTransport } from './transports/sse.js';
import type { TransportFactory, TransportName, WebSocketConstructor } from './transports/types.js';
import { websocketTransport } from './transports/websocket.js';

export interface ReconnectOptions {
  /** First delay, ms (default 1000). */
  minDelay?: number;
  /** Largest delay, ms (default 30000). */
  maxDelay?: number;
  /**
   * Attempts without success before the state becomes `failed` (default
   * `Infinity`: retry forever, at most `maxDelay` apart).
   */
  maxAttempts?: number;
}

export interface TidingsClientOptions {
  /** Server base URL: `https://rt.example.com` or `wss://rt.example.com` (paths `/ws`, `/sse`, `/events` are added). */
  url: string;
  /** Returns a JWT for the current user; called before connecting, before expiry and after 4003. */
  getToken: (request: TokenRequest) => Promise<string>;
  /** WebSocket constructor; defaults to `globalThis.WebSocket` (pass `ws` in Node 20). */
  WebSocket?: WebSocketConstructor;
  /** fetch for the HTTP transports; defaults to `globalThis.fetch`. */
  fetch?: typeof fetch;
  /** Transports in fallback order (default `['websocket', 'sse', 'polling']`). */
  transports?: TransportName[];
  reconnect?: ReconnectOptions;
  /** Extra ms after the server's heartbeat interval before the socket counts as dead (default 10000). */
  heartbeatGrace?: number;
  /** Refresh the token this many ms before it expires, at most a fifth of its lifetime (default 60000). */
  refreshMargin?: number;
  /** Default timeout of requests (`publish`, `setStatus`, …) in ms, counted from the call (default 10000). */
  requestTimeout?: number;
  /** Most requests kept while disconnected (default 100); more reject with `queue_full`. */
  offlineQueueSize?: number;
  /**
   * Largest request in bytes of JSON (default 65536): set it to the server's
   * `connection.max_message_size`. A bigger request rejects with
   * `limit_exceeded` without being sent (the server would close the whole
   * connection, with 4501).
   */
  maxMessageSize?: number;
  /**
   * Most channels on one connection (default 256): set it to the server's
   * `connection.max_channels`. Used over SSE, whose stream names its channels:
   * the ones past it are refused one by one with `limit_exceeded`, as over a
   * WebSocket (instead of the server refusing the whole stream).
   */
  maxChannels?: number;
  /** Connect at once (default true). */
  autoConnect?: boolean;
  /** Share one connection between all tabs of this origin (browser only). */
  shareAcrossTabs?: boolean;
  /** Name of the lock and BroadcastChannel for `shareAcrossTabs` (default `tidings:<url>`). */
  tabChannelName?: string;
  /** Random source for the backoff jitter (tests). */
  random?: () => number;
  /** Listen to `online`/`offline` events of the page (default: when available). */
  watchNetwork?: boolean;
  /** Replace or add transports. */
  transportFactories?: Partial<Record<TransportName, TransportFactory>>;
}

export type SubscriptionState = 'subscribing' | 'subscribed' | 'error' | 'unsubscribed';

export interface SubscriptionStateInfo {
  state: SubscriptionState;
  error?: TidingsError;
  /** For `unsubscribed`: why (e.g. the server removed it). */
  reason?: string;
}

export interface SubscriptionEvents<M extends object> {
  event: TypedEvent<M>;
  state: SubscriptionStateInfo;
  /** Every (re)subscription; `recovered === false` means events were missed: reload. */
  subscribed: SubscribedInfo;
}

export interface SubscribeOptions {
  /** Resume from a known position (e.g. stored by the app). */
  since?: StreamPosition;
}

interface ChannelEntry {
  subs: Set<Subscription<EventMap>>;
  position?: StreamPosition;
  epoch?: string;
  state: SubscriptionStateInfo;
  last?: SubscribedInfo;
}

/** One `subscribe()` call; several may share a channel (one server subscription). */
export class Subscription<M extends object = EventMap> extends Emitter<SubscriptionEvents<M>> {
  readonly channel: string;
  #client: TidingsClient;
  #active = true;

  /** @internal */
  constructor(client: TidingsClient, channel: string) {
    super();
    this.#client = client;
    this.channel = channel;
  }

  /**
   * The subscription's state, not the connection's: it stays `subscribed`
   * while the connection is `reconnecting` (it is resubscribed, with
   * recovery). Live means `state === 'subscribed'` and `client.state === 'connected'`.
   */
  get state(): SubscriptionState {
    return this.#active ? this.#client.channelState(this.channel).state : 'unsubscribed';
  }

  get error(): TidingsError | undefined {
    return this.#active ? this.#client.channelState(this.channel).error : undefined;
  }

  /** The last delivered position (to store and pass as `since` later). */
  get position(): StreamPosition | undefined {
    return this.#client.channelPosition(this.channel);
  }

  /** Stops this subscription; the server subscription ends with the last one. */
  unsubscribe(): void {
    if (!this.#active) return;
    this.#active = false;
    this.#client.release(this as unknown as Subscription<EventMap>);
    this.emit('state', { state: 'unsubscribed' });
  }

  /** @internal */
  deliver<K extends keyof SubscriptionEvents<M>>(name: K, value: SubscriptionEvents<M>[K]): void {
    if (this.#active) this.emit(name, value);
  }

  /** @internal */
  deactivate(): void {
    this.#active = false;
  }
}

export interface ClientEvents {
  state: StateInfo;
  /** Whether this tab holds the shared connection (`shareAcrossTabs`). */
  leader: boolean;
}

const DEFAULTS = {
  minDelay: 1000,
  maxDelay: 30_000,
  maxAttempts: Number.POSITIVE_INFINITY,
  heartbeatGrace: 10_000,
  refreshMargin: 60_000,
  requestTimeout: 10_000,
  offlineQueueSize: 100,
  maxMessageSize: 65_536,
  maxChannels: 256,
};

let consumerCounter = 0;
/** Set while `TidingsClient.deferred()` constructs. */
let deferring = false;

export class TidingsClient extends Emitter<ClientEvents> {
  readonly options: TidingsClientOptions;
  /** This client's id among the consumers of a (possibly shared) connection. */
  readonly consumerId: string;
  #info: StateInfo;
  #channels = new Map<string, ChannelEntry>();
  #backend: Backend | null = null;
  #hub: Hub | null = null;
  #unsink: (() => void) | null = null;
  #tabs: TabCoordinator | null = null;
  #closed = false;
  /** Made by `deferred()` and not started yet. */
  #pending = false;
  /** Where the (local or remote) hub delivers to this client. @internal */
  readonly sink: HubSink = {
    state: (info) => this.#onState(info),
    event: (event) => this.#onEvent(event),
    subscribed: (info, to) => this.#onSubscribed(info, to),
    subscribeError: (channel, error) => this.#onSubscribeError(channel, error),
    serverUnsubscribed: (channel, reason) => this.#onServerUnsubscribed(channel, reason),
  };

  constructor(options: TidingsClientOptions) {
    super();
    this.options = options;
    this.consumerId = `t_${Date.now().toString(36)}_${(consumerCounter++).toString(36)}_${Math.random().toString(36).slice(2, 10)}`;
    this.#info = initialStateInfo();
    if (deferring) this.#pending = true;
    else this.#start();
  }

  /**
   * A client whose constructor has no side effects (no connection, listeners,
   * BroadcastChannel or lock): it starts, as the constructor would, on `start()`
   * or on first use (`connect()`, `publish()`, …). For `<TidingsProvider
   * options>`, which creates the client while rendering. @internal
   */
  static deferred(options: TidingsClientOptions): TidingsClient {
    deferring = true;
    try {
      return new TidingsClient(options);
    } finally {
      deferring = false;
    }
  }

  /** Starts a client made by `deferred()`; no-op otherwise and once closed. @internal */
  start(): void {
    if (this.#pending && !this.#closed) this.#start();
  }

  #start(): void {
    this.#pending = false;
    const options = this.options;
    if (options.shareAcrossTabs && TabCoordinator.supported()) {
      this.#tabs = new TabCoordinator(this, options.tabChannelName ?? `tidings:${options.url}`);
      this.#tabs.start(options.autoConnect !== false);
    } else {
      this.becomeLeader(options.autoConnect !== false);
    }
  }

  // ---- connection ------------------------------------------------------

  get state(): ConnectionState {
    return this.#info.state;
  }

  get stateInfo(): StateInfo {
    return this.#info;
  }

  /**
   * A new id for one change this client makes: send it with the REST mutation
   * (e.g. header `X-Tidings-Correlation`) and have the backend pass it as
   * `correlation_id`; `isOwnChange(event, 'client')` then recognises the event.
   */
  correlationId(): string {
    this.#correlationCounter += 1;
    return `${correlationPrefix(this.consumerId)}${this.#correlationCounter.toString(36)}`;
  }
  #correlationCounter = 0;

  /**
   * Whether `event` is the current user's own change: by `meta.actor` equal to
   * the token's `sub` (`'actor'`, default: every tab of the user), by a
   * `correlation_id` from this client's `correlationId()` (`'client'`: only this
   * tab), or `'both'`. `user` overrides the token's `sub`.
   */
  isOwnChange(event: Pick<EventEnvelope, 'meta'>, by: OwnChangeRule = 'actor', user?: string | null): boolean {
    return isOwnChange(event, { user: user ?? this.#info.user, consumerId: this.consumerId }, by);
  }

  /**
   * The server's id of the current connection (`null` when polling). It names
   * one connection: with `shareAcrossTabs` it is the leader's, shared by every
   * tab, so `exclude_client` would hide a change from all of them. To tell
   * your own changes, prefer `isOwnChange()`.
   */
  get clientId(): string | null {
    return this.#info.clientId;
  }

  get transport(): TransportName | null {
    return this.#info.transport;
  }

  /** True when this client holds the connection (always, without `shareAcrossTabs`). */
  get isLeader(): boolean {
    return this.#hub !== null;
  }

  /** The hub, when this tab holds the connection. @internal */
  get hub(): Hub | null {
    return this.#hub;
  }

  connect(): void {
    this.#control('connect');
  }

  /** Closes the connection (all tabs' connection with `shareAcrossTabs`) until `connect()`. */
  disconnect(): void {
    this.#control('disconnect');
  }

  /** Starts over after `failed` (or skips the wait before the next attempt). */
  retry(): void {
    this.#control('retry');
  }

  /**
   * Call after the user logged in again: reconnects with a token from
   * `getToken`. With `shareAcrossTabs` it reconnects the shared connection
   * with the leader tab's `getToken`, whichever tab calls it.
   */
  reauthenticate(): void {
    this.#control('reauthenticate');
  }

  /**
   * Releases everything: subscriptions, the connection (or this tab's share of
   * it). Ends in `disconnected` (reason `{code: 1000, message: 'client closed'}`,
   * `clientId` null), with one `state` event unless it already was.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    // The connection's own end state (`disconnect('client closed')`) when this tab holds it.
    const connection = this.#hub?.connection ?? null;
    for (const entry of this.#channels.values()) for (const sub of entry.subs) sub.deactivate();
    this.#channels.clear();
    this.#backend?.close();
    this.#backend = null;
    this.#tabs?.stop();
    this.#tabs = null;
    this.#dropHub();
    if (this.#info.state === 'disconnected') return;
    let end = connection?.info;
    if (end?.state !== 'disconnected') {
      // A follower tab (the leader keeps the shared connection): the same end state.
      const { nextAttemptAt: _, ...rest } = this.#info;
      end = {
        ...rest,
        state: 'disconnected',
        previous: this.#info.state,
        clientId: null,
        reason: { code: 1000, message: 'client closed' },
      };
    }
    this.#onState(end);
  }

  #control(op: ControlOp): void {
    this.start();
    this.#backend?.control(op);
  }

  // ---- subscriptions ---------------------------------------------------

  /**
   * Subscribes to `channel`. Events recovered after a reconnect come through the
   * same handler, in order, once. Type the events with a map:
   * `client.subscribe<{ 'app.updated': { id: string } }>(channel, (e) => …)`.
   */
  subscribe<M extends object = EventMap>(
    channel: string,
    handler?: (event: TypedEvent<M>) => void,
    options: SubscribeOptions = {},
  ): Subscription<M> {
    if (this.#closed) throw new TidingsError('disconnected', 'the client is closed');
    const sub = new Subscription<M>(this, channel);
    if (handler) sub.on('event', handler);
    let entry = this.#channels.get(channel);
    if (!entry) {
      entry = { subs: new Set(), state: { state: 'subscribing' } };
      if (options.since) entry.position = { ...options.since };
      this.#channels.set(channel, entry);
      entry.subs.add(sub as unknown as Subscription<EventMap>);
      this.#backend?.subscribe(channel, options.since);
    } else {
      entry.subs.add(sub as unknown as Subscription<EventMap>);
    }
    return sub;
  }

  /** @internal */
  channelState(channel: string): SubscriptionStateInfo {
    return this.#channels.get(channel)?.state ?? { state: 'unsubscribed' };
  }

  /** @internal */
  channelPosition(channel: string): StreamPosition | undefined {
    const position = this.#channels.get(channel)?.position;
    return position ? { ...position } : undefined;
  }

  /** @internal */
  release(sub: Subscription<EventMap>): void {
    const entry = this.#channels.get(sub.channel);
    if (!entry || !entry.subs.delete(sub)) return;
    if (entry.subs.size === 0) {
      this.#channels.delete(sub.channel);
      this.#backend?.unsubscribe(sub.channel);
    }
  }

  /** Channels of this client and where each stands. @internal */
  subscriptions(): [string, StreamPosition | undefined][] {
    return [...this.#channels].map(([channel, entry]) => [channel, entry.position ? { ...entry.position } : undefined]);
  }

  // ---- requests --------------------------------------------------------

  /** Publishes from the client (only where the namespace allows it). Queued while offline. */
  async publish(channel: string, event: string, data: unknown, options?: RequestOptions): Promise<PublishedMessage> {
    return (await this.#request({ type: 'publish', channel, event, data }, options)) as PublishedMessage;
  }

  /** Sets this user's presence status. Queued while offline. */
  async setStatus(status: PresenceStatus, options?: RequestOptions): Promise<StatusMessage> {
    return (await this.#request({ type: 'status', status }, options)) as StatusMessage;
  }

  async history(
    channel: string,
    query: { since?: StreamPosition; limit?: number } = {},
    options?: RequestOptions,
  ): Promise<HistoryMessage> {
    const message: ClientMessage = { type: 'history', channel };
    if (query.since) message.since = query.since;
    if (query.limit !== undefined) message.limit = query.limit;
    return (await this.#request(message, options)) as HistoryMessage;
  }

  async presence(channel: string, options?: RequestOptions): Promise<PresenceMessage> {
    return (await this.#request({ type: 'presence', channel }, options)) as PresenceMessage;
  }

  #request(message: ClientMessage, options: RequestOptions = {}): Promise<ServerMessage> {
    if (this.#closed) return Promise.reject(new TidingsError('disconnected', 'the client is closed'));
    this.start();
    const timeout = options.timeout ?? this.options.requestTimeout ?? DEFAULTS.requestTimeout;
    if (!this.#backend) return Promise.reject(new TidingsError('not_connected', 'no connection'));
    return this.#backend.request(message, { timeout });
  }

  // ---- leader / follower wiring (used by TabCoordinator) ---------------------

  /**
   * Holds the connection in this tab. `announce`: the attempt the tab
   * coordinator will start (see `Connection.announce`). @internal
   */
  becomeLeader(connect: boolean, announce?: { state: 'connecting' | 'reconnecting'; reason?: StateReason }): Hub {
    if (this.#hub) return this.#hub;
    const o = this.options;
    const factories: Partial<Record<TransportName, TransportFactory>> = {
      websocket: websocketTransport,
      sse: sseTransport,
      polling: pollingTransport,
      ...o.transportFactories,
    };
    const connection = new Connection({
      url: o.url,
      getToken: o.getToken,
      transports: o.transports ?? ['websocket', 'sse', 'polling'],
      transportFactories: factories,
      WebSocket: o.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket,
      fetch: o.fetch ?? (typeof globalThis.fetch === 'function' ? globalThis.fetch.bind(globalThis) : undefined),
      minDelay: o.reconnect?.minDelay ?? DEFAULTS.minDelay,
      maxDelay: o.reconnect?.maxDelay ?? DEFAULTS.maxDelay,
      maxAttempts: o.reconnect?.maxAttempts ?? DEFAULTS.maxAttempts,
      heartbeatGrace: o.heartbeatGrace ?? DEFAULTS.heartbeatGrace,
      refreshMargin: o.refreshMargin ?? DEFAULTS.refreshMargin,
      offlineQueueSize: o.offlineQueueSize ?? DEFAULTS.offlineQueueSize,
      maxMessageSize: o.maxMessageSize ?? DEFAULTS.maxMessageSize,
      maxChannels: o.maxChannels ?? DEFAULTS.maxChannels,
      random: o.random ?? Math.random,
      watchNetwork: o.watchNetwork ?? true,
    });
    if (announce) connection.announce(announce.state, this.#info, announce.reason);
    const hub = new Hub(connection);
    this.#hub = hub;
    this.#unsink = hub.addSink(this.sink);
    this.#backend?.close();
    this.#backend = localBackend(hub, this.consumerId);
    this.#onState(connection.info);
    hub.sync(this.consumerId, this.subscriptions());
    this.emit('leader', true);
    if (connect) connection.connect();
    return hub;
  }

  /** Uses another tab's connection through `backend`. @internal */
  useBackend(backend: Backend): void {
    this.#backend?.close();
    this.#backend = backend;
    for (const [channel, since] of this.subscriptions()) backend.subscribe(channel, since);
  }

  #dropHub(): void {
    this.#unsink?.();
    this.#unsink = null;
    this.#hub?.destroy();
    this.#hub = null;
  }

  // ---- HubSink ---------------------------------------------------------

  #onState(info: StateInfo): void {
    // The leader repeats its state to every tab when one joins: report changes only.
    if (sameStateInfo(info, this.#info)) return;
    this.#info = info;
    this.emit('state', info);
  }

  #onEvent(event: EventEnvelope): void {
    const entry = this.#channels.get(event.channel);
    if (!entry) return;
    const position = entry.position;
    if (position && entry.epoch !== undefined && position.epoch === entry.epoch && event.offset <= position.offset) {
      return; // Already delivered (e.g. replayed to another tab too).
    }
    entry.position = { offset: event.offset, epoch: entry.epoch ?? position?.epoch ?? '' };
    for (const sub of [...entry.subs]) {
      try {
        sub.deliver('event', event as TypedEvent<EventMap>);
      } catch (err) {
        reportListenerError(err);
      }
    }
  }

  #onSubscribed(info: SubscribedInfo, to?: string): void {
    if (to !== undefined && to !== this.consumerId) return;
    const entry = this.#channels.get(info.channel);
    if (!entry) return;
    // A channel this client had subscribed before is resubscribed, also on
    // another connection (`shareAcrossTabs`: the leader tab changed).
    if (!info.resubscribed && entry.last !== undefined) info = { ...info, resubscribed: true };
    const known = entry.position;
    entry.epoch = info.epoch;
    if (info.recovered !== true) {
      // Fresh, or history lost: continue from the server's position.
      if (!(known && known.epoch === info.epoch && known.offset > info.offset)) {
        entry.position = { offset: info.offset, epoch: info.epoch };
      }
    }
    entry.last = info;
    entry.state = { state: 'subscribed' };
    for (const sub of [...entry.subs]) {
      sub.deliver('state', entry.state);
      sub.deliver('subscribed', info);
    }
  }

  #onSubscribeError(channel: string, error: ErrorShape): void {
    const entry = this.#channels.get(channel);
    if (!entry) return;
    entry.state = { state: 'error', error: new TidingsError(error.code, error.message) };
    for (const sub of [...entry.subs]) sub.deliver('state', entry.state);
  }

  #onServerUnsubscribed(channel: string, reason: string): void {
    const entry = this.#channels.get(channel);
    if (!entry) return;
    this.#channels.delete(channel);
    const state: SubscriptionStateInfo = { state: 'unsubscribed', reason };
    for (const sub of [...entry.subs]) {
      sub.deliver('state', state);
      sub.deactivate();
    }
  }

  /** @internal */
  leaderLost(): void {
    this.#dropHub();
    this.emit('leader', false);
  }
}

function sameStateInfo(a: StateInfo, b: StateInfo): boolean {
  const keys = new Set([...Object.keys(a), ...Object.keys(b)] as (keyof StateInfo)[]);
  for (const key of keys) {
    if (key === 'reason') {
      const x = a.reason;
      const y = b.reason;
      if (x === y) continue;
      if (!x || !y || x.code !== y.code || x.error !== y.error || x.message !== y.message) return false;
    } else if (a[key] !== b[key]) {
      return false;
    }
  }
  return true;
}
