import { assert, describe, it } from './support/framework.mjs';
import { authenticatedClient, sleep, serverPool, waitUntil } from './support/helpers.mjs';

describe('message routing', () => {
  const start = serverPool();

  it("answers 'Invalid message format' to what is not a message object, and keeps the connection", async () => {
    const handled = [];
    const server = await start({ messageHandler: ({ message }) => void handled.push(message) });
    const client = await authenticatedClient(server);
    const texts = ['not json', '{"event":', '[1,2]', '["chat",{}]', '42', '"text"', 'null', '{"event":5}', '{"event":{}}'];
    for (const text of texts) {
      client.send(text);
      const error = await client.next('error');
      assert.deepEqual(error.data, { message: 'Invalid message format' }, text);
    }
    client.send({ event: 'still-here', data: 1 });
    await waitUntil(() => handled.length === 1);
    assert.deepEqual(handled[0], { event: 'still-here', data: 1 });
    client.close();
  });

  it('drops and logs messages without an event', async () => {
    const handled = [];
    const server = await start({ messageHandler: ({ message }) => void handled.push(message) });
    const client = await authenticatedClient(server);
    client.send({ data: 'no event' });
    client.send({ event: '' });
    await server.log.waitFor('error', 'Missing event');
    assert.ok(await client.nothing());
    assert.equal(handled.length, 0);
    client.close();
  });

  it('consumes heartbeats and refreshes lastActivity on every message', async () => {
    const handled = [];
    const server = await start({ messageHandler: ({ message }) => void handled.push(message.event) });
    const client = await authenticatedClient(server);
    const first = server.getClients({ id: client.id }).lastActivity;
    await sleep(30);
    client.send({ event: 'heartbeat' });
    await waitUntil(() => server.getClients({ id: client.id }).lastActivity > first);
    assert.ok(await client.nothing());
    assert.deepEqual(handled, []);
    client.close();
  });

  it('gives messageHandler { clientId, userId, message } with the whole parsed message', async () => {
    let received;
    const server = await start({ messageHandler: opts => void (received = opts) });
    const client = await authenticatedClient(server, { token: 't', userId: 'alice' });
    client.send({ event: 'chat', data: { text: 'hi', n: [1, 2] }, id: 'm-1', extra: true });
    await waitUntil(() => received);
    assert.deepEqual(received, {
      clientId: client.id,
      userId: 'alice',
      message: { event: 'chat', data: { text: 'hi', n: [1, 2] }, id: 'm-1', extra: true },
    });
    client.close();
  });

  it('gives messageHandler each message as JSON.parse makes it, keys in their order, whatever its shape', async () => {
    const handled = [];
    const server = await start({ messageHandler: ({ message }) => void handled.push(message) });
    const client = await authenticatedClient(server);
    // The first ones have `event` then `data` only (they cross in parts), the others not.
    const texts = [
      '{"event":"a","data":{"t":1,"s":"Xin chào thế giới 😀","n":[1,null,true]}}',
      ' { "event" : "b" , "data" : [ 1 , { "k" : "v" } ] } ',
      '{"event":"c\\"q\\u00e9","data":"\\ud83d\\ude00"}',
      '{"event":"d","data":null}',
      '{"ev\\u0065nt":"e","data":1e400}',
      '{"event":"f","data":{"__proto__":{"polluted":true},"constructor":1}}',
      '{"data":2,"event":"g"}',
      '{"event":"h"}',
      '{"event":"i","data":3,"id":"m-1"}',
      '{"__proto__":{"x":1},"event":"j","data":4}',
    ];
    for (const text of texts) {
      client.send(text);
    }
    await waitUntil(() => handled.length === texts.length);
    texts.forEach((text, i) => {
      const expected = JSON.parse(text);
      assert.deepEqual(handled[i], expected, text);
      assert.deepEqual(Object.keys(handled[i]), Object.keys(expected), text);
      assert.equal(JSON.stringify(handled[i]), JSON.stringify(expected), text);
      assert.equal(Object.getPrototypeOf(handled[i]), Object.prototype, text);
    });
    assert.equal({}.polluted, undefined);
    client.close();
  });

  it("names each message's own sender while connections come, go and are replaced", async () => {
    const handled = [];
    let release;
    const held = new Promise(resolve => (release = resolve));
    const server = await start({
      messageHandler: ({ clientId, userId, message }) => {
        handled.push({ clientId, userId, n: message.data });
        // The first message's handler stays pending past its client's disconnect.
        return message.data === 0 ? held : undefined;
      },
    });
    const senders = new Map();
    let n = 0;
    for (let round = 0; round < 4; round++) {
      const clients = [];
      for (let i = 0; i < 3; i++) {
        clients.push(await authenticatedClient(server, { token: 't', userId: `user-${round}-${i}` }));
      }
      for (const client of clients) {
        senders.set(n, client.id);
        client.send({ event: 'm', data: n++ });
      }
      await waitUntil(() => handled.length === n);
      // Gone before the next round connects, so the next round's connections reuse what
      // these had (the first one's message is still in its handler).
      await Promise.all(clients.map(client => client.close()));
      await waitUntil(() => server.getClients().size === 0);
    }
    release();
    for (const { clientId, userId, n: number } of handled) {
      assert.equal(clientId, senders.get(number), `message ${number}`);
      assert.equal(userId, `user-${Math.floor(number / 3)}-${number % 3}`, `message ${number}`);
    }
    assert.equal(handled.length, 12);
  });

  it("replies reach each message's sender, and sends to others reach them, while connections come, go and are replaced", async () => {
    // A reply to the sender goes by the message's slot, a send to anyone else by id; after
    // an await the handler's sends go by id again.
    let server;
    let release;
    const held = new Promise(resolve => (release = resolve));
    const lateSends = [];
    server = await start({
      messageHandler: ({ clientId, message }) => {
        const { n, other } = message.data;
        const reply = () => server.sendToClient({ clientId, event: 'reply', data: n });
        const copy = () => server.sendToClient({ clientId: other, event: 'copy', data: n });
        if (n % 2 === 0) {
          reply();
          copy();
        } else {
          copy();
          reply();
        }
        if (n === 0) {
          // Pending past its client's disconnect; its send then reaches nobody.
          return held.then(() => lateSends.push(server.sendToClient({ clientId, event: 'late', data: n })));
        }
        if (n % 3 === 1) {
          return sleep(5).then(() => server.sendToClient({ clientId, event: 'later', data: n }));
        }
        return undefined;
      },
    });
    let n = 0;
    for (let round = 0; round < 4; round++) {
      const clients = [];
      for (let i = 0; i < 3; i++) {
        clients.push(await authenticatedClient(server));
      }
      const sent = clients.map((client, i) => {
        const data = { n: n++, other: clients[(i + 1) % 3].id };
        client.send({ event: 'm', data });
        return data.n;
      });
      for (const [i, client] of clients.entries()) {
        assert.equal((await client.next('reply')).data, sent[i], `round ${round}, client ${i}`);
        assert.equal((await client.next('copy')).data, sent[(i + 2) % 3], `round ${round}, client ${i}`);
        if (sent[i] % 3 === 1) {
          assert.equal((await client.next('later')).data, sent[i]);
        }
        assert.ok(await client.nothing(message => ['reply', 'copy'].includes(message.event), 50));
      }
      // Gone before the next round connects, so the next round's connections reuse what
      // these had (the first one's message is still in its handler).
      await Promise.all(clients.map(client => client.close()));
      await waitUntil(() => server.getClients().size === 0);
    }
    release();
    await waitUntil(() => lateSends.length === 1);
  });

  it("a send outside messageHandler goes by id, even to a past sender whose slot Rust gave to another", async () => {
    const handled = [];
    const server = await start({ messageHandler: ({ message }) => void handled.push(message.event) });
    const first = await authenticatedClient(server);
    first.send({ event: 'from-first' });
    await waitUntil(() => handled.length === 1);
    await first.close();
    await waitUntil(() => server.getClients().size === 0);
    const second = await authenticatedClient(server);
    second.send({ event: 'from-second' });
    // JS is kept busy while the server reads that message and gives the second client the
    // first one's message slot; the send below runs before JS handles the message.
    const until = Date.now() + 150;
    while (Date.now() < until) {
      // busy
    }
    server.sendToClient({ clientId: first.id, event: 'for-first' });
    await waitUntil(() => handled.length === 2);
    assert.ok(await second.nothing('for-first'));
    second.close();
  });

  it('handles the messages of one connection in arrival order, even with async handlers', async () => {
    const order = [];
    const server = await start({
      messageHandler: async ({ message }) => {
        // Earlier messages take longer: a handler-per-message design would reorder them.
        await sleep(40 - message.data * 4);
        order.push(message.data);
      },
    });
    const client = await authenticatedClient(server);
    for (let i = 0; i < 10; i++) {
      client.send({ event: 'seq', data: i });
    }
    await waitUntil(() => order.length === 10, 5000);
    assert.deepEqual(order, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    client.close();
  });

  it('handles a join after the messages sent before it, even when their handler is async', async () => {
    const order = [];
    const server = await start({
      messageHandler: async ({ message }) => {
        await sleep(50);
        order.push(message.event);
      },
      validateRoomFn: ({ rooms }) => {
        order.push('join');
        return rooms;
      },
    });
    const client = await authenticatedClient(server);
    client.send({ event: 'first' });
    client.send({ event: 'second' });
    client.send({ event: 'join', data: { rooms: ['r1'] } });
    await waitUntil(() => order.length === 3);
    assert.deepEqual(order, ['first', 'second', 'join']);
    client.close();
  });

  it('stops reading a client whose messages outrun its async messageHandler, then handles them all in order', async () => {
    let openGate;
    const gate = new Promise(resolve => (openGate = resolve));
    const seen = [];
    const server = await start({
      callbackTimeout: 30_000,
      messageHandler: async ({ message }) => {
        seen.push(message.data.n);
        await gate;
      },
    });
    const client = await authenticatedClient(server);
    // 400 x 64 KB: far more than the server takes in (1 MiB per connection waiting for JS,
    // plus the kernel's socket buffers) while the first handler is pending.
    const count = 400;
    const filler = 'x'.repeat(64 * 1024);
    for (let n = 0; n < count; n++) {
      client.send({ event: 'bulk', data: { n, filler } });
    }
    await waitUntil(() => seen.length === 1);
    await sleep(300);
    assert.deepEqual(seen, [0], 'later messages wait for the pending handler');
    const unsent = client.ws.bufferedAmount;
    assert.ok(unsent > 8 * 1024 * 1024, `the server stopped reading; ${unsent} bytes still with the client`);
    openGate();
    await waitUntil(() => seen.length === count, 15_000, 'every message handled');
    assert.deepEqual(
      seen,
      Array.from({ length: count }, (_, n) => n),
    );
    client.close();
  });

  it('logs a messageHandler that throws or rejects, and the connection keeps working', async () => {
    const server = await start({
      messageHandler: ({ clientId, message }) => {
        if (message.event === 'throw') {
          throw new Error('handler exploded');
        }
        if (message.event === 'reject') {
          return Promise.reject(new Error('handler rejected'));
        }
        server.sendToClient({ clientId, event: 'ok', data: message.data });
      },
    });
    const client = await authenticatedClient(server);
    const other = await authenticatedClient(server);
    client.send({ event: 'throw' });
    client.send({ event: 'reject' });
    client.send({ event: 'work', data: 7 });
    assert.equal((await client.next('ok')).data, 7);
    assert.ok(server.log.has('error', 'handler exploded'));
    assert.ok(server.log.has('error', 'handler rejected'));
    other.send({ event: 'work', data: 8 });
    assert.equal((await other.next('ok')).data, 8);
    client.close();
    other.close();
  });

  it('bounds a messageHandler that never settles by callbackTimeout, then handles the next message', async () => {
    const server = await start({
      callbackTimeout: 150,
      messageHandler: ({ clientId, message }) => {
        if (message.event === 'hang') {
          return new Promise(() => {});
        }
        server.sendToClient({ clientId, event: 'ok', data: null });
      },
    });
    const client = await authenticatedClient(server);
    const started = Date.now();
    client.send({ event: 'hang' });
    client.send({ event: 'after' });
    await client.next('ok');
    assert.ok(Date.now() - started >= 120, 'the next message waited for the timeout');
    assert.ok(server.log.has('warn', 'messageHandler did not settle in time'));
    client.close();
  });

  it('reads binary frames as UTF-8 JSON, and answers invalid UTF-8 with Invalid message format', async () => {
    const handled = [];
    const server = await start({ messageHandler: ({ message }) => void handled.push(message) });
    const client = await authenticatedClient(server);
    client.ws.send(Buffer.from(JSON.stringify({ event: 'bin', data: 'é' })), { binary: true });
    await waitUntil(() => handled.length === 1);
    assert.deepEqual(handled[0], { event: 'bin', data: 'é' });
    client.ws.send(Buffer.from([0xff, 0xfe, 0x7b]), { binary: true });
    const error = await client.next('error');
    assert.deepEqual(error.data, { message: 'Invalid message format' });
    client.close();
  });

  it('does not call anything for custom events when no messageHandler is configured', async () => {
    const server = await start();
    const client = await authenticatedClient(server);
    client.send({ event: 'chat' });
    assert.ok(await client.nothing());
    client.send({ event: 'heartbeat' });
    assert.equal(server.getClients({ id: client.id }).state, 'authenticated');
    client.close();
  });
});
