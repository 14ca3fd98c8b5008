# keyward server image.
#   docker build -t keyward .            (or: docker-compose build)
#   docker run -p 50051:50051 -v keyward-data:/data keyward
# Defaults to the embedded SQLite database in /data; set KEYWARD_DATABASE_URL
# to a postgres:// or mysql:// URL to use a server (see docker-compose.yml).

# ---- build ------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder
WORKDIR /src
# build.rs compiles proto/ with a pure-Rust compiler: no protoc needed.
COPY . .
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
