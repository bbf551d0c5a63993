#!/bin/bash
# Continue the packaged model's decoder on a lent GPU machine, from a bare start.
#
# The machine (doc/training.md, "Training throughput") trains the paper-size VAE ~136x faster
# than 2 CPU cores, but it has no simulation stack, no data, 15 minutes of device time a session
# and returns at most 8 files of 16 MiB. So this script, run there from the repository root:
#   1. installs Keras (.whl) and the packed simulation stack (.devstack/stack.tar.xz, made here by
#      scripts/device-stack.sh) into /tmp/site;
#   2. simulates the isolated training and validation stamps on every core (seeded: the same
#      stamps on any machine) and a few blended validation stamps (the model card's numbers);
#   3. continues the packaged model's decoder (`madness train --freeze-encoder`: the encoder, flow
#      and VAE-deblender, i.e. the latent space, stay the packaged ones), inside a time budget;
#   4. writes to $OUT what the CPU side needs: the decoder's weights and the bundle's metadata
#      (the other networks are the parent's, bit for bit), the run's configuration and logs.
# Every step is bounded by its own timeout and writes what it has, so a step cut short still
# returns the earlier ones. Put the returned files back together with
#     scripts/device-bundle.sh FILES_AT runs/NAME
#
# Call it through the device tool, e.g. (all sizes by environment variable):
#     run(command="N_TRAIN=30000 EPOCHS=100 TRAIN_BUDGET=6m bash scripts/device-train.sh",
#         carry=[".whl", ".devstack"], timeout_s=600)
set -u
export PYTHONUNBUFFERED=1
T0=$(date +%s)
OUT=${OUT:-/tmp/device-train-out}
N_TRAIN=${N_TRAIN:-30000}            # isolated training stamps
N_VALIDATION=${N_VALIDATION:-2000}   # isolated validation stamps (the kept epoch's selection)
AREA=${AREA:-0.25}                   # catalogue area in deg^2 (~150k training galaxies per deg^2)
SEED=${SEED:-1}                      # simulation seed (sims-v3's is 1)
TRAIN_SEED=${TRAIN_SEED:-2}          # batch order, noise and symmetries of the training run
EPOCHS=${EPOCHS:-100}                # the cosine schedule spans them: size them to end inside the budget
LR=${LR:-2e-5}                       # peak learning rate of the continuation
BATCH=${BATCH:-1024}                 # stamps per step (empty: the preset's 64)
TRAIN_BUDGET=${TRAIN_BUDGET:-6m}     # training time (madness train --time-budget)
SIM_TIMEOUT=${SIM_TIMEOUT:-330}      # seconds for the simulations
WORKERS=${WORKERS:-$(nproc)}
WORK=${WORK:-/tmp/device-train}
mkdir -p "$OUT" "$WORK"
step() { echo "[$(( $(date +%s) - T0 )) s] $*"; }

SITE=/tmp/site
mkdir -p $SITE
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $SITE .whl/*.whl || exit 3
tar -xJf .devstack/stack.tar.xz -C $SITE || exit 3
export PYTHONPATH=$SITE:$PWD/python KERAS_BACKEND=${KERAS_BACKEND:-jax}
MADNESS="python3 -m lsst.meas.madness.cli"
step "installed; $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || echo 'no GPU')"

step "simulating $N_TRAIN isolated stamps on $WORKERS workers"
SIM=(simulate datasets --output "$WORK/sims" --area "$AREA" --seed "$SEED" --n-train "$N_TRAIN" --workers "$WORKERS"
     --no-progress)
timeout "$SIM_TIMEOUT" $MADNESS "${SIM[@]}" --kinds isolated --n-validation "$N_VALIDATION" 2>&1 \
    | grep -v "^W0000\|^I0000\|Deprecat\|Use pytest" | tail -4
[ "${PIPESTATUS[0]}" = 0 ] || { step "simulation failed or ran out of time"; exit 4; }
# a few blended stamps: a freeze-encoder run trains no VAE-deblender but scores it for the card
timeout 120 $MADNESS "${SIM[@]}" --kinds blended --n-train-blended 16 --n-validation "${N_BLENDED_VALIDATION:-200}" \
    2>&1 | grep -v "^W0000\|^I0000\|Deprecat\|Use pytest" | tail -3
[ "${PIPESTATUS[0]}" = 0 ] || { step "blended simulation failed or ran out of time"; exit 4; }

step "training"
ARGS=(--data "$WORK/sims" --output "$WORK/run" --preset cpu3 --init-from default --freeze-encoder
      --time-budget "$TRAIN_BUDGET" --vae-epochs "$EPOCHS" --vae-lr "$LR" --seed "$TRAIN_SEED" --no-progress
      --no-figures)
[ -n "$BATCH" ] && ARGS+=(--batch-size "$BATCH")
$MADNESS train "${ARGS[@]}" 2>&1 | grep -v "^W0000\|^I0000\|Deprecat\|Use pytest" | tail -12
RC=${PIPESTATUS[0]}
step "training rc $RC"
cp "$WORK/run/logs/vae.csv" "$OUT/" 2>/dev/null
cp "$WORK/run/config.json" "$OUT/" 2>/dev/null
if [ -f "$WORK/run/bundle/bundle.json" ]; then
    cp "$WORK/run/bundle/bundle.json" "$WORK/run/bundle/decoder.weights."*.npz "$OUT/"
    sha256sum "$WORK/run/bundle/"*.npz > "$OUT/bundle.sha256"
fi
ls -la "$OUT"
step "done"
exit "$RC"
