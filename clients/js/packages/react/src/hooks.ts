import { useCallback, useEffect, useRef, useState, useSyncExternalStore } from 'react';
import type {
  EventEnvelope,
  EventMap,
  OwnChangeRule,
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

/** One change of an entity, as published by `POST /api/events`. */
export interface EntityChange<D = unknown> {
  /** `created`, `updated`, `deleted`, … (the part after the type in the event name). */
  action: string;
  event: string;
  /** Entity id (`meta.entity.id`). */
  id?: string;
  actor?: string;
  version?: number;
  ts: string;
  data: D;
  /** `live`: seen as it happened (or replayed by recovery); `stale`: the data the app refetched is newer than the form. */
  seen: 'live' | 'stale';
}

/** Builds an `EntityChange` from an entity event. */
export function entityChange<D = unknown>(event: EventEnvelope): EntityChange<D> {
  const dot = event.event.lastIndexOf('.');
  const change: EntityChange<D> = {
    action: dot >= 0 ? event.event.slice(dot + 1) : event.event,
    event: event.event,
    ts: event.ts,
    data: event.data as D,
    seen: 'live',
  };
  const entity = event.meta?.entity;
  if (entity?.id !== undefined) change.id = entity.id;
  if (entity?.version !== undefined) change.version = entity.version;
  if (event.meta?.actor !== undefined) change.actor = event.meta.actor;
  return change;
}

/** Who counts as "me" for the entity hooks. */
export interface OwnChangeOptions {
  /** How own changes are recognised (default `actor`): see `TidingsClient.isOwnChange`. */
  ownBy?: OwnChangeRule;
  /** The current user; defaults to the token's `sub`. */
  currentUser?: string;
}

export interface ConcurrentEdit<D = unknown> {
  /** True once another user changed (or deleted) the entity since the form's `baseVersion` (or `reset()`). */
  changedByOther: boolean;
  deleted: boolean;
  /** The latest change by another user. */
  lastChange?: EntityChange<D>;
  /** Forget the changes (e.g. after reloading or saving): only newer ones count again. */
  reset(): void;
}

export interface ConcurrentEditOptions extends OwnChangeOptions {
  enabled?: boolean;
  /**
   * The entity version the form was opened on. With it, events up to that
   * version are ignored, and a change is raised whether it is seen live, replayed
   * after a reconnect, or found when the app refetched (`currentVersion`).
   */
  baseVersion?: number;
  /**
   * The version of the entity as the app last fetched it (e.g. `query.data.version`).
   * Newer than `baseVersion` (and not yet `reset()`) → `changedByOther` with `seen: 'stale'`.
   */
  currentVersion?: number;
  /** Who made `currentVersion`, when the app knows (e.g. `data.updatedBy`); that user's own versions don't count. */
  currentActor?: string;
  /** Called after a reconnect that could not recover missed events: refetch the entity here. */
  onResync?: () => void;
}

/**
 * For edit forms: tells whether the entity was changed by another user while
 * the current one edits it. Own changes (by `ownBy`, default the token's `sub`
 * as `meta.actor`) do not count. Type the change data with `D`.
 */
export function useConcurrentEdit<D = unknown>(
  scope: { workspace: string; type: string; id: string } | null,
  options: ConcurrentEditOptions = {},
): ConcurrentEdit<D> {
  const client = useTidings();
  const [changes, setChanges] = useState<{ last?: EntityChange<D>; deleted: boolean; changed: boolean }>({
    changed: false,
    deleted: false,
  });
  // Versions at or below this are known to the form (its base, or acknowledged by reset()).
  const [knownVersion, setKnownVersion] = useState<number>(-Infinity);
  const optionsRef = useRef(options);
  optionsRef.current = options;
  const base = options.baseVersion ?? -Infinity;
  const floor = Math.max(base, knownVersion);
  const floorRef = useRef(floor);
  floorRef.current = floor;
  useEntitySubscription(
    scope,
    (event) => {
      const o = optionsRef.current;
      if (client.isOwnChange(event, o.ownBy ?? 'actor', o.currentUser)) return;
      const change = entityChange<D>(event);
      if (change.version !== undefined && change.version <= floorRef.current) return;
      setChanges((prev) => ({ changed: true, deleted: prev.deleted || change.action === 'deleted', last: change }));
    },
    {
      ...(options.enabled === undefined ? {} : { enabled: options.enabled }),
      onSubscribed: (info) => {
        if (info.recovered === false) optionsRef.current.onResync?.();
      },
    },
  );
  const { currentVersion, currentActor } = options;
  const me = options.currentUser ?? client.stateInfo.user;
  const stale =
    currentVersion !== undefined &&
    currentVersion > floor &&
    !(currentActor !== undefined && currentActor === me) &&
    !(changes.last?.version !== undefined && changes.last.version >= currentVersion);
  const lastVersionRef = useRef<number | undefined>(undefined);
  lastVersionRef.current = changes.last?.version;
  // Acknowledges everything known so far: the latest live change and the fetched version.
  const reset = useCallback(() => {
    setChanges({ changed: false, deleted: false });
    setKnownVersion((v) => Math.max(v, optionsRef.current.currentVersion ?? -Infinity, lastVersionRef.current ?? -Infinity));
  }, []);
  const result: ConcurrentEdit<D> = { changedByOther: changes.changed || stale, deleted: changes.deleted, reset };
  if (changes.changed && changes.last) {
    result.lastChange = changes.last;
  } else if (stale) {
    const change: EntityChange<D> = {
      action: 'updated',
      event: `${scope?.type ?? ''}.updated`,
      version: currentVersion,
      ts: '',
      data: undefined as D,
      seen: 'stale',
    };
    if (scope) change.id = scope.id;
    if (currentActor !== undefined) change.actor = currentActor;
    result.lastChange = change;
  }
  return result;
}
