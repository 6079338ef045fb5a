import { createRequire } from 'node:module';

import { assert, describe, it } from './support/framework.mjs';
import { authenticatedClient, serverPool } from './support/helpers.mjs';

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
];
const EVENTS = ['tick', '', 'with "quotes"', 'é', 42, null, undefined, { toJSON: () => 'object' }];

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
    assert.throws(() => eventMessageText('tick', { big: 1n }), TypeError);
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
});
