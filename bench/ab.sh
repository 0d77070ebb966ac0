#!/usr/bin/env bash
# A/B of two builds of examples/loadbench_server on this machine, in one run: POST /auth/token (ES256) and a
# proxied GET /api/item, each with signed-in sessions, alternating old and new for AB_ROUNDS rounds so that both
# see the same machine. The servers are pinned to CPU 0; wrk (64 connections) and the proxy's upstream to CPU 1.
#
#   git worktree add /tmp/old <rev> && (cd /tmp/old && cargo build --release --locked --example loadbench_server)
#   cargo build --release --locked --example loadbench_server
#   bench/ab.sh /tmp/old/target/release/examples/loadbench_server target/release/examples/loadbench_server
#
# Prints one line per round, way and build (req/s, p99, CPU µs per request of the server, non-2xx answers), then
# the median new/old ratios. Knobs: AB_ROUNDS (3), AB_DURATION (5 s), AB_SESSIONS (64).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $# -eq 2 ]] || { echo "usage: bench/ab.sh OLD_BINARY NEW_BINARY" >&2; exit 2; }
for tool in wrk taskset; do
  command -v "$tool" >/dev/null 2>&1 || { echo "$tool is required (Debian: wrk, util-linux)" >&2; exit 1; }
done
declare -A BIN=([old]=$1 [new]=$2) URL=() PID=()
ROUNDS=${AB_ROUNDS:-3}
DURATION=${AB_DURATION:-5}
SESSIONS=${AB_SESSIONS:-64}
WORK=$(mktemp -d)
trap 'kill "${PID[@]}" 2>/dev/null; rm -rf "$WORK"' EXIT

# start NAME CPU BINARY ARGS...: starts a server and waits for its `url=` (and `signed_in=` when it signs in).
start() {
  local name=$1 cpu=$2 bin=$3
  shift 3
  taskset -c "$cpu" "$bin" "$@" >"$WORK/$name.out" 2>"$WORK/$name.log" &
  PID[$name]=$!
  for _ in $(seq 1 600); do grep -q '^signed_in=' "$WORK/$name.out" 2>/dev/null && break; sleep 0.2; done
  URL[$name]=$(sed -n 's/^url=//p' "$WORK/$name.out")
  [[ -n "${URL[$name]}" ]] || { echo "$name did not start; its log:" >&2; cat "$WORK/$name.log" >&2; exit 1; }
}
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

taskset -c 1 "$2" upstream >"$WORK/upstream.out" 2>"$WORK/upstream.log" &
PID[upstream]=$!
for _ in $(seq 1 100); do grep -q '^url=' "$WORK/upstream.out" 2>/dev/null && break; sleep 0.1; done
UPSTREAM=$(sed -n 's/^url=//p' "$WORK/upstream.out")
for build in old new; do
  start "$build-token" 0 "${BIN[$build]}" serve --sessions "$SESSIONS" --cookies "$WORK/$build-token.txt"
  start "$build-proxy" 0 "${BIN[$build]}" serve --sessions "$SESSIONS" --cookies "$WORK/$build-proxy.txt" \
    --proxy-upstream "$UPSTREAM"
done

TICK=$(getconf CLK_TCK)
for round in $(seq 1 "$ROUNDS"); do
  for build in old new; do
    for way in token proxy; do
      name=$build-$way
      before=$(cpu_ticks "${PID[$name]}")
      if [[ $way == token ]]; then
        COOKIES="$WORK/$name.txt" taskset -c 1 wrk -t1 -c64 -d"${DURATION}s" --latency -s bench/token.lua \
          "${URL[$name]}/auth/token" >"$WORK/wrk.txt"
      else
        COOKIES="$WORK/$name.txt" WRK_METHOD=GET taskset -c 1 wrk -t1 -c64 -d"${DURATION}s" --latency \
          -s bench/token.lua "${URL[$name]}/api/item" >"$WORK/wrk.txt"
      fi
      after=$(cpu_ticks "${PID[$name]}")
      awk -v round="$round" -v build="$build" -v way="$way" -v ticks=$((after - before)) -v hz="$TICK" '
        /requests in/ { n = $1 } /Requests\/sec/ { rps = $2 } $1 == "99%" { p99 = $2 } /Non-2xx/ { bad = $NF }
        END { printf "round %d %-5s %-3s req/s %8.0f p99 %8s CPU us/request %6.1f non-2xx %d\n",
              round, way, build, rps, p99, ticks / hz * 1e6 / n, bad }' "$WORK/wrk.txt" | tee -a "$WORK/rounds.txt"
    done
  done
done
# median FILE: the middle of a column of numbers.
median() { sort -n "$1" | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
for way in token proxy; do
  awk -v way="$way" '$3 == way { r[$2, $4] = $6; c[$2, $4] = $11; rounds[$2] = 1 }
    END { for (k in rounds) print r[k, "new"] / r[k, "old"] }' "$WORK/rounds.txt" >"$WORK/rate.txt"
  awk -v way="$way" '$3 == way { c[$2, $4] = $11; rounds[$2] = 1 }
    END { for (k in rounds) print c[k, "new"] / c[k, "old"] }' "$WORK/rounds.txt" >"$WORK/cpu.txt"
  printf "%s: new/old req/s %.2f, new/old CPU per request %.2f (medians of %d rounds)\n" \
    "$way" "$(median "$WORK/rate.txt")" "$(median "$WORK/cpu.txt")" "$ROUNDS"
done
