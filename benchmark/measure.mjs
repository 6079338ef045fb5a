// Measuring a server process from outside, shared by run.mjs and sweep.mjs: CPU time from
// /proc, memory, the machine's stolen time, and starting, pinning and stopping processes.
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import readline from 'node:readline';

const TICKS = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());
const PAGE = 4096;

/**
 * User plus system CPU seconds of a process, all threads. Not split: the kernel samples the
 * split at timer ticks, and on this virtual machine it disagreed with `perf` (16% kernel time
 * for the TypeScript helper's fan-out where `perf` sampled 84%); README.md has perf's split.
 */
export function cpuSeconds(pid) {
  const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(fields[11]) + Number(fields[12])) / TICKS;
}

/**
 * A process' CPU time as read at one moment: its threads' run times in nanoseconds
 * (`/proc/<pid>/task/<tid>/schedstat`) and, for when a thread ends inside a window, the
 * process total in clock ticks (`cpuSeconds`), which keeps ended threads' time. Ticks are
 * 10 ms: over connect's windows of about 0.3 s that is 1 µs per connection, 3% of it.
 */
export function cpuReading(pid) {
  return { threads: perThread(pid, 'schedstat', text => Number(text.split(' ')[0])), seconds: cpuSeconds(pid) };
}

/** thread id -> `read` of that thread's /proc file `name`, for a process' live threads. */
export function perThread(pid, name, read) {
  const values = new Map();
  for (const task of fs.readdirSync(`/proc/${pid}/task`)) {
    try {
      values.set(task, read(fs.readFileSync(`/proc/${pid}/task/${task}/${name}`, 'utf8')));
    } catch {
      // The thread ended between the listing and the read.
    }
  }
  return values;
}

/** CPU seconds between two readings of a process (see `cpuReading`). */
export function cpuBetween(start, end) {
  for (const thread of start.threads.keys()) {
    if (!end.threads.has(thread)) {
      return end.seconds - start.seconds;
    }
  }
  let nanoseconds = 0;
  for (const [thread, ran] of end.threads) {
    // A thread that started inside the window ran only inside it.
    nanoseconds += ran - (start.threads.get(thread) ?? 0);
  }
  return nanoseconds / 1e9;
}

/**
 * The machine's CPU time so far, in ticks, and how much of it the hypervisor gave to other
 * machines (`steal` in /proc/stat): on a shared host, a window with much stolen time runs
 * slower in ways CPU time does not fully capture.
 */
export function machineTicks() {
  const fields = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal (guest time is counted in user already)
  return { total: fields.slice(0, 8).reduce((sum, value) => sum + value, 0), steal: fields[7] ?? 0 };
}

/** Context switches (voluntary and not) of a process' live threads. */
export function contextSwitches(pid) {
  const switches = perThread(pid, 'status', status =>
    [...status.matchAll(/ctxt_switches:\s+(\d+)/g)].reduce((sum, match) => sum + Number(match[1]), 0),
  );
  return [...switches.values()].reduce((sum, value) => sum + value, 0);
}

export function rssBytes(pid) {
  return Number(fs.readFileSync(`/proc/${pid}/statm`, 'utf8').split(' ')[1]) * PAGE;
}

/**
 * Anonymous resident memory (RssAnon): RSS without file-backed pages. When a server first
 * handles connections, the pages of its runtime's binary that run for them are read in (a
 * one-time 2–5 MB here, more for a bigger binary); RSS counts them, RssAnon does not.
 */
export function anonRssBytes(pid) {
  const match = /^RssAnon:\s+(\d+) kB/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return match ? Number(match[1]) * 1024 : Number.NaN;
}

export function freePort() {
  return new Promise(resolve => {
    const server = net.createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

export function lines(stream, onLine) {
  readline.createInterface({ input: stream }).on('line', onLine);
}

export async function stop(child) {
  if (child.exitCode !== null || child.signalCode !== null) {
    return;
  }
  const exited = new Promise(resolve => child.once('exit', resolve));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
  await exited;
  clearTimeout(timer);
}

export const pinned = (core, command) => (core === null ? command : ['taskset', '-c', String(core), ...command]);

export async function startServer(implementation, redisPort, serverCore, serverEnv = {}) {
  const [command, ...commandArgs] = pinned(serverCore, implementation.command(redisPort));
  const server = spawn(command, commandArgs, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...implementation.env, ...serverEnv } });
  let serverErrors = '';
  server.stderr.on('data', chunk => (serverErrors += chunk));
  const { port, pid } = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${implementation.name} did not start: ${serverErrors}`)), 20_000);
    lines(server.stdout, line => {
      const match = line.match(/^READY (\d+) (\d+)/);
      if (match) {
        clearTimeout(timer);
        resolve({ port: Number(match[1]), pid: Number(match[2]) });
      }
    });
    server.once('exit', code => reject(new Error(`${implementation.name} exited (${code}): ${serverErrors}`)));
  });
  return { child: server, port, pid };
}
