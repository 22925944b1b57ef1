// Entity-level hooks and components of @tidings/react against a real Tidings
// server, over each transport (the client's `transports` picks it).
import { QueryClient, QueryClientProvider, useQuery } from '@tanstack/react-query';
import { act, cleanup, fireEvent, render, screen, waitFor as rtlWaitFor } from '@testing-library/react';
import { useState } from 'react';
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import WebSocket from 'ws';
import { TidingsClient, type TidingsClientOptions, type TransportName } from '@tidings/client';
import {
  ConnectionStatus,
  DataUpdatedHint,
  EditConflictBanner,
  RemoteChangeNotice,
  TidingsProvider,
  useConcurrentEdit,
  useLiveEntity,
  useRemoteChangeNotice,
  useUnreadCount,
} from '@tidings/react';
import { useLiveList, useTidingsQueryBridge } from '@tidings/react/query';
import { startServer, waitFor, type Server } from './server';

interface Item {
  id: string;
  version?: number;
  title: string;
}

let server: Server;
const clients: TidingsClient[] = [];

function makeClient(user: string, transports: TransportName[] = ['websocket'], url = server.url, srv = server): TidingsClient {
  const client = new TidingsClient({
    url,
    WebSocket: WebSocket as unknown as TidingsClientOptions['WebSocket'],
    getToken: async () => srv.token({ sub: user, workspaces: ['acme'] }),
    reconnect: { minDelay: 50, maxDelay: 200, maxAttempts: 200 },
    watchNetwork: false,
    transports,
  });
  clients.push(client);
  return client;
}

const change = (id: string, action: string, version: number, actor: string, data: object = {}, type = 'items') =>
  server.entityEvent({ workspace: 'acme', entity: { type, id, version }, action, actor, data: { id, ...data } });

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

function wrap(client: TidingsClient, queryClient: QueryClient, node: React.ReactNode) {
  return render(
    <QueryClientProvider client={queryClient}>
      <TidingsProvider client={client}>{node}</TidingsProvider>
    </QueryClientProvider>,
  );
}

const newQueryClient = () => new QueryClient({ defaultOptions: { queries: { retry: false, staleTime: Infinity } } });

