#!/usr/bin/env bash
# Load benchmark of avemint's hot path, one command from a fresh clone:
#
#   bench/load.sh            # full run (about 7 minutes after the release build)
#   bench/load.sh --quick    # short sanity run (one round of 2 s, 10,000 stored sessions)
#   bench/load.sh --proxy    # only part 4, proxy mode (combines with --quick)
#
# 1. Hot path: two benchmark servers (examples/loadbench_server.rs: avemint + the
#    Ave emulator in one process), one signing ES256 and one EdDSA, both pinned to
#    CPU 0, N sessions signed in over HTTP on each; wrk pinned to CPU 1 drives
#    GET /.well-known/jwks.json, POST /auth/token (X-CSRF: 1, rotating session
#    cookies) on the ES256 server and the same on the EdDSA server, 64 connections,
#    alternating for LOAD_ROUNDS rounds. Each round also measures the issue's
#    reference points in a third process on CPU 0 (`loadbench_server reference`):
#    a trivial poem endpoint and a minimal hand-written ES256 signing endpoint; and, with node and npm, the
#    Node + jose peer (bench/peers/node-token: the same token job in Node), pinned to CPU 0 too.
#    Prints each round, then medians of requests/s, p50/p99, the token/jwks ratio,
#    the EdDSA/ES256 ratio and where avemint stands against the references.
# 2. Stored sessions: 100,000 sessions written through avemint::session::Sessions
#    into SQLite; cache-missing lookup latency (p50/p99); server time-to-ready and
#    resident memory at idle and after token requests over all stored sessions.
#
# 3. PostgreSQL (when LOAD_DATABASE_URL or AVEMINT_TEST_DATABASE_URL names one
#    and psql is installed): the same cache-missing lookup against PostgreSQL,
#    in a scratch schema that is dropped afterwards.
#
# 4. Proxy mode: a small JSON answer from a local upstream (`loadbench_server
#    upstream`, one thread, pinned to LOAD_UPSTREAM_CPU, default the client's CPU,
#    so that the proxy under test has CPU 0 to itself), fetched (a) straight from
#    the upstream, (b) through nginx as a plain reverse proxy (Debian's nginx,
#    installed with apt-get if missing; a generated config in a temp dir, one
#    worker, keep-alive upstream, no access log; pinned to SERVER_CPU) and (c)
#    through avemint's proxied route /api with signed-in sessions (rotating
#    session cookies, X-CSRF: 1; pinned to SERVER_CPU), alternating for
#    LOAD_ROUNDS rounds, and (d) through Caddy's reverse_proxy (Debian's caddy, GOMAXPROCS=1, pinned to
#    SERVER_CPU). Reports avemint/nginx and avemint/caddy req/s, CPU time per request, avemint's added p50/p99
#    over the direct fetch, and avemint's resident memory (VmRSS sampled every
#    0.1 s) while curl downloads LOAD_DOWNLOAD_BYTES (1 GiB) through the proxy.
#
# Knobs (environment): LOAD_DURATION (s per measurement and round, default 5),
# LOAD_ROUNDS (3), LOAD_STORED_SECONDS (15), LOAD_CONNECTIONS (64),
# LOAD_SESSIONS (64), LOAD_STORED_SESSIONS (100000), LOAD_PG_SESSIONS (20000),
# LOAD_DATABASE_URL, LOAD_SERVER_CPU (0), LOAD_CLIENT_CPU (1), LOAD_UPSTREAM_CPU
# (the client's), LOAD_NGINX_PORT (18089), LOAD_CADDY_PORT (18090), LOAD_DOWNLOAD_BYTES (1073741824).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${LOAD_DURATION:-5}
ROUNDS=${LOAD_ROUNDS:-3}
STORED_SECONDS=${LOAD_STORED_SECONDS:-15}
CONNECTIONS=${LOAD_CONNECTIONS:-64}
SESSIONS=${LOAD_SESSIONS:-64}
STORED=${LOAD_STORED_SESSIONS:-100000}
PG_STORED=${LOAD_PG_SESSIONS:-20000}
PG_URL=${LOAD_DATABASE_URL:-${AVEMINT_TEST_DATABASE_URL:-}}
SERVER_CPU=${LOAD_SERVER_CPU:-0}
CLIENT_CPU=${LOAD_CLIENT_CPU:-1}
UPSTREAM_CPU=${LOAD_UPSTREAM_CPU:-$CLIENT_CPU}
NGINX_PORT=${LOAD_NGINX_PORT:-18089}
CADDY_PORT=${LOAD_CADDY_PORT:-18090}
DOWNLOAD_BYTES=${LOAD_DOWNLOAD_BYTES:-1073741824}
WARMUP=3
PROXY_ONLY=0
for arg in "$@"; do
  case "$arg" in
    --quick)
      DURATION=2
      ROUNDS=1
      STORED_SECONDS=3
      STORED=10000
      PG_STORED=2000
      WARMUP=1
      ;;
    --proxy) PROXY_ONLY=1 ;;
    *) echo "usage: bench/load.sh [--quick] [--proxy]" >&2; exit 2 ;;
  esac
