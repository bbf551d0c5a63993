#!/usr/bin/env bash
# Recreate the git-ignored working data of model development on a new machine, in the places
# doc/training.md and doc/evaluation.md name. Every step is resumable (`madness simulate` keeps
# finished shards) and deterministic (the catalogue fingerprints and fields are the same as on the
# machine that made the documented numbers), so a session that lost its machine reruns this line.
#
#   scripts/work-data.sh [DATA_ROOT] [PART ...]
#
# DATA_ROOT (default ../data) receives the TestFields; the training suite goes to sims/sims-v3 in
# the checkout (as in doc/training.md). PARTs, default train, validation and test:
#   train       sims/sims-v3: 150,000 isolated + 30,000 blended stamps (~25 min on 2 cores, 15 GB)
#   validation  DATA_ROOT/sims-s101 and sims-s101-60: the 20 and 60 validation TestFields of seed 101
#               (model selection)
#   test        DATA_ROOT/sims-s2026b (100 fields, seed 2026), sims-s3030 (20), pop-b/sims-pop-b
#               (20, the other galaxy population): reporting only, never selection
#   peers       scarlet_lite and classic scarlet from their public sources into DATA_ROOT/../peers
#               (scripts/build-peers.sh; needs network access to github.com)
#   evaluation  DATA_ROOT/eval-s2026b, eval-s3030, pop-b/eval-pop-b: every method on each test set
#               with the packaged model (after test and peers; ~26 + 2 x 6 min alone on 2 cores),
#               so that a new model is compared
#               with the stored peers by `madness evaluate --output COPY --bundle NEW --rerun madness
#               vae_deblender` on a copy (doc/evaluation.md)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
root=${1:-../data}
shift || true
parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(train validation test)
mkdir -p "$root"
root=$(cd "$root" && pwd)
scripts/setup-env.sh
madness=("$here/.venv/bin/madness")

log() { echo "[work-data] $(date -u +%H:%M:%S) $*" >&2; }

for part in "${parts[@]}"; do
  case "$part" in
    train)
      log "sims/sims-v3 (isolated, then blended)"
      "${madness[@]}" simulate datasets --output sims/sims-v3 --area 1.0 --seed 1 --kinds isolated \
        --n-train 150000 --n-validation 2000 --workers 2
      "${madness[@]}" simulate datasets --output sims/sims-v3 --area 1.0 --seed 1 --kinds blended \
        --n-train 150000 --n-train-blended 30000 --n-validation 2000 --workers 2
      ;;
    validation)
      log "$root/sims-s101 (20 validation TestFields)"
      "${madness[@]}" simulate datasets --output "$root/sims-s101" --area 0.01 --seed 101 --kinds testfields \
        --n-test-fields 20
      # 60 more validation fields (other fields from the same catalogue; stop 37's selection set)
      "${madness[@]}" simulate datasets --output "$root/sims-s101-60" --area 0.01 --seed 101 --kinds testfields \
        --n-test-fields 60
      ;;
    test)
      log "$root/sims-s2026b, sims-s3030, pop-b (test TestFields)"
      "${madness[@]}" simulate datasets --output "$root/sims-s2026b" --area 0.02 --seed 2026 --kinds testfields \
        --n-test-fields 100
      "${madness[@]}" simulate datasets --output "$root/sims-s3030" --area 0.01 --seed 3030 --kinds testfields \
        --n-test-fields 20
      mkdir -p "$root/pop-b"
      [ -f "$root/pop-b/catalog-pop-b.fits" ] || "${madness[@]}" simulate catalog --area 0.03 --seed 4040 \
        --output "$root/pop-b/catalog-pop-b.fits" --param size_scale=1.2 \
        --param "blue_ellipticity=(0.4, 3.5)" --param "blue_bulge_fraction=(0.3, 1.2, 6.0)" \
        --param "red_bulge_fraction=(0.6, 5.0, 1.5)"
      "${madness[@]}" simulate datasets --output "$root/pop-b/sims-pop-b" --catalog "$root/pop-b/catalog-pop-b.fits" \
        --seed 4040 --kinds testfields --n-test-fields 20
      ;;
    peers)
      src=$(dirname "$root")/peers
      mkdir -p "$src"
      [ -d "$src/scarlet_lite" ] || git clone -q https://github.com/lsst/scarlet_lite "$src/scarlet_lite"
      [ -d "$src/scarlet" ] || git clone -q https://github.com/pmelchior/scarlet "$src/scarlet"
      (cd "$src/scarlet_lite" && git checkout -q 6ebf1fc)
      (cd "$src/scarlet" && git checkout -q 998ca34)
      scripts/build-peers.sh "$src"
      ;;
    evaluation)
      log "$root/eval-s2026b, eval-s3030, pop-b/eval-pop-b (every method on each test set)"
      "${madness[@]}" evaluate --fields "$root/sims-s2026b/testfields-test" --output "$root/eval-s2026b" --no-figures
      "${madness[@]}" evaluate --fields "$root/sims-s3030/testfields-test" --output "$root/eval-s3030" --no-figures
      "${madness[@]}" evaluate --fields "$root/pop-b/sims-pop-b/testfields-test" --output "$root/pop-b/eval-pop-b" \
        --no-figures
      ;;
    *)
      echo "unknown part '$part' (train, validation, test, peers, evaluation)" >&2
      exit 2
      ;;
  esac
done
log "done: ${parts[*]}"
