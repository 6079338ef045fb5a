// Real servers and real clients for the suite: every helper here talks over sockets.
import fs from 'node:fs';
import net from 'node:net';
import { createRequire } from 'node:module';

import { after } from './framework.mjs';

const require = createRequire(import.meta.url);
export const pkg = require('../../index.js');
export const WebSocket = require('ws');

export const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));

/** A logger that keeps every line, so tests can check what the log says. */
export function captureLogger() {
  const lines = [];
  const logger = {};
  for (const level of ['debug', 'info', 'warn', 'error']) {
    logger[level] = text => lines.push({ level, text });
  }
  logger.lines = lines;
  logger.has = (level, fragment) => lines.some(line => line.level === level && line.text.includes(fragment));
  logger.waitFor = (level, fragment, timeoutMs = 3000) =>
    waitUntil(() => logger.has(level, fragment), timeoutMs, `log ${level}: ${fragment}`);
  return logger;
}

export async function waitUntil(predicate, timeoutMs = 3000, what = 'condition') {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await predicate()) {
      return;
    }
    await sleep(10);
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** Starts a standalone helper on a free port; options override the defaults. */
export async function startServer(options = {}) {
  const logger = options.logger ?? captureLogger();
  const helper = new pkg.WebSocketServerHelper({
    identifier: 'test',
    redisConnection: pkg.STANDALONE,
    host: '127.0.0.1',
    port: 0,
    authenticateFn: data => (data?.token ? { userId: data.userId ?? data.token, metadata: data.metadata } : null),
    ...options,
    logger,
  });
  await helper.configure();
  helper.url = `ws://127.0.0.1:${helper.getPort()}${helper.getPath()}`;
  helper.log = logger;
  return helper;
}

/**
 * For use inside a `describe`: returns `start(options)`, which starts a server that is shut
 * down after the suite.
 */
export function serverPool() {
  const servers = [];
  after(async () => {
    await Promise.all(servers.map(server => server.shutdown()));
  });
  return async options => {
    const server = await startServer(options);
    servers.push(server);
    return server;
  };
}

/** A `ws` client with a message queue and promise-based waits. */
export class TestClient {
  static async open(url, options) {
    const client = new TestClient(url, options);
    await client.opened;
    return client;
  }

  constructor(url, options) {
    this.ws = new WebSocket(url, options);
    this.received = [];
    /** Every frame's exact text, in order: for byte-for-byte comparisons. */
    this.texts = [];
    this.waiters = [];
    this.opened = new Promise((resolve, reject) => {
      this.ws.once('open', resolve);
      this.ws.once('error', reject);
    });
    this.closed = new Promise(resolve => {
      this.ws.once('close', (code, reason) => resolve({ code, reason: reason?.toString() ?? '' }));
    });
    this.ws.on('error', () => {});
    this.ws.on('message', data => {
      const text = data.toString();
      this.texts.push(text);
      let message;
      try {
        message = JSON.parse(text);
      } catch {
        message = { raw: text };
      }
      this.received.push(message);
      this.waiters = this.waiters.filter(waiter => !waiter(message));
    });
  }

  send(message) {
    this.ws.send(typeof message === 'string' ? message : JSON.stringify(message));
  }