done

# --- tools -------------------------------------------------------------------
# apt_install COMMAND PACKAGE: installs Debian's PACKAGE when COMMAND is missing.
apt_install() {
  command -v "$1" >/dev/null 2>&1 && return 0
  [[ -x "/usr/sbin/$1" ]] && return 0
  echo "== installing $2 (Debian package)"
  local sudo=""
  [[ "$(id -u)" != 0 ]] && sudo="sudo"
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "$2" >/dev/null
}
apt_install wrk wrk
apt_install curl curl
command -v taskset >/dev/null 2>&1 || { echo "taskset (util-linux) is required" >&2; exit 1; }

echo "== building avemint (release) and the benchmark server"
cargo build --release --locked --quiet --example loadbench_server
BIN=target/release/examples/loadbench_server

WORK=$(mktemp -d)
declare -A PIDS=() URLS=()
PG_SCHEMA=""
# stop_server NAME
stop_server() {
  local pid=${PIDS[$1]:-}
  if [[ -n "$pid" ]]; then
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset "PIDS[$1]"
  fi
}
stop_all() { for name in "${!PIDS[@]}"; do stop_server "$name"; done; }
drop_pg_schema() {
  if [[ -n "$PG_SCHEMA" ]]; then
    psql -q "$PG_URL" -c "DROP SCHEMA IF EXISTS $PG_SCHEMA CASCADE" >/dev/null 2>&1 || true
    PG_SCHEMA=""
  fi
}
trap 'stop_all; drop_pg_schema; rm -rf "$WORK"' EXIT

# start_server NAME SUBCOMMAND ARGS...: starts a benchmark server pinned to SERVER_CPU (or START_CPU); sets
# PIDS[NAME] and URLS[NAME].
start_server() {
  local name=$1
  shift
  : >"$WORK/$name.out"
  taskset -c "${START_CPU:-$SERVER_CPU}" "${START_BIN:-$BIN}" "$@" >"$WORK/$name.out" 2>"$WORK/$name.log" &
  PIDS[$name]=$!
  for _ in $(seq 1 600); do
    if grep -q '^signed_in=' "$WORK/$name.out"; then
      URLS[$name]=$(sed -n 's/^url=//p' "$WORK/$name.out")
      return 0
    fi
    if ! kill -0 "${PIDS[$name]}" 2>/dev/null; then
      echo "benchmark server $name exited:" >&2
      tail -20 "$WORK/$name.log" >&2
      exit 1
    fi
    sleep 0.2
  done
  echo "benchmark server $name did not become ready in 120 s" >&2
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
  REQS=$(awk '/ requests in / { print $1 }' "$WORK/$name.txt")
  P50=$(to_ms "$(awk '$1 == "50%" { print $2 }' "$WORK/$name.txt")")
  P99=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$WORK/$name.txt")")
}

