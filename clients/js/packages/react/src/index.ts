export { TidingsProvider } from './provider.js';
export type { TidingsProviderProps } from './provider.js';
export { TidingsContext, useTidings } from './context.js';
export {
  useConnectionState,
  useSubscription,
  useEntitySubscription,
  useConcurrentEdit,
  entityChannel,
} from './hooks.js';
export type {
  UseSubscriptionOptions,
  SubscriptionStatus,
  EntityScope,
  EntityChange,
  ConcurrentEdit,
} from './hooks.js';
export { ConnectionStatus } from './status.js';
export type { ConnectionStatusProps, ConnectionStatusKind } from './status.js';
