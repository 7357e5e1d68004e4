# reddit-gateway: runs as a non-root user and writes nothing to disk, so the
# container can run with a read-only root filesystem. Configure it with
# GATEWAY_* environment variables and/or a TOML file named by GATEWAY_CONFIG.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip install --no-compile . && rm -rf /app/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin gateway

USER 10001:10001
EXPOSE 4180
HEALTHCHECK --interval=30s --timeout=3s --start-period=5s CMD ["python", "-c", \
    "import os, urllib.request; port = os.environ.get('GATEWAY_SERVER_LISTEN', ':4180').rsplit(':', 1)[1]; urllib.request.urlopen(f'http://127.0.0.1:{port}/oauth2/ping', timeout=2)"]
ENTRYPOINT ["reddit-gateway"]
CMD ["serve"]
