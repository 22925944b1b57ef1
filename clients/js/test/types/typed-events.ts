// Compile-time checks of the public types (`npm run build` type-checks this file).
import { TidingsClient, type TypedEvent } from '@tidings/client';

interface AppEvents {
  'applications.updated': { id: string; name: string };
  'applications.deleted': { id: string };
}

declare const client: TidingsClient;

client.subscribe<AppEvents>('workspace:acme:applications', (e) => {
  if (e.event === 'applications.updated') {
    const name: string = e.data.name;
    void name;
  } else {
    const id: string = e.data.id;
    // @ts-expect-error `name` only exists on applications.updated
    void e.data.name;
    void id;
  }
});

type Updated = Extract<TypedEvent<AppEvents>, { event: 'applications.updated' }>;
const check: Updated['data'] = { id: 'a', name: 'b' };
void check;

// clientId is a string once connected, null before.
const id: string | null = client.clientId;
void id;

// ---- @tidings/react: the bridge narrows by a single event name; change data is typed ----
import { useTidingsQueryBridge } from '@tidings/react/query';
import { useConcurrentEdit } from '@tidings/react';

interface Application {
  id: string;
  name: string;
}
export function BridgeTypes(): void {
  useTidingsQueryBridge<AppEvents>([
    {
      channel: 'workspace:acme:applications',
      events: 'applications.updated',
      update: [
        {
          queryKey: ['applications'],
          // `old` is annotated with the cached type; `e` is narrowed to applications.updated.
          updater: (old: Application[] | undefined, e) => old?.map((a) => (a.id === e.data.id ? { ...a, name: e.data.name } : a)),
        },
      ],
    },
    {
      channel: 'workspace:acme:applications',
      events: 'applications.deleted',
      // @ts-expect-error applications.deleted has no `name`
      invalidate: (e) => [['applications', e.data.name]],
    },
    // @ts-expect-error not an event of AppEvents
    { channel: 'workspace:acme:applications', events: 'applications.renamed' },
  ]);
  const edit = useConcurrentEdit<Application>({ workspace: 'acme', type: 'applications', id: 'a1' });
  const name: string | undefined = edit.lastChange?.data.name;
  void name;
}
