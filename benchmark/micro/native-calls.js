// The cost of one call into the addon, as JS makes them per message: sendToClient (the raw
// Node-API function) and hasClient (napi-rs' generated glue), both to an unknown client id,
// so no socket is written. Needs the built addon.
// Usage: taskset -c 0 node|bun benchmark/micro/native-calls.js
const { WebSocketServerHelper } = require('../..');
const binding = require('../../binding.js');

const CALLS = 300_000;
const helper = new WebSocketServerHelper({
  identifier: 'native-calls',
  redisConnection: 'standalone',
  host: '127.0.0.1',
  port: 0,
  logger: {},
  authenticateFn: () => ({ userId: 'u' }),
});

function measure(name, call) {
  for (let i = 0; i < 20_000; i++) {
    call();
  }
  const start = performance.now();
  for (let i = 0; i < CALLS; i++) {
    call();
  }
  console.log(`${name.padEnd(34)} ${(((performance.now() - start) * 1e6) / CALLS).toFixed(0)} ns a call`);
}

helper.configure().then(async () => {
  const handle = helper.handle;
  const id = '0b8e6f4c-2d1a-4b7e-9f3a-100000000000';
  const text = `{"event":"echo","data":{"t":1733200000000000,"pad":"${'x'.repeat(64)}"}}`;
  // As lib/server.js makes them: a new concatenation per message, which the engine flattens.
  const dataTexts = Array.from({ length: 35 }, (_, i) => `{"t":${1733200000000000 + i},"pad":"${'x'.repeat(64)}"}`);
  let next = 0;
  const built = () => `{"event":"echo","data":${dataTexts[next++ % dataTexts.length]}}`;
  // The same with text that is not ASCII, as JSON.stringify leaves it (Vietnamese, say).
  const wideTexts = dataTexts.map(text => text.replace('xxxxxxxxxxxxxxxx', 'Xin chào thế giới'));
  const builtWide = () => `{"event":"echo","data":${wideTexts[next++ % wideTexts.length]}}`;
  const sendToClient = binding.rawSendToClient();
  for (let pass = 0; pass < 2; pass++) {
    measure('sendToClient(handle, id, text)', () => sendToClient(handle, id, text));
    measure('sendToClient(handle, id, built text)', () => sendToClient(handle, id, built()));
    measure('sendToClient(..., built non-ASCII text)', () => sendToClient(handle, id, builtWide()));
    measure('hasClient(handle, id) (napi-rs)', () => binding.hasClient(handle, id));
    measure('sendToUser(handle, id, text) (napi-rs)', () => binding.sendToUser(handle, id, text));
  }
  await helper.shutdown();
});
