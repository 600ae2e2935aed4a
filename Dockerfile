# rollout-proxy container image.
#
#   docker build -t rollout-proxy:0.1.0 .
#   docker run --rm -p 8080:8080 -v "$PWD/config:/etc/rollout:ro" rollout-proxy:0.1.0
#
# Mount a directory (not a single file) at /etc/rollout so live reload sees edits made on
# the host or by Kubernetes (see deploy/kubernetes/). Stop with `docker stop -t 45`: on
# SIGTERM the proxy drains requests in flight for up to timeouts.total (30 s), longer than
# Docker's default 10 s.

# ---- build: a virtualenv with the dependencies, then the package itself ----------------
FROM python:3.11-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, from pyproject.toml alone: this layer is rebuilt only when
# pyproject.toml changes, not on every source edit.
COPY pyproject.toml ./
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; open('requirements.txt', 'w').write('\n'.join(deps) + '\n')" \
    && pip install --no-cache-dir -r requirements.txt

# Then the package, without touching the dependencies installed above.
COPY README.md ./
COPY proxy/ proxy/
RUN pip install --no-cache-dir --no-deps . \
    && rollout --help >/dev/null

# ---- runtime: the virtualenv, a default config, an unprivileged user -------------------
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    ROLLOUT_HEALTHCHECK_URL=http://127.0.0.1:9180/-/healthz

RUN groupadd --system --gid 10001 rollout \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin rollout

COPY --from=build /opt/venv /opt/venv
# A default configuration (admin on loopback); mount your own directory over /etc/rollout.
COPY config/rollout.yaml /etc/rollout/rollout.yaml

USER 10001:10001
WORKDIR /tmp

# 8080: public traffic; 9180: admin listener (/metrics, /-/healthz, /-/ready, /-/status).
# The default config binds admin to 127.0.0.1, which the HEALTHCHECK below (run inside the
# container) reaches; set admin.host: 0.0.0.0 to publish 9180 (see deploy/kubernetes/).
EXPOSE 8080 9180

# No curl in slim images: Python's urllib. Non-2xx or no answer raises, so exit 1 = unhealthy.
# If the config moves the admin listener, set ROLLOUT_HEALTHCHECK_URL to match. With
# admin.token set, /-/healthz needs the token too and this check reports unhealthy.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['ROLLOUT_HEALTHCHECK_URL'], timeout=2)"]

# Exec form: `rollout` is PID 1 and receives SIGTERM itself (graceful drain, exit 0).
ENTRYPOINT ["rollout"]
CMD ["serve", "-c", "/etc/rollout/rollout.yaml"]
