import zlib from 'node:zlib';

import { after, assert, describe, it, runtime } from './support/framework.mjs';
import { clientFrame, rawClient, serverPool, TestClient, waitUntil } from './support/helpers.mjs';

const TAIL = Buffer.from([0x00, 0x00, 0xff, 0xff]);

/** RFC 7692 with node's zlib, independent of the `ws` package: one message, no context. */
function deflateMessage(text) {
  const out = zlib.deflateRawSync(Buffer.from(text), { finishFlush: zlib.constants.Z_SYNC_FLUSH });
  assert.ok(out.subarray(-4).equals(TAIL));
  return out.subarray(0, -4);
}

function inflateMessage(payload) {
  return zlib.inflateRawSync(Buffer.concat([payload, TAIL]), { finishFlush: zlib.constants.Z_SYNC_FLUSH }).toString();
}

const authenticateFrame = JSON.stringify({ event: 'authenticate', data: { token: 't' } });

describe('perMessageDeflate', () => {
  const start = serverPool();
  let server;
  const servers = {};
  const bigText = 'The quick brown fox jumps over the lazy dog. '.repeat(40);

  after(() => {
    for (const socket of servers.sockets ?? []) {
      socket.destroy();
    }
  });

  it('negotiates without context takeover with a raw client and compresses both ways (node:zlib)', async () => {
    server = await start({
      serverOptions: { perMessageDeflate: true },
      messageHandler: ({ clientId, message }) => server.sendToClient({ clientId, event: 'echo', data: message.data }),
    });
    const client = await rawClient(server.getPort(), { extensions: 'permessage-deflate; client_max_window_bits' });
    servers.sockets = [client.socket];
    assert.match(client.head, /^HTTP\/1\.1 101 /);
    assert.match(
      client.head,
      /\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover$/m,
    );
    // A compressed authenticate (RSV1 + DEFLATE) is understood.
    client.send(clientFrame(0xc1, deflateMessage(authenticateFrame)));
    await waitUntil(() => client.frames().some(frame => frame.payload.includes('"connected"')), 3000, 'connected');
    // A compressed, fragmented custom message: RSV1 on the first frame only.
    const compressed = deflateMessage(JSON.stringify({ event: 'say', data: bigText }));
    const half = Math.floor(compressed.length / 2);
    client.send(Buffer.concat([clientFrame(0x41, compressed.subarray(0, half)), clientFrame(0x80, compressed.subarray(half))]));
    await waitUntil(() => client.frames().some(frame => frame.rsv1), 3000, 'a compressed echo');
    const echo = client.frames().find(frame => frame.rsv1);
    assert.ok(echo.payload.length < bigText.length / 4, `compressed to ${echo.payload.length} bytes`);
    assert.deepEqual(JSON.parse(inflateMessage(echo.payload)), { event: 'echo', data: bigText });
  });

  it('interoperates with the ws package in both directions, and sends short messages uncompressed', async () => {
    const client = await TestClient.open(server.url, { perMessageDeflate: { threshold: 0 } });
    assert.match(client.ws.extensions, /^permessage-deflate/);
    await client.authenticate();
    client.send({ event: 'say', data: bigText });
    assert.equal((await client.next('echo')).data, bigText);
    client.send({ event: 'say', data: 'short' });
    assert.equal((await client.next('echo')).data, 'short');
    await client.close();
  });

  it("interoperates with the runtime's own WebSocket client", async () => {
    if (typeof globalThis.WebSocket !== 'function') {
      // Node 20 has no global WebSocket; Node 22+ and Bun do.
      assert.equal(runtime, 'node');
      return;
    }
    const socket = new globalThis.WebSocket(server.url);
    const messages = [];
    socket.onmessage = event => messages.push(JSON.parse(String(event.data)));
    await new Promise((resolve, reject) => {
      socket.onopen = resolve;
      socket.onerror = reject;
    });
    if (runtime === 'bun') {
      // Bun's client offers permessage-deflate: the messages below travel compressed.
      assert.match(socket.extensions, /^permessage-deflate/);
    }
    socket.send(JSON.stringify({ event: 'authenticate', data: { token: 't' } }));
    await waitUntil(() => messages.some(message => message.event === 'connected'), 3000, 'connected');
    socket.send(JSON.stringify({ event: 'say', data: bigText }));
    await waitUntil(() => messages.some(message => message.event === 'echo'), 3000, 'the echo');
    assert.equal(messages.find(message => message.event === 'echo').data, bigText);
    socket.close();
  });

  it('compresses a room message once and sends the plain frame to clients that did not offer', async () => {
    const deflating = await rawClient(server.getPort(), { extensions: 'permessage-deflate' });
    const plain = await rawClient(server.getPort());
    const wsPlain = await TestClient.open(server.url, { perMessageDeflate: false });
    servers.sockets.push(deflating.socket, plain.socket);
    assert.doesNotMatch(plain.head, /Sec-WebSocket-Extensions/i);
    assert.equal(wsPlain.ws.extensions, '');
    deflating.send(clientFrame(0x81, authenticateFrame));
    plain.send(clientFrame(0x81, authenticateFrame));
    await wsPlain.authenticate();
    await waitUntil(
      () => [deflating, plain].every(client => client.frames().some(frame => frame.payload.includes('"connected"'))),
      3000,
      'both raw clients connected',
    );
    server.sendToRoom({ room: 'ws-default', event: 'news', data: bigText });
    assert.equal((await wsPlain.next('news')).data, bigText);
    await waitUntil(() => deflating.frames().some(frame => frame.rsv1), 3000, 'the compressed frame');
    await waitUntil(() => plain.frames().some(frame => frame.payload.includes('"news"')), 3000, 'the plain frame');
    assert.ok(plain.frames().every(frame => !frame.rsv1));
    const news = deflating.frames().find(frame => frame.rsv1);
    assert.equal(JSON.parse(inflateMessage(news.payload)).data, bigText);
    await wsPlain.close();
  });

  it('closes with 1009 on a message that inflates past maxPayloadLength, 1007 on garbage', async () => {
    const small = await start({ serverOptions: { perMessageDeflate: true, maxPayloadLength: 4096 } });
    const bystander = await TestClient.open(small.url, { perMessageDeflate: true });
    await bystander.authenticate();
    // 1 MB of one letter deflates to about a kilobyte: under the limit on the wire.
    const bomb = deflateMessage(JSON.stringify({ event: 'x', data: 'a'.repeat(1 << 20) }));
    assert.ok(bomb.length < 4096);
    for (const [payload, code] of [
      [bomb, 1009],
      [Buffer.from([0xff, 0xff, 0xff, 0xff, 0x12]), 1007],
    ]) {
      const attacker = await rawClient(small.getPort(), { extensions: 'permessage-deflate' });
      attacker.send(clientFrame(0xc1, payload));
      await waitUntil(() => attacker.frames().some(frame => frame.opcode === 8), 3000, `close ${code}`);
      assert.equal(attacker.frames().find(frame => frame.opcode === 8).code, code);
      attacker.socket.destroy();
    }
    await small.log.waitFor('warn', 'code: 1009');
    await small.log.waitFor('warn', 'Invalid compressed data');
    // RSV1 without the extension negotiated stays a protocol error.
    const plain = await rawClient(small.getPort());
    plain.send(clientFrame(0xc1, deflateMessage(authenticateFrame)));
    await waitUntil(() => plain.frames().some(frame => frame.opcode === 8), 3000, 'close 1002');
    assert.equal(plain.frames().find(frame => frame.opcode === 8).code, 1002);
    plain.socket.destroy();
    bystander.send({ event: 'heartbeat' });
    await waitUntil(() => small.getClients().size === 1, 3000, 'only the bystander left');
    assert.equal(bystander.ws.readyState, 1);
    await bystander.close();
  });

  it('does not negotiate when perMessageDeflate is off (the default)', async () => {
    const off = await start({});
    const client = await TestClient.open(off.url, { perMessageDeflate: true });
    assert.equal(client.ws.extensions, '');
    await client.authenticate();
    await client.close();
    const raw = await rawClient(off.getPort(), { extensions: 'permessage-deflate' });
    assert.doesNotMatch(raw.head, /Sec-WebSocket-Extensions/i);
    raw.socket.destroy();
  });
});
