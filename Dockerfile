# syntax=docker/dockerfile:1
#
# courier container image.
#
#   docker build -t courier .
#   docker run --rm --network host -v "$PWD/courier.toml:/etc/courier/courier.toml:ro" \
#     -e DATABASE_URL=... -e COURIER_KEY=... courier
#
# On a container network (not the host's), `server.listen` must be "0.0.0.0:8080", or nothing
# outside the container reaches courier. `server.public_url` is the address browsers use.
# docker-compose.yml runs the dev stack from this image (courier and the demo API).
#
# The build needs no database: queries are checked at run time, and the migrations are
# embedded from ./migrations by sqlx::migrate!. TLS is rustls: no system OpenSSL is needed.
#
# Where no registry can be pulled from, scripts/image makes both base images locally and passes
# its builder as RUST_IMAGE (podman build --pull=never); the runtime stage stays plain Debian.

# The builder: any image with cargo (CARGO_HOME=/usr/local/cargo, as in the official images),
# gcc and the C library's headers.
ARG RUST_IMAGE=rust:1.95-slim-bookworm

############################ build ############################
FROM ${RUST_IMAGE} AS builder
WORKDIR /app

# The same build CI runs (.ci/run): cargo build --release --locked -p courier -p demo-api.

# Downloaded crates stay in a cache across builds (BuildKit and buildah both keep it), so a
# changed Cargo.lock fetches only what is new.

# 1. Dependencies only, on dummy crates, so that this layer is reused until a Cargo.toml,
#    Cargo.lock or build.rs changes (a new migration does not rebuild the dependencies). Every target Cargo.toml names by path
#    (tests/api/main.rs, …) gets a stub too, or cargo refuses the manifest.
COPY Cargo.toml Cargo.lock build.rs ./
COPY dev/demo-api/Cargo.toml ./dev/demo-api/
RUN --mount=type=cache,id=courier-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    for f in src/main.rs src/lib.rs dev/demo-api/src/main.rs dev/demo-api/src/lib.rs \
             $(sed -n 's/^path *= *"\(.*\.rs\)".*/\1/p' Cargo.toml); do \
      mkdir -p "$(dirname "$f")" && echo 'fn main() {}' > "$f"; \
    done \
 && cargo build --release --locked -p courier -p demo-api \
 && rm -rf src dev/demo-api/src \
           target/release/courier* target/release/demo-api* \
           target/release/deps/courier-* target/release/deps/libcourier-* \
           target/release/deps/demo_api-* target/release/deps/libdemo_api-* \
           target/release/.fingerprint/courier-* target/release/.fingerprint/demo-api-*

# 2. The real sources (openapi.yaml is compiled in with include_str!, migrations/ with
#    sqlx::migrate!).
COPY openapi.yaml ./
COPY migrations ./migrations
COPY src ./src
COPY dev/demo-api/src ./dev/demo-api/src
RUN --mount=type=cache,id=courier-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    touch src/main.rs src/lib.rs dev/demo-api/src/main.rs dev/demo-api/src/lib.rs \
 && cargo build --release --locked -p courier -p demo-api \
 && ./target/release/courier --version

############################ run ############################
FROM debian:bookworm-slim
# ca-certificates: courier calls providers over HTTPS; curl: only for the HEALTHCHECK.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 courier \
 && useradd --system --uid 10001 --gid courier --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin courier \
 && mkdir -p /etc/courier

COPY --from=builder /app/target/release/courier /usr/local/bin/courier
# The demo API (docker-compose.yml runs it from this image) and the example SPA.
COPY --from=builder /app/target/release/demo-api /usr/local/bin/demo-api
COPY examples/spa /usr/share/courier/spa

USER 10001:10001
ENV COURIER_CONFIG=/etc/courier/courier.toml
EXPOSE 8080
# Set COURIER_HEALTHCHECK_PORT when `server.listen` is not on port 8080.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD curl -fsS "http://127.0.0.1:${COURIER_HEALTHCHECK_PORT:-8080}/healthz" || exit 1
ENTRYPOINT ["courier"]
CMD ["serve"]
