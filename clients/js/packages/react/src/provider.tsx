import { useEffect, useState, type ReactNode } from 'react';
import { TidingsClient, type TidingsClientOptions } from '@tidings/client';
import { TidingsContext } from './context.js';

export type TidingsProviderProps =
  | { client: TidingsClient; options?: never; children?: ReactNode }
  | { options: TidingsClientOptions; client?: never; children?: ReactNode };

/**
 * Makes a client available to the hooks. Pass a `client` you own, or `options`
 * (the provider then creates the client on mount and closes it on unmount;
 * `options` are read once).
 */
export function TidingsProvider(props: TidingsProviderProps): ReactNode {
  const [owned] = useState<TidingsClient | null>(() => (props.client ? null : new TidingsClient(props.options as TidingsClientOptions)));
  useEffect(() => {
    if (!owned) return undefined;
    return () => owned.close();
  }, [owned]);
  const client = props.client ?? owned;
  return <TidingsContext.Provider value={client}>{props.children}</TidingsContext.Provider>;
}
