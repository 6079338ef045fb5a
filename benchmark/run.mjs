// Runs every benchmark scenario against this package on Node, on Bun, and against the
// TypeScript helper on Bun; alternates the implementations within each repetition; writes
// benchmark/RESULTS.md. Usage: node benchmark/run.mjs [--quick] [--reps N] [--only a,b] [--out NAME.md]
//   [--impls ts,node,bun,ref,ref2,refh,refe] [--variant ENV=VALUE] [--report-from results.json]
//
// The server is pinned to core 0 and the load generator to core 1 (taskset). Server CPU
// time comes from /proc (each thread's run time in ns, see cpuReading), sampled when the
// load generator enters and leaves its measured window, so CPU per delivery is measured at
// the same fixed rate for everyone.
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { anonRssBytes, contextSwitches, cpuBetween, cpuReading, cpuSeconds, freePort, lines, machineTicks, pinned, rssBytes, startServer, stop } from './measure.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.dirname(here);
const args = process.argv.slice(2);
const quick = args.includes('--quick');
const reps = Number(args[args.indexOf('--reps') + 1]) || (quick ? 1 : 3);
const only = args.includes('--only') ? args[args.indexOf('--only') + 1].split(',') : null;
// A partial run can write its own report instead of replacing the full one.
const outName = args.includes('--out') ? args[args.indexOf('--out') + 1] : 'RESULTS.md';
// `--report-from results.json`: no run, the report written again from a run's raw numbers.
const reportFrom = args.includes('--report-from') ? args[args.indexOf('--report-from') + 1] : null;
const jsonName = outName === 'RESULTS.md' ? 'results.json' : outName.toLowerCase().replace(/\.md$/, '.json');
const bun = path.join(root, 'node_modules', 'bun', 'bin', 'bun.exe');
const loadgen = path.join(here, 'loadgen', 'target', 'release', 'loadgen');
const referenceServer = path.join(here, 'loadgen', 'target', 'release', 'reference');
/** How long connections stay idle before the server's memory per connection is read (connect). */
const IDLE_SETTLE_MS = 2000;
// A repetition in which the hypervisor took more of the machine than this is flagged in the
// report: its times are suspect.
const STOLEN_WARNING = 0.05;
/** The scaling scenario's messageHandler work per message. */
const SCALING_WORK_US = 20;

const scale = quick ? 0.2 : 1;
const SCENARIOS = [
  {
    name: 'connect',
    args: ['--clients', String(Math.round(10000 * scale)), '--concurrency', '100'],
    units: c => c.result.connected,
    unitName: 'connection',
  },
  {
    name: 'fanout',
    args: ['--clients', String(Math.round(1000 * scale)), '--rate', '50', '--duration', quick ? '4' : '10', '--warmup', '2'],
    // The driver is authenticated too, so each broadcast is one delivery more than receivers see.
    units: c => c.result.requests_sent * (c.result.receivers + 1),
    unitName: 'delivery',
  },
  {
    name: 'rooms',
    args: ['--clients', String(Math.round(1000 * scale)), '--rooms', '10', '--rate', '500', '--duration', quick ? '4' : '10', '--warmup', '2'],
    units: c => c.result.deliveries_expected,
    unitName: 'delivery',
  },
  {
    // Two instances of the same implementation on one Redis: receivers on the second, the
    // driver on the first asks for send() without destination (local delivery + PUBLISH).
    // Server CPU is both processes'; Redis' own CPU is not counted.
    name: 'cross',
    instances: 2,
    args: ['--clients', String(Math.round(1000 * scale)), '--rate', '50', '--duration', quick ? '4' : '10', '--warmup', '2'],
    // Receivers get it from the second instance, the driver from the first (local delivery).
    units: c => c.result.requests_sent * (c.result.receivers + 1),
    unitName: 'delivery',
  },
  {
    // Slow consumers: 20 clients that authenticate and never read again, beside receivers of
    // 16 KB broadcasts. Compared with the same load without them ('slow-baseline'): the other
    // clients' latency and loss, and how much the server's RSS grew.
    name: 'slow-baseline',
    loadgen: 'fanout',
    args: ['--clients', String(Math.round(200 * scale)), '--rate', '50', '--payload', '16384', '--duration', quick ? '4' : '10', '--warmup', '2'],
    units: c => c.result.requests_sent * (c.result.receivers + 1),
    unitName: 'delivery',
    rssGrowth: true,
  },
  {
    name: 'slow',
    loadgen: 'fanout',
    args: ['--clients', String(Math.round(200 * scale)), '--rate', '50', '--payload', '16384', '--slow', '20', '--duration', quick ? '4' : '10', '--warmup', '2'],
    units: c => c.result.requests_sent * (c.result.receivers + 1),
    unitName: 'delivery',
    rssGrowth: true,
  },
  {
    name: 'echo',
    args: ['--clients', '50', '--duration', quick ? '4' : '10', '--warmup', '2'],
    units: c => c.result.round_trips,
    unitName: 'round trip',
  },
  {
    // The same with four times the messages in flight: whether larger batches make the
    // crossing into JS, paid per batch, cheaper per round trip (benchmark/README.md).
    name: 'echo-200',
    loadgen: 'echo',
    args: ['--clients', '200', '--duration', quick ? '4' : '10', '--warmup', '2'],
    units: c => c.result.round_trips,
    unitName: 'round trip',
  },
];
const isEcho = scenario => (scenario.loadgen ?? scenario.name) === 'echo';

