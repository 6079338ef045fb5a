// The TypeScript helper (@venizia/ignis-helpers) on Bun, wired as Ignis' WebSocketComponent
// wires it (see __test__/support/ignis-bun-wiring.cjs), with its logger silenced.
// Usage: bun ts-helper.js <redisPort>
const { serveTypeScriptHelper } = require('../../__test__/support/ignis-bun-wiring.cjs');
const { benchmarkCallbacks, ready } = require('./handlers');

serveTypeScriptHelper({
  redisPort: Number(process.argv[2]),
  identifier: 'bench-ts',
  callbacks: getHelper => benchmarkCallbacks(getHelper),
})
  .then(({ server, stop }) => {
    ready(server.port);
    process.on('SIGTERM', async () => {
      await stop();
      process.exit(0);
    });
  })
  .catch(error => {
    console.error(error);
    process.exit(1);
  });
