#!/bin/sh
# Creates the database for MLflow's basic-auth users beside the tracking database, so that
# MLFLOW_AUTH=true needs no manual step. The postgres image runs this once, from
# /docker-entrypoint-initdb.d, when its volume is empty; on a volume made before this script
# existed, run it by hand: docker compose exec postgres sh /docker-entrypoint-initdb.d/10-mlflow-auth-db.sh
#
# Environment: POSTGRES_USER, POSTGRES_DB (the image's own), MLFLOW_AUTH_DB (default mlflow_auth).
# Running it again changes nothing. (No `set -u`: the image sources, rather than runs, a script
# that lost its executable bit, and that would leak into its entrypoint.)
set -e

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    --set auth_db="${MLFLOW_AUTH_DB:-mlflow_auth}" <<'SQL'
SELECT format('CREATE DATABASE %I OWNER %I', :'auth_db', current_user)
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'auth_db')
\gexec
SQL
