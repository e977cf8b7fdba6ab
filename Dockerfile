# The IronBridge gateway and simulator image (docker-compose.yml builds it).
#
# Build steps are the project's own scripts, the same a fresh Debian 12
# machine runs (tests/tests/compose_stack.rs checks this), so the image and
# the tests take libtorch from one pinned place (scripts/setup.sh).
#
#   IRONBRIDGE_GIT_COMMIT=$(git rev-parse --short=12 HEAD) docker compose build

# ---- builder: Rust, libtorch from the pinned torch wheel --------------------
FROM rust:1.95-bookworm AS builder
# setup.sh needs python3 with venv (the README's "fresh Debian 12 with the
# Rust toolchain and python3").
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The venv first, in its own layer: it changes far less often than the code.
COPY scripts/setup.sh scripts/env.sh scripts/
RUN bash scripts/setup.sh --build-only
COPY . .
# No .git in the build context: the commit comes in as an argument.
ARG IRONBRIDGE_GIT_COMMIT=unknown
ENV IRONBRIDGE_GIT_COMMIT=${IRONBRIDGE_GIT_COMMIT}
RUN bash -c 'source scripts/env.sh && cargo build --release --locked -p ironbridge -p ironbridge-simulator'
RUN bash scripts/collect-runtime.sh /out target/release/ironbridge target/release/ironbridge-sim

# ---- runtime: the binaries and libtorch's shared libraries, nothing else ----
FROM debian:bookworm-slim
# curl for the healthcheck on /health; ca-certificates for an https store.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --home-dir /opt/ironbridge --shell /usr/sbin/nologin ironbridge
COPY --from=builder /out/bin/ /usr/local/bin/
COPY --from=builder /out/lib/ /opt/ironbridge/lib/
# The layout config/compose.toml's relative paths expect.
COPY config/ /opt/ironbridge/config/
COPY models/examples/ /opt/ironbridge/models/examples/
RUN mkdir -p /opt/ironbridge/data && chown ironbridge:ironbridge /opt/ironbridge/data
ENV LD_LIBRARY_PATH=/opt/ironbridge/lib
WORKDIR /opt/ironbridge
USER ironbridge
# PKI, spool and dead letters (config/compose.toml: ../data/...).
VOLUME /opt/ironbridge/data
EXPOSE 4840 9184
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD curl -fsS http://127.0.0.1:9184/health || exit 1
ENTRYPOINT ["ironbridge"]
CMD ["run", "--config", "/opt/ironbridge/config/compose.toml"]