CLK_TCK=$(getconf CLK_TCK)
# cpu_ms PID...: CPU time (user + system, all threads) the processes have used so far, in ms.
cpu_ms() {
  local files=() pid
  for pid in "$@"; do files+=("/proc/$pid/stat"); done
  awk -v hz="$CLK_TCK" '{ t += $14 + $15 } END { printf "%d", t * 1000 / hz }' "${files[@]}"
}
# sys_ms PID...: the system (kernel) part of cpu_ms.
sys_ms() {
  local files=() pid
  for pid in "$@"; do files+=("/proc/$pid/stat"); done
  awk -v hz="$CLK_TCK" '{ t += $15 } END { printf "%d", t * 1000 / hz }' "${files[@]}"
}
# measure NAME SECONDS URL LUA PID...: run_wrk (LUA may be ""), plus CPU_US: the PIDs' CPU time per request, in us,
# and SYS_US: its kernel part.
measure() {
  local name=$1 secs=$2 url=$3 script=$4 before sys_before
  shift 4
  before=$(cpu_ms "$@")
  sys_before=$(sys_ms "$@")
  run_wrk "$name" "$secs" "$url" "$script"
  CPU_US=$(awk -v b="$before" -v a="$(cpu_ms "$@")" -v n="$REQS" 'BEGIN { printf "%.1f", (a - b) * 1000 / n }')
  SYS_US=$(awk -v b="$sys_before" -v a="$(sys_ms "$@")" -v n="$REQS" 'BEGIN { printf "%.1f", (a - b) * 1000 / n }')
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

# median COLUMN [FILE]: the median of a column of FILE (default rounds.txt; an expression of $N columns for ratios).
median() { awk "{ print $1 }" "${2:-$WORK/rounds.txt}" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# Parts 1 to 3 (not with --proxy).
if ((PROXY_ONLY == 0)); then
# --- 1. hot path -------------------------------------------------------------
# Both servers run side by side on SERVER_CPU (the idle one costs nothing), and the
# three measurements alternate for ROUNDS rounds, so that drift in the machine's
# speed during the run hits all of them alike. Figures are medians over the rounds;
# each ratio is taken within a round, and its median is reported.
echo "== hot path: signing in $SESSIONS sessions on an ES256 and on an EdDSA server"
start_server es256 serve --sessions "$SESSIONS" --cookies "$WORK/cookies-es256.txt"
start_server eddsa serve --sessions "$SESSIONS" --cookies "$WORK/cookies-eddsa.txt" --alg EdDSA
start_server reference reference
ES_URL=${URLS[es256]} ED_URL=${URLS[eddsa]} REF_URL=${URLS[reference]}
# The Node + jose peer (bench/peers/node-token): the same token job in Node, its dependency installed with npm.
NODE_URL=""
if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 &&
  (cd bench/peers/node-token && npm install --no-audit --no-fund --silent >/dev/null 2>&1); then
  START_BIN=node start_server nodepeer bench/peers/node-token/server.mjs --sessions "$SESSIONS" --cookies "$WORK/cookies-node.txt"
  NODE_URL=${URLS[nodepeer]}
  COOKIES="$WORK/cookies-node.txt" run_wrk warm-node "$WARMUP" "$NODE_URL/auth/token" bench/token.lua
else
  echo "(node and npm not found: the Node + jose peer is skipped)"
fi
run_wrk warm-jwks "$WARMUP" "$ES_URL/.well-known/jwks.json"
COOKIES="$WORK/cookies-es256.txt" run_wrk warm-token "$WARMUP" "$ES_URL/auth/token" bench/token.lua
COOKIES="$WORK/cookies-eddsa.txt" run_wrk warm-eddsa "$WARMUP" "$ED_URL/auth/token" bench/token.lua
run_wrk warm-trivial "$WARMUP" "$REF_URL/trivial"
run_wrk warm-sign "$WARMUP" "$REF_URL/sign" bench/post.lua
: >"$WORK/rounds.txt"
for round in $(seq 1 "$ROUNDS"); do
  run_wrk "jwks-$round" "$DURATION" "$ES_URL/.well-known/jwks.json"
  JR=$RPS JP50=$P50 JP99=$P99
  COOKIES="$WORK/cookies-es256.txt" run_wrk "token-$round" "$DURATION" "$ES_URL/auth/token" bench/token.lua
  TR=$RPS TP50=$P50 TP99=$P99
  COOKIES="$WORK/cookies-eddsa.txt" run_wrk "eddsa-$round" "$DURATION" "$ED_URL/auth/token" bench/token.lua
  ER=$RPS EP50=$P50 EP99=$P99
  run_wrk "trivial-$round" "$DURATION" "$REF_URL/trivial"
  RT=$RPS
  run_wrk "sign-$round" "$DURATION" "$REF_URL/sign" bench/post.lua
  RS=$RPS
  NR=0 NP99=0
  if [[ -n "$NODE_URL" ]]; then
    COOKIES="$WORK/cookies-node.txt" run_wrk "node-$round" "$DURATION" "$NODE_URL/auth/token" bench/token.lua
    NR=$RPS NP99=$P99
    awk -v r="$round" -v t="$TR" -v n="$NR" -v np="$NP99" 'BEGIN {
      printf "round %d: Node + jose peer %d req/s (p99 %s ms); avemint token (ES256) %.2fx the peer\n", r, n, np, t / n }'
  fi
  echo "$round $JR $JP50 $JP99 $TR $TP50 $TP99 $ER $EP50 $EP99 $RT $RS $NR $NP99" >>"$WORK/rounds.txt"
  awk -v r="$round" -v j="$JR" -v t="$TR" -v e="$ER" -v tp="$TP99" 'BEGIN {
    printf "round %d: jwks %d req/s, token ES256 %d req/s (p99 %s ms), EdDSA %d req/s; token/jwks %.1f%%, EdDSA/ES256 %.2fx\n",
      r, j, t, tp, e, 100 * t / j, e / t }'
  awk -v r="$round" -v j="$JR" -v t="$TR" -v rt="$RT" -v rs="$RS" 'BEGIN {
    printf "round %d: reference: trivial poem endpoint %d req/s, minimal ES256 signing endpoint %d req/s (%.1f%% of trivial); avemint jwks %.0f%% of trivial, token %.0f%% of minimal signer\n",
      r, rt, rs, 100 * rs / rt, 100 * j / rt, 100 * t / rs }'
