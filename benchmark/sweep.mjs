// Saturation sweep: raises the offered fan-out load until each server stops keeping up, for
// this package on Node and on Bun and for the TypeScript helper on Bun, alternating them at
// every load level, and writes the sweep's section of benchmark/RESULTS.md (raw numbers in
// sweep-results.json).
//
// Usage: node benchmark/sweep.mjs [--only fanout-1000-64,rooms-2000-100] [--impls ts,node,bun]
//        [--unpinned] [--seconds 5] [--report-from sweep-results.json]
//
// A point is sustainable when every delivery arrived (loss 0), p99 latency stayed within
// 100 ms, and the driver kept to its schedule. Levels double from 100,000 deliveries/s until
// a server fails one, then the gap between its last good level and its first failure is
// filled in steps of 2^(1/4), and the doubling goes on for one more level past the failure,
// so the table shows what each server delivers past its capacity.
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { cpuBetween, cpuReading, cpuSeconds, freePort, lines, pinned, startServer, stop } from './measure.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.dirname(here);
const args = process.argv.slice(2);
const option = (name, fallback) => (args.includes(name) ? args[args.indexOf(name) + 1] : fallback);
const unpinned = args.includes('--unpinned');
const seconds = Number(option('--seconds', '5'));
const reportFrom = option('--report-from', null);
const bun = path.join(root, 'node_modules', 'bun', 'bin', 'bun.exe');
const loadgen = path.join(here, 'loadgen', 'target', 'release', 'loadgen');
const jsonPath = path.join(here, unpinned ? 'sweep-unpinned-results.json' : 'sweep-results.json');

const P99_LIMIT_MS = 100;
/** A driver this far behind its schedule means the server stopped reading its requests. */
const DRIVER_BEHIND_LIMIT_MS = 50;
const FIRST_LEVEL = 100_000;
const FINE_STEP = 2 ** 0.25;

const SCENARIOS = [
  { name: 'fanout-1000-64', title: 'fan-out, 1,000 clients, 64 B', loadgen: 'saturate-fanout', clients: 1000, payload: 64, recipients: 1000 },
  { name: 'fanout-1000-1k', title: 'fan-out, 1,000 clients, 1 KB', loadgen: 'saturate-fanout', clients: 1000, payload: 1024, recipients: 1000 },
  { name: 'fanout-5000-64', title: 'fan-out, 5,000 clients, 64 B', loadgen: 'saturate-fanout', clients: 5000, payload: 64, recipients: 5000 },
  { name: 'rooms-2000-100', title: 'rooms, 2,000 clients in 100 rooms, 64 B', loadgen: 'saturate-rooms', clients: 2000, rooms: 100, payload: 64, recipients: 20 },
];
const IMPLEMENTATIONS = [
  { key: 'ts', name: 'ts-helper (bun)', command: redisPort => [bun, path.join(here, 'servers', 'ts-helper.js'), String(redisPort)] },
  { key: 'node', name: 'native (node)', command: () => [process.execPath, path.join(here, 'servers', 'native.js')] },
  { key: 'bun', name: 'native (bun)', command: () => [bun, path.join(here, 'servers', 'native.js')] },
];
const only = option('--only', null)?.split(',');
const impls = option('--impls', null)?.split(',');
const scenarios = SCENARIOS.filter(s => !only || only.includes(s.name));
const implementations = IMPLEMENTATIONS.filter(i => !impls || impls.includes(i.key));

/** One load level against one server: a fresh server, a fresh load generator. */
async function runPoint(implementation, scenario, offered, redisPort) {
  const serverCore = unpinned ? null : 0;
  const loadgenCore = unpinned ? null : 1;
  const server = await startServer(implementation, redisPort, serverCore);
  const rate = Math.max(1, Math.round(offered / scenario.recipients));
  const command = pinned(loadgenCore, [
    loadgen, scenario.loadgen, '--url', `ws://127.0.0.1:${server.port}/ws`,
    '--clients', String(scenario.clients), '--rooms', String(scenario.rooms ?? 1), '--payload', String(scenario.payload),
    '--rate', String(rate), '--duration', String(seconds), '--warmup', '2', '--threads', unpinned ? '2' : '1',
  ]);
  const generator = spawn(command[0], command.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  let errors = '';
  generator.stderr.on('data', chunk => (errors += chunk));
  const marks = {};
  const result = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`load generator timed out: ${errors}`)), 120_000);
    lines(generator.stdout, line => {
      if (line.startsWith('PHASE ')) {
        marks[line.slice(6)] = { at: performance.now(), cpu: cpuReading(server.pid), loadgen: cpuSeconds(generator.pid) };
      } else if (line.startsWith('RESULT ')) {
        clearTimeout(timer);
        resolve(JSON.parse(line.slice(7)));
      }
    });
    generator.once('exit', code => code !== 0 && reject(new Error(`load generator exited ${code}: ${errors}`)));
  });
  await stop(server.child);
  const start = marks['measure-start'];
  const end = marks['measure-end'];
  const wall = (end.at - start.at) / 1000;
  const serverCpu = cpuBetween(start.cpu, end.cpu);
  const sustainable =
    result.loss === 0 && result.failures === 0 && result.latency.p99_ms <= P99_LIMIT_MS && result.driver_behind_ms <= DRIVER_BEHIND_LIMIT_MS;
  const point = {
    impl: implementation.key,
    offered: result.offered_deliveries_per_s,
    delivered: result.arrivals_per_s,
    onTime: result.deliveries_per_s,
    lossShare: result.deliveries_expected ? result.loss / result.deliveries_expected : 0,
    p50: result.latency.p50_ms,
    p99: result.latency.p99_ms,
    driverBehindMs: result.driver_behind_ms,
    serverUtil: serverCpu / wall,
    loadgenUtil: (end.loadgen - start.loadgen) / wall,
    cpuPerDeliveryUs: result.deliveries_received ? (serverCpu / result.deliveries_received) * 1e6 : null,
    sustainable,
  };
  const pct = value => `${Math.round(value * 100)}%`;
  console.log(
    `${scenario.name} ${implementation.key.padEnd(4)} offered ${fmtRate(point.offered).padStart(6)} delivered ${fmtRate(point.delivered).padStart(6)} ` +
      `loss ${(point.lossShare * 100).toFixed(1)}% p99 ${point.p99.toFixed(1)} ms server ${pct(point.serverUtil)} loadgen ${pct(point.loadgenUtil)} ${sustainable ? 'ok' : 'FAIL'}`,
  );
  return point;
}

