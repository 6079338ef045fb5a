import { assert, describe, it } from './support/framework.mjs';
import { TestClient, authenticatedClient, sleep, serverPool, waitUntil } from './support/helpers.mjs';

describe('heartbeat', () => {
  const start = serverPool();

  it('closes authenticated clients silent for longer than heartbeatTimeout with 4002, and logs it', async () => {
    const disconnected = [];
    const server = await start({
      heartbeatInterval: 50,
      heartbeatTimeout: 200,
      clientDisconnectedFn: opts => void disconnected.push(opts),
    });
    const silent = await authenticatedClient(server, { token: 't', userId: 'quiet' });
    const started = Date.now();
    assert.deepEqual(await silent.waitClosed(), { code: 4002, reason: 'Heartbeat timeout' });
    assert.ok(Date.now() - started >= 150);
    await server.log.waitFor('warn', `Heartbeat timeout | id: ${silent.id}`);
    await waitUntil(() => disconnected.length === 1);
    assert.deepEqual(disconnected, [{ clientId: silent.id, userId: 'quiet' }]);
  });

  it('keeps clients that send heartbeats (or any message)', async () => {
    const server = await start({ heartbeatInterval: 50, heartbeatTimeout: 200 });
    const beating = await authenticatedClient(server);
    const chatty = await authenticatedClient(server);
    const timer = setInterval(() => {
      beating.send({ event: 'heartbeat' });
      chatty.send({ event: 'anything' });
    }, 60);
    await sleep(500);
    clearInterval(timer);
    assert.equal(server.getClients().size, 2);
    beating.close();
    chatty.close();
  });

  it('leaves unauthenticated clients to the auth timer', async () => {
    const server = await start({ heartbeatInterval: 30, heartbeatTimeout: 50, authTimeout: 400 });
    const client = await TestClient.open(server.url);
    await sleep(200);
    assert.equal(server.getClients().size, 1, 'not closed by the heartbeat sweep');
    assert.equal((await client.waitClosed()).code, 4001);
  });
});
