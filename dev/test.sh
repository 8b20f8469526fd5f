#!/usr/bin/env bash
# The test command: sets up .venv, starts Kafka and S3, runs pytest (arguments are passed
# on), stops the services, and exits with pytest's status.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# The broker gets its SASL_SSL listener too, so tests/integration/security runs. (Only the
# started broker: brokers that tests start themselves stay plaintext-only.)
exec bash dev/with-services.sh --secure .venv/bin/pytest "$@"
