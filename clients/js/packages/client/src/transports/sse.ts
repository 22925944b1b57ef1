/**
 * The SSE transport (contract §7): `GET /sse?channel=a&channel=b` read with
 * `fetch` as a stream (so the token goes in the `Authorization` header, not the
 * URL, and an HTTP status is visible). Each message's `id` is the opaque resume
 * token; re-opening with `last_event_id` resumes with the §5 guarantee, and
 * `event: unrecoverable` reports a channel whose history was lost.
 *
 * STATUS: written against the contract only. The server does not serve `/sse`
 * yet, so this transport has not run against a real server. Requests other than
 * subscribe/unsubscribe/ping need the HTTP request endpoint, which the contract
 * does not define yet; they are answered with `not_available`.
 */
import type { ClientMessage, ServerMessage, StreamPosition } from '../protocol.js';
import type { Transport, TransportContext } from './types.js';

/** Splits an SSE byte stream into messages (WHATWG event-stream rules). */
export class SseParser {
  #buffer = '';
  #data: string[] = [];
  #event = '';
  #id: string | undefined;
  onMessage: (message: { event: string; data: string; id: string | undefined }) => void = () => {};
  onComment: () => void = () => {};

  push(chunk: string): void {
    this.#buffer += chunk;
    let index: number;
    while ((index = this.#buffer.search(/\r\n|\r|\n/)) >= 0) {
      const line = this.#buffer.slice(0, index);
      const eol = this.#buffer[index] === '\r' && this.#buffer[index + 1] === '\n' ? 2 : 1;
      this.#buffer = this.#buffer.slice(index + eol);
      this.#line(line);
    }
  }

  #line(line: string): void {
    if (line === '') {
      if (this.#data.length > 0) {
        this.onMessage({ event: this.#event || 'message', data: this.#data.join('\n'), id: this.#id });
      }
      this.#data = [];
      this.#event = '';
      return;
    }
    if (line.startsWith(':')) {
      this.onComment();
      return;
    }
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'data') this.#data.push(value);
    else if (field === 'event') this.#event = value;
    else if (field === 'id') this.#id = value;
  }
}

const DEFAULT_HEARTBEAT = 25_000;

export function sseTransport(context: TransportContext): Transport {
  const { handlers } = context;
  const doFetch = context.fetch;
  const channels = new Map<string, StreamPosition | undefined>();
  let resumeToken: string | undefined;
  let controller: AbortController | null = null;
  let done = false;
  let connected = false;
  let reopenQueued = false;

  const finish = (code: number, reason: string, reachable: boolean, status?: number): void => {
    if (done) return;
    done = true;
    controller?.abort();
    const info = status === undefined ? { code, reason, reachable } : { code, reason, reachable, status };
    handlers.close(info);
  };

  const reply = (message: ServerMessage): void => {
    if (!done) queueMicrotask(() => !done && handlers.message(message));
  };

  const open = async (): Promise<void> => {
    if (!doFetch) {
      finish(1006, 'no fetch implementation', false);
      return;
    }
    controller?.abort();
    const own = new AbortController();
    controller = own;
    const url = new URL(`${context.httpUrl}/sse`);
    for (const channel of channels.keys()) url.searchParams.append('channel', channel);
    if (resumeToken) url.searchParams.set('last_event_id', resumeToken);
    let response: Response;
    try {
      response = await doFetch(url.toString(), {
        headers: { Authorization: `Bearer ${context.token}`, Accept: 'text/event-stream' },
        signal: own.signal,
        cache: 'no-store',
      });
    } catch (err) {
      if (own.signal.aborted) return;
      finish(1006, `SSE request failed: ${String(err)}`, connected);
      return;
    }
    if (response.status === 401 || response.status === 403) {
      handlers.message({ type: 'error', code: 'unauthorized', message: `SSE refused with HTTP ${response.status}` });
      finish(4500, 'unauthorized', true, response.status);
      return;
    }
    if (!response.ok || !response.body) {
      // 404/405: the server (or a proxy) does not offer SSE.
      finish(1006, `SSE not available: HTTP ${response.status}`, connected, response.status);
      return;
    }
    if (!connected) {
      connected = true;
      handlers.message({
        type: 'connected',
        client: response.headers.get('x-tidings-client') ?? '',
        user: '',
        heartbeat: DEFAULT_HEARTBEAT,
        node: '',
        version: '1',
      });
    }
    const parser = new SseParser();
    parser.onComment = () => handlers.message({ type: 'ping' });
    parser.onMessage = ({ event, data, id }) => {
      if (id) resumeToken = id;
      let parsed: unknown;
      try {
        parsed = JSON.parse(data);
      } catch {
        return;
      }
      if (event === 'unrecoverable') {
        const channel = (parsed as { channel?: string }).channel;
        if (channel) {
          const p = parsed as { offset?: number; epoch?: string };
          handlers.message({
            type: 'subscribed',
            channel,
            offset: p.offset ?? 0,
            epoch: p.epoch ?? '',
            recoverable: true,
            recovered: false,
          });
        }
        return;
      }
      if (parsed && typeof parsed === 'object' && typeof (parsed as { type?: unknown }).type === 'string') {
        handlers.message(parsed as ServerMessage);
      }
    };
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    try {
      for (;;) {
        const { value, done: ended } = await reader.read();
        if (ended) break;
        parser.push(value);
      }
    } catch {
      if (own.signal.aborted) return;
    }
    if (own.signal.aborted || controller !== own) return;
    finish(1006, 'SSE stream ended', true);
  };

  const reopen = (): void => {
    if (reopenQueued) return;
    reopenQueued = true;
    queueMicrotask(() => {
      reopenQueued = false;
      if (!done) void open();
    });
  };

  void open();

  return {
    name: 'sse',
    send(message: ClientMessage) {
      if (done) return;
      switch (message.type) {
        case 'subscribe':
          channels.set(message.channel, message.since);
          reply({
            type: 'subscribed',
            ...(message.id !== undefined ? { id: message.id } : {}),
            channel: message.channel,
            offset: message.since?.offset ?? 0,
            epoch: message.since?.epoch ?? '',
            recoverable: true,
          });
          reopen();
          return;
        case 'unsubscribe':
          channels.delete(message.channel);
          reply({ type: 'unsubscribed', ...(message.id !== undefined ? { id: message.id } : {}), channel: message.channel });
          reopen();
          return;
        case 'ping':
          reply({ type: 'pong', ...(message.id !== undefined ? { id: message.id } : {}) });
          return;
        case 'pong':
        case 'auth':
          return;
        default:
          reply({
            type: 'error',
            ...(message.id !== undefined ? { id: message.id } : {}),
            code: 'not_available',
            message: `${message.type} is not available over SSE until the server has its HTTP request endpoint`,
          });
      }
    },
    close() {
      done = true;
      controller?.abort();
    },
  };
}
