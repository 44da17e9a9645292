# syntax=docker/dockerfile:1
#
# pullmedic operator image.
#
#   docker build -t pullmedic:0.1.0 .
#
# Base images are pinned by tag only. Pin them by digest as well
# (python:3.12-slim-trixie@sha256:...) where the build can reach a container registry:
# the machine this file was written on has no registry access, so no digest could be
# looked up and verified here.
#
# Both stages use the same base so the venv's interpreter symlink
# (/opt/venv/bin/python -> /usr/local/bin/python3.12) resolves in the final image.

# ---------------------------------------------------------------------------
# builder: a venv with pullmedic and its dependencies, installed exactly the way the
# test suite installs the project (`pip install .` from pyproject.toml).
# ---------------------------------------------------------------------------
FROM python:3.12-slim-trixie AS builder

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

RUN python -m venv /opt/venv
ENV PATH="/opt/venv/bin:${PATH}"

WORKDIR /src
# Only what the package build needs: never sandbox/, tests/, bench/ (see .dockerignore).
COPY pyproject.toml README.md ./
COPY operator/ ./operator/

# Every dependency ships wheels for linux/amd64 and linux/arm64, so no compiler is needed.
# pip byte-compiles while installing, so the read-only root filesystem at run time costs
# nothing at start-up. pip itself is dropped from the venv afterwards: nothing in the final
# image installs anything. The last command checks the entry point resolves.
RUN pip install --no-cache-dir . \
    && pip uninstall --yes pip \
    && pullmedic --help >/dev/null

# ---------------------------------------------------------------------------
# final: the venv alone on a slim base, running as a non-root numeric user.
# ---------------------------------------------------------------------------
FROM python:3.12-slim-trixie

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
