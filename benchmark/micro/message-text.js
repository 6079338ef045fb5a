// JSON.stringify({ event, data }) against lib/message-text.js (the text built from the two values' JSON),
// for two shapes of data: the echo benchmark's `{ t, pad }`, and a nested record such as an
// application sends. No sockets, no addon.
// Usage: taskset -c 0 node|bun benchmark/micro/message-text.js
const { eventMessageText } = require('../../lib/message-text.js');

const PER_ROUND = 35;
const ROUNDS = 20_000;
const SHAPES = {
  echo: i => ({ t: 1_733_200_000_000_000 + i, pad: 'x'.repeat(64) }),
  nested: i => ({
    id: `order-${i}`,
    total: 1234.5 + i,
    paid: i % 2 === 0,
    customer: { name: 'Zoë "Z" Example', tags: ['vip', 'eu'] },
    lines: [
      { sku: 'A-1', quantity: 2, price: 10.25 },
      { sku: 'B-2', quantity: 1, price: null },
    ],
  }),
};
let sink = 0;

function measure(name, data, encode) {
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
  console.log(`${name.padEnd(40)} ${(((performance.now() - start) * 1e6) / (ROUNDS * PER_ROUND)).toFixed(0)} ns a message`);
}

for (let pass = 0; pass < 2; pass++) {
  for (const [shape, make] of Object.entries(SHAPES)) {
    const data = Array.from({ length: PER_ROUND }, (_, i) => make(i));
    measure(`${shape}: JSON.stringify({ event, data })`, data, (event, value) => JSON.stringify({ event, data: value }));
    measure(`${shape}: eventMessageText(event, data)`, data, eventMessageText);
  }
}
if (sink === 0) {
  console.log('(nothing measured)');
}
