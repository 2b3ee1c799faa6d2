# Multi-stage build of the controller image: a small, non-root runtime image.
# scripts/image.sh builds the same image without Docker (the release binary
# at /usr/local/bin/bitcoin-controller, exactly the shared libraries it links
# -- what distroless/cc provides --, user 65532:65532, that entrypoint) for
# the real-node lane of scripts/local-cluster.sh.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin bitcoin-controller

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/bitcoin-controller /usr/local/bin/bitcoin-controller
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/bitcoin-controller"]
