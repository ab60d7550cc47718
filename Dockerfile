FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY config config
COPY providers providers
COPY registry registry
COPY workers workers
COPY surfaces surfaces
COPY bench bench
RUN pip install --no-cache-dir . && useradd --create-home tender && mkdir -p /var/lib/tender /var/lib/tender-cpus && chown tender /var/lib/tender /var/lib/tender-cpus
USER tender
CMD ["tender", "worker"]
