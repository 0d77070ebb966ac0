#!/usr/bin/env bash
# Instruction profile of the hot path with valgrind's callgrind (counts instructions, not time, so the
# figures repeat whatever else the machine is doing; this VM has no hardware counters for perf):
#
#   bench/profile.sh [ES256|EdDSA]     # default ES256
#   bench/profile.sh proxy             # proxy mode: GET through the route /api
#
# Starts examples/loadbench_server under callgrind with 8 signed-in sessions, drives
# GET /.well-known/jwks.json and then POST /auth/token with wrk (4 connections, 10 s each),
# dumps a profile after each and prints instructions per request plus the top of the token profile.
# With `proxy`: a local upstream (`loadbench_server upstream`, outside callgrind) answers a small JSON, the
# server proxies /api to it, and the profile is of GET /api/item with a session (X-CSRF: 1).
set -euo pipefail
cd "$(dirname "$0")/.."
ALG=${1:-ES256}
for tool in valgrind callgrind_annotate wrk; do
  command -v "$tool" >/dev/null 2>&1 || { echo "$tool is required (Debian: valgrind, wrk)" >&2; exit 1; }
done
cargo build --release --locked --quiet --example loadbench_server
BIN=target/release/examples/loadbench_server
WORK=$(mktemp -d)
VG=""
UP=""
trap '[[ -n "$VG" ]] && kill -TERM "$VG" 2>/dev/null; [[ -n "$UP" ]] && kill -TERM "$UP" 2>/dev/null; rm -rf "$WORK"' EXIT
EXTRA=()
if [[ "$ALG" == proxy ]]; then
  ALG=ES256
  "$BIN" upstream >"$WORK/up.txt" 2>"$WORK/up.log" &
  UP=$!
  for _ in $(seq 1 100); do grep -q '^url=' "$WORK/up.txt" 2>/dev/null && break; sleep 0.1; done
  EXTRA=(--proxy-upstream "$(sed -n 's/^url=//p' "$WORK/up.txt")")
  PROXY=1
fi
valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.%p" --dump-instr=no \
  "$BIN" serve --sessions 8 --cookies "$WORK/cookies.txt" --alg "$ALG" "${EXTRA[@]}" >"$WORK/out.txt" 2>"$WORK/log.txt" &
VG=$!
for _ in $(seq 1 600); do grep -q '^signed_in=' "$WORK/out.txt" 2>/dev/null && break; sleep 0.5; done
URL=$(sed -n 's/^url=//p' "$WORK/out.txt")
export COOKIES="$WORK/cookies.txt"
if [[ -n "${PROXY:-}" ]]; then
  WRK_METHOD=GET wrk -t1 -c4 -d3s -s bench/token.lua "$URL/api/item" >/dev/null
  callgrind_control -z "$VG" >/dev/null 2>&1
  WRK_METHOD=GET wrk -t1 -c4 -d10s -s bench/token.lua "$URL/api/item" >"$WORK/proxy.txt"
  callgrind_control -d proxy "$VG" >/dev/null 2>&1
  kill -TERM "$VG"; wait "$VG" 2>/dev/null || true; VG=""
  requests=$(awk '/requests in/ { print $1 }' "$WORK/proxy.txt")
  total=$(callgrind_annotate "$(ls "$WORK"/cg.*.1)" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
  echo "proxy: $requests requests, $((total / requests)) instructions per request"
  callgrind_annotate --inclusive=yes "$(ls "$WORK"/cg.*.1)" 2>/dev/null | grep -v '^$' | sed -n 20,110p
  [[ -n "${PROFILE_SAVE:-}" ]] && cp "$(ls "$WORK"/cg.*.1)" "$PROFILE_SAVE"
  exit 0
fi
wrk -t1 -c4 -d3s "$URL/.well-known/jwks.json" >/dev/null
callgrind_control -z "$VG" >/dev/null 2>&1
wrk -t1 -c4 -d10s "$URL/.well-known/jwks.json" >"$WORK/jwks.txt"
callgrind_control -d jwks "$VG" >/dev/null 2>&1
callgrind_control -z "$VG" >/dev/null 2>&1
wrk -t1 -c4 -d10s -s bench/token.lua "$URL/auth/token" >"$WORK/token.txt"
callgrind_control -d token "$VG" >/dev/null 2>&1
kill -TERM "$VG"; wait "$VG" 2>/dev/null || true; VG=""
per_request() {
  local requests total
  requests=$(awk '/requests in/ { print $1 }' "$WORK/$1.txt")
  total=$(callgrind_annotate "$(ls "$WORK"/cg.*."$2")" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
  echo "$1: $requests requests, $((total / requests)) instructions per request"
}
per_request jwks 1
per_request token 2
callgrind_annotate --inclusive=yes "$(ls "$WORK"/cg.*.2)" 2>/dev/null | grep -v '^$' | sed -n 20,110p
[[ -n "${PROFILE_SAVE:-}" ]] && cp "$(ls "$WORK"/cg.*.2)" "$PROFILE_SAVE"
