import { createContext, useContext } from 'react';
import type { TidingsClient } from '@tidings/client';

export const TidingsContext = createContext<TidingsClient | null>(null);

/** The client of the nearest `<TidingsProvider>`. */
export function useTidings(): TidingsClient {
  const client = useContext(TidingsContext);
  if (!client) throw new Error('useTidings: wrap the component in <TidingsProvider>');
  return client;
}
