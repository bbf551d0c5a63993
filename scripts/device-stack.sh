#!/bin/bash
# Pack the simulation stack a bare GPU machine lacks into one small archive.
#
# A lent GPU machine (doc/training.md, "Training throughput") has numpy, scipy, JAX, matplotlib,
# h5py, scikit-image, tqdm, PyYAML and networkx but not GalSim, BTK, astropy or SkyPy, cannot
# reach a package index, and receives at most 64 MiB of working tree (the repository itself is
# ~45 MiB). The wheels alone are ~70 MB (GalSim's 56 MB: its extension module carries its debug
# symbols, 190 MB installed, 4.8 MB stripped), so this script copies the packages installed in
# the project environment (the versions pinned in requirements/constraints.txt), strips the debug symbols of
# their extension modules, drops tests and caches, and writes an xz tarball to unpack on the
# device into a directory on PYTHONPATH:
#
#     scripts/device-stack.sh [SITE_PACKAGES] [OUTPUT]      # default: .venv's, .devstack/stack.tar.xz
#     # on the device:  mkdir -p /tmp/site && tar -xJf .devstack/stack.tar.xz -C /tmp/site
#
# Keras (not installed there either) travels as wheels beside it (.whl, doc/benchmarks.md).
set -euo pipefail
SITE=${1:-$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')}
OUTPUT=${2:-.devstack/stack.tar.xz}
# import name, then the metadata directory pattern, of every package the simulation needs there
PACKAGES=(galsim galsim.libs coord fast3tree btk surveycodex astropy astropy_iers_data erfa skypy speclite
          "sep.cpython-*.so")
META=("galsim-*.dist-info" "lsstdesc_coord-*.dist-info" "fast3tree-*.dist-info" "blending_toolkit-*.dist-info"
      "surveycodex-*.dist-info" "astropy-*.dist-info" "astropy_iers_data-*.dist-info" "pyerfa-*.dist-info"
      "skypy-*.dist-info" "speclite-*.dist-info" "sep-*.dist-info")
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
for item in "${PACKAGES[@]}" "${META[@]}"; do
    found=0
    for path in "$SITE"/$item; do
        [ -e "$path" ] || continue
        cp -a "$path" "$WORK/"
        found=1
    done
    if [ $found = 0 ]; then
        echo "device-stack: $item is not installed in $SITE" >&2
        exit 1
    fi
done
# astropy imports its own astropy.tests (the test runner) at import time; no other tests are needed
find "$WORK" -depth \( -name __pycache__ -o \( -name tests ! -path "$WORK/astropy/tests" \) -o -name "*.pyc" \) \
    -exec rm -rf {} +
find "$WORK" -name "*.so*" -type f -exec strip --strip-debug {} +
mkdir -p "$(dirname "$OUTPUT")"
tar -C "$WORK" -cf - . | xz -T0 -9 > "$OUTPUT.tmp"
mv "$OUTPUT.tmp" "$OUTPUT"
echo "device-stack: $OUTPUT, $(du -h "$OUTPUT" | cut -f1) ($(du -sh "$WORK" | cut -f1) unpacked)"
