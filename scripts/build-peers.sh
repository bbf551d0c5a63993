#!/usr/bin/env bash
# Build the peer deblenders that `madness evaluate` compares MADNESS with, from sources you
# have already downloaded (neither is on PyPI; this script downloads no source code):
#
#   SRC_ROOT/scarlet_lite   lsst/scarlet_lite          -> installed into the project's .venv
#   SRC_ROOT/scarlet        pmelchior/scarlet (1.0.x)  -> its own venv, .venv-scarlet
#                                                         (it needs numpy < 2 and autograd 1.6.2)
#
# Usage:  scripts/build-peers.sh SRC_ROOT [scarlet_lite|scarlet ...]   (default: both)
#   e.g.  git clone https://github.com/lsst/scarlet_lite SRC_ROOT/scarlet_lite
#         git clone https://github.com/pmelchior/scarlet SRC_ROOT/scarlet
#
# A git clone gives each package its version from its tags. A source export without .git has
# none: set SCARLET_LITE_VERSION / SCARLET_VERSION (e.g. 0+g6ebf1fc, 1.0.1+g998ca34), or they
# are recorded as 0+unknown / 1.0.1+unknown.
# Environment: MADNESS_VENV (default .venv), MADNESS_SCARLET_VENV (default .venv-scarlet),
# MADNESS_PYTHON (a Python 3.12 for the scarlet venv; default: scripts/find-python.sh).
# Keep SRC_ROOT outside any git repository: scarlet's setup.py asks `git tag` in its folder.
# Idempotent: a peer already installed from the same source tree (same content hash) is skipped.
# Packages from PyPI (build needs, scarlet's dependencies) are installed with pip as usual.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
say() { echo "[build-peers] $*" >&2; }
die() { echo "[build-peers] error: $*" >&2; exit 1; }

