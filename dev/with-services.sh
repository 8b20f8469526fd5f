#!/usr/bin/env bash
# Run a command with the dev services up: bootstrap .venv, `streamrec dev up`, run the
# command, then `streamrec dev down` on any exit -- unless both services were already
# running before, in which case they are left as they were. Exits with the command's status.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash dev/bootstrap.sh
streamrec=.venv/bin/streamrec

if "$streamrec" dev status >/dev/null 2>&1; then
  echo "with-services: dev services already running; leaving them running" >&2
else
  trap '"$streamrec" dev down || true' EXIT
  "$streamrec" dev up
fi

set +e
"$@"
status=$?
set -e
exit "$status"
