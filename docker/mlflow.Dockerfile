# The MLflow tracking server: backend store in PostgreSQL, artifacts proxied to MinIO (s3://mlflow).
# Build context: the repository root, so the same lock file pins mlflow's dependencies here as in
# the project's own environment.
FROM python:3.11.13-slim-bookworm

# Same pin as pyproject.toml: the server and the clients in the trainer speak the same MLflow.
ARG MLFLOW_VERSION=3.17.2

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

COPY requirements/lock.txt /tmp/lock.txt
# psycopg2-binary: the PostgreSQL backend store; boto3: the S3 artifact store (MinIO).
RUN pip install -c /tmp/lock.txt "mlflow==${MLFLOW_VERSION}" psycopg2-binary boto3 \
 && rm /tmp/lock.txt \
 && useradd --create-home --uid 10001 --user-group mlflow

USER mlflow
WORKDIR /home/mlflow
EXPOSE 5000
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]
