import { after, assert, describe, it } from './support/framework.mjs';
import { authenticatedClient, rawAuthenticatedClient, startServer, waitUntil } from './support/helpers.mjs';

/** A raw client that authenticates and then stops reading from its socket. */
async function stalledClient(port) {
  const client = await rawAuthenticatedClient(port);
  client.socket.pause();
  return client;
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
    const stalled = server.getClients({ id: client.id });
    assert.equal(stalled.backpressured, true);
    // Every refused frame is counted; the queue holds at most the limit plus the frame that crossed it.
    assert.equal(stalled.droppedMessages, results.filter(result => result === 0).length);
    const buffered = socket.getBufferedAmount();
    assert.ok(buffered > 64 * 1024 && buffered <= 2 * 64 * 1024 + 16, `${buffered} bytes buffered`);
    client.socket.resume();
    await waitUntil(() => !server.getClients({ id: client.id }).backpressured, 10_000, 'backpressure to clear');
    assert.ok(socket.send('{"event":"after"}') > 0);
    await waitUntil(() => socket.getBufferedAmount() === 0, 3000, 'the queue to empty');
    client.socket.destroy();
  });

  it('a client that never reads does not grow memory nor delay the others (slow consumer)', async () => {
    await server?.shutdown();
    server = await startServer({ serverOptions: { backpressureLimit: 256 * 1024 } });
    const stalled = await Promise.all([1, 2, 3].map(() => stalledClient(server.getPort())));
    const readers = await Promise.all([1, 2, 3, 4].map(() => authenticatedClient(server)));
    const payload = 'y'.repeat(8 * 1024);
    const count = 3000; // 24 MB per client: far past what kernel buffers and the queue hold
    // In batches the readers can take (they share this process, and their own queues have
    // the same limit): each batch goes out, and every reader must get all of it, in order,
    // while the stalled clients' queues sit full.
    const batch = 16;
    for (let start = 0; start < count; start += batch) {
      for (let i = start; i < start + batch; i++) {
        if (i % 2) {
          server.broadcast({ event: 'tick', data: { i, payload } });
        } else {
          server.sendToRoom({ room: 'ws-default', event: 'tick', data: { i, payload } });
        }
      }
      for (const reader of readers) {
        for (let i = start; i < start + batch; i++) {
          assert.equal((await reader.next('tick', 10_000)).data.i, i, 'no loss, in order');
        }
      }
    }
    for (const { id } of stalled) {
      const client = server.getClients({ id });
      assert.equal(client.backpressured, true);
      assert.ok(client.droppedMessages > count / 2, `${client.droppedMessages} dropped`);
      // What the server holds for it is bounded by the limit (plus the frame that crossed it),
      // not by what was sent to it (24 MB).
      assert.ok(client.socket.getBufferedAmount() <= 256 * 1024 + 9 * 1024);
    }
    // Server memory and the other clients' latency under this load, measured out of process:
    // the `slow` benchmark scenario (benchmark/README.md).
    for (const { socket } of stalled) socket.destroy();
    await Promise.all(readers.map(reader => reader.close()));
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
