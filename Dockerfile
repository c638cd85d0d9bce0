# The platform image (Airflow components, MLflow, the mlwp CLI) used by docker-compose.yaml.
# The serving service has its own, smaller image: serving/Dockerfile.
FROM python:3.11-slim-bookworm

COPY --from=ghcr.io/astral-sh/uv:0.9 /uv /usr/local/bin/uv
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl libgomp1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/mlwp/app
ENV UV_PROJECT_ENVIRONMENT=/opt/venv UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy \
    PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
# Dependencies first (cached while only code changes), from the lockfile only.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-install-project --no-default-groups --group platform
COPY mlwp/ mlwp/
COPY operators/ operators/
COPY serving/ serving/
COPY plugins/ plugins/
COPY dags/ dags/
COPY expectations/ expectations/
RUN uv sync --frozen --no-default-groups --group platform

RUN useradd --create-home --uid 50000 mlwp && mkdir -p /opt/mlwp && chown mlwp /opt/mlwp
USER mlwp
ENV PYTHONPATH=/opt/mlwp/app
