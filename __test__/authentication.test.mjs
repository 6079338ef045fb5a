import { assert, describe, it } from './support/framework.mjs';
import { TestClient, sleep, serverPool, waitUntil } from './support/helpers.mjs';

describe('authentication', () => {
  const start = serverPool();

  it('accepts a client: connected { id, userId, time }, indexes, rooms, then clientConnectedFn', async () => {
    const order = [];
    const metadata = { role: 'admin', since: new Date(0) };
    let client;
    const server = await start({
      authenticateFn: async data => {
        order.push(['authenticateFn', data]);
        await sleep(20);
        return { userId: 'user-1', metadata };
      },
      clientConnectedFn: opts => {
        order.push(['clientConnectedFn', opts, client.received.some(m => m.event === 'connected')]);
      },
    });
    client = await TestClient.open(server.url);
    const before = Date.now();
    client.send({ event: 'authenticate', data: { token: 'abc' } });
    const connected = await client.next('connected');
    assert.deepEqual(Object.keys(connected.data), ['id', 'userId', 'time']);
    assert.equal(connected.data.userId, 'user-1');
    assert.match(connected.data.time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    assert.ok(Math.abs(Date.parse(connected.data.time) - before) < 5000);
    await waitUntil(() => order.length === 2);
    assert.deepEqual(order[0], ['authenticateFn', { token: 'abc' }]);
    assert.equal(order[1][0], 'clientConnectedFn');
    assert.equal(order[1][1].clientId, connected.data.id);
    assert.equal(order[1][1].userId, 'user-1');
    assert.equal(order[1][1].metadata, metadata, 'metadata is the object authenticateFn returned');

    const entry = server.getClients({ id: connected.data.id });
    assert.equal(entry.state, 'authenticated');
    assert.equal(entry.userId, 'user-1');
    assert.equal(entry.metadata, metadata);
    assert.deepEqual([...entry.rooms].sort(), [connected.data.id, 'ws-default', 'ws-notification'].sort());
    assert.equal(server.getClientsByUser({ userId: 'user-1' }).length, 1);
    assert.ok(server.log.has('info', `Authenticated | id: ${connected.data.id} | userId: user-1`));
    client.close();
  });

  it('has the metadata on the client by the time the client receives connected, and forgets it when not accepted', async () => {
    for (const authenticateFn of [
      data => ({ userId: data.user, metadata: { user: data.user } }),
      async data => ({ userId: data.user, metadata: { user: data.user } }),
    ]) {
      const server = await start({ authenticateFn });
      for (let i = 0; i < 10; i++) {
        const client = await TestClient.open(server.url);
        client.send({ event: 'authenticate', data: { user: `u${i}` } });
        const connected = await client.next('connected');
        // No wait: the TypeScript helper attaches metadata before it sends `connected`.
        assert.deepEqual(server.getClients({ id: connected.data.id })?.metadata, { user: `u${i}` });
        client.close();
      }
    }
    // Accepted by authenticateFn, then refused by handshakeFn: nothing is kept for it.
    const server = await start({
      requireEncryption: true,
      authenticateFn: () => ({ userId: 'x', metadata: { kept: true } }),
      handshakeFn: () => false,
    });
    const client = await TestClient.open(server.url);
    client.send({ event: 'authenticate', data: {} });
    await client.waitClosed();
    await waitUntil(() => server.metadata.size === 0);
  });

  it('passes {} when authenticate carries no data, and accepts an anonymous result', async () => {
    let received;
    const server = await start({
      authenticateFn: data => {
        received = data;
        return {};
      },
    });
    const client = await TestClient.open(server.url);
    client.send({ event: 'authenticate' });
    const connected = await client.next('connected');
    assert.deepEqual(received, {});
    assert.equal('userId' in connected.data, false);
    client.close();
  });

  for (const [label, result] of [
    ['null', null],
    ['false', false],
    ['a Promise of null', Promise.resolve(null)],
  ]) {
    it(`rejects with error 'Authentication failed' and 4003 when authenticateFn returns ${label}`, async () => {
      const server = await start({ authenticateFn: () => result });
      const client = await TestClient.open(server.url);
      client.send({ event: 'authenticate', data: { token: 'x' } });
      const error = await client.next('error');
      assert.deepEqual(error.data, { message: 'Authentication failed' });
      assert.deepEqual(await client.waitClosed(), { code: 4003, reason: 'Authentication failed' });
      await server.log.waitFor('info', 'Authentication rejected');
      await waitUntil(() => server.getClients().size === 0);
    });
  }

  for (const [label, authenticateFn] of [
    ['throws', () => {
      throw new Error('db down');
    }],
    ['rejects', async () => {
      throw new Error('db down');
    }],
  ]) {
    it(`answers 'Authentication error' and 4003 when authenticateFn ${label}, and logs it`, async () => {
      const server = await start({ authenticateFn });
      const client = await TestClient.open(server.url);
      client.send({ event: 'authenticate', data: { token: 'x' } });
      const error = await client.next('error');
      assert.deepEqual(error.data, { message: 'Authentication error' });
      assert.deepEqual(await client.waitClosed(), { code: 4003, reason: 'Authentication failed' });
      await server.log.waitFor('error', 'Authentication error');
      assert.ok(server.log.has('error', 'db down'));
    });
  }

  it('closes with 4001 when the client does not authenticate within authTimeout', async () => {
    const server = await start({ authTimeout: 200 });
    const client = await TestClient.open(server.url);
    const started = Date.now();
    assert.deepEqual(await client.waitClosed(), { code: 4001, reason: 'Authentication timeout' });
    const elapsed = Date.now() - started;
    assert.ok(elapsed >= 150, `closed after ${elapsed} ms`);
    await server.log.waitFor('warn', 'Auth timeout');
  });

  it('bounds an authenticateFn that never settles by authTimeout * 3 (close 4001)', async () => {
    const server = await start({ authTimeout: 100, authenticateFn: () => new Promise(() => {}) });
    const client = await TestClient.open(server.url);
    const started = Date.now();
    client.send({ event: 'authenticate', data: { token: 'x' } });
    assert.deepEqual(await client.waitClosed(), { code: 4001, reason: 'Authentication timeout' });
    const elapsed = Date.now() - started;
    assert.ok(elapsed >= 250, `in-progress timeout replaced the initial one (closed after ${elapsed} ms)`);
    await server.log.waitFor('warn', 'Auth in-progress timeout');
  });

  it('lets a slow authenticateFn finish within authTimeout * 3', async () => {
    const server = await start({
      authTimeout: 100,
      authenticateFn: async () => {
        await sleep(200);
        return { userId: 'slow' };
      },
    });
    const client = await TestClient.open(server.url);
    const connected = await client.authenticate();
    assert.equal(connected.data.userId, 'slow');
    client.close();
  });

  it("rejects re-authentication with error 'Already authenticated'", async () => {
    let calls = 0;
    const server = await start({
      authenticateFn: () => {
        calls += 1;
        return { userId: `u${calls}` };
      },
    });
    const client = await TestClient.open(server.url);
    await client.authenticate();
    client.send({ event: 'authenticate', data: { token: 'again' } });
    const error = await client.next('error');
    assert.deepEqual(error.data, { message: 'Already authenticated' });
    assert.equal(calls, 1);
    assert.equal(server.getClients({ id: client.id }).userId, 'u1');
    client.close();
  });

  it("answers 'Not authenticated' to other events before authentication", async () => {
    let handled = 0;
    const server = await start({ messageHandler: () => void handled++ , validateRoomFn: ({ rooms }) => rooms });
    const client = await TestClient.open(server.url);
    for (const event of ['chat', 'join', 'leave']) {
      client.send({ event, data: { rooms: ['a'] } });
      const error = await client.next('error');
      assert.deepEqual(error.data, { message: 'Not authenticated' });
    }
    assert.equal(handled, 0);
    assert.equal(server.getClients({ id: [...server.getClients().keys()][0] }).state, 'unauthorized');
    client.close();
  });

  it('handles messages sent right after authenticate once authentication has finished', async () => {
    const seen = [];
    const server = await start({
      authenticateFn: async () => {
        await sleep(50);
        return { userId: 'u' };
      },
      validateRoomFn: ({ rooms }) => rooms,
      messageHandler: ({ message }) => void seen.push(message.event),
    });
    const client = await TestClient.open(server.url);
    client.send({ event: 'authenticate', data: {} });
    client.send({ event: 'join', data: { rooms: ['lobby'] } });
    client.send({ event: 'chat', data: 1 });
    const connected = await client.next('connected');
    await waitUntil(() => seen.length === 1);
    assert.deepEqual(seen, ['chat']);
    assert.ok(server.getClients({ id: connected.data.id }).rooms.has('lobby'));
    assert.ok(await client.nothing(m => m.event === 'error'));
    client.close();
  });

  it('keeps the process and other clients alive when clientConnectedFn throws or rejects', async () => {
    let calls = 0;
    const server = await start({
      clientConnectedFn: () => {
        calls += 1;
        if (calls === 1) {
          throw new Error('sync boom');
        }
        return Promise.reject(new Error('async boom'));
      },
      messageHandler: ({ clientId }) => server.sendToClient({ clientId, event: 'pong', data: null }),
    });
    const a = await TestClient.open(server.url);
    await a.authenticate();
    const b = await TestClient.open(server.url);
    await b.authenticate();
    await server.log.waitFor('error', 'sync boom');
    await server.log.waitFor('error', 'async boom');
    a.send({ event: 'ping' });
    await a.next('pong');
    a.close();
    b.close();
  });
});