done
HOT_RSS=$(rss_mib "${PIDS[es256]}")
stop_all

JWKS_RPS=$(median '$2') JWKS_P50=$(median '$3') JWKS_P99=$(median '$4')
TOKEN_RPS=$(median '$5') TOKEN_P50=$(median '$6') TOKEN_P99=$(median '$7')
EDDSA_RPS=$(median '$8') EDDSA_P50=$(median '$9') EDDSA_P99=$(median '$10')
RATIO=$(median '100 * $5 / $2' | awk '{ printf "%.1f", $1 }')
ED_RATIO=$(median '$8 / $5' | awk '{ printf "%.2f", $1 }')
TRIVIAL_RPS=$(median '$11') SIGN_RPS=$(median '$12')
REF_RATIO=$(median '100 * $12 / $11' | awk '{ printf "%.1f", $1 }')
TOKEN_OF_SIGN=$(median '100 * $5 / $12' | awk '{ printf "%.0f", $1 }')
JWKS_OF_TRIVIAL=$(median '100 * $2 / $11' | awk '{ printf "%.0f", $1 }')
echo "medians over $ROUNDS rounds of ${DURATION} s per endpoint:"
printf '%-34s %10s %10s %10s\n' "endpoint" "req/s" "p50 ms" "p99 ms"
printf '%-34s %10s %10s %10s\n' "GET /.well-known/jwks.json" "$JWKS_RPS" "$JWKS_P50" "$JWKS_P99"
printf '%-34s %10s %10s %10s\n' "POST /auth/token (ES256)" "$TOKEN_RPS" "$TOKEN_P50" "$TOKEN_P99"
printf '%-34s %10s %10s %10s\n' "POST /auth/token (EdDSA)" "$EDDSA_RPS" "$EDDSA_P50" "$EDDSA_P99"
echo "token/jwks ratio: ${RATIO}% (target >= 35%); token p99 ${TOKEN_P99} ms (target <= 5 ms)"
echo "EdDSA/ES256 ratio: ${ED_RATIO}x (target >= 1.3x)"
printf '%-34s %10s\n' "reference: GET /trivial (poem)" "$TRIVIAL_RPS"
printf '%-34s %10s\n' "reference: POST /sign (ES256)" "$SIGN_RPS"
echo "reference: minimal signer / trivial endpoint: ${REF_RATIO}%; avemint jwks = ${JWKS_OF_TRIVIAL}% of the trivial endpoint, avemint token (ES256) = ${TOKEN_OF_SIGN}% of the minimal signer"
if [[ -n "$NODE_URL" ]]; then
  printf '%-34s %10s %10s %10s\n' "peer: Node + jose POST /auth/token" "$(median '$13')" "" "$(median '$14')"
  echo "avemint token (ES256) / Node + jose peer: $(median '$5 / $13' | awk '{ printf "%.2f", $1 }')x (target >= 2.5x; rounds: $(awk '{ printf "%.2f ", $5 / $13 }' "$WORK/rounds.txt"))"
