import type { ClientMessage, ServerMessage } from '../protocol.js';
import type { Transport, TransportContext } from './types.js';

/** The WebSocket transport: `GET /ws`, subprotocol `tidings.v1`, token in the first message. */
export function websocketTransport(context: TransportContext): Transport {
  const Ctor = context.WebSocket;
  const { handlers } = context;
  let done = false;
  let opened = false;
  const finish = (code: number, reason: string): void => {
    if (done) return;
    done = true;
    handlers.close({ code, reason, reachable: opened });
  };
  if (!Ctor) {
    queueMicrotask(() => finish(1006, 'no WebSocket implementation (pass options.WebSocket)'));
    return { name: 'websocket', send() {}, close() { done = true; } };
  }
  let socket: InstanceType<typeof Ctor>;
  try {
    // permessage-deflate: browsers offer it themselves; `ws` in Node reads
    // this third argument (other constructors ignore it). The server compresses
    // each large event once and sends the same frame to every such client.
    socket = new Ctor(`${context.wsUrl}/ws`, ['tidings.v1'], { perMessageDeflate: true });
  } catch (err) {
    queueMicrotask(() => finish(1006, `WebSocket failed: ${String(err)}`));
    return { name: 'websocket', send() {}, close() { done = true; } };
  }
  socket.onopen = () => {
    opened = true;
    socket.send(JSON.stringify({ type: 'auth', token: context.token }));
  };
  socket.onmessage = (ev) => {
    if (done) return;
    let message: ServerMessage;
    try {
      const text = typeof ev.data === 'string' ? ev.data : String(ev.data);
      message = JSON.parse(text) as ServerMessage;
    } catch {
      return;
    }
    if (message && typeof message === 'object' && typeof message.type === 'string') {
      handlers.message(message);
    }
  };
  socket.onerror = () => {
    // A close event always follows.
  };
  socket.onclose = (ev) => finish(ev.code || 1006, ev.reason || (opened ? 'connection closed' : 'could not connect'));
  return {
    name: 'websocket',
    send(message: ClientMessage) {
      if (done || socket.readyState !== 1) return;
      socket.send(JSON.stringify(message));
    },
    close(code: number, reason: string) {
      if (done) return;
      done = true;
      socket.onopen = null;
      socket.onmessage = null;
      socket.onclose = null;
      socket.onerror = () => {};
      try {
        // Browsers accept only 1000 and 3000–4999 from scripts.
        socket.close(code === 1000 || (code >= 3000 && code <= 4999) ? code : 1000, reason);
      } catch {
        // Already closing.
      }
    },
  };
}
