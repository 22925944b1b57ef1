import { useEffect, useRef, useState, type ReactNode } from 'react';
import type { EntityChange } from './hooks.js';
import type { RemoteChangeNotice as Notice } from './entity.js';

function classes(...names: (string | false | undefined)[]): string {
  return names.filter(Boolean).join(' ');
}

function describe(change: EntityChange<unknown>, you?: string): string {
  const who = change.actor ?? you ?? 'another user';
  const what = change.action === 'deleted' ? 'Deleted' : change.action === 'created' ? 'Created' : 'Updated';
  return `${what} by ${who}${change.version !== undefined ? ` (version ${change.version})` : ''}`;
}

export interface RemoteChangeNoticeProps<D> {
  /** From `useRemoteChangeNotice`. */
  notice: Notice<D>;
  className?: string;
  /** The text (default "Updated by {actor} (version {n})"). */
  message?: (change: EntityChange<D>) => ReactNode;
  refreshLabel?: string;
  dismissLabel?: string;
}

/**
 * "Updated by another user" with Refresh, Dismiss and the seconds left:
 * `role="status"` in a polite live region; never takes the focus.
 */
export function RemoteChangeNotice<D>(props: RemoteChangeNoticeProps<D>): ReactNode {
  const { notice } = props;
  const change = notice.pending;
  return (
    <div className={classes('tidings-notice', props.className)} role="status" aria-live="polite" aria-atomic="true">
      {change ? (
        <>
          <span className="tidings-notice__message">{props.message ? props.message(change) : describe(change)}</span>
          <button type="button" className="tidings-notice__refresh" onClick={notice.refresh}>
            {props.refreshLabel ?? 'Refresh'}
          </button>
          <button type="button" className="tidings-notice__dismiss" onClick={notice.dismiss}>
            {props.dismissLabel ?? 'Dismiss'}
          </button>
          {notice.secondsLeft !== null ? (
            <span className="tidings-notice__countdown" aria-hidden="true">
              {notice.secondsLeft}s
            </span>
          ) : null}
        </>
      ) : null}
    </div>
  );
}

export interface EditConflictBannerProps<D> {
  /** The change that conflicts (e.g. `useConcurrentEdit().lastChange` while `changedByOther`); nothing renders without it. */
  change: EntityChange<D> | null | undefined;
  /** Reload the entity into the form (discarding the edits). */
  onRefresh: () => void;
  /** Keep the edits (a save overwrites the other change). */
  onContinue: () => void;
  className?: string;
  message?: (change: EntityChange<D>) => ReactNode;
  refreshLabel?: string;
  continueLabel?: string;
}

/** The edit-conflict warning with Refresh and Continue editing: `role="alert"`, no focus change. */
export function EditConflictBanner<D>(props: EditConflictBannerProps<D>): ReactNode {
  const change = props.change;
  if (!change) return null;
  const text = props.message
    ? props.message(change)
    : `${describe(change)} ${change.action === 'deleted' ? 'while you were editing.' : 'while you were editing. Saving will overwrite it.'}`;
  return (
    <div className={classes('tidings-conflict', props.className)} role="alert" data-seen={change.seen}>
      <span className="tidings-conflict__message">{text}</span>
      <button type="button" className="tidings-conflict__refresh" onClick={props.onRefresh}>
        {props.refreshLabel ?? 'Refresh'}
      </button>
      <button type="button" className="tidings-conflict__continue" onClick={props.onContinue}>
        {props.continueLabel ?? 'Continue editing'}
      </button>
    </div>
  );
}

export interface DataUpdatedHintProps {
  /** Changes whenever the data was updated live (e.g. a counter or `dataUpdatedAt`); the hint shows for `durationMs`. */
  signal: unknown;
  durationMs?: number;
  className?: string;
  label?: string;
}

/** A subtle "Data updated" hint shown for a few seconds after each live update (polite live region). */
export function DataUpdatedHint(props: DataUpdatedHintProps): ReactNode {
  const [visible, setVisible] = useState(false);
  const previous = useRef(props.signal);
  const duration = props.durationMs ?? 3000;
  useEffect(() => {
    // Not on mount (the first data is not an update), only when the signal changes.
    if (Object.is(previous.current, props.signal)) return undefined;
    previous.current = props.signal;
    setVisible(true);
    const timer = setTimeout(() => setVisible(false), duration);
    return () => clearTimeout(timer);
  }, [props.signal, duration]);
  return (
    <span className={classes('tidings-updated', visible && 'tidings-updated--visible', props.className)} role="status" aria-live="polite">
      {visible ? (props.label ?? 'Data updated') : null}
    </span>
  );
}