fi
echo "avemint token (ES256) / minimal signer: $(median '$5 / $12' | awk '{ printf "%.2f", $1 }')x (target >= 0.95x); token p99 ${TOKEN_P99} ms (target <= 5 ms)"
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

start_server stored serve --db "$DB" --sessions 0
READY_MS=$(value ready_ms "$WORK/stored.out")
HEALTHY_MS=$(value healthy_ms "$WORK/stored.out")
IDLE_RSS=$(rss_mib "${PIDS[stored]}")
COOKIES="$WORK/stored.txt" run_wrk stored-token "$STORED_SECONDS" "${URLS[stored]}/auth/token" bench/token.lua
STORED_RPS=$RPS STORED_P50=$P50 STORED_P99=$P99
LOADED_RSS=$(rss_mib "${PIDS[stored]}")
stop_server stored
echo "startup on $STORED sessions: serving after ${HEALTHY_MS} ms, ready (Ave discovery + JWKS + store) after ${READY_MS} ms (target <= 1000 ms)"
echo "resident memory: ${IDLE_RSS} MiB idle, ${LOADED_RSS} MiB after ${STORED_SECONDS}s of token requests across all $STORED sessions (target <= 256 MiB)"
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
fi # parts 1 to 3

# --- 4. proxy mode -------------------------------------------------------------
apt_install nginx nginx
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
echo "== proxy mode: upstream on CPU $UPSTREAM_CPU; nginx and avemint on CPU $SERVER_CPU; $SESSIONS sessions"
START_CPU=$UPSTREAM_CPU start_server upstream upstream
UP_URL=${URLS[upstream]}
start_server proxy serve --sessions "$SESSIONS" --cookies "$WORK/cookies-proxy.txt" --proxy-upstream "$UP_URL"
AV_URL=${URLS[proxy]}