describe.each([['websocket'], ['sse'], ['polling']] as [TransportName][])('over %s', (transport) => {
  test('useLiveList applies created/updated/deleted by version; onArrive; older and duplicate events dropped', async () => {
    const type = `items${transport}`;
    const client = makeClient('alice', [transport]);
    const queryClient = newQueryClient();
    const arrived: string[] = [];
    function List() {
      const status = useLiveList<Item>({
        workspace: 'acme',
        type,
        queryKey: ['items', transport],
        insert: 'end',
        onArrive: (item, { own }) => arrived.push(`${item.title}${own ? ' (own)' : ''}`),
      });
      const q = useQuery({ queryKey: ['items', transport], queryFn: async (): Promise<Item[]> => [{ id: 'a', version: 1, title: 'A1' }] });
      return (
        <div>
          <p data-testid="sub">{status.state}</p>
          <p data-testid="list">{(q.data ?? []).map((i) => `${i.id}:${i.version}:${i.title}`).join(',')}</p>
        </div>
      );
    }
    wrap(client, queryClient, <List />);
    await rtlWaitFor(() => expect(screen.getByTestId('sub').textContent).toBe('subscribed'));
    await rtlWaitFor(() => expect(screen.getByTestId('list').textContent).toBe('a:1:A1'));
    await change('b', 'created', 1, 'bob', { title: 'B1' }, type);
    await rtlWaitFor(() => expect(screen.getByTestId('list').textContent).toBe('a:1:A1,b:1:B1'));
    await change('a', 'updated', 3, 'bob', { title: 'A3' }, type);
    await change('a', 'updated', 2, 'bob', { title: 'A2 (late)' }, type); // older: dropped
    await change('a', 'updated', 3, 'bob', { title: 'A3 (dup)' }, type); // duplicate version: dropped
    await change('c', 'created', 1, 'alice', { title: 'C1' }, type);
    await rtlWaitFor(() => expect(screen.getByTestId('list').textContent).toBe('a:3:A3,b:1:B1,c:1:C1'));
    await change('b', 'deleted', 2, 'bob', {}, type);
    await change('b', 'updated', 1, 'bob', { title: 'B (late)' }, type); // after its deletion: dropped
    await change('c', 'updated', 2, 'bob', { title: 'C2' }, type);
    await rtlWaitFor(() => expect(screen.getByTestId('list').textContent).toBe('a:3:A3,c:2:C2'));
    expect(arrived).toEqual(['B1', 'C1 (own)']);
  });

  test('useLiveEntity + notice: a change by another user shows actor and version, own changes (actor or client id) do not; deleted calls back', async () => {
    const type = `docs${transport}`;
    const client = makeClient('alice', [transport]);
    const queryClient = newQueryClient();
    const deleted: string[] = [];
    let refreshes = 0;
    function Detail() {
      const live = useLiveEntity<{ title: string }>(
        { workspace: 'acme', type, id: 'd1' },
        { ownBy: 'both', onDeleted: (c) => deleted.push(c.actor ?? '?') },
      );
      const notice = useRemoteChangeNotice(live.change, { onRefresh: () => (refreshes += 1), autoDismissMs: 10_000 });
      return (
        <div>
          <RemoteChangeNotice notice={notice} />
          <p data-testid="deleted">{live.deleted ? `deleted by ${live.deleted.actor}` : 'here'}</p>
        </div>
      );
    }
    wrap(client, queryClient, <Detail />);
    await waitFor(() => client.channelState(`workspace:acme:${type}:d1`).state === 'subscribed');
    await change('d1', 'updated', 2, 'alice', { title: 'mine by actor' }, type);
    // Own by client id: another user's actor, but this tab's correlation id (e.g. an admin acting for alice).
    await server.entityEvent({
      workspace: 'acme',
      entity: { type, id: 'd1', version: 3 },
      action: 'updated',
      actor: 'service',
      correlation_id: client.correlationId(),
      data: {},
    });
    await change('d1', 'updated', 4, 'bob', { title: 'theirs' }, type);
    const status = screen.getByRole('status');
    await rtlWaitFor(() => expect(status.textContent).toContain('Updated by bob (version 4)'));
    expect(status.getAttribute('aria-live')).toBe('polite');
    expect(status.textContent).toContain('10s');
    expect(document.activeElement).toBe(document.body); // focus not stolen
    fireEvent.click(screen.getByRole('button', { name: 'Refresh' }));
    expect(refreshes).toBe(1);
    await rtlWaitFor(() => expect(status.textContent).toBe(''));
    await change('d1', 'deleted', 5, 'bob', {}, type);
    await screen.findByText('deleted by bob');
    expect(deleted).toEqual(['bob']);
  });
});

describe('own deletions', () => {
  test('useLiveEntity: a deletion in another tab of the same user is a deletion, not a quiet own change', async () => {
    const client = makeClient('alice');
    const queryClient = newQueryClient();
    const deleted: string[] = [];
    const own: string[] = [];
    function Detail() {
      const live = useLiveEntity<{ title: string }>(
        { workspace: 'acme', type: 'owndel', id: 'o1' },
        { onDeleted: (c) => deleted.push(c.actor ?? '?'), onOwnChange: (c) => own.push(c.action) },
      );
      return <p data-testid="deleted">{live.deleted ? `deleted by ${live.deleted.actor}` : 'here'}</p>;
    }
    wrap(client, queryClient, <Detail />);
    await waitFor(() => client.channelState('workspace:acme:owndel:o1').state === 'subscribed');
    await change('o1', 'updated', 2, 'alice', { title: 'renamed' }, 'owndel');
    await change('o1', 'deleted', 3, 'alice', {}, 'owndel');
    await screen.findByText('deleted by alice');
    expect(deleted).toEqual(['alice']);
    expect(own).toEqual(['updated']);
  });
});

