// A fleet in migration: this package and @venizia/ignis-helpers' helper (under Bun, wired
// as Ignis wires it) on one Redis exchange messages both ways, and both emitters reach
// clients of both.
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { after, assert, before, describe, it } from './support/framework.mjs';
import { TestClient, pkg, startRedis, startServer, waitUntil } from './support/helpers.mjs';

const require = createRequire(import.meta.url);
const bun = path.join(path.dirname(require.resolve('bun/package.json')), 'bin', 'bun.exe');
const fixture = fileURLToPath(new URL('./fixtures/ts-helper-server.js', import.meta.url));

describe('interoperability with the TypeScript helper', () => {
  let redis;
  let ts;
  let tsUrl;
  let native;
  let emitter;
  let onTs;
  let onNative;

  before(async () => {
    redis = await startRedis();
    ts = spawn(bun, [fixture, String(redis.port)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    ts.stdout.on('data', chunk => (output += chunk));
    ts.stderr.on('data', chunk => (output += chunk));
    await waitUntil(() => /READY \d+/.test(output), 15_000, `the TypeScript helper to start: ${output}`);
    tsUrl = `ws://127.0.0.1:${output.match(/READY (\d+)/)[1]}/ws`;
    native = await startServer({ redisConnection: redis.url, validateRoomFn: ({ rooms }) => rooms });
    emitter = new pkg.WebSocketEmitter({ redisConnection: redis.url });
    await emitter.configure();
    onTs = await TestClient.open(tsUrl);
    await onTs.authenticate({ userId: 'tess' });
    onNative = await TestClient.open(native.url);
    await onNative.authenticate({ token: 't', userId: 'nate' });
    for (const client of [onTs, onNative]) {
      client.send({ event: 'join', data: { rooms: ['mixed'] } });
    }
    await waitUntil(() => native.getClientsByRoom({ room: 'mixed' }).length === 1);
  });

  after(async () => {
    onTs?.close();
    onNative?.close();
    await emitter?.shutdown();
    await native?.shutdown();
    if (ts) {
      const exited = new Promise(resolve => ts.once('exit', resolve));
      ts.kill('SIGTERM');
      await exited;
    }
    await redis?.stop();
  });

  /** The exact text a client received for `event`. */
  async function textOf(client, event) {
    await client.next(event);
    return client.texts.findLast(text => text.includes(`"event":"${event}"`));
  }

  /** Asks the TypeScript instance to run helper.send(opts) and waits until it did. */
  async function tsSend(opts) {
    onTs.send({ event: 'do-send', data: opts });
    await onTs.next(m => m.event === 'done' && m.data === 'do-send');
  }

  async function tsEmit(method, args) {
    onTs.send({ event: 'do-emit', data: { method, args } });
    await onTs.next(m => m.event === 'done' && m.data === 'do-emit');
  }

  it('native send() reaches TypeScript clients: broadcast, client, room', async () => {
    const data = { text: 'é "quoted" \n', n: [1.5, -0, 1e21], nested: { ok: true } };
    native.send({ payload: { topic: 'n-broadcast', data } });
    assert.equal(await textOf(onTs, 'n-broadcast'), JSON.stringify({ event: 'n-broadcast', data }));
    native.send({ destination: onTs.id, payload: { topic: 'n-client', data: 1 } });
    assert.equal(await textOf(onTs, 'n-client'), '{"event":"n-client","data":1}');
    native.send({ destination: 'mixed', payload: { topic: 'n-room', data: null } });
    assert.equal(await textOf(onTs, 'n-room'), '{"event":"n-room","data":null}');
    assert.equal(await textOf(onNative, 'n-room'), '{"event":"n-room","data":null}');
  });

  it('TypeScript send() reaches native clients: broadcast, client, room', async () => {
    const data = { text: 'ü\u2028', list: [true, null] };
    await tsSend({ payload: { topic: 't-broadcast', data } });
    assert.equal(await textOf(onNative, 't-broadcast'), JSON.stringify({ event: 't-broadcast', data }));
    await tsSend({ destination: onNative.id, payload: { topic: 't-client', data: 'x' } });
    assert.equal(await textOf(onNative, 't-client'), '{"event":"t-client","data":"x"}');
    await tsSend({ destination: 'mixed', payload: { topic: 't-room', data: 3 } });
    assert.equal(await textOf(onNative, 't-room'), '{"event":"t-room","data":3}');
  });

  it("this package's emitter reaches TypeScript clients with all four target types", async () => {
    await emitter.toClient({ clientId: onTs.id, event: 'e-client', data: 1 });
    assert.equal(await textOf(onTs, 'e-client'), '{"event":"e-client","data":1}');
    await emitter.toUser({ userId: 'tess', event: 'e-user', data: 2 });
    assert.equal(await textOf(onTs, 'e-user'), '{"event":"e-user","data":2}');
    await emitter.toRoom({ room: 'mixed', event: 'e-room', data: 3, exclude: [onNative.id] });
    assert.equal(await textOf(onTs, 'e-room'), '{"event":"e-room","data":3}');
    assert.ok(await onNative.nothing(m => m.event === 'e-room', 200), 'exclude honoured on the native side');
    await emitter.broadcast({ event: 'e-all', data: 4 });
    assert.equal(await textOf(onTs, 'e-all'), '{"event":"e-all","data":4}');
    assert.equal(await textOf(onNative, 'e-all'), '{"event":"e-all","data":4}');
  });

  it("the TypeScript emitter reaches native clients with all four target types", async () => {
    await tsEmit('toClient', { clientId: onNative.id, event: 'te-client', data: 1 });
    assert.equal(await textOf(onNative, 'te-client'), '{"event":"te-client","data":1}');
    await tsEmit('toUser', { userId: 'nate', event: 'te-user', data: 2 });
    assert.equal(await textOf(onNative, 'te-user'), '{"event":"te-user","data":2}');
    await tsEmit('toRoom', { room: 'mixed', event: 'te-room', data: 3, exclude: [onTs.id] });
    assert.equal(await textOf(onNative, 'te-room'), '{"event":"te-room","data":3}');
    await tsEmit('broadcast', { event: 'te-all', data: 4 });
    assert.equal(await textOf(onNative, 'te-all'), '{"event":"te-all","data":4}');
  });
});
