#!/bin/sh
# Sets MinIO up for the tracking server: compose's one-shot minio-init service runs it in the
# minio/mc image. It makes the artifact bucket and a user that may read, write, list and delete
# that bucket's objects and nothing else; the MLflow server uses that user's keys, never the root
# keys. Running it again changes nothing, except that the user gets MINIO_MLFLOW_PASSWORD anew.
#
# Environment: MINIO_ENDPOINT (http://minio:9000), MINIO_ROOT_USER, MINIO_ROOT_PASSWORD,
#   MINIO_BUCKET, MINIO_MLFLOW_USER, MINIO_MLFLOW_PASSWORD (8 characters or more), and
#   MC_CONFIG_DIR: a folder mc may write its own settings to (the container's user has no home).
#
# No secret goes on a command line, where `ps` on the host shows it to every user: mc reads the
# root keys from MC_HOST_<alias> in its environment, and the new user's secret from its standard
# input, written by `printf`, a shell builtin. The script runs no program but mc (the tests run
# it with nothing else on PATH), so no other process holds a secret in its arguments either.
set -eu

: "${MINIO_ENDPOINT:?set MINIO_ENDPOINT, e.g. http://minio:9000}"
: "${MINIO_ROOT_USER:?set MINIO_ROOT_USER}"
: "${MINIO_ROOT_PASSWORD:?set MINIO_ROOT_PASSWORD}"
: "${MINIO_BUCKET:?set MINIO_BUCKET, e.g. mlflow}"
: "${MINIO_MLFLOW_USER:?set MINIO_MLFLOW_USER (the MLflow server's access key)}"
: "${MINIO_MLFLOW_PASSWORD:?set MINIO_MLFLOW_PASSWORD (the MLflow server's secret key)}"
: "${MC_CONFIG_DIR:?set MC_CONFIG_DIR to a writable folder}"
if [ "$MINIO_MLFLOW_USER" = "$MINIO_ROOT_USER" ]; then
    echo "minio-init.sh: MINIO_MLFLOW_USER must differ from MINIO_ROOT_USER" >&2
    exit 2
fi
# MinIO refuses shorter secret keys, with a less helpful message.
if [ "${#MINIO_MLFLOW_PASSWORD}" -lt 8 ]; then
    echo "minio-init.sh: MINIO_MLFLOW_PASSWORD needs 8 characters or more" >&2
    exit 2
fi

export MC_HOST_stack="${MINIO_ENDPOINT%%://*}://$MINIO_ROOT_USER:$MINIO_ROOT_PASSWORD@${MINIO_ENDPOINT#*://}"
policy="$MINIO_BUCKET-objects"

mc mb --ignore-existing "stack/$MINIO_BUCKET"
# Bucket-level actions on the bucket, object-level ones on its objects; nothing on any other
# bucket, and no admin action.
mc admin policy create stack "$policy" /dev/stdin <<JSON
{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Effect": "Allow",
      "Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
      "Resource": ["arn:aws:s3:::$MINIO_BUCKET"]
    },
    {
      "Effect": "Allow",
      "Action": [
        "s3:GetObject",
        "s3:PutObject",
        "s3:DeleteObject",
        "s3:AbortMultipartUpload",
        "s3:ListMultipartUploadParts"
      ],
      "Resource": ["arn:aws:s3:::$MINIO_BUCKET/*"]
    }
  ]
}
JSON
# With the access key alone as argument, mc reads the secret key from standard input.
printf '%s\n' "$MINIO_MLFLOW_PASSWORD" | mc admin user add stack "$MINIO_MLFLOW_USER"
mc admin policy attach stack "$policy" --user "$MINIO_MLFLOW_USER"
