// The Tidings client as a NestJS-style provider: one instance for the app,
// configured from the environment. In a Nest app this class carries
// `@Injectable()` and is listed in a module's `providers`.
import { Tidings } from '@tidings/server';

export class TidingsProvider extends Tidings {
  constructor(env: NodeJS.ProcessEnv = process.env) {
    super({
      url: env.TIDINGS_URL ?? 'http://127.0.0.1:8000',
      apiKey: env.TIDINGS_API_KEY ?? '',
      timeoutMs: 5_000,
      retries: 3,
    });
  }
}