const IMPLEMENTATIONS = [
  { name: 'ts-helper (bun)', key: 'ts', command: redisPort => [bun, path.join(here, 'servers', 'ts-helper.js'), String(redisPort)] },
  // Standalone unless a scenario needs Redis (`instances` > 1).
  { name: 'native (node)', key: 'node', command: redisPort => [process.execPath, path.join(here, 'servers', 'native.js'), ...(redisPort ? [String(redisPort)] : [])] },
  { name: 'native (bun)', key: 'bun', command: redisPort => [bun, path.join(here, 'servers', 'native.js'), ...(redisPort ? [String(redisPort)] : [])] },
  // Not a contender: about the least a server can do per scenario (one thread, no JS, one
  // write(2) per delivery; loadgen/src/bin/reference.rs), so the tables show the floor.
  { name: 'reference (Rust, no JS)', key: 'ref', command: () => [referenceServer], scenarios: ['connect', 'fanout', 'rooms', 'echo', 'echo-200'] },
  // The same with an idle second thread: what being a multi-threaded process (as Node and Bun
  // are) costs per system call.
  { name: 'reference, 2 threads', key: 'ref2', command: () => [referenceServer, '--idle-thread'], scenarios: ['fanout', 'rooms'] },
  // Echo answered the way this package's design must: the reading thread hands each message
  // to a second thread, which replies; still no JS. What the hand-off alone costs.
  { name: 'reference, hand-off', key: 'refh', command: () => [referenceServer, '--hand-off'], scenarios: ['echo', 'echo-200'] },
  // The same with its reading thread on a bare epoll loop instead of tokio: the design's floor
  // with the lightest reader.
  { name: 'reference, hand-off, epoll', key: 'refe', command: () => [referenceServer, '--hand-off', '--epoll'], scenarios: ['echo', 'echo-200'] },
];
// `--impls ts,node,...`: only these implementations (keys as in results.json).
if (args.includes('--impls')) {
  const keep = args[args.indexOf('--impls') + 1].split(',');
  IMPLEMENTATIONS.splice(0, IMPLEMENTATIONS.length, ...IMPLEMENTATIONS.filter(i => keep.includes(i.key)));
}
// `--variant NAME=VALUE`: this package once more on each runtime kept by `--impls` with that environment
// variable set, alternated with the rest in the same run (an A/B of a setting).
if (args.includes('--variant')) {
  const setting = args[args.indexOf('--variant') + 1];
  const [variable, value = '1'] = setting.split('=');
  for (const key of ['node', 'bun']) {
    const base = IMPLEMENTATIONS.find(i => i.key === key);
    if (!base) continue;
    IMPLEMENTATIONS.push({ ...base, name: `${base.name} ${setting}`, key: `${key}+`, env: { [variable]: value } });
  }
}
const runsScenario = (implementation, name) => !implementation.scenarios || implementation.scenarios.includes(name);

