/**
 * What the HTTP transports (SSE and polling) share: `POST /request` for the
 * requests a WebSocket client would send in band, error bodies, channel names.
 */
import { tokenExpiry, tokenSubject } from '../jwt.js';
import type { ClientMessage, ErrorCode, RequestId, ServerMessage } from '../protocol.js';
import type { TransportContext } from './types.js';

/** A channel name the server accepts (docs/protocol.md §1). */
const CHANNEL_NAME = /^[A-Za-z0-9_.:@/=-]{1,255}$/;

export function validChannel(channel: string): boolean {
  return CHANNEL_NAME.test(channel);
}

const ERROR_CODES: readonly ErrorCode[] = [
  'bad_request',
  'unauthorized',
  'permission_denied',
  'unknown_channel',
  'already_subscribed',
  'not_subscribed',
  'limit_exceeded',
  'rate_limited',
  'token_expired',
  'not_available',
  'internal',
  'engine_unavailable',
];

function errorCode(value: unknown, fallback: ErrorCode): ErrorCode {
  return ERROR_CODES.find((code) => code === value) ?? fallback;
}

/** The code and message of an error answer: `{"error":{code,message}}` or `{"type":"error",code,message}`. */
export async function readError(response: Response, fallback: ErrorCode): Promise<{ code: ErrorCode; message: string }> {
  let body: unknown;
  try {
    body = await response.json();
  } catch {
    return { code: fallback, message: `HTTP ${response.status}` };
  }
  const error =
    body && typeof body === 'object' && 'error' in body && body.error && typeof body.error === 'object'
      ? (body.error as { code?: unknown; message?: unknown })
      : (body as { code?: unknown; message?: unknown } | null);
  return {
    code: errorCode(error?.code, fallback),
    message: typeof error?.message === 'string' ? error.message : `HTTP ${response.status}`,
  };
}

export function authHeaders(token: string): Record<string, string> {
  return { Authorization: `Bearer ${token}` };
}

/** The transport-independent way an HTTP transport answers a request. */
export interface RequestSink {
  message(message: ServerMessage): void;
  /**
   * The request got no answer. `unsent`: the server could not be reached at
   * all (connection refused, name not resolved), so nothing was applied.
   */
  fail(id: RequestId, message: string, unsent: boolean): void;
}

/** Error codes of a connection that was never made: the request did not leave. */
const NOT_SENT = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH']);

/**
 * Whether a failed fetch certainly did not reach the server. Node's fetch says
 * so in the error's `cause` chain; a browser's `TypeError` does not tell.
 */
export function notSent(err: unknown): boolean {
  let current: unknown = err;
  for (let depth = 0; depth < 4 && current !== null && typeof current === 'object'; depth++) {
    const code = (current as { code?: unknown }).code;
    if (typeof code === 'string' && NOT_SENT.has(code)) return true;
    current = (current as { cause?: unknown }).cause;
  }
  return false;
}

function errorReply(id: RequestId | undefined, code: ErrorCode, message: string): ServerMessage {
  return { type: 'error', ...(id !== undefined ? { id } : {}), code, message };
}

/**
 * `POST /request`s one at a time, in call order: over WebSocket the server
 * takes a connection's requests in order, and concurrent fetches would let a
 * later publish be placed first. A request is not sent once it no longer
 * waits for its reply (timed out, or the transport closed: `isClosed`), and
 * its fetch is given up when that happens while it is under way (checked
 * every second), so one stalled request holds the ones behind it no longer
 * than its caller waits.
 */
export function requestsInOrder(
  context: TransportContext,
  sink: RequestSink,
  isClosed: () => boolean,
): (token: () => string, message: ClientMessage & { id?: RequestId }) => void {
  let last: Promise<unknown> = Promise.resolve();
  /** Requests not yet under way, in order. */
  const waiting = new Set<RequestId>();
  // When the server cannot be reached, the requests behind the failed one were
  // not sent either: they are reported with it.
  const ordered: RequestSink = {
    message: (reply) => sink.message(reply),
    fail: (id, text, unsent) => {
      sink.fail(id, text, unsent);
      if (!unsent) return;
      const behind = [...waiting];
      waiting.clear();
      for (const other of behind) sink.fail(other, text, true);
    },
  };
  return (token, message) => {
    const id = message.id;
    if (id !== undefined) waiting.add(id);
    const wanted = (): boolean => !isClosed() && (id === undefined || context.handlers.pending(id));
    const send = async (): Promise<void> => {
      if (id !== undefined && !waiting.delete(id)) return;
      if (!wanted()) return;
      const abort = new AbortController();
      const watch = setInterval(() => {
        if (!wanted()) abort.abort();
      }, 1000);
      try {
        await postRequest(context, token(), message, ordered, undefined, abort.signal);
      } finally {
        clearInterval(watch);
      }
    };
    last = last.then(send).catch(() => undefined);
  };
}

