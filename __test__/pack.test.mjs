import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

import { assert, describe, it } from './support/framework.mjs';

const root = fileURLToPath(new URL('..', import.meta.url));
const require = createRequire(import.meta.url);
const bunBinary = path.join(path.dirname(require.resolve('bun/package.json')), 'bin', 'bun.exe');
const nodeBinary = spawnSync('sh', ['-c', 'command -v node'], { encoding: 'utf8' }).stdout.trim();

// Loads the installed package and starts and stops a real server with it.
const smoke = kind => `
${kind === 'cjs' ? "const { WebSocketServerHelper } = require('ignis-native-ws');" : "import { WebSocketServerHelper } from 'ignis-native-ws';"}
const helper = new WebSocketServerHelper({ identifier: 'pack', redisConnection: 'standalone', host: '127.0.0.1', port: 0,
  authenticateFn: () => null, logger: {} });
await helper.configure();
console.log('listening', helper.getPort() > 0);
await helper.shutdown();
`;

describe('npm pack', () => {
  it('installs with npm install and bun add into empty directories; require and import work on both runtimes', () => {
    const work = fs.mkdtempSync(path.join(os.tmpdir(), 'ignis-native-ws-pack-'));
    try {
      const packed = execFileSync('npm', ['pack', '--silent', '--pack-destination', work], { cwd: root, encoding: 'utf8' });
      const tarball = path.join(work, packed.trim().split('\n').at(-1));
      for (const [installer, args] of [
        ['npm', ['install', '--no-audit', '--no-fund', '--silent', tarball]],
        [bunBinary, ['add', tarball]],
      ]) {
        const dir = fs.mkdtempSync(path.join(work, 'app-'));
        fs.writeFileSync(path.join(dir, 'package.json'), '{"name":"app","version":"1.0.0","private":true}');
        execFileSync(installer, args, { cwd: dir, stdio: 'pipe' });
        fs.writeFileSync(path.join(dir, 'cjs.cjs'), `(async () => {${smoke('cjs')}})();`);
        fs.writeFileSync(path.join(dir, 'esm.mjs'), smoke('esm'));
        for (const runtime of [nodeBinary, bunBinary]) {
          for (const file of ['cjs.cjs', 'esm.mjs']) {
            const result = spawnSync(runtime, [file], { cwd: dir, encoding: 'utf8', timeout: 20_000 });
            assert.equal(result.stdout.trim(), 'listening true', `${path.basename(installer)} / ${runtime} / ${file}: ${result.stderr}`);
            assert.equal(result.status, 0);
          }
        }
      }
    } finally {
      fs.rmSync(work, { recursive: true, force: true });
    }
  });
});
