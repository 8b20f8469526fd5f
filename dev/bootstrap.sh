#!/usr/bin/env bash
# Make .venv ready on a fresh machine: create it with Python 3.11 if missing and install
# streamrec with its test and deploy extras, and the dev tools (dev/pyproject.toml: `import
# devtools`, `streamrec dev`, `streamrec demo`; never in the wheel), both editable; re-install
# whenever either pyproject.toml changes (a hash of both is kept in .venv/.streamrec-installed).
# Shared by dev/test.sh and dev/demo.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python=${PYTHON:-python3.11}
stamp=.venv/.streamrec-installed
want=$(cat pyproject.toml dev/pyproject.toml | sha256sum | cut -d' ' -f1)

if [[ ! -x .venv/bin/python ]]; then
  command -v "$python" >/dev/null || { echo "bootstrap: $python not found (set PYTHON=...)" >&2; exit 1; }
  echo "bootstrap: creating .venv with $("$python" --version)" >&2
  "$python" -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
fi
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  echo "bootstrap: installing streamrec[test,deploy] and the dev tools into .venv" >&2
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test,deploy]' -e ./dev
  echo "$want" >"$stamp"
fi
