#!/usr/bin/env bash
# Profiles one server under one load-generator scenario, the way the benchmark README's
# analyses were made: server pinned to core 0, load generator to core 1.
#
#   benchmark/profile.sh perf   <node|bun|ts|ref> <scenario> [loadgen flags...]
#   benchmark/profile.sh strace <node|bun|ts|ref> <scenario> [loadgen flags...]
#
# perf:   `perf record -g` of the server for PROFILE_SECONDS (default 5) after WARMUP_SECONDS
#         (default 4), into /tmp/profile.<impl>.data; prints samples per thread and per library.
# strace: `strace -c -f` of the server over the same window; prints system calls by count.
# `ts` needs a Redis: REDIS_PORT (default 6379). The window must fall inside the load: for
# `connect`, use WARMUP_SECONDS=0 and enough clients to last PROFILE_SECONDS. Examples:
#   benchmark/profile.sh perf node echo --clients 50 --duration 12 --warmup 2
#   WARMUP_SECONDS=0 benchmark/profile.sh strace node connect --clients 20000 --concurrency 100
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:?perf or strace}
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

out=$(mktemp)
taskset -c 0 "${server[@]}" >"$out" 2>&1 &
server_pid=$!
trap 'kill "$server_pid" 2>/dev/null || true; rm -f "$out"' EXIT
for _ in $(seq 200); do grep -q '^READY' "$out" && break; sleep 0.1; done
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
  *) echo "unknown mode $mode" >&2; exit 2 ;;
esac
wait "$loadgen_pid" || true
grep '^RESULT' /tmp/profile.loadgen.out | cut -c1-300 || echo "the load generator gave no result"
