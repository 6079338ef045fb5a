// This package, standalone, on whichever runtime runs this file (node or bun).
const { WebSocketServerHelper } = require('../..');
const { benchmarkCallbacks, ready } = require('./handlers');

const helper = new WebSocketServerHelper({
  identifier: 'bench-native',
  redisConnection: 'standalone',
  host: '127.0.0.1',
  port: 0,
  logger: {}, // silenced, as the TypeScript helper's is
  ...benchmarkCallbacks(() => helper),
});
helper.configure().then(() => ready(helper.getPort()));
process.on('SIGTERM', () => helper.shutdown());
