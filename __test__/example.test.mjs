import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

import { assert, describe, it } from './support/framework.mjs';
import { TestClient, waitUntil } from './support/helpers.mjs';

describe('example chat', () => {
  it('starts, prints its URLs, serves its page, and relays chat between two users', async () => {
    const script = fileURLToPath(new URL('../examples/chat/server.js', import.meta.url));
    const child = spawn(process.execPath, [script], {
      env: { ...process.env, WS_PORT: '0', HTTP_PORT: '0' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', chunk => (output += chunk));
    child.stderr.on('data', chunk => (output += chunk));
    const exited = new Promise(resolve => child.on('exit', resolve));
    try {
      await waitUntil(() => /chat page:/.test(output), 10_000, 'the example to start');
      const wsUrl = output.match(/chat WebSocket: (\S+)/)[1];
      const pageUrl = output.match(/chat page:\s+(\S+)/)[1];
      const page = await (await fetch(pageUrl)).text();
      assert.ok(page.includes(wsUrl), 'the page points at the WebSocket URL');
      const ada = await TestClient.open(wsUrl);
      await ada.authenticate({ name: 'ada' });
      const bob = await TestClient.open(wsUrl);
      await bob.authenticate({ name: 'bob' });
      assert.deepEqual((await ada.next('presence', 3000)).data, { user: 'ada', online: true });
      bob.send({ event: 'say', data: { text: 'hello ada' } });
      const said = await ada.next('said');
      assert.equal(said.data.user, 'bob');
      assert.equal(said.data.text, 'hello ada');
      ada.close();
      bob.close();
      child.kill('SIGTERM');
      assert.equal(await exited, 0, output);
    } finally {
      child.kill('SIGKILL');
    }
  });
});
