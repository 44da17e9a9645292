# syntax=docker/dockerfile:1
#
# pullmedic operator image.
#
#   scripts/build-image.sh                   # buildah, reproducible (SOURCE_DATE_EPOCH)
#   docker buildx build -t pullmedic:0.1.0 \
#     --build-arg SOURCE_DATE_EPOCH="$(git log -1 --format=%ct)" \
#     --build-arg PULLMEDIC_BUILD_EPOCH="$(git log -1 --format=%ct)" \
#     --output type=docker,rewrite-timestamp=true .
#
# Reproducible: the image's files and history carry SOURCE_DATE_EPOCH as their time (set
# by the builder tool, as above), the bytecode embeds no mtime (compileall below), the
# SBOM no date, and every dependency is the locked file.
#
# Both stages run Debian 12's own Python 3.11: the builder installs python3-venv on
# debian:12-slim, the runtime is distroless python3-debian12 (made from the same Debian
# packages: python3.11, ca-certificates, tzdata; no shell tools needed, no pip, no
# compiler, uid 65532). The venv's interpreter symlink (/opt/venv/bin/python3 ->
# /usr/bin/python3) therefore resolves in the final image. scripts/build-image.sh makes
# both bases from Debian packages with mmdebstrap when no registry is reachable.
#
# Base images are pinned by tag only. Pin them by digest as well where the build can
# reach a container registry: no digest could be looked up and verified here.

# ---------------------------------------------------------------------------
# builder: a venv with pullmedic and exactly the dependencies in requirements.lock
# (versions and the hash of every file; scripts/lock.sh writes it), and the venv's SBOM.
# ---------------------------------------------------------------------------
FROM debian:12-slim AS builder
# The build's epoch (scripts/build-image.sh passes it with --timestamp), declared so that
# a builder's cached RUN steps are keyed by it, and one made at another epoch is never
# reused. Not named SOURCE_DATE_EPOCH: an ARG is in every RUN's environment, and the SBOM
# tool would then stamp its document with a time and a serial number.
ARG PULLMEDIC_BUILD_EPOCH=0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# python3-venv brings Debian's python3.11 and the pip wheel ensurepip seeds the venv with.
RUN apt-get update \
    && apt-get install --yes --no-install-recommends python3-venv=3.11.2-1+b1 \
    && rm -rf /var/lib/apt/lists/*

# /opt/venv is the image's; /opt/sbom holds the SBOM tool and stays in the builder.
RUN python3 -m venv /opt/venv \
    && python3 -m venv /opt/sbom
ENV PATH="/opt/venv/bin:${PATH}"

WORKDIR /src
# The locks first (their layer is reused while only the sources change), then only what
# the package build needs: never sandbox/, tests/, bench/ (see .dockerignore).
COPY requirements.lock requirements-sbom.lock ./

# Every dependency, and the build backend (setuptools), from the lock and nothing else:
# --require-hashes refuses any file whose hash is not recorded there, and wheels only
# (every locked package has wheels for linux/amd64 and linux/arm64: no compiler needed).
# No bytecode yet: it is compiled once, reproducibly, below.
RUN pip install --no-cache-dir --no-compile --require-hashes --only-binary=:all: \
       -r requirements.lock \
    && /opt/sbom/bin/pip install --no-cache-dir --no-compile --require-hashes --only-binary=:all: \
       -r requirements-sbom.lock

COPY pyproject.toml README.md ./
COPY operator/ ./operator/

# pullmedic itself, offline, with the locked setuptools and no dependency resolution.
# pip and setuptools are dropped from the venv afterwards: nothing in the final image
# installs anything. The kubernetes client's asyncio copy (kubernetes/aio, 68 MB with its
# bytecode) is removed: pullmedic and kopf use the synchronous client only. Then the
# venv is byte-compiled, so the read-only root filesystem at run time costs nothing at
# start-up: unchecked-hash .pyc files record no source mtime (two builds write the same
# bytes) and are never re-validated (the image's sources never change). Then the entry
# point must resolve, and the SBOM (CycloneDX JSON, no timestamp or random serial)
# records every distribution left in the venv, with its version, inside the venv the
# final image carries.
RUN pip install --no-cache-dir --no-compile --no-deps --no-build-isolation --no-index . \
    && pip uninstall --yes setuptools pip \
    && rm -rf /opt/venv/lib/python3.11/site-packages/kubernetes/aio \
    && python3 -m compileall -q -j 0 --invalidation-mode unchecked-hash \
       /opt/venv/lib/python3.11/site-packages \
    && pullmedic --help >/dev/null \
    && mkdir -p /opt/venv/share/doc/pullmedic \
    && /opt/sbom/bin/cyclonedx-py environment --output-reproducible --of JSON \
       --pyproject pyproject.toml -o /opt/venv/share/doc/pullmedic/sbom.cdx.json \
       /opt/venv/bin/python

# ---------------------------------------------------------------------------
# final: the venv alone on a slim base, running as a non-root numeric user.
# ---------------------------------------------------------------------------
FROM gcr.io/distroless/python3-debian12:nonroot

ARG VERSION=0.1.0
ARG SOURCE_URL=https://github.com/pullmedic/pullmedic
# The epoch again (ARGs are per stage), recorded as a label: which commit time the files
# and history carry. (Builders that key cached steps by the ARG's value then never reuse
# this stage from another epoch; scripts/build-image.sh uses no layer cache at all.)
ARG PULLMEDIC_BUILD_EPOCH=0

LABEL dev.pullmedic.build-epoch="${PULLMEDIC_BUILD_EPOCH}" \
      org.opencontainers.image.title="pullmedic" \
      org.opencontainers.image.description="Kubernetes operator that diagnoses and heals image pull failures" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      dev.pullmedic.sbom="/opt/venv/share/doc/pullmedic/sbom.cdx.json"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH="/opt/venv/bin:${PATH}"

COPY --from=builder /opt/venv /opt/venv

# 65532 is the conventional "nonroot" uid/gid (as in distroless); numeric so Kubernetes'
# runAsNonRoot can verify it without an /etc/passwd lookup.
USER 65532:65532
WORKDIR /tmp

# 8080: liveness (/healthz); 9090: Prometheus metrics.
EXPOSE 8080 9090

ENTRYPOINT ["pullmedic", "run"]
