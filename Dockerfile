# syntax=docker/dockerfile:1
# The image server in one process: serves a simplestreams tree, accepts uploads, re-indexes.
# Build:  docker build -t simplestreams-builder .
# Run:    docker run -p 8443:8443 -v ssb-data:/var/www/simplestreams \
#           -e SSB_WRITE_TOKEN="$(openssl rand -hex 32)" simplestreams-builder
# Plain HTTP behind a TLS proxy: add `--http` to the command (see deploy/kubernetes/).

# Build stage: a release binary. aws-lc-sys needs only a C compiler (no cmake, no clang).
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY examples ./examples
RUN cargo build --release --locked --bin simplestreams-builder \
    && strip target/release/simplestreams-builder

# Runtime stage: Debian slim, CA certificates (for prefix_path products fetched over HTTPS),
# one non-root user, nothing else.
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 ssb \
    && useradd --system --uid 10001 --gid ssb --home-dir /var/www/simplestreams --shell /usr/sbin/nologin ssb \
    && mkdir -p /var/www/simplestreams/images /var/cache/simplestreams-builder \
    && chown -R ssb:ssb /var/www/simplestreams \
    && chown ssb:ssb /var/cache/simplestreams-builder \
    && chmod 0700 /var/cache/simplestreams-builder
COPY --from=build /src/target/release/simplestreams-builder /usr/local/bin/simplestreams-builder

# Settings (all optional):
#   SSB_WRITE_TOKEN     bearer token for uploads and deletes (or SSB_WRITE_TOKEN_FILE)
#   ALLOW_OVERWRITES    non-empty: an upload replaces an existing file
#   ALLOW_DELETES       non-empty: DELETE of files and version folders
#   DEBUG               non-empty: debug logs
#   SSB_MAX_UPLOAD_SIZE largest upload (default 10G)
#   SSB_CACHE_DIR       hash caches of the product folders, kept out of the served tree
ENV SSB_LISTEN=0.0.0.0:8443 \
    SSB_INDEX=1 \
    SSB_CACHE_DIR=/var/cache/simplestreams-builder

USER ssb:ssb
WORKDIR /var/www/simplestreams
VOLUME ["/var/www/simplestreams"]
EXPOSE 8443
ENTRYPOINT ["/usr/local/bin/simplestreams-builder"]
CMD ["serve", "-t", "/var/www/simplestreams"]
