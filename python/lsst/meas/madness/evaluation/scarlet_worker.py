"""Classic scarlet (pmelchior/scarlet 1.0.x) on one field per request, in scarlet's own interpreter.

Classic scarlet needs numpy < 2 and autograd 1.6.2, so it lives in its own virtual environment
(``scripts/build-peers.sh``) and `lsst.meas.madness.evaluation.methods.ScarletMethod` runs this
file there as a script: it imports nothing of meas_madness, only numpy and scarlet.

Protocol (one JSON object per line): the parent writes ``{"input": IN.npz, "output": OUT.npz}``
on stdin; this process fits the field and answers on stdout ``{"ok": true, "seconds": ...,
"rss_before": ..., "peak_rss": ..., "n_skipped": ...}`` (or ``{"ok": false, "error": ...}``);
an empty line or end of input stops it. The first line it writes is ``{"ready": true,
"scarlet": VERSION, "numpy": VERSION}``. Anything scarlet prints goes to stderr.

``IN.npz``: ``image`` and ``variance`` ``(bands, H, W)``, ``psf`` ``(bands, s, s)`` unit-sum,
``centers_yx`` ``(n, 2)``, ``bands``, and the settings ``model_psf_sigma``, ``max_components``,
``min_snr``, ``thresh``, ``max_iter``, ``e_rel``. ``OUT.npz``: ``models`` ``(n, bands, H, W)``
float32, each source's model rendered as observed (zero for a source scarlet skipped),
``skipped`` indices, ``n_iter``.
"""

import json
import os
import sys
import time


def _status_kib(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def fit_field(data):
    """Models ``(n, bands, H, W)`` of one field, skipped indices and iterations run."""
    import numpy as np
    import scarlet

    image = np.asarray(data["image"], dtype=np.float64)
    variance = np.asarray(data["variance"], dtype=np.float64)
    bands = [str(b) for b in data["bands"]]
    nb = len(bands)
    # As BTK's ScarletDeblender (the paper's comparator) builds the scene.
    model_psf = scarlet.GaussianPSF(sigma=(float(data["model_psf_sigma"]),) * nb)
    frame = scarlet.Frame(image.shape, psf=model_psf, channels=bands)
    observation = scarlet.Observation(image, psf=scarlet.ImagePSF(np.asarray(data["psf"], np.float64)),
                                      weights=1.0 / variance, channels=bands).match(frame)
    centers = [(float(y), float(x)) for y, x in data["centers_yx"]]
    sources, skipped = scarlet.initialization.init_all_sources(
        frame, centers, observation, max_components=int(data["max_components"]),
        min_snr=float(data["min_snr"]), thresh=float(data["thresh"]), fallback=True, silent=True,
        set_spectra=True)
    blend = scarlet.Blend(sources, observation)
    blend.fit(int(data["max_iter"]), e_rel=float(data["e_rel"]))
    n_iter = len(blend.loss)
    models = np.zeros((len(centers), *image.shape), np.float32)
    kept = [k for k in range(len(centers)) if k not in set(skipped)]
    for k, source in zip(kept, sources):
        models[k] = np.clip(observation.render(source.get_model(frame=frame)), 0, None)
    return models, np.asarray(sorted(skipped), dtype=np.int64), n_iter


def main():
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr  # scarlet's prints must not reach the protocol stream
    import numpy as np
    import scarlet

    if not hasattr(scarlet, "initialization") or not hasattr(scarlet, "Blend"):
        protocol.write(json.dumps({"ready": False, "error": "the importable 'scarlet' is not "
                                   "pmelchior/scarlet"}) + "\n")
        return 1
    protocol.write(json.dumps({"ready": True, "scarlet": getattr(scarlet, "__version__", "unknown"),
                               "numpy": np.__version__}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            break
        request = json.loads(line)
        try:
            with np.load(request["input"], allow_pickle=False) as data:
                fields = {k: data[k] for k in data.files}
            resettable = _reset_peak()
            rss_before = _status_kib("VmRSS")
            start = time.perf_counter()
            models, skipped, n_iter = fit_field(fields)
            seconds = time.perf_counter() - start
            peak = _status_kib("VmHWM") if resettable else None
            np.savez(request["output"], models=models, skipped=skipped, n_iter=n_iter)
            reply = {"ok": True, "seconds": seconds, "n_iter": int(n_iter), "n_skipped": int(len(skipped)),
                     "rss_before": None if rss_before is None else rss_before * 1024,
                     "peak_rss": None if peak is None else peak * 1024}
        except Exception as exc:  # noqa: BLE001 - one failed field is reported, not fatal
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        protocol.write(json.dumps(reply) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
