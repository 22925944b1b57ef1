// `npm pack` of each package gives an installable tarball holding only dist/,
// the type declarations, README, LICENSE (and the stylesheet), with `exports`
// checked by publint.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const npm = (args, cwd = root) => execFileSync('npm', args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
let dir;
let packed;

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'tidings-pack-'));
  packed = JSON.parse(npm(['pack', '--json', '--pack-destination', dir, '-w', 'packages/client', '-w', 'packages/react']));
});
after(() => rmSync(dir, { recursive: true, force: true }));

test('the tarballs hold only dist/ (JS, declarations, maps), README, LICENSE and package.json', () => {
  assert.deepEqual(packed.map((p) => p.name), ['@tidings/client', '@tidings/react']);
  for (const pkg of packed) {
    const paths = pkg.files.map((f) => f.path);
    for (const path of ['package.json', 'README.md', 'LICENSE', 'dist/index.js', 'dist/index.d.ts']) {
      assert.ok(paths.includes(path), `${pkg.name} lacks ${path}`);
    }
    const extra = paths.filter(
      (p) => !['package.json', 'README.md', 'LICENSE', 'styles.css'].includes(p) && !/^dist\/.+\.(js|d\.ts|js\.map)$/.test(p),
    );
    assert.deepEqual(extra, [], `${pkg.name} ships more than dist/`);
  }
  assert.ok(packed[1].files.some((f) => f.path === 'styles.css'), '@tidings/react ships styles.css');
});

test('installed from the tarballs, the packages resolve through their exports', () => {
  const app = join(dir, 'app');
  mkdirSync(app);
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module' }));
  const tarballs = packed.map((p) => join(dir, p.filename));
  // Peers (react, TanStack Query) are the app's business: not installed here.
  npm(['install', '--no-audit', '--no-fund', '--offline', '--legacy-peer-deps', ...tarballs], app);
  const check = `
    const { TidingsClient, isOwnChange } = await import('@tidings/client');
    if (typeof TidingsClient !== 'function' || typeof isOwnChange !== 'function') process.exit(2);
    for (const spec of ['@tidings/react', '@tidings/react/query', '@tidings/react/styles.css']) import.meta.resolve(spec);
    console.log('ok');`;
  const out = execFileSync(process.execPath, ['--input-type=module', '-e', check], { cwd: app, encoding: 'utf8' });
  assert.equal(out.trim(), 'ok');
});

test('publint finds nothing to complain about in either package', () => {
  for (const pkg of ['packages/client', 'packages/react']) {
    const out = execFileSync(process.execPath, [join(root, 'node_modules/publint/src/cli.js'), '--strict', pkg], {
      cwd: root,
      encoding: 'utf8',
    });
    assert.match(out, /All good!/, out);
  }
});
