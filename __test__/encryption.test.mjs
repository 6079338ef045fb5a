// Per-client encryption: requireEncryption + handshakeFn, enableClientEncryption, and the
// outboundTransformer on every delivery path, over real sockets.
import { after, assert, before, describe, it } from './support/framework.mjs';
import {
  TestClient,
  authenticatedClient,
  serverPool,
  sleep,
  startRedis,
  startServer,
  waitUntil,
} from './support/helpers.mjs';

const keys = { serverPublicKey: 'server-public-key', salt: 'salt-b64' };

/** A transformer that wraps what it gets, so tests can see it ran and for whom. */
const wrap = ({ client, event, data }) => ({ event: 'encrypted', data: { for: client.id, event, data } });

describe('requireEncryption and handshakeFn', () => {
  const start = serverPool();

  it('runs handshakeFn after authenticateFn and sends its keys in connected', async () => {
    const calls = [];
    const server = await start({
      requireEncryption: true,
      handshakeFn: async opts => {
        calls.push(opts);
        return keys;
      },
    });
    const client = await TestClient.open(server.url);
    const connected = await client.authenticate({ token: 't', userId: 'ann', publicKey: 'client-key' });
    assert.equal(connected.data.serverPublicKey, keys.serverPublicKey);
    assert.equal(connected.data.salt, keys.salt);
    assert.deepEqual(calls, [
      { clientId: connected.data.id, userId: 'ann', data: { token: 't', userId: 'ann', publicKey: 'client-key' } },
    ]);
    const info = server.getClients({ id: connected.data.id });
    assert.equal(info.encrypted, true);
    assert.equal(info.serverPublicKey, keys.serverPublicKey);
    assert.equal(info.salt, keys.salt);
    await server.log.waitFor('info', 'encrypted: true');
    client.close();
  });

  it('closes with 4004 and logs when no handshakeFn is configured', async () => {
    const server = await start({ requireEncryption: true });
    const client = await TestClient.open(server.url);
    client.send({ event: 'authenticate', data: { token: 't' } });
    assert.deepEqual(await client.waitClosed(), { code: 4004, reason: 'Encryption required' });
    await server.log.waitFor('error', 'requireEncryption is true but no handshakeFn configured');
    await waitUntil(() => server.getClients().size === 0, 3000, 'the client to be removed');
  });

  for (const [label, handshakeFn, logged] of [
    ['returns null', () => null, ['info', 'Handshake rejected']],
    ['returns false', async () => false, ['info', 'Handshake rejected']],
    ['throws', () => {
      throw new Error('bad key');
    }, ['error', 'bad key']],
    ['rejects', () => Promise.reject(new Error('no key')), ['error', 'no key']],
  ]) {
    it(`answers 'Encryption handshake failed' and closes with 4004 when handshakeFn ${label}`, async () => {
      const server = await start({ requireEncryption: true, handshakeFn });
      const client = await TestClient.open(server.url);
      client.send({ event: 'authenticate', data: { token: 't' } });
      assert.deepEqual((await client.next('error')).data, { message: 'Encryption handshake failed' });
      assert.deepEqual(await client.waitClosed(), { code: 4004, reason: 'Encryption required' });
      await server.log.waitFor(...logged);
      assert.ok(!client.received.some(message => message.event === 'connected'));
    });
  }

  it('bounds a handshakeFn that never settles by the authentication window (4001)', async () => {
    const server = await start({ requireEncryption: true, authTimeout: 50, handshakeFn: () => new Promise(() => {}) });
    const client = await TestClient.open(server.url);
    client.send({ event: 'authenticate', data: { token: 't' } });
    assert.deepEqual(await client.waitClosed(), { code: 4001, reason: 'Authentication timeout' });
  });
});

