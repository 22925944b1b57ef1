/** Reading (never verifying) the claims of a JWT the app handed us. */

function payload(token: string): Record<string, unknown> | undefined {
  const part = token.split('.')[1];
  if (!part) return undefined;
  try {
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const json: unknown = JSON.parse(atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4)));
    return json && typeof json === 'object' ? (json as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

/** Reads `exp` (ms) from a JWT without verifying it; undefined when unreadable. */
export function tokenExpiry(token: string): number | undefined {
  const exp = payload(token)?.exp;
  return typeof exp === 'number' ? exp * 1000 : undefined;
}

/** Reads `sub` from a JWT without verifying it; undefined when unreadable. */
export function tokenSubject(token: string): string | undefined {
  const sub = payload(token)?.sub;
  return typeof sub === 'string' ? sub : undefined;
}
