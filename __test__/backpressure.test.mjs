import net from 'node:net';

import { after, assert, describe, it } from './support/framework.mjs';
import { clientFrame, startServer, upgradeRequest, waitUntil } from './support/helpers.mjs';

/** A raw client that authenticates and then stops reading from its socket. */
async function stalledClient(port) {
  const socket = net.connect(port, '127.0.0.1');
  let received = Buffer.alloc(0);
  socket.on('data', chunk => (received = Buffer.concat([received, chunk])));
  await new Promise(resolve => socket.on('connect', resolve));
  socket.write(Buffer.concat([
    Buffer.from(upgradeRequest()),
    clientFrame(0x81, JSON.stringify({ event: 'authenticate', data: { token: 't' } })),
  ]));
  await waitUntil(() => received.includes('"event":"connected"'));
  const id = received.toString('latin1').match(/"id":"([0-9a-f-]{36})"/)[1];
  socket.pause();
  return { socket, id, bytes: () => received.length };
}

describe('backpressure', () => {
  let server;
  after(async () => {
    await server?.shutdown();
  });

  it('sets backpressured while a client is over backpressureLimit, drops beyond it, clears on drain', async () => {
    server = await startServer({ serverOptions: { backpressureLimit: 64 * 1024 } });
    const client = await stalledClient(server.getPort());
    const chunk = JSON.stringify({ event: 'bulk', data: 'x'.repeat(64 * 1024) });
    const { socket } = server.getClients({ id: client.id });
    // Keep sending until the kernel buffers are full and the queue refuses frame after
    // frame; the iteration bound is far above what loopback buffers hold.
    const results = [];
    const refusing = () => results.length >= 10 && results.slice(-10).every(result => result === 0);
    for (let i = 0; i < 5000 && !refusing(); i++) {
      results.push(socket.send(chunk));
      await new Promise(resolve => setImmediate(resolve));
    }
    assert.ok(results.includes(0), 'frames beyond the limit are dropped');
    assert.ok(results.includes(-1), 'a frame was queued under backpressure first');
    assert.equal(server.getClients({ id: client.id }).backpressured, true);
    client.socket.resume();
    await waitUntil(() => !server.getClients({ id: client.id }).backpressured, 10_000, 'backpressure to clear');
    assert.ok(socket.send('{"event":"after"}') > 0);
    client.socket.destroy();
  });

  it('closes the client instead with closeOnBackpressureLimit', async () => {
    await server?.shutdown();
    server = await startServer({
      serverOptions: { backpressureLimit: 64 * 1024, closeOnBackpressureLimit: true },
    });
    const client = await stalledClient(server.getPort());
    const chunk = 'x'.repeat(64 * 1024);
    for (let i = 0; i < 400 && server.getClients({ id: client.id }); i++) {
      server.sendToClient({ clientId: client.id, event: 'bulk', data: chunk });
      await new Promise(resolve => setImmediate(resolve));
    }
    client.socket.resume();
    await waitUntil(() => !server.getClients({ id: client.id }), 10_000, 'the client to be closed');
    client.socket.destroy();
  });
});
