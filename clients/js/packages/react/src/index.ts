export { TidingsProvider } from './provider.js';
export type { TidingsProviderProps } from './provider.js';
export { TidingsContext, useTidings } from './context.js';
export {
  useConnectionState,
  useSubscription,
  useEntitySubscription,
  useConcurrentEdit,
  entityChannel,
  entityChange,
} from './hooks.js';
export type {
  UseSubscriptionOptions,
  SubscriptionStatus,
  EntityScope,
  EntityChange,
  ConcurrentEdit,
  ConcurrentEditOptions,
  OwnChangeOptions,
} from './hooks.js';
export { useLiveEntity, useRemoteChangeNotice, useUnreadCount } from './entity.js';
export type {
  LiveEntity,
  LiveEntityOptions,
  RemoteChangeNotice as RemoteChangeNoticeState,
  RemoteChangeNoticeOptions,
  UnreadCount,
  UnreadCountOptions,
} from './entity.js';
export { RemoteChangeNotice, EditConflictBanner, DataUpdatedHint } from './components.js';
export type { RemoteChangeNoticeProps, EditConflictBannerProps, DataUpdatedHintProps } from './components.js';
export { playNotificationSound, requestNotificationPermission, showBrowserNotification } from './notify.js';
export { ConnectionStatus } from './status.js';
export type { ConnectionStatusProps, ConnectionStatusKind } from './status.js';
