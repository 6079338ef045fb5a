// What the JS thread spends per custom message on parsing a batch and calling the handler
// (which stringifies a reply), for five batch layouts (the last is what src/dispatch.rs writes). No sockets, no addon.
// Usage: taskset -c 0 node|bun benchmark/micro/batch-parse.js [messagesPerBatch]
const PER_BATCH = Number(process.argv[2] ?? 35);
const ROUNDS = 20_000;
const ids = Array.from({ length: PER_BATCH }, (_, i) => `0b8e6f4c-2d1a-4b7e-9f3a-${String(100_000_000_000 + i)}`);
const messageText = i => `{"event":"echo","data":{"t":${1_733_200_000_000_000 + i},"pad":"${'x'.repeat(64)}"}}`;
let sink = 0;

function handler({ clientId, userId, message }) {
  sink += JSON.stringify({ event: 'echo', data: message.data }).length + clientId.length + (userId ? 1 : 0);
}

// An array per message: [4, token, clientId, userId, message].
const rows = round =>
  `[${ids.map((id, i) => `[4,${round * PER_BATCH + i},"${id}","u${i}",${messageText(i)}]`).join(',')}]`;
function runRows(text) {
  for (const [, , clientId, userId, message] of JSON.parse(text)) {
    handler({ clientId, userId: userId ?? undefined, message });
  }
}

// An array per message, with a slot number instead of the two ids.
const senders = ids.map((clientId, i) => ({ clientId, userId: `u${i}` }));
const slotRows = round => `[${ids.map((_, i) => `[4,${round * PER_BATCH + i},${i},${messageText(i)}]`).join(',')}]`;
function runSlotRows(text) {
  for (const [, , slot, message] of JSON.parse(text)) {
    const sender = senders[slot];
    handler({ clientId: sender.clientId, userId: sender.userId, message });
  }
}

// One row of columns for consecutive messages: [4, [tokens], [slots], [messages]].
const columns = round => {
  const tokens = ids.map((_, i) => round * PER_BATCH + i).join(',');
  const slots = ids.map((_, i) => i).join(',');
  return `[[4,[${tokens}],[${slots}],[${ids.map((_, i) => messageText(i)).join(',')}]]]`;
};
function runColumns(text) {
  for (const [, tokens, slots, messages] of JSON.parse(text)) {
    for (let i = 0; i < tokens.length; i++) {
      const sender = senders[slots[i]];
      handler({ clientId: sender.clientId, userId: sender.userId, message: messages[i] });
    }
  }
}

// The same with each message's event and data in columns of their own (the envelope's object
// built in JS): [4, [tokens], [slots], [events], [datas]].
const splitColumns = round => {
  const tokens = ids.map((_, i) => round * PER_BATCH + i).join(',');
  const slots = ids.map((_, i) => i).join(',');
  const events = ids.map(() => '"echo"').join(',');
  const datas = ids.map((_, i) => `{"t":${1_733_200_000_000_000 + i},"pad":"${'x'.repeat(64)}"}`).join(',');
  return `[[4,[${tokens}],[${slots}],[${events}],[${datas}]]]`;
};
function runSplitColumns(text) {
  for (const [, tokens, slots, events, datas] of JSON.parse(text)) {
    for (let i = 0; i < tokens.length; i++) {
      const sender = senders[slots[i]];
      handler({ clientId: sender.clientId, userId: sender.userId, message: { event: events[i], data: datas[i] } });
    }
  }
}

// The same in one flat row per group: [4, n, ...tokens, ...slots, ...events, ...datas].
const flatColumns = round => {
  const tokens = ids.map((_, i) => round * PER_BATCH + i).join(',');
  const slots = ids.map((_, i) => i).join(',');
  const events = ids.map(() => '"echo"').join(',');
  const datas = ids.map((_, i) => `{"t":${1_733_200_000_000_000 + i},"pad":"${'x'.repeat(64)}"}`).join(',');
  return `[[4,${PER_BATCH},${tokens},${slots},${events},${datas}]]`;
};
function runFlatColumns(text) {
  for (const row of JSON.parse(text)) {
    const n = row[1];
    for (let i = 0; i < n; i++) {
      const sender = senders[row[2 + n + i]];
      handler({ clientId: sender.clientId, userId: sender.userId, message: { event: row[2 + 2 * n + i], data: row[2 + 3 * n + i] } });
    }
  }
}

function measure(name, build, run) {
  const batches = Array.from({ length: 64 }, (_, round) => build(round));
  for (let round = 0; round < 2000; round++) {
    run(batches[round & 63]);
  }
  const start = performance.now();
  for (let round = 0; round < ROUNDS; round++) {
    run(batches[round & 63]);
  }
  const nsPerMessage = ((performance.now() - start) * 1e6) / (ROUNDS * PER_BATCH);
  console.log(`${name.padEnd(28)} ${nsPerMessage.toFixed(0)} ns a message`);
}

for (let pass = 0; pass < 2; pass++) {
  measure('array per message, ids', rows, runRows);
  measure('array per message, slot', slotRows, runSlotRows);
  measure('columns, slots', columns, runColumns);
  measure('columns, event and data split', splitColumns, runSplitColumns);
  measure('one flat row, split', flatColumns, runFlatColumns);
}
if (sink === 0) {
  console.log('(nothing measured)');
}
