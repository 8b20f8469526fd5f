#!/usr/bin/env bash
# The test command: sets up .venv, starts Kafka and S3, runs pytest (arguments are passed
# on), stops the services, and exits with pytest's status.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec bash dev/with-services.sh .venv/bin/pytest "$@"
