/**
 * Entity-level hooks for detail pages and badges: "changed by someone else",
 * "deleted", the remote-change notice with auto-dismiss, unread counts.
 */
import { useCallback, useEffect, useRef, useState } from 'react';
import type { EventEnvelope } from '@tidings/client';
import { useTidings } from './context.js';
import { entityChange, useConnectionState, useEntitySubscription, useSubscription, type EntityChange, type OwnChangeOptions } from './hooks.js';

export interface LiveEntityOptions<D> extends OwnChangeOptions {
  enabled?: boolean;
  /**
   * The entity was deleted, by anyone, this tab included (`change.actor` tells
   * who): it is gone either way, e.g. navigate to the list.
   */
  onDeleted?: (change: EntityChange<D>) => void;
  /** Every change by another user (after `changedByOther` is set). */
  onChange?: (change: EntityChange<D>) => void;
  /** Every own change (by `ownBy`) but a deletion, e.g. to refetch quietly. */
  onOwnChange?: (change: EntityChange<D>) => void;
  /** A reconnect could not recover missed events: refetch here. */
  onResync?: () => void;
}

export interface LiveEntity<D> {
  /** The latest change by another user not yet acknowledged (`acknowledge()`). */
  change: EntityChange<D> | null;
  /** The entity was deleted, by anyone (sticky until the scope changes). */
  deleted: EntityChange<D> | null;
  /** Forget `change` (after a refresh or a dismiss). */
  acknowledge(): void;
}

/**
 * Follows one entity (`workspace:{w}:{type}:{id}`) for a detail page: changes
 * by others land in `change` (with actor and version), a deletion, own or
 * another user's, in `deleted` and `onDeleted`. Other own changes (by actor,
 * client or both) go to `onOwnChange`, not reported as someone else's.
 */
export function useLiveEntity<D = unknown>(
  scope: { workspace: string; type: string; id: string } | null,
  options: LiveEntityOptions<D> = {},
): LiveEntity<D> {
  const client = useTidings();
  const optionsRef = useRef(options);
  optionsRef.current = options;
  const [change, setChange] = useState<EntityChange<D> | null>(null);
  const [deleted, setDeleted] = useState<EntityChange<D> | null>(null);
  const key = scope ? `${scope.workspace}:${scope.type}:${scope.id}` : '';
  useEffect(() => {
    setChange(null);
    setDeleted(null);
  }, [key]);
  useEntitySubscription(
    scope,
    (event) => {
      const o = optionsRef.current;
      const c = entityChange<D>(event);
      // Gone is gone, whoever deleted it: another tab of this user that
      // stays on the page would show an entity that no longer exists.
      if (c.action === 'deleted') {
        setDeleted(c);
        o.onDeleted?.(c);
        return;
      }
      if (client.isOwnChange(event, o.ownBy ?? 'actor', o.currentUser)) {
        o.onOwnChange?.(c);
        return;
      }
      setChange((prev) => (prev && prev.version !== undefined && c.version !== undefined && prev.version > c.version ? prev : c));
      o.onChange?.(c);
    },
    {
      ...(options.enabled === undefined ? {} : { enabled: options.enabled }),
      onSubscribed: (info) => {
        if (info.recovered === false) optionsRef.current.onResync?.();
      },
    },
  );
  const acknowledge = useCallback(() => setChange(null), []);
  return { change, deleted, acknowledge };
}

export interface RemoteChangeNoticeOptions {
  /** ms until the notice goes by itself (default 10000; 0 keeps it). */
  autoDismissMs?: number;
  /** What Refresh does (e.g. `() => query.refetch()`). */
  onRefresh?: () => unknown;
  /** Called when the notice is dismissed (button or timeout). */
  onDismiss?: () => void;
}

export interface RemoteChangeNotice<D> {
  /** The change to show, or null. */
  pending: EntityChange<D> | null;
  /** Runs `onRefresh` and hides the notice. */
  refresh(): void;
  /** Hides the notice. */
  dismiss(): void;
  /** Whole seconds left before auto-dismiss (null when it does not auto-dismiss). */
  secondsLeft: number | null;
}

/**
 * The "Updated by another user" notice over a change (e.g. `useLiveEntity().change`):
 * `{pending, refresh, dismiss, secondsLeft}`, gone by itself after `autoDismissMs`.
 * Render it with `<RemoteChangeNotice>` or any toast library.
 */
export function useRemoteChangeNotice<D>(
  change: EntityChange<D> | null,
  options: RemoteChangeNoticeOptions = {},
): RemoteChangeNotice<D> {
  const optionsRef = useRef(options);
  optionsRef.current = options;
  const [hidden, setHidden] = useState<EntityChange<D> | null>(null);
  const pending = change && change !== hidden ? change : null;
  const timeout = options.autoDismissMs ?? 10_000;
  // When the shown change goes by itself; tied to that change so a new one starts afresh.
  const [deadline, setDeadline] = useState<{ change: EntityChange<D>; at: number } | null>(null);
  const [now, setNow] = useState(() => Date.now());
  const dismiss = useCallback(() => {
    setHidden(change);
    optionsRef.current.onDismiss?.();
  }, [change]);
  const refresh = useCallback(() => {
    setHidden(change);
    optionsRef.current.onRefresh?.();
  }, [change]);
  useEffect(() => {
    if (!pending || timeout <= 0) return undefined;
    const start = Date.now();
    setDeadline({ change: pending, at: start + timeout });
    setNow(start);
    const tick = setInterval(() => setNow(Date.now()), 1000);
    const timer = setTimeout(() => {
      setHidden(pending);
      optionsRef.current.onDismiss?.();
    }, timeout);
    return () => {
      clearInterval(tick);
      clearTimeout(timer);
    };
  }, [pending, timeout]);
  let secondsLeft: number | null = null;
  if (pending && timeout > 0) {
    secondsLeft =
      deadline && deadline.change === pending ? Math.max(0, Math.ceil((deadline.at - now) / 1000)) : Math.ceil(timeout / 1000);
  }
  return { pending, refresh, dismiss, secondsLeft };
}

export interface UnreadCountOptions {
  /** Channel to count on (default `user:{sub}`, the current user's channel). */
  channel?: string;
  /** Event name(s) to count (default `notification.new`). */
  events?: string | string[];
  /** Called for each counted event (e.g. play a sound, show a browser notification). */
  onEvent?: (event: EventEnvelope) => void;
}

export interface UnreadCount {
  count: number;
  /** The latest counted event. */
  last: EventEnvelope | null;
  /** Back to 0 (e.g. when the user opens the notifications). */
  reset(): void;
}

/** Counts `notification.new` events on the user's channel, for a badge. */
export function useUnreadCount(options: UnreadCountOptions = {}): UnreadCount {
  const user = useConnectionState().user;
  const channel = options.channel ?? (user ? `user:${user}` : null);
  const names = options.events ?? 'notification.new';
  const list = Array.isArray(names) ? names : [names];
  const listRef = useRef(list);
  listRef.current = list;
  const onEventRef = useRef(options.onEvent);
  onEventRef.current = options.onEvent;
  const [state, setState] = useState<{ count: number; last: EventEnvelope | null }>({ count: 0, last: null });
  useSubscription(channel, (event) => {
    if (!listRef.current.includes(event.event)) return;
    setState((prev) => ({ count: prev.count + 1, last: event }));
    onEventRef.current?.(event);
  });
  const reset = useCallback(() => setState((prev) => ({ count: 0, last: prev.last })), []);
  return { count: state.count, last: state.last, reset };
}
