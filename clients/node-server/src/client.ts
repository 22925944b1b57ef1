/**
 * The server-API client: one method per `/api/*` route, retries with jittered
 * backoff on connection errors, timeouts and 5xx (never on 4xx), and one
 * idempotency key per logical publish, reused by each of its retries.
 */
import { randomUUID } from 'node:crypto';

import { TidingsApiError, TidingsConnectionError, TidingsError, TidingsTimeoutError } from './errors.js';
import type { ApiErrorCode } from './errors.js';
import type {
  BroadcastInput,
  DisconnectInput,
  EntityEventInput,
  EntityEventResult,
  HistoryInput,
  HistoryResult,
  InfoResult,
  PresenceResult,
  PublishCommon,
  PublishInput,
  Published,
  UnsubscribeInput,
} from './types.js';

export interface TidingsOptions {
  /** The server's base URL, e.g. `http://tidings:8000`. */
  url: string;
  /** The server's `api_key`. */
  apiKey: string;
  /** Per-attempt timeout in ms, until the whole answer has arrived (default 10 000). */
  timeoutMs?: number;
  /** Retries after the first attempt (default 3). 0 disables retrying. */
  retries?: number;
  /** Backoff before the first retry, in ms (default 200); doubles per retry. */
  minBackoffMs?: number;
  /** Longest backoff in ms (default 5 000). */
  maxBackoffMs?: number;
  /** Sends the key as `X-API-Key` instead of `Authorization: Bearer` (default false). */
  apiKeyHeader?: boolean;
}

/** Per-call options. */
export interface CallOptions {
  /** Cancels the call (no further retries). */
  signal?: AbortSignal;
  /** Overrides the client's `timeoutMs` for this call. */
  timeoutMs?: number;
  /** Overrides the client's `retries` for this call. */
  retries?: number;
}

/**
 * Full-jitter backoff: a random delay in `[0, min(max, min·2^retry))`, so that
 * many publishers retrying after the same outage spread out.
 */
export function backoffDelay(retry: number, minMs: number, maxMs: number): number {
  const ceiling = Math.min(maxMs, minMs * 2 ** retry);
  return Math.random() * ceiling;
}

const sleep = (ms: number, signal?: AbortSignal): Promise<void> =>
  new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });

type Query = Record<string, string | number | undefined>;

/** One failed attempt: whether to retry, and the error to throw if not. */
interface Failure {
  retry: boolean;
  error: (attempts: number) => TidingsError;
}

const API_CODES: ReadonlySet<string> = new Set<ApiErrorCode>([
  'bad_request',
  'unauthorized',
  'permission_denied',
  'unknown_channel',
  'limit_exceeded',
  'not_available',
  'internal',
  'engine_unavailable',
]);

/**
 * Publishes to a Tidings server and manages its connections over the server
 * API. Every method returns a promise and never throws synchronously.
 */
export class Tidings {
  readonly #base: string;
  readonly #headers: Record<string, string>;
  readonly #timeoutMs: number;
  readonly #retries: number;
  readonly #minBackoffMs: number;
  readonly #maxBackoffMs: number;

  constructor(options: TidingsOptions) {
    if (!options.url) throw new TypeError('Tidings: `url` is required');
    if (!URL.canParse(options.url) || !/^https?:$/.test(new URL(options.url).protocol)) {
      // A configuration error, not a connection failure to retry.
      throw new TypeError(`Tidings: \`url\` must be an http:// or https:// URL, not ${JSON.stringify(options.url)}`);
    }
    // A key read from a file or an environment variable often ends in a newline.
    const apiKey = options.apiKey?.trim();
    if (!apiKey) throw new TypeError('Tidings: `apiKey` is required');
    this.#base = options.url.replace(/\/+$/, '');
    this.#headers = options.apiKeyHeader ? { 'X-API-Key': apiKey } : { Authorization: `Bearer ${apiKey}` };
    this.#timeoutMs = options.timeoutMs ?? 10_000;
    this.#retries = options.retries ?? 3;
    this.#minBackoffMs = options.minBackoffMs ?? 200;
    this.#maxBackoffMs = options.maxBackoffMs ?? 5_000;
  }

  /** Publishes one event to one channel. */
  async publish(input: PublishInput, options?: CallOptions): Promise<Published> {
    return this.#post('/api/publish', { channel: input.channel, ...publishFields(input) }, options, isPublished);
  }

