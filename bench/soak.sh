#!/usr/bin/env bash
# Soak benchmark under faults (issue 12), one command from a fresh clone:
#
#   bench/soak.sh                    # 10 minutes, release build
#   bench/soak.sh --duration 180     # shorter (seconds)
#
# Runs examples/soak.rs: SOAK_INSTANCES (2) `avemint serve` processes sharing one
# PostgreSQL schema, the Ave emulator behind the fault-injecting proxy of the
# tests (tests/support/fault_proxy.rs), SOAK_SESSIONS (40) sessions each asking
# for an app token every second (Ave access tokens live 15 s, refresh skew 5 s:
# every session renews about every 10 s), and 20 s into every minute one of the
# faults of the trial for SOAK_FAULT_SECS (15) s, in turn: connection refused,
# reset after the request, stall then reset, stall past the refresh timeout
# (5 s), HTTP 500, 429 with Retry-After. Every 10 s it samples each process's
# RSS and open file descriptors and the instances' PostgreSQL connections
# (pg_stat_activity, application_name avemint-soak). It prints a Markdown table:
# sessions lost, answers by status, refresh tokens presented twice at the same
# time, families revoked, RSS, file descriptors and store connections.
#
# Needs PostgreSQL: SOAK_DATABASE_URL, or AVEMINT_TEST_DATABASE_URL.
# Knobs: SOAK_DURATION (s, 600), SOAK_SESSIONS, SOAK_INSTANCES, SOAK_FAULT_SECS,
# SOAK_PROFILE (release | debug; default release).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--duration" ]]; then
  export SOAK_DURATION="$2"
fi
export SOAK_DURATION=${SOAK_DURATION:-600}
export SOAK_DATABASE_URL=${SOAK_DATABASE_URL:-${AVEMINT_TEST_DATABASE_URL:-}}
if [[ -z "$SOAK_DATABASE_URL" ]]; then
  echo "set SOAK_DATABASE_URL (or AVEMINT_TEST_DATABASE_URL) to a PostgreSQL database" >&2
  exit 2
fi
PROFILE=${SOAK_PROFILE:-release}
if [[ "$PROFILE" == "release" ]]; then
  cargo build --locked --release --bin avemint --example soak
  DIR=target/release
else
  cargo build --locked --bin avemint --example soak
  DIR=target/debug
fi
echo "== soak: $SOAK_DURATION s, $PROFILE build, $(nproc) CPUs, $(date -u +%Y-%m-%dT%H:%MZ)"
AVEMINT_BIN="$DIR/avemint" "$DIR/examples/soak"
