#!/usr/bin/env bash
# Smoke test of avemint's container image (packaging/build-image.sh builds it offline): runs it with podman the way
# an operator would (read-only root filesystem, no capabilities, no new privileges, secrets as read-only files, state
# in a volume) against the Ave emulator started on the host, and checks:
#   - /readyz answers 200 (the image reached Ave's discovery and JWKS, and its store, with the baked-in defaults);
#   - /.well-known/jwks.json serves a signing key;
#   - the image's HEALTHCHECK (`avemint healthcheck`) passes;
#   - SIGTERM (`podman stop`, the image's stop signal) ends it with exit status 0;
#   - a second container on the same volume publishes the same keys (the state lives in the volume);
#   - a third one with the signing keys on a read-only mount (as deploy/kubernetes/ gives them: made by `avemint keys
#     generate`, files 0600 of uid 65532) becomes ready and publishes exactly those keys.
# Prints what it measured: image size, `podman run` → /readyz 200, resident memory at idle.
#
# Needs root, podman, curl, jq, and the emulator: `cargo build --release -p ave-emulator --example standalone`
# (or EMULATOR_BIN). Environment: IMAGE (default localhost/avemint:offline), PORT (18080), EMULATOR_PORT (18081),
# PODMAN_OPTS (global podman options, e.g. `--runtime runc`) and PODMAN_RUN_OPTS (extra `podman run` options, e.g.
# `--ulimit nofile=20000:20000`): what a restricted machine needs, see docs/operations.md, Container image.
set -euo pipefail
cd "$(dirname "$0")/.."

image="${IMAGE:-localhost/avemint:offline}"
port="${PORT:-18080}"
eport="${EMULATOR_PORT:-18081}"
emulator_bin="${EMULATOR_BIN:-target/release/examples/standalone}"
name="avemint-smoke-$$"
volume="avemint-smoke-$$"
read -r -a global <<<"${PODMAN_OPTS:-}"
read -r -a extra <<<"${PODMAN_RUN_OPTS:-}"
podman() { command podman "${global[@]}" "$@"; }

for tool in podman curl jq; do
  command -v "$tool" >/dev/null || {
    echo "smoke-image: $tool is missing" >&2
    exit 1
  }
done
[ -x "$emulator_bin" ] || {
  echo "smoke-image: no emulator at $emulator_bin (cargo build --release -p ave-emulator --example standalone)" >&2
  exit 1
}

scratch="$(mktemp -d)"
emulator_pid=""
cleanup() {
  podman rm -f -t 0 "$name" >/dev/null 2>&1 || true
  podman volume rm -f "$volume" >/dev/null 2>&1 || true
  [ -n "$emulator_pid" ] && kill "$emulator_pid" 2>/dev/null || true
  rm -rf "$scratch"
}
trap cleanup EXIT

ms() { date +%s%3N; }
fail() {
  echo "FAIL: $*" >&2
  podman logs "$name" 2>&1 | tail -n 20 >&2 || true
  exit 1
}

echo "== image $image: $(podman image inspect --format '{{.Size}}' "$image" | awk '{ printf "%.1f MiB", $1 / 1048576 }')"

# The emulator on the host, with the client avemint will use.
client_id="app_smoke$$"
openssl rand -hex 24 >"$scratch/client_secret"
openssl rand -base64 32 >"$scratch/session_keys"
"$emulator_bin" --listen "127.0.0.1:$eport" --client-id "$client_id" --client-secret "$(cat "$scratch/client_secret")" \
  --redirect-uri "http://127.0.0.1:$port/auth/callback" >"$scratch/emulator.out" 2>&1 &
emulator_pid=$!
for _ in $(seq 1 100); do grep -q '^issuer=' "$scratch/emulator.out" && break; sleep 0.05; done
issuer="$(sed -n 's/^issuer=//p' "$scratch/emulator.out")"
[ -n "$issuer" ] || fail "the emulator did not start: $(cat "$scratch/emulator.out")"

