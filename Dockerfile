# reddit-gateway: runs as a non-root user and writes nothing to disk, so the
# container can run with a read-only root filesystem. Configure it with
# GATEWAY_* environment variables and/or a TOML file named by GATEWAY_CONFIG.
FROM python:3.12-slim

# No .pyc written at run time (they are compiled at install, below), no pip cache.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip install ".[uvloop]" && rm -rf /app/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin gateway

USER 10001:10001
EXPOSE 4180
# Probes /oauth2/ping on the port the gateway listens on, read from the same
# configuration (GATEWAY_SERVER_LISTEN, or server.listen in GATEWAY_CONFIG).
HEALTHCHECK --interval=30s --timeout=3s --start-period=5s \
    CMD ["python", "-m", "gateway.healthcheck"]
ENTRYPOINT ["reddit-gateway"]
CMD ["serve"]
