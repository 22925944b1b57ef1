// The service: write first, then tell every browser that may see it.
import type { Tidings } from '@tidings/server';
import type { Application, ApplicationsRepository } from './applications.repository.js';

export class ApplicationsService {
  constructor(
    private readonly repository: ApplicationsRepository,
    private readonly tidings: Tidings,
  ) {}

  /**
   * Approves an application. `clientId` is the `X-Tidings-Client` the browser
   * sent with its request: that tab already shows the change, so it is left out.
   */
  async approve(id: string, actor: string, clientId?: string): Promise<Application> {
    const application = await this.repository.setStatus(id, 'approved');
    // After the write has committed. The key makes the client's retries safe:
    // the server publishes the event once however often it is sent.
    await this.tidings.entityEvent({
      workspace: application.workspace,
      entity: { type: 'applications', id, version: application.version },
      action: 'approved',
      data: { status: application.status },
      actor,
      excludeClient: clientId,
      idempotencyKey: `applications:${id}:v${application.version}`,
    });
    return application;
  }
}
