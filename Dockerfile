# syntax=docker/dockerfile:1
#
# tokenproxy: build wheels in one stage, install only wheels in a slim final stage.
#
#   docker build -t tokenproxy .
#   docker run --rm -e TOKENPROXY_KEK -v tokenproxy-keys:/keys tokenproxy keys init
#   docker run -e TOKENPROXY_KEK -e DATABASE_URL -v tokenproxy-keys:/keys \
#       -v "$PWD/tokenproxy.toml:/etc/tokenproxy/tokenproxy.toml:ro" -p 8080:8080 tokenproxy
#
# The configuration file is mounted (it is not in the image); secrets come from the
# environment (TOKENPROXY_KEK or --kek-file, DATABASE_URL or the variable
# database.password_env names). The config must listen on 0.0.0.0 inside the container,
# and admin.listen must stay on port 8081 or TOKENPROXY_HEALTHCHECK_URL must follow it.
# tests/test_dockerfile.py checks this file without a Docker engine.

# ---------------------------------------------------------------------------- builder
FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# A compiler only for a dependency that has no wheel for the target platform; none of it
# reaches the final stage.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy

# tokenproxy and every runtime dependency as wheels (no dev or embedded extras).
RUN pip wheel --wheel-dir /wheels .

# ------------------------------------------------------------------------------ final
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/tokenproxy/bin:$PATH \
    TOKENPROXY_KEYS=/keys \
    TOKENPROXY_CONFIG=/etc/tokenproxy/tokenproxy.toml \
    TOKENPROXY_HEALTHCHECK_URL=http://127.0.0.1:8081/healthz

# The user the proxy runs as, and the keys directory it owns (mode 0700: the keystore
# refuses a directory others can write, and key files others can read).
RUN groupadd --system --gid 10001 tokenproxy \
 && useradd --system --uid 10001 --gid tokenproxy --home-dir /var/lib/tokenproxy \
        --create-home --shell /usr/sbin/nologin tokenproxy \
 && install -d -m 0700 -o tokenproxy -g tokenproxy /keys \
 && install -d -m 0755 /etc/tokenproxy

# Wheels only: --no-index, so nothing is built or fetched here. The wheels are mounted
# from the builder for this one step and never become a layer.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m venv --without-pip /opt/tokenproxy \
 && pip --python /opt/tokenproxy/bin/python install --no-index --no-cache-dir \
        --find-links=/wheels tokenproxy \
 && tokenproxy --version

# Every key with its default, for reference; the configuration itself is mounted at
# /etc/tokenproxy/tokenproxy.toml.
COPY tokenproxy.example.toml /etc/tokenproxy/tokenproxy.example.toml

USER tokenproxy:tokenproxy
WORKDIR /var/lib/tokenproxy
VOLUME ["/keys"]

# 8080: the HTTP front end (http.listen); 8081: the admin API (admin.listen);
# 6432: the PostgreSQL front end (pg.listen, with [pg] enabled = true).
EXPOSE 8080 8081 6432

# tokenproxy is PID 1 (exec form, no shell): SIGTERM reaches it and drains (requests in
# flight finish, queued tokens are written); SIGHUP reloads the keyring and the policy.
STOPSIGNAL SIGTERM

# /healthz answers 200 while the event loop runs; python's urllib, so no curl is needed.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(0 if urllib.request.urlopen(os.environ['TOKENPROXY_HEALTHCHECK_URL'], timeout=4).status == 200 else 1)"]

ENTRYPOINT ["tokenproxy"]
CMD ["serve", "--config", "/etc/tokenproxy/tokenproxy.toml"]