describe('outboundTransformer', () => {
  const start = serverPool();

  it('runs for encrypted clients on every local path, with the client as the spec describes it', async () => {
    const seen = [];
    const server = await start({
      requireEncryption: true,
      handshakeFn: () => keys,
      authenticateFn: data => ({ userId: data.userId, metadata: { role: 'tester' } }),
      outboundTransformer: opts => {
        seen.push(opts);
        return wrap(opts);
      },
    });
    const secret = await authenticatedClient(server, { userId: 'sam', encrypt: true });
    server.sendToClient({ clientId: secret.id, event: 'direct', data: 1 });
    server.sendToUser({ userId: 'sam', event: 'user', data: 2 });
    server.sendToRoom({ room: 'ws-default', event: 'room', data: 3 });
    server.broadcast({ event: 'all', data: 4 });
    server.send({ payload: { topic: 'sent', data: 5 } });
    for (const [event, data] of [['direct', 1], ['user', 2], ['room', 3], ['all', 4], ['sent', 5]]) {
      const message = await secret.next('encrypted');
      assert.deepEqual(message.data, { for: secret.id, event, data });
    }
    const client = seen[0].client;
    assert.equal(client.id, secret.id);
    assert.equal(client.userId, 'sam');
    assert.equal(client.encrypted, true);
    assert.equal(client.serverPublicKey, keys.serverPublicKey);
    assert.equal(client.salt, keys.salt);
    assert.deepEqual(client.metadata, { role: 'tester' });
    assert.ok(client.rooms.has('ws-default'));
    secret.close();
  });

  it('enableClientEncryption: only that client goes through the transformer, others keep plaintext', async () => {
    let calls = 0;
    const server = await start({
      outboundTransformer: opts => {
        calls++;
        return wrap(opts);
      },
    });
    const secret = await authenticatedClient(server);
    const plain = await authenticatedClient(server);
    server.broadcast({ event: 'before', data: 0 });
    assert.equal((await secret.next('before')).data, 0);
    assert.equal(calls, 0, 'not encrypted yet: no transformer');
    server.enableClientEncryption({ clientId: secret.id });
    server.enableClientEncryption({ clientId: secret.id }); // already encrypted: no-op
    server.enableClientEncryption({ clientId: 'nobody' }); // unknown: no-op
    assert.equal(server.getClients({ id: secret.id }).encrypted, true);
    assert.equal(server.getClients({ id: plain.id }).encrypted, false);
    server.sendToRoom({ room: 'ws-default', event: 'news', data: 1 });
    assert.deepEqual((await secret.next('encrypted')).data, { for: secret.id, event: 'news', data: 1 });
    assert.deepEqual(await plain.next('news'), { event: 'news', data: 1 });
    assert.equal(calls, 1, 'one transformer call: the plain client got the shared frame');
    // The raw socket is not the transformer's: socket.send goes out as it is.
    server.getClients({ id: secret.id }).socket.send('{"event":"raw","data":1}');
    assert.deepEqual(await secret.next('raw'), { event: 'raw', data: 1 });
    secret.close();
    plain.close();
  });

  it('null from the transformer sends the original message', async () => {
    const server = await start({ outboundTransformer: () => null });
    const client = await authenticatedClient(server);
    server.enableClientEncryption({ clientId: client.id });
    server.sendToClient({ clientId: client.id, event: 'as-is', data: { n: 1 } });
    assert.deepEqual(await client.next('as-is'), { event: 'as-is', data: { n: 1 } });
    client.close();
  });

  it('a transformer that throws or rejects drops that message for that client only, and logs it', async () => {
    const server = await start({
      outboundTransformer: opts => {
        if (opts.data === 'throw') {
          throw new Error('cipher exploded');
        }
        if (opts.data === 'reject') {
          return Promise.reject(new Error('cipher rejected'));
        }
        return wrap(opts);
      },
    });
    const secret = await authenticatedClient(server);
    const plain = await authenticatedClient(server);
    server.enableClientEncryption({ clientId: secret.id });
    for (const data of ['throw', 'reject', 'fine']) {
      server.broadcast({ event: 'tick', data });
    }
    assert.deepEqual((await secret.next('encrypted')).data, { for: secret.id, event: 'tick', data: 'fine' });
    assert.ok(await secret.nothing(message => message.event === 'tick' || message.event === 'encrypted'));
    for (const data of ['throw', 'reject', 'fine']) {
      assert.equal((await plain.next('tick')).data, data);
    }
    await server.log.waitFor('error', 'cipher exploded');
    await server.log.waitFor('error', 'cipher rejected');
    assert.ok(server.log.has('error', `Outbound transformer error | id: ${secret.id}`));
    secret.close();
    plain.close();
  });

  it('a transformer that never settles is given up after callbackTimeout, and later messages flow', async () => {
    const server = await start({
      callbackTimeout: 150,
      outboundTransformer: opts => (opts.data === 'hang' ? new Promise(() => {}) : wrap(opts)),
    });
    const client = await authenticatedClient(server);
    server.enableClientEncryption({ clientId: client.id });
    const started = Date.now();
    server.sendToClient({ clientId: client.id, event: 'e', data: 'hang' });
    server.sendToClient({ clientId: client.id, event: 'e', data: 'after' });
    assert.deepEqual((await client.next('encrypted')).data, { for: client.id, event: 'e', data: 'after' });
    assert.ok(Date.now() - started >= 120, 'the later message waited for the timeout, keeping order');
    assert.ok(server.log.has('warn', `outboundTransformer did not settle in time | id: ${client.id}`));
    client.close();
  });

  it('delivers to each encrypted client in send order although the transformer settles out of order', async () => {
    const server = await start({
      outboundTransformer: async opts => {
        // Earlier messages take longer.
        await sleep(40 - opts.data * 3);
        return wrap(opts);
      },
    });
    const a = await authenticatedClient(server);
    const b = await authenticatedClient(server);
    server.enableClientEncryption({ clientId: a.id });
    server.enableClientEncryption({ clientId: b.id });
    for (let n = 0; n < 12; n++) {
      if (n % 3 === 0) server.broadcast({ event: 'seq', data: n });
      else if (n % 3 === 1) server.sendToClient({ clientId: a.id, event: 'seq', data: n });
      else server.sendToRoom({ room: 'ws-default', event: 'seq', data: n });
    }
    await waitUntil(() => a.received.length >= 12 && b.received.length >= 8, 5000);
    const order = client => client.received.filter(m => m.event === 'encrypted').map(m => m.data.data);
    assert.deepEqual(order(a), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
    assert.deepEqual(order(b), [0, 2, 3, 5, 6, 8, 9, 11]);
    a.close();
    b.close();
  });

  it('encryptedBatchLimit bounds the transformer calls one fan-out has in flight', async () => {
    let inFlight = 0;
    let most = 0;
    const server = await start({
      encryptedBatchLimit: 2,
      outboundTransformer: async opts => {
        inFlight++;
        most = Math.max(most, inFlight);
        await sleep(20);
        inFlight--;
        return wrap(opts);
      },
    });
    const clients = [];
    for (let i = 0; i < 6; i++) {
      const client = await authenticatedClient(server);
      server.enableClientEncryption({ clientId: client.id });
      clients.push(client);
    }
    server.broadcast({ event: 'fan', data: 1 });
    for (const client of clients) {
      assert.equal((await client.next('encrypted')).data.event, 'fan');
    }
    assert.equal(most, 2);
    for (const client of clients) client.close();
  });
});

describe('outboundTransformer for Redis-delivered messages', () => {
  let redis;
  before(async () => {
    redis = await startRedis();
  });
  after(async () => {
    await redis?.stop();
  });

  it('transforms what arrives from another instance for encrypted clients only', async () => {
    const a = await startServer({ redisConnection: redis.url });
    const b = await startServer({ redisConnection: redis.url, outboundTransformer: wrap });
    try {
      const secret = await authenticatedClient(b, { token: 't', userId: 'zoe' });
      const plain = await authenticatedClient(b);
      b.enableClientEncryption({ clientId: secret.id });
      a.send({ payload: { topic: 'from-a', data: 1 } });
      assert.deepEqual((await secret.next('encrypted')).data, { for: secret.id, event: 'from-a', data: 1 });
      assert.deepEqual(await plain.next('from-a'), { event: 'from-a', data: 1 });
      a.send({ destination: secret.id, payload: { topic: 'direct-from-a', data: 2 } });
      assert.deepEqual((await secret.next('encrypted')).data, { for: secret.id, event: 'direct-from-a', data: 2 });
      secret.close();
      plain.close();
    } finally {
      await a.shutdown();
      await b.shutdown();
    }
  });
});
