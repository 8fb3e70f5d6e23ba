# Builds the keyrelay binary, then runs it on a distroless base: glibc and CA certificates, no
# shell, no package manager, no build tools, a non-root user (uid 65532).
# The test command rebuilds this stage's context without a Docker engine
# (scripts/docker_context.py), so a file the build needs but no COPY brings fails CI.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
# Build settings: the embedded SQLite's compile options.
COPY .cargo .cargo
COPY proto proto
COPY migrations migrations
COPY src src
# The verifier SDK is a workspace member and a path dependency of the server.
COPY clients/rust clients/rust
# Every target the manifest declares must exist for cargo to read it.
COPY benches benches
COPY tests tests
RUN cargo build --release --locked --bin keyrelay \
    && install -d -o 65532 -g 65532 /data

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/keyrelay /usr/local/bin/keyrelay
COPY --from=build --chown=65532:65532 /data /var/lib/keyrelay
USER 65532:65532
ENV KEYRELAY_LISTEN=0.0.0.0:50051 \
    KEYRELAY_HTTP_LISTEN=0.0.0.0:8080 \
    KEYRELAY_DATA_DIR=/var/lib/keyrelay
VOLUME /var/lib/keyrelay
EXPOSE 50051 8080
ENTRYPOINT ["/usr/local/bin/keyrelay"]
CMD ["serve"]
