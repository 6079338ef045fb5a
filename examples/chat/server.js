// A small chat on the native server, standalone (no Redis). Run: npm run example
// Open the printed page in two browser tabs. WS_PORT / HTTP_PORT choose the ports (0 = free).
const http = require('node:http');
const fs = require('node:fs');
const path = require('node:path');

const { WebSocketServerHelper } = require('../..');

const page = fs.readFileSync(path.join(__dirname, 'index.html'), 'utf8');

async function main() {
  const chat = new WebSocketServerHelper({
    identifier: 'chat',
    redisConnection: 'standalone',
    host: process.env.HOST ?? '127.0.0.1',
    port: Number(process.env.WS_PORT ?? 8080),
    defaultRooms: ['lobby'],
    // Anyone with a name may join; the name is the user id.
    authenticateFn: ({ name }) => {
      const clean = typeof name === 'string' ? name.trim().slice(0, 32) : '';
      return clean ? { userId: clean, metadata: { name: clean } } : null;
    },
    validateRoomFn: ({ rooms }) => rooms.filter(room => /^[a-z0-9-]{1,32}$/.test(room)),
    clientConnectedFn: ({ userId }) => {
      chat.sendToRoom({ room: 'lobby', event: 'presence', data: { user: userId, online: true } });
    },
    clientDisconnectedFn: ({ userId }) => {
      chat.sendToRoom({ room: 'lobby', event: 'presence', data: { user: userId, online: false } });
    },
    messageHandler: ({ clientId, userId, message }) => {
      if (message.event !== 'say' || typeof message.data?.text !== 'string') {
        chat.sendToClient({ clientId, event: 'error', data: { message: 'send { event: "say", data: { room, text } }' } });
        return;
      }
      const room = message.data.room ?? 'lobby';
      const client = chat.getClients({ id: clientId });
      if (!client?.rooms.has(room)) {
        chat.sendToClient({ clientId, event: 'error', data: { message: `join ${room} first` } });
        return;
      }
      chat.sendToRoom({
        room,
        event: 'said',
        data: { room, user: userId, text: message.data.text.slice(0, 500), time: new Date().toISOString() },
      });
    },
  });
  await chat.configure();
  const wsUrl = `ws://127.0.0.1:${chat.getPort()}${chat.getPath()}`;

  const site = http.createServer((request, response) => {
    response.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    response.end(page.replace('__WS_URL__', wsUrl));
  });
  await new Promise(resolve => site.listen(Number(process.env.HTTP_PORT ?? 3000), '127.0.0.1', resolve));

  console.log(`chat WebSocket: ${wsUrl}`);
  console.log(`chat page:      http://127.0.0.1:${site.address().port}/  (open it in two tabs)`);

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
