import type { ErrorCode } from './protocol.js';

/** Codes the SDK adds to the server's error codes. */
export type ClientErrorCode =
  | 'timeout'
  | 'connection_lost'
  | 'queue_full'
  | 'disconnected'
  | 'not_connected'
  | 'transport_failed';

/** An error reply from the server, or a failure of the SDK itself. */
export class TidingsError extends Error {
  readonly code: ErrorCode | ClientErrorCode;

  constructor(code: ErrorCode | ClientErrorCode, message: string) {
    super(message);
    this.name = 'TidingsError';
    this.code = code;
  }
}