async function runOnce(implementation, scenario, redisPort, { serverCore = 0, loadgenCore = 1 } = {}) {
  const instances = scenario.instances ?? 1;
  const servers = [];
  for (let i = 0; i < instances; i++) {
    servers.push(await startServer(implementation, instances > 1 || implementation.key === 'ts' ? redisPort : null, serverCore, scenario.serverEnv));
  }
  // Receivers connect to the last instance, the driver (cross) to the first.
  const { port, pid } = servers.at(-1);
  const driverArgs = instances > 1 ? ['--driver-url', `ws://127.0.0.1:${servers[0].port}/ws`] : [];
  await new Promise(resolve => setTimeout(resolve, 500));
  const rssStart = rssBytes(pid);
  const anonRssStart = anonRssBytes(pid);
  const [lgCommand, ...lgArgs] = pinned(loadgenCore, [loadgen, scenario.loadgen ?? scenario.name, '--url', `ws://127.0.0.1:${port}/ws`, ...driverArgs, ...scenario.args]);
  const generator = spawn(lgCommand, lgArgs, { stdio: ['pipe', 'pipe', 'pipe'] });
  let generatorErrors = '';
  generator.stderr.on('data', chunk => (generatorErrors += chunk));
  const serversSum = read => servers.reduce((sum, server) => sum + read(server.pid), 0);
  const sample = () => ({
    at: performance.now(),
    servers: servers.map(server => cpuReading(server.pid)),
    serverSwitches: serversSum(contextSwitches),
    loadgen: cpuSeconds(generator.pid),
    rss: rssBytes(pid),
    machine: machineTicks(),
  });
  const marks = {};
  const result = await new Promise((resolve, reject) => {
    lines(generator.stdout, line => {
      if (line === 'PHASE measure-start') {
        marks.start = sample();
      } else if (line === 'PHASE measure-end') {
        marks.end = sample();
      } else if (line === 'PHASE idle') {
        // Read once the connections have been idle for a while: a garbage-collected runtime
        // frees the garbage of the connection burst within about a second (Bun's RSS falls by
        // 10-20% in that time, the TypeScript helper's and this package's alike).
        setTimeout(() => {
          if (generator.exitCode !== null) {
            return; // it failed meanwhile; the exit handler reports it
          }
          marks.idleRss = rssBytes(pid);
          marks.idleAnonRss = anonRssBytes(pid);
          generator.stdin.write('go\n');
        }, IDLE_SETTLE_MS);
      } else if (line.startsWith('RESULT ')) {
        resolve(JSON.parse(line.slice(7)));
      }
    });
    generator.once('exit', code => {
      if (code !== 0) {
        reject(new Error(`loadgen exited ${code}: ${generatorErrors}`));
      }
    });
  });
  await stop(generator);
  for (const server of servers) {
    await stop(server.child);
  }
  const wall = (marks.end.at - marks.start.at) / 1000;
  return {
    result,
    wall,
    serverCpu: servers.reduce((sum, _, i) => sum + cpuBetween(marks.start.servers[i], marks.end.servers[i]), 0),
    serverSwitches: marks.end.serverSwitches - marks.start.serverSwitches,
    loadgenCpu: marks.end.loadgen - marks.start.loadgen,
    stolen:
      (marks.end.machine.steal - marks.start.machine.steal) / Math.max(1, marks.end.machine.total - marks.start.machine.total),
    rssStart,
    rssEnd: marks.end.rss,
    idleRss: marks.idleRss,
    anonRssStart,
    idleAnonRss: marks.idleAnonRss,
  };
}

const median = values => {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
};

