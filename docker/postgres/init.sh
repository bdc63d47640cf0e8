#!/usr/bin/env bash
# One database per service, each owned by its own login role, names and passwords from the
# environment (docker/.env). The postgres image runs this once, on an empty data volume only:
# changing a password in .env later needs `ALTER ROLE ... PASSWORD` or a fresh volume.
# psql variables (:"name" quotes an identifier, :'name' a literal) keep the values out of the SQL.
set -euo pipefail

create_database() {  # create_database <database> <role> <password>
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v db="$1" -v role="$2" -v password="$3" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'password';
CREATE DATABASE :"db" OWNER :"role";
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
SQL
}

create_database dagster "${DAGSTER_DB_USER:?}" "${DAGSTER_DB_PASSWORD:?}"
create_database mlflow "${MLFLOW_DB_USER:?}" "${MLFLOW_DB_PASSWORD:?}"
create_database lakefs "${LAKEFS_DB_USER:?}" "${LAKEFS_DB_PASSWORD:?}"
create_database optuna "${OPTUNA_DB_USER:?}" "${OPTUNA_DB_PASSWORD:?}"  # cd/sweep studies
