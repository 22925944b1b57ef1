// @tidings/react against a real Tidings server, rendered with React Testing Library (jsdom).
import { QueryClient, QueryClientProvider, useQuery } from '@tanstack/react-query';
import { act, cleanup, fireEvent, render, screen, waitFor as rtlWaitFor } from '@testing-library/react';
import { StrictMode, useState, version as reactVersion } from 'react';
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import WebSocket from 'ws';
import { TidingsClient, type TidingsClientOptions } from '@tidings/client';
import {
  ConnectionStatus,
  TidingsProvider,
  useConcurrentEdit,
  useConnectionState,
  useEntitySubscription,
  useSubscription,
  useTidings,
} from '@tidings/react';
import { useTidingsQueryBridge } from '@tidings/react/query';
import { startServer, waitFor, type Server } from './server';

let server: Server;
const clients: TidingsClient[] = [];

function makeClient(user = 'u1', extra: Partial<TidingsClientOptions> = {}): TidingsClient {
  const client = new TidingsClient({
    url: server.url,
    WebSocket: WebSocket as unknown as TidingsClientOptions['WebSocket'],
    getToken: async () => server.token({ sub: user, workspaces: ['acme'] }),
    reconnect: { minDelay: 50, maxDelay: 200 },
    watchNetwork: false,
    ...extra,
  });
  clients.push(client);
  return client;
}

beforeAll(async () => {
  server = (await startServer()) as Server;
});
afterEach(() => {
  cleanup();
  for (const c of clients.splice(0)) c.close();
});
afterAll(async () => {
  await server.stop();
});

function StateText() {
  const info = useConnectionState();
  return <p data-testid="state">{info.state}</p>;
}

test('runs the React major this vitest project is for', () => {
  expect(reactVersion.split('.')[0]).toBe(process.env.EXPECT_REACT);
});

describe('provider, connection state, status indicator', () => {
  test('useConnectionState and <ConnectionStatus> follow the connection', async () => {
    const client = makeClient();
    render(
      <TidingsProvider client={client}>
        <StateText />
        <ConnectionStatus className="extra" />
      </TidingsProvider>,
    );
    await screen.findByText('connected');
    const status = screen.getByRole('status');
    expect(status.className).toBe('tidings-status tidings-status--connected extra');
    expect(status.textContent).toBe('Live');
    act(() => client.disconnect());
    await screen.findByText('disconnected');
    expect(screen.getByRole('status').getAttribute('data-status')).toBe('failed');
    fireEvent.click(screen.getByRole('button', { name: 'Retry' }));
    await screen.findByText('connected');
  });

  test('<ConnectionStatus> shows failed with Retry after maxAttempts, and Retry reconnects', async () => {
    const dead = (await startServer()) as Server;
    const { port, secret, apiKey } = dead;
    await dead.stop();
    const client = new TidingsClient({
      url: dead.url,
      WebSocket: WebSocket as unknown as TidingsClientOptions['WebSocket'],
      getToken: async () => dead.token({}),
      reconnect: { minDelay: 10, maxDelay: 20, maxAttempts: 2 },
      transports: ['websocket'],
      watchNetwork: false,
    });
    clients.push(client);
    render(
      <TidingsProvider client={client}>
        <ConnectionStatus labels={{ failed: 'Offline: changes will not appear' }} />
      </TidingsProvider>,
    );
    await screen.findByText('Offline: changes will not appear');
    const back = (await startServer({ port, secret, apiKey })) as Server;
    try {
      fireEvent.click(screen.getByRole('button', { name: 'Retry' }));
      await screen.findByText('Live');
    } finally {
      await back.stop();
    }
  });

  test('a provider given options creates the client and closes it on unmount', async () => {
    let created: TidingsClient | null = null;
    function Grab() {
      created = useTidings();
      const info = useConnectionState();
      return <p>{info.state}</p>;
    }
    const { unmount } = render(
      <TidingsProvider
        options={{
          url: server.url,
          WebSocket: WebSocket as unknown as TidingsClientOptions['WebSocket'],
          getToken: async () => server.token({}),
          watchNetwork: false,
        }}
      >
        <Grab />
      </TidingsProvider>,
    );
    await screen.findByText('connected');
    const client = created as TidingsClient | null;
    if (!client) throw new Error('no client');
    const states: string[] = [];
    client.on('state', (info) => states.push(info.state));
    unmount();
    // Closed in a microtask after the unmount (see the StrictMode test below).
    await Promise.resolve();
    expect(client.state).toBe('disconnected');
    expect(client.clientId).toBeNull();
    expect(client.stateInfo.reason).toEqual({ code: 1000, message: 'client closed' });
    expect(states).toEqual(['disconnected']);
  });

  test('under StrictMode a provider given options keeps one live client and closes it on unmount', async () => {
    // Its own server, so that the connection count is this test's alone.
    const own = (await startServer()) as Server;
    try {
      const seen = new Set<TidingsClient>();
      const got: string[] = [];
      function Grab() {
        const client = useTidings();
        seen.add(client);
        const info = useConnectionState();
        useSubscription('chat:strict:room', (event) => got.push(String(event.data)));
        return <p data-testid="state">{info.state}</p>;
      }
      const { unmount } = render(
        <StrictMode>
          <TidingsProvider
            options={{
              url: own.url,
              WebSocket: WebSocket as unknown as TidingsClientOptions['WebSocket'],
              getToken: async () => own.token({}),
              reconnect: { minDelay: 50, maxDelay: 200 },
              watchNetwork: false,
            }}
          >
            <Grab />
          </TidingsProvider>
        </StrictMode>,
      );
      await screen.findByText('connected');
      // StrictMode's simulated unmount did not close it: it stays connected.
      await new Promise((r) => setTimeout(r, 300));
      expect(screen.getByTestId('state').textContent).toBe('connected');
      expect(seen.size).toBe(1);
      const [client] = [...seen] as [TidingsClient];
      expect(client.state).toBe('connected');
      expect(await own.connections()).toBe(1);
      await waitFor(() => client.channelState('chat:strict:room').state === 'subscribed', { message: 'subscribed' });
      await own.publish('chat:strict:room', 'msg', 'hello');
      await rtlWaitFor(() => expect(got).toEqual(['hello']));
      unmount();
      await waitFor(() => client.state === 'disconnected', { message: 'closed after unmount' });
      expect(client.stateInfo.reason).toEqual({ code: 1000, message: 'client closed' });
      await waitFor(async () => (await own.connections()) === 0, { message: 'server connection gone' });
    } finally {
      await own.stop();
    }
  });
});