function summarize(runs, scenario) {
  const pick = fn => {
    const values = runs.map(fn).filter(v => Number.isFinite(v));
    return { median: median(values), min: Math.min(...values), max: Math.max(...values) };
  };
  const summary = {
    cpuPerUnitUs: pick(run => (run.serverCpu / scenario.units(run)) * 1e6),
    // Threads that end inside the window take their count with them; never below zero.
    switchesPer1000: pick(run => (Math.max(0, run.serverSwitches) / scenario.units(run)) * 1000),
    serverUtil: pick(run => run.serverCpu / run.wall),
    loadgenUtil: pick(run => run.loadgenCpu / run.wall),
    // Absent from runs recorded before it was measured.
    stolen: pick(run => run.stolen),
  };
  const r = run => run.result;
  if (scenario.name === 'connect') {
    summary.rate = pick(run => r(run).connections_per_s);
    summary.p50 = pick(run => r(run).time_to_connected.p50_ms);
    summary.p99 = pick(run => r(run).time_to_connected.p99_ms);
    summary.rssPerConnection = pick(run => (run.idleRss - run.rssStart) / r(run).connected);
    summary.anonRssPerConnection = pick(run => (run.idleAnonRss - run.anonRssStart) / r(run).connected);
    summary.failures = pick(run => r(run).failures);
  } else if (isEcho(scenario)) {
    summary.rate = pick(run => r(run).round_trips_per_s);
    summary.p50 = pick(run => r(run).latency.p50_ms);
    summary.p99 = pick(run => r(run).latency.p99_ms);
  } else {
    summary.rate = pick(run => r(run).deliveries_per_s);
    summary.p50 = pick(run => r(run).latency.p50_ms);
    summary.p99 = pick(run => r(run).latency.p99_ms);
    summary.loss = pick(run => r(run).loss);
    summary.rssGrowthMb = pick(run => (run.rssEnd - run.rssStart) / 2 ** 20);
  }
  return summary;
}

/**
 * CPU per unit against the helper's, repetition by repetition: runs of one repetition are
 * back to back, so the machine's drift between repetitions (large on some machines) cancels
 * in each ratio. Null when the two have not run the same repetitions.
 */
function pairedCpuRatios(runs, baseRuns, scenario) {
  if (!baseRuns || runs.length !== baseRuns.length) {
    return null;
  }
  const cpuPerUnit = run => run.serverCpu / scenario.units(run);
  const values = runs.map((run, rep) => cpuPerUnit(run) / cpuPerUnit(baseRuns[rep])).filter(v => Number.isFinite(v));
  return values.length ? { median: median(values), min: Math.min(...values), max: Math.max(...values) } : null;
}

const fmt = (stat, digits = 1) =>
  stat.min === stat.max ? stat.median.toFixed(digits) : `${stat.median.toFixed(digits)} (${stat.min.toFixed(digits)}–${stat.max.toFixed(digits)})`;

function versions() {
  const cpu = fs.readFileSync('/proc/cpuinfo', 'utf8').match(/model name\s*:\s*(.*)/)?.[1] ?? 'unknown';
  const run = (cmd, cmdArgs) => execFileSync(cmd, cmdArgs, { encoding: 'utf8' }).trim();
  return {
    date: new Date().toISOString(),
    machine: `${os.cpus().length} cores (${cpu}), ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, ${os.release()}`,
    node: process.version,
    bun: run(bun, ['--version']),
    rustc: run('rustc', ['--version']),
    native: JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')).version,
    ts: JSON.parse(fs.readFileSync(path.join(root, 'node_modules/@venizia/ignis-helpers/package.json'), 'utf8')).version,
  };
}

function bottleneck(summary) {
  const server = summary.serverUtil.median;
  const generator = summary.loadgenUtil.median;
  if (server > 0.9) return 'server';
  if (generator > 0.9) return 'load generator';
  return `neither (server ${(server * 100).toFixed(0)}%, loadgen ${(generator * 100).toFixed(0)}% of a core)`;
}

/** The most of the machine's time stolen in any repetition, when it was measured and matters. */
function stolenNote(summary) {
  const stolen = summary.stolen;
  return Number.isFinite(stolen?.max) && stolen.max >= STOLEN_WARNING ? `; up to ${(stolen.max * 100).toFixed(0)}% stolen` : '';
}

