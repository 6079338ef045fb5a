// Serves @venizia/ignis-helpers' WebSocketServerHelper the way Ignis' WebSocketComponent does:
// a Bun server whose fetch upgrades `path` with a random clientId, reloaded with the
// helper's websocket handler after configure(). Bun only. Used by the interop tests and the
// benchmarks.
const { RedisHelper, WebSocketServerHelper } = require('@venizia/ignis-helpers');

const silent = { for: () => silent, debug() {}, info() {}, warn() {}, error() {}, log() {} };

/**
 * @param {object} opts
 * @param {number} opts.redisPort
 * @param {(helper: WebSocketServerHelper) => object} opts.callbacks the helper's callbacks
 * @returns {Promise<{ helper, server, redis, stop: () => Promise<void> }>}
 */
async function serveTypeScriptHelper({ redisPort, callbacks, path = '/ws', identifier = 'ts-helper' }) {
  const redis = new RedisHelper({ name: identifier, host: '127.0.0.1', port: redisPort, autoConnect: false });
  redis.logger = silent;
  const server = Bun.serve({ hostname: '127.0.0.1', port: 0, fetch: () => new Response('starting', { status: 503 }) });
  let helper;
  helper = new WebSocketServerHelper({ identifier, path, server, redisConnection: redis, ...callbacks(() => helper) });
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
  const stop = async () => {
    await helper.shutdown();
    server.stop(true);
  };
  return { helper, server, redis, stop, silent };
}

module.exports = { serveTypeScriptHelper, silent };
