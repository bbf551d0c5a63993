"""Small helpers for scripts/build-rubin-stack.sh (no third-party imports).

Sub-commands:

  patch-sconsutils DIR
      Make an installed copy of sconsUtils usable without conda/EUPS:
      ``configs/eigen.cfg`` only sets its include path under conda
      (NameError otherwise); give it a non-conda branch
      (``$EIGEN_INCLUDE_DIR``, default ``/usr/include/eigen3``).
  minuit2-sources CMAKELISTS
      Print the Minuit2 sources that iminuit's CMakeLists.txt compiles
      (``SOURCES_B``), one per line, relative to the iminuit source root.
  meson-install-outputs BUILDDIR
      Print the output files of the targets a configured meson build
      directory installs (from ``meson-info/intro-targets.json``), one per
      line, relative to BUILDDIR (ninja's target names): the libraries and
      extension modules, not the test executables.
  write-env PREFIX PKG [PKG ...]
      Write ``PREFIX/env.sh`` for the packages installed under PREFIX.
"""

from __future__ import annotations

import json
import os
import re
import sys

EIGEN_OLD = """            includePath = os.path.join(get_conda_prefix(), "include/eigen3")
        conf.env.AppendUnique"""
EIGEN_NEW = """            includePath = os.path.join(get_conda_prefix(), "include/eigen3")
        else:
            includePath = os.environ.get("EIGEN_INCLUDE_DIR", "/usr/include/eigen3")
        conf.env.AppendUnique"""

def patch_sconsutils(root: str) -> None:
    path = os.path.join(root, "configs", "eigen.cfg")
    with open(path) as f:
        text = f.read()
    if EIGEN_NEW in text:
        return
    if EIGEN_OLD not in text:
        sys.exit(f"helper.py: {path} has changed; check the eigen include-path patch by hand")
    with open(path, "w") as f:
        f.write(text.replace(EIGEN_OLD, EIGEN_NEW))


def minuit2_sources(cmakelists: str) -> None:
    with open(cmakelists) as f:
        text = f.read()
    m = re.search(r"set\(SOURCES_B(.*?)\)", text, re.S)
    if not m:
        sys.exit(f"helper.py: no SOURCES_B list in {cmakelists}")
    for src in m.group(1).split():
        if src.endswith(".cxx"):
            print(src)


def meson_install_outputs(builddir: str) -> None:
    path = os.path.join(builddir, "meson-info", "intro-targets.json")
    with open(path) as f:
        targets = json.load(f)
    root = os.path.realpath(builddir)
    for target in targets:
        if target.get("installed"):
            for out in target["filename"]:
                print(os.path.relpath(os.path.realpath(out), root))


def write_env(prefix: str, pkgs: list[str]) -> None:
    """env.sh: <PKG>_DIR for every package; lib/ and python/ where present.

    The meson-built packages (gauss2d, gauss2d_fit) install their libraries
    into lib/lsst (their ups tables put build-release/lib/lsst on
    LD_LIBRARY_PATH) and pkg-config files into lib/pkgconfig, which the
    packages built after them find through PKG_CONFIG_PATH.

    Packages are given in build (dependency) order; PYTHONPATH and
    LD_LIBRARY_PATH get the last-built package first, as EUPS' envPrepend does.
    """
    lines = [
        "# Written by meas_madness scripts/build-rubin-stack.sh; source it (bash).",
        "# Makes the Rubin C++ packages built into this prefix importable from a",
        "# Python 3.12 environment that already has the pure-Python lsst-* wheels.",
        f'RUBIN_STACK_PREFIX="{prefix}"',
        "export RUBIN_STACK_PREFIX",
    ]
    for pkg in pkgs:
        d = os.path.join(prefix, pkg)
        var = pkg.upper() + "_DIR"
        lines.append(f'export {var}="$RUBIN_STACK_PREFIX/{pkg}"')
        for libdir in ("lib", "lib/lsst"):
            if os.path.isdir(os.path.join(d, libdir)):
                lines.append(
                    f'export LD_LIBRARY_PATH="$RUBIN_STACK_PREFIX/{pkg}/{libdir}'
                    '${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"'
                )
        if os.path.isdir(os.path.join(d, "lib", "pkgconfig")):
            lines.append(
                f'export PKG_CONFIG_PATH="$RUBIN_STACK_PREFIX/{pkg}/lib/pkgconfig'
                '${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"'
            )
        if os.path.isdir(os.path.join(d, "python")):
            lines.append(f'export PYTHONPATH="$RUBIN_STACK_PREFIX/{pkg}/python${{PYTHONPATH:+:$PYTHONPATH}}"')
        if os.path.isdir(os.path.join(d, "bin")) and pkg != "sconsUtils":
            lines.append(f'export PATH="$RUBIN_STACK_PREFIX/{pkg}/bin:$PATH"')
    with open(os.path.join(prefix, "env.sh"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        sys.exit(__doc__)
    cmd, args = argv[1], argv[2:]
    if cmd == "patch-sconsutils":
        patch_sconsutils(args[0])
    elif cmd == "minuit2-sources":
        minuit2_sources(args[0])
    elif cmd == "meson-install-outputs":
        meson_install_outputs(args[0])
    elif cmd == "write-env":
        write_env(args[0], args[1:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
