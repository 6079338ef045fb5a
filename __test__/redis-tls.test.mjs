// The Redis bridge over TLS, against a real redis-server listening with TLS only.
import { createRequire } from 'node:module';

import { after, assert, before, describe, it } from './support/framework.mjs';
import { authenticatedClient, captureLogger, pkg, startRedis, startServer, tlsFixtures } from './support/helpers.mjs';

const require = createRequire(import.meta.url);
const { ca, clientCert, clientKey } = tlsFixtures();

describe('Redis bridge over TLS', () => {
  let redis;
  before(async () => {
    redis = await startRedis(undefined, { tls: true });
  });
  after(async () => {
    await redis?.stop();
  });

  it('connects with a private CA ({ host, port, tls: { ca } }) and delivers across instances and from the emitter', async () => {
    const connection = { host: '127.0.0.1', port: redis.port, tls: { ca } };
    const a = await startServer({ redisConnection: connection });
    const b = await startServer({ redisConnection: { ...connection, tls: { ca: Buffer.from(ca) } } });
    const emitter = new pkg.WebSocketEmitter({ redisConnection: connection });
    try {
      assert.equal(a.getRedisStatus(), 'ready');
      const onB = await authenticatedClient(b);
      a.send({ payload: { topic: 'over-tls', data: 1 } });
      assert.equal((await onB.next('over-tls')).data, 1);
      await emitter.configure();
      await emitter.toClient({ clientId: onB.id, event: 'emitted-over-tls', data: 2 });
      assert.equal((await onB.next('emitted-over-tls')).data, 2);
      onB.close();
    } finally {
      await emitter.shutdown();
      await a.shutdown();
      await b.shutdown();
    }
  });

  it("reads TLS from an Ignis DefaultRedisHelper's ioredis client", async () => {
    // RedisHelper takes no TLS option; a TLS connection is a DefaultRedisHelper around an
    // ioredis client built with `tls`.
    const { DefaultRedisHelper } = require('@venizia/ignis-helpers');
    const { Redis } = require('ioredis');
    const helper = new DefaultRedisHelper({
      scope: 'test',
      identifier: 'tls',
      client: new Redis({ host: '127.0.0.1', port: redis.port, tls: { ca }, lazyConnect: true }),
    });
    const server = await startServer({ redisConnection: helper });
    const other = await startServer({ redisConnection: { host: '127.0.0.1', port: redis.port, tls: { ca } } });
    try {
      const client = await authenticatedClient(server);
      other.send({ payload: { topic: 'helper-tls', data: true } });
      assert.equal((await client.next('helper-tls')).data, true);
      client.close();
    } finally {
      await server.shutdown();
      await other.shutdown();
    }
  });

  it('refuses a server whose certificate it cannot verify, says why, and connects with rejectUnauthorized: false', async () => {
    const logger = captureLogger();
    // rediss:// alone trusts the bundled public roots, which do not include the test CA.
    await assert.rejects(startServer({ redisConnection: redis.url, redisReadyTimeout: 1000, logger }), {
      message: 'Redis client did not become ready within 1000ms',
    });
    const failure = logger.lines.find(line => line.text.includes('Redis connection failed'));
    assert.ok(failure, 'the reason is logged');
    assert.match(failure.text, /certificate|UnknownIssuer/i);

    const insecure = await startServer({
      redisConnection: { host: '127.0.0.1', port: redis.port, tls: { rejectUnauthorized: false } },
    });
    assert.equal(insecure.getRedisStatus(), 'ready');
    await insecure.shutdown();
  });

  it('presents a client certificate (tls: { cert, key }) to a Redis that requires one', async () => {
    const strict = await startRedis(undefined, { tls: true, clientCerts: true });
    try {
      const withoutCert = captureLogger();
      await assert.rejects(
        startServer({
          redisConnection: { host: '127.0.0.1', port: strict.port, tls: { ca } },
          redisReadyTimeout: 1000,
          logger: withoutCert,
        }),
        { message: 'Redis client did not become ready within 1000ms' },
      );
      assert.ok(withoutCert.has('error', 'Redis connection failed'));

      const server = await startServer({
        redisConnection: { host: '127.0.0.1', port: strict.port, tls: { ca, cert: clientCert, key: clientKey } },
      });
      assert.equal(server.getRedisStatus(), 'ready');
      await server.shutdown();
    } finally {
      await strict.stop();
    }
  });

  it('rejects half a client certificate with a clear error', async () => {
    await assert.rejects(
      startServer({ redisConnection: { host: '127.0.0.1', port: redis.port, tls: { ca, cert: clientCert } } }),
      /tls.cert and tls.key go together/,
    );
  });
});
