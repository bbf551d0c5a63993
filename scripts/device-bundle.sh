#!/bin/bash
# Put back together the bundle of a decoder trained on a GPU machine by scripts/device-train.sh.
#
# The device returns the new decoder's weights, the bundle's metadata and the sha256 of every
# network file it wrote; the other networks (encoder, flow, VAE-deblender) are the packaged
# model's, which a --freeze-encoder run keeps bit for bit. This copies the packaged bundle, puts
# the returned files in, and checks every network file against the device's checksums, so a
# bundle whose networks differ from what was trained is refused rather than assembled.
#
#     scripts/device-bundle.sh FILES_AT RUN_DIR      # writes RUN_DIR/bundle, RUN_DIR/logs/vae.csv
set -euo pipefail
FILES=${1:?usage: device-bundle.sh FILES_AT RUN_DIR}
RUN=${2:?usage: device-bundle.sh FILES_AT RUN_DIR}
PACKAGED=python/lsst/meas/madness/data/bundles/lsst-default
for f in bundle.json bundle.sha256 config.json; do
    [ -f "$FILES/$f" ] || { echo "device-bundle: $FILES/$f is missing (did the training finish?)" >&2; exit 1; }
done
ls "$FILES"/decoder.weights.*.npz > /dev/null 2>&1 || { echo "device-bundle: no decoder weights in $FILES" >&2; exit 1; }
if [ -e "$RUN/bundle" ]; then
    echo "device-bundle: $RUN/bundle exists; choose another run directory" >&2
    exit 1
fi
TMP=$(mktemp -d "${RUN%/}.bundle.XXXX")
trap 'rm -rf "$TMP"' EXIT
cp "$PACKAGED"/*.npz "$TMP/"
rm -f "$TMP"/decoder.weights.*.npz
cp "$FILES"/decoder.weights.*.npz "$FILES/bundle.json" "$TMP/"
# The checksums name the device's paths: compare by file name.
while read -r sum path; do
    name=$(basename "$path")
    [ -f "$TMP/$name" ] || { echo "device-bundle: the device wrote $name, which is not here" >&2; exit 1; }
    here=$(sha256sum "$TMP/$name" | cut -d' ' -f1)
    [ "$here" = "$sum" ] || { echo "device-bundle: $name differs from the device's (not the packaged parent's?)" >&2; exit 1; }
done < "$FILES/bundle.sha256"
[ "$(ls "$TMP"/*.npz | wc -l)" = "$(wc -l < "$FILES/bundle.sha256")" ] \
    || { echo "device-bundle: the device's bundle had other network files than the packaged one" >&2; exit 1; }
mkdir -p "$RUN/logs"
cp "$FILES/config.json" "$RUN/"
[ -f "$FILES/vae.csv" ] && cp "$FILES/vae.csv" "$RUN/logs/"
mv "$TMP" "$RUN/bundle"
trap - EXIT
echo "device-bundle: $RUN/bundle (networks checked against the device's checksums)"
