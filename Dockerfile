# One image for every labfleet service; the command picks which one runs:
#   docker run labfleet:latest run scheduler      (see docker-compose.yml)
# `labfleet health <service>` is the health check of each container.

# The web UI's htmx, its SSE extension and the API page's Swagger UI come from the npm
# registry, as infra/setup.sh fetches them for a checkout (they are not kept in the
# repository)
FROM node:20-bookworm-slim AS webui
WORKDIR /webui
RUN npm install --no-audit --no-fund --silent htmx.org@2 htmx-ext-sse@2 swagger-ui-dist@5

FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# ssh and git: services reach build servers and lab hosts over SSH and fetch sources
RUN apt-get update \
 && apt-get install -y --no-install-recommends openssh-client git \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml setup.py ./
COPY shared ./shared
COPY cli ./cli
COPY infra ./infra
COPY services ./services
COPY --from=webui /webui/node_modules/htmx.org/dist/htmx.min.js \
     /webui/node_modules/htmx-ext-sse/dist/sse.js \
     /webui/node_modules/swagger-ui-dist/swagger-ui-bundle.js \
     /webui/node_modules/swagger-ui-dist/swagger-ui.css ./services/gateway/static/vendor/
RUN pip install . && rm -rf /src

# a fixed uid:gid: the compose secrets (0600) are given to it with
# `labfleet nats compose-secrets --owner 10001:10001`
RUN groupadd --system --gid 10001 labfleet \
 && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /var/lib/labfleet labfleet
USER labfleet
WORKDIR /var/lib/labfleet
ENV LABFLEET_DATA_DIR=/var/lib/labfleet

ENTRYPOINT ["labfleet"]
CMD ["services"]
