import type { ReactNode } from 'react';
import { useTidings } from './context.js';
import { useConnectionState } from './hooks.js';

export type ConnectionStatusKind = 'connected' | 'connecting' | 'reconnecting' | 'offline' | 'failed';

export interface ConnectionStatusProps {
  /** Extra class on the root element. */
  className?: string;
  /** Texts per status. */
  labels?: Partial<Record<ConnectionStatusKind, string>>;
  retryLabel?: string;
  /** Render nothing while connected. */
  hideWhenConnected?: boolean;
  /** Append the attempt number while reconnecting: "Reconnecting… (attempt 2)", counted from 1. */
  showAttempt?: boolean;
}

const LABELS: Record<ConnectionStatusKind, string> = {
  connected: 'Live',
  connecting: 'Connecting…',
  reconnecting: 'Reconnecting…',
  offline: 'Offline',
  failed: 'Disconnected',
};

/**
 * A small unstyled indicator: `<div class="tidings-status tidings-status--{kind}">`
 * with a `tidings-status__label` and, when failed or offline, a
 * `tidings-status__retry` button. `data-status` carries the kind too.
 */
export function ConnectionStatus(props: ConnectionStatusProps): ReactNode {
  const client = useTidings();
  const info = useConnectionState();
  let kind: ConnectionStatusKind;
  // Offline first: the browser knows before the socket does.
  if (!info.online && info.state !== 'disconnected') kind = 'offline';
  else if (info.state === 'connected') kind = 'connected';
  else if (info.state === 'failed' || info.state === 'disconnected') kind = 'failed';
  else kind = info.state;
  if (kind === 'connected' && props.hideWhenConnected) return null;
  // `attempt` counts the attempts made; the one under way (or next) is attempt + 1.
  const label =
    (props.labels?.[kind] ?? LABELS[kind]) +
    (props.showAttempt && kind === 'reconnecting' ? ` (attempt ${info.attempt + 1})` : '');
  const className = ['tidings-status', `tidings-status--${kind}`, props.className].filter(Boolean).join(' ');
  return (
    <div className={className} data-status={kind} data-attempt={info.attempt + 1} role="status" aria-live="polite">
      <span className="tidings-status__label">{label}</span>
      {kind === 'failed' || kind === 'offline' ? (
        <button type="button" className="tidings-status__retry" onClick={() => client.retry()}>
          {props.retryLabel ?? 'Retry'}
        </button>
      ) : null}
    </div>
  );
}