  /** Resolves with the first message (already received or future) matching `predicate`. */
  next(predicate = () => true, timeoutMs = 3000) {
    const test = typeof predicate === 'string' ? message => message.event === predicate : predicate;
    const index = this.received.findIndex(test);
    if (index >= 0) {
      return Promise.resolve(this.received.splice(index, 1)[0]);
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no matching message within ${timeoutMs} ms`)), timeoutMs);
      this.waiters.push(message => {
        if (!test(message)) {
          return false;
        }
        clearTimeout(timer);
        this.received.splice(this.received.indexOf(message), 1);
        resolve(message);
        return true;
      });
    });
  }

  /** Resolves true if no matching message arrives within `ms`. */
  async nothing(predicate = () => true, ms = 200) {
    try {
      await this.next(predicate, ms);
      return false;
    } catch {
      return true;
    }
  }

  async authenticate(data = { token: 't' }) {
    this.send({ event: 'authenticate', data });
    const connected = await this.next('connected');
    this.id = connected.data.id;
    return connected;
  }

  close(code, reason) {
    this.ws.close(code, reason);
    return this.closed;
  }

  waitClosed(timeoutMs = 3000) {
    return Promise.race([
      this.closed,
      sleep(timeoutMs).then(() => {
        throw new Error(`socket not closed within ${timeoutMs} ms`);
      }),
    ]);
  }
}

export async function authenticatedClient(server, data = { token: 't' }) {
  const client = await TestClient.open(server.url);
  await client.authenticate(data);
  return client;
}

/** Raw TCP: sends bytes, collects everything until the server closes or `ms` passes. */
export function rawExchange(port, bytes, ms = 1500) {
  return new Promise(resolve => {
    const socket = net.connect(port, '127.0.0.1');
    const chunks = [];
    let done = false;
    const finish = ended => {
      if (!done) {
        done = true;
        socket.destroy();
        resolve({ data: Buffer.concat(chunks), ended });
      }
    };
    socket.on('data', chunk => chunks.push(chunk));
    socket.on('end', () => finish(true));
    socket.on('close', () => finish(true));
    socket.on('error', () => finish(true));
    socket.on('connect', () => socket.write(bytes));
    setTimeout(() => finish(false), ms);
  });
}

export function upgradeRequest(path = '/ws', extraHeaders = '') {
  return (
    `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
    `Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n${extraHeaders}\r\n`
  );
}

/** A masked client frame. */
export function clientFrame(firstByte, payload, { masked = true, lengthOverride } = {}) {
  const body = Buffer.isBuffer(payload) ? payload : Buffer.from(payload);
  const length = lengthOverride ?? body.length;
  const header = [firstByte];
  const maskBit = masked ? 0x80 : 0;
  if (length < 126) {
    header.push(maskBit | length);
  } else if (length <= 0xffff) {
    header.push(maskBit | 126, length >> 8, length & 0xff);
  } else {
    header.push(maskBit | 127, 0, 0, 0, 0);
    header.push((length >>> 24) & 0xff, (length >>> 16) & 0xff, (length >>> 8) & 0xff, length & 0xff);
  }
  if (!masked) {
    return Buffer.concat([Buffer.from(header), body]);
  }
  const mask = Buffer.from([1, 2, 3, 4]);
  const out = Buffer.from(body);
  for (let i = 0; i < out.length; i++) {
    out[i] ^= mask[i % 4];
  }
  return Buffer.concat([Buffer.from(header), mask, out]);
}

/** Parses the server's frames out of raw bytes (after the 101 response). */
export function parseServerFrames(buffer) {
  const frames = [];
  let offset = 0;
  while (offset + 2 <= buffer.length) {
    const opcode = buffer[offset] & 0x0f;
    // RSV1: the message is compressed (permessage-deflate).
    const rsv1 = (buffer[offset] & 0x40) !== 0;
    let length = buffer[offset + 1] & 0x7f;
    let start = offset + 2;
    if (length === 126) {
      length = buffer.readUInt16BE(offset + 2);
      start += 2;
    } else if (length === 127) {
      length = Number(buffer.readBigUInt64BE(offset + 2));
      start += 8;
    }
    if (start + length > buffer.length) {
      break;
    }
    const payload = buffer.subarray(start, start + length);
    frames.push({ opcode, rsv1, payload, code: opcode === 8 && length >= 2 ? payload.readUInt16BE(0) : undefined });
    offset = start + length;
  }
  return frames;
}

/**
 * A client on a raw socket: sends the upgrade request (with `Sec-WebSocket-Extensions:
 * extensions` if given), waits for the answer, then collects what the server sends.
 * `head` is the HTTP answer; `frames()` the server's frames so far; `ended()` whether the
 * server closed the socket.
 */
export async function rawClient(port, { extensions } = {}) {
  const socket = net.connect(port, '127.0.0.1');
  let received = Buffer.alloc(0);
  let ended = false;
  socket.on('data', chunk => (received = Buffer.concat([received, chunk])));
  socket.on('close', () => (ended = true));
  socket.on('error', () => {});
  await new Promise(resolve => socket.on('connect', resolve));
  socket.write(upgradeRequest('/ws', extensions ? `Sec-WebSocket-Extensions: ${extensions}\r\n` : ''));
  await waitUntil(() => received.includes('\r\n\r\n'), 3000, 'the upgrade response');
  return {
    socket,
    head: received.subarray(0, received.indexOf('\r\n\r\n')).toString('latin1'),
    frames: () => parseServerFrames(afterHandshake(received)),
    ended: () => ended,
    send: bytes => socket.write(bytes),
  };
}

/** A raw client that authenticated (token 't'); its client id in `id`. */
export async function rawAuthenticatedClient(port, options) {
  const client = await rawClient(port, options);
  client.send(clientFrame(0x81, JSON.stringify({ event: 'authenticate', data: { token: 't' } })));
  await waitUntil(() => client.frames().some(frame => frame.payload.includes('"event":"connected"')), 3000, 'connected');
  const connected = client.frames().find(frame => frame.payload.includes('"event":"connected"'));
  client.id = JSON.parse(connected.payload).data.id;
  return client;
}

export function afterHandshake(data) {
  const end = data.indexOf('\r\n\r\n');
  return end < 0 ? Buffer.alloc(0) : data.subarray(end + 4);
}

/** A free TCP port on 127.0.0.1. */
export function freePort() {
  return new Promise(resolve => {
    const server = net.createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** The test CA, server and client certificates in __test__/fixtures/tls, as PEM text. */
export function tlsFixtures() {
  const dir = new URL('../fixtures/tls/', import.meta.url);
  const read = name => fs.readFileSync(new URL(name, dir), 'utf8');
  const path = name => new URL(name, dir).pathname;
  return {
    ca: read('ca.crt'),
    clientCert: read('client.crt'),
    clientKey: read('client.key'),
    // The client certificate serves the cluster bus, where nodes are each other's clients.
    serverArgs: ['--tls-cert-file', path('server.crt'), '--tls-key-file', path('server.key'), '--tls-ca-cert-file', path('ca.crt'),
      '--tls-client-cert-file', path('client.crt'), '--tls-client-key-file', path('client.key')],
  };
}

/**
 * A real redis-server on its own port; `stop()` ends it, `start()` brings it back.
 * `{ tls: true }`: TLS only, with the fixture certificates; `clientCerts: true` requires them
 * of clients too.
 */
export async function startRedis(port, { tls = false, clientCerts = false } = {}) {
  const { spawn } = await import('node:child_process');
  const redis = { port: port ?? (await freePort()), process: null };
  redis.url = `${tls ? 'rediss' : 'redis'}://127.0.0.1:${redis.port}`;
  const listen = tls
    ? ['--port', '0', '--tls-port', String(redis.port), ...tlsFixtures().serverArgs, '--tls-auth-clients', clientCerts ? 'yes' : 'no']
    : ['--port', String(redis.port)];
  redis.start = async () => {
    redis.process = spawn('redis-server', [...listen, '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
      stdio: 'ignore',
    });
    await waitUntil(
      () =>
        new Promise(resolve => {
          const socket = net.connect(redis.port, '127.0.0.1');
          socket.on('connect', () => {
            socket.destroy();
            resolve(true);
          });
          socket.on('error', () => resolve(false));
        }),
      5000,
      'redis-server to listen',
    );
  };
  redis.stop = async () => {
    const child = redis.process;
    if (child && child.exitCode === null && child.signalCode === null) {
      const exited = new Promise(resolve => child.once('exit', resolve));
      child.kill('SIGKILL');
      await exited;
    }
  };
  /** Sends one command with redis-cli (for raw, hand-made messages). */
  redis.cli = async (...args) => {
    const { execFileSync } = await import('node:child_process');
    return execFileSync('redis-cli', ['-p', String(redis.port), ...args], { encoding: 'utf8' });
  };
  await redis.start();
  return redis;
}

/**
 * A TCP proxy in front of a Redis that can make its subscriber connections go silent: the
 * connection stays open, but nothing passes any more in either direction, as when a NAT or
 * load balancer drops a connection's state without closing it.
 */
export function startSilencingProxy(targetPort) {
  const connections = new Set();
  const server = net.createServer(client => {
    const upstream = net.connect(targetPort, '127.0.0.1');
    const connection = { client, upstream, subscriber: false, silent: false };
    connections.add(connection);
    client.on('data', chunk => {
      if (/SUBSCRIBE/i.test(chunk.toString('latin1'))) {
        connection.subscriber = true;
      }
      if (!connection.silent) {
        upstream.write(chunk);
      }
    });
    upstream.on('data', chunk => {
      if (!connection.silent) {
        client.write(chunk);
      }
    });
    const end = () => {
      client.destroy();
      upstream.destroy();
      connections.delete(connection);
    };
    client.on('close', end);
    upstream.on('close', end);
    client.on('error', end);
    upstream.on('error', end);
  });
  return new Promise(resolve => {
    server.listen(0, '127.0.0.1', () => {
      resolve({
        port: server.address().port,
        /** Silences every subscriber connection open now; returns how many. */
        silenceSubscribers() {
          const subscribers = [...connections].filter(connection => connection.subscriber && !connection.silent);
          for (const connection of subscribers) {
            connection.silent = true;
          }
          return subscribers.length;
        },
        stop() {
          for (const connection of connections) {
            connection.client.destroy();
            connection.upstream.destroy();
          }
          return new Promise(done => server.close(() => done()));
        },
      });
    });
  });
}

/**
 * A real 3-master Redis Cluster on free ports, created with redis-cli --cluster create.
 * `{ tls: true }`: the nodes listen, and talk to each other, with TLS only.
 */
export async function startRedisCluster({ tls = false } = {}) {
  const { spawn, execFileSync } = await import('node:child_process');
  const fs = await import('node:fs');
  const os = await import('node:os');
  const path = await import('node:path');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ignis-native-ws-cluster-'));
  const nodes = [];
  for (let i = 0; i < 3; i++) {
    const port = await freePort();
    const listen = tls
      ? ['--port', '0', '--tls-port', String(port), '--tls-cluster', 'yes', ...tlsFixtures().serverArgs, '--tls-auth-clients', 'no']
      : ['--port', String(port)];
    const child = spawn(
      'redis-server',
      [...listen, '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--cluster-enabled', 'yes',
        '--cluster-config-file', path.join(dir, `nodes-${port}.conf`), '--dir', dir],
      { stdio: 'ignore' },
    );
    nodes.push({ port, child });
  }
  const tlsArgs = tls ? ['--tls', '--cacert', new URL('../fixtures/tls/ca.crt', import.meta.url).pathname] : [];
  const cli = (port, ...args) => execFileSync('redis-cli', [...tlsArgs, '-p', String(port), ...args], { encoding: 'utf8' });
  const cluster = {
    nodes: nodes.map(({ port }) => ({ host: '127.0.0.1', port })),
    async stop() {
      await Promise.all(nodes.map(({ child }) => new Promise(resolve => {
        if (child.exitCode !== null) return resolve();
        child.once('exit', resolve);
        child.kill('SIGKILL');
      })));
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  try {
    await waitUntil(() => nodes.every(({ port }) => {
      try {
        return cli(port, 'PING').trim() === 'PONG';
      } catch {
        return false;
      }
    }), 5000, 'cluster nodes to start');
    execFileSync('redis-cli', [...tlsArgs, '--cluster', 'create', ...nodes.map(({ port }) => `127.0.0.1:${port}`), '--cluster-replicas', '0', '--cluster-yes'], {
      stdio: 'ignore',
      // It waits for the nodes to join, without limit.
      timeout: 20_000,
    });
    await waitUntil(() => nodes.every(({ port }) => cli(port, 'CLUSTER', 'INFO').includes('cluster_state:ok')), 10_000, 'cluster_state:ok');
  } catch (error) {
    await cluster.stop();
    throw error;
  }
  return cluster;
}