/**
 * Sends `message` to `POST /request` and hands the reply (or the server's error
 * message) to `sink`; a request that never got an answer fails with
 * `connection_lost`, since it may or may not have been applied.
 */
export async function postRequest(
  context: TransportContext,
  token: string,
  message: ClientMessage & { id?: RequestId },
  sink: RequestSink,
  streamClient?: string,
  signal?: AbortSignal,
): Promise<ServerMessage | undefined> {
  const id = message.id;
  const doFetch = context.fetch;
  if (!doFetch) {
    sink.message(errorReply(id, 'not_available', 'no fetch implementation for POST /request'));
    return undefined;
  }
  const headers: Record<string, string> = { ...authHeaders(token), 'Content-Type': 'application/json' };
  if (streamClient) headers['X-Tidings-Client'] = streamClient;
  let response: Response;
  let body: unknown;
  try {
    response = await doFetch(`${context.httpUrl}/request`, {
      method: 'POST',
      headers,
      body: JSON.stringify(message),
      cache: 'no-store',
      ...(signal ? { signal } : {}),
    });
    body = await response.json().catch(() => undefined);
  } catch (err) {
    // Given up because nobody waits for it any more (timed out, transport closed).
    if (signal?.aborted) return undefined;
    if (id !== undefined) sink.fail(id, `POST /request failed: ${String(err)}`, notSent(err));
    return undefined;
  }
  let reply: ServerMessage;
  const error =
    body && typeof body === 'object' && 'error' in body && body.error && typeof body.error === 'object'
      ? (body.error as { code?: unknown; message?: unknown })
      : undefined;
  if (body && typeof body === 'object' && typeof (body as { type?: unknown }).type === 'string') {
    reply = body as ServerMessage;
    // An error answered before the body was read (401 for the token, 413 for
    // the size) has no `id`: it is the answer to this request all the same.
    if (reply.type === 'error' && reply.id === undefined && id !== undefined) reply = { ...reply, id };
  } else if (error && !response.ok) {
    reply = errorReply(
      id,
      errorCode(error.code, 'internal'),
      typeof error.message === 'string' ? error.message : `HTTP ${response.status}`,
    );
  } else if (response.status === 404 || response.status === 405) {
    reply = errorReply(id, 'not_available', `this server does not take POST /request (HTTP ${response.status})`);
  } else {
    reply = errorReply(id, 'internal', `unexpected answer to POST /request: HTTP ${response.status}`);
  }
  sink.message(reply);
  return reply;
}

/**
 * `refresh` where no server-side session holds the token (polling, or SSE with
 * no stream open): the new token is checked by the server (`POST /request`
 * `ping` with it) and must name the same user; the transport then uses it.
 */
export async function verifyRefresh(
  context: TransportContext,
  current: string,
  next: string,
  id: RequestId | undefined,
  sink: RequestSink,
): Promise<boolean> {
  const subject = tokenSubject(next);
  if (subject === undefined || subject !== tokenSubject(current)) {
    sink.message(errorReply(id, 'unauthorized', 'the new token is for another user'));
    return false;
  }
  let verdict: ServerMessage | undefined;
  const probe: RequestSink = {
    message: (reply) => {
      verdict = reply;
    },
    fail: (_id, text, unsent) => {
      if (id !== undefined) sink.fail(id, text, unsent);
    },
  };
  await postRequest(context, next, { type: 'ping', id: 'refresh' }, probe);
  if (!verdict) return false;
  if (verdict.type === 'error') {
    sink.message({ ...verdict, ...(id !== undefined ? { id } : {}) });
    return false;
  }
  const expiry = tokenExpiry(next);
  sink.message({
    type: 'refreshed',
    ...(id !== undefined ? { id } : {}),
    ...(expiry !== undefined ? { expires_at: new Date(expiry).toISOString() } : {}),
  });
  return true;
}
