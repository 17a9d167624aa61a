# syntax=docker/dockerfile:1
#
# oauth-gateway container image.
#
#   make image                     # docker build -t oauth-gateway:dev .
#   docker run --rm --read-only --tmpfs /tmp --cap-drop ALL \
#     --security-opt no-new-privileges -p 8080:8080 \
#     -v "$PWD/config/gateway.yaml:/etc/gateway/gateway.yaml:ro" oauth-gateway:dev
#
# Two stages: the builder installs the pinned runtime dependencies (requirements.lock, wheels
# only) and builds the gateway wheel, its request path compiled to C by mypyc (setup.py; gcc lives
# in the builder only), into a virtualenv at /opt/venv; the runtime stage copies only that
# virtualenv onto the same slim base. The image runs as UID/GID 10001, never writes
# outside /tmp (read-only root filesystem friendly) and carries no secret: configuration and
# credentials are mounted at run time (/etc/gateway, Kubernetes Secrets, environment variables).

# python:3.11.13-slim-bookworm, pinned to its multi-platform manifest digest.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm@sha256:86adf8dbadc3d6e82ee5dd2c74bec2e1c2467cdad47886280501df722372d2e1

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

# Build backend for the gateway's own wheel (pyproject: setuptools>=68) and mypyc (part of mypy,
# the version pyproject.toml's build requirements pin), needed at build time only.
ARG SETUPTOOLS_VERSION=84.2.1
ARG MYPY_VERSION=2.4.1

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1

RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/* \
 && python -m venv /opt/venv

WORKDIR /src

# Dependencies first, in their own layer: it is rebuilt only when the lock changes.
COPY requirements.lock ./
RUN /opt/venv/bin/pip install --no-deps --only-binary=:all: --requirement requirements.lock

# Then the gateway itself, built as a wheel (no editable install, no source tree in the image).
# README.m[d]: the package's long description, copied when present (a glob may match nothing).
# The build runs in its own virtualenv (setuptools, mypy) that also sees /opt/venv's packages
# through a .pth file: mypyc compiles against the runtime dependencies' real types (setup.py).
# It fails rather than ship the pure-Python request path; --version proves which one it built.
COPY pyproject.toml setup.py README.m[d] ./
COPY tools ./tools
COPY gateway ./gateway
RUN python -m venv /opt/build \
 && echo /opt/venv/lib/python3.11/site-packages \
      > /opt/build/lib/python3.11/site-packages/runtime-deps.pth \
 && /opt/build/bin/pip install "setuptools==${SETUPTOOLS_VERSION}" "mypy==${MYPY_VERSION}" \
 && /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/wheels . \
 && /opt/venv/bin/pip install --no-deps /tmp/wheels/*.whl \
 && /opt/venv/bin/pip check \
 && /opt/venv/bin/gateway --version | grep -q '(compiled)' \
 && /opt/venv/bin/python -m compileall -q -f --invalidation-mode unchecked-hash /opt/venv/lib \
 && /opt/venv/bin/pip uninstall --yes pip \
 && rm -rf /tmp/wheels /opt/build

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="oauth-gateway" \
      org.opencontainers.image.description="OAuth 2.0 bearer-token gateway" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed numeric user so that Kubernetes' runAsNonRoot can verify it and runAsUser can match it.
RUN groupadd --gid 10001 gateway \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin gateway \
 && mkdir -p /etc/gateway \
 && python -m compileall -q --invalidation-mode unchecked-hash /usr/local/lib/python3.11

COPY --from=builder /opt/venv /opt/venv

# Bytecode was compiled at build time; nothing is written at run time (read-only root fs).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/tmp \
    GATEWAY_CONFIG=/etc/gateway/gateway.yaml

USER 10001:10001
WORKDIR /tmp

# 8080 main listener, 9901 admin (/healthz /readyz /metrics), 9902 forward-auth (optional).
EXPOSE 8080 9901 9902

# For plain `docker run`; Kubernetes uses the chart's probes instead. The admin listener must be
# reachable inside the container (the default admin.host 127.0.0.1 is).
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9901/healthz', timeout=2).status != 200)"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["gateway"]
CMD ["serve", "--config", "/etc/gateway/gateway.yaml"]
