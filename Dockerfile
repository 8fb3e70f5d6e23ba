# Builds the keyrelay binary and runs it on a slim Debian base.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY migrations migrations
COPY src src
# Every target the manifest declares must exist for cargo to read it.
COPY benches benches
COPY tests tests
RUN cargo build --release --locked --bin keyrelay

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/keyrelay --create-home keyrelay
COPY --from=build /src/target/release/keyrelay /usr/local/bin/keyrelay
USER keyrelay
ENV KEYRELAY_LISTEN=0.0.0.0:50051 \
    KEYRELAY_HTTP_LISTEN=0.0.0.0:8080 \
    KEYRELAY_DATA_DIR=/var/lib/keyrelay
VOLUME /var/lib/keyrelay
EXPOSE 50051 8080
ENTRYPOINT ["keyrelay"]
CMD ["serve"]
