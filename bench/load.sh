#!/usr/bin/env bash
# Load benchmark of avemint's hot path, one command from a fresh clone:
#
#   bench/load.sh            # full run (about 3 minutes after the release build)
#   bench/load.sh --quick    # short sanity run (3 s per measurement, 10,000 stored sessions)
#
# 1. Hot path: avemint + the Ave emulator in one process pinned to CPU 0
#    (examples/loadbench_server.rs), N sessions signed in over HTTP; wrk pinned
#    to CPU 1 drives GET /.well-known/jwks.json, then POST /auth/token (X-CSRF: 1,
#    rotating session cookies), 64 connections each; then the same token load
#    against a server whose key is EdDSA. Prints requests/s, p50/p99, the
#    token/jwks ratio and the EdDSA/ES256 ratio.
# 2. Stored sessions: 100,000 sessions written through avemint::session::Sessions
#    into SQLite; cache-missing lookup latency (p50/p99); server time-to-ready and
#    resident memory at idle and after token requests over all stored sessions.
#
# 3. PostgreSQL (when LOAD_DATABASE_URL or AVEMINT_TEST_DATABASE_URL names one
#    and psql is installed): the same cache-missing lookup against PostgreSQL,
#    in a scratch schema that is dropped afterwards.
#
# Knobs (environment): LOAD_DURATION (s, default 15), LOAD_CONNECTIONS (64),
# LOAD_SESSIONS (64), LOAD_STORED_SESSIONS (100000), LOAD_PG_SESSIONS (20000),
# LOAD_DATABASE_URL, LOAD_SERVER_CPU (0), LOAD_CLIENT_CPU (1).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${LOAD_DURATION:-15}
CONNECTIONS=${LOAD_CONNECTIONS:-64}
SESSIONS=${LOAD_SESSIONS:-64}
STORED=${LOAD_STORED_SESSIONS:-100000}
PG_STORED=${LOAD_PG_SESSIONS:-20000}
PG_URL=${LOAD_DATABASE_URL:-${AVEMINT_TEST_DATABASE_URL:-}}
SERVER_CPU=${LOAD_SERVER_CPU:-0}
CLIENT_CPU=${LOAD_CLIENT_CPU:-1}
WARMUP=3
if [[ "${1:-}" == "--quick" ]]; then
  DURATION=3
  STORED=10000
  PG_STORED=2000
  WARMUP=1
fi

# --- tools -------------------------------------------------------------------
if ! command -v wrk >/dev/null 2>&1; then
  echo "== installing wrk (Debian package)"
  SUDO=""
  [[ "$(id -u)" != 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq wrk >/dev/null
fi
command -v taskset >/dev/null 2>&1 || { echo "taskset (util-linux) is required" >&2; exit 1; }

echo "== building avemint (release) and the benchmark server"
cargo build --release --locked --quiet --example loadbench_server
BIN=target/release/examples/loadbench_server

WORK=$(mktemp -d)
SERVER=""
PG_SCHEMA=""
stop_server() {
  if [[ -n "$SERVER" ]]; then
    kill -TERM "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
    SERVER=""
  fi
}
drop_pg_schema() {
  if [[ -n "$PG_SCHEMA" ]]; then
    psql -q "$PG_URL" -c "DROP SCHEMA IF EXISTS $PG_SCHEMA CASCADE" >/dev/null 2>&1 || true
    PG_SCHEMA=""
  fi
}
trap 'stop_server; drop_pg_schema; rm -rf "$WORK"' EXIT

# Starts the benchmark server pinned to SERVER_CPU; sets SERVER and URL.
start_server() {
  : >"$WORK/server.out"
  taskset -c "$SERVER_CPU" "$BIN" serve "$@" >"$WORK/server.out" 2>"$WORK/server.log" &
  SERVER=$!
  for _ in $(seq 1 600); do
    if grep -q '^signed_in=' "$WORK/server.out"; then
      URL=$(sed -n 's/^url=//p' "$WORK/server.out")
      return 0
    fi
    if ! kill -0 "$SERVER" 2>/dev/null; then
      echo "benchmark server exited:" >&2
      tail -20 "$WORK/server.log" >&2
      exit 1
    fi
    sleep 0.2
  done
  echo "benchmark server did not become ready in 120 s" >&2
  exit 1
}

value() { sed -n "s/^$1=//p" "$2"; }

# wrk latency ("812.00us", "1.20ms", "1.02s") to milliseconds.
to_ms() {
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
    else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
    else { printf "nan" } }'
}

# run_wrk NAME SECONDS URL [LUA]: runs wrk pinned to CLIENT_CPU; sets RPS, P50, P99.
run_wrk() {
  local name=$1 secs=$2 url=$3 script=${4:-}
  local args=(-t1 "-c$CONNECTIONS" "-d${secs}s" --latency)
  [[ -n "$script" ]] && args+=(-s "$script")
  taskset -c "$CLIENT_CPU" wrk "${args[@]}" "$url" >"$WORK/$name.txt"
  if grep -q 'Non-2xx' "$WORK/$name.txt"; then
    echo "!! $name: $(grep 'Non-2xx' "$WORK/$name.txt" | xargs) (every request must succeed)" >&2
    cat "$WORK/$name.txt" >&2
    exit 1
  fi
  RPS=$(awk '/^Requests\/sec/ { printf "%.0f", $2 }' "$WORK/$name.txt")
  P50=$(to_ms "$(awk '$1 == "50%" { print $2 }' "$WORK/$name.txt")")
  P99=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$WORK/$name.txt")")
}

