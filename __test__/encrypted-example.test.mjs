// Runs examples/encrypted-chat: two instances on one Redis, clients that do the ECDH
// handshake with WebCrypto and decrypt what they receive, and plain clients beside them.
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

import { after, assert, before, describe, it } from './support/framework.mjs';
import { TestClient, startRedis, waitUntil } from './support/helpers.mjs';

const require = createRequire(import.meta.url);
const E2E = require('../examples/encrypted-chat/e2e-crypto.js');
const script = fileURLToPath(new URL('../examples/encrypted-chat/server.js', import.meta.url));

/** One instance of the example; resolves with its WebSocket URL once it listens. */
async function startExample(redisUrl) {
  const child = spawn(process.execPath, [script], {
    env: { ...process.env, WS_PORT: '0', HTTP_PORT: '0', REDIS_URL: redisUrl },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout.on('data', chunk => (output += chunk));
  child.stderr.on('data', chunk => (output += chunk));
  const exited = new Promise(resolve => child.on('exit', resolve));
  await waitUntil(() => /encrypted chat page:/.test(output), 10_000, `the example to start: ${output}`);
  return {
    wsUrl: output.match(/encrypted chat WebSocket: (\S+)/)[1],
    pageUrl: output.match(/encrypted chat page:\s+(\S+)/)[1],
    async stop() {
      child.kill('SIGTERM');
      return exited;
    },
    kill: () => child.kill('SIGKILL'),
  };
}

/** A client that does the handshake and decrypts every `encrypted` message it receives. */
async function encryptedClient(wsUrl, name) {
  const client = await TestClient.open(wsUrl);
  await client.authenticate({ name });
  const keys = await E2E.generateKeyPair();
  client.send({ event: 'handshake', data: { publicKey: keys.publicKey } });
  const { data } = await client.next('handshake');
  const key = await E2E.deriveKey(keys.privateKey, data.serverPublicKey, data.salt);
  /** The next `encrypted` message, decrypted; its ciphertext must not show `text`. */
  client.nextDecrypted = async text => {
    const message = await client.next('encrypted');
    assert.ok(!JSON.stringify(message).includes(text), 'the wire carries ciphertext only');
    return JSON.parse(await E2E.decrypt(key, message.data));
  };
  return client;
}

describe('example: end-to-end encrypted chat', () => {
  let redis;
  let first;
  let second;
  before(async () => {
    redis = await startRedis();
    first = await startExample(redis.url);
    second = await startExample(redis.url);
  });
  after(async () => {
    first?.kill();
    second?.kill();
    await redis?.stop();
  });

  it('serves its page and the crypto script', async () => {
    const page = await (await fetch(first.pageUrl)).text();
    assert.ok(page.includes(first.wsUrl));
    const script = await (await fetch(new URL('/e2e-crypto.js', first.pageUrl))).text();
    assert.ok(script.includes('AES-GCM'));
  });

  it('encrypts direct, user, room, broadcast and Redis-delivered messages; plain clients get plaintext', async () => {
    const eve = await encryptedClient(first.wsUrl, 'eve');
    const pat = await TestClient.open(first.wsUrl);
    await pat.authenticate({ name: 'pat' });
    const far = await encryptedClient(second.wsUrl, 'far');
    try {
      pat.send({ event: 'say', data: { text: 'direct secret', to: eve.id } });
      assert.deepEqual(await eve.nextDecrypted('direct secret'), {
        event: 'said',
        data: { from: 'pat', text: 'direct secret', to: eve.id },
      });

      pat.send({ event: 'say', data: { text: 'user secret', user: 'eve' } });
      assert.equal((await eve.nextDecrypted('user secret')).data.text, 'user secret');

      pat.send({ event: 'say', data: { text: 'room secret' } });
      assert.deepEqual(await eve.nextDecrypted('room secret'), {
        event: 'said',
        data: { from: 'pat', text: 'room secret', room: 'lobby' },
      });
      // The plain client in the same room reads it as it is.
      assert.equal((await pat.next('said')).data.text, 'room secret');

      // send() without destination: both instances' clients, the second through Redis.
      pat.send({ event: 'say', data: { text: 'for everyone', everyone: true } });
      assert.equal((await eve.nextDecrypted('for everyone')).data.text, 'for everyone');
      assert.equal((await far.nextDecrypted('for everyone')).data.text, 'for everyone');
      assert.equal((await pat.next('said')).data.text, 'for everyone');

      // And the other way: from the second instance to the first's clients through Redis.
      far.send({ event: 'say', data: { text: 'from far', everyone: true } });
      assert.equal((await eve.nextDecrypted('from far')).data.from, 'far');
      assert.equal((await pat.next('said')).data.text, 'from far');
    } finally {
      eve.close();
      pat.close();
      far.close();
    }
    assert.equal(await first.stop(), 0);
  });
});
