"""The ``madness`` command line: ``madness info``, ``madness demo``."""

from __future__ import annotations

import argparse
import sys


def _info(args: argparse.Namespace) -> int:
    import platform

    import keras
    import numpy

    from . import __version__
    from .backend import backend_name, device_description
    from .io.bundle import METADATA_FILE, ModelBundle, default_bundle_path

    print(f"meas_madness {__version__}")
    print(f"python       {platform.python_version()} ({sys.executable})")
    print(f"numpy        {numpy.__version__}")
    print(f"keras        {keras.__version__}  backend: {backend_name()}  devices: {device_description()}")
    for mod in ("tensorflow", "jax", "galsim", "astropy", "lsst.pipe.base", "lsst.daf.butler"):
        try:
            module = __import__(mod, fromlist=["__version__"])
            print(f"{mod:<12} {getattr(module, '__version__', 'installed')}")
        except ImportError:
            print(f"{mod:<12} not installed")
    path = args.bundle or default_bundle_path()
    if args.bundle is None and not (default_bundle_path() / METADATA_FILE).exists():
        print(f"bundle       none: no packaged default bundle yet ({default_bundle_path()})")
        return 0
    bundle = ModelBundle.load(path)
    meta = bundle.metadata
    print(f"bundle       {path}")
    print(f"  bands {''.join(meta.bands)}, stamp {meta.stamp_size}px at {meta.pixel_scale}\"/px, "
          f"latent {meta.latent_dim}, trained: {meta.trained}, created {meta.created}")
    print(f"  {meta.description}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.output, n_train=args.n_train, seed=args.seed)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``madness`` command."""
    parser = argparse.ArgumentParser(prog="madness", description="MADNESS galaxy deblender.")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="versions, Keras backend, devices and the model bundle in use")
    info.add_argument("--bundle", default=None, help="bundle directory (default: the packaged one)")
    info.set_defaults(func=_info)
    demo = sub.add_parser("demo", help="simulate LSST galaxies, train a quick model, deblend, plot")
    demo.add_argument("--output", default="demo-output", help="output directory")
    demo.add_argument("--n-train", type=int, default=1500, help="galaxies drawn for the quick model")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
