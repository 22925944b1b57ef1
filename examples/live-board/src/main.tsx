import { StrictMode } from 'react';
import { createRoot } from 'react-dom/client';
import { QueryClient, QueryClientProvider } from '@tanstack/react-query';
import { TidingsClient } from '@tidings/client';
import { TidingsProvider } from '@tidings/react';
import '@tidings/react/styles.css';
import './app.css';
import { App } from './App';
import { api, type Session } from './api';

// The demo has no login: ?user=alice|bob (workspace acme) or carol (globex).
const user = new URLSearchParams(location.search).get('user') ?? 'alice';
const session = await api<Session>(user, 'GET', '/api/session');
const tidings = new TidingsClient({
  url: session.tidingsUrl,
  getToken: async () => (await api<Session>(user, 'GET', '/api/session')).token,
  shareAcrossTabs: true, // one connection for all tabs of this user
  tabChannelName: `live-board:${user}`,
  reconnect: { minDelay: 500, maxDelay: 3000, maxAttempts: 50 },
});
const queryClient = new QueryClient({ defaultOptions: { queries: { staleTime: Infinity, retry: false } } });

createRoot(document.getElementById('root')!).render(
  <StrictMode>
    <QueryClientProvider client={queryClient}>
      <TidingsProvider client={tidings}>
        <App session={session} />
      </TidingsProvider>
    </QueryClientProvider>
  </StrictMode>,
);
