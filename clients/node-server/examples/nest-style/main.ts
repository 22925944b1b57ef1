// Wires the providers as a Nest module would, approves one application and
// prints the result. Run: TIDINGS_URL=… TIDINGS_API_KEY=… node examples/dist/nest-style/main.js
import { ApplicationsRepository } from './applications.repository.js';
import { ApplicationsService } from './applications.service.js';
import { TidingsProvider } from './tidings.provider.js';

const repository = new ApplicationsRepository();
const service = new ApplicationsService(repository, new TidingsProvider());

await repository.insert({ id: 'app123', workspace: 'acme', status: 'submitted', version: 1 });
const approved = await service.approve('app123', 'u7');
console.log(JSON.stringify(approved));