  /** Publishes one event to several channels (one result per channel, in order). */
  async broadcast(input: BroadcastInput, options?: CallOptions): Promise<Published[]> {
    const reply = await this.#post<{ results: Published[] }>(
      '/api/broadcast',
      { channels: input.channels, ...publishFields(input) },
      options,
      (answer) => isPublishedList(answer.results),
    );
    return reply.results;
  }

  /**
   * Publishes an entity change as `{entity.type}.{action}` to `workspace:{w}`,
   * `workspace:{w}:{type}` and `workspace:{w}:{type}:{id}`. `action` is any
   * event-name segment (`approved`, `status_changed`…).
   */
  async entityEvent(input: EntityEventInput, options?: CallOptions): Promise<EntityEventResult> {
    return this.#post(
      '/api/events',
      compact({
        workspace: input.workspace,
        entity: input.entity,
        action: input.action,
        data: input.data,
        actor: input.actor,
        correlation_id: input.correlationId,
        audience: input.audience,
        exclude_client: input.excludeClient,
        idempotency_key: input.idempotencyKey ?? randomUUID(),
      }),
      options,
      (answer) => typeof answer.event === 'string' && isPublishedList(answer.results),
    );
  }

  /** Closes every connection of a user; resolves to how many were closed. */
  async disconnect(input: DisconnectInput, options?: CallOptions): Promise<number> {
    const reply = await this.#post<{ disconnected: number }>(
      '/api/disconnect',
      compact({ ...input }),
      options,
      (answer) => Number.isInteger(answer.disconnected),
    );
    return reply.disconnected;
  }

  /** Removes a user's connections from a channel; resolves to how many were removed. */
  async unsubscribe(input: UnsubscribeInput, options?: CallOptions): Promise<number> {
    const reply = await this.#post<{ unsubscribed: number }>(
      '/api/unsubscribe',
      compact({ ...input }),
      options,
      (answer) => Number.isInteger(answer.unsubscribed),
    );
    return reply.unsubscribed;
  }

  /** Who is on a channel (one member per user). */
  async presence(channel: string, options?: CallOptions): Promise<PresenceResult> {
    return this.#request('GET', '/api/presence', { channel }, undefined, options, (answer) => Array.isArray(answer.members));
  }

  /** Reads a channel's history (every event: audience rules do not apply to the backend). */
  async history(input: HistoryInput, options?: CallOptions): Promise<HistoryResult> {
    const { channel, since, epoch, limit, order } = input;
    return this.#request('GET', '/api/history', { channel, since, epoch, limit, order }, undefined, options, (answer) =>
      Array.isArray(answer.events),
    );
  }

  /** The answering node, its version and engine, and every live node. */
  async info(options?: CallOptions): Promise<InfoResult> {
    return this.#request('GET', '/api/info', {}, undefined, options, (answer) => Array.isArray(answer.nodes));
  }

  #post<T>(path: string, body: Record<string, unknown>, options?: CallOptions, expect?: Expect): Promise<T> {
    return this.#request('POST', path, {}, encode(`POST ${path}`, body), options, expect);
  }

  /**
   * Sends one logical request: the same bytes (and so the same idempotency
   * key) on every attempt.
   */
  async #request<T>(
    method: 'GET' | 'POST',
    path: string,
    query: Query,
    body: string | undefined,
    options: CallOptions = {},
    expect?: Expect,
  ): Promise<T> {
    const url = new URL(this.#base + path);
    for (const [key, value] of Object.entries(query)) {
      if (value !== undefined) url.searchParams.set(key, String(value));
    }
    const retries = options.retries ?? this.#retries;
    const timeoutMs = options.timeoutMs ?? this.#timeoutMs;
    for (let attempt = 1; ; attempt++) {
      const outcome = await this.#attempt<T>(method, url, body, timeoutMs, options.signal, expect);
      if ('value' in outcome) return outcome.value;
      if (!outcome.retry || attempt > retries) throw outcome.error(attempt);
      await sleep(backoffDelay(attempt - 1, this.#minBackoffMs, this.#maxBackoffMs), options.signal);
    }
  }

  async #attempt<T>(
    method: string,
    url: URL,
    body: string | undefined,
    timeoutMs: number,
    signal: AbortSignal | undefined,
    expect: Expect | undefined,
  ): Promise<{ value: T } | Failure> {
    signal?.throwIfAborted();
    const controller = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, timeoutMs);
    const forwardAbort = (): void => controller.abort(signal?.reason);
    signal?.addEventListener('abort', forwardAbort, { once: true });
    try {
      const headers: Record<string, string> = { ...this.#headers, Accept: 'application/json' };
      if (body !== undefined) headers['Content-Type'] = 'application/json';
      // A 3xx is not followed (fetch would turn a POST into a bodyless GET on
      // 301/302 and take the GET's answer as the result): it is
      // `unexpected_response`, like any other answer that is not the API's.
      const init: RequestInit = { method, headers, signal: controller.signal, redirect: 'manual' };
      if (body !== undefined) init.body = body;
      // Both steps race the attempt's signal: undici may never settle a body
      // read after an abort (a broken Content-Encoding), and `timeoutMs` is
      // a hard limit.
      const response = await untilAborted(fetch(url, init), controller.signal);
      const text = await untilAborted(response.text(), controller.signal);
      if (!response.ok) return apiFailure(response.status, text);
      const answer = parseObject(text);
      if (answer !== undefined && (expect?.(answer) ?? true)) return { value: answer as T };
      // A 2xx that is not the API's answer (a proxy's page): not retried,
      // since the request may have been carried out.
      const status = response.status;
      return {
        retry: false,
        error: (attempts) =>
          new TidingsApiError(
            `${method} ${url.pathname}: the answer is not the API's (HTTP ${status})`,
            'unexpected_response',
            status,
            attempts,
          ),
      };
    } catch (err) {
      if (signal?.aborted) throw signal.reason;
      const where = `${method} ${url.pathname}`;
      if (timedOut) {
        return {
          retry: true,
          error: (attempts) => new TidingsTimeoutError(`${where}: no answer within ${timeoutMs} ms`, attempts),
        };
      }
      const reason = describe(err);
      return {
        retry: true,
        error: (attempts) => new TidingsConnectionError(`${where}: ${reason}`, attempts, err),
      };
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener('abort', forwardAbort);
    }
  }
}

/** The wire fields shared by publish and broadcast, with a fresh idempotency key when none is given. */
function publishFields(input: PublishCommon): Record<string, unknown> {
  return compact({
    event: input.event,
    data: input.data === undefined ? null : input.data,
    meta: input.meta,
    audience: input.audience,
    exclude_client: input.excludeClient,
    idempotency_key: input.idempotencyKey ?? randomUUID(),
  });
}

/**
 * `body` as JSON, or a `TidingsError` (`invalid_request`, no request made)
 * when JSON cannot carry it: a BigInt, a cycle, or a number that is not finite
 * (which `JSON.stringify` would silently turn into `null`).
 */
function encode(where: string, body: Record<string, unknown>): string {
  try {
    return JSON.stringify(body, (key: string, value: unknown) => {
      if (typeof value === 'number' && !Number.isFinite(value)) {
        throw new TypeError(`${String(value)} (at "${key}") is not a JSON number`);
      }
      return value;
    });
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err);
    throw new TidingsError(`${where}: the request cannot be sent as JSON: ${reason}`, 'invalid_request', 0, { cause: err });
  }
}

