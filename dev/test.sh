#!/usr/bin/env bash
# The test command: sets up .venv, starts Kafka and S3, runs pytest (arguments are passed
# on), stops the services, and exits with pytest's status.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# The broker gets its SASL_SSL listener too, so the security tests run (and must pass).
export STREAMREC_DEV_KAFKA_SECURE=${STREAMREC_DEV_KAFKA_SECURE:-true}
exec bash dev/with-services.sh .venv/bin/pytest "$@"
