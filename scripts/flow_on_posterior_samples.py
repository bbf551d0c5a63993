#!/usr/bin/env python
"""Retrain a bundle's flow prior on samples of the encoder's posterior instead of its means.

The paper trains the flow on the encoder's mean latents of the isolated galaxies (section 3.3).
A MAP fit in a blend, though, lands on latents the means never cover (the prior pulls elongated
faint galaxies to the typical round one, doc/engine.md). This experiment keeps every network of a
bundle and retrains only the flow on ``mu + L eps`` (``k`` draws per galaxy from each encoder's
Gaussian), so that the prior is broader where the encoder is uncertain. It writes a candidate
bundle to judge with ``scripts/map_ablations.py`` on validation fields; the result is in
doc/training.md ("A flow on posterior samples").

Example::

    python scripts/flow_on_posterior_samples.py --data sims/sims-v2 --output runs/flow-k4 --samples 4
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import keras
import numpy as np

from lsst.meas.madness.io.bundle import ModelBundle
from lsst.meas.madness.networks import LinearNormalization, MaskedAutoregressiveFlow
from lsst.meas.madness.networks.gaussian import latent_mean, latent_scale_tril
from lsst.meas.madness.training.config import preset
from lsst.meas.madness.training.loop import run_stage
from lsst.meas.madness.training.models import FlowTrainer
from lsst.meas.madness.training.train import _load


def posterior_samples(encoder, stamps: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` draws per stamp of the encoder's Gaussian posterior (``k=0``: the means)."""
    params = encoder.predict(stamps, batch_size=256, verbose=0)
    mu = np.asarray(keras.ops.convert_to_numpy(latent_mean(params, encoder.latent_dim)), np.float32)
    if k == 0:
        return mu
    tril = np.asarray(keras.ops.convert_to_numpy(latent_scale_tril(params, encoder.latent_dim)), np.float32)
    eps = rng.standard_normal((k, *mu.shape)).astype(np.float32)
    return (mu[None] + np.einsum("nij,knj->kni", tril, eps)).reshape(-1, mu.shape[1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default=None, help="bundle to start from (default: the packaged one)")
    parser.add_argument("--data", required=True, help="suite from `madness simulate datasets`")
    parser.add_argument("--output", required=True, help="run directory (the candidate is <output>/bundle)")
    parser.add_argument("--samples", type=int, default=4, help="posterior draws per galaxy (0: the means)")
    parser.add_argument("--seed", type=int, default=21)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    bundle = ModelBundle.load(args.bundle)
    if bundle.encoder is None:
        parser.error("the bundle has no training encoder, whose posterior this needs")
    norm, data, out = LinearNormalization(), Path(args.data), Path(args.output)
    x, _, _ = _load(data / "isolated-train", None, norm)
    xv, _, _ = _load(data / "isolated-validation", None, norm)
    rng = np.random.default_rng(args.seed)
    z = posterior_samples(bundle.encoder, x, args.samples, rng)
    zv = posterior_samples(bundle.encoder, xv, args.samples, rng)
    flow = MaskedAutoregressiveFlow(bundle.encoder.latent_dim, seed=args.seed)
    flow.build()
    flow.set_weights(bundle.flow.get_weights())
    run_stage("flow", FlowTrainer(flow), preset("cpu3").flow, z, None, zv, None, directory=out / "train",
              seed=args.seed, progress=True)
    means = keras.ops.convert_to_tensor(posterior_samples(bundle.encoder, xv, 0, rng))
    for name, f in (("bundle's flow", bundle.flow), ("new flow", flow)):
        nll = -np.asarray(keras.ops.convert_to_numpy(f.log_prob(means))).mean()
        print(f"validation mean latents: NLL under the {name} {nll:.2f}")
    ModelBundle(bundle.metadata, bundle.decoder, flow, deblender_encoder=bundle.deblender_encoder,
                encoder=bundle.encoder).save(out / "bundle", overwrite=True)
    print(f"candidate bundle {out / 'bundle'} ({len(z)} latents, {time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
