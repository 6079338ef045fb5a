// JSON.stringify({ event, data }) against the text built from the two values' JSON
// (lib/message-text.js), for the echo benchmark's message. No sockets, no addon.
// Usage: taskset -c 0 node|bun benchmark/micro/message-text.js
const { eventMessageText } = require('../../lib/message-text.js');

const PER_ROUND = 35;
const ROUNDS = 20_000;
const data = Array.from({ length: PER_ROUND }, (_, i) => ({ t: 1_733_200_000_000_000 + i, pad: 'x'.repeat(64) }));
let sink = 0;

function measure(name, encode) {
  const round = () => {
    for (const value of data) {
      sink += encode('echo', value).length;
    }
  };
  for (let i = 0; i < 2000; i++) {
    round();
  }
  const start = performance.now();
  for (let i = 0; i < ROUNDS; i++) {
    round();
  }
  console.log(`${name.padEnd(32)} ${(((performance.now() - start) * 1e6) / (ROUNDS * PER_ROUND)).toFixed(0)} ns a message`);
}

for (let pass = 0; pass < 2; pass++) {
  measure('JSON.stringify({ event, data })', (event, value) => JSON.stringify({ event, data: value }));
  measure('eventMessageText(event, data)', eventMessageText);
}
if (sink === 0) {
  console.log('(nothing measured)');
}