describe('notice, conflicts, unread count, status', () => {
  test('the notice goes by itself after autoDismissMs and Dismiss hides it', async () => {
    const client = makeClient('alice');
    const queryClient = newQueryClient();
    function Detail() {
      const live = useLiveEntity({ workspace: 'acme', type: 'notes', id: 'n1' });
      const notice = useRemoteChangeNotice(live.change, { autoDismissMs: 1500 });
      return <RemoteChangeNotice notice={notice} />;
    }
    wrap(client, queryClient, <Detail />);
    await waitFor(() => client.channelState('workspace:acme:notes:n1').state === 'subscribed');
    const status = screen.getByRole('status');
    await change('n1', 'updated', 2, 'bob', {}, 'notes');
    await rtlWaitFor(() => expect(status.textContent).toContain('Updated by bob'));
    const shown = Date.now();
    await rtlWaitFor(() => expect(status.textContent).toBe(''), { timeout: 5000 });
    expect(Date.now() - shown).toBeGreaterThan(1000);
    await change('n1', 'updated', 3, 'carol', {}, 'notes');
    await rtlWaitFor(() => expect(status.textContent).toContain('Updated by carol'));
    fireEvent.click(screen.getByRole('button', { name: 'Dismiss' }));
    expect(status.textContent).toBe('');
  });

  test('useConcurrentEdit with baseVersion: live change by another user, own ignored, stale data on refetch raises it too', async () => {
    const client = makeClient('alice');
    const queryClient = newQueryClient();
    let serverVersion = 1;
    function Form() {
      const q = useQuery({ queryKey: ['form'], queryFn: async () => ({ version: serverVersion }) });
      const [base] = useState(1); // the form was opened on version 1
      const edit = useConcurrentEdit<{ title: string }>(
        { workspace: 'acme', type: 'forms', id: 'f1' },
        { baseVersion: base, currentVersion: q.data?.version },
      );
      const title: string | undefined = edit.lastChange?.data?.title; // typed change data
      return (
        <div>
          <EditConflictBanner change={edit.changedByOther ? edit.lastChange : null} onRefresh={() => {}} onContinue={edit.reset} />
          <p data-testid="title">{title ?? '-'}</p>
          <button onClick={() => void q.refetch()}>refetch</button>
        </div>
      );
    }
    wrap(client, queryClient, <Form />);
    await waitFor(() => client.channelState('workspace:acme:forms:f1').state === 'subscribed');
    expect(screen.queryByRole('alert')).toBeNull();
    await change('f1', 'updated', 1, 'bob', { title: 'old' }, 'forms'); // not newer than the form: ignored
    await change('f1', 'updated', 2, 'alice', { title: 'mine' }, 'forms'); // own: ignored
    await change('f1', 'updated', 3, 'bob', { title: 'theirs' }, 'forms');
    const alert = await screen.findByRole('alert');
    expect(alert.textContent).toContain('Updated by bob (version 3)');
    expect(alert.getAttribute('data-seen')).toBe('live');
    expect(screen.getByTestId('title').textContent).toBe('theirs');
    fireEvent.click(screen.getByRole('button', { name: 'Continue editing' }));
    await rtlWaitFor(() => expect(screen.queryByRole('alert')).toBeNull());
    // A change nobody saw live (made during an outage): the refetched data is newer.
    serverVersion = 5;
    fireEvent.click(screen.getByText('refetch'));
    const stale = await screen.findByRole('alert');
    expect(stale.getAttribute('data-seen')).toBe('stale');
    expect(stale.textContent).toContain('version 5');
  });

  test('useConcurrentEdit raises a change that happened while disconnected, replayed by recovery', async () => {
    const client = makeClient('alice');
    const queryClient = newQueryClient();
    function Form() {
      const edit = useConcurrentEdit({ workspace: 'acme', type: 'forms', id: 'f2' }, { baseVersion: 4 });
      return <EditConflictBanner change={edit.changedByOther ? edit.lastChange : null} onRefresh={() => {}} onContinue={edit.reset} />;
    }
    wrap(client, queryClient, <Form />);
    await waitFor(() => client.channelState('workspace:acme:forms:f2').state === 'subscribed');
    act(() => client.disconnect());
    await change('f2', 'updated', 5, 'bob', {}, 'forms');
    act(() => client.connect());
    const alert = await screen.findByRole('alert');
    expect(alert.textContent).toContain('Updated by bob (version 5)');
  });

  test('useUnreadCount counts notification.new on the user channel, reset clears it', async () => {
    const client = makeClient('alice');
    const queryClient = newQueryClient();
    const bodies: unknown[] = [];
    function Badge() {
      const unread = useUnreadCount({ onEvent: (e) => bodies.push(e.data) });
      return (
        <button aria-label={`Notifications, ${unread.count} unread`} onClick={unread.reset}>
          {unread.count}
        </button>
      );
    }
    wrap(client, queryClient, <Badge />);
    await waitFor(() => client.channelState('user:alice').state === 'subscribed');
    await server.publish('user:alice', 'notification.new', { text: 'one' });
    await server.publish('user:alice', 'other.event', { text: 'ignored' });
    await server.publish('user:alice', 'notification.new', { text: 'two' });
    await screen.findByRole('button', { name: 'Notifications, 2 unread' });
    fireEvent.click(screen.getByRole('button'));
    await screen.findByRole('button', { name: 'Notifications, 0 unread' });
    expect(bodies).toEqual([{ text: 'one' }, { text: 'two' }]);
  });

  test('<DataUpdatedHint> shows after a change of its signal, then hides', async () => {
    function Page() {
      const [n, setN] = useState(0);
      return (
        <div>
          <DataUpdatedHint signal={n} durationMs={300} />
          <button onClick={() => setN((x) => x + 1)}>bump</button>
        </div>
      );
    }
    render(<Page />);
    expect(screen.getByRole('status').textContent).toBe('');
    fireEvent.click(screen.getByText('bump'));
    expect(screen.getByRole('status').textContent).toBe('Data updated');
    await rtlWaitFor(() => expect(screen.getByRole('status').textContent).toBe(''));
  });

  test('<ConnectionStatus showAttempt> counts attempts from 1; failed shows Retry', async () => {
    const own = (await startServer()) as Server;
    const client = new TidingsClient({
      url: own.url,
      WebSocket: WebSocket as unknown as TidingsClientOptions['WebSocket'],
      getToken: async () => own.token({}),
      reconnect: { minDelay: 400, maxDelay: 400, maxAttempts: 2 },
      watchNetwork: false,
    });
    clients.push(client);
    render(
      <TidingsProvider client={client}>
        <ConnectionStatus showAttempt />
      </TidingsProvider>,
    );
    const status = screen.getByRole('status');
    await rtlWaitFor(() => expect(status.getAttribute('data-status')).toBe('connected'));
    await own.stop();
    await rtlWaitFor(() => expect(status.textContent).toBe('Reconnecting… (attempt 1)'));
    await rtlWaitFor(() => expect(status.getAttribute('data-status')).toBe('failed'), { timeout: 10_000 });
    expect(screen.getByRole('button', { name: 'Retry' })).toBeTruthy();
  });
});

