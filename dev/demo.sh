#!/usr/bin/env bash
# The demo command: sets up .venv, starts Kafka and S3, runs `streamrec demo` (arguments,
# e.g. --keep to keep the workers and get the dashboard URL, are passed on), stops the
# services, and exits with the demo's status.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec bash dev/with-services.sh .venv/bin/streamrec demo "$@"
