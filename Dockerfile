# The mixing service: a slim CPU image without torch (numpy, onnxruntime and the web stack only).
#
#   docker build -t mixagent .
#   docker run -p 8000:8000 -v mixagent-data:/data -e MIXAGENT_TOKENS=change-me mixagent
#
# Without a Docker engine, buildah builds and runs it (see tests/service/server/test_container.py):
#   buildah --storage-driver vfs bud --isolation chroot --network host --format docker \
#     --build-arg BASE_IMAGE=localhost/debian-python:bookworm -t mixagent .
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# A CA bundle for pip behind a TLS-intercepting proxy (mount it and pass its path); empty: none.
ARG PIP_CERT=

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    MIXAGENT_ENVIRONMENT=production \
    MIXAGENT_HOST=0.0.0.0 \
    MIXAGENT_PORT=8000 \
    MIXAGENT_DATABASE_URL=sqlite:////data/mixagent.db

RUN useradd --system --uid 10001 --user-group --home-dir /data --create-home --shell /usr/sbin/nologin mixagent

WORKDIR /src
COPY pyproject.toml README.md ./
COPY mixagent ./mixagent
COPY env ./env
COPY trajectories ./trajectories
COPY agent ./agent
COPY service ./service
COPY configs ./configs
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install ${PIP_CERT:+--cert "$PIP_CERT"} ".[service]" \
    && /opt/venv/bin/python -c "import importlib.util as u; assert u.find_spec('torch') is None, 'torch in the serving image'" \
    && rm -rf /src/build /src/*.egg-info

USER mixagent
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('MIXAGENT_PORT', '8000'), timeout=2)"]
CMD ["mixagent", "serve"]