/** Writes the report, keeping the sections sweep.mjs wrote into the file before. */
function writeReport(text) {
  const file = path.resolve(here, outName);
  const existing = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '';
  const kept = existing.match(/<!-- sweep start[^>]*-->[\s\S]*?<!-- sweep end[^>]*-->/g) ?? [];
  fs.writeFileSync(file, [text.trimEnd(), ...kept].join('\n\n') + '\n');
}

async function main() {
  if (reportFrom) {
    const { info, results, unpinned } = JSON.parse(fs.readFileSync(path.resolve(reportFrom), 'utf8'));
    writeReport(report(info, results, unpinned));
    process.stderr.write(`wrote ${path.relative(process.cwd(), path.resolve(here, outName))}\n`);
    return;
  }
  if (!fs.existsSync(loadgen) || !fs.existsSync(referenceServer)) {
    execFileSync('cargo', ['build', '--release'], { cwd: path.join(here, 'loadgen'), stdio: 'inherit' });
  }
  const redisPort = await freePort();
  const redis = spawn('redis-server', ['--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
    stdio: 'ignore',
  });
  await new Promise(resolve => setTimeout(resolve, 500));
  const info = { ...versions(), command: args.join(' ') };
  const results = {};
  try {
    for (const scenario of SCENARIOS.filter(s => !only || only.includes(s.name))) {
      results[scenario.name] = {};
      for (let rep = 0; rep < reps; rep++) {
        // Alternate the order between repetitions so drift does not favour one side.
        const order = rep % 2 ? [...IMPLEMENTATIONS].reverse() : IMPLEMENTATIONS;
        for (const implementation of order.filter(i => runsScenario(i, scenario.name))) {
          process.stderr.write(`${scenario.name} #${rep + 1} ${implementation.name} ... `);
          const run = await runOnce(implementation, scenario, redisPort);
          (results[scenario.name][implementation.key] ??= []).push(run);
          const units = scenario.units(run);
          process.stderr.write(
            `server cpu ${run.serverCpu.toFixed(2)} s in ${run.wall.toFixed(1)} s, ${units} ${scenario.unitName.replace(/y$/, 'ie')}s, ${((run.serverCpu / units) * 1e6).toFixed(2)} µs each, ${(run.stolen * 100).toFixed(0)}% of the machine stolen\n`,
          );
        }
      }
    }
    const unpinned = {};
    if (!only || only.includes('scaling')) {
      // Both cores for the server (the load generator shares them): how far past one core.
      // The application's messageHandler works 20 µs per message (a busy loop, the same
      // wall time on every runtime), so the JS thread, not the load generator, limits the
      // rate: what the server can move off that thread decides how far it scales.
      const echo = SCENARIOS.find(s => s.name === 'echo');
      const busy = { ...echo, serverEnv: { BENCH_HANDLER_WORK_US: String(SCALING_WORK_US) } };
      for (const implementation of IMPLEMENTATIONS.filter(i => runsScenario(i, 'scaling'))) {
        for (const [label, cores] of [['pinned', { serverCore: 0, loadgenCore: 1 }], ['unpinned', { serverCore: null, loadgenCore: null }]]) {
          process.stderr.write(`scaling ${label} ${implementation.name} ... `);
          const run = await runOnce(implementation, busy, redisPort, cores);
          (unpinned[implementation.key] ??= {})[label] = run;
          process.stderr.write(`${run.result.round_trips_per_s.toFixed(0)} rt/s\n`);
        }
      }
    }
    writeReport(report(info, results, unpinned));
    fs.writeFileSync(path.resolve(here, jsonName), JSON.stringify({ info, results, unpinned }, null, 1));
    process.stderr.write(`wrote ${path.relative(process.cwd(), path.resolve(here, outName))}\n`);
  } finally {
    await stop(redis);
  }
}

