// An end-to-end encrypted chat on the native server. Run: npm run example:encrypted
// Clients that send their ECDH public key ({ event: 'handshake' }) get every message encrypted
// for them alone (AES-GCM, key from ECDH + HKDF, see e2e-crypto.js); clients that do not,
// in the same rooms, get plaintext. With REDIS_URL, several instances form one chat.
// Env: WS_PORT, HTTP_PORT (0 = free), REDIS_URL (default: standalone).
const http = require('node:http');
const fs = require('node:fs');
const path = require('node:path');

const { WebSocketServerHelper } = require('../..');
const E2E = require('./e2e-crypto');

const page = fs.readFileSync(path.join(__dirname, 'index.html'), 'utf8');
const cryptoScript = fs.readFileSync(path.join(__dirname, 'e2e-crypto.js'), 'utf8');

async function main() {
  const serverKeys = await E2E.generateKeyPair();
  /** clientId -> AES-GCM key shared with that client. */
  const clientKeys = new Map();

  const chat = new WebSocketServerHelper({
    identifier: 'encrypted-chat',
    redisConnection: process.env.REDIS_URL || 'standalone',
    host: process.env.HOST ?? '127.0.0.1',
    port: Number(process.env.WS_PORT ?? 8081),
    defaultRooms: ['lobby'],
    authenticateFn: ({ name }) => {
      const clean = typeof name === 'string' ? name.trim().slice(0, 32) : '';
      return clean ? { userId: clean } : null;
    },
    // Runs only for encrypted clients, for every message on every path (direct, user,
    // room, broadcast, and what other instances send through Redis).
    outboundTransformer: async ({ client, event, data }) => {
      const key = clientKeys.get(client.id);
      if (!key) {
        return null; // no key: the original message
      }
      return { event: 'encrypted', data: await E2E.encrypt(key, JSON.stringify({ event, data })) };
    },
    clientDisconnectedFn: ({ clientId }) => clientKeys.delete(clientId),
    messageHandler: async ({ clientId, userId, message }) => {
      // Encryption is optional here, so plain clients can share rooms with encrypted ones
      // (the documented `enableClientEncryption` path; `requireEncryption` + `handshakeFn`
      // would make it mandatory, with the keys in `connected`).
      // { event: 'handshake', data: { publicKey } }: answered in plaintext with the server's
      // key and a salt, then everything to this client is encrypted.
      if (message.event === 'handshake' && typeof message.data?.publicKey === 'string') {
        const salt = E2E.randomSalt();
        clientKeys.set(clientId, await E2E.deriveKey(serverKeys.privateKey, message.data.publicKey, salt));
        chat.sendToClient({ clientId, event: 'handshake', data: { serverPublicKey: serverKeys.publicKey, salt } });
        chat.enableClientEncryption({ clientId });
        return;
      }
      // { event: 'say', data: { text, room? | to? | user? | everyone? } }
      const { text, room, to, user, everyone } = message.data ?? {};
      if (message.event !== 'say' || typeof text !== 'string') {
        return;
      }
      const said = { from: userId, text: text.slice(0, 500) };
      if (to) chat.sendToClient({ clientId: to, event: 'said', data: { ...said, to } });
      else if (user) chat.sendToUser({ userId: user, event: 'said', data: { ...said, user } });
      // send() without destination: every instance's clients, through Redis.
      else if (everyone) chat.send({ payload: { topic: 'said', data: { ...said, everyone: true } } });
      else chat.sendToRoom({ room: room ?? 'lobby', event: 'said', data: { ...said, room: room ?? 'lobby' } });
    },
  });
  await chat.configure();
  const wsUrl = `ws://127.0.0.1:${chat.getPort()}${chat.getPath()}`;

  const site = http.createServer((request, response) => {
    if (request.url === '/e2e-crypto.js') {
      response.writeHead(200, { 'content-type': 'text/javascript; charset=utf-8' });
      response.end(cryptoScript);
      return;
    }
    response.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    response.end(page.replace('__WS_URL__', wsUrl));
  });
  await new Promise(resolve => site.listen(Number(process.env.HTTP_PORT ?? 3001), '127.0.0.1', resolve));

  console.log(`encrypted chat WebSocket: ${wsUrl}`);
  console.log(`encrypted chat page:      http://127.0.0.1:${site.address().port}/`);

  const stop = async () => {
    site.close();
    await chat.shutdown();
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}

main().catch(error => {
  console.error(error);
  process.exitCode = 1;
});