describe('subscription hooks', () => {
  test('useSubscription delivers events; useEntitySubscription builds the conventional channel', async () => {
    const client = makeClient();
    function Feed() {
      const [items, setItems] = useState<string[]>([]);
      const status = useEntitySubscription<{ 'applications.created': { name: string } }>(
        { workspace: 'acme', type: 'applications' },
        (e) => setItems((prev) => [...prev, `${e.event}:${e.data.name}`]),
      );
      const raw = useSubscription('workspace:acme', () => {});
      return (
        <div>
          <p data-testid="sub">{status.state}/{raw.state}</p>
          <ul>
            {items.map((i) => (
              <li key={i}>{i}</li>
            ))}
          </ul>
        </div>
      );
    }
    render(
      <TidingsProvider client={client}>
        <Feed />
      </TidingsProvider>,
    );
    await screen.findByText('subscribed/subscribed');
    await server.entityEvent({ workspace: 'acme', entity: { type: 'applications', id: 'a1' }, action: 'created', data: { name: 'First' } });
    await screen.findByText('applications.created:First');
  });

  test('useSubscription reports an error state for a refused channel', async () => {
    const client = makeClient();
    function Denied() {
      const status = useSubscription('workspace:globex');
      return <p>{status.state}:{status.error?.code ?? ''}</p>;
    }
    render(
      <TidingsProvider client={client}>
        <Denied />
      </TidingsProvider>,
    );
    await screen.findByText('error:permission_denied');
  });

  test('useConcurrentEdit flags changes by another user, not by the current one', async () => {
    const client = makeClient('alice');
    function Editor() {
      const edit = useConcurrentEdit({ workspace: 'acme', type: 'applications', id: 'app9' });
      const [seen, setSeen] = useState(0);
      const status = useEntitySubscription({ workspace: 'acme', type: 'applications', id: 'app9' }, () => setSeen((n) => n + 1));
      return (
        <div>
          <p data-testid="sub">{status.state}:{seen}</p>
          <p data-testid="conflict">
            {edit.changedByOther ? `updated by ${edit.lastChange?.actor} (v${edit.lastChange?.version})` : 'no conflict'}
          </p>
          <button onClick={edit.reset}>reload</button>
        </div>
      );
    }
    render(
      <TidingsProvider client={client}>
        <Editor />
      </TidingsProvider>,
    );
    await rtlWaitFor(() => expect(screen.getByTestId('sub').textContent).toBe('subscribed:0'));
    const update = (actor: string, version: number) =>
      server.entityEvent({ workspace: 'acme', entity: { type: 'applications', id: 'app9', version }, action: 'updated', actor });
    await update('alice', 2);
    await rtlWaitFor(() => expect(screen.getByTestId('sub').textContent).toBe('subscribed:1'));
    expect(screen.getByTestId('conflict').textContent).toBe('no conflict');
    await update('bob', 3);
    await screen.findByText('updated by bob (v3)');
    fireEvent.click(screen.getByText('reload'));
    await screen.findByText('no conflict');
  });
});

