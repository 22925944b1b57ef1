import type { ClientErrorCode } from '../errors.js';
import type { ClientMessage, RequestId, ServerMessage, StreamPosition } from '../protocol.js';

/** The ways of reaching a Tidings server, in the default fallback order. */
export type TransportName = 'websocket' | 'sse' | 'polling';

/**
 * An event handler property. Written as a method's type so that the handler
 * types of real WebSockets (the browser's `(this: WebSocket, ev: Event) => any`,
 * `ws`'s) are assignable: a function-typed property would be checked
 * contravariantly and accept none of them.
 */
type Handler<E> = { handle(ev: E): unknown }['handle'];

/** A WebSocket instance: the browser's, or `ws`'s in Node. */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: Handler<unknown> | null;
  onmessage: Handler<{ data: unknown }> | null;
  onclose: Handler<{ code: number; reason: string }> | null;
  onerror: Handler<unknown> | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
/**
 * A WebSocket constructor. The third argument is `ws`'s options in Node
 * (`{ perMessageDeflate: true }`); the browser's constructor ignores it.
 */
export type WebSocketConstructor = new (
  url: string,
  protocols?: string | string[],
  options?: { perMessageDeflate?: boolean },
) => WebSocketLike;

/** How a transport ended. Reported exactly once. */
export interface TransportClose {
  /** Close code (WebSocket close code, or 1006 when the transport failed). */
  code: number;
  reason: string;
  /**
   * Whether the transport itself got through (socket open / HTTP 200). `false`
   * means it could not connect at all, so the next transport is worth trying.
   */
  reachable: boolean;
  /** HTTP status when an HTTP transport was refused. */
  status?: number;
}

export interface TransportHandlers {
  message(message: ServerMessage): void;
  close(info: TransportClose): void;
  /**
   * Settles the request `id` with an SDK error instead of a server reply (e.g.
   * `connection_lost` when an HTTP request failed on the way).
   */
  fail(id: RequestId, code: ClientErrorCode, message: string): void;
  /**
   * The request `id` was certainly not sent (the server could not be reached):
   * it goes back to the offline queue, to be sent on the next connection. The
   * transport then closes.
   */
  unsent(id: RequestId): void;
  /** Whether the request `id` still waits for its reply (not answered, failed or timed out). */
  pending(id: RequestId): boolean;
  /**
   * Keeps transport-specific resume state (the SSE resume token) for the next
   * attempt of the same transport, which finds it in `TransportContext.resume`.
   */
  saveResume(state: unknown): void;
}

/** Everything a transport needs to open. */
export interface TransportContext {
  /** `http(s)://host[:port][/prefix]` of the server, without trailing slash. */
  httpUrl: string;
  /** `ws(s)://…` form of the same. */
  wsUrl: string;
  token: string;
  handlers: TransportHandlers;
  WebSocket: WebSocketConstructor | undefined;
  fetch: typeof fetch | undefined;
  /**
   * The channels the connection will subscribe to once `connected`, with the
   * positions it will resume from. A transport that names its channels when it
   * opens (SSE) opens with these.
   */
  channels: ReadonlyMap<string, StreamPosition | undefined>;
  /**
   * Most channels the server takes on one connection (its
   * `connection.max_channels`): an SSE stream names at most these.
   */
  maxChannels: number;
  /** What this transport passed to `handlers.saveResume` during the previous session, if it was the last one used. */
  resume: unknown;
}

/**
 * One open attempt of one transport. It speaks the protocol's messages whatever
 * the wire (a transport without a native request channel emulates replies).
 * It reports `connected` through `handlers.message` once authenticated.
 */
export interface Transport {
  readonly name: TransportName;
  send(message: ClientMessage): void;
  /** Closes and detaches at once: no handler is called afterwards. */
  close(code: number, reason: string): void;
  /**
   * True while nothing could go silent (no stream or poll is open, e.g. no
   * channel is subscribed over SSE or polling): the heartbeat watchdog waits.
   */
  idle?(): boolean;
}

export type TransportFactory = (context: TransportContext) => Transport;