const fmtRate = value => (value >= 1e6 ? `${(value / 1e6).toFixed(2)}M` : `${Math.round(value / 1e3)}k`);

async function sweep(scenario, redisPort) {
  const points = [];
  const state = new Map(implementations.map(i => [i.key, { lastPass: 0, firstFail: Infinity, failures: 0 }]));
  const record = (point, level) => {
    points.push(point);
    const s = state.get(point.impl);
    if (point.sustainable) {
      s.lastPass = Math.max(s.lastPass, level);
    } else {
      s.firstFail = Math.min(s.firstFail, level);
      s.failures += 1;
    }
  };
  // Doubling until each implementation has failed twice (its failure and one level past it).
  let turn = 0;
  for (let level = FIRST_LEVEL; level <= 16e6; level *= 2) {
    const active = implementations.filter(i => state.get(i.key).failures < 2);
    if (active.length === 0) {
      break;
    }
    // Rotate who goes first, so no implementation always runs on a warmer or cooler machine.
    const order = active.map((_, i) => active[(i + turn) % active.length]);
    turn += 1;
    for (const implementation of order) {
      record(await runPoint(implementation, scenario, level, redisPort), level);
    }
  }
  // Between each one's last good level and its first failure, in finer steps.
  const coarsePass = new Map([...state].map(([key, s]) => [key, s.lastPass]));
  for (let step = 1; step <= 3; step++) {
    for (const implementation of implementations) {
      const s = state.get(implementation.key);
      const level = Math.round(coarsePass.get(implementation.key) * FINE_STEP ** step);
      if (s.lastPass > 0 && level < s.firstFail) {
        record(await runPoint(implementation, scenario, level, redisPort), level);
      }
    }
  }
  return points;
}

function summarize(points) {
  const summary = {};
  for (const implementation of implementations) {
    const mine = points.filter(p => p.impl === implementation.key).sort((a, b) => a.offered - b.offered);
    const good = mine.filter(p => p.sustainable);
    const sustainable = good.length ? Math.max(...good.map(p => p.offered)) : 0;
    const peak = Math.max(0, ...mine.map(p => p.delivered));
    const past = mine.filter(p => p.offered > sustainable * 1.05 && !p.sustainable);
    const light = mine.find(p => Math.abs(p.offered - FIRST_LEVEL) / FIRST_LEVEL < 0.05);
    const firstFail = mine.find(p => !p.sustainable);
    summary[implementation.key] = {
      sustainable,
      peak,
      // The worst delivered rate offered more than it can take, against its peak.
      pastCapacityShare: past.length ? Math.min(...past.map(p => p.delivered)) / peak : null,
      cpuPerDeliveryAtLightUs: light?.cpuPerDeliveryUs ?? null,
      saturated: firstFail
        ? firstFail.loadgenUtil > 0.9 && firstFail.serverUtil < 0.9
          ? 'load generator'
          : firstFail.serverUtil >= 0.9
            ? 'server'
            : 'neither at 90% (latency)'
        : 'not reached',
      firstFail: firstFail ?? null,
    };
  }
  return summary;
}

