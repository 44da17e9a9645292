# syntax=docker/dockerfile:1
#
# pullmedic operator image.
#
#   docker build -t pullmedic:0.1.0 .        # or, without Docker: scripts/build-image.sh
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
# builder: a venv with pullmedic and its dependencies, installed exactly the way the
# test suite installs the project (`pip install .` from pyproject.toml).
# ---------------------------------------------------------------------------
FROM debian:12-slim AS builder

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# python3-venv brings Debian's python3.11 and the pip wheel ensurepip seeds the venv with.
RUN apt-get update \
    && apt-get install --yes --no-install-recommends python3-venv=3.11.2-1+b1 \
    && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv /opt/venv
ENV PATH="/opt/venv/bin:${PATH}"

WORKDIR /src
# Only what the package build needs: never sandbox/, tests/, bench/ (see .dockerignore).
COPY pyproject.toml README.md ./
COPY operator/ ./operator/

# Every dependency ships wheels for linux/amd64 and linux/arm64, so no compiler is needed.
# pip byte-compiles while installing, so the read-only root filesystem at run time costs
# nothing at start-up. pip (and the setuptools ensurepip seeded) is dropped from the venv
# afterwards: nothing in the final image installs anything. The kubernetes client's
# asyncio copy (kubernetes/aio, 68 MB with its bytecode) is removed: pullmedic and kopf
# use the synchronous client only. The last command checks the entry point resolves.
RUN pip install --no-cache-dir . \
    && pip uninstall --yes setuptools pip \
    && rm -rf /opt/venv/lib/python3.11/site-packages/kubernetes/aio \
    && pullmedic --help >/dev/null

# ---------------------------------------------------------------------------
# final: the venv alone on a slim base, running as a non-root numeric user.
# ---------------------------------------------------------------------------
FROM gcr.io/distroless/python3-debian12:nonroot

ARG VERSION=0.1.0
ARG SOURCE_URL=https://github.com/pullmedic/pullmedic

LABEL org.opencontainers.image.title="pullmedic" \
      org.opencontainers.image.description="Kubernetes operator that diagnoses and heals image pull failures" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0"

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
