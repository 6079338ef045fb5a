import { createRequire } from 'node:module';

import { assert, describe, it } from './support/framework.mjs';
import { authenticatedClient, serverPool, waitUntil } from './support/helpers.mjs';

const require = createRequire(import.meta.url);
const { eventMessageText } = require('../lib/message-text.js');

class Tagged {
  constructor(tag) {
    this.tag = tag;
  }

  toJSON(key) {
    return `${key}:${this.tag}`;
  }
}

// Every kind of value JSON.stringify treats specially, as event and as data.
const DATA = [
  undefined,
  null,
  0,
  -1.5,
  NaN,
  Infinity,
  true,
  '',
  'plain',
  'quote " backslash \\ newline \n tab \t nul \u0000',
  'unicode é 漢字 😀 lone \ud800 surrogate',
  [],
  [1, undefined, () => {}, 'x'],
  {},
  { a: 1, skipped: undefined, fn: () => {}, nested: { b: [null] } },
  new Date(0),
  new Tagged('t'),
  { toJSON: () => undefined },
  () => {},
  Symbol('s'),
  Object.create(null),
  -0,
  'x'.repeat(1000),
  { 'needs "escape"': 1, '\u0001': 2, 'é': 3, '\ud800': 4, '': 5 },
  { b: 1, 2: 'two', a: 2, 1: 'one', [Symbol('hidden')]: 3 },
  { inner: { date: new Date(0), tagged: new Tagged('k'), list: [new Tagged('i'), Symbol('s'), undefined, () => {}] } },
  { fn: Object.assign(() => {}, { toJSON: key => `fn at ${key}` }) },
  { boxed: [Object(1), Object('s'), Object(false)], nullProto: Object.create(null), map: new Map([[1, 2]]) },
  [, 1, , 2], // eslint-disable-line no-sparse-arrays
  Object.defineProperty({ shown: 1 }, 'hidden', { value: 2, enumerable: false }),
  Object.create({ inherited: 1 }),
  { list: Object.assign([1, 2], { extra: 3 }) },
  new Proxy({ a: 1, b: [2] }, {}),
  { toJSON: key => ({ key, nested: new Tagged('n') }) },
  deeplyNested(100),
];

function deeplyNested(levels) {
  let value = { leaf: [new Tagged('deep')] };
  for (let level = 0; level < levels; level++) {
    value = level % 2 === 0 ? { level, value } : [level, value];
  }
  return value;
}
const EVENTS = [
  'tick',
  '',
  'with "quotes"',
  'é',
  'chat:message.v2 ~!@#$%^&*()_+{}[]|;<>?/`',
  'back\\slash',
  'new\nline',
  '\u0000',
  '\u001f',
  '\u007f',
  '\u2028',
  'emoji 😀',
  'lone \ud800 high',
  'lone \udfff low',
  'x'.repeat(64),
  'x'.repeat(65),
  `${'x'.repeat(70)}"`,
  42,
  null,
  undefined,
  { toJSON: () => 'object' },
];

describe('message text', () => {
  const start = serverPool();

  it('is exactly JSON.stringify({ event, data }) for every kind of value', () => {
    EVENTS.forEach((event, e) => {
      DATA.forEach((data, d) => {
        assert.equal(eventMessageText(event, data), JSON.stringify({ event, data }), `event ${e}, data ${d}`);
      });
    });
  });

  it('throws where JSON.stringify throws', () => {
    const cycle = {};
    cycle.self = cycle;
    assert.throws(() => eventMessageText('tick', cycle), TypeError);
    const cycleInArray = [{}];
    cycleInArray[0].back = cycleInArray;
    assert.throws(() => eventMessageText('tick', { list: cycleInArray }), TypeError);
    assert.throws(() => eventMessageText('tick', { big: 1n }), TypeError);
    assert.throws(() => eventMessageText('tick', { nested: [{ big: 1n }] }), TypeError);
  });

  it('serialises a BigInt as JSON.stringify does once BigInt.prototype.toJSON exists', () => {
    // eslint-disable-next-line no-extend-native
    BigInt.prototype.toJSON = function toJSON(key) {
      return `${this}n at ${key}`;
    };
    try {
      const data = { big: 1n, list: [2n] };
      assert.equal(eventMessageText('tick', data), JSON.stringify({ event: 'tick', data }));
    } finally {
      delete BigInt.prototype.toJSON;
    }
  });

  it('reads each property once, in JSON.stringify order', () => {
    const reads = [];
    const data = {
      get first() {
        reads.push('first');
        return 1;
      },
      get later() {
        reads.push('later');
        return new Date(0);
      },
      nested: {
        get inner() {
          reads.push('inner');
          return undefined;
        },
      },
    };
    const text = eventMessageText('tick', data);
    assert.deepEqual(reads, ['first', 'later', 'inner']);
    assert.equal(text, JSON.stringify({ event: 'tick', data }));
  });

  it('reaches a client as the TypeScript helper writes it', async () => {
    const server = await start({});
    const client = await authenticatedClient(server);
    const data = { text: 'é "q"', list: [1, null], skipped: undefined, at: new Date(0) };
    server.sendToClient({ clientId: client.id, event: 'tick', data });
    await client.next('tick');
    assert.equal(client.texts.at(-1), JSON.stringify({ event: 'tick', data }));
    client.close();
  });

  it('reaches a client byte for byte as JSON.stringify({ event, data }), for every kind of value', async () => {
    const server = await start({});
    const client = await authenticatedClient(server);
    const before = client.texts.length;
    const expected = [];
    for (const event of [...EVENTS, 'x'.repeat(300), `${'y'.repeat(100)}\u0001`]) {
      for (const data of DATA) {
        server.sendToClient({ clientId: client.id, event, data });
        expected.push(JSON.stringify({ event, data }));
      }
    }
    await waitUntil(() => client.texts.length === before + expected.length);
    assert.deepEqual(client.texts.slice(before), expected);
    client.close();
  });

  it('reaches the sender of the message being handled byte for byte too, for every kind of value', async () => {
    const expected = [];
    let server;
    server = await start({
      messageHandler: ({ clientId }) => {
        for (const event of [...EVENTS, 'x'.repeat(300)]) {
          for (const data of DATA) {
            server.sendToClient({ clientId, event, data });
            expected.push(JSON.stringify({ event, data }));
          }
        }
      },
    });
    const client = await authenticatedClient(server);
    const before = client.texts.length;
    client.send({ event: 'go' });
    await waitUntil(() => expected.length > 0 && client.texts.length === before + expected.length);
    assert.deepEqual(client.texts.slice(before), expected);
    client.close();
  });
});
