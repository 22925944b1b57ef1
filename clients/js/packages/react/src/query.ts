/**
 * TanStack Query bridge (`@tidings/react/query`): maps event names to query
 * keys to invalidate, or to `setQueryData` updates. Needs `@tanstack/react-query` ≥ 5.
 */
import { useEffect, useRef } from 'react';
import { useQueryClient, type QueryClient, type QueryKey } from '@tanstack/react-query';
import type { EventEnvelope, EventMap, TypedEvent } from '@tidings/client';
import { useTidings } from './context.js';
import { entityChange, useEntitySubscription, type EntityChange, type OwnChangeOptions, type SubscriptionStatus } from './hooks.js';

/** Where an event's data goes in the cache; `TData` is the cached data (annotate `old`). */
export interface QueryBridgeUpdate<E, TData = unknown> {
  queryKey: QueryKey | ((event: E) => QueryKey);
  /** Method syntax on purpose: annotate `old` with your cached type (`(old: Item[] | undefined, e) => …`). */
  updater(old: TData | undefined, event: E): TData | undefined;
}

interface QueryBridgeRuleBase<E> {
  /** Channel to subscribe to. */
  channel: string;
  /** Query keys to invalidate (prefix match, as `invalidateQueries`). */
  invalidate?: QueryKey[] | ((event: E) => QueryKey[]);
  /** Writes the event into cached data instead of refetching. */
  update?: QueryBridgeUpdate<E>[];
}

/** A rule for one event name: `event` is narrowed to it in `invalidate` and `update`. */
export type QueryBridgeRuleFor<M extends object, K extends keyof M & string> = QueryBridgeRuleBase<EventEnvelope<K, M[K]>> & {
  events: K;
};

/** A rule for several names (`[...]`, `prefix.*`, `*` or omitted): `event` is the union. */
export type QueryBridgeRuleMany<M extends object> = QueryBridgeRuleBase<TypedEvent<M>> & {
  events?: (keyof M & string)[] | `${string}.*` | '*';
};

/**
 * One mapping from events of a channel to the cache. With `events: 'x.updated'`
 * (one name), the event is typed as that name's envelope.
 */
export type QueryBridgeRule<M extends object = EventMap> =
  | QueryBridgeRuleMany<M>
  | { [K in keyof M & string]: QueryBridgeRuleFor<M, K> }[keyof M & string];

export interface QueryBridgeOptions {
  /** Defaults to the one of `<QueryClientProvider>`. */
  queryClient?: QueryClient;
}

function matches(patterns: string | string[] | undefined, name: string): boolean {
  if (patterns === undefined) return true;
  const list = Array.isArray(patterns) ? patterns : [patterns];
  return list.some((p) => p === '*' || p === name || (p.endsWith('.*') && name.startsWith(p.slice(0, -1))));
}

/** Applies one rule to one event. */
export function applyRule<M extends object>(queryClient: QueryClient, rule: QueryBridgeRule<M>, event: EventEnvelope): void {
  if (!matches(rule.events, event.event)) return;
  // The rule's own event type; `matches` checked the name.
  const loose = rule as QueryBridgeRuleBase<EventEnvelope>;
  for (const update of loose.update ?? []) {
    const key = typeof update.queryKey === 'function' ? update.queryKey(event) : update.queryKey;
    // An invalidated query waits for its refetch: a patch would clear the invalidation.
    if (queryClient.getQueryState(key)?.isInvalidated === true) continue;
    queryClient.setQueryData(key, (old: unknown) => update.updater(old, event));
  }
  const keys = typeof loose.invalidate === 'function' ? loose.invalidate(event) : loose.invalidate;
  for (const queryKey of keys ?? []) void queryClient.invalidateQueries({ queryKey });
}

/**
 * Subscribes to each rule's channel while mounted and keeps the query cache in
 * step. After a reconnect that could not recover the missed events
 * (`recovered: false`), the channel's static keys are invalidated so the data
 * is refetched: every `invalidate` key given as an array and every `update`
 * key given as a value (not the ones computed from an event). `rules` may
 * change between renders.
 */
export function useTidingsQueryBridge<M extends object = EventMap>(
  rules: QueryBridgeRule<M>[],
  options: QueryBridgeOptions = {},
): void {
  const client = useTidings();
  const contextClient = useQueryClient(options.queryClient);
  const queryClient = options.queryClient ?? contextClient;
  const rulesRef = useRef(rules);
  rulesRef.current = rules;
  const channels = [...new Set(rules.map((r) => r.channel))].sort().join('\n');
  useEffect(() => {
    if (!channels) return undefined;
    const subs = channels.split('\n').map((channel) => {
      const sub = client.subscribe(channel, (event) => {
        for (const rule of rulesRef.current) {
          if (rule.channel === channel) applyRule(queryClient, rule, event);
        }
      });
      sub.on('subscribed', (info) => {
        if (info.recovered !== false) return;
        for (const rule of rulesRef.current as QueryBridgeRuleBase<EventEnvelope>[]) {
          if (rule.channel !== channel) continue;
          if (Array.isArray(rule.invalidate)) {
            for (const queryKey of rule.invalidate) void queryClient.invalidateQueries({ queryKey });
          }
          for (const update of rule.update ?? []) {
            if (typeof update.queryKey !== 'function') void queryClient.invalidateQueries({ queryKey: update.queryKey });
          }
        }
      });
      return sub;
    });
    return () => {
      for (const sub of subs) sub.unsubscribe();
    };
  }, [client, queryClient, channels]);
}

