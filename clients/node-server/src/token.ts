/** Minting HS256 client tokens with the server's `jwt.secret` (node:crypto, no JWT library). */
import { createHmac } from 'node:crypto';

/** A user, workspace or role id: a string, or an integer sent as its decimal string. */
export type TokenId = string | number | bigint;

export interface MintTokenOptions {
  /** The user id (`sub`); an integer is sent as its decimal string. */
  sub: TokenId;
  /** Workspaces the user may see (`workspaces` claim): a list, or one id. */
  workspaces?: TokenId | readonly TokenId[];
  /** Roles (`roles` claim), matched by `audience.roles`: a list, or one id. */
  roles?: TokenId | readonly TokenId[];
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

/**
 * `value` as the string the server matches: a safe integer or a bigint becomes
 * its decimal string; anything else that is not a string is refused.
 */
function id(name: string, value: unknown): string {
  if (typeof value === 'string') return value;
  if (typeof value === 'bigint' || (typeof value === 'number' && Number.isSafeInteger(value))) return String(value);
  throw new TypeError(`mintToken: \`${name}\` takes strings or integers, not ${typeof value} (${String(value)})`);
}

/** One id, or a list of ids, as the claim's list of strings. */
function ids(name: string, values: unknown): string[] {
  return Array.isArray(values) ? values.map((value: unknown) => id(name, value)) : [id(name, values)];
}

/** An HS256 JWT for a browser or a test client of Tidings. */
export function mintToken(options: MintTokenOptions): string {
  const { sub, workspaces = [], roles = [], ttl = 3600, secret, info, claims = {} } = options;
  if (sub === undefined || sub === null || sub === '') throw new TypeError('mintToken: `sub` is required');
  const subject = id('sub', sub);
  if (!secret) throw new TypeError('mintToken: `secret` is required');
  if (!Number.isFinite(ttl) || ttl <= 0) throw new TypeError('mintToken: `ttl` must be a positive number of seconds');
  const now = Math.floor(Date.now() / 1000);
  const payload: Record<string, unknown> = {
    sub: subject,
    iat: now,
    exp: now + Math.ceil(ttl),
    workspaces: ids('workspaces', workspaces),
    roles: ids('roles', roles),
  };
  if (info !== undefined) payload.info = info;
  Object.assign(payload, claims);
  const signingInput = `${b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))}.${b64url(JSON.stringify(payload))}`;
  const signature = createHmac('sha256', secret).update(signingInput).digest('base64url');
  return `${signingInput}.${signature}`;
}
