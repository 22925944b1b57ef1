export { TidingsClient, Subscription } from './client.js';
export type {
  TidingsClientOptions,
  ReconnectOptions,
  SubscribeOptions,
  SubscriptionEvents,
  SubscriptionState,
  SubscriptionStateInfo,
  ClientEvents,
} from './client.js';
export type {
  ConnectionState,
  StateInfo,
  StateReason,
  TokenRequest,
  SubscribedInfo,
  RequestOptions,
} from './connection.js';
export { tokenExpiry } from './connection.js';
export { isOwnChange, correlationPrefix } from './own.js';
export type { OwnChangeRule, OwnChangeContext } from './own.js';
export { TidingsError } from './errors.js';
export type { ClientErrorCode } from './errors.js';
export { backoffDelay, backoffUpperBound } from './backoff.js';
export type { BackoffOptions } from './backoff.js';
export { CloseCodes, shouldReconnect } from './protocol.js';
export type * from './protocol.js';
export type {
  Transport,
  TransportClose,
  TransportContext,
  TransportFactory,
  TransportHandlers,
  TransportName,
  WebSocketConstructor,
  WebSocketLike,
} from './transports/types.js';
export { websocketTransport } from './transports/websocket.js';
export { sseTransport, SseParser } from './transports/sse.js';
export { pollingTransport } from './transports/polling.js';
