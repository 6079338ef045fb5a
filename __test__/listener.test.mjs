import net from 'node:net';

import { assert, describe, it } from './support/framework.mjs';
import { TestClient, pkg, rawExchange, serverPool, upgradeRequest } from './support/helpers.mjs';

const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

describe('listener', () => {
  const start = serverPool();

  it('binds a free port with port 0 and reports it with getPort()', async () => {
    const server = await start({ path: '/realtime' });
    assert.ok(server.getPort() > 0);
    assert.equal(server.getPath(), '/realtime');
    const client = await TestClient.open(`ws://127.0.0.1:${server.getPort()}/realtime?token=abc`);
    await client.authenticate();
    client.close();
  });

  it('rejects configure() when the port is taken', async () => {
    const blocker = net.createServer();
    await new Promise(resolve => blocker.listen(0, '127.0.0.1', resolve));
    const { port } = blocker.address();
    try {
      const helper = new pkg.WebSocketServerHelper({
        identifier: 'taken',
        redisConnection: 'standalone',
        host: '127.0.0.1',
        port,
        authenticateFn: () => null,
        logger: { info() {}, warn() {}, error() {}, debug() {} },
      });
      await assert.rejects(helper.configure(), error => {
        assert.match(error.message, /^\[WebSocketServerHelper\] cannot listen on 127\.0\.0\.1:\d+: .*in use/i);
        return true;
      });
    } finally {
      blocker.close();
    }
  });

  it('rejects configure() with a clear error for invalid options', async () => {
    const cases = [
      [{ port: 70000 }, /"port"/],
      [{ port: 'x' }, /"port"/],
      [{ path: 'ws' }, /"path"/],
      [{ authTimeout: -1 }, /"authTimeout"/],
      [{ authenticateFn: undefined }, /"authenticateFn"/],
      [{ messageHandler: 'nope' }, /"messageHandler"/],
      [{ defaultRooms: ['ok', 3] }, /"defaultRooms"/],
      [{ serverOptions: { maxPayloadLength: 0 } }, /"serverOptions.maxPayloadLength"/],
    ];
    for (const [options, pattern] of cases) {
      const helper = new pkg.WebSocketServerHelper({
        identifier: 'bad',
        redisConnection: 'standalone',
        authenticateFn: () => null,
        logger: { info() {}, warn() {}, error() {}, debug() {} },
        ...options,
      });
      await assert.rejects(helper.configure(), pattern, JSON.stringify(options));
    }
  });

  it('accepts and ignores the Bun `server` option', async () => {
    const server = await start({ server: { publish() {}, pendingWebSockets: 0 } });
    const client = await TestClient.open(server.url);
    await client.authenticate();
    client.close();
  });

  it('gives every socket a UUID v4 clientId', async () => {
    const server = await start();
    const a = await TestClient.open(server.url);
    const b = await TestClient.open(server.url);
    const [ca, cb] = [await a.authenticate(), await b.authenticate()];
    assert.match(ca.data.id, UUID_V4);
    assert.match(cb.data.id, UUID_V4);
    assert.notEqual(ca.data.id, cb.data.id);
    a.close();
    b.close();
  });

  it('answers non-WebSocket requests with a plain HTTP error and closes', async () => {
    const server = await start();
    const port = server.getPort();
    const statusOf = async request => {
      const { data, ended } = await rawExchange(port, request);
      assert.ok(ended, `connection closed after ${JSON.stringify(request.slice(0, 30))}`);
      return data.toString().split('\r\n')[0];
    };
    assert.equal(await statusOf(upgradeRequest('/other')), 'HTTP/1.1 404 Not Found');
    assert.equal(await statusOf('GET /ws HTTP/1.1\r\nHost: x\r\n\r\n'), 'HTTP/1.1 426 Upgrade Required');
    assert.equal(await statusOf('GET / HTTP/1.1\r\nHost: x\r\n\r\n'), 'HTTP/1.1 404 Not Found');
    assert.equal(await statusOf('POST /ws HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n'), 'HTTP/1.1 405 Method Not Allowed');
    assert.equal(await statusOf('\x16\x03\x01\x02\x00garbage\r\n\r\n'), 'HTTP/1.1 400 Bad Request');
    assert.equal(
      await statusOf(upgradeRequest('/ws').replace('dGhlIHNhbXBsZSBub25jZQ==', 'bad')),
      'HTTP/1.1 400 Bad Request',
    );
    // The server still serves WebSockets afterwards.
    const client = await TestClient.open(server.url);
    await client.authenticate();
    client.close();
  });

  it('returns a Bun handler that turns away misrouted sockets instead of serving them', async () => {
    const server = await start({ serverOptions: { maxPayloadLength: 1024 } });
    const handler = server.getBunWebSocketHandler();
    assert.equal(handler.maxPayloadLength, 1024);
    let closed;
    handler.open({ close: (code, reason) => (closed = { code, reason }) });
    assert.equal(closed.code, 1011);
    assert.match(closed.reason, new RegExp(String(server.getPort())));
  });
});
