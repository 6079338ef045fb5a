import { createRequire } from 'node:module';

import { after, assert, before, describe, it } from './support/framework.mjs';
import { TestClient, authenticatedClient, sleep, startServer, waitUntil } from './support/helpers.mjs';

const require = createRequire(import.meta.url);
const binding = require('../binding.js');

describe('local delivery and accessors', () => {
  let server;
  let alice1;
  let alice2;
  let bob;
  let pending;
  before(async () => {
    server = await startServer({ validateRoomFn: ({ rooms }) => rooms });
    alice1 = await authenticatedClient(server, { token: 't', userId: 'alice' });
    alice2 = await authenticatedClient(server, { token: 't', userId: 'alice' });
    bob = await authenticatedClient(server, { token: 't', userId: 'bob' });
    pending = await TestClient.open(server.url);
    bob.send({ event: 'join', data: { rooms: ['lobby'] } });
    alice1.send({ event: 'join', data: { rooms: ['lobby'] } });
    await waitUntil(() => server.getClientsByRoom({ room: 'lobby' }).length === 2);
  });
  after(async () => {
    await server.shutdown();
  });

  const everyone = () => [alice1, alice2, bob, pending];

  it('sendToClient delivers JSON.stringify({ event, data }) to one client, even unauthenticated', async () => {
    server.sendToClient({ clientId: bob.id, event: 'direct', data: { n: 1, s: 'é"\n' } });
    assert.deepEqual(await bob.next('direct'), { event: 'direct', data: { n: 1, s: 'é"\n' } });
    const pendingId = [...server.getClients().values()].find(c => c.state === 'unauthorized').id;
    server.sendToClient({ clientId: pendingId, event: 'early', data: null });
    assert.deepEqual(await pending.next('early'), { event: 'early', data: null });
    server.sendToClient({ clientId: bob.id, event: 'no-data' });
    assert.deepEqual(await bob.next('no-data'), { event: 'no-data' });
    server.sendToClient({ clientId: 'unknown', event: 'x', data: 1 });
    // Not a string: names no client, as in the TypeScript helper (no throw).
    server.sendToClient({ clientId: 42, event: 'x', data: 1 });
    server.sendToClient({ event: 'x', data: 1 });
    // An id longer than the stack buffer the native call reads ids into.
    server.sendToClient({ clientId: 'é'.repeat(100), event: 'x', data: 1 });
    for (const client of everyone()) {
      assert.ok(await client.nothing(m => m.event === 'x', 50));
    }
  });

  it("the native sendToClient answers misuse with a TypeError, and still sends after it", async () => {
    const sendToClient = binding.rawSendToClient();
    const text = JSON.stringify({ event: 'raw', data: 'é😀' });
    assert.throws(() => sendToClient(), TypeError);
    assert.throws(() => sendToClient({}, bob.id, text), TypeError);
    assert.throws(() => sendToClient(server.handle, 7, text), TypeError);
    assert.throws(() => sendToClient(server.handle, bob.id, { event: 'raw' }), TypeError);
    sendToClient(server.handle, bob.id, text);
    assert.equal(await bob.next('raw').then(m => m.data), 'é😀');
    assert.equal(bob.texts.at(-1), text);
    // A lone surrogate (not UTF-16 text) arrives as U+FFFD, as Node-API's UTF-8 writes it.
    sendToClient(server.handle, bob.id, '{"event":"raw","data":"a\ud800b"}');
    assert.equal(await bob.next('raw').then(m => m.data), 'a\ufffdb');
    // Larger than the buffer kept between calls, then a short one through a fresh buffer.
    const long = `é漢${'x'.repeat(300_000)}😀`;
    sendToClient(server.handle, bob.id, JSON.stringify({ event: 'raw', data: long }));
    assert.equal(await bob.next('raw').then(m => m.data), long);
    sendToClient(server.handle, bob.id, text);
    assert.equal(await bob.next('raw').then(m => m.data), 'é😀');
    // Around the size read in one call (4,096 code units with the terminator), with a
    // surrogate pair before, across and after that boundary.
    const head = '{"event":"raw","data":"';
    for (let length = 4093; length <= 4100; length++) {
      for (const tail of ['x', '😀']) {
        const message = `${head}${'y'.repeat(length - head.length - tail.length - 2)}${tail}"}`;
        assert.equal(message.length, length);
        sendToClient(server.handle, bob.id, message);
        await bob.next('raw');
        assert.equal(bob.texts.at(-1), message);
      }
    }
  });

  it("the native send to a message's sender answers misuse with a TypeError, and a slot nobody holds reaches nobody", async () => {
    const sendToSender = binding.rawSendToSender();
    const text = JSON.stringify({ event: 'raw', data: 1 });
    assert.throws(() => sendToSender(), TypeError);
    assert.throws(() => sendToSender({}, 0, text), TypeError);
    assert.throws(() => sendToSender(server.handle, 'zero', text), TypeError);
    assert.throws(() => sendToSender(server.handle, 0, { event: 'raw' }), TypeError);
    sendToSender(server.handle, 4_000_000, text);
    for (const client of everyone()) {
      assert.ok(await client.nothing('raw', 50));
    }
  });

  it("the native sendToClient reaches the server of the handle it is given, alternating between two", async () => {
    const sendToClient = binding.rawSendToClient();
    const other = await startServer();
    try {
      const carol = await authenticatedClient(other);
      for (let n = 0; n < 3; n++) {
        sendToClient(server.handle, bob.id, JSON.stringify({ event: 'which', data: `first ${n}` }));
        sendToClient(other.handle, carol.id, JSON.stringify({ event: 'which', data: `other ${n}` }));
        // Each server knows only its own client.
        sendToClient(other.handle, bob.id, JSON.stringify({ event: 'which', data: 'wrong' }));
        sendToClient(server.handle, carol.id, JSON.stringify({ event: 'which', data: 'wrong' }));
        assert.equal((await bob.next('which')).data, `first ${n}`);
        assert.equal((await carol.next('which')).data, `other ${n}`);
      }
      assert.ok(await bob.nothing('which', 100));
      assert.ok(await carol.nothing('which', 100));
      carol.close();
    } finally {
      await other.shutdown();
    }
  });

  it('sendToUser reaches every session of the user', async () => {
    server.sendToUser({ userId: 'alice', event: 'for-alice', data: 2 });
    assert.equal((await alice1.next('for-alice')).data, 2);
    assert.equal((await alice2.next('for-alice')).data, 2);
    assert.ok(await bob.nothing(m => m.event === 'for-alice', 100));
  });

  it('sendToRoom reaches the room, minus exclude', async () => {
    server.sendToRoom({ room: 'lobby', event: 'room', data: 1 });
    assert.equal((await alice1.next('room')).data, 1);
    assert.equal((await bob.next('room')).data, 1);
    server.sendToRoom({ room: 'lobby', event: 'room-ex', data: 2, exclude: [bob.id] });
    assert.equal((await alice1.next('room-ex')).data, 2);
    assert.ok(await bob.nothing(m => m.event === 'room-ex', 100));
    assert.ok(await alice2.nothing(m => m.event.startsWith('room'), 50));
  });

  it('broadcast reaches authenticated clients only, minus exclude', async () => {
    server.broadcast({ event: 'all', data: 'x' });
    for (const client of [alice1, alice2, bob]) {
      assert.equal((await client.next('all')).data, 'x');
    }
    assert.ok(await pending.nothing(m => m.event === 'all', 100));
    server.broadcast({ event: 'all-ex', data: 'y', exclude: [alice1.id, alice2.id] });
    assert.equal((await bob.next('all-ex')).data, 'y');
    assert.ok(await alice1.nothing(m => m.event === 'all-ex', 100));
  });

  it('send() routes by destination: omitted, local client, local room; cb runs asynchronously', async () => {
    let called = false;
    server.send({ payload: { topic: 'everyone', data: 1 }, cb: () => (called = true) });
    assert.equal(called, false, 'cb is deferred with setTimeout(cb, 0)');
    for (const client of [alice1, alice2, bob]) {
      assert.equal((await client.next('everyone')).data, 1);
    }
    await waitUntil(() => called);
    server.send({ destination: bob.id, payload: { topic: 'to-bob', data: 2 }, doLog: true });
    assert.equal((await bob.next('to-bob')).data, 2);
    assert.ok(server.log.has('info', 'Message emitted | destination: ' + bob.id));
    server.send({ destination: 'lobby', payload: { topic: 'to-lobby', data: 3 } });
    assert.equal((await alice1.next('to-lobby')).data, 3);
    assert.equal((await bob.next('to-lobby')).data, 3);
    server.send({ destination: 'nowhere', payload: { topic: 'lost', data: 4 } });
    assert.ok(await bob.nothing(m => m.event === 'lost', 50));
  });

  it('send() is a silent no-op without payload, topic or data', async () => {
    let called = false;
    server.send({});
    server.send({ payload: null, cb: () => (called = true) });
    server.send({ payload: { data: 1 } });
    server.send({ payload: { topic: 'undefined-data', data: undefined } });
    await sleep(20);
    assert.equal(called, false);
    assert.ok(await bob.nothing(m => m.event === 'undefined-data', 50));
  });

  it('getClients() returns a Map of IWebSocketClient; { id } returns one or undefined', async () => {
    const clients = server.getClients();
    assert.ok(clients instanceof Map);
    assert.equal(clients.size, 4);
    const entry = clients.get(bob.id);
    assert.deepEqual(Object.keys(entry).sort(), [
      'backpressured',
      'connectedAt',
      'droppedMessages',
      'encrypted',
      'id',
      'lastActivity',
      'metadata',
      'rooms',
      'salt',
      'serverPublicKey',
      'socket',
      'state',
      'userId',
    ]);
    assert.equal(entry.id, bob.id);
    assert.equal(entry.userId, 'bob');
    assert.ok(entry.rooms instanceof Set);
    assert.equal(entry.backpressured, false);
    assert.equal(entry.droppedMessages, 0);
    assert.equal(entry.socket.getBufferedAmount(), 0);
    assert.equal(entry.encrypted, false);
    assert.ok(entry.connectedAt <= entry.lastActivity && entry.lastActivity <= Date.now());
    assert.ok(Date.now() - entry.connectedAt < 60_000, 'timestamps are in milliseconds');
    assert.match(entry.socket.remoteAddress, /^127\.0\.0\.1:\d+$/);
    assert.equal(server.getClients({ id: 'missing' }), undefined);
    assert.deepEqual(server.getClientsByUser({ userId: 'alice' }).map(c => c.id).sort(), [alice1.id, alice2.id].sort());
    assert.deepEqual(server.getClientsByUser({ userId: 'nobody' }), []);
    assert.deepEqual(server.getClientsByRoom({ room: 'nothing' }), []);
  });

  it('a client socket sends and closes on the real connection', async () => {
    const extra = await authenticatedClient(server);
    const { socket } = server.getClients({ id: extra.id });
    assert.equal(socket.readyState, 1);
    assert.ok(socket.send('{"event":"raw","data":true}') > 0);
    assert.deepEqual(await extra.next('raw'), { event: 'raw', data: true });
    socket.close(4100, 'bye now');
    assert.deepEqual(await extra.waitClosed(), { code: 4100, reason: 'bye now' });
    await waitUntil(() => socket.readyState === 3);
    assert.equal(socket.send('late'), 0);
  });
});

