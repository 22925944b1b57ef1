/**
 * "Was this change mine?", decided on the client from the event itself, so that
 * it holds over every transport and in every tab (unlike `exclude_client`,
 * which names one server connection).
 */
import type { EventEnvelope } from './protocol.js';

/**
 * How a change is recognised as the current user's own:
 * - `actor`: `meta.actor` equals the user (the token's `sub`): every tab and
 *   device of that user counts as "me";
 * - `client`: `meta.correlation_id` was made by this client's
 *   `correlationId()`: only the tab that made the change counts as "me";
 * - `both`: either.
 */
export type OwnChangeRule = 'actor' | 'client' | 'both';

export interface OwnChangeContext {
  /** The current user (the token's `sub`); `null` when not known yet. */
  user: string | null;
  /** This client's `consumerId` (the prefix of its correlation ids). */
  consumerId: string;
}

/** The prefix every correlation id of a client starts with. */
export function correlationPrefix(consumerId: string): string {
  return `${consumerId}.`;
}

/** Whether `event` is a change made by the current user (`actor`) or this client (`client`). */
export function isOwnChange(event: Pick<EventEnvelope, 'meta'>, context: OwnChangeContext, by: OwnChangeRule = 'actor'): boolean {
  const meta = event.meta;
  if (!meta) return false;
  const byActor = meta.actor !== undefined && context.user !== null && meta.actor === context.user;
  const byClient =
    meta.correlation_id !== undefined && meta.correlation_id.startsWith(correlationPrefix(context.consumerId));
  if (by === 'actor') return byActor;
  if (by === 'client') return byClient;
  return byActor || byClient;
}
