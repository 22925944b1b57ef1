// Compile-time check: the README's `WebSocket` option takes the real
// constructors, `ws` in Node and the browser's global.
import WebSocket from 'ws';
import { TidingsClient } from '@tidings/client';

const getToken = async (): Promise<string> => 'token';
new TidingsClient({ url: 'http://127.0.0.1:8000', getToken, WebSocket });
new TidingsClient({ url: 'http://127.0.0.1:8000', getToken, WebSocket: globalThis.WebSocket });