describe('sends coalesced within one batch', () => {
  let server;
  before(async () => {
    server = await startServer({
      validateRoomFn: ({ rooms }) => rooms,
      messageHandler: ({ clientId, message }) => {
        const { n, close } = message.data ?? {};
        if (message.event !== 'burst') {
          return;
        }
        // Everything here runs in one JS batch, under one cork: every kind of send, interleaved.
        for (let i = 0; i < 60; i++) {
          const data = { n, i };
          switch (i % 4) {
            case 0:
              server.sendToClient({ clientId, event: 'seq', data });
              break;
            case 1:
              server.broadcast({ event: 'seq', data });
              break;
            case 2:
              server.sendToRoom({ room: 'burst-room', event: 'seq', data });
              break;
            default:
              server.getClients({ id: clientId }).socket.send(JSON.stringify({ event: 'seq', data }));
          }
        }
        if (close) {
          server.getClients({ id: clientId }).socket.close(4200, 'after the burst');
        }
      },
    });
  });
  after(async () => {
    await server.shutdown();
  });

  it('every recipient gets its frames complete and in send order, across several messages of one batch', async () => {
    const sender = await authenticatedClient(server);
    const member = await authenticatedClient(server);
    const other = await authenticatedClient(server);
    for (const client of [sender, member]) {
      client.send({ event: 'join', data: { rooms: ['burst-room'] } });
    }
    await waitUntil(() => server.getClientsByRoom({ room: 'burst-room' }).length === 2);
    // Sent back to back: they arrive together and are handled in one batch.
    for (let n = 0; n < 5; n++) {
      sender.send({ event: 'burst', data: { n } });
    }
    const sequence = (client, count) => waitUntil(() => client.received.filter(m => m.event === 'seq').length >= count, 5000);
    await Promise.all([sequence(sender, 300), sequence(member, 150), sequence(other, 75)]);
    const seen = client => client.received.filter(m => m.event === 'seq').map(m => m.data.n * 100 + m.data.i);
    const expected = keep => [...Array(5).keys()].flatMap(n => [...Array(60).keys()].filter(keep).map(i => n * 100 + i));
    assert.deepEqual(seen(sender), expected(() => true));
    assert.deepEqual(seen(member), expected(i => i % 4 === 1 || i % 4 === 2));
    assert.deepEqual(seen(other), expected(i => i % 4 === 1));
    for (const client of [sender, member, other]) {
      client.close();
    }
  });

  it('a close issued after a burst follows every frame of it', async () => {
    const sender = await authenticatedClient(server);
    sender.send({ event: 'burst', data: { n: 7, close: true } });
    assert.deepEqual(await sender.waitClosed(), { code: 4200, reason: 'after the burst' });
    const seen = sender.received.filter(m => m.event === 'seq').map(m => m.data.i);
    // Everything but the room sends (this client joined no room).
    assert.deepEqual(seen, [...Array(60).keys()].filter(i => i % 4 !== 2));
  });
});
