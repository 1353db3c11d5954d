#!/bin/sh
# The one definition of how the tracking server starts: compose runs it in the mlflow image and
# the integration tests run it on this machine, so both get the same flags.
#
#   mlflow-server.sh upgrade   create or migrate the schemas once, before any server starts
#   mlflow-server.sh serve     run the tracking server (proxied artifacts, Host header check)
#
# Environment:
#   MLFLOW_BACKEND_STORE_URI      postgresql+psycopg2://user@host:5432/db (required), without a
#                                 password: libpq reads that from PGPASSWORD
#   PGPASSWORD                    the database password (or none, where the database trusts)
#   MLFLOW_ARTIFACTS_DESTINATION  s3://bucket/prefix (required for serve)
#   MLFLOW_S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY   the S3 API (MinIO)
#   MLFLOW_HOST (0.0.0.0), MLFLOW_PORT (5000), MLFLOW_WORKERS (2)
#   MLFLOW_SERVER_ENABLE_JOB_EXECUTION (false: no GenAI job runner, which nothing here uses)
#   MLFLOW_EXPOSED_ON             where others reach the server (default MLFLOW_HOST); compose
#                                 sets the host address it publishes the port on. Anything but
#                                 loopback needs MLFLOW_AUTH=true.
#   MLFLOW_SERVER_ALLOWED_HOSTS   Host headers admitted (default: the service name and localhost)
#   MLFLOW_AUTH                   true to require basic auth; then also
#     MLFLOW_AUTH_DATABASE_URI (no password either), MLFLOW_AUTH_ADMIN_PASSWORD,
#     MLFLOW_FLASK_SERVER_SECRET_KEY
#
# No secret goes on a command line, where `ps` shows it to every user of the machine: passwords
# stay in the environment (PGPASSWORD, and the auth app reads MLFLOW_AUTH_ADMIN_PASSWORD and
# MLFLOW_FLASK_SERVER_SECRET_KEY itself), and the auth config file holds none.
set -eu

# Whatever the script or the server writes is this user's alone.
umask 077

# Refuses a database URI with a password in it: it would reach a command line.
refuse_password() {
    authority=${2#*://}
    authority=${authority%%/*}
    case "$authority" in
    *@*)
        case "${authority%@*}" in
        *:*)
            echo "mlflow-server.sh: $1 holds a password, which \`ps\` would show to every user:" \
                "leave it out of the URI and set PGPASSWORD instead" >&2
            exit 2
            ;;
        esac
        ;;
    esac
}

loopback() {
    case "$1" in
    127.* | localhost | ::1 | "[::1]") return 0 ;;
    *) return 1 ;;
    esac
}

: "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI, e.g. postgresql+psycopg2://mlflow@postgres:5432/mlflow (the password goes in PGPASSWORD)}"
refuse_password MLFLOW_BACKEND_STORE_URI "$MLFLOW_BACKEND_STORE_URI"
if [ "${MLFLOW_AUTH:-false}" = "true" ]; then
    : "${MLFLOW_AUTH_DATABASE_URI:?set MLFLOW_AUTH_DATABASE_URI (a database for users) when MLFLOW_AUTH=true}"
    refuse_password MLFLOW_AUTH_DATABASE_URI "$MLFLOW_AUTH_DATABASE_URI"
fi

case "${1:-serve}" in
upgrade)
    mlflow db upgrade "$MLFLOW_BACKEND_STORE_URI"
    if [ "${MLFLOW_AUTH:-false}" = "true" ]; then
        # The user store too: several workers racing on an empty database can fail.
        python -m mlflow.server.auth db upgrade --url "$MLFLOW_AUTH_DATABASE_URI"
    fi
    ;;
serve)
    : "${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION, e.g. s3://mlflow}"
    exposed="${MLFLOW_EXPOSED_ON:-${MLFLOW_HOST:-0.0.0.0}}"
    if [ "${MLFLOW_AUTH:-false}" != "true" ] && ! loopback "$exposed"; then
        echo "mlflow-server.sh: refusing to serve on $exposed without authentication: anyone" \
            "who reaches it could read, change and delete every run and model. Turn auth on" \
            "(MLFLOW_AUTH=true, with MLFLOW_AUTH_ADMIN_PASSWORD and" \
            "MLFLOW_FLASK_SERVER_SECRET_KEY), or keep it on 127.0.0.1 (MLFLOW_UI_BIND)" >&2
        exit 2
    fi
    port="${MLFLOW_PORT:-5000}"
    allowed="${MLFLOW_SERVER_ALLOWED_HOSTS:-mlflow,mlflow:$port,localhost,localhost:*,127.0.0.1,127.0.0.1:*}"
    # The backend store URI reaches the server through MLFLOW_BACKEND_STORE_URI, which
    # `mlflow server` reads for --backend-store-uri.
    set -- server \
        --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" \
        --serve-artifacts \
        --host "${MLFLOW_HOST:-0.0.0.0}" \
        --port "$port" \
        --workers "${MLFLOW_WORKERS:-2}" \
        --allowed-hosts "$allowed"
    if [ "${MLFLOW_AUTH:-false}" = "true" ]; then
        : "${MLFLOW_AUTH_ADMIN_PASSWORD:?set MLFLOW_AUTH_ADMIN_PASSWORD when MLFLOW_AUTH=true}"
        : "${MLFLOW_FLASK_SERVER_SECRET_KEY:?set MLFLOW_FLASK_SERVER_SECRET_KEY when MLFLOW_AUTH=true}"
        # A fresh file (mktemp: mode 600, never an existing file or link) with no secret in it.
        config=$(mktemp "${TMPDIR:-/tmp}/mlflow-basic-auth.XXXXXX")
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
    # MLflow 3.17 starts a job runner and seven worker processes for its GenAI jobs, which
    # burn ~20 s of CPU at start and then keep polling; no part of this pipeline uses them.
    # MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true turns them back on.
    export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
    exec mlflow "$@"
    ;;
*)
    echo "usage: mlflow-server.sh [upgrade|serve]" >&2
    exit 2
    ;;
esac
