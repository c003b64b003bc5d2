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

############################ build ############################
FROM rust:1.95-slim-bookworm AS builder
WORKDIR /app

# The same build CI runs (.ci/run): cargo build --release --locked -p courier -p demo-api.

# 1. Dependencies only, on dummy crates, so that this layer is reused until a Cargo.toml,
#    Cargo.lock, build.rs or migrations/ change. (tests/api/main.rs is a stub: Cargo.toml
#    names it as a test target.)
COPY Cargo.toml Cargo.lock build.rs ./
COPY migrations ./migrations
COPY dev/demo-api/Cargo.toml ./dev/demo-api/
RUN mkdir -p src tests/api dev/demo-api/src \
 && echo 'fn main() {}' > src/main.rs \
 && echo 'fn main() {}' > dev/demo-api/src/main.rs \
 && touch src/lib.rs tests/api/main.rs dev/demo-api/src/lib.rs \
 && cargo build --release --locked -p courier -p demo-api \
 && rm -rf src dev/demo-api/src \
           target/release/courier* target/release/demo-api* \
           target/release/deps/courier-* target/release/deps/libcourier-* \
           target/release/deps/demo_api-* target/release/deps/libdemo_api-* \
           target/release/.fingerprint/courier-* target/release/.fingerprint/demo-api-*

# 2. The real sources (openapi.yaml is compiled in with include_str!).
COPY openapi.yaml ./
COPY src ./src
COPY dev/demo-api/src ./dev/demo-api/src
RUN touch src/main.rs src/lib.rs dev/demo-api/src/main.rs dev/demo-api/src/lib.rs \
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
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["courier"]
CMD ["serve"]
