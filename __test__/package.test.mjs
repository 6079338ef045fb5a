import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

import { assert, describe, it } from './support/framework.mjs';
import { pkg } from './support/helpers.mjs';
import * as esm from '../index.mjs';

const require = createRequire(import.meta.url);
const root = fileURLToPath(new URL('..', import.meta.url));

describe('package exports', () => {
  it('exports the helper and the constants under the same names, from CommonJS and ESM', () => {
    const cjs = require('..');
    for (const name of [
      'WebSocketServerHelper',
      'WebSocketEvents',
      'WebSocketChannels',
      'WebSocketDefaults',
      'WebSocketMessageTypes',
      'WebSocketClientStates',
    ]) {
      assert.equal(typeof cjs[name], 'function', name);
      assert.equal(esm[name], cjs[name], `${name} is the same object from ESM`);
    }
  });

  it('has exactly the specification values in its constants', () => {
    const { WebSocketEvents, WebSocketChannels, WebSocketDefaults, WebSocketMessageTypes, WebSocketClientStates } = pkg;
    assert.deepEqual(
      [...WebSocketEvents.SCHEME_SET],
      ['authenticate', 'connected', 'disconnect', 'join', 'leave', 'error', 'heartbeat', 'encrypted'],
    );
    assert.equal(WebSocketEvents.AUTHENTICATE, 'authenticate');
    assert.equal(WebSocketEvents.isValid('heartbeat'), true);
    assert.equal(WebSocketEvents.isValid('invalid'), false);
    assert.equal(WebSocketChannels.BROADCAST, 'ws:broadcast');
    assert.equal(WebSocketChannels.ROOM_PREFIX, 'ws:room:');
    assert.equal(WebSocketChannels.CLIENT_PREFIX, 'ws:client:');
    assert.equal(WebSocketChannels.USER_PREFIX, 'ws:user:');
    assert.equal(WebSocketChannels.forRoom({ room: 'r' }), 'ws:room:r');
    assert.equal(WebSocketChannels.forClient({ clientId: 'c' }), 'ws:client:c');
    assert.equal(WebSocketChannels.forUser({ userId: 'u' }), 'ws:user:u');
    assert.equal(WebSocketChannels.forRoomPattern(), 'ws:room:*');
    assert.equal(WebSocketChannels.forClientPattern(), 'ws:client:*');
    assert.equal(WebSocketChannels.forUserPattern(), 'ws:user:*');
    assert.deepEqual(
      Object.fromEntries(Object.entries(WebSocketDefaults)),
      {
        PATH: '/ws',
        ROOM: 'ws-default',
        NOTIFICATION_ROOM: 'ws-notification',
        BROADCAST_TOPIC: 'ws:internal:broadcast',
        MAX_PAYLOAD_LENGTH: 131072,
        IDLE_TIMEOUT: 60,
        BACKPRESSURE_LIMIT: 1048576,
        SEND_PINGS: true,
        PUBLISH_TO_SELF: false,
        AUTH_TIMEOUT: 5000,
        HEARTBEAT_INTERVAL: 30000,
        HEARTBEAT_TIMEOUT: 90000,
        ENCRYPTED_BATCH_LIMIT: 10,
      },
    );
    assert.deepEqual([...WebSocketMessageTypes.SCHEME_SET], ['client', 'user', 'room', 'broadcast']);
    assert.equal(WebSocketMessageTypes.isValid('room'), true);
    assert.deepEqual(
      [...WebSocketClientStates.SCHEME_SET],
      ['unauthorized', 'authenticating', 'authenticated', 'disconnected'],
    );
    assert.equal(WebSocketClientStates.isValid('authenticated'), true);
    assert.equal(WebSocketClientStates.isValid('nope'), false);
  });

  it('throws the documented error for a missing redisConnection, and has an explicit standalone mode', () => {
    const base = { identifier: 'x', authenticateFn: () => null };
    for (const redisConnection of [undefined, null]) {
      assert.throws(() => new pkg.WebSocketServerHelper({ ...base, redisConnection }), {
        message: '[WebSocketServerHelper] Invalid redis connection!',
      });
    }
    const helper = new pkg.WebSocketServerHelper({ ...base, redisConnection: 'standalone' });
    assert.equal(helper.getPath(), '/ws');
    assert.equal(pkg.STANDALONE, 'standalone');
    assert.equal(pkg.WebSocketServerHelper.STANDALONE, 'standalone');
    assert.match(helper.serverId, /^[0-9a-f-]{36}$/);
  });

  it('is usable from a plain require and a plain import in a fresh process', () => {
    const runtime = process.execPath;
    const cjs = spawnSync(runtime, ['-e', "const p = require('./index.js'); console.log(typeof p.WebSocketServerHelper)"], {
      cwd: root,
      encoding: 'utf8',
    });
    assert.equal(cjs.stdout.trim(), 'function', cjs.stderr);
    const mjs = spawnSync(
      runtime,
      ['--input-type=module', '-e', "import { WebSocketServerHelper } from './index.mjs'; console.log(typeof WebSocketServerHelper)"],
      { cwd: root, encoding: 'utf8' },
    );
    assert.equal(mjs.stdout.trim(), 'function', mjs.stderr);
  });
});