describe('TanStack Query bridge', () => {
  test('events invalidate mapped query keys and setQueryData updates the cache', async () => {
    const client = makeClient();
    const queryClient = new QueryClient({ defaultOptions: { queries: { retry: false, staleTime: Infinity } } });
    let listFetches = 0;
    const detail = { id: 'a1', name: 'Old' };
    function Page() {
      useTidingsQueryBridge<{ 'applications.created': { name: string }; 'applications.updated': { name: string } }>([
        { channel: 'workspace:acme:applications', events: 'applications.created', invalidate: [['applications', 'list']] },
        {
          channel: 'workspace:acme:applications',
          events: ['applications.updated'],
          update: [
            {
              queryKey: (e) => ['applications', 'detail', e.meta?.entity?.id ?? ''],
              updater: (old, e) => ({ ...(old as object), name: e.data.name }),
            },
          ],
        },
      ]);
      const list = useQuery({
        queryKey: ['applications', 'list'],
        queryFn: async () => {
          listFetches++;
          return listFetches;
        },
      });
      const one = useQuery({ queryKey: ['applications', 'detail', 'a1'], queryFn: async () => detail });
      const state = useConnectionState();
      return (
        <div>
          <p data-testid="list">fetches:{list.data ?? 0}</p>
          <p data-testid="detail">{one.data?.name ?? ''}</p>
          <p data-testid="state">{state.state}</p>
        </div>
      );
    }
    render(
      <QueryClientProvider client={queryClient}>
        <TidingsProvider client={client}>
          <Page />
        </TidingsProvider>
      </QueryClientProvider>,
    );
    await screen.findByText('fetches:1');
    await screen.findByText('Old');
    await waitFor(() => client.channelState('workspace:acme:applications').state === 'subscribed');
    await server.entityEvent({ workspace: 'acme', entity: { type: 'applications', id: 'a2' }, action: 'created', data: { name: 'New' } });
    await screen.findByText('fetches:2');
    await server.entityEvent({ workspace: 'acme', entity: { type: 'applications', id: 'a1' }, action: 'updated', data: { name: 'Renamed' } });
    await screen.findByText('Renamed');
    expect(listFetches).toBe(2);
  });

  test('recovered: false after a server restart invalidates the mapped keys', async () => {
    const own = (await startServer()) as Server;
    const { port, secret, apiKey } = own;
    const client = new TidingsClient({
      url: own.url,
      WebSocket: WebSocket as unknown as TidingsClientOptions['WebSocket'],
      getToken: async () => own.token({}),
      reconnect: { minDelay: 50, maxDelay: 100, maxAttempts: 100 },
      watchNetwork: false,
    });
    clients.push(client);
    const queryClient = new QueryClient({ defaultOptions: { queries: { retry: false, staleTime: Infinity } } });
    let fetches = 0;
    function Page() {
      useTidingsQueryBridge([{ channel: 'workspace:acme:tickets', invalidate: [['tickets']] }]);
      const q = useQuery({ queryKey: ['tickets'], queryFn: async () => ++fetches });
      return <p>tickets:{q.data ?? 0}</p>;
    }
    render(
      <QueryClientProvider client={queryClient}>
        <TidingsProvider client={client}>
          <Page />
        </TidingsProvider>
      </QueryClientProvider>,
    );
    await screen.findByText('tickets:1');
    await waitFor(() => client.channelState('workspace:acme:tickets').state === 'subscribed');
    await own.stop();
    const back = (await startServer({ port, secret, apiKey })) as Server;
    try {
      await screen.findByText('tickets:2', undefined, { timeout: 15_000 });
    } finally {
      await back.stop();
    }
  });
});