[ $# -ge 1 ] || die "usage: scripts/build-peers.sh SRC_ROOT [scarlet_lite|scarlet ...]"
src_root=$(cd "$1" 2>/dev/null && pwd) || die "SRC_ROOT '$1' is not a directory"
shift
peers=("$@")
[ ${#peers[@]} -gt 0 ] || peers=(scarlet_lite scarlet)

cd "$here"
venv=${MADNESS_VENV:-.venv}
scarlet_venv=${MADNESS_SCARLET_VENV:-.venv-scarlet}

# Hash of a source tree's files (not of .git), to skip a rebuild of the same sources.
tree_hash() {
  (cd "$1" && find . -path ./.git -prune -o -path ./build -prune -o -path ./tmp -prune -o -name '*.egg-info' -prune \
     -o -name _version.txt -prune -o -name PKG-INFO -prune -o -name '_version.py' -prune \
     -o -name 'version.py' -path '*/lite/version.py' -prune \
     -o -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
}
git_commit() { git -C "$1" rev-parse --short=7 HEAD 2>/dev/null || true; }

build_scarlet_lite() {
  local src="$src_root/scarlet_lite"
  [ -f "$src/pyproject.toml" ] && [ -d "$src/python/lsst/scarlet/lite" ] \
    || die "$src is not a scarlet_lite source tree (expected pyproject.toml and python/lsst/scarlet/lite)"
  [ -x "$venv/bin/python" ] || die "$venv does not exist: run scripts/setup-env.sh first"
  local stamp="$venv/.scarlet_lite-built" want
  want=$(tree_hash "$src")
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
     && "$venv/bin/python" -c 'import lsst.scarlet.lite' 2>/dev/null; then
    say "scarlet_lite: already built from these sources ($venv), nothing to do"
    return
  fi
  local pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
  say "scarlet_lite: build needs into $venv (pinned by requirements/constraints.txt)"
  "${pip[@]}" install -c requirements/constraints.txt numpy scipy pybind11 peigen pydantic Deprecated \
    lsst-versions setuptools wheel
  if [ ! -d "$src/.git" ] && [ ! -f "$src/PKG-INFO" ]; then
    # lsst-versions reads the version from git tags, else from PKG-INFO.
    local v=${SCARLET_LITE_VERSION:-0+unknown}
    say "scarlet_lite: no .git in $src; recording version $v in its PKG-INFO"
    printf 'Metadata-Version: 2.1\nName: lsst-scarlet-lite\nVersion: %s\n' "$v" > "$src/PKG-INFO"
  fi
  say "scarlet_lite: compiling and installing $src (about a minute)"
  local t0=$SECONDS
  "${pip[@]}" install -c requirements/constraints.txt --no-build-isolation --no-deps "$src"
  "$venv/bin/python" -c 'import lsst.scarlet.lite as s; print("[build-peers] scarlet_lite", s.__version__, "imports")' >&2
  echo "$want" > "$stamp"
  say "scarlet_lite: done in $((SECONDS - t0)) s"
}

build_scarlet() {
  local src="$src_root/scarlet"
  [ -f "$src/setup.py" ] && [ -f "$src/scarlet/operators_pybind11.cc" ] \
    || die "$src is not a pmelchior/scarlet source tree (expected setup.py and scarlet/operators_pybind11.cc)"
  local stamp="$scarlet_venv/.scarlet-built" want
  want=$(tree_hash "$src")
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
     && "$scarlet_venv/bin/python" -c 'import scarlet' 2>/dev/null; then
    say "scarlet: already built from these sources ($scarlet_venv), nothing to do"
    return
  fi
  if [ ! -x "$scarlet_venv/bin/python" ]; then
    local py
    py=$(scripts/find-python.sh) || die "no Python 3.12 for $scarlet_venv (see the message above)"
    say "scarlet: creating $scarlet_venv with $py"
    "$py" -m venv "$scarlet_venv"
  fi
  local pip=("$scarlet_venv/bin/python" -m pip --disable-pip-version-check -q)
  say "scarlet: dependencies into $scarlet_venv (numpy < 2, autograd 1.6.2)"
  "${pip[@]}" install --upgrade pip setuptools wheel
  "${pip[@]}" install numpy==1.26.4 autograd==1.6.2 scipy==1.13.1 astropy==6.1.7 proxmin==0.6.12 \
    matplotlib==3.9.4 pybind11==2.13.6 peigen==0.0.9
  if [ ! -d "$src/.git" ] && [ ! -f "$src/_version.txt" ]; then
    # setup.py takes the version from `git tag`, else from _version.txt.
    local v=${SCARLET_VERSION:-1.0.1+unknown}
    say "scarlet: no .git in $src; recording version $v in its _version.txt"
    printf '%s' "$v" > "$src/_version.txt"
  fi
  local pybind11_dir eigen_dir
  pybind11_dir=$("$scarlet_venv/bin/python" -c 'import os, pybind11; print(os.path.dirname(pybind11.get_include()))')
  eigen_dir=$("$scarlet_venv/bin/python" -c 'import os, peigen; print(os.path.dirname(peigen.header_path))')
  [ -d "$pybind11_dir/include/pybind11" ] || die "pybind11 headers not found under $pybind11_dir/include"
  [ -d "$eigen_dir/include/Eigen" ] || die "Eigen headers not found under $eigen_dir/include"
  say "scarlet: compiling and installing $src (PYBIND11_DIR=$pybind11_dir EIGEN_DIR=$eigen_dir)"
  local t0=$SECONDS
  PYBIND11_DIR=$pybind11_dir EIGEN_DIR=$eigen_dir \
    "${pip[@]}" install --no-build-isolation --no-deps "$src"
  local spy
  spy=$(cd "$scarlet_venv" && pwd)/bin/python
  (cd / && "$spy" -c \
     'import scarlet, numpy, autograd; print("[build-peers] scarlet", scarlet.__version__, "imports (numpy", numpy.__version__ + ")")' >&2) \
    || die "scarlet was installed but does not import in $scarlet_venv"
  echo "$want" > "$stamp"
  say "scarlet: done in $((SECONDS - t0)) s; madness evaluate uses $scarlet_venv/bin/python" \
      "(or \$MADNESS_SCARLET_PYTHON)"
}

for peer in "${peers[@]}"; do
  case "$peer" in
    scarlet_lite) build_scarlet_lite ;;
    scarlet) build_scarlet ;;
    *) die "unknown peer '$peer' (scarlet_lite or scarlet)" ;;
  esac
done
