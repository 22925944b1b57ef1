// The repository: where the write happens (a database in a real app).
export interface Application {
  id: string;
  workspace: string;
  status: 'submitted' | 'approved' | 'rejected';
  version: number;
}

export class ApplicationsRepository {
  readonly #rows = new Map<string, Application>();

  async insert(row: Application): Promise<Application> {
    this.#rows.set(row.id, { ...row });
    return { ...row };
  }

  async setStatus(id: string, status: Application['status']): Promise<Application> {
    const row = this.#rows.get(id);
    if (!row) throw new Error(`no application ${id}`);
    const updated = { ...row, status, version: row.version + 1 };
    this.#rows.set(id, updated);
    return { ...updated };
  }
}
