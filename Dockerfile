# syntax=docker/dockerfile:1
# fastecho in a container: docs/deploy.md.
#
#   docker build -t fastecho:0.1.0 .
#   docker run --rm -p 7000:7000/tcp -p 7000:7000/udp -p 8080:8080 -p 9100:9100 fastecho:0.1.0
#
# Two stages: "build" compiles the wheel (C compiler, OpenSSL headers); the
# runtime stage gets only that wheel, installed into a venv, and no compiler.
#
# tests/test_container_steps.py reads this file and runs its commands on the
# host (the wheel build, the install into a fresh venv, ENTRYPOINT + CMD, the
# HEALTHCHECK, STOPSIGNAL); a command it does not know fails that test, so
# teach the test any command added here. BuildKit is needed (RUN --mount),
# as in any current Docker or Podman.

# Pinned by tag: CPython 3.12 on Debian 13 (trixie). The tag moves with
# CPython and Debian patch releases (security fixes) but never to another
# Python minor or Debian release. For reproducible builds pin the digest as
# well (python:3.12-slim-trixie@sha256:...), and update it on purpose.
ARG PYTHON_IMAGE=python:3.12-slim-trixie

FROM ${PYTHON_IMAGE} AS build
# Debian's current packages of the pinned release: their versions change with
# security updates, so they are not pinned (DL3008).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev libssl-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The context is only what the wheel is built from (.dockerignore).
COPY . .
# TLS is required, as in the published wheels: a build that cannot find
# OpenSSL fails instead of leaving TLS out.
ENV SKBUILD_CMAKE_DEFINE=FASTECHO_WITH_TLS=ON \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip wheel --no-deps -w /wheels .

FROM ${PYTHON_IMAGE}
# The image's own libssl3 (CPython's ssl module needs it too) serves the
# wheel, which links the system OpenSSL (no auditwheel repair here).
ENV PATH=/opt/fastecho/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# One layer: the venv with the wheel and its dependencies (from PyPI), a
# check that TLS loads, and the user. The wheel is bind-mounted from the
# build stage, so it is not left in the image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv /opt/fastecho \
    && /opt/fastecho/bin/pip install --no-cache-dir --disable-pip-version-check /wheels/*.whl \
    && /opt/fastecho/bin/python -c "import fastecho._core as c; assert c.TLS_AVAILABLE, 'no TLS'; print(c.TLS_LIBRARY)" \
    && groupadd --system --gid 10001 fastecho \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin fastecho
# Numeric, so that Kubernetes' runAsNonRoot can check it without /etc/passwd.
USER 10001:10001
WORKDIR /
# 7000: TCP and UDP echo; 8080: WebSocket (and the test page at /);
# 9100: Prometheus metrics. TLS (tls://, wss://) needs a certificate mounted
# in; see docs/deploy.md.
EXPOSE 7000/tcp 7000/udp 8080/tcp 9100/tcp
# SIGTERM starts the graceful drain: stop accepting, let connections finish
# for --grace seconds, then close. 20 s fits Kubernetes' default 30 s
# terminationGracePeriodSeconds with a 5 s preStop, and `docker stop -t 30`.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["fastecho", "probe", "tcp://127.0.0.1:7000", "--timeout", "2"]
# Logs go to stderr (no --log-dir), for `docker logs` and kubectl logs.
ENTRYPOINT ["fastecho", "serve"]
CMD ["--listen", "tcp://0.0.0.0:7000", "--listen", "udp://0.0.0.0:7000", "--listen", "ws://0.0.0.0:8080", \
     "--metrics-host", "0.0.0.0", "--metrics-port", "9100", "--grace", "20"]