rss_mib() { awk '/^VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

echo "== machine"
CPU_MODEL=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)
[[ -z "$CPU_MODEL" ]] && CPU_MODEL=$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)
echo "cpu: $CPU_MODEL ($(nproc) CPUs online)"
echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "server on CPU $SERVER_CPU, wrk on CPU $CLIENT_CPU, $CONNECTIONS connections, ${DURATION}s per measurement"

# --- 1. hot path -------------------------------------------------------------
echo "== hot path: signing in $SESSIONS sessions"
start_server --sessions "$SESSIONS" --cookies "$WORK/cookies.txt"
export COOKIES="$WORK/cookies.txt"
run_wrk warm-jwks "$WARMUP" "$URL/.well-known/jwks.json"
run_wrk warm-token "$WARMUP" "$URL/auth/token" bench/token.lua
run_wrk jwks "$DURATION" "$URL/.well-known/jwks.json"
JWKS_RPS=$RPS JWKS_P50=$P50 JWKS_P99=$P99
run_wrk token "$DURATION" "$URL/auth/token" bench/token.lua
TOKEN_RPS=$RPS TOKEN_P50=$P50 TOKEN_P99=$P99
HOT_RSS=$(rss_mib "$SERVER")
stop_server

echo "== EdDSA profile: signing in $SESSIONS sessions"
start_server --sessions "$SESSIONS" --cookies "$WORK/cookies-eddsa.txt" --alg EdDSA
export COOKIES="$WORK/cookies-eddsa.txt"
run_wrk warm-eddsa "$WARMUP" "$URL/auth/token" bench/token.lua
run_wrk eddsa "$DURATION" "$URL/auth/token" bench/token.lua
EDDSA_RPS=$RPS EDDSA_P50=$P50 EDDSA_P99=$P99
stop_server

RATIO=$(awk -v t="$TOKEN_RPS" -v j="$JWKS_RPS" 'BEGIN { printf "%.1f", 100 * t / j }')
ED_RATIO=$(awk -v e="$EDDSA_RPS" -v t="$TOKEN_RPS" 'BEGIN { printf "%.2f", e / t }')
printf '%-34s %10s %10s %10s\n' "endpoint" "req/s" "p50 ms" "p99 ms"
printf '%-34s %10s %10s %10s\n' "GET /.well-known/jwks.json" "$JWKS_RPS" "$JWKS_P50" "$JWKS_P99"
printf '%-34s %10s %10s %10s\n' "POST /auth/token (ES256)" "$TOKEN_RPS" "$TOKEN_P50" "$TOKEN_P99"
printf '%-34s %10s %10s %10s\n' "POST /auth/token (EdDSA)" "$EDDSA_RPS" "$EDDSA_P50" "$EDDSA_P99"
echo "token/jwks ratio: ${RATIO}% (target >= 35%); token p99 ${TOKEN_P99} ms (target <= 5 ms)"
echo "EdDSA/ES256 ratio: ${ED_RATIO}x (target >= 1.3x)"
echo "server RSS after the hot-path run: ${HOT_RSS} MiB"

