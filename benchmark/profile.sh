#!/usr/bin/env bash
# Profiles one server under one load-generator scenario, the way the benchmark README's
# analyses were made: server pinned to core 0, load generator to core 1.
#
#   benchmark/profile.sh perf      <node|bun|ts|ref> <scenario> [loadgen flags...]
#   benchmark/profile.sh strace    <node|bun|ts|ref> <scenario> [loadgen flags...]
#   benchmark/profile.sh callgrind <node|bun|ts|ref> <scenario> [loadgen flags...]
#
# perf:   `perf record -g` of the server for PROFILE_SECONDS (default 5) after WARMUP_SECONDS
#         (default 4), into /tmp/profile.<impl>.data; prints samples per thread and per library.
# strace: `strace -c -f` of the server over the same window; prints system calls by count.
# callgrind: the server under valgrind's callgrind, counters zeroed after the warm-up and
#         dumped after the window, into /tmp/profile.<impl>.callgrind.<pid>.1; prints the
#         instructions per unit of work, a unit being one call of the functions UNIT matches
#         (a regular expression; default: this package's reply call, one per echo round
#         trip), and this package's functions per unit. Instruction counts repeat from run
#         to run whatever else the machine does, which time on a shared machine does not.
#         The server runs about 50 times slower: give it time, e.g.
#         WARMUP_SECONDS=20 PROFILE_SECONDS=10 benchmark/profile.sh callgrind node echo --clients 50 --duration 35
# `ts` needs a Redis: REDIS_PORT (default 6379). The window must fall inside the load: for
# `connect`, use WARMUP_SECONDS=0 and enough clients to last PROFILE_SECONDS. Examples:
#   benchmark/profile.sh perf node echo --clients 50 --duration 12 --warmup 2
#   WARMUP_SECONDS=0 benchmark/profile.sh strace node connect --clients 20000 --concurrency 100
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:?perf, strace or callgrind}
impl=${2:?node, bun, ts or ref}
scenario=${3:?a loadgen scenario}
shift 3
bun=node_modules/bun/bin/bun.exe
case $impl in
  node) server=(node benchmark/servers/native.js) ;;
  bun) server=("$bun" benchmark/servers/native.js) ;;
  ts) server=("$bun" benchmark/servers/ts-helper.js "${REDIS_PORT:-6379}") ;;
  ref) server=(benchmark/loadgen/target/release/reference) ;;
  *) echo "unknown implementation $impl" >&2; exit 2 ;;
esac
[ -x benchmark/loadgen/target/release/loadgen ] || (cd benchmark/loadgen && cargo build --release)

if [ "$mode" = callgrind ]; then
  rm -f /tmp/profile."$impl".callgrind.*
  # Bun writes its JIT's code into memory valgrind must watch.
  server=(valgrind --tool=callgrind --smc-check=all-non-file \
    --callgrind-out-file="/tmp/profile.$impl.callgrind.%p" "${server[@]}")
fi
out=$(mktemp)
taskset -c 0 "${server[@]}" >"$out" 2>&1 &
server_pid=$!
trap 'kill "$server_pid" 2>/dev/null || true; rm -f "$out"' EXIT
for _ in $(seq 1200); do grep -q '^READY' "$out" && break; sleep 0.1; done
read -r _ port pid < <(grep '^READY' "$out")

# Fed by this script's end, so a connect scenario's idle phase ends when the window does.
taskset -c 1 benchmark/loadgen/target/release/loadgen "$scenario" --url "ws://127.0.0.1:$port/ws" "$@" \
  < <(sleep $(( ${WARMUP_SECONDS:-4} + ${PROFILE_SECONDS:-5} + 1 )); echo go) >/tmp/profile.loadgen.out 2>&1 &
loadgen_pid=$!
sleep "${WARMUP_SECONDS:-4}"
case $mode in
  perf)
    perf record -F 2000 -g -p "$pid" -o "/tmp/profile.$impl.data" -- sleep "${PROFILE_SECONDS:-5}" >/dev/null 2>&1
    echo "samples per thread:"
    perf script -i "/tmp/profile.$impl.data" -F comm 2>/dev/null | sort | uniq -c | sort -rn
    perf report -i "/tmp/profile.$impl.data" --no-children --sort dso -g none 2>/dev/null | grep '%' | head -8
    echo "details: perf report -i /tmp/profile.$impl.data --no-children --sort dso,sym -g none"
    ;;
  strace)
    timeout -s INT "${PROFILE_SECONDS:-5}" strace -c -f -p "$pid" -o "/tmp/profile.$impl.strace" || true
    grep -v '^-' "/tmp/profile.$impl.strace" | head -20 || echo "no system calls in the window"
    ;;
  callgrind)
    callgrind_control -z "$pid" >/dev/null
    sleep "${PROFILE_SECONDS:-5}"
    callgrind_control -d "$pid" >/dev/null
    dump=$(ls /tmp/profile."$impl".callgrind.*.1)
    python3 - "$dump" "${UNIT:-raw_calls::send_to_(client|sender)\$}" <<'PY'
import re, subprocess, sys
dump, unit = sys.argv[1], re.compile(sys.argv[2])
# Calls of the unit's functions: the `calls=` lines under a `cfn=` that names one.
names, callee, units = {}, None, 0
for line in open(dump, errors='replace'):
    named = re.match(r'(c?fn)=\((\d+)\)(?: (.*))?', line)
    if named:
        kind, key, name = named.groups()
        if name:
            names[key] = name.strip()
        if kind == 'cfn':
            callee = names.get(key)
    elif line.startswith('calls=') and callee and unit.search(callee):
        units += int(line.split('=')[1].split()[0])
report = subprocess.run(['callgrind_annotate', '--threshold=100', '--inclusive=yes', dump],
                        capture_output=True, text=True).stdout
total = next(int(l.split()[0].replace(',', '')) for l in report.splitlines() if 'PROGRAM TOTALS' in l)
print(f'{dump}: {units} units, {total // max(units, 1)} instructions per unit (whole process)')
print("this package's functions, inclusive instructions per unit:")
for line in report.splitlines():
    if 'ignis_native_ws::' in line:
        count = int(line.split()[0].replace(',', '')) // max(units, 1)
        if count >= 50:
            name = re.sub(r' \[.*', '', line.split('???:')[-1])
            print(f'{count:8d}  {name}')
PY
    ;;
  *) echo "unknown mode $mode" >&2; exit 2 ;;
esac
wait "$loadgen_pid" || true
grep '^RESULT' /tmp/profile.loadgen.out | cut -c1-300 || echo "the load generator gave no result"
