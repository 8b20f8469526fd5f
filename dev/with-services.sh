#!/usr/bin/env bash
# Run a command with the dev services up: bootstrap .venv, `streamrec dev up`, run the
# command, then `streamrec dev down` on any exit. If Kafka and S3 already answer at the
# configured addresses (`streamrec dev ping`), they are used and left running instead.
# A leading --secure is passed to `dev up` (the broker gets its SASL_SSL listener).
# Exits with the command's status.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

up_args=()
if [[ "${1:-}" == "--secure" ]]; then
  up_args+=(--secure)
  shift
fi

bash dev/bootstrap.sh
streamrec=.venv/bin/streamrec

if "$streamrec" dev ping >/dev/null 2>&1; then
  echo "with-services: Kafka and S3 already answer; using them and leaving them running" >&2
else
  trap '"$streamrec" dev down || true' EXIT
  "$streamrec" dev up "${up_args[@]}"
fi

set +e
"$@"
status=$?
set -e
exit "$status"