# --- 2. stored sessions ------------------------------------------------------
echo "== $STORED stored sessions"
DB="$WORK/stored.db"
taskset -c "$SERVER_CPU" "$BIN" populate --db "$DB" --count "$STORED" --cookies "$WORK/stored.txt" >"$WORK/populate.out"
AT=$(value populated_at "$WORK/populate.out")
echo "populated in $(value populate_s "$WORK/populate.out") s; database $(du -m "$DB" | cut -f1) MiB"
taskset -c "$SERVER_CPU" "$BIN" lookup --db "$DB" --cookies "$WORK/stored.txt" --samples 20000 --at "$((AT + 1))" >"$WORK/lookup.out"
echo "session lookup missing the cache (SQLite read + AEAD open + decode), $(value lookups "$WORK/lookup.out") distinct sessions:"
echo "  p50 $(value lookup_p50_us "$WORK/lookup.out") us, p99 $(value lookup_p99_us "$WORK/lookup.out") us (target: p50 <= 300 us)"

start_server --db "$DB" --sessions 0
READY_MS=$(value ready_ms "$WORK/server.out")
HEALTHY_MS=$(value healthy_ms "$WORK/server.out")
IDLE_RSS=$(rss_mib "$SERVER")
export COOKIES="$WORK/stored.txt"
run_wrk stored-token "$DURATION" "$URL/auth/token" bench/token.lua
STORED_RPS=$RPS STORED_P50=$P50 STORED_P99=$P99
LOADED_RSS=$(rss_mib "$SERVER")
stop_server
echo "startup on $STORED sessions: serving after ${HEALTHY_MS} ms, ready (Ave discovery + JWKS + store) after ${READY_MS} ms (target <= 1000 ms)"
echo "resident memory: ${IDLE_RSS} MiB idle, ${LOADED_RSS} MiB after ${DURATION}s of token requests across all $STORED sessions (target <= 256 MiB)"
echo "POST /auth/token across $STORED sessions: $STORED_RPS req/s, p50 $STORED_P50 ms, p99 $STORED_P99 ms"

# --- 3. PostgreSQL ---------------------------------------------------------
if [[ -n "$PG_URL" ]] && command -v psql >/dev/null 2>&1; then
  echo "== $PG_STORED stored sessions in PostgreSQL"
  PG_SCHEMA="avemint_bench_$$"
  psql -q "$PG_URL" -c "CREATE SCHEMA $PG_SCHEMA" >/dev/null
  sep='?'; [[ "$PG_URL" == *\?* ]] && sep='&'
  PG_BENCH_URL="${PG_URL}${sep}options=-c%20search_path%3D${PG_SCHEMA}"
  taskset -c "$SERVER_CPU" "$BIN" populate --db "$PG_BENCH_URL" --count "$PG_STORED" --cookies "$WORK/pg.txt" >"$WORK/pg-populate.out"
  AT=$(value populated_at "$WORK/pg-populate.out")
  taskset -c "$SERVER_CPU" "$BIN" lookup --db "$PG_BENCH_URL" --cookies "$WORK/pg.txt" --samples 20000 --at "$((AT + 1))" >"$WORK/pg-lookup.out"
  echo "session lookup missing the cache (PostgreSQL on this machine, loopback), $(value lookups "$WORK/pg-lookup.out") distinct sessions:"
  echo "  p50 $(value lookup_p50_us "$WORK/pg-lookup.out") us, p99 $(value lookup_p99_us "$WORK/pg-lookup.out") us"
  drop_pg_schema
else
  echo "== PostgreSQL lookup skipped: set LOAD_DATABASE_URL (or AVEMINT_TEST_DATABASE_URL) and install psql to measure it"
fi
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
