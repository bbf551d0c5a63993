#!/usr/bin/env bash
# Print the path of a Python 3.12 interpreter, or explain how to get one and fail.
# Order: $MADNESS_PYTHON, python3.12 on PATH (if it really runs), pyenv's 3.12.x, python3 if it is 3.12.
set -u
is312() { "$1" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 12) else 1)' >/dev/null 2>&1; }
cands=()
[ -n "${MADNESS_PYTHON:-}" ] && cands+=("$MADNESS_PYTHON")
command -v python3.12 >/dev/null 2>&1 && cands+=("$(command -v python3.12)")
if command -v pyenv >/dev/null 2>&1; then
  root=$(pyenv root 2>/dev/null)
  for v in $(ls -1 "$root/versions" 2>/dev/null | grep -E '^3\.12(\.[0-9]+)?$' | sort -t. -k3 -n -r); do
    cands+=("$root/versions/$v/bin/python3.12")
  done
fi
for p in /usr/bin/python3.12 /usr/local/bin/python3.12; do [ -x "$p" ] && cands+=("$p"); done
command -v python3 >/dev/null 2>&1 && cands+=("$(command -v python3)")
for c in "${cands[@]}"; do
  if is312 "$c"; then echo "$c"; exit 0; fi
done
cat >&2 <<'MSG'
meas_madness needs Python 3.12 (lsst-pipe-base and lsst-images refuse 3.11; TensorFlow 2.21 has no 3.14 wheels).
None was found. Either
  - install it with pyenv:   pyenv install 3.12   (then re-run), or
  - point to one:            MADNESS_PYTHON=/path/to/python3.12 make test
MSG
exit 1
