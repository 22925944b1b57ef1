/** Minting HS256 client tokens with the server's `jwt.secret` (node:crypto, no JWT library). */
import { createHmac } from 'node:crypto';

export interface MintTokenOptions {
  /** The user id (`sub`). */
  sub: string;
  /** Workspaces the user may see (`workspaces` claim). */
  workspaces?: string[];
  /** Roles (`roles` claim), matched by `audience.roles`. */
  roles?: string[];
  /** Lifetime in seconds (default 3600). */
  ttl?: number;
  /** The server's HMAC secret (`TIDINGS_JWT_SECRET`). */
  secret: string;
  /** Shown to others in presence (`info` claim). */
  info?: unknown;
  /** More claims (`iss`, `aud`…), merged last. */
  claims?: Record<string, unknown>;
}

const b64url = (value: string | Buffer): string => Buffer.from(value).toString('base64url');

/** An HS256 JWT for a browser or a test client of Tidings. */
export function mintToken(options: MintTokenOptions): string {
  const { sub, workspaces = [], roles = [], ttl = 3600, secret, info, claims = {} } = options;
  if (!sub) throw new TypeError('mintToken: `sub` is required');
  if (!secret) throw new TypeError('mintToken: `secret` is required');
  if (!Number.isFinite(ttl) || ttl <= 0) throw new TypeError('mintToken: `ttl` must be a positive number of seconds');
  const now = Math.floor(Date.now() / 1000);
  const payload: Record<string, unknown> = { sub, iat: now, exp: now + Math.ceil(ttl), workspaces, roles };
  if (info !== undefined) payload.info = info;
  Object.assign(payload, claims);
  const signingInput = `${b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))}.${b64url(JSON.stringify(payload))}`;
  const signature = createHmac('sha256', secret).update(signingInput).digest('base64url');
  return `${signingInput}.${signature}`;
}
