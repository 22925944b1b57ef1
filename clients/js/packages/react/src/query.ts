/**
 * TanStack Query bridge (`@tidings/react/query`): maps event names to query
 * keys to invalidate, or to `setQueryData` updates. Needs `@tanstack/react-query` ≥ 5.
 */
import { useEffect, useRef } from 'react';
import { useQueryClient, type QueryClient, type QueryKey } from '@tanstack/react-query';
import type { EventEnvelope, EventMap, TypedEvent } from '@tidings/client';
import { useTidings } from './context.js';

export interface QueryBridgeRule<M extends object = EventMap> {
  /** Channel to subscribe to. */
  channel: string;
  /** Event names this rule handles: exact names, `prefix.*`, or `*` (default). */
  events?: string | string[];
  /** Query keys to invalidate (prefix match, as `invalidateQueries`). */
  invalidate?: QueryKey[] | ((event: TypedEvent<M>) => QueryKey[]);
  /** Writes the event into cached data instead of refetching. */
  update?: {
    queryKey: QueryKey | ((event: TypedEvent<M>) => QueryKey);
    updater: (old: unknown, event: TypedEvent<M>) => unknown;
  }[];
}

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
  const typed = event as TypedEvent<M>;
  for (const update of rule.update ?? []) {
    const key = typeof update.queryKey === 'function' ? update.queryKey(typed) : update.queryKey;
    queryClient.setQueryData(key, (old: unknown) => update.updater(old, typed));
  }
  const keys = typeof rule.invalidate === 'function' ? rule.invalidate(typed) : rule.invalidate;
  for (const queryKey of keys ?? []) void queryClient.invalidateQueries({ queryKey });
}

/**
 * Subscribes to each rule's channel while mounted and keeps the query cache in
 * step. After a reconnect that could not recover the missed events
 * (`recovered: false`), every key of the channel's rules is invalidated so the
 * data is refetched. `rules` may change between renders.
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
        for (const rule of rulesRef.current) {
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
