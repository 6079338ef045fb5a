// Child processes of hostile.test.mjs, so that each can raise its own file descriptor limit
// (the parent's shell runs `ulimit -n`) without touching the test runner's:
//   server          a server; prints `READY <port>`, then `CLIENTS <n>` every 100 ms
//   attack <port> <count>
//                   `count` raw connections that upgrade and never authenticate; prints
//                   `RESULT <json>` once every one of them has ended.
import net from 'node:net';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const [role, ...rest] = process.argv.slice(2);

if (role === 'server') {
  const { WebSocketServerHelper, STANDALONE } = require('../../index.js');
  const helper = new WebSocketServerHelper({
    identifier: 'flood',
    redisConnection: STANDALONE,
    host: '127.0.0.1',
    port: 0,
    authTimeout: 2000,
    authenticateFn: data => (data?.token ? { userId: 'bystander' } : null),
    messageHandler: ({ clientId, message }) => helper.sendToClient({ clientId, event: 'echo', data: message.data }),
    logger: {},
  });
  await helper.configure();
  console.log(`READY ${helper.getPort()}`);
  const timer = setInterval(() => console.log(`CLIENTS ${helper.getClients().size}`), 100);
  process.stdin.resume();
  process.stdin.on('end', async () => {
    clearInterval(timer);
    await helper.shutdown();
  });
} else {
  const [port, count] = rest.map(Number);
  const request =
    'GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
    'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n';
  const result = { upgraded: 0, closedWith4001: 0, errors: [] };
  const attacker = () =>
    new Promise(resolve => {
      const socket = net.connect(port, '127.0.0.1');
      let data = Buffer.alloc(0);
      socket.on('connect', () => socket.write(request));
      socket.on('data', chunk => (data = Buffer.concat([data, chunk])));
      socket.on('error', error => result.errors.length < 5 && result.errors.push(error.code ?? error.message));
      socket.on('close', () => {
        if (data.toString('latin1').startsWith('HTTP/1.1 101 ')) result.upgraded++;
        // The close frame's status code 4001 (0x0fa1) right after its two header bytes.
        const end = data.indexOf('\r\n\r\n');
        const frames = end < 0 ? Buffer.alloc(0) : data.subarray(end + 4);
        if (frames[0] === 0x88 && frames[2] === 0x0f && frames[3] === 0xa1) result.closedWith4001++;
        resolve();
      });
    });
  const ended = [];
  for (let i = 0; i < count; i += 500) {
    for (let j = i; j < Math.min(count, i + 500); j++) ended.push(attacker());
    await new Promise(resolve => setTimeout(resolve, 20));
  }
  await Promise.all(ended);
  console.log(`RESULT ${JSON.stringify(result)}`);
}
