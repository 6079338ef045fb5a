import { spawn } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

import { after, assert, before, describe, it } from './support/framework.mjs';
import {
  afterHandshake,
  authenticatedClient,
  clientFrame,
  parseServerFrames,
  rawExchange,
  startServer,
  TestClient,
  upgradeRequest,
  waitUntil,
} from './support/helpers.mjs';

const floodScript = path.join(path.dirname(fileURLToPath(import.meta.url)), 'support', 'unauthenticated-flood.mjs');

/** Runs the flood script in this runtime, with the file descriptor limit raised as far as allowed. */
function floodChild(...args) {
  const child = spawn('sh', ['-c', 'ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$0" "$@"', process.execPath, floodScript, ...args], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const lines = [];
  const waiters = [];
  readline.createInterface({ input: child.stdout }).on('line', line => {
    lines.push(line);
    for (const waiter of waiters.splice(0)) waiter();
  });
  const lineStarting = (prefix, timeoutMs) =>
    waitUntil(() => lines.some(line => line.startsWith(prefix)), timeoutMs, prefix).then(() =>
      lines.filter(line => line.startsWith(prefix)).at(-1).slice(prefix.length + 1),
    );
  return { child, lines, lineStarting };
}

describe('hostile input', () => {
  let server;
  let bystander;
  before(async () => {
    server = await startServer({
      serverOptions: { maxPayloadLength: 1024 },
      messageHandler: ({ clientId, message }) => server.sendToClient({ clientId, event: 'echo', data: message.data }),
    });
    bystander = await authenticatedClient(server);
  });
  after(async () => {
    await server.shutdown();
  });

  /** After each attack: the process is up and an existing client still gets answers. */
  async function bystanderStillServed() {
    const token = Math.random();
    bystander.send({ event: 'check', data: token });
    assert.equal((await bystander.next('echo')).data, token);
  }

  /** Upgrades a raw socket, sends `frames`, returns the server's frames and whether it closed. */
  async function attack(...frames) {
    const { data, ended } = await rawExchange(server.getPort(), Buffer.concat([Buffer.from(upgradeRequest()), ...frames]));
    assert.match(data.toString('latin1'), /^HTTP\/1\.1 101 /);
    return { frames: parseServerFrames(afterHandshake(data)), ended };
  }

  const closeCodeOf = result => result.frames.find(frame => frame.opcode === 8)?.code;
  const text = (object) => clientFrame(0x81, JSON.stringify(object));

  it('closes with 1009 on a frame larger than maxPayloadLength, before reading it', async () => {
    const result = await attack(clientFrame(0x81, 'x'.repeat(1025)));
    assert.equal(closeCodeOf(result), 1009);
    assert.ok(result.ended);
    await server.log.waitFor('warn', 'code: 1009');
    await bystanderStillServed();
  });

  it('closes with 1009 when fragments add up to more than maxPayloadLength', async () => {
    const result = await attack(clientFrame(0x01, 'x'.repeat(600)), clientFrame(0x80, 'x'.repeat(600)));
    assert.equal(closeCodeOf(result), 1009);
    await bystanderStillServed();
  });

  it('closes with 1009 on a declared 2^40-byte frame without waiting for it', async () => {
    const header = Buffer.from([0x82, 0xff, 0, 0, 1, 0, 0, 0, 0, 0, 1, 2, 3, 4]);
    const result = await attack(header);
    assert.equal(closeCodeOf(result), 1009);
    await bystanderStillServed();
  });

  it('closes with 1002 on unmasked frames, reserved opcodes, RSV bits and bad control frames', async () => {
    for (const frame of [
      clientFrame(0x81, 'hi', { masked: false }),
      clientFrame(0x83, 'x'),
      clientFrame(0xc1, 'x'),
      clientFrame(0x89, 'x'.repeat(126)),
      clientFrame(0x09, 'x'),
      clientFrame(0x80, 'orphan continuation'),
    ]) {
      const result = await attack(frame);
      assert.equal(closeCodeOf(result), 1002, frame.subarray(0, 2).toString('hex'));
    }
    await bystanderStillServed();
  });

  it('closes with 1007 on invalid UTF-8 in a text frame', async () => {
    const result = await attack(clientFrame(0x81, Buffer.from([0x7b, 0xff, 0xfe, 0x7d])));
    assert.equal(closeCodeOf(result), 1007);
    await bystanderStillServed();
  });

  it('answers pings with pongs and echoes the close code of a client close', async () => {
    const result = await attack(clientFrame(0x89, 'abc'), clientFrame(0x88, Buffer.from([0x0f, 0xa0])));
    const pong = result.frames.find(frame => frame.opcode === 0xa);
    assert.equal(pong.payload.toString(), 'abc');
    assert.equal(closeCodeOf(result), 4000);
    await bystanderStillServed();
  });

  it('handles frames pipelined right behind the upgrade request', async () => {
    const result = await attack(text({ event: 'authenticate', data: { token: 't' } }), text({ event: 'echo-me', data: 5 }));
    const messages = result.frames.filter(frame => frame.opcode === 1).map(frame => JSON.parse(frame.payload));
    assert.equal(messages[0].event, 'connected');
    assert.deepEqual(messages[1], { event: 'echo', data: 5 });
  });

  it('reads an upgrade request and frames that arrive in pieces, with pauses between them', async () => {
    // Each piece is a short read; the reader must still wake for the next one.
    const pause = () => new Promise(resolve => setTimeout(resolve, 30));
    const request = Buffer.from(upgradeRequest());
    const auth = text({ event: 'authenticate', data: { token: 't' } });
    const echo = text({ event: 'echo-me', data: 'in pieces' });
    const pieces = [
      request.subarray(0, 20), request.subarray(20, 60), request.subarray(60),
      auth.subarray(0, 1), auth.subarray(1, 7), auth.subarray(7),
      echo.subarray(0, 10), echo.subarray(10),
    ];
    const socket = net.connect(server.getPort(), '127.0.0.1');
    let data = Buffer.alloc(0);
    socket.on('data', chunk => (data = Buffer.concat([data, chunk])));
    await new Promise(resolve => socket.once('connect', resolve));
    try {
      for (const piece of pieces) {
        socket.write(piece);
        await pause();
      }
      const messages = () =>
        data.toString('latin1').startsWith('HTTP/1.1 101 ') && data.includes('\r\n\r\n')
          ? parseServerFrames(afterHandshake(data)).filter(frame => frame.opcode === 1).map(frame => JSON.parse(frame.payload))
          : [];
      await waitUntil(() => messages().length >= 2, 5000, 'connected and the echo');
      assert.equal(messages()[0].event, 'connected');
      assert.deepEqual(messages()[1], { event: 'echo', data: 'in pieces' });
    } finally {
      socket.destroy();
    }
  });

  it('survives garbage, truncated handshakes and abrupt disconnects mid-frame', async () => {
    const garbage = await rawExchange(server.getPort(), Buffer.from([0, 1, 2, 3, 0xff, 13, 10, 13, 10]));
    assert.match(garbage.data.toString(), /^HTTP\/1\.1 400 /);
    await new Promise(resolve => {
      const socket = net.connect(server.getPort(), '127.0.0.1', () => {
        socket.write('GET /ws HTTP/1.1\r\nHost: x\r\nUpg');
        setTimeout(() => {
          socket.destroy();
          resolve();
        }, 50);
      });
    });
    await new Promise(resolve => {
      const socket = net.connect(server.getPort(), '127.0.0.1', () => {
        socket.write(Buffer.concat([Buffer.from(upgradeRequest()), clientFrame(0x81, 'x'.repeat(500)).subarray(0, 100)]));
        setTimeout(() => {
          socket.destroy();
          resolve();
        }, 50);
      });
    });
    await bystanderStillServed();
  });

  it('answers a ping flood without falling behind on other clients', async () => {
    const pings = Buffer.concat(Array.from({ length: 5000 }, (_, i) => clientFrame(0x89, `ping-${i}`.padEnd(120, '.'))));
    const result = await attack(pings, text({ event: 'authenticate', data: { token: 't' } }), text({ event: 'after', data: 7 }));
    // Pongs beyond the client's backpressure limit may be dropped; the connection stays.
    assert.ok(result.frames.filter(frame => frame.opcode === 0xa).length > 100);
    assert.equal(closeCodeOf(result), undefined);
    const echoed = result.frames.filter(frame => frame.opcode === 1).map(frame => JSON.parse(frame.payload));
    assert.deepEqual(echoed.at(-1), { event: 'echo', data: 7 });
    await bystanderStillServed();
  });

  it('keeps the connection through hostile message shapes', async () => {
    const client = await authenticatedClient(server);
    const inputs = [
      '{"event":"join","data":"not-an-object"}',
      '{"event":"join","data":{"rooms":[{"nested":true},"ws:internal"]}}',
      '{"event":"leave","data":{"rooms":null}}',
      '{"__proto__":{"polluted":true},"event":"x"}',
      `{"event":"${'e'.repeat(900)}"}`,
      '{"event":"deep","data":' + '['.repeat(200) + ']'.repeat(200) + '}',
    ];
    for (const input of inputs) {
      client.send(input);
    }
    client.send({ event: 'alive', data: 1 });
    const echoes = [];
    while (echoes.length === 0 || echoes.at(-1).data !== 1) {
      echoes.push(await client.next('echo'));
    }
    assert.equal({}.polluted, undefined);
    await bystanderStillServed();
    client.close();
  });
});

describe('hostile load', () => {
  it('takes 10,000 joins from one client and forgets every room when it leaves', async () => {
    const server = await startServer({ validateRoomFn: ({ rooms }) => rooms });
    try {
      const bystander = await authenticatedClient(server);
      const joiner = await authenticatedClient(server);
      for (let i = 0; i < 10_000; i++) {
        joiner.send({ event: 'join', data: { rooms: [`flood-${i}`] } });
      }
      joiner.send({ event: 'done' });
      // Joins are handled in order: once the last one is in, all are (plus its own-id and default rooms).
      await waitUntil(() => server.getClientsByRoom({ room: 'flood-9999' }).length === 1, 30_000, 'the last join');
      assert.equal(server.getClients({ id: joiner.id }).rooms.size, 10_000 + 3);
      server.sendToRoom({ room: 'flood-9999', event: 'last' });
      assert.equal((await joiner.next('last')).event, 'last');
      await joiner.close();
      await waitUntil(() => !server.getClients({ id: joiner.id }), 3000, 'the joiner to be gone');
      for (const room of ['flood-0', 'flood-5000', 'flood-9999']) {
        assert.deepEqual(server.getClientsByRoom({ room }), []);
      }
      bystander.send({ event: 'heartbeat' });
      assert.equal(server.getClients({ id: bystander.id }).state, 'authenticated');
      await bystander.close();
    } finally {
      await server.shutdown();
    }
  });

  it('survives 10,000 connections that never authenticate: each gets 4001, others are served meanwhile', async () => {
    const server = floodChild('server');
    const attacker = { child: null };
    try {
      const port = Number(await server.lineStarting('READY', 20_000));
      const bystander = await TestClient.open(`ws://127.0.0.1:${port}/ws`);
      await bystander.authenticate({ token: 't' });
      attacker.child = floodChild('attack', String(port), '10000');
      // Served all through the flood.
      let peak = 0;
      for (let i = 0; !attacker.child.lines.some(line => line.startsWith('RESULT')) && i < 600; i++) {
        bystander.send({ event: 'check', data: i });
        assert.equal((await bystander.next('echo', 10_000)).data, i);
        peak = Math.max(peak, ...server.lines.filter(line => line.startsWith('CLIENTS')).map(line => Number(line.slice(8))));
        await new Promise(resolve => setTimeout(resolve, 100));
      }
      const result = JSON.parse(await attacker.child.lineStarting('RESULT', 60_000));
      assert.deepEqual(result.errors, []);
      assert.equal(result.upgraded, 10_000);
      assert.equal(result.closedWith4001, 10_000);
      assert.ok(peak > 5000, `at most ${peak} connections were open at once`);
      await waitUntil(() => server.lines.at(-1) === 'CLIENTS 1', 5000, 'only the bystander left');
      await bystander.close();
    } finally {
      attacker.child?.child.kill();
      server.child.stdin.end();
      await new Promise(resolve => server.child.once('exit', resolve));
    }
  });
});
