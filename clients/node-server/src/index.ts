export { Tidings, backoffDelay } from './client.js';
export type { TidingsOptions, CallOptions } from './client.js';
export { TidingsError, TidingsApiError, TidingsConnectionError, TidingsTimeoutError } from './errors.js';
export type { ApiErrorCode } from './errors.js';
export { mintToken } from './token.js';
export type { MintTokenOptions, TokenId } from './token.js';
export type * from './types.js';