# nginx as a plain reverse proxy: one worker, keep-alive connections to the upstream, no access log.
mkdir -p "$WORK/nginx/logs"
NGINX_USER=""
[[ "$(id -u)" == 0 ]] && NGINX_USER="user root;"
cat >"$WORK/nginx/nginx.conf" <<CONF
$NGINX_USER
daemon off;
worker_processes 1;
error_log $WORK/nginx/logs/error.log warn;
pid $WORK/nginx/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx/client_body;
  proxy_temp_path $WORK/nginx/proxy;
  fastcgi_temp_path $WORK/nginx/fastcgi;
  uwsgi_temp_path $WORK/nginx/uwsgi;
  scgi_temp_path $WORK/nginx/scgi;
  upstream backend {
    server ${UP_URL#http://};
    keepalive 64;
  }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
CONF
taskset -c "$SERVER_CPU" "$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" 2>"$WORK/nginx/stderr.log" &
PIDS[nginx]=$!
NG_URL="http://127.0.0.1:$NGINX_PORT"

# Caddy's reverse_proxy (Go's HTTP stack, the one oauth2-proxy is built on) on one core: GOMAXPROCS=1, no admin
# endpoint, no automatic HTTPS, no access log (Caddy's default).
CADDY_URL=""
if apt_install caddy caddy 2>/dev/null && command -v caddy >/dev/null 2>&1; then
  mkdir -p "$WORK/caddy"
  cat >"$WORK/caddy/Caddyfile" <<CONF
{
  admin off
  auto_https off
}
http://127.0.0.1:$CADDY_PORT {
  reverse_proxy ${UP_URL#http://}
}
CONF
  GOMAXPROCS=1 XDG_DATA_HOME="$WORK/caddy" XDG_CONFIG_HOME="$WORK/caddy" taskset -c "$SERVER_CPU" \
    caddy run --config "$WORK/caddy/Caddyfile" --adapter caddyfile >"$WORK/caddy/stdout.log" 2>"$WORK/caddy/stderr.log" &
  PIDS[caddy]=$!
  CADDY_URL="http://127.0.0.1:$CADDY_PORT"
else
  echo "(Debian's caddy could not be installed: the Caddy reference is skipped)"
fi
COOKIE=$(head -1 "$WORK/cookies-proxy.txt")
for _ in $(seq 1 100); do
  curl -fso /dev/null "$NG_URL/item" && break
  sleep 0.1
done
# The three ways answer the same body (avemint's with the session; without it, 401).
DIRECT_BODY=$(curl -fsS "$UP_URL/item")
NGINX_BODY=$(curl -fsS "$NG_URL/item") || { echo "nginx did not answer:" >&2; cat "$WORK/nginx/stderr.log" "$WORK/nginx/logs/error.log" >&2; exit 1; }
AVEMINT_BODY=$(curl -fsS -H "Cookie: __Host-avemint=$COOKIE" -H 'X-CSRF: 1' "$AV_URL/api/item")
if [[ -n "$CADDY_URL" ]]; then
  for _ in $(seq 1 100); do
    curl -fso /dev/null "$CADDY_URL/item" && break
    sleep 0.1
  done
  CADDY_BODY=$(curl -fsS "$CADDY_URL/item") || { echo "caddy did not answer:" >&2; cat "$WORK/caddy/stderr.log" >&2; exit 1; }
  [[ "$CADDY_BODY" == "$DIRECT_BODY" ]] || { echo "caddy answers '$CADDY_BODY', not '$DIRECT_BODY'" >&2; exit 1; }
fi
if [[ "$NGINX_BODY" != "$DIRECT_BODY" || "$AVEMINT_BODY" != "$DIRECT_BODY" ]]; then
  echo "the proxies answer differently: direct '$DIRECT_BODY', nginx '$NGINX_BODY', avemint '$AVEMINT_BODY'" >&2
  exit 1
fi
ANON=$(curl -s -o /dev/null -w '%{http_code}' -H 'X-CSRF: 1' "$AV_URL/api/item")
[[ "$ANON" == 401 ]] || { echo "avemint answered $ANON without a session, not 401" >&2; exit 1; }

run_wrk warm-direct "$WARMUP" "$UP_URL/item"
run_wrk warm-nginx "$WARMUP" "$NG_URL/item"
COOKIES="$WORK/cookies-proxy.txt" WRK_METHOD=GET run_wrk warm-avemint "$WARMUP" "$AV_URL/api/item" bench/token.lua
[[ -n "$CADDY_URL" ]] && run_wrk warm-caddy "$WARMUP" "$CADDY_URL/item"
: >"$WORK/proxy-rounds.txt"
NGINX_PIDS=("${PIDS[nginx]}" $(pgrep -P "${PIDS[nginx]}"))
for round in $(seq 1 "$ROUNDS"); do
  measure "direct-$round" "$DURATION" "$UP_URL/item" "" "${PIDS[upstream]}"
  DR=$RPS DP50=$P50 DP99=$P99 DC=$CPU_US DS=$SYS_US
  measure "nginx-$round" "$DURATION" "$NG_URL/item" "" "${NGINX_PIDS[@]}"
  NR=$RPS NP50=$P50 NP99=$P99 NC=$CPU_US NS=$SYS_US
  COOKIES="$WORK/cookies-proxy.txt" WRK_METHOD=GET measure "avemint-$round" "$DURATION" "$AV_URL/api/item" bench/token.lua "${PIDS[proxy]}"
  AR=$RPS AP50=$P50 AP99=$P99 AC=$CPU_US AS=$SYS_US
  CR=0 CP50=0 CP99=0 CC=0 CS=0
  if [[ -n "$CADDY_URL" ]]; then
    measure "caddy-$round" "$DURATION" "$CADDY_URL/item" "" "${PIDS[caddy]}"
    CR=$RPS CP50=$P50 CP99=$P99 CC=$CPU_US CS=$SYS_US
    awk -v r="$round" -v c="$CR" -v cp="$CP99" -v cc="$CC" -v a="$AR" 'BEGIN {
      printf "round %d: caddy %d req/s (p99 %s ms, %s us CPU/request); avemint/caddy %.2f\n", r, c, cp, cc, a / c }'
  fi
  echo "$round $DR $DP50 $DP99 $NR $NP50 $NP99 $AR $AP50 $AP99 $DC $NC $AC $CR $CP50 $CP99 $CC $DS $NS $AS $CS" >>"$WORK/proxy-rounds.txt"
  awk -v r="$round" -v d="$DR" -v n="$NR" -v a="$AR" -v np="$NP99" -v ap="$AP99" -v dp="$DP99" -v ap50="$AP50" -v dp50="$DP50" -v nc="$NC" -v ac="$AC" 'BEGIN {
    printf "round %d: direct %d req/s, nginx %d req/s (p99 %s ms, %s us CPU/request), avemint %d req/s (p99 %s ms, %s us CPU/request); avemint/nginx %.2f (by CPU time %.2f); avemint adds p50 %.2f ms, p99 %.2f ms over direct (p99 %s ms)\n",
      r, d, n, np, nc, a, ap, ac, a / n, nc / ac, ap50 - dp50, ap - dp, dp }'