# Secrets as read-only files owned by the image's user (uid 65532), mode 0400: what a secrets mount provides.
mkdir "$scratch/secrets"
mv "$scratch/client_secret" "$scratch/session_keys" "$scratch/secrets/"
chown -R 65532:65532 "$scratch/secrets"
chmod 0500 "$scratch/secrets"
chmod 0400 "$scratch/secrets"/*
podman volume create "$volume" >/dev/null

run() {
  podman run -d --name "$name" --network host "${extra[@]}" "$@" \
    --read-only --cap-drop ALL --security-opt no-new-privileges \
    -v "$volume:/var/lib/avemint" -v "$scratch/secrets:/run/secrets:ro" \
    -e AVE_CLIENT_ID="$client_id" -e AVE_CLIENT_SECRET_FILE=/run/secrets/client_secret \
    -e AVEMINT_SESSION_KEYS_FILE=/run/secrets/session_keys -e AVE_ISSUER="$issuer" \
    -e AVEMINT_PUBLIC_URL="http://127.0.0.1:$port" -e AVEMINT_LISTEN="127.0.0.1:$port" \
    "$image" >/dev/null
}
wait_ready() {
  for _ in $(seq 1 300); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz")" = 200 ] && return 0
    [ "$(podman inspect --format '{{.State.Running}}' "$name")" = true ] || fail "the container exited"
    sleep 0.02
  done
  fail "/readyz did not answer 200 within about 10 s"
}
stop_with_sigterm() {
  podman stop -t 80 "$name" >/dev/null
  local code
  code="$(podman inspect --format '{{.State.ExitCode}}' "$name")"
  [ "$code" = 0 ] || fail "exit status $code after SIGTERM"
}

echo "== podman run (read-only root, no capabilities, secrets as files, state in volume $volume)"
t0=$(ms)
run
wait_ready
t1=$(ms)
started=$(date -d "$(podman inspect --format '{{.State.StartedAt}}' "$name" | sed 's/ +0000 UTC$/Z/; s/ UTC$//')" +%s%3N)
echo "ready: podman run → /readyz 200 in $((t1 - t0)) ms, of which container started → /readyz 200 $((t1 - started)) ms"
curl -sf "http://127.0.0.1:$port/readyz" | jq -c '{status, ave_discovery, ave_jwks, store}'

kids="$(curl -sf "http://127.0.0.1:$port/.well-known/jwks.json" | jq -r '[.keys[].kid] | sort | join(",")')"
[ "$(curl -sf "http://127.0.0.1:$port/.well-known/jwks.json" | jq '[.keys[] | select(.kty == "EC")] | length')" -ge 1 ] \
  || fail "the JWKS has no EC key"
echo "jwks: kids $kids"

if [ "$(podman image inspect --format '{{.Config.Healthcheck}}' "$image")" != "<nil>" ]; then
  podman healthcheck run "$name" >/dev/null || fail "the image's HEALTHCHECK failed"
  echo "healthcheck: passed (avemint healthcheck in the container)"
else
  echo "healthcheck: the image has none (built with BUILDAH_FORMAT=oci?)"
fi

sleep 2
pid="$(podman inspect --format '{{.State.Pid}}' "$name")"
echo "idle RSS: $(awk '/^VmRSS/ { printf "%.1f MiB", $2 / 1024 }' "/proc/$pid/status")"

t2=$(ms)
stop_with_sigterm
echo "SIGTERM: exit status 0 after $(($(ms) - t2)) ms"
podman logs "$name" 2>&1 | grep -q '"level":"ERROR"' && fail "error lines in the log"
podman rm "$name" >/dev/null

echo "== second container on the same volume"
run
wait_ready
again="$(curl -sf "http://127.0.0.1:$port/.well-known/jwks.json" | jq -r '[.keys[].kid] | sort | join(",")')"
[ "$again" = "$kids" ] || fail "the keys changed across restarts ($kids → $again): state is not in the volume"
stop_with_sigterm
echo "same keys after restart; SIGTERM: exit status 0"
podman rm "$name" >/dev/null

echo "== signing keys on a read-only mount (the Kubernetes example's layout)"
podman run --rm --network host "${extra[@]}" --user 0 -v "$scratch:/out" -e AVEMINT_KEYS_DIR=/out/keys "$image" \
  keys generate >/dev/null
podman run --rm --network host "${extra[@]}" --user 0 -v "$scratch:/out" -e AVEMINT_KEYS_DIR=/out/keys "$image" \
  keys generate >/dev/null
rm -f "$scratch/keys/.lock"
chown -R 65532:65532 "$scratch/keys"
expected="$(jq -r '[.keys[].kid] | sort | join(",")' "$scratch/keys/manifest.json")"
run -v "$scratch/keys:/var/lib/avemint/keys:ro"
wait_ready
served="$(curl -sf "http://127.0.0.1:$port/.well-known/jwks.json" | jq -r '[.keys[].kid] | sort | join(",")')"
[ "$served" = "$expected" ] || fail "read-only keys: published $served, the directory has $expected"
stop_with_sigterm
echo "ready with read-only keys, publishing exactly them ($expected); SIGTERM: exit status 0"
echo "== smoke test passed"
