# syntax=docker/dockerfile:1
# avemint's container image: a serve-only release build (`--no-default-features`: no `demo` command, none of the Ave
# emulator) on distroless. Non-root (uid 65532), read-only root filesystem friendly: the only writable state is the
# volume /var/lib/avemint (signing keys and the SQLite file); secrets come in as files (`*_FILE` variables).
#
#   docker build -t avemint .
#   docker run --read-only -p 8080:8080 -v avemint:/var/lib/avemint \
#     -e AVE_CLIENT_ID=… -e AVE_CLIENT_SECRET_FILE=/run/secrets/client_secret \
#     -e AVEMINT_SESSION_KEYS_FILE=/run/secrets/session_keys -e AVEMINT_PUBLIC_URL=https://app.example.com … avemint
#
# This file is not built on avemint's CI (no container registry is reachable there); packaging/build-image.sh builds
# an equivalent image offline from Debian packages and packaging/smoke-image.sh runs it (docs/operations.md, Container image).

ARG RUST_VERSION=1.94

FROM docker.io/library/rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
# The cache mounts keep the registry and compiled dependencies between builds; the binary is copied out of the
# cached target directory in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --no-default-features --bin avemint \
    && install -D -m 0755 target/release/avemint /out/avemint \
    && install -d -m 0700 /out/state

# glibc, libgcc_s and CA certificates (for Ave over HTTPS): all the binary needs (`ldd target/release/avemint`).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/avemint /usr/local/bin/avemint
COPY --from=build --chown=65532:65532 /out/state /var/lib/avemint
# No AVEMINT_DATABASE_URL here: a deployment may give it either as AVEMINT_DATABASE_URL or, holding a password, as
# AVEMINT_DATABASE_URL_FILE (avemint refuses both at once). Unset, the store is SQLite in the working directory:
# /var/lib/avemint/avemint.db, on the volume.
WORKDIR /var/lib/avemint
ENV AVEMINT_LISTEN=0.0.0.0:8080 \
    AVEMINT_KEYS_DIR=/var/lib/avemint/keys \
    AVEMINT_LOG_FORMAT=json
VOLUME ["/var/lib/avemint"]
USER 65532:65532
EXPOSE 8080
# avemint drains on SIGTERM: in-flight requests up to 10 s, refreshes waiting on Ave up to 20 s (fits a 30 s stop
# timeout: `docker stop -t 30`, Kubernetes' default grace period).
STOPSIGNAL SIGTERM
# No shell or curl in distroless: the binary probes its own /healthz (on loopback, at AVEMINT_LISTEN's port).
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 CMD ["/usr/local/bin/avemint", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/avemint"]
CMD ["serve"]
