/**
 * Wire types of the Tidings protocol v1 (see docs/protocol.md). Field names are
 * snake_case as on the wire.
 */

/** A JSON value. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** A position in one channel's history: offsets are comparable within one epoch. */
export interface StreamPosition {
  offset: number;
  epoch: string;
}

/** The entity an event is about (`meta.entity`). */
export interface EntityRef {
  type: string;
  id: string;
  version?: number;
}

/** Event metadata; each field is present only when the publisher gave it. */
export interface EventMeta {
  actor?: string;
  correlation_id?: string;
  entity?: EntityRef;
}

/** A map from event name to its `data` type, used to type a subscription. */
export type EventMap = Record<string, unknown>;

/** The envelope of one event, `{type:"event", …}`. */
export interface EventEnvelope<Name extends string = string, Data = unknown> {
  type: 'event';
  channel: string;
  offset: number;
  id: string;
  event: Name;
  ts: string;
  data: Data;
  meta?: EventMeta;
}

/** A discriminated union of envelopes, one member per event of `M`. */
export type TypedEvent<M extends object> = {
  [K in keyof M & string]: EventEnvelope<K, M[K]>;
}[keyof M & string];

export type RequestId = number | string;

export type PresenceStatus = 'online' | 'away' | 'busy';

/** Client → server messages. */
export type ClientMessage =
  | { type: 'auth'; token: string; id?: RequestId }
  | { type: 'subscribe'; channel: string; since?: StreamPosition; id?: RequestId }
  | { type: 'unsubscribe'; channel: string; id?: RequestId }
  | { type: 'publish'; channel: string; event: string; data: unknown; id?: RequestId }
  | { type: 'history'; channel: string; since?: StreamPosition; limit?: number; id?: RequestId }
  | { type: 'presence'; channel: string; id?: RequestId }
  | { type: 'status'; status: PresenceStatus; id?: RequestId }
  | { type: 'refresh'; token: string; id?: RequestId }
  | { type: 'ping'; id?: RequestId }
  | { type: 'pong' };

export interface ConnectedMessage {
  type: 'connected';
  client: string;
  user: string;
  heartbeat: number;
  expires_at?: string;
  node: string;
  version: string;
}

export interface SubscribedMessage {
  type: 'subscribed';
  id?: RequestId;
  channel: string;
  offset: number;
  epoch: string;
  recoverable: boolean;
  recovered?: boolean;
}

export interface UnsubscribedMessage {
  type: 'unsubscribed';
  id?: RequestId;
  channel: string;
  reason?: string;
}

export interface PublishedMessage {
  type: 'published';
  id?: RequestId;
  channel: string;
  offset: number;
}

export interface HistoryMessage {
  type: 'history';
  id?: RequestId;
  channel: string;
  epoch: string;
  offset: number;
  events: EventEnvelope[];
}

export interface PresenceMember {
  user: string;
  status: PresenceStatus;
  info?: unknown;
  clients: string[];
}

export interface PresenceMessage {
  type: 'presence';
  id?: RequestId;
  channel: string;
  members?: PresenceMember[];
  action?: 'join' | 'leave' | 'status';
  member?: PresenceMember;
}

export interface StatusMessage {
  type: 'status';
  id?: RequestId;
  status: PresenceStatus;
}

export interface RefreshedMessage {
  type: 'refreshed';
  id?: RequestId;
  expires_at?: string;
}

export interface PongMessage {
  type: 'pong';
  id?: RequestId;
}

export interface PingMessage {
  type: 'ping';
}

/** Error codes of the contract (§3). */
export type ErrorCode =
  | 'bad_request'
  | 'unauthorized'
  | 'permission_denied'
  | 'unknown_channel'
  | 'already_subscribed'
  | 'not_subscribed'
  | 'limit_exceeded'
  | 'rate_limited'
  | 'token_expired'
  | 'not_available'
  | 'internal'
  | 'engine_unavailable';

export interface ErrorMessage {
  type: 'error';
  id?: RequestId;
  /** Over SSE: the channel the stream could not subscribe to. */
  channel?: string;
  code: ErrorCode;
  message: string;
}

/** SSE: a channel of the resume token could not be recovered (`subscribed` with `recovered: false` follows). */
export interface UnrecoverableMessage {
  type: 'unrecoverable';
  channel: string;
  epoch: string;
  offset: number;
  /** `epoch_changed`, `history_gone` or `offset_ahead`. */
  reason: string;
}

export interface DisconnectMessage {
  type: 'disconnect';
  code: number;
  reason: string;
  reconnect: boolean;
}

/** Server → client messages. */
export type ServerMessage =
  | ConnectedMessage
  | SubscribedMessage
  | UnsubscribedMessage
  | PublishedMessage
  | HistoryMessage
  | PresenceMessage
  | StatusMessage
  | RefreshedMessage
  | PongMessage
  | PingMessage
  | ErrorMessage
  | DisconnectMessage
  | EventEnvelope;

/** Close codes of the contract (§8). */
export const CloseCodes = {
  normal: 1000,
  goingAway: 1001,
  restarting: 1012,
  reconnect: 4000,
  noPong: 4001,
  slowConsumer: 4002,
  tokenExpired: 4003,
  rateLimited: 4004,
  lostSync: 4005,
  unauthorized: 4500,
  protocolViolation: 4501,
  disconnectedByApi: 4502,
  connectionLimit: 4503,
} as const;

/** Whether a close code means "reconnect" (4000–4499, 1001, 1012 and abnormal closes). */
export function shouldReconnect(code: number): boolean {
  if (code >= 4500 && code <= 4999) return false;
  if (code === 1000) return false;
  return true;
}