describe('after a failed recovery', () => {
  test('useLiveList and the bridge update keys refetch; useLiveEntity/useConcurrentEdit call onResync', async () => {
    const own = (await startServer()) as Server;
    const { port, secret, apiKey } = own;
    const client = makeClient('alice', ['websocket'], own.url, own);
    const queryClient = newQueryClient();
    let listFetches = 0;
    let detailFetches = 0;
    let resyncs = 0;
    function Page() {
      useLiveList<Item>({ workspace: 'acme', type: 'tasks', queryKey: ['tasks'] });
      useTidingsQueryBridge<{ 'tasks.updated': Item }>([
        {
          channel: 'workspace:acme:tasks:t1',
          events: 'tasks.updated',
          update: [{ queryKey: ['task', 't1'], updater: (old: Item | undefined, e) => (old ? { ...old, title: e.data.title } : old) }],
        },
      ]);
      useLiveEntity({ workspace: 'acme', type: 'tasks', id: 't1' }, { onResync: () => (resyncs += 1) });
      useConcurrentEdit({ workspace: 'acme', type: 'tasks', id: 't2' }, { onResync: () => (resyncs += 1) });
      const list = useQuery({ queryKey: ['tasks'], queryFn: async () => (++listFetches, [] as Item[]) });
      const one = useQuery({ queryKey: ['task', 't1'], queryFn: async () => (++detailFetches, { id: 't1', title: 'x' }) });
      return <p>{`list:${listFetches} detail:${detailFetches} ${list.isFetching || one.isFetching ? 'busy' : 'idle'}`}</p>;
    }
    wrap(client, queryClient, <Page />);
    await screen.findByText('list:1 detail:1 idle');
    await waitFor(() => client.channelState('workspace:acme:tasks:t2').state === 'subscribed');
    await own.stop();
    const back = (await startServer({ port, secret, apiKey })) as Server;
    try {
      await screen.findByText('list:2 detail:2 idle', undefined, { timeout: 15_000 });
      await rtlWaitFor(() => expect(resyncs).toBe(2));
    } finally {
      await act(async () => {
        client.close();
      });
      await back.stop();
    }
  });
});
