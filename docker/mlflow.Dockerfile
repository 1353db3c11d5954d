# MLflow tracking server image. compose builds it with docker/ as the build context:
#
#   docker compose build mlflow
#
# Why not the upstream image (ghcr.io/mlflow/mlflow): it carries neither psycopg2 nor boto3, which
# this server needs (metadata in PostgreSQL, artifacts in MinIO over the S3 API), it runs as root,
# and it would not hold docker/mlflow-server.sh, the one definition of the server's flags that
# the integration tests run too. Built here, every piece is pinned: Python, mlflow (within
# pyproject's range, the version the tests run against), psycopg2-binary and boto3.
FROM python:3.12.12-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# [auth]: the basic-auth app needs Flask-WTF for its CSRF checks.
RUN pip install "mlflow[auth]==3.17.2" psycopg2-binary==2.9.13 boto3==1.44.8

COPY mlflow-server.sh /usr/local/bin/mlflow-server.sh
RUN chmod 0755 /usr/local/bin/mlflow-server.sh \
    && groupadd --system --gid 10001 mlflow \
    && useradd --system --uid 10001 --gid 10001 --create-home mlflow

USER 10001:10001
WORKDIR /home/mlflow
EXPOSE 5000

# `serve` runs the tracking server, `upgrade` creates or migrates the schema once (compose's
# mlflow-db-upgrade service); both are configured by environment variables only.
ENTRYPOINT ["/usr/local/bin/mlflow-server.sh"]
CMD ["serve"]
