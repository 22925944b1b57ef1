import { useCallback, useEffect, useRef, useState, useSyncExternalStore } from 'react';
import type {
  EventMap,
  StateInfo,
  SubscribedInfo,
  SubscriptionStateInfo,
  TidingsError,
  TypedEvent,
} from '@tidings/client';
import { useTidings } from './context.js';

/** The connection state, re-rendering on every change. */
export function useConnectionState(): StateInfo {
  const client = useTidings();
  const subscribe = useCallback((notify: () => void) => client.on('state', notify), [client]);
  return useSyncExternalStore(subscribe, () => client.stateInfo, () => client.stateInfo);
}

export interface UseSubscriptionOptions {
  /** Called on every (re)subscription; `recovered === false` means reload your data. */
  onSubscribed?: (info: SubscribedInfo) => void;
  /** Subscribe only while true (default true). */
  enabled?: boolean;
}

export interface SubscriptionStatus {
  state: SubscriptionStateInfo['state'];
  error?: TidingsError;
}

/**
 * Subscribes to `channel` while the component is mounted (`null` to skip).
 * The latest `handler` is always called; changing it does not resubscribe.
 */
export function useSubscription<M extends object = EventMap>(
  channel: string | null,
  handler?: (event: TypedEvent<M>) => void,
  options: UseSubscriptionOptions = {},
): SubscriptionStatus {
  const client = useTidings();
  const handlerRef = useRef(handler);
  const subscribedRef = useRef(options.onSubscribed);
  handlerRef.current = handler;
  subscribedRef.current = options.onSubscribed;
  const [status, setStatus] = useState<SubscriptionStatus>({ state: 'subscribing' });
  const enabled = options.enabled ?? true;
  useEffect(() => {
    if (!channel || !enabled) {
      setStatus({ state: 'unsubscribed' });
      return undefined;
    }
    const sub = client.subscribe<M>(channel, (event) => handlerRef.current?.(event));
    const sync = (): void => {
      const error = sub.error;
      setStatus(error ? { state: sub.state, error } : { state: sub.state });
    };
    sync();
    const offState = sub.on('state', sync);
    const offSubscribed = sub.on('subscribed', (info) => subscribedRef.current?.(info));
    return () => {
      offState();
      offSubscribed();
      sub.unsubscribe();
    };
  }, [client, channel, enabled]);
  return status;
}

export interface EntityScope {
  workspace: string;
  /** Entity type, e.g. `applications`. */
  type: string;
  /** One entity; omit for the whole type (list pages). */
  id?: string;
}

/** The conventional channel of an entity scope: `workspace:{w}:{type}[:{id}]`. */
export function entityChannel(scope: EntityScope): string {
  return scope.id === undefined
    ? `workspace:${scope.workspace}:${scope.type}`
    : `workspace:${scope.workspace}:${scope.type}:${scope.id}`;
}

/**
 * Subscribes to an entity type (`{workspace, type}`) or one entity
 * (`{workspace, type, id}`), as published by the server's `POST /api/events`
 * (`{type}.created|updated|deleted` with `meta.entity`).
 */
export function useEntitySubscription<M extends object = EventMap>(
  scope: EntityScope | null,
  handler?: (event: TypedEvent<M>) => void,
  options: UseSubscriptionOptions = {},
): SubscriptionStatus {
  return useSubscription<M>(scope ? entityChannel(scope) : null, handler, options);
}

export interface EntityChange {
  /** `updated`, `deleted`, … (the part after the type in the event name). */
  action: string;
  event: string;
  actor?: string;
  version?: number;
  ts: string;
  data: unknown;
}

export interface ConcurrentEdit {
  /** True once another user changed (or deleted) the entity since `reset()`. */
  changedByOther: boolean;
  deleted: boolean;
  /** The latest change by another user. */
  lastChange?: EntityChange;
  /** Forget the changes (e.g. after reloading or saving). */
  reset(): void;
}

/**
 * For edit forms: tells whether the entity was changed by another user while
 * the current one edits it. Changes whose `meta.actor` is the current user (the
 * token's `sub`, or `currentUser`) do not count.
 */
export function useConcurrentEdit(
  scope: { workspace: string; type: string; id: string } | null,
  options: { currentUser?: string; enabled?: boolean } = {},
): ConcurrentEdit {
  const client = useTidings();
  const [changes, setChanges] = useState<{ last?: EntityChange; deleted: boolean; changed: boolean }>({
    changed: false,
    deleted: false,
  });
  const userRef = useRef(options.currentUser);
  userRef.current = options.currentUser;
  useEntitySubscription(
    scope,
    (event) => {
      const me = userRef.current ?? client.stateInfo.user ?? undefined;
      const actor = event.meta?.actor;
      if (actor !== undefined && actor === me) return;
      const dot = event.event.lastIndexOf('.');
      const action = dot >= 0 ? event.event.slice(dot + 1) : event.event;
      const change: EntityChange = { action, event: event.event, ts: event.ts, data: event.data };
      if (actor !== undefined) change.actor = actor;
      const version = event.meta?.entity?.version;
      if (version !== undefined) change.version = version;
      setChanges((prev) => ({ changed: true, deleted: prev.deleted || action === 'deleted', last: change }));
    },
    options.enabled === undefined ? {} : { enabled: options.enabled },
  );
  const reset = useCallback(() => setChanges({ changed: false, deleted: false }), []);
  const result: ConcurrentEdit = { changedByOther: changes.changed, deleted: changes.deleted, reset };
  if (changes.last) result.lastChange = changes.last;
  return result;
}
