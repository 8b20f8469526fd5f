# syntax=docker/dockerfile:1
# One image for every streamrec role: `streamrec worker --role trainer|scorer|all`,
# `streamrec train ...`, `streamrec models ...`. Checked offline by tests/deploy/test_dockerfile.py
# (hadolint + targeted assertions); see docs/deploy.md.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- builder: compilers live here only ------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

# LightFM compiles with -march=native unless LIGHTFM_NO_CFLAGS is set: such a wheel crashes
# (SIGILL) on a CPU older than the build machine. Portable code is 15-30% slower, and correct.
ENV LIGHTFM_NO_CFLAGS=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# gcc for the sdists without wheels (lightfm-next); its libgomp gives LightFM its OpenMP module.
# Debian package versions are not pinned: bookworm point releases remove old versions.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY agents ./agents
COPY models ./models
COPY storage ./storage
# Wheels for streamrec and every pinned dependency; the runtime installs them with --no-index.
RUN pip wheel --wheel-dir /wheels .

# --- runtime: no compilers, non-root ----------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

# libgomp1: the OpenMP runtime the LightFM extension links against.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

# A fixed numeric uid/gid so Kubernetes can verify runAsNonRoot. /var/lib/streamrec holds
# Faust's data dir (a volume or emptyDir in deployments); /data is for ratings files.
RUN groupadd --system --gid 10001 streamrec \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/streamrec \
       --no-create-home --shell /usr/sbin/nologin streamrec \
    && mkdir -p /var/lib/streamrec /data \
    && chown 10001:10001 /var/lib/streamrec /data

# The project's own wheel is copied (a content-addressed layer), not only bind-mounted:
# buildah (podman 4.3) does not count a bind mount's content in the cache key of a RUN, so
# an image rebuilt after a code change kept the old code (the container test caught it).
COPY --from=builder /wheels/streamrec-*.whl /tmp/streamrec/
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /tmp/streamrec/streamrec-*.whl \
    && rm -rf /tmp/streamrec

# Container defaults; every STREAMREC_* name is a field of app/settings.py (a test checks).
# Bind the web views on all interfaces; deployments set STREAMREC_WEB_HOST to the address
# other workers reach this one at.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    STREAMREC_WEB_BIND=0.0.0.0 \
    STREAMREC_WEB_PORT=6066 \
    STREAMREC_DATADIR=/var/lib/streamrec/faust

WORKDIR /var/lib/streamrec
USER 10001:10001
EXPOSE 6066

# Only the worker roles serve /health/ (200 when ready, 503 otherwise); one-shot jobs disable
# this check (compose) or ignore it (Kubernetes uses its own probes). urllib, because the slim
# image has no curl; it raises on 503, so the exit code is non-zero. No proxy for loopback.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:%s/health/' % os.environ.get('STREAMREC_WEB_PORT', '6066'), timeout=4)"]

ENTRYPOINT ["streamrec"]
CMD ["worker", "--role", "all"]
