# keyward server image.
#   docker build -t keyward .            (or: docker-compose build)
#   docker run -p 50051:50051 -v keyward-data:/data keyward
# Defaults to the embedded SQLite database in /data; set KEYWARD_DATABASE_URL
# to a postgres:// or mysql:// URL to use a server (see docker-compose.yml).
#
# The dependencies build in their own layer, keyed only on the manifests and
# Cargo.lock: an edit to keyward's sources (or anything .dockerignore keeps
# out, such as the docs) does not rebuild them. Plain Dockerfile syntax: works
# with the classic builder and BuildKit alike, no extra tool. `.ci/run`
# checks that every COPY source below exists and is not ignored.

# ---- build ------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder
WORKDIR /src

# 1. Dependencies. Every workspace member's manifest, with stub sources where
#    the real ones will go: a lib for each member, the root's main, its three
#    declared benches (cargo refuses a manifest whose [[bench]] file is
#    missing) and stub build scripts for the two packages keyward builds that
#    have one (so their build-dependencies, protox and tonic-prost-build, are
#    built here too). Then the stubs' own artifacts are cleaned, so step 2
#    rebuilds the workspace crates from the real sources whatever their mtimes.
COPY Cargo.toml Cargo.lock ./
COPY crates/keyward-core/Cargo.toml crates/keyward-core/
COPY crates/keyward-store/Cargo.toml crates/keyward-store/
COPY crates/keyward-auth/Cargo.toml crates/keyward-auth/
COPY examples/orders-service/Cargo.toml examples/orders-service/
COPY benches/null-authz/Cargo.toml benches/null-authz/
COPY benches/load-driver/Cargo.toml benches/load-driver/
RUN set -eu; \
    for member in . crates/keyward-core crates/keyward-store crates/keyward-auth examples/orders-service benches/null-authz benches/load-driver; do \
      mkdir -p "$member/src"; \
      : > "$member/src/lib.rs"; \
    done; \
    echo 'fn main() {}' > src/main.rs; \
    mkdir -p benches; \
    for bench in validation listkeys cache_memory; do echo 'fn main() {}' > "benches/$bench.rs"; done; \
    echo 'fn main() {}' > build.rs; \
    echo 'fn main() {}' > crates/keyward-auth/build.rs; \
    cargo build --release --locked --bin keyward; \
    cargo clean --release --locked -p keyward -p keyward-core -p keyward-store -p keyward-auth; \
    rm -rf src build.rs crates/*/src crates/keyward-auth/build.rs

# 2. keyward itself: only what its build reads (orders-service, null-authz and
#    load-driver stay stubs; they are workspace members, not part of the image).
COPY build.rs ./
COPY proto proto
COPY src src
COPY crates/keyward-core/src crates/keyward-core/src
COPY crates/keyward-store/src crates/keyward-store/src
COPY crates/keyward-auth/build.rs crates/keyward-auth/
COPY crates/keyward-auth/src crates/keyward-auth/src
RUN cargo build --release --locked --bin keyward \
 && install -D -m 0755 target/release/keyward /out/keyward

# ---- runtime ----------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 keyward \
 && useradd --system --uid 10001 --gid keyward --home-dir /data --shell /usr/sbin/nologin keyward \
 && mkdir -p /data \
 && chown keyward:keyward /data
COPY --from=builder /out/keyward /usr/local/bin/keyward
ENV KEYWARD_LISTEN=0.0.0.0:50051 \
    KEYWARD_DATABASE_URL=sqlite:///data/keyward.db?mode=rwc
WORKDIR /data
VOLUME /data
USER keyward:keyward
EXPOSE 50051
ENTRYPOINT ["/usr/local/bin/keyward"]
CMD ["serve"]
