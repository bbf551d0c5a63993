#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv with the pinned stack.
# Idempotent: a stamp records the hash of the pin and project files; nothing is reinstalled
# while they are unchanged.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
venv=${MADNESS_VENV:-.venv}
stamp="$venv/.meas_madness-installed"
want=$(cat requirements/constraints.txt requirements/btk.txt pyproject.toml | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/python" ]; then
  exit 0
fi
py=$(scripts/find-python.sh)
echo "[setup-env] creating $venv with $py" >&2
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip setuptools wheel >/dev/null
# The project and its declared dependencies, pinned by the one constraints file.
# compat mode keeps python/ on sys.path so the pkgutil-style `lsst` namespace merges
# with the Rubin middleware's.
"${pip[@]}" install -c requirements/constraints.txt -e ".[test,bps]" --config-settings editable_mode=compat
# BTK declares astropy<7; it works with astropy 8, which the butler needs.
"${pip[@]}" install -c requirements/constraints.txt --no-deps -r requirements/btk.txt
echo "$want" > "$stamp"
echo "[setup-env] ready: $venv" >&2
