/**
 * Request and response types of the Tidings server API (docs/openapi.json).
 * Inputs are camelCase; results are the API's JSON as it arrives (snake_case).
 */

/** Any JSON value. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** The entity an event concerns (`meta.entity`). */
export interface EntityRef {
  type: string;
  id: string;
  /** The entity's version, when it has one (`null` is allowed, as in the API). */
  version?: number | null;
}

/** Publisher metadata; each field appears in the event only when given. */
export interface EventMeta {
  actor?: string;
  correlation_id?: string;
  entity?: EntityRef;
}

/** Only connections whose `sub` is listed, or that hold a listed role, receive the event. */
export interface Audience {
  users?: string[];
  roles?: string[];
}

/** Fields every publish takes. */
export interface PublishCommon {
  /** Event name, 1-255 bytes without control characters (e.g. `applications.updated`). */
  event: string;
  /** The payload: any JSON value. */
  data: Json | unknown;
  meta?: EventMeta;
  audience?: Audience;
  /** A connection id (`client` of `connected`) that must not receive it: the tab that made the change. */
  excludeClient?: string;
  /**
   * Deduplication key. Left out, one is generated for this call and reused by
   * every retry of it, so a retried publish is delivered once.
   */
  idempotencyKey?: string;
}

/** `POST /api/publish`. */
export interface PublishInput extends PublishCommon {
  channel: string;
}

/** `POST /api/broadcast`: one event to several channels. */
export interface BroadcastInput extends PublishCommon {
  channels: string[];
}

/** `POST /api/events`: an entity change, published as `{entity.type}.{action}`. */
export interface EntityEventInput {
  workspace: string;
  entity: EntityRef;
  /** Any event-name segment: `created`, `updated`, `deleted`, `approved`, `status_changed`… */
  action: string;
  data?: Json | unknown;
  actor?: string;
  correlationId?: string;
  audience?: Audience;
  excludeClient?: string;
  idempotencyKey?: string;
}

/** `POST /api/disconnect`. */
export interface DisconnectInput {
  user: string;
  /** A 4xxx close code (default 4502: no reconnect). */
  code?: number;
  reason?: string;
}

/** `POST /api/unsubscribe`. */
export interface UnsubscribeInput {
  user: string;
  channel: string;
  reason?: string;
}

/** `GET /api/history` parameters. */
export interface HistoryInput {
  channel: string;
  /** Only events after this offset. */
  since?: number;
  /** The epoch `since` belongs to (needs `since`). */
  epoch?: string;
  limit?: number;
  order?: 'oldest' | 'newest';
}

/** Where one event landed. */
export interface Published {
  channel: string;
  offset: number;
  id: string;
}

/** The result of `entityEvent`. */
export interface EntityEventResult {
  /** `{entity.type}.{action}`. */
  event: string;
  /** The workspace, entity-type and entity channels, in that order. */
  results: Published[];
}

/** An event as subscribers receive it. */
export interface EventEnvelope {
  type: 'event';
  channel: string;
  offset: number;
  id: string;
  event: string;
  ts: string;
  data: unknown;
  meta?: EventMeta;
}

/** `GET /api/history`. */
export interface HistoryResult {
  type: 'history';
  channel: string;
  epoch: string;
  offset: number;
  /** `false` when events after `since` have left history, or the epoch differs. */
  complete: boolean;
  events: EventEnvelope[];
}

export interface PresenceMember {
  user: string;
  status: 'online' | 'away' | 'busy';
  info?: unknown;
  clients: string[];
}

/** `GET /api/presence`. */
export interface PresenceResult {
  channel: string;
  members: PresenceMember[];
}

export interface NodeInfo {
  name: string;
  connections: number;
  uptime_seconds: number;
  version: string;
}

/** `GET /api/info`. */
export interface InfoResult {
  node: string;
  version: string;
  engine: 'memory' | 'redis';
  nodes: NodeInfo[];
}