/** An item of a live list: an id and the entity version it is at. */
export interface LiveListItem {
  id: string;
  version?: number;
}

export interface LiveListOptions<T extends LiveListItem> extends OwnChangeOptions {
  workspace: string;
  /** Entity type (`applications`): channel `workspace:{w}:{type}`, events `{type}.created|updated|deleted`. */
  type: string;
  /** The TanStack Query key holding the list (`T[]`). */
  queryKey: QueryKey;
  /** The item from an event (default: `{...event.data, id: meta.entity.id, version: meta.entity.version}`). */
  toItem?: (event: EventEnvelope) => T;
  /** Where created items go (default `start`). */
  insert?: 'start' | 'end';
  /** An item was created (by anyone; `own` tells whether by the current user): animation, "New item" notice. */
  onArrive?: (item: T, info: { own: boolean; change: EntityChange<T> }) => void;
  /** Any applied change. */
  onChange?: (change: EntityChange<T>, info: { own: boolean }) => void;
  queryClient?: QueryClient;
  enabled?: boolean;
}

function defaultItem<T extends LiveListItem>(event: EventEnvelope): T {
  const entity = event.meta?.entity;
  const data = typeof event.data === 'object' && event.data !== null ? event.data : {};
  const item: Record<string, unknown> = { ...data };
  if (entity?.id !== undefined) item.id = entity.id;
  if (entity?.version !== undefined) item.version = entity.version;
  return item as unknown as T;
}

/**
 * Applies `{type}.created|updated|deleted` of a workspace to the cached list
 * under `queryKey`, by entity version: an event older than what the list (or an
 * earlier event) holds is dropped, a duplicate is ignored, a deletion is
 * remembered so a late update does not bring the item back. After a reconnect
 * that could not recover the missed events, the list is refetched.
 */
export function useLiveList<T extends LiveListItem>(options: LiveListOptions<T>): SubscriptionStatus {
  const client = useTidings();
  const contextClient = useQueryClient(options.queryClient);
  const queryClient = options.queryClient ?? contextClient;
  const optionsRef = useRef(options);
  optionsRef.current = options;
  // The newest version seen per id, deletions included (as tombstones).
  const versions = useRef(new Map<string, number>());
  const keyText = JSON.stringify(options.queryKey);
  // Set while a change waits for the list's fetch under way to end: that fetch
  // may have read the list before the change, so the list is refetched after it.
  const afterFetch = useRef<(() => void) | null>(null);
  useEffect(() => {
    versions.current = new Map();
    return () => {
      afterFetch.current?.();
      afterFetch.current = null;
    };
  }, [keyText]);
  const refetchAfterFetch = (queryKey: QueryKey): void => {
    if (afterFetch.current) return;
    const cache = queryClient.getQueryCache();
    const query = cache.find({ queryKey, exact: true });
    if (!query || query.state.fetchStatus !== 'fetching') return;
    const stop = cache.subscribe((change) => {
      if (change.query !== query || query.state.fetchStatus === 'fetching') return;
      stop();
      afterFetch.current = null;
      void queryClient.invalidateQueries({ queryKey, exact: true });
    });
    afterFetch.current = stop;
  };
  return useEntitySubscription(
    options.enabled === false ? null : { workspace: options.workspace, type: options.type },
    (event) => {
      const o = optionsRef.current;
      const change = entityChange<T>(event);
      const id = change.id;
      if (id === undefined || !['created', 'updated', 'deleted'].includes(change.action)) return;
      const version = change.version;
      const seen = versions.current.get(id);
      if (version !== undefined && seen !== undefined && version <= seen) return; // older or duplicate
      const own = client.isOwnChange(event, o.ownBy ?? 'actor', o.currentUser);
      // A fetch under way may have read the list before this change (and would
      // replace a patch made now): refetch once it ends.
      refetchAfterFetch(o.queryKey);
      let applied = false;
      // Invalidated (e.g. after a failed recovery while no component showed the
      // list): leave it to the refetch; a patch would clear the invalidation.
      const invalidated = queryClient.getQueryState(o.queryKey)?.isInvalidated === true;
      if (!invalidated) queryClient.setQueryData<T[]>(o.queryKey, (old) => {
        if (!old) return old; // not loaded yet: the fetch brings it
        const index = old.findIndex((item) => item.id === id);
        const current = index >= 0 ? old[index] : undefined;
        if (version !== undefined && current?.version !== undefined && version <= current.version) return old;
        applied = true;
        if (change.action === 'deleted') return index >= 0 ? old.filter((item) => item.id !== id) : old;
        const item = o.toItem ? o.toItem(event) : defaultItem<T>(event);
        if (index >= 0) return old.map((existing, i) => (i === index ? item : existing));
        return o.insert === 'end' ? [...old, item] : [item, ...old];
      });
      if (version !== undefined) versions.current.set(id, version);
      if (!applied) return;
      change.data = o.toItem ? o.toItem(event) : defaultItem<T>(event);
      o.onChange?.(change, { own });
      if (change.action === 'created') o.onArrive?.(change.data, { own, change });
    },
    {
      onSubscribed: (info) => {
        if (info.recovered === false) void queryClient.invalidateQueries({ queryKey: optionsRef.current.queryKey });
      },
    },
  );
}