function report(info, results, unpinned) {
  const out = [];
  out.push('# Benchmark results', '');
  // Runs before the command was recorded were full runs, without arguments.
  const command = info.command ?? (reportFrom ? '' : args.join(' '));
  const repetitions = Math.max(...Object.values(results).flatMap(byImpl => Object.values(byImpl).map(runs => runs.length)));
  out.push(`Generated by \`node benchmark/run.mjs ${command}\` on ${info.date}.`.replace(' ` on', '` on'), '');
  out.push(`- Machine: ${info.machine}`);
  out.push(`- Node ${info.node}, Bun ${info.bun}, ${info.rustc}`);
  out.push(`- ignis-native-ws ${info.native} vs @venizia/ignis-helpers ${info.ts} (its WebSocketServerHelper on Bun, wired like Ignis' component, logger silenced)`);
  out.push(`- Server pinned to core 0, load generator (benchmark/loadgen, Rust) to core 1; ${repetitions} repetition(s), implementations alternated; medians with (min–max).`);
  out.push('- "CPU/unit" is server CPU time (the run time of all its threads, from /proc/<pid>/task/*/schedstat in nanoseconds; from the clock ticks of /proc/<pid>/stat in a window where a thread ended) per connection, delivery or round trip inside the measured window; ratios are against ts-helper (bun) in the same run. "CPU ratio vs ts" divides the medians; "paired by repetition" divides each repetition\'s CPU/unit by the helper\'s in the same repetition (run back to back, so the machine\'s drift between repetitions cancels) and gives the median (min–max) of those ratios.');
  out.push('- "reference (Rust, no JS)" is not a contender: a bare one-thread server (benchmark/loadgen/src/bin/reference.rs) with no JS, no validation and no queues, one write(2) per delivery: about the least a server spends per unit on this machine (for fan-out, the kernel\'s floor). "reference, 2 threads" is the same server with a second thread that never runs, which makes the process multi-threaded as every Node or Bun process is (fan-out and rooms only). "reference, hand-off" answers echo as this package\'s design must, still without JS: its reading thread queues each message for a second thread and wakes it (an eventfd, as a threadsafe function does), and that thread writes the reply; "reference, hand-off, epoll" is the same with its reading thread on a bare epoll loop instead of tokio (echo only).');
  out.push('- "RSS/conn" (connect) is the growth of the server\'s resident memory from before the first connection to all connections idle, per connection, read after the connections have been idle for 2 s (a garbage-collected runtime frees the connection burst\'s garbage within about a second); "anon RSS/conn" counts anonymous memory only (RssAnon), leaving out the pages of the runtime\'s own binary that are first read in while connections are served (file-backed code, read once: 2–5 MB here, more for Bun\'s binary than for Node\'s).');
  out.push('- "switches/1k" counts the server threads\' context switches (voluntary and not) per 1,000 units in the same window: hand-offs between threads, and wake-ups from sleep.');
  out.push(`- "stolen" (in the bottleneck column, from ${STOLEN_WARNING * 100}% up): the largest share of the machine's time, in any repetition's window, that the hypervisor gave to other machines (\`steal\` in /proc/stat). On a shared host such a window runs slower in ways CPU time does not fully capture, so its numbers are suspect.`, '');
  for (const [name, byImpl] of Object.entries(results)) {
    const scenario = SCENARIOS.find(s => s.name === name);
    const summaries = Object.fromEntries(Object.entries(byImpl).map(([key, runs]) => [key, summarize(runs, scenario)]));
    const base = summaries.ts;
    out.push(`## ${name}`, '', `\`loadgen ${scenario.loadgen ?? name} ${scenario.args.join(' ')}\``, '');
    const extra = name === 'connect' ? ['RSS/conn (bytes)', 'anon RSS/conn (bytes)', 'failures'] : isEcho(scenario) ? [] : scenario.rssGrowth ? ['loss', 'RSS growth (MB)'] : ['loss'];
    const rateName = name === 'connect' ? 'connections/s' : isEcho(scenario) ? 'round trips/s' : 'deliveries/s';
    out.push(
      `| implementation | ${rateName} | p50 ms | p99 ms | CPU/${scenario.unitName} (µs) | CPU ratio vs ts | paired by repetition | switches/1k | ${extra.join(' | ')}${extra.length ? ' | ' : ''}bottleneck |`,
    );
    out.push(`|---|---|---|---|---|---|---|---|${extra.map(() => '---|').join('')}---|`);
    for (const implementation of IMPLEMENTATIONS) {
      const s = summaries[implementation.key];
      if (!s) continue;
      const ratio = base ? (s.cpuPerUnitUs.median / base.cpuPerUnitUs.median).toFixed(2) : '';
      const paired = pairedCpuRatios(byImpl[implementation.key], byImpl.ts, scenario);
      const cells = [fmt(s.rate, 0), fmt(s.p50, 2), fmt(s.p99, 2), fmt(s.cpuPerUnitUs, 2), ratio, paired ? fmt(paired, 2) : '', fmt(s.switchesPer1000, 0)];
      if (name === 'connect') cells.push(fmt(s.rssPerConnection, 0), fmt(s.anonRssPerConnection, 0), fmt(s.failures, 0));
      else if (!isEcho(scenario)) cells.push(fmt(s.loss, 0));
      if (scenario.rssGrowth) cells.push(fmt(s.rssGrowthMb, 1));
      cells.push(bottleneck(s) + stolenNote(s));
      out.push(`| ${implementation.name} | ${cells.join(' | ')} |`);
    }
    if (base) {
      const ratios = IMPLEMENTATIONS.filter(i => i.key !== 'ts' && summaries[i.key]).map(i => {
        const s = summaries[i.key];
        const parts = [`rate ${(s.rate.median / base.rate.median).toFixed(2)}x`, `CPU/${scenario.unitName} ${(s.cpuPerUnitUs.median / base.cpuPerUnitUs.median).toFixed(2)}x`];
        const paired = pairedCpuRatios(byImpl[i.key], byImpl.ts, scenario);
        if (paired) {
          parts.push(`paired by repetition ${paired.median.toFixed(2)}x (${paired.min.toFixed(2)}–${paired.max.toFixed(2)})`);
        }
        if (name === 'connect') {
          parts.push(`RSS/conn ${(s.rssPerConnection.median / base.rssPerConnection.median).toFixed(2)}x`);
          parts.push(`anon RSS/conn ${(s.anonRssPerConnection.median / base.anonRssPerConnection.median).toFixed(2)}x`);
        }
        parts.push(`p99 ${(s.p99.median / base.p99.median).toFixed(2)}x`);
        return `${i.name}: ${parts.join(', ')}`;
      });
      out.push('', `Ratios against ts-helper (bun): ${ratios.join('; ')}.`);
    }
    out.push('');
  }
  if (Object.keys(unpinned).length) {
    out.push(
      '## Scaling past one core',
      '',
      `\`loadgen echo --clients 50\` with a messageHandler that works ${SCALING_WORK_US} µs per message (a busy loop), server pinned to one core vs unpinned (both cores, shared with the load generator).`,
      '',
    );
    out.push(
      'The JS thread is the limit here. Pinned, everything shares one core; unpinned, whatever a server does off the JS thread runs on the other core, beside the load generator. "server cores used" is server CPU time per second (1.00 = one core).',
      '',
    );
    out.push(
      '| implementation | pinned round trips/s | unpinned round trips/s | gain | server cores used, pinned | server cores used, unpinned |',
      '|---|---|---|---|---|---|',
    );
    for (const implementation of IMPLEMENTATIONS) {
      const u = unpinned[implementation.key];
      if (!u) continue;
      const a = u.pinned.result.round_trips_per_s;
      const b = u.unpinned.result.round_trips_per_s;
      const cores = run => (run.serverCpu / run.wall).toFixed(2);
      out.push(
        `| ${implementation.name} | ${a.toFixed(0)} | ${b.toFixed(0)} | ${(b / a).toFixed(2)}x | ${cores(u.pinned)} | ${cores(u.unpinned)} |`,
      );
    }
    out.push('');
  }
  return out.join('\n');
}

main().catch(error => {
  console.error(error);
  process.exitCode = 1;
});
