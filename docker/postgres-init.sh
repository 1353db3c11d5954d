#!/bin/sh
# Creates the databases beside the tracking database, so that neither needs a manual step: the
# basic-auth users' (MLFLOW_AUTH=true) and the Optuna studies' of `tune` (its tuner service).
# The postgres image runs this once, from /docker-entrypoint-initdb.d, when its volume is empty;
# on a volume made before this script existed, or before it made the second database, run it
# by hand: docker compose exec postgres sh /docker-entrypoint-initdb.d/10-unet-person-databases.sh
#
# Environment: POSTGRES_USER, POSTGRES_DB (the image's own), MLFLOW_AUTH_DB (default
# mlflow_auth), OPTUNA_DB (default optuna). Both belong to POSTGRES_USER, whose password (.env)
# is the only one. Running it again changes nothing. (No `set -u`: the image sources, rather
# than runs, a script that lost its executable bit, and that would leak into its entrypoint.)
set -e

for database in "${MLFLOW_AUTH_DB:-mlflow_auth}" "${OPTUNA_DB:-optuna}"; do
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
        --set database="$database" <<'SQL'
SELECT format('CREATE DATABASE %I OWNER %I', :'database', current_user)
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'database')
\gexec
SQL
done
