export interface Session {
  user: string;
  workspace: string;
  token: string;
  tidingsUrl: string;
}

export interface Item {
  id: string;
  title: string;
  version: number;
  updatedBy: string;
}

/** Calls the demo backend as `user` (the demo's stand-in for a login cookie). */
export async function api<T>(user: string, method: string, path: string, body?: unknown): Promise<T> {
  const res = await fetch(path, {
    method,
    headers: { 'X-User': user, ...(body === undefined ? {} : { 'Content-Type': 'application/json' }) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!res.ok) throw new Error(`${method} ${path}: HTTP ${res.status}`);
  return (await res.json()) as T;
}
