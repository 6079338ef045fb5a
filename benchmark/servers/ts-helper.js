// The TypeScript helper (@venizia/ignis-helpers) on Bun, wired as Ignis' WebSocketComponent
// wires it: a Bun server whose fetch upgrades `path` with a random clientId, reloaded with
// the helper's websocket handler after configure(). Its logger is silenced.
// Usage: bun ts-helper.js <redisPort>
const { RedisHelper, WebSocketServerHelper } = require('@venizia/ignis-helpers');
const { benchmarkCallbacks, ready } = require('./handlers');

const silent = { for: () => silent, debug() {}, info() {}, warn() {}, error() {}, log() {} };
const redisPort = Number(process.argv[2]);
const path = '/ws';

async function main() {
  const redis = new RedisHelper({ name: 'bench', host: '127.0.0.1', port: redisPort, autoConnect: false });
  redis.logger = silent;
  const server = Bun.serve({ hostname: '127.0.0.1', port: 0, fetch: () => new Response('starting', { status: 503 }) });
  const helper = new WebSocketServerHelper({
    identifier: 'bench-ts',
    path,
    server,
    redisConnection: redis,
    ...benchmarkCallbacks(() => helper),
  });
  helper.logger = silent;
  await helper.configure();
  server.reload({
    fetch: (req, srv) => {
      const url = new URL(req.url);
      if (url.pathname === path && req.headers.get('upgrade')?.toLowerCase() === 'websocket') {
        return srv.upgrade(req, { data: { clientId: crypto.randomUUID() } })
          ? undefined
          : new Response('WebSocket upgrade failed', { status: 500 });
      }
      return new Response('not found', { status: 404 });
    },
    websocket: helper.getBunWebSocketHandler(),
  });
  ready(server.port);
  process.on('SIGTERM', async () => {
    await helper.shutdown();
    server.stop(true);
    process.exit(0);
  });
}

main().catch(error => {
  console.error(error);
  process.exit(1);
});
