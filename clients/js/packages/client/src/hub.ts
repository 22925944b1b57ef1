/**
 * Reference-counts subscriptions of several consumers (this tab's client, and in
 * `shareAcrossTabs` mode the other tabs) over one [`Connection`].
 */
import type { Connection, RequestOptions, StateInfo, SubscribedInfo } from './connection.js';
import type { TidingsError } from './errors.js';
import type { ClientMessage, EventEnvelope, PresenceStatus, ServerMessage, StreamPosition } from './protocol.js';

export type ControlOp = 'connect' | 'disconnect' | 'retry' | 'reauthenticate';

/** A plain error shape that survives `postMessage`. */
export interface ErrorShape {
  code: TidingsError['code'];
  message: string;
}

/** Where the hub delivers what the connection reports. */
export interface HubSink {
  state(info: StateInfo): void;
  event(event: EventEnvelope): void;
  /** `to`: only that consumer (it joined a channel already subscribed). */
  subscribed(info: SubscribedInfo, to?: string): void;
  subscribeError(channel: string, error: ErrorShape): void;
  serverUnsubscribed(channel: string, reason: string): void;
  /** The connection's presence status changed (other tabs keep it for a handover). */
  presenceStatus?(status: PresenceStatus): void;
}

/** What a client uses to reach the connection, locally or through the leader tab. */
export interface Backend {
  subscribe(channel: string, since?: StreamPosition): void;
  unsubscribe(channel: string): void;
  request(message: ClientMessage, options: RequestOptions): Promise<ServerMessage>;
  control(op: ControlOp): void;
  /** Detaches this client. */
  close(): void;
}

export class Hub {
  readonly connection: Connection;
  #wants = new Map<string, Map<string, StreamPosition | undefined>>();
  #subscribed = new Map<string, SubscribedInfo>();
  #sinks = new Set<HubSink>();
  #unlisten: (() => void)[] = [];

  constructor(connection: Connection) {
    this.connection = connection;
    this.#unlisten.push(
      connection.on('state', (info) => this.#each((s) => s.state(info))),
      connection.on('event', (event) => this.#each((s) => s.event(event))),
      connection.on('subscribed', (info) => {
        this.#subscribed.set(info.channel, info);
        this.#each((s) => s.subscribed(info));
      }),
      connection.on('subscribeError', ({ channel, error }) => {
        this.#subscribed.delete(channel);
        this.#each((s) => s.subscribeError(channel, { code: error.code, message: error.message }));
      }),
      connection.on('serverUnsubscribed', ({ channel, reason }) => {
        this.#wants.delete(channel);
        this.#subscribed.delete(channel);
        this.#each((s) => s.serverUnsubscribed(channel, reason));
      }),
      connection.on('presenceStatus', (status) => this.#each((s) => s.presenceStatus?.(status))),
    );
  }

  addSink(sink: HubSink): () => void {
    this.#sinks.add(sink);
    return () => this.#sinks.delete(sink);
  }

  #each(fn: (sink: HubSink) => void): void {
    for (const sink of [...this.#sinks]) fn(sink);
  }

  /** Channels wanted by at least one consumer. */
  get channels(): string[] {
    return [...this.#wants.keys()];
  }

  /** How many consumers want `channel`. */
  refCount(channel: string): number {
    return this.#wants.get(channel)?.size ?? 0;
  }

  subscribe(consumer: string, channel: string, since?: StreamPosition): void {
    let consumers = this.#wants.get(channel);
    const first = !consumers || consumers.size === 0;
    if (!consumers) {
      consumers = new Map();
      this.#wants.set(channel, consumers);
    }
    const already = consumers.has(consumer);
    consumers.set(consumer, since);
    // The connection keeps the earliest position while the subscribe is not sent yet.
    this.connection.addChannel(channel, since);
    if (!first && !already) {
      const info = this.#subscribed.get(channel);
      if (info) {
        // Joining a live subscription: start from where it is now.
        const position = this.connection.positions().get(channel);
        const joined: SubscribedInfo = { ...info, resubscribed: false };
        if (position && position.epoch === info.epoch) joined.offset = position.offset;
        if (!since) delete joined.recovered;
        this.#each((s) => s.subscribed(joined, consumer));
      }
    }
  }

  unsubscribe(consumer: string, channel: string): void {
    const consumers = this.#wants.get(channel);
    if (!consumers || !consumers.delete(consumer)) return;
    if (consumers.size === 0) {
      this.#wants.delete(channel);
      this.#subscribed.delete(channel);
      this.connection.removeChannel(channel);
    }
  }

  /** Replaces everything `consumer` wants (a tab re-announcing itself). */
  sync(consumer: string, subscriptions: [string, StreamPosition | undefined][]): void {
    const wanted = new Set(subscriptions.map(([channel]) => channel));
    for (const [channel, consumers] of [...this.#wants]) {
      if (consumers.has(consumer) && !wanted.has(channel)) this.unsubscribe(consumer, channel);
    }
    for (const [channel, since] of subscriptions) this.subscribe(consumer, channel, since);
  }

  /** Forgets a consumer (its tab closed). */
  drop(consumer: string): void {
    for (const [channel, consumers] of [...this.#wants]) {
      if (consumers.has(consumer)) this.unsubscribe(consumer, channel);
    }
  }

  request(message: ClientMessage, options: RequestOptions): Promise<ServerMessage> {
    return this.connection.request(message, options);
  }

  control(op: ControlOp): void {
    switch (op) {
      case 'connect':
        this.connection.connect();
        break;
      case 'disconnect':
        this.connection.disconnect();
        break;
      case 'retry':
        this.connection.retry();
        break;
      case 'reauthenticate':
        this.connection.reauthenticate();
        break;
    }
  }

  destroy(): void {
    for (const unlisten of this.#unlisten) unlisten();
    this.#unlisten = [];
    this.#sinks.clear();
    this.connection.destroy();
  }
}

/** A client attached directly to a hub in the same tab. */
export function localBackend(hub: Hub, consumer: string): Backend {
  return {
    subscribe: (channel, since) => hub.subscribe(consumer, channel, since),
    unsubscribe: (channel) => hub.unsubscribe(consumer, channel),
    request: (message, options) => hub.request(message, options),
    control: (op) => hub.control(op),
    close: () => hub.drop(consumer),
  };
}
