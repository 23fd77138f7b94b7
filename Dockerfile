# syntax=docker/dockerfile:1
# Multi-stage build: compile in the Rust image, run in a slim Debian image as a non-root user.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
 && mkdir -p /out \
 && cp target/release/switchyard target/release/switchyard-control target/release/switchyard-worker target/release/switchyard-mock /out/

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/switchyard --create-home switchyard
COPY --from=build /out/ /usr/local/bin/
USER switchyard
WORKDIR /var/lib/switchyard
ENV SWITCHYARD_DATA_DIR=/var/lib/switchyard/data \
    SWITCHYARD_STATE_DIR=/var/lib/switchyard/state
EXPOSE 8080 50051 9090
CMD ["switchyard", "up"]
