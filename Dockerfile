# syntax=docker/dockerfile:1.7
# The platform image: Airflow's components, MLflow's server and the mlwp CLI, from uv.lock.
# The serving service has its own, Airflow-free image: serving/Dockerfile.
#
# Runs both in docker-compose.yaml and under the official apache-airflow Helm chart, so it keeps
# that chart's conventions (docs/deploy.md): user 50000 in group 0 (the chart's default
# securityContext), AIRFLOW_HOME=/opt/airflow writable by group 0 (any uid in group 0 works, as
# on OpenShift), and no entrypoint logic of its own: the chart's `bash -c "exec airflow ..."`
# arguments and compose's commands run as given, under tini, which reaps zombies and forwards
# signals. The base stays python:3.11-slim (not apache/airflow): every Python package comes from
# uv.lock, so the image runs exactly what the tests ran.
ARG PYTHON_VERSION=3.11

FROM ghcr.io/astral-sh/uv:0.9 AS uv

FROM python:${PYTHON_VERSION}-slim-bookworm
COPY --from=uv /uv /usr/local/bin/uv
# curl: healthchecks; git: Airflow's Git DAG bundle (charts/airflow-values-git-bundle.yaml);
# libgomp1: XGBoost; tini: PID 1. A C compiler: batch prediction's tasks compile the model's
# trees to C as serving does (mlwp.model.native_trees, cached under MLWP_HOME/native-trees),
# the same outputs bit for bit in about half XGBoost's time per row on the benchmark's model
# (docs/scale.md). It adds about 180 MB; `--build-arg TREES_COMPILER=` leaves it out, and the
# tasks then score with XGBoost's predictor.
ARG TREES_COMPILER="gcc libc6-dev"
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl git libgomp1 tini ${TREES_COMPILER} \
    && rm -rf /var/lib/apt/lists/*

ENV UV_PROJECT_ENVIRONMENT=/opt/venv UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
WORKDIR /opt/mlwp/app
# Dependencies first (cached while only code changes), from the lockfile only.
COPY pyproject.toml uv.lock README.md ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-install-project --no-default-groups --group platform
COPY mlwp/ mlwp/
COPY operators/ operators/
COPY serving/ serving/
COPY plugins/ plugins/
COPY dags/ dags/
COPY expectations/ expectations/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-default-groups --group platform
# The project is installed editable (its code stays here), which UV_COMPILE_BYTECODE does not
# reach, and the platform user cannot write __pycache__ into this root-owned tree: without
# this step every task process would compile mlwp and operators from source again.
RUN python -m compileall -q mlwp operators serving plugins dags

# The code under /opt/mlwp/app stays root-owned and read-only to the platform user; its state
# (MLWP_HOME), the storage root under it and Airflow's home are the only writable places, and
# volumes mount there (a new volume takes the owner of the folder it first mounts on).
RUN useradd --uid 50000 --gid 0 --home-dir /home/airflow --create-home --shell /bin/bash airflow \
    && mkdir -p /opt/airflow/logs /var/lib/mlwp/storage \
    && chown -R 50000:0 /opt/airflow /var/lib/mlwp \
    && chmod -R g+rwX /opt/airflow /var/lib/mlwp
ENV AIRFLOW_HOME=/opt/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/mlwp/app/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/mlwp/app/plugins \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    MLWP_HOME=/var/lib/mlwp \
    PYTHONPATH=/opt/mlwp/app
USER 50000:0
WORKDIR /opt/airflow
EXPOSE 8080 5000
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["airflow", "version"]
