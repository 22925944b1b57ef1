import { useEffect, useRef, useState, type FormEvent } from 'react';
import { useQuery } from '@tanstack/react-query';
import {
  ConnectionStatus,
  DataUpdatedHint,
  EditConflictBanner,
  RemoteChangeNotice,
  playNotificationSound,
  requestNotificationPermission,
  showBrowserNotification,
  useConcurrentEdit,
  useLiveEntity,
  useRemoteChangeNotice,
  useUnreadCount,
} from '@tidings/react';
import { useLiveList } from '@tidings/react/query';
import { api, type Item, type Session } from './api';

function useHashRoute(): string {
  const [hash, setHash] = useState(location.hash);
  useEffect(() => {
    const update = () => setHash(location.hash);
    addEventListener('hashchange', update);
    return () => removeEventListener('hashchange', update);
  }, []);
  return hash.replace(/^#/, '') || '/';
}

export function App({ session }: { session: Session }) {
  const route = useHashRoute();
  const id = /^\/items\/(.+)$/.exec(route)?.[1];
  // Mounted in the shell, so the cached list stays right while a detail page is open.
  const [arrived, setArrived] = useState<string | null>(null);
  const [updates, setUpdates] = useState(0);
  useLiveList<Item>({
    workspace: session.workspace,
    type: 'items',
    queryKey: ['items'],
    onArrive: (item, { own }) => !own && setArrived(item.title),
    onChange: () => setUpdates((n) => n + 1),
  });
  return (
    <>
      <header>
        <strong>Live board</strong>
        <span data-testid="who">
          {session.user} · {session.workspace}
        </span>
        <Badge />
        <ConnectionStatus showAttempt />
      </header>
      <main>{id ? <Detail key={id} session={session} id={id} /> : <List session={session} arrived={arrived} updates={updates} />}</main>
    </>
  );
}

function Badge() {
  // Sound and browser notifications are off until the user turns them on.
  const [prefs, setPrefs] = useState({ sound: false, notify: false });
  const unread = useUnreadCount({
    onEvent: (e) => {
      const text = (e.data as { text: string }).text;
      void playNotificationSound(prefs.sound);
      showBrowserNotification(prefs.notify, 'Live board', { body: text });
    },
  });
  return (
    <span className="badge-box">
      <button type="button" data-testid="badge" aria-label={`Notifications: ${unread.count} unread`} onClick={unread.reset}>
        Inbox {unread.count}
      </button>
      <label>
        <input type="checkbox" checked={prefs.sound} onChange={(e) => setPrefs({ ...prefs, sound: e.target.checked })} /> sound
      </label>
      <label>
        <input
          type="checkbox"
          checked={prefs.notify}
          onChange={(e) => {
            if (e.target.checked) void requestNotificationPermission();
            setPrefs({ ...prefs, notify: e.target.checked });
          }}
        />{' '}
        notifications
      </label>
    </span>
  );
}

function List({ session, arrived, updates }: { session: Session; arrived: string | null; updates: number }) {
  const items = useQuery({ queryKey: ['items'], queryFn: () => api<Item[]>(session.user, 'GET', '/api/items') });
  const [title, setTitle] = useState('');
  const add = async (e: FormEvent) => {
    e.preventDefault();
    await api(session.user, 'POST', '/api/items', { title });
    setTitle('');
  };
  const [flash] = useState(() => sessionStorage.getItem('flash'));
  useEffect(() => sessionStorage.removeItem('flash'), []);
  return (
    <section>
      {flash ? <p className="flash" role="status">{flash}</p> : null}
      <p className="arrived" role="status" aria-live="polite" data-testid="arrived">
        {arrived ? `New item: ${arrived}` : ''}
      </p>
      <h1>
        Items <DataUpdatedHint signal={updates} />
      </h1>
      <form onSubmit={add}>
        <input aria-label="New item title" value={title} onChange={(e) => setTitle(e.target.value)} required />
        <button type="submit">Add</button>
      </form>
      <ul data-testid="items">
        {(items.data ?? []).map((item) => (
          <li key={item.id} data-id={item.id}>
            <a href={`#/items/${item.id}`}>{item.title}</a> <small>v{item.version}</small>
          </li>
        ))}
      </ul>
    </section>
  );
}

function Detail({ session, id }: { session: Session; id: string }) {
  const item = useQuery({ queryKey: ['item', id], queryFn: () => api<Item>(session.user, 'GET', `/api/items/${id}`) });
  const refetch = () => item.refetch();
  const [gone, setGone] = useState<string | null>(null);
  // This tab's own Delete goes back to the list by itself.
  const deletingHere = useRef(false);
  const live = useLiveEntity<Item>(
    { workspace: session.workspace, type: 'items', id },
    {
      onDeleted: (c) => {
        if (deletingHere.current) return;
        const by = c.actor === session.user ? 'you, in another tab' : c.actor;
        setGone(`“${item.data?.title}” was deleted by ${by}.`);
        sessionStorage.setItem('flash', `“${item.data?.title}” was deleted by ${by}.`);
        setTimeout(() => (location.hash = '#/'), 1500);
      },
      onOwnChange: () => void refetch(), // saved in another tab of mine: no notice, fresh data
      onResync: () => void refetch(),
    },
  );
  const [editing, setEditing] = useState<{ base: number; title: string } | null>(null);
  const notice = useRemoteChangeNotice(editing ? null : live.change, { onRefresh: () => void refetch() });
  const edit = useConcurrentEdit<Item>(
    { workspace: session.workspace, type: 'items', id },
    { baseVersion: editing?.base, currentVersion: item.data?.version, currentActor: item.data?.updatedBy, enabled: editing !== null },
  );
  if (gone) return <p className="flash" role="alert">{gone} Back to the list…</p>;
  if (!item.data) return <p>Loading…</p>;
  const data = item.data;
  const save = async (e: FormEvent) => {
    e.preventDefault();
    await api(session.user, 'PUT', `/api/items/${id}`, { title: editing?.title });
    setEditing(null);
    await refetch();
  };
  const reload = async () => {
    const fresh = (await refetch()).data;
    if (fresh) setEditing({ base: fresh.version, title: fresh.title });
    edit.reset();
  };
  return (
    <section>
      <a href="#/">← Items</a>
      <RemoteChangeNotice notice={notice} />
      <h1 data-testid="title">{data.title}</h1>
      <p data-testid="meta">
        version {data.version}, last changed by {data.updatedBy}
      </p>
      {editing ? (
        <form onSubmit={save}>
          <EditConflictBanner change={edit.changedByOther ? edit.lastChange : null} onRefresh={() => void reload()} onContinue={edit.reset} />
          <input aria-label="Title" value={editing.title} onChange={(e) => setEditing({ ...editing, title: e.target.value })} />
          <button type="submit">Save</button>
          <button type="button" onClick={() => setEditing(null)}>
            Cancel
          </button>
        </form>
      ) : (
        <p>
          <button type="button" onClick={() => setEditing({ base: data.version, title: data.title })}>
            Edit
          </button>{' '}
          <button
            type="button"
            onClick={() => {
              deletingHere.current = true;
              void api(session.user, 'DELETE', `/api/items/${id}`).then(
                () => (location.hash = '#/'),
                () => (deletingHere.current = false), // not deleted: a later deletion still counts
              );
            }}
          >
            Delete
          </button>
        </p>
      )}
    </section>
  );
}
