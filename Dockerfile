# inferd's image: a build stage, then a runtime with no shell, no compiler and no weights (mount
# the model repository at /models, or fill a volume ahead of time).
#
#   docker build -t inferd .                                # builds inferd from source
#   docker build --target prebuilt -t inferd DIR            # packs DIR/inferd, built elsewhere
#
# BUILDER and BASE name the base images: the runtime base needs only glibc and libgcc
# (distroless/cc); CI, which cannot pull images, passes one it assembles from the host's libs.

ARG BUILDER=docker.io/library/rust:1.95-slim-bookworm
ARG BASE=gcr.io/distroless/cc-debian12:nonroot

FROM ${BUILDER} AS build
WORKDIR /src
# Dependencies first, from the manifests alone (stub sources), so a code change does not
# rebuild them; then the real sources.
COPY Cargo.toml Cargo.lock ./
COPY crates/inferd/Cargo.toml crates/inferd/
COPY crates/inferd-core/Cargo.toml crates/inferd-core/
COPY crates/inferd-server/Cargo.toml crates/inferd-server/
COPY crates/inferd-onnx/Cargo.toml crates/inferd-onnx/
COPY crates/inferd-ort/Cargo.toml crates/inferd-ort/
COPY crates/inferd-trees/Cargo.toml crates/inferd-trees/
COPY crates/inferd-candle/Cargo.toml crates/inferd-candle/
COPY crates/inferd-gguf/Cargo.toml crates/inferd-gguf/
COPY crates/inferd-bench/Cargo.toml crates/inferd-bench/
RUN for d in crates/*/; do mkdir -p "$d/src" && echo 'fn main() {}' > "$d/src/main.rs" && touch "$d/src/lib.rs"; done \
    && (cargo build --locked --profile dist -p inferd || true)
COPY crates ./crates
RUN touch crates/*/src/*.rs \
    && cargo build --locked --profile dist -p inferd \
    && cp target/dist/inferd /inferd

FROM ${BASE} AS runtime-base
# A numeric user: no /etc/passwd entry needed, and Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
EXPOSE 8000 8001 8002
ENV INFERD_MODEL_REPOSITORY=/models
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/inferd", "health"]
ENTRYPOINT ["/usr/local/bin/inferd"]
CMD ["serve"]

# A binary built elsewhere (CI's own build): `--target prebuilt` with it at ./inferd.
FROM runtime-base AS prebuilt
COPY --chmod=0755 inferd /usr/local/bin/inferd

FROM runtime-base AS runtime
COPY --from=build /inferd /usr/local/bin/inferd
