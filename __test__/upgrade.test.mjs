import net from 'node:net';

import { assert, describe, it } from './support/framework.mjs';
import { rawExchange, serverPool, sleep, TestClient, upgradeRequest, waitUntil, WebSocket } from './support/helpers.mjs';

/** Opens a ws client and resolves with the HTTP status it was refused with (or 101). */
function upgradeStatus(url, options = {}) {
  return new Promise(resolve => {
    const ws = new WebSocket(url, options);
    ws.on('open', () => {
      ws.terminate();
      resolve(101);
    });
    ws.on('unexpected-response', (_request, response) => {
      resolve(response.statusCode);
      ws.terminate();
    });
    ws.on('error', () => {});
  });
}

describe('the upgrade request', () => {
  const start = serverPool();

  it('gives authenticateFn the request: url, path, query, headers, remote address, client id', async () => {
    const seen = [];
    const server = await start({
      authenticateFn: (data, request) => {
        seen.push(request);
        return data.token ? { userId: 'u' } : null;
      },
    });
    const client = await TestClient.open(`${server.url}?room=lobby&tag=a%20b`, {
      headers: { Cookie: 'session=abc', 'X-Tenant': 'acme' },
    });
    const connected = await client.authenticate();
    const [request] = seen;
    assert.equal(request.clientId, connected.data.id);
    assert.equal(request.url, '/ws?room=lobby&tag=a%20b');
    assert.equal(request.path, '/ws');
    assert.deepEqual(request.query, { room: 'lobby', tag: 'a b' });
    // path and query are computed on first read, and kept when the request is logged as JSON.
    assert.deepEqual(JSON.parse(JSON.stringify(request)).query, { room: 'lobby', tag: 'a b' });
    assert.equal(request.headers.cookie, 'session=abc');
    assert.equal(request.headers['x-tenant'], 'acme');
    assert.equal(request.headers.upgrade, 'websocket');
    assert.match(request.remoteAddress, /^127\.0\.0\.1:\d+$/);
    assert.equal(server.getClients({ id: client.id }).socket.remoteAddress, request.remoteAddress);
    await client.close();
  });

  it('lets verifyUpgradeFn accept or refuse with an HTTP status before the WebSocket opens', async () => {
    const requests = [];
    const server = await start({
      callbackTimeout: 300,
      verifyUpgradeFn: request => {
        requests.push(request);
        switch (request.query.case) {
          case 'sync-yes':
            return true;
          case 'async-yes':
            return sleep(20).then(() => true);
          case 'no':
            return false;
          case 'status':
            return { status: 401 };
          case 'throws':
            throw new Error('policy store down');
          case 'rejects':
            return Promise.reject(new Error('nope'));
          case 'hangs':
            return new Promise(() => {});
          default:
            return undefined;
        }
      },
    });
    const statusOf = name => upgradeStatus(`${server.url}?case=${name}`);
    assert.equal(await statusOf('sync-yes'), 101);
    assert.equal(await statusOf('async-yes'), 101);
    assert.equal(await statusOf('no'), 403);
    assert.equal(await statusOf('status'), 401);
    assert.equal(await statusOf('other'), 403);
    assert.equal(await statusOf('throws'), 500);
    await server.log.waitFor('error', 'verifyUpgradeFn error');
    assert.ok(server.log.has('error', 'policy store down'));
    assert.equal(await statusOf('rejects'), 500);
    assert.equal(await statusOf('hangs'), 503);
    await server.log.waitFor('warn', 'verifyUpgradeFn did not settle in time');
    // Refused upgrades never became clients; an accepted one authenticates as usual.
    await waitUntil(() => server.getClients().size === 0, 3000, 'the accepted test sockets to go');
    const client = await TestClient.open(`${server.url}?case=sync-yes`);
    await client.authenticate();
    assert.equal(requests.at(-1).headers['sec-websocket-version'], '13');
    await client.close();
  });

  it('refuses upgrades from origins not in allowedOrigins with 403', async () => {
    const server = await start({ allowedOrigins: ['https://app.example.com/', 'http://localhost:3000'] });
    assert.equal(await upgradeStatus(server.url, { origin: 'https://app.example.com' }), 101);
    assert.equal(await upgradeStatus(server.url, { origin: 'HTTP://LOCALHOST:3000' }), 101);
    assert.equal(await upgradeStatus(server.url, { origin: 'https://evil.example.com' }), 403);
    assert.equal(await upgradeStatus(server.url, { origin: 'null' }), 403);
    // Not from a browser page: no Origin header to check.
    assert.equal(await upgradeStatus(server.url), 101);
    await server.log.waitFor('info', 'origin: https://evil.example.com');
  });

  it('rejects invalid allowedOrigins and verifyUpgradeFn options', async () => {
    await assert.rejects(start({ allowedOrigins: 'https://a.example' }), /allowedOrigins/);
    await assert.rejects(start({ allowedOrigins: [''] }), /allowedOrigins/);
    await assert.rejects(start({ verifyUpgradeFn: 'yes' }), /verifyUpgradeFn/);
    await assert.rejects(start({ upgradeTimeout: 0 }), /upgradeTimeout/);
    await assert.rejects(start({ serverOptions: { idleTimeout: -1 } }), /idleTimeout/);
  });

  it('drops connections that do not complete the upgrade within upgradeTimeout (slow-loris)', async () => {
    const server = await start({ upgradeTimeout: 300 });
    const bystander = await TestClient.open(server.url);
    await bystander.authenticate();
    const openedAt = Date.now();
    // Headers trickle in without ever ending.
    const results = await Promise.all(
      Array.from({ length: 20 }, () =>
        new Promise(resolve => {
          const socket = net.connect(server.getPort(), '127.0.0.1');
          let data = '';
          socket.on('data', chunk => (data += chunk));
          socket.on('error', () => {});
          socket.on('connect', () => socket.write(upgradeRequest().slice(0, 60)));
          const trickle = setInterval(() => socket.write('X'), 50);
          socket.on('close', () => {
            clearInterval(trickle);
            resolve({ data, after: Date.now() - openedAt });
          });
        }),
      ),
    );
    for (const { data, after } of results) {
      assert.equal(data, '', 'no answer, just dropped');
      assert.ok(after >= 250 && after < 2500, `dropped after ${after} ms`);
    }
    await server.log.waitFor('debug', 'Upgrade timeout');
    bystander.send({ event: 'heartbeat' });
    assert.equal(bystander.ws.readyState, 1);
    // A complete request still works afterwards.
    const { data } = await rawExchange(server.getPort(), Buffer.from(upgradeRequest()), 300);
    assert.match(data.toString('latin1'), /^HTTP\/1\.1 101 /);
    await bystander.close();
  });
});
