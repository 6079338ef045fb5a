import { assert, describe, it } from './support/framework.mjs';
import { rawAuthenticatedClient, serverPool, sleep, TestClient, waitUntil } from './support/helpers.mjs';

describe('idleTimeout and sendPings', () => {
  const start = serverPool();

  it('closes a connection that sends nothing for idleTimeout seconds with 1001, and logs it', async () => {
    const server = await start({ serverOptions: { idleTimeout: 1, sendPings: false } });
    const silent = await TestClient.open(server.url);
    await silent.authenticate();
    const pings = [];
    silent.ws.on('ping', () => pings.push(Date.now()));
    const chatty = await TestClient.open(server.url);
    await chatty.authenticate();
    const opened = Date.now();
    // Any message counts as traffic: this one keeps talking.
    const timer = setInterval(() => chatty.send({ event: 'heartbeat' }), 300);
    try {
      const closed = await silent.waitClosed(4000);
      assert.equal(closed.code, 1001);
      assert.equal(closed.reason, 'Idle timeout');
      const after = Date.now() - opened;
      assert.ok(after >= 800 && after < 3500, `closed after ${after} ms`);
      assert.equal(pings.length, 0, 'no pings without sendPings');
      await server.log.waitFor('info', 'Idle timeout');
      await sleep(800);
      assert.equal(chatty.ws.readyState, 1, 'the talking client is still open');
    } finally {
      clearInterval(timer);
    }
    await chatty.close();
  });

  it('with sendPings, pings silent connections: a client that answers stays, one that does not is closed', async () => {
    const server = await start({ serverOptions: { idleTimeout: 1, sendPings: true } });
    // ws answers every ping with a pong by itself, as browsers do.
    const live = await TestClient.open(server.url);
    await live.authenticate();
    const pings = [];
    live.ws.on('ping', () => pings.push(Date.now()));
    // Authenticates, then never answers anything (no pongs).
    const deaf = await rawAuthenticatedClient(server.getPort());
    await waitUntil(() => deaf.ended(), 5000, 'the deaf client to be closed');
    const frames = deaf.frames();
    assert.ok(frames.some(frame => frame.opcode === 9), 'it was pinged first');
    assert.equal(frames.find(frame => frame.opcode === 8)?.code, 1001);
    await sleep(1500);
    assert.equal(live.ws.readyState, 1);
    assert.ok(pings.length >= 2, `${pings.length} pings`);
    await live.close();
  });

  it('keeps idle connections with idleTimeout 0', async () => {
    const server = await start({ serverOptions: { idleTimeout: 0 } });
    const client = await TestClient.open(server.url);
    await client.authenticate();
    await sleep(1200);
    assert.equal(client.ws.readyState, 1);
    await client.close();
  });
});