done
PROXY_IDLE_RSS=$(rss_mib "${PIDS[proxy]}")
stop_server nginx
stop_server caddy

# A streamed download through avemint: curl (on the client's CPU) to /dev/null, VmRSS sampled every 0.1 s.
: >"$WORK/rss.txt"
taskset -c "$CLIENT_CPU" curl -sS -o /dev/null -w '%{http_code} %{size_download} %{time_total}\n' \
  -H "Cookie: __Host-avemint=$COOKIE" -H 'X-CSRF: 1' "$AV_URL/api/big?bytes=$DOWNLOAD_BYTES" >"$WORK/download.txt" &
CURL_PID=$!
while kill -0 "$CURL_PID" 2>/dev/null; do
  rss_mib "${PIDS[proxy]}" >>"$WORK/rss.txt"
  echo >>"$WORK/rss.txt"
  sleep 0.1
done
wait "$CURL_PID"
read -r DL_STATUS DL_BYTES DL_SECONDS <"$WORK/download.txt"
PROXY_AFTER_RSS=$(rss_mib "${PIDS[proxy]}")
stop_all
[[ "$DL_STATUS" == 200 && "$DL_BYTES" == "$DOWNLOAD_BYTES" ]] || { echo "the download through avemint failed: status $DL_STATUS, $DL_BYTES of $DOWNLOAD_BYTES bytes" >&2; exit 1; }
RSS_MAX=$(sort -g "$WORK/rss.txt" | tail -1)
RSS_SAMPLES=$(grep -c . "$WORK/rss.txt")

