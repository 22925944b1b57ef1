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
