# syntax=docker/dockerfile:1
#
# courier container image.
#
#   docker build -t courier .
#   docker run --rm -p 127.0.0.1:8080:8080 \
#     -v "$PWD/dev/courier.docker.toml:/etc/courier/courier.toml:ro" \
#     -e DATABASE_URL=... -e COURIER_KEY=... -e MAIN_ISSUER=... -e MAIN_SECRET=... courier
#
# Inside a container `server.listen` must be "0.0.0.0:8080" (not 127.0.0.1), or nothing outside
# the container can reach courier. `server.public_url` is the address browsers use.
#
# The build needs no database: queries are checked at run time, and the migrations are
# embedded from ./migrations by sqlx::migrate!. TLS is rustls: no system OpenSSL is needed.

############################ build ############################
FROM rust:1.95-slim-bookworm AS builder
WORKDIR /app

# 1. Dependencies only, on a dummy crate, so that this layer is reused until Cargo.toml,
#    Cargo.lock, build.rs or migrations/ change. (tests/api/main.rs is a stub: Cargo.toml
#    names it as a test target.)
COPY Cargo.toml Cargo.lock build.rs ./
COPY migrations ./migrations
RUN mkdir -p src tests/api \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs tests/api/main.rs \
 && cargo build --release --locked --bin courier \
 && rm -rf src \
           target/release/courier* \
           target/release/deps/courier-* target/release/deps/libcourier-* \
           target/release/.fingerprint/courier-*

# 2. The real sources (openapi.yaml is compiled in with include_str!).
COPY openapi.yaml ./
COPY src ./src
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin courier \
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

USER 10001:10001
ENV COURIER_CONFIG=/etc/courier/courier.toml
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["courier"]
CMD ["serve"]
