#!/bin/sh
# The one definition of how the tracking server starts: compose runs it in the mlflow image and
# the integration tests run it on this machine, so both get the same flags.
#
#   mlflow-server.sh upgrade   create or migrate the schemas once, before any server starts
#   mlflow-server.sh serve     run the tracking server (proxied artifacts, Host header check)
#
# Environment:
#   MLFLOW_BACKEND_STORE_URI      postgresql+psycopg2://user:password@host:5432/db (required)
#   MLFLOW_ARTIFACTS_DESTINATION  s3://bucket/prefix (required for serve)
#   MLFLOW_S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY   the S3 API (MinIO)
#   MLFLOW_HOST (0.0.0.0), MLFLOW_PORT (5000), MLFLOW_WORKERS (2)
#   MLFLOW_SERVER_ALLOWED_HOSTS   Host headers admitted (default: the service name and localhost)
#   MLFLOW_AUTH                   true to require basic auth; then also
#     MLFLOW_AUTH_DATABASE_URI, MLFLOW_AUTH_ADMIN_PASSWORD, MLFLOW_FLASK_SERVER_SECRET_KEY
set -eu

: "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI, e.g. postgresql+psycopg2://mlflow:PASSWORD@postgres:5432/mlflow}"

case "${1:-serve}" in
upgrade)
    mlflow db upgrade "$MLFLOW_BACKEND_STORE_URI"
    if [ "${MLFLOW_AUTH:-false}" = "true" ]; then
        # The user store too: several workers racing on an empty database can fail.
        : "${MLFLOW_AUTH_DATABASE_URI:?set MLFLOW_AUTH_DATABASE_URI (a database for users) when MLFLOW_AUTH=true}"
        python -m mlflow.server.auth db upgrade --url "$MLFLOW_AUTH_DATABASE_URI"
    fi
    ;;
serve)
    : "${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION, e.g. s3://mlflow}"
    port="${MLFLOW_PORT:-5000}"
    allowed="${MLFLOW_SERVER_ALLOWED_HOSTS:-mlflow,mlflow:$port,localhost,localhost:*,127.0.0.1,127.0.0.1:*}"
    set -- server \
        --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
        --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" \
        --serve-artifacts \
        --host "${MLFLOW_HOST:-0.0.0.0}" \
        --port "$port" \
        --workers "${MLFLOW_WORKERS:-2}" \
        --allowed-hosts "$allowed"
    if [ "${MLFLOW_AUTH:-false}" = "true" ]; then
        : "${MLFLOW_AUTH_DATABASE_URI:?set MLFLOW_AUTH_DATABASE_URI (a database for users) when MLFLOW_AUTH=true}"
        : "${MLFLOW_AUTH_ADMIN_PASSWORD:?set MLFLOW_AUTH_ADMIN_PASSWORD when MLFLOW_AUTH=true}"
        : "${MLFLOW_FLASK_SERVER_SECRET_KEY:?set MLFLOW_FLASK_SERVER_SECRET_KEY when MLFLOW_AUTH=true}"
        config="${TMPDIR:-/tmp}/mlflow-basic-auth.ini"
        cat > "$config" <<INI
[mlflow]
default_permission = READ
database_uri = $MLFLOW_AUTH_DATABASE_URI
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
        export MLFLOW_AUTH_CONFIG_PATH="$config"
        set -- "$@" --app-name basic-auth
    fi
    exec mlflow "$@"
    ;;
*)
    echo "usage: mlflow-server.sh [upgrade|serve]" >&2
    exit 2
    ;;
esac
