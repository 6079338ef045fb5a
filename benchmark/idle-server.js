// A native server with nothing but authentication, for memory measurements.
const { WebSocketServerHelper } = require('..');

const helper = new WebSocketServerHelper({
  identifier: 'idle',
  redisConnection: 'standalone',
  host: '127.0.0.1',
  port: 0,
  logger: {},
  authenticateFn: data => ({ userId: data.user }),
});
helper.configure().then(() => console.log(`port ${helper.getPort()}`));
process.on('SIGTERM', () => helper.shutdown());
