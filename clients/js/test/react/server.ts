// Typed access to the plain-JS server helper for the React tests.
// @ts-expect-error plain JS helper
import { startServer as startUntyped, waitFor as waitUntyped } from '../helpers/server.mjs';

/** A running `tidings` process (see ../helpers/server.mjs). */
export interface Server {
  url: string;
  port: number;
  secret: string;
  apiKey: string;
  token(claims?: object): string;
  publish(channel: string, event: string, data: unknown, extra?: object): Promise<{ offset: number }>;
  entityEvent(body: object): Promise<unknown>;
  /** Open connections (the server's `tidings_connections` metric). */
  connections(): Promise<number>;
  stop(): Promise<void>;
}

export const startServer = startUntyped as (options?: { port?: number; secret?: string; apiKey?: string; env?: Record<string, string> }) => Promise<Server>;
export const waitFor = waitUntyped as (predicate: () => unknown, options?: { timeout?: number; message?: string }) => Promise<unknown>;
