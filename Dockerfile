# syntax=docker/dockerfile:1
#
# wa-breaker container image.
#
#   docker build -t wa-breaker .
#   docker run --rm -p 8080:8080 -p 9090:9090 wa-breaker
#
# Stage 1 builds a glibc release binary; stage 2 is distroless (glibc + libgcc,
# no shell, no package manager) running as the distroless "nonroot" user
# (uid/gid 65532). TLS uses rustls with compiled-in webpki roots, so the image
# needs no CA bundle (distroless ships one anyway).

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# ---------------------------------------------------------------- builder ---
FROM ${RUST_IMAGE} AS builder
WORKDIR /build

# Dependency layer: compile every dependency against stub sources, keyed only
# on Cargo.toml + Cargo.lock, so editing src/ does not rebuild the dependency
# graph. Stubs are also written for each [[bench]]/[[test]]/[[example]]
# declared in Cargo.toml, because cargo refuses a manifest whose declared
# targets have no source file (only the lib and bin are compiled here).
COPY Cargo.toml Cargo.lock ./
RUN set -eux; \
    mkdir -p src; \
    echo 'fn main() {}' > src/main.rs; \
    : > src/lib.rs; \
    awk -F'"' ' \
        /^\[\[bench\]\]/   { dir = "benches";  next } \
        /^\[\[test\]\]/    { dir = "tests";    next } \
        /^\[\[example\]\]/ { dir = "examples"; next } \
        /^\[/              { dir = "";         next } \
        dir != "" && /^[ \t]*name[ \t]*=/ { print dir "/" $2 ".rs"; dir = "" } \
      ' Cargo.toml | while read -r stub; do \
        mkdir -p "$(dirname "$stub")"; echo 'fn main() {}' > "$stub"; \
      done; \
    cargo build --release --locked; \
    rm -rf src

# Application layer. .dockerignore keeps target/, .git, tests/ and the
# deploy manifests out of the context. Touch the sources so cargo never
# mistakes the stub build above for an up-to-date build of the real crate
# (COPY keeps the context's mtimes, which can be older than the stub build).
COPY . .
RUN set -eux; \
    find src -type f -name '*.rs' -exec touch {} +; \
    cargo build --release --locked; \
    install -D -m 0755 target/release/wa-breaker /out/wa-breaker; \
    mkdir -p /out/state

# ---------------------------------------------------------------- runtime ---
FROM ${RUNTIME_IMAGE}

COPY --from=builder /out/wa-breaker /wa-breaker
# Container defaults: listeners on all interfaces, state under the volume.
# Kubernetes mounts its own config.toml over /etc/wa-breaker.
COPY deploy/docker/config.toml /etc/wa-breaker/config.toml
# Embedded store (state_dir); must be writable by the runtime user.
COPY --from=builder --chown=65532:65532 /out/state /var/lib/wa-breaker

# Numeric uid:gid so Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
EXPOSE 8080 9090
VOLUME ["/var/lib/wa-breaker"]

ENTRYPOINT ["/wa-breaker"]
CMD ["--config", "/etc/wa-breaker/config.toml"]
