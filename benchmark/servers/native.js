// This package on whichever runtime runs this file (node or bun): standalone, or on the
// Redis at the port given as the first argument.
// Usage: node|bun native.js [redisPort]
// BENCH_PACKAGE_DIR: another checkout of this package, built, to compare two builds in one run
// (`run.mjs --variant BENCH_PACKAGE_DIR=/path/to/it`).
const { WebSocketServerHelper } = require(process.env.BENCH_PACKAGE_DIR || '../..');
const { benchmarkCallbacks, ready } = require('./handlers');

const helper = new WebSocketServerHelper({
  identifier: 'bench-native',
  redisConnection: process.argv[2] ? `redis://127.0.0.1:${process.argv[2]}` : 'standalone',
  host: '127.0.0.1',
  port: 0,
  logger: {}, // silenced, as the TypeScript helper's is
  ...benchmarkCallbacks(() => helper),
});
helper.configure().then(() => ready(helper.getPort()));
process.on('SIGTERM', () => helper.shutdown());
