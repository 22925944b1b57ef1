/** Errors of the server-API client. Every one is a `TidingsError`. */

/** The error codes of the server API (`{"error":{"code","message"}}`). */
export type ApiErrorCode =
  | 'bad_request'
  | 'unauthorized'
  | 'permission_denied'
  | 'unknown_channel'
  | 'limit_exceeded'
  | 'not_available'
  | 'internal'
  | 'engine_unavailable';

/** Base class: `code` says what failed, `attempts` how many requests were made. */
export class TidingsError extends Error {
  override name = 'TidingsError';
  constructor(
    message: string,
    /**
     * An API error code, `unexpected_response`, `connection_failed`,
     * `timeout`, or `invalid_request` (refused before sending: the data
     * cannot be JSON; `attempts` is 0).
     */
    readonly code: ApiErrorCode | 'unexpected_response' | 'connection_failed' | 'timeout' | 'invalid_request',
    /** Requests made, retries included. */
    readonly attempts: number,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** The server answered with an error status. */
export class TidingsApiError extends TidingsError {
  override name = 'TidingsApiError';
  constructor(
    message: string,
    code: ApiErrorCode | 'unexpected_response',
    /** The HTTP status (400, 401, 404, 413, 503…). */
    readonly status: number,
    attempts: number,
  ) {
    super(message, code, attempts);
  }

  /** Whether a retry can succeed (5xx, including 503 `engine_unavailable`). */
  get retryable(): boolean {
    return this.status >= 500;
  }
}

/** The server could not be reached (refused, reset, DNS). */
export class TidingsConnectionError extends TidingsError {
  override name = 'TidingsConnectionError';
  constructor(message: string, attempts: number, cause: unknown) {
    super(message, 'connection_failed', attempts, { cause });
  }
}

/** No complete answer within `timeoutMs`. */
export class TidingsTimeoutError extends TidingsError {
  override name = 'TidingsTimeoutError';
  constructor(message: string, attempts: number) {
    super(message, 'timeout', attempts);
  }
}
