#!/usr/bin/env bash
# What a signed-in session occupies at rest (issue 25, target: <= 2 KiB per session on SQLite and PostgreSQL):
#
#   bench/storage.sh                 # 1,000 sessions (STORAGE_SESSIONS)
#
# `examples/loadbench_server serve --measure-storage` signs STORAGE_SESSIONS browsers in over HTTP (the Ave
# emulator's real RS256 id_token and access_token_jwt, an opaque access and refresh token, Ave's `user` object),
# then prints per session: the average sealed record (`storage_record_bytes`), the `sessions` table with its
# indexes (`storage_sessions_bytes`) and the whole database (`storage_total_bytes`: the SQLite file after
# `PRAGMA wal_checkpoint(TRUNCATE)`, with the used login states of the sign-ins; on PostgreSQL every relation of
# the schema with TOAST and indexes, no VACUUM). Once on a fresh SQLite file, and once in a scratch PostgreSQL
# schema (dropped afterwards) when STORAGE_DATABASE_URL or AVEMINT_TEST_DATABASE_URL names a database and psql is
# installed. Sizes do not depend on the build profile: the debug build is used (STORAGE_PROFILE=release for the
# other one).
set -euo pipefail
cd "$(dirname "$0")/.."

SESSIONS=${STORAGE_SESSIONS:-1000}
PG_URL=${STORAGE_DATABASE_URL:-${AVEMINT_TEST_DATABASE_URL:-}}
PROFILE=${STORAGE_PROFILE:-dev}
DIR=debug
[[ "$PROFILE" == release ]] && DIR=release

cargo build --profile "$PROFILE" --locked --quiet --example loadbench_server
BIN=target/$DIR/examples/loadbench_server
WORK=$(mktemp -d)
PG_SCHEMA=""
cleanup() {
  if [[ -n "$PG_SCHEMA" ]]; then
    psql -q "$PG_URL" -c "DROP SCHEMA IF EXISTS $PG_SCHEMA CASCADE" >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "== SQLite, $SESSIONS sessions signed in over HTTP"
"$BIN" serve --sessions "$SESSIONS" --db "$WORK/sessions.db" --measure-storage 2>"$WORK/sqlite.log" | grep '^storage_'

if [[ -n "$PG_URL" ]] && command -v psql >/dev/null 2>&1; then
  PG_SCHEMA="avemint_storage_$$"
  psql -q "$PG_URL" -c "CREATE SCHEMA $PG_SCHEMA" >/dev/null
  sep='?'
  [[ "$PG_URL" == *\?* ]] && sep='&'
  echo "== PostgreSQL, $SESSIONS sessions signed in over HTTP"
  "$BIN" serve --sessions "$SESSIONS" --db "${PG_URL}${sep}options=-c%20search_path%3D${PG_SCHEMA}" --measure-storage \
    2>"$WORK/postgres.log" | grep '^storage_'
else
  echo "== PostgreSQL skipped: set STORAGE_DATABASE_URL or AVEMINT_TEST_DATABASE_URL (and install psql)"
fi
