import { spawn } from 'node:child_process';
import net from 'node:net';
import { fileURLToPath } from 'node:url';

import { assert, describe, it, runtime } from './support/framework.mjs';
import { TestClient, authenticatedClient, sleep, startServer, waitUntil } from './support/helpers.mjs';

const fixture = name => fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url));
const runtimeArgs = runtime === 'node' ? ['--expose-gc'] : [];

function run(name) {
  const child = spawn(process.execPath, [...runtimeArgs, fixture(name)], { stdio: ['ignore', 'pipe', 'pipe'] });
  child.output = '';
  child.stdout.on('data', chunk => (child.output += chunk));
  child.stderr.on('data', chunk => (child.output += chunk));
  child.exited = new Promise(resolve => child.on('exit', (code, signal) => resolve({ code, signal })));
  return child;
}

describe('shutdown and process lifetime', () => {
  it('closes every client with 1001, runs disconnect callbacks, clears indexes, frees the port', async () => {
    const disconnected = [];
    const server = await startServer({ clientDisconnectedFn: opts => void disconnected.push(opts) });
    const a = await authenticatedClient(server, { token: 't', userId: 'alice' });
    const b = await authenticatedClient(server, { token: 't', userId: 'bob' });
    const pending = await TestClient.open(server.url);
    await server.shutdown();
    for (const client of [a, b, pending]) {
      assert.deepEqual(await client.waitClosed(), { code: 1001, reason: 'Server shutting down' });
    }
    assert.equal(disconnected.length, 3, 'callbacks ran before shutdown() resolved');
    assert.deepEqual(
      disconnected.filter(d => d.userId).map(d => d.userId).sort(),
      ['alice', 'bob'],
    );
    assert.equal(server.getClients().size, 0);
    assert.deepEqual(server.getClientsByRoom({ room: 'ws-default' }), []);
    const refused = await new Promise(resolve => {
      const socket = net.connect(server.getPort(), '127.0.0.1');
      socket.on('connect', () => {
        socket.destroy();
        resolve(false);
      });
      socket.on('error', () => resolve(true));
    });
    assert.ok(refused, 'the listener is closed');
    await server.shutdown();
  });

  it('lets a process with nothing else to do exit by itself after shutdown()', async () => {
    const child = run('exit-after-shutdown.js');
    const result = await Promise.race([child.exited, sleep(10_000).then(() => 'still running')]);
    if (result === 'still running') {
      child.kill('SIGKILL');
    }
    assert.deepEqual(result, { code: 0, signal: null }, child.output);
    assert.match(child.output, /disconnected\n/);
    assert.match(child.output, /close code 1001\n/);
    assert.match(child.output, /shutdown complete\n/);
  });

  it('keeps serving while listening, even when the helper object is garbage-collected', async () => {
    const child = run('unreferenced-server.js');
    try {
      await waitUntil(() => /port \d+/.test(child.output), 10_000, 'the child to listen');
      const port = Number(child.output.match(/port (\d+)/)[1]);
      await sleep(1500);
      const client = await TestClient.open(`ws://127.0.0.1:${port}/ws`);
      const connected = await client.authenticate({ user: 'gc' });
      assert.equal(connected.data.userId, 'gc');
      client.send({ event: 'ping', data: 42 });
      assert.equal((await client.next('echo')).data, 42);
      client.close();
      const state = await Promise.race([child.exited, sleep(300).then(() => 'alive')]);
      assert.equal(state, 'alive', child.output);
    } finally {
      child.kill();
    }
  });
});
