# Redis from Debian (7.0 on bookworm) with docker/redis.conf: AOF, appendfsync always, noeviction.
# Build from the repository root: podman build -f docker/redis.Dockerfile -t axiom-cdc-redis .
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /data && chown redis:redis /data
COPY docker/redis.conf /etc/redis/axiom-cdc.conf
USER redis
WORKDIR /data
EXPOSE 6379
HEALTHCHECK --interval=2s --timeout=3s --retries=30 CMD ["redis-cli", "ping"]
ENTRYPOINT ["redis-server", "/etc/redis/axiom-cdc.conf"]
