#!/usr/bin/env python
"""Write a copy of a model bundle that refers to another bundle's identical networks.

A decoder-only continuation (``madness train --freeze-encoder``, e.g. a narrower student decoder)
keeps its parent's encoder, flow and VAE-deblender weight for weight; written in full it is the
size of the whole model (33 MB for the paper-size networks), written with ``--share-with`` only
its decoder (~5 MB for ``--decoder-filters 96,64,32``). That is small enough to commit while a
candidate trains across sessions on machines that are not kept, and to continue from with
``madness train --init-from`` (doc/training.md, "Continuing a candidate from what is committed").

    python scripts/share_bundle.py runs/cpu9-a/bundle checkpoints/cpu9-a --share-with packaged:lsst-default

The copy loads only while the shared bundle is present and unchanged (every file's sha256 is
checked); the script loads it back and compares every network with the source before it returns.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", type=Path, help="bundle to copy")
    parser.add_argument("output", type=Path, help="directory of the copy")
    parser.add_argument("--share-with", default="packaged:lsst-default",
                        help="packaged:<name> or a path relative to OUTPUT (default: packaged:lsst-default)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")
    args = parser.parse_args(argv)

    from lsst.meas.madness import ModelBundle

    bundle = ModelBundle.load(args.source)
    path = bundle.save(args.output, overwrite=args.overwrite, share_with=args.share_with)
    copy = ModelBundle.load(path)
    for name, net in bundle.networks.items():
        other = copy.networks[name]
        for a, b in zip(net.weights, other.weights, strict=True):
            if not np.array_equal(np.asarray(a.value), np.asarray(b.value)):
                raise SystemExit(f"{name}: {a.path} differs in the copy")
    files = json.loads((path / "bundle.json").read_text())["files"]
    own = sorted(f for f, info in files.items() if "shared_from" not in info)
    shared = sorted(f for f, info in files.items() if "shared_from" in info)
    size = sum((path / f).stat().st_size for f in own)
    print(f"{path}: wrote {', '.join(own) or 'no weight file'} ({size / 2**20:.1f} MiB); "
          f"shared with {args.share_with}: {', '.join(shared) or 'nothing'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
