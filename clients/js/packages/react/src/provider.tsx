import { useEffect, useLayoutEffect, useState, type ReactNode } from 'react';
import { TidingsClient, type TidingsClientOptions } from '@tidings/client';
import { TidingsContext } from './context.js';

export type TidingsProviderProps =
  | { client: TidingsClient; options?: never; children?: ReactNode }
  | { options: TidingsClientOptions; client?: never; children?: ReactNode };

// Layout effect in the browser (the client starts before the first paint), plain effect on the server.
const useIsomorphicLayoutEffect = typeof document !== 'undefined' ? useLayoutEffect : useEffect;

/** Owned clients whose provider's effect was cleaned up: closed unless it runs again first. */
const closing = new Set<TidingsClient>();

function scheduleClose(client: TidingsClient): void {
  closing.add(client);
  queueMicrotask(() => {
    if (closing.delete(client)) client.close();
  });
}

/**
 * Makes a client available to the hooks. Pass a `client` you own, or `options`
 * (the provider then creates the client and closes it on unmount; `options`
 * are read once).
 *
 * The owned client is created while rendering without side effects
 * (`TidingsClient.deferred`) and started in an effect, so a render React
 * discards (StrictMode calls state initializers twice) leaves nothing open.
 * The close on unmount is deferred to a microtask and cancelled when the effect
 * runs again at once, as StrictMode does in development (mount, unmount,
 * mount): the provider keeps one live client.
 */
export function TidingsProvider(props: TidingsProviderProps): ReactNode {
  const [owned] = useState<TidingsClient | null>(() =>
    props.client ? null : TidingsClient.deferred(props.options as TidingsClientOptions),
  );
  useIsomorphicLayoutEffect(() => {
    if (!owned) return undefined;
    closing.delete(owned);
    owned.start();
    return () => scheduleClose(owned);
  }, [owned]);
  const client = props.client ?? owned;
  return <TidingsContext.Provider value={client}>{props.children}</TidingsContext.Provider>;
}
