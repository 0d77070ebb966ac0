#!/usr/bin/env bash
# Checks packaging/avemint.service without starting it (CI runs this; systemd need not be PID 1):
#   - `systemd-analyze verify` on a copy whose ExecStart names an existing avemint binary (verify refuses a missing
#     one), with the PostgreSQL drop-in (packaging/avemint.service.d/); verify exits 0 on unknown keys and
#     unparsable values, only printing them, so any output fails here;
#   - `systemd-analyze security --offline=true`: the exposure score must stay at or below MAX_EXPOSURE (in tenths, as systemd counts: default 20, i.e. 2.0;
#     1.5 when written), so hardening cannot be dropped unnoticed.
# Usage: packaging/verify-unit.sh [AVEMINT_BINARY]   (default target/debug/avemint)
set -euo pipefail
cd "$(dirname "$0")/.."

bin="$(realpath "${1:-target/debug/avemint}")"
[ -x "$bin" ] || {
  echo "verify-unit: no avemint binary at $bin" >&2
  exit 1
}
command -v systemd-analyze >/dev/null || {
  echo "verify-unit: systemd-analyze is missing (apt-get install -y systemd)" >&2
  exit 1
}
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
unit="$scratch/avemint.service"
sed "s|^ExecStart=/usr/local/bin/avemint |ExecStart=$bin |" packaging/avemint.service >"$unit"
# The PostgreSQL drop-in beside it: verify reads `<unit>.d/*.conf` next to the unit file.
cp -r packaging/avemint.service.d "$scratch/"
grep -q "^ExecStart=$bin serve" "$unit" || {
  echo "verify-unit: ExecStart=/usr/local/bin/avemint serve not found in packaging/avemint.service" >&2
  exit 1
}

status=0
out="$(systemd-analyze verify "$unit" 2>&1)" || status=$?
if [ "$status" -ne 0 ] || [ -n "$out" ]; then
  echo "FAIL: systemd-analyze verify (exit status $status):"
  echo "$out"
  exit 1
fi
echo "systemd-analyze verify: no warnings"

threshold="${MAX_EXPOSURE:-20}"
if ! systemd-analyze security --offline=true --threshold="$threshold" "$unit" >"$scratch/security" 2>&1; then
  grep -E '^(✗|→)' "$scratch/security" || cat "$scratch/security"
  echo "FAIL: systemd-analyze security: exposure above $threshold tenths"
  exit 1
fi
grep '^→' "$scratch/security"
