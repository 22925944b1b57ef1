// useLiveList and the list's own fetch: a change that arrives while a fetch is
// under way (whose snapshot may predate it) is not lost.
import { QueryClient, QueryClientProvider, useQuery } from '@tanstack/react-query';
import { cleanup, render, screen, waitFor as rtlWaitFor } from '@testing-library/react';
import { afterAll, afterEach, beforeAll, expect, test } from 'vitest';
import WebSocket from 'ws';
import { TidingsClient, type TidingsClientOptions } from '@tidings/client';
import { TidingsProvider } from '@tidings/react';
import { useLiveList } from '@tidings/react/query';
import { startServer, waitFor, type Server } from './server';

interface Item {
  id: string;
  version?: number;
  title: string;
}

let server: Server;
const clients: TidingsClient[] = [];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

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

test('useLiveList: an item created while the first fetch is in flight shows once that fetch ended (staleTime Infinity)', async () => {
  const client = new TidingsClient({
    url: server.url,
    WebSocket: WebSocket as unknown as TidingsClientOptions['WebSocket'],
    getToken: async () => server.token({ sub: 'alice', workspaces: ['acme'] }),
    watchNetwork: false,
  });
  clients.push(client);
  // The "backend": the list as the fetch reads it.
  let table: Item[] = [{ id: 'a', version: 1, title: 'A' }];
  let fetches = 0;
  const type = 'inflight';
  const queryClient = new QueryClient({ defaultOptions: { queries: { retry: false, staleTime: Infinity } } });
  // The connection and the channel are up before the list mounts.
  const warm = client.subscribe(`workspace:acme:${type}`);
  await waitFor(() => warm.state === 'subscribed');
  function List() {
    const status = useLiveList<Item>({ workspace: 'acme', type, queryKey: ['inflight'] });
    const query = useQuery({
      queryKey: ['inflight'],
      queryFn: async () => {
        fetches += 1;
        const snapshot = [...table];
        await sleep(800);
        return snapshot;
      },
    });
    return (
      <ul data-testid="list" data-status={status.state}>
        {(query.data ?? []).map((item) => (
          <li key={item.id}>{item.title}</li>
        ))}
      </ul>
    );
  }
  render(
    <QueryClientProvider client={queryClient}>
      <TidingsProvider client={client}>
        <List />
      </TidingsProvider>
    </QueryClientProvider>,
  );
  await rtlWaitFor(() => expect(screen.getByTestId('list').getAttribute('data-status')).toBe('subscribed'));
  expect(fetches).toBe(1);
  // The fetch read the table already; now B is created (and published).
  table = [{ id: 'b', version: 1, title: 'B' }, ...table];
  await server.entityEvent({
    workspace: 'acme',
    entity: { type, id: 'b', version: 1 },
    action: 'created',
    actor: 'bob',
    data: { id: 'b', title: 'B' },
  });
  await rtlWaitFor(() => expect(screen.getByTestId('list').textContent).toBe('BA'), { timeout: 5000 });
  expect(fetches).toBe(2);
});
