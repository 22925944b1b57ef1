// A @tidings/client for Node tests against a real server process.
import WebSocket from 'ws';
import { TidingsClient } from '../../packages/client/dist/index.js';

/**
 * A client for `server` (default transports, `ws` for WebSocket) with fast
 * reconnects; records its states and the reasons it asked for a token.
 */
export function makeClient(server, { claims = {}, ...options } = {}) {
  const states = [];
  const tokenRequests = [];
  const client = new TidingsClient({
    url: server.url,
    WebSocket,
    getToken: async (request) => {
      tokenRequests.push(request.reason);
      return server.token(claims);
    },
    reconnect: { minDelay: 50, maxDelay: 200, maxAttempts: 20 },
    watchNetwork: false,
    ...options,
  });
  client.on('state', (info) => states.push(info));
  return { client, states, tokenRequests };
}
