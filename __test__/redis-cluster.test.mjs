import { createRequire } from 'node:module';

import { after, assert, before, describe, it } from './support/framework.mjs';
import { authenticatedClient, pkg, startRedisCluster, startServer, tlsFixtures } from './support/helpers.mjs';

const require = createRequire(import.meta.url);

describe('Redis Cluster', () => {
  let cluster;
  let a;
  let b;
  before(async () => {
    cluster = await startRedisCluster();
    a = await startServer({ redisConnection: { nodes: cluster.nodes } });
    // The other instance knows only the last node: any node relays every PUBLISH.
    b = await startServer({
      redisConnection: { nodes: [`redis://127.0.0.1:${cluster.nodes[2].port}`] },
      validateRoomFn: ({ rooms }) => rooms,
    });
  });
  after(async () => {
    await a?.shutdown();
    await b?.shutdown();
    await cluster?.stop();
  });

  it('delivers send() across instances through the cluster', async () => {
    const onA = await authenticatedClient(a, { token: 't', userId: 'ann' });
    const onB = await authenticatedClient(b, { token: 't', userId: 'bob' });
    onB.send({ event: 'join', data: { rooms: ['lobby', 'other-slot-room'] } });
    a.send({ payload: { topic: 'all', data: 1 } });
    assert.equal((await onB.next('all')).data, 1);
    a.send({ destination: onB.id, payload: { topic: 'direct', data: 2 } });
    assert.equal((await onB.next('direct')).data, 2);
    for (const room of ['lobby', 'other-slot-room']) {
      a.send({ destination: room, payload: { topic: `to-${room}`, data: 3 } });
      assert.equal((await onB.next(`to-${room}`)).data, 3);
    }
    b.send({ destination: onA.id, payload: { topic: 'back', data: 4 } });
    assert.equal((await onA.next('back')).data, 4);
    onA.close();
    onB.close();
  });

  it('the emitter publishes through the cluster to every target type', async () => {
    const emitter = new pkg.WebSocketEmitter({ redisConnection: { nodes: cluster.nodes } });
    await emitter.configure();
    const onA = await authenticatedClient(a, { token: 't', userId: 'cleo' });
    const onB = await authenticatedClient(b, { token: 't', userId: 'cleo' });
    await emitter.toUser({ userId: 'cleo', event: 'user', data: 1 });
    assert.equal((await onA.next('user')).data, 1);
    assert.equal((await onB.next('user')).data, 1);
    await emitter.toClient({ clientId: onA.id, event: 'client', data: 2 });
    assert.equal((await onA.next('client')).data, 2);
    await emitter.toRoom({ room: 'ws-default', event: 'room', data: 3, exclude: [onA.id] });
    assert.equal((await onB.next('room')).data, 3);
    assert.ok(await onA.nothing(m => m.event === 'room', 150));
    await emitter.broadcast({ event: 'all', data: 4 });
    assert.equal((await onA.next('all')).data, 4);
    assert.equal((await onB.next('all')).data, 4);
    await emitter.shutdown();
    onA.close();
    onB.close();
  });

  it("reads the nodes from an Ignis RedisClusterHelper's ioredis Cluster", async () => {
    const { RedisClusterHelper } = require('@venizia/ignis-helpers');
    const helper = new RedisClusterHelper({
      name: 'cluster',
      nodes: cluster.nodes.map(({ host, port }) => ({ host, port: String(port) })),
      clusterOptions: { lazyConnect: true },
    });
    const server = await startServer({ redisConnection: helper });
    try {
      assert.equal(server.getRedisStatus(), 'ready');
      const onServer = await authenticatedClient(server);
      const onB = await authenticatedClient(b);
      a.send({ payload: { topic: 'via-cluster-helper', data: 5 } });
      assert.equal((await onServer.next('via-cluster-helper')).data, 5);
      server.send({ destination: onB.id, payload: { topic: 'from-cluster-helper', data: 6 } });
      assert.equal((await onB.next('from-cluster-helper')).data, 6);
      onServer.close();
      onB.close();
    } finally {
      await server.shutdown();
    }
  });
});

describe('Redis Cluster over TLS', () => {
  let cluster;
  before(async () => {
    cluster = await startRedisCluster({ tls: true });
  });
  after(async () => {
    await cluster?.stop();
  });

  it('delivers across instances and from the emitter ({ nodes, tls: { ca } })', async () => {
    const connection = { nodes: cluster.nodes, tls: { ca: tlsFixtures().ca } };
    const a = await startServer({ redisConnection: connection });
    const b = await startServer({ redisConnection: connection });
    const emitter = new pkg.WebSocketEmitter({ redisConnection: connection });
    try {
      const onB = await authenticatedClient(b, { token: 't', userId: 'dora' });
      a.send({ destination: onB.id, payload: { topic: 'cluster-tls', data: 1 } });
      assert.equal((await onB.next('cluster-tls')).data, 1);
      await emitter.configure();
      await emitter.toUser({ userId: 'dora', event: 'cluster-tls-emitted', data: 2 });
      assert.equal((await onB.next('cluster-tls-emitted')).data, 2);
      onB.close();
    } finally {
      await emitter.shutdown();
      await a.shutdown();
      await b.shutdown();
    }
  });
});
