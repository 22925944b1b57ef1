/**
 * The HTTP long-polling transport (contract §7):
 * `GET /events?channel=…&since=…&epoch=…&limit=…&wait=…` →
 * `{channel, epoch, offset, recovered, events}`; one long-poll loop per channel.
 *
 * STATUS: written against the contract only. The server does not serve
 * `/events` yet, so this transport has not run against a real server. Requests
 * other than subscribe/unsubscribe/ping are answered with `not_available` until
 * the HTTP request endpoint exists.
 */
import type { ClientMessage, EventEnvelope, RequestId, ServerMessage, StreamPosition } from '../protocol.js';
import type { Transport, TransportContext } from './types.js';

const WAIT_SECONDS = 25;

interface PollReply {
  channel: string;
  epoch: string;
  offset: number;
  recovered?: boolean;
  events: EventEnvelope[];
}

export function pollingTransport(context: TransportContext): Transport {
  const { handlers } = context;
  const doFetch = context.fetch;
  const loops = new Map<string, AbortController>();
  let done = false;
  let connected = false;
  const headers = { Authorization: `Bearer ${context.token}` };

  const finish = (code: number, reason: string, reachable: boolean, status?: number): void => {
    if (done) return;
    done = true;
    for (const c of loops.values()) c.abort();
    handlers.close(status === undefined ? { code, reason, reachable } : { code, reason, reachable, status });
  };
  const emit = (message: ServerMessage): void => {
    if (!done) handlers.message(message);
  };

  const probe = async (): Promise<void> => {
    if (!doFetch) return finish(1006, 'no fetch implementation', false);
    let response: Response;
    try {
      response = await doFetch(`${context.httpUrl}/events?wait=0`, { headers, cache: 'no-store' });
    } catch (err) {
      return finish(1006, `polling request failed: ${String(err)}`, false);
    }
    if (response.status === 401 || response.status === 403) {
      emit({ type: 'error', code: 'unauthorized', message: `polling refused with HTTP ${response.status}` });
      return finish(4500, 'unauthorized', true, response.status);
    }
    if (response.status === 404 || response.status === 405 || response.status >= 500) {
      return finish(1006, `polling not available: HTTP ${response.status}`, false, response.status);
    }
    connected = true;
    emit({ type: 'connected', client: '', user: '', heartbeat: (WAIT_SECONDS + 5) * 1000, node: '', version: '1' });
  };

  const loop = async (channel: string, since: StreamPosition | undefined, id: RequestId | undefined): Promise<void> => {
    const controller = new AbortController();
    loops.set(channel, controller);
    let position = since;
    let first = true;
    while (!done && !controller.signal.aborted && doFetch) {
      const url = new URL(`${context.httpUrl}/events`);
      url.searchParams.set('channel', channel);
      if (position) {
        url.searchParams.set('since', String(position.offset));
        url.searchParams.set('epoch', position.epoch);
      }
      url.searchParams.set('wait', first ? '0' : String(WAIT_SECONDS));
      let body: PollReply;
      try {
        const response = await doFetch(url.toString(), { headers, signal: controller.signal, cache: 'no-store' });
        if (!response.ok) {
          if (first) {
            emit({ type: 'error', ...(id !== undefined ? { id } : {}), code: response.status === 403 ? 'permission_denied' : 'bad_request', message: `HTTP ${response.status}` });
            loops.delete(channel);
            return;
          }
          return finish(1006, `polling failed: HTTP ${response.status}`, true, response.status);
        }
        body = (await response.json()) as PollReply;
      } catch (err) {
        if (controller.signal.aborted) return;
        return finish(1006, `polling failed: ${String(err)}`, true);
      }
      if (first) {
        const subscribed: ServerMessage = {
          type: 'subscribed',
          ...(id !== undefined ? { id } : {}),
          channel,
          offset: position && body.recovered ? position.offset : body.offset,
          epoch: body.epoch,
          recoverable: true,
          ...(since ? { recovered: body.recovered === true } : {}),
        };
        emit(subscribed);
        first = false;
      }
      for (const event of body.events) emit(event);
      position = { offset: body.offset, epoch: body.epoch };
      emit({ type: 'ping' });
    }
  };

  void probe();

  return {
    name: 'polling',
    send(message: ClientMessage) {
      if (done || !connected) return;
      switch (message.type) {
        case 'subscribe':
          void loop(message.channel, message.since, message.id);
          return;
        case 'unsubscribe':
          loops.get(message.channel)?.abort();
          loops.delete(message.channel);
          emit({ type: 'unsubscribed', ...(message.id !== undefined ? { id: message.id } : {}), channel: message.channel });
          return;
        case 'ping':
          emit({ type: 'pong', ...(message.id !== undefined ? { id: message.id } : {}) });
          return;
        case 'pong':
        case 'auth':
          return;
        default:
          emit({
            type: 'error',
            ...(message.id !== undefined ? { id: message.id } : {}),
            code: 'not_available',
            message: `${message.type} is not available over polling until the server has its HTTP request endpoint`,
          });
      }
    },
    close() {
      done = true;
      for (const c of loops.values()) c.abort();
    },
  };
}
