#!/usr/bin/env bash
# Introspection throughput: requests/s of POST /oauth/introspect (active tokens
# of N live sessions, answered through the session cache) against
# GET /.well-known/jwks.json, measured in the same run on the same server.
#
#   bench/introspect.sh               # release build (what to report)
#   INTROSPECT_PROFILE=dev bench/introspect.sh   # the debug build, for a quick look
#
# Knobs: INTROSPECT_DURATION (s per measurement, 5), INTROSPECT_CONNECTIONS (64),
# INTROSPECT_SESSIONS (32: one user, below the default per-user cap of 50), LOAD_SERVER_CPU (0), LOAD_CLIENT_CPU (1).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${INTROSPECT_DURATION:-5}
CONNECTIONS=${INTROSPECT_CONNECTIONS:-64}
SESSIONS=${INTROSPECT_SESSIONS:-32}
SERVER_CPU=${LOAD_SERVER_CPU:-0}
CLIENT_CPU=${LOAD_CLIENT_CPU:-1}
PROFILE=${INTROSPECT_PROFILE:-release}
SECRET="bench-introspection-secret-0123456789abcdef"

command -v wrk >/dev/null 2>&1 || { echo "wrk is required (apt-get install wrk)" >&2; exit 1; }
if [[ "$PROFILE" == release ]]; then
  cargo build --release --locked --quiet --example loadbench_server
  BIN=target/release/examples/loadbench_server
else
  cargo build --locked --quiet --example loadbench_server
  BIN=target/debug/examples/loadbench_server
fi

WORK=$(mktemp -d)
SERVER=""
cleanup() {
  [[ -n "$SERVER" ]] && kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

taskset -c "$SERVER_CPU" "$BIN" serve --sessions "$SESSIONS" --cookies "$WORK/cookies" \
  --introspection-secret "$SECRET" >"$WORK/out" 2>"$WORK/err" &
SERVER=$!
for _ in $(seq 1 600); do grep -q '^signed_in=' "$WORK/out" 2>/dev/null && break; sleep 0.1; done
URL=$(sed -n 's/^url=//p' "$WORK/out")
[[ -n "$URL" ]] || { cat "$WORK/err" >&2; exit 1; }

# One app JWT per session (the profile's default ttl, 300 s, outlasts the run).
while read -r cookie; do
  { curl -fsS -X POST -H 'X-CSRF: 1' -H "Cookie: __Host-avemint=$cookie" "$URL/auth/token"; echo; } |
    sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p'
done <"$WORK/cookies" >"$WORK/tokens"
BASIC="Basic $(printf 'default:%s' "$SECRET" | base64 -w0)"
first=$(head -1 "$WORK/tokens")
curl -fsS -H "Authorization: $BASIC" --data-urlencode "token=$first" "$URL/oauth/introspect" | grep -q '"active":true' ||
  { echo "introspection did not answer active" >&2; exit 1; }

rps() { sed -n 's/^Requests\/sec: *//p'; }
run() { taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "$@"; }
run -d1s "$URL/.well-known/jwks.json" >/dev/null
JWKS=$(run "$URL/.well-known/jwks.json" | rps)
INTRO=$(TOKENS="$WORK/tokens" BASIC="$BASIC" run -s bench/introspect.lua "$URL" | rps)
echo "profile=$PROFILE sessions=$SESSIONS connections=$CONNECTIONS duration=${DURATION}s"
echo "jwks_rps=$JWKS"
echo "introspect_rps=$INTRO"
awk -v a="$INTRO" -v b="$JWKS" 'BEGIN { printf "introspect_over_jwks=%.2f\n", a / b }'
