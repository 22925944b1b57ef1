// Socket.IO v4 peer for tidings-bench: the same job as Tidings, written the way
// Socket.IO users write it.
//
// - JWT (HS256) verified from the handshake `auth.token`, with `jsonwebtoken`.
// - `subscribe` event (with ack) joins the room named after the channel, with the
//   same access rules as Tidings' defaults: `workspace:{w}[:…]` when `w` is in the
//   token's `workspaces`, `user:{u}` when `u` is the token's `sub`.
// - `echo` event acks at once (the bench's application-level ping).
// - `POST /publish` {channel, event, data} with `Authorization: Bearer <api key>`
//   does `io.to(channel).emit(event, {channel, data})`.
//
// Environment: BENCH_JWT_SECRET, BENCH_API_KEY, HOST (127.0.0.1), PORT (0 = any),
// BENCH_REDIS_URL (optional: with it, rooms span every peer on that Redis through
// @socket.io/redis-adapter, as Socket.IO users run several nodes).
// Prints `listening on HOST:PORT` on stdout once ready.
'use strict';

const http = require('http');
const { Server } = require('socket.io');
const jwt = require('jsonwebtoken');

const secret = process.env.BENCH_JWT_SECRET;
const apiKey = process.env.BENCH_API_KEY;
const host = process.env.HOST || '127.0.0.1';
const port = Number(process.env.PORT || 0);
if (!secret || !apiKey) {
  console.error('BENCH_JWT_SECRET and BENCH_API_KEY are required');
  process.exit(2);
}

function reply(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': 'application/json',
    'Content-Length': Buffer.byteLength(text),
  });
  res.end(text);
}

const httpServer = http.createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/health') {
    return reply(res, 200, { status: 'ok', connections: io.engine.clientsCount });
  }
  if (req.method !== 'POST' || (req.url !== '/publish' && req.url !== '/broadcast')) {
    return reply(res, 404, { error: 'not found' });
  }
  if (req.headers.authorization !== `Bearer ${apiKey}`) {
    return reply(res, 401, { error: 'unauthorized' });
  }
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => {
    let msg;
    try {
      msg = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    } catch (e) {
      return reply(res, 400, { error: 'bad json' });
    }
    if (req.url === '/broadcast') {
      // The same event to several channels, one emit per room (as Tidings'
      // and Centrifugo's /api/broadcast publish once per channel).
      if (!Array.isArray(msg.channels) || typeof msg.event !== 'string') {
        return reply(res, 400, { error: 'channels and event are required' });
      }
      for (const channel of msg.channels) {
        io.to(channel).emit(msg.event, { channel, data: msg.data });
      }
      return reply(res, 200, { channels: msg.channels.length });
    }
    if (typeof msg.channel !== 'string' || typeof msg.event !== 'string') {
      return reply(res, 400, { error: 'channel and event are required' });
    }
    io.to(msg.channel).emit(msg.event, { channel: msg.channel, data: msg.data });
    reply(res, 200, { channel: msg.channel });
  });
});

const io = new Server(httpServer, {
  serveClient: false,
  transports: ['websocket'],
  // Defaults spelled out: no compression, 25 s / 20 s heartbeat.
  perMessageDeflate: false,
  pingInterval: 25000,
  pingTimeout: 20000,
});

io.use((socket, next) => {
  const token = socket.handshake.auth && socket.handshake.auth.token;
  try {
    socket.data.claims = jwt.verify(token, secret, { algorithms: ['HS256'] });
    next();
  } catch (err) {
    next(new Error('unauthorized'));
  }
});

function mayJoin(claims, channel) {
  const parts = channel.split(':');
  if (parts[0] === 'workspace' && parts.length >= 2) {
    return Array.isArray(claims.workspaces) && claims.workspaces.includes(parts[1]);
  }
  if (parts[0] === 'user' && parts.length === 2) {
    return claims.sub === parts[1];
  }
  return false;
}

io.on('connection', (socket) => {
  socket.on('subscribe', (channel, ack) => {
    const ok = typeof channel === 'string' && mayJoin(socket.data.claims, channel);
    if (ok) socket.join(channel);
    if (typeof ack === 'function') ack({ ok, channel });
  });
  socket.on('echo', (ack) => {
    if (typeof ack === 'function') ack();
  });
});

async function useRedisAdapter(url) {
  const { createClient } = require('redis');
  const { createAdapter } = require('@socket.io/redis-adapter');
  const pubClient = createClient({ url });
  const subClient = pubClient.duplicate();
  for (const client of [pubClient, subClient]) {
    client.on('error', (err) => console.error('redis:', err.message));
  }
  await Promise.all([pubClient.connect(), subClient.connect()]);
  io.adapter(createAdapter(pubClient, subClient));
}

(async () => {
  if (process.env.BENCH_REDIS_URL) {
    await useRedisAdapter(process.env.BENCH_REDIS_URL);
  }
  httpServer.listen(port, host, () => {
    const addr = httpServer.address();
    console.log(`listening on ${addr.address}:${addr.port}`);
  });
})().catch((err) => {
  console.error(err);
  process.exit(1);
});

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => process.exit(0));
}