P=$WORK/proxy-rounds.txt
echo "medians over $ROUNDS rounds of ${DURATION} s, small JSON answer, $CONNECTIONS connections:"
printf '%-34s %10s %10s %10s %14s %14s\n' "way" "req/s" "p50 ms" "p99 ms" "CPU us/req" "of it kernel"
printf '%-34s %10s %10s %10s %14s %14s\n' "(a) direct to the upstream" "$(median '$2' "$P")" "$(median '$3' "$P")" "$(median '$4' "$P")" "$(median '$11' "$P")" "$(median '$18' "$P")"
printf '%-34s %10s %10s %10s %14s %14s\n' "(b) nginx reverse proxy" "$(median '$5' "$P")" "$(median '$6' "$P")" "$(median '$7' "$P")" "$(median '$12' "$P")" "$(median '$19' "$P")"
printf '%-34s %10s %10s %10s %14s %14s\n' "(c) avemint proxy mode" "$(median '$8' "$P")" "$(median '$9' "$P")" "$(median '$10' "$P")" "$(median '$13' "$P")" "$(median '$20' "$P")"
if [[ -n "$CADDY_URL" ]]; then
  printf '%-34s %10s %10s %10s %14s %14s\n' "(d) caddy reverse_proxy (1 core)" "$(median '$14' "$P")" "$(median '$15' "$P")" "$(median '$16' "$P")" "$(median '$17' "$P")" "$(median '$21' "$P")"
fi
echo "(CPU us/req: CPU time of the server under test, all its threads and processes, per request: for (a) the upstream;"
echo " of it kernel: the system part, the sockets' work, which any proxy pays for two connections per request)"
echo "avemint/nginx: $(median '$8 / $5' "$P" | awk '{ printf "%.2f", $1 }') (target >= 0.8; per round: $(awk '{ printf "%s%.2f", (NR > 1 ? ", " : ""), $8 / $5 }' "$P"))"
echo "avemint p99 / nginx p99: $(median '$10 / $7' "$P" | awk '{ printf "%.2f", $1 }') (target <= 1.5)"
if [[ -n "$CADDY_URL" ]]; then
  echo "avemint/caddy: $(median '$8 / $14' "$P" | awk '{ printf "%.2f", $1 }') (target >= 1.0; per round: $(awk '{ printf "%s%.2f", (NR > 1 ? ", " : ""), $8 / $14 }' "$P")); by CPU time per request: $(median '$17 / $13' "$P" | awk '{ printf "%.2f", $1 }')"
fi
echo "avemint/nginx by CPU time per request (requests per CPU-second): $(median '$12 / $13' "$P" | awk '{ printf "%.2f", $1 }') (per round: $(awk '{ printf "%s%.2f", (NR > 1 ? ", " : ""), $12 / $13 }' "$P"))"
echo "avemint adds over the direct fetch: p50 $(median '$9 - $3' "$P" | awk '{ printf "%.2f", $1 }') ms, p99 $(median '$10 - $4' "$P" | awk '{ printf "%.2f", $1 }') ms (target p99 <= 2 ms)"
echo "nginx adds over the direct fetch: p50 $(median '$6 - $3' "$P" | awk '{ printf "%.2f", $1 }') ms, p99 $(median '$7 - $4' "$P" | awk '{ printf "%.2f", $1 }') ms"
echo "avemint RSS: ${PROXY_IDLE_RSS} MiB after the rounds; during a $DL_BYTES-byte download through the proxy (${DL_SECONDS} s): max ${RSS_MAX} MiB over $RSS_SAMPLES samples, ${PROXY_AFTER_RSS} MiB after"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