function report(data) {
  const out = [];
  const ratio = (value, base) => (base ? `${(value / base).toFixed(2)}x` : '–');
  out.push(`## Saturation sweep${data.unpinned ? ' (unpinned: server and load generator share both cores)' : ''}`, '');
  out.push(
    `${data.date}, ${data.cpu}; Bun ${data.bun}, Node ${data.node}. ${data.unpinned ? 'No pinning; the load generator receives on two threads.' : 'Server pinned to core 0, load generator (one receiving thread) to core 1.'} ` +
      `Command: \`node benchmark/sweep.mjs${data.unpinned ? ' --unpinned' : ''}\` (${data.seconds} s measured per point, a fresh server and load generator per point; raw numbers in \`${path.basename(jsonPath)}\`).`,
    '',
  );
  out.push(
    `Sustainable: every delivery arrived, p99 <= ${P99_LIMIT_MS} ms, and the driver kept to its schedule. ` +
      '"Past capacity" is the lowest delivered rate at an offered rate above the sustainable one, as a share of the peak delivered rate. ' +
      '"Saturated" says which side was at 90% of its core or more at the first failing point. CPU per delivery is server CPU time at 100,000 deliveries/s offered.',
    '',
  );
  out.push('| scenario | server | sustainable deliveries/s | vs helper | peak delivered | past capacity | CPU/delivery at 100k/s | vs helper | saturated first |');
  out.push('|---|---|---|---|---|---|---|---|---|');
  for (const scenario of data.scenarios) {
    const base = scenario.summary.ts;
    for (const implementation of implementations) {
      const s = scenario.summary[implementation.key];
      if (!s) {
        continue;
      }
      out.push(
        `| ${scenario.title} | ${implementation.name} | ${fmtRate(s.sustainable)} | ${implementation.key === 'ts' ? '' : ratio(s.sustainable, base?.sustainable)} | ${fmtRate(s.peak)} | ` +
          `${s.pastCapacityShare === null ? '–' : `${Math.round(s.pastCapacityShare * 100)}%`} | ${s.cpuPerDeliveryAtLightUs?.toFixed(2) ?? '–'} µs | ` +
          `${implementation.key === 'ts' ? '' : ratio(s.cpuPerDeliveryAtLightUs, base?.cpuPerDeliveryAtLightUs)} | ${s.saturated} |`,
      );
    }
  }
  out.push('', 'Every point, in the order of offered load:', '');
  for (const scenario of data.scenarios) {
    out.push(`**${scenario.title}**`, '');
    out.push('| offered/s | ' + implementations.map(i => `${i.name}: delivered, loss, p99, server CPU`).join(' | ') + ' |');
    out.push('|---|' + implementations.map(() => '---').join('|') + '|');
    const levels = [...new Set(scenario.points.map(p => Math.round(p.offered / 1000) * 1000))].sort((a, b) => a - b);
    for (const level of levels) {
      const cells = implementations.map(i => {
        const p = scenario.points.find(q => q.impl === i.key && Math.round(q.offered / 1000) * 1000 === level);
        if (!p) {
          return '';
        }
        return `${fmtRate(p.delivered)}, ${(p.lossShare * 100).toFixed(p.lossShare > 0 && p.lossShare < 0.001 ? 3 : 1)}%, ${p.p99.toFixed(0)} ms, ${Math.round(p.serverUtil * 100)}%${p.sustainable ? '' : ' ✗'}`;
      });
      out.push(`| ${fmtRate(level)} | ${cells.join(' | ')} |`);
    }
    out.push('');
  }
  return out.join('\n');
}

/** Replaces the sweep's section of RESULTS.md (between its markers), or appends it. */
function writeSection(markdown) {
  const file = path.join(here, 'RESULTS.md');
  const marker = data => `<!-- ${data}${unpinned ? ' unpinned' : ''} -->`;
  const [open, close] = [marker('sweep start'), marker('sweep end')];
  const existing = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '';
  const section = `${open}\n${markdown}\n${close}`;
  const from = existing.indexOf(open);
  const to = existing.indexOf(close);
  const updated = from >= 0 && to > from ? existing.slice(0, from) + section + existing.slice(to + close.length) : `${existing.trimEnd()}\n\n${section}\n`;
  fs.writeFileSync(file, updated);
}

async function main() {
  let data;
  if (reportFrom) {
    data = JSON.parse(fs.readFileSync(path.resolve(reportFrom), 'utf8'));
  } else {
    const redisPort = await freePort();
    const redis = spawn('redis-server', ['--port', String(redisPort), '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
    await new Promise(resolve => setTimeout(resolve, 500));
    try {
      data = {
        date: new Date().toISOString().slice(0, 10),
        cpu: fs.readFileSync('/proc/cpuinfo', 'utf8').match(/model name\s*:\s*(.*)/)?.[1] ?? 'unknown CPU',
        bun: (await import('node:child_process')).execFileSync(bun, ['--version'], { encoding: 'utf8' }).trim(),
        node: process.version,
        unpinned,
        seconds,
        scenarios: [],
      };
      for (const scenario of scenarios) {
        const points = await sweep(scenario, redisPort);
        data.scenarios.push({ name: scenario.name, title: scenario.title, points, summary: summarize(points) });
        fs.writeFileSync(jsonPath, JSON.stringify(data, null, 2));
      }
    } finally {
      redis.kill('SIGTERM');
    }
  }
  const markdown = report(data);
  writeSection(markdown);
  console.log(`\n${markdown}`);
}

main().catch(error => {
  console.error(error);
  process.exit(1);
});