/** Drops `undefined` fields (the API refuses nothing for absent optionals). */
function compact(fields: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(fields).filter(([, value]) => value !== undefined));
}

/** Checks the fields a method reads from a successful answer. */
type Expect = (answer: Record<string, unknown>) => boolean;

const isPublished: Expect = (answer) => Number.isInteger(answer.offset) && typeof answer.id === 'string';

/** A list of publish results, each checked. */
function isPublishedList(value: unknown): boolean {
  return (
    Array.isArray(value) &&
    value.every((item: unknown) => typeof item === 'object' && item !== null && isPublished(item as Record<string, unknown>))
  );
}

/** `text` as a JSON object, or `undefined` when it is not one. */
function parseObject(text: string): Record<string, unknown> | undefined {
  try {
    const parsed: unknown = JSON.parse(text);
    if (typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed)) {
      return parsed as Record<string, unknown>;
    }
  } catch {
    // Not JSON.
  }
  return undefined;
}

function apiFailure(status: number, text: string): Failure {
  let code: ApiErrorCode | 'unexpected_response' = 'unexpected_response';
  let message = `HTTP ${status}`;
  try {
    const parsed: unknown = JSON.parse(text);
    const error = (parsed as { error?: { code?: unknown; message?: unknown } } | null)?.error;
    if (typeof error?.code === 'string' && API_CODES.has(error.code)) code = error.code as ApiErrorCode;
    if (typeof error?.message === 'string') message = `${error.message} (HTTP ${status})`;
  } catch {
    // A proxy's HTML error page: keep `unexpected_response`.
  }
  return {
    retry: status >= 500,
    error: (attempts) => new TidingsApiError(message, code, status, attempts),
  };
}

/**
 * `promise`, or a rejection with the signal's reason as soon as `signal`
 * aborts, whether or not `promise` ever settles.
 */
function untilAborted<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  // The loser of the race must not become an unhandled rejection.
  promise.catch(() => {});
  return new Promise<T>((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason);
    const onAbort = (): void => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(err);
      },
    );
  });
}

function describe(err: unknown): string {
  const cause = (err as { cause?: { code?: unknown; message?: unknown } } | null)?.cause;
  if (typeof cause?.code === 'string') return `connection failed (${cause.code})`;
  if (err instanceof Error) return `connection failed (${err.message})`;
  return 'connection failed';
}
