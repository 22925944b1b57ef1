/** Reconnect delays: exponential backoff with full jitter. */
export interface BackoffOptions {
  /** Smallest delay, ms (default 1000). */
  minDelay: number;
  /** Largest delay, ms (default 30000). */
  maxDelay: number;
}

/**
 * The delay before reconnect attempt `attempt` (0-based):
 * `min(max, min + random(0, min(max, min·2^attempt)))`, so it always lies in
 * `[minDelay, backoffUpperBound(attempt)]` and tabs spread out after a restart.
 */
export function backoffDelay(attempt: number, options: BackoffOptions, random: () => number = Math.random): number {
  const { minDelay, maxDelay } = options;
  const window = Math.min(maxDelay, minDelay * 2 ** Math.min(attempt, 30));
  return Math.min(maxDelay, minDelay + random() * window);
}

/** The largest delay [`backoffDelay`] can return for `attempt`. */
export function backoffUpperBound(attempt: number, options: BackoffOptions): number {
  const { minDelay, maxDelay } = options;
  return Math.min(maxDelay, minDelay + Math.min(maxDelay, minDelay * 2 ** Math.min(attempt, 30)));
}
