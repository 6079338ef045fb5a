// RSS per idle authenticated connection of the native server, on Node or Bun.
// Usage: node benchmark/idle-memory.mjs [connections] [runtime]
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const WebSocket = require('ws');
const count = Number(process.argv[2] ?? 5000);
const runtime = process.argv[3] ?? process.execPath;

const rssKiB = pid => Number(fs.readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+)/)[1]);
const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));

const server = spawn(runtime, [new URL('./idle-server.js', import.meta.url).pathname], { stdio: ['ignore', 'pipe', 'inherit'] });
const port = await new Promise(resolve => server.stdout.on('data', chunk => {
  const match = String(chunk).match(/port (\d+)/);
  if (match) resolve(Number(match[1]));
}));
await sleep(500);
const before = rssKiB(server.pid);
const sockets = [];
for (let i = 0; i < count; i += 200) {
  await Promise.all(Array.from({ length: Math.min(200, count - i) }, (_, j) => new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`);
    ws.on('open', () => ws.send(JSON.stringify({ event: 'authenticate', data: { user: `u${i + j}` } })));
    ws.on('message', resolve);
    ws.on('error', reject);
    sockets.push(ws);
  })));
}
await sleep(1000);
const after = rssKiB(server.pid);
console.log(JSON.stringify({
  runtime: runtime.split('/').pop(),
  connections: count,
  rssBeforeMiB: +(before / 1024).toFixed(1),
  rssAfterMiB: +(after / 1024).toFixed(1),
  bytesPerConnection: Math.round(((after - before) * 1024) / count),
}));
for (const ws of sockets) ws.terminate();
server.kill('SIGTERM');
