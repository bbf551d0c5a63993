#!/usr/bin/env bash
# Build the minimum of the Rubin C++ stack (afw, meas_base and what they need)
# from public source into PREFIX, for a Python 3.12 virtualenv that already has
# the pure-Python lsst-* wheels from PyPI (pex_config, utils, daf_butler,
# pipe_base, ...). No conda, no EUPS: Debian packages for the third-party C/C++
# libraries, each Rubin package built by its own build (scons + sconsUtils with
# --no-eups; cmake for ndarray; meson for gauss2d, modelfit_parameters, gauss2d_fit).
#
# Usage:   scripts/build-rubin-stack.sh SRC_ROOT PREFIX
#          source PREFIX/env.sh     # then: python -c "import lsst.afw.image"
#
# SRC_ROOT holds one source tree per package, named as below (a git clone, or a
# `git archive` export plus a file `.source-commit` holding the commit). It is
# never populated by this script; see doc/rubin-stack.md for the clone commands.
#   sconsUtils pex_config base pex_exceptions cpputils sphgeom daf_base log geom
#   astshim afw skymap meas_base  (github.com/lsst/<name>)
#   kht shapelet meas_algorithms meas_deblender scarlet_lite
#   meas_extensions_scarlet obs_base smatch pipe_tasks drp_tasks drp_pipe analysis_tools
#   gauss2d modelfit_parameters gauss2d_fit multiprofit meas_extensions_multiprofit
#                                 (github.com/lsst/<name>; the second phase: pipe_tasks'
#                                 multiBand and the real DRP pipeline definition; of
#                                 drp_pipe and analysis_tools only the pipeline YAML is
#                                 installed; the first three are C++ libraries with pybind11
#                                 modules built with meson, for multiprofit's fitting tasks)
#   ip_isr meas_astrom obs_lsst   (github.com/lsst/<name>; the third phase: the LSSTCam
#                                 instrument a DRP pipeline names, for `pipetask build`;
#                                 obs_lsst's tests/data may be left out of the checkout)
#   meas_extensions_photometryKron meas_extensions_convolved meas_extensions_shapeHSM
#   meas_modelfit verify meas_extensions_trailedSources ip_diffim meas_extensions_gaap
#                                 (github.com/lsst/<name>; the fourth phase: the measurement
#                                 plugins obs_lsst's config overrides load (kron.py,
#                                 convolvedFluxes.py, hsm.py, cmodel.py, gaap.py for
#                                 forcedPhotCoadd.py); shapeHSM needs GalSim; ip_diffim (C++)
#                                 for gaap, verify and trailedSources for ip_diffim)
#   smatch                        (github.com/esheldon/smatch: pipe_tasks' spherical matcher;
#                                 PyPI's "smatch" is another project)
#   ndarray                       (github.com/ndarray/ndarray)
#   iminuit-<v>.tar.gz            (PyPI sdist; only its bundled Minuit2 sources are used)
#
# Cache-friendly and resumable: each finished package writes
# PREFIX/.stamps/<pkg> (source commit + build options); a rerun skips packages
# whose stamp matches and continues with the first unfinished one. Build times
# go to PREFIX/build-times.tsv, logs to PREFIX/logs/<pkg>.log.
#
# Environment knobs (defaults in brackets):
#   PYTHON    Python 3.12 with numpy and pybind11 [<repo>/.venv/bin/python]
#   JOBS      parallel compile jobs [2]        NICE  nice level [5]
#   OPT       optimisation level for scons/g++/meson (0 1 2 3 g) [1]
#   DEBUG     scons debug=... (adds -g; meson -Ddebug) [False]
#   PACKAGES  space-separated subset/order to build [all, in dependency order]
#   APT_INSTALL=1  run apt-get install for missing Debian packages (as root)
set -euo pipefail

if [ $# -ne 2 ]; then
    sed -n '2,51p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi

SRC_ROOT=$(realpath "$1")
mkdir -p "$2"
PREFIX=$(realpath "$2")
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
HELPER="$HERE/rubin-stack/helper.py"
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
JOBS=${JOBS:-2}
NICE=${NICE:-5}
OPT=${OPT:-1}
DEBUG=${DEBUG:-False}
ALL_PACKAGES="sconsUtils ndarray minuit2 starlink_ast pex_config base pex_exceptions cpputils sphgeom daf_base log geom astshim afw skymap meas_base kht shapelet meas_algorithms meas_deblender scarlet_lite meas_extensions_scarlet obs_base smatch pipe_tasks drp_tasks drp_pipe analysis_tools gauss2d modelfit_parameters gauss2d_fit multiprofit meas_extensions_multiprofit ip_isr meas_astrom obs_lsst meas_extensions_photometryKron meas_extensions_convolved meas_extensions_shapeHSM meas_modelfit verify meas_extensions_trailedSources ip_diffim meas_extensions_gaap"
PACKAGES=${PACKAGES:-$ALL_PACKAGES}

log() { echo "[build-rubin-stack $(date +%H:%M:%S)] $*"; }
die() { echo "[build-rubin-stack] ERROR: $*" >&2; exit 1; }

# ---------------------------------------------------------------- prerequisites
APT_PACKAGES="g++ cmake scons pkg-config libboost-dev libboost-test-dev libboost-filesystem-dev \
libboost-system-dev libboost-timer-dev libboost-program-options-dev libboost-regex-dev \
libboost-serialization-dev libboost-math-dev libeigen3-dev libfftw3-dev libgsl-dev \
libcfitsio-dev liblog4cxx-dev libstarlink-ast-dev ninja-build"
APT_CMD="apt-get install -y --no-install-recommends $APT_PACKAGES"

missing=""
for f in /usr/include/boost/version.hpp /usr/include/boost/test/unit_test.hpp \
         /usr/include/eigen3/Eigen/Core /usr/include/fftw3.h /usr/include/gsl/gsl_rng.h \
         /usr/include/fitsio.h /usr/include/log4cxx/logger.h /usr/include/ast.h; do
    [ -e "$f" ] || missing="$missing $f"
done
for exe in g++ cmake scons ninja; do command -v "$exe" >/dev/null || missing="$missing $exe"; done
if [ -n "$missing" ]; then
    log "missing build prerequisites:$missing"
    log "Debian packages needed:  $APT_CMD"
    if [ "${APT_INSTALL:-0}" = 1 ] && [ "$(id -u)" = 0 ]; then
        apt-get update && $APT_CMD
    else
        die "install them (or rerun with APT_INSTALL=1 as root)"
    fi
fi

[ -x "$PYTHON" ] || die "no Python at $PYTHON (set PYTHON=...)"
"$PYTHON" -c 'import sys; assert sys.version_info[:2] >= (3, 11), sys.version' \
    || die "$PYTHON is too old"
PYBIND11_INCLUDE=$("$PYTHON" -c 'import pybind11; print(pybind11.get_include())' 2>/dev/null) \
    || die "$PYTHON has no pybind11 (pip install pybind11: an addition, changes nothing else)"
"$PYTHON" -c 'import numpy' || die "$PYTHON has no numpy"
"$PYTHON" -c 'import lsst.pex.config, lsst.utils' \
    || die "$PYTHON lacks lsst-pex-config / lsst-utils (PyPI)"
# The stack's own Python needs beyond the pip-only environment (pinned in constraints.txt).
if ! "$PYTHON" -c 'import pandas, esutil, sklearn, treecorr, treegp, mesonbuild, pytest, pytz, pyfftw, felis, lsst.dax.apdb' 2>/dev/null; then
    log "installing requirements/rubin-stack.txt into $PYTHON's environment"
    "$PYTHON" -m pip install -q -c "$REPO/requirements/constraints.txt" -r "$REPO/requirements/rubin-stack.txt"
fi

mkdir -p "$PREFIX/.stamps" "$PREFIX/logs" "$PREFIX/_build"
TIMES="$PREFIX/build-times.tsv"
[ -f "$TIMES" ] || printf 'package\tcommit\tseconds\tfinished\tjobs\topt\n' > "$TIMES"

# Build environment: the venv's python first on PATH (sconsUtils' python.cfg and
# numpy.cfg run `python`), every installed package's <PKG>_DIR, pybind11's headers.
export PATH="$(dirname "$PYTHON"):$PATH"
export PYBIND11_DIR=$(dirname "$PYBIND11_INCLUDE")
export SCONSFLAGS=""

installed_list() {
    local out="" p
    for p in $ALL_PACKAGES; do
        [ -f "$PREFIX/.stamps/$p" ] && out="$out $p"
    done
    echo $out
}

load_env() {
    "$PYTHON" "$HELPER" write-env "$PREFIX" $(installed_list)
    # shellcheck disable=SC1091
    source "$PREFIX/env.sh"
    export PYTHONPATH="$PREFIX/sconsUtils/python${PYTHONPATH:+:$PYTHONPATH}"
}

src_commit() {   # commit of a source tree: git HEAD, else .source-commit, else "unknown"
    local d=$1
    if git -C "$d" rev-parse HEAD >/dev/null 2>&1 && [ "$(git -C "$d" rev-parse --show-toplevel)" = "$(realpath "$d")" ]; then
        git -C "$d" rev-parse HEAD
    elif [ -f "$d/.source-commit" ]; then
        head -1 "$d/.source-commit"
    else
        echo unknown
    fi
}

# --------------------------------------------------------------------- builders
build_sconsUtils() {
    rm -rf "$PREFIX/sconsUtils"
    mkdir -p "$PREFIX/sconsUtils"
    cp -a "$SRC_ROOT/sconsUtils/python" "$SRC_ROOT/sconsUtils/configs" "$SRC_ROOT/sconsUtils/ups" "$PREFIX/sconsUtils/"
    "$PYTHON" "$HELPER" patch-sconsutils "$PREFIX/sconsUtils"
}

build_ndarray() {
    local b="$PREFIX/_build/ndarray"
    rm -rf "$b" "$PREFIX/ndarray"
    cmake -S "$SRC_ROOT/ndarray" -B "$b" -DNDARRAY_TEST=OFF -DCMAKE_INSTALL_PREFIX="$PREFIX/ndarray"
    cmake --build "$b"
    cmake --install "$b"
}

minuit2_sdist() {
    ls "$SRC_ROOT"/iminuit-*.tar.gz 2>/dev/null | sort -V | tail -1
}

build_minuit2() {
    # Minuit2 (ROOT's minimiser, which afw's lsst.afw.math.minimize uses) is not
    # packaged by Debian 12; the iminuit sdist carries the standalone sources.
    local sdist b d src
    sdist=$(minuit2_sdist)
    [ -n "$sdist" ] || die "no iminuit-*.tar.gz in $SRC_ROOT (see doc/rubin-stack.md)"
    b="$PREFIX/_build/minuit2"
    rm -rf "$b" "$PREFIX/minuit2"
    mkdir -p "$b" "$PREFIX/minuit2/include" "$PREFIX/minuit2/lib"
    tar -xzf "$sdist" -C "$b"
    d=$(ls -d "$b"/iminuit-*)
    cp -a "$d/extern/root/math/minuit2/inc/Minuit2" "$PREFIX/minuit2/include/"
    cp -a "$d/extern/root/math/mathcore/inc/Math" "$PREFIX/minuit2/include/"
    cp -a "$d/extern/root/core/foundation/inc/." "$PREFIX/minuit2/include/"
    cp -a "$d/src/RConfigure.h" "$PREFIX/minuit2/include/"   # iminuit's empty stand-in
    "$PYTHON" "$HELPER" minuit2-sources "$d/CMakeLists.txt" > "$b/sources.txt"
    mkdir -p "$b/obj"
    (cd "$d" && xargs -P "$JOBS" -I{} sh -c \
        'o="$0/obj/$(basename {} .cxx).o"; echo "g++ {}"; g++ -std=c++17 -O'"$OPT"' -fPIC -I"$1/include" -c {} -o "$o"' \
        "$b" "$PREFIX/minuit2" < "$b/sources.txt")
    # Minuit2 leaves MnPrint's output back end to its host (iminuit's printimpl.cpp
    # prints through Python); without one libMinuit2.so has an undefined symbol.
    g++ -std=c++17 -O"$OPT" -fPIC -I"$PREFIX/minuit2/include" -c "$HERE/rubin-stack/minuit2_print_impl.cxx" \
        -o "$b/obj/minuit2_print_impl.o"
    g++ -shared -o "$PREFIX/minuit2/lib/libMinuit2.so" "$b"/obj/*.o
}

build_pex_config() {
    # pex_config's Python comes from PyPI (lsst-pex-config, already in the venv);
    # afw also needs its C++ headers (lsst/pex/config.h) and ups/pex_config.cfg,
    # which the wheel does not carry: install only those, no python/.
    rm -rf "$PREFIX/pex_config"
    mkdir -p "$PREFIX/pex_config"
    cp -a "$SRC_ROOT/pex_config/include" "$SRC_ROOT/pex_config/ups" "$PREFIX/pex_config/"
}

build_starlink_ast() {
    # Debian's libstarlink-ast-dev has the library but no `ast_link` (which
    # sconsUtils' configs/starlink_ast.cfg runs) and no null 2-D grf module, so
    # libstarlink_ast.so has undefined astG* symbols; provide both.
    local d="$PREFIX/starlink_ast"
    rm -rf "$d"
    mkdir -p "$d/bin" "$d/lib"
    gcc -O2 -fPIC -shared -o "$d/lib/libstarlink_ast_nullgrf.so" "$HERE/rubin-stack/ast_grf_stubs.c"
    cat > "$d/bin/ast_link" <<'EOF'
#!/bin/sh
# Stand-in for AST's ast_link (Debian does not ship it): link flags for the
# Debian AST libraries plus the null 2-D grf stubs built next to this script.
echo "-lstarlink_ast -lstarlink_ast_grf3d -lstarlink_ast_nullgrf -lstarlink_ast_err -lm"
EOF
    chmod +x "$d/bin/ast_link"
}

build_kht() {
    # The Kernel-based Hough transform (meas_algorithms' maskStreaks imports lsst.kht): a
    # cmake build of the C++ library and its pybind11 module, as kht's ups/eupspkg.cfg.sh
    # does; the module is installed as PREFIX/kht/python/lsst/kht.
    local b="$PREFIX/_build/kht"
    rm -rf "$b" "$PREFIX/kht"
    # Its pybind11 module includes ndarray's pybind11 converters (built above) and Eigen.
    EIGEN_DIR=/usr cmake -S "$SRC_ROOT/kht/cpp" -B "$b" -DCMAKE_BUILD_TYPE=Release \
        -Dpybind11_DIR="$("$PYTHON" -m pybind11 --cmakedir)" -DPYTHON_EXECUTABLE="$PYTHON" \
        -DPython_EXECUTABLE="$PYTHON" \
        -DCMAKE_CXX_FLAGS="-I$PREFIX/ndarray/include -I/usr/include/eigen3 -I$("$PYTHON" -c 'import numpy; print(numpy.get_include())')"
    cmake --build "$b" -j "$JOBS"
    mkdir -p "$PREFIX/kht/python/lsst"
    cp -a "$b/lsst/kht" "$PREFIX/kht/python/lsst/"
    # lsst is a namespace shared with the venv's lsst-* wheels (pkgutil style, as theirs).
    printf '%s\n' 'import pkgutil' '__path__ = pkgutil.extend_path(__path__, __name__)' \
        > "$PREFIX/kht/python/lsst/__init__.py"
}

build_smatch() {
    # esheldon/smatch (a C extension; conda-forge has it, PyPI's "smatch" is an unrelated
    # package): pip-built into PREFIX/smatch/python, not into the environment.
    rm -rf "$PREFIX/smatch" "$PREFIX/_build/smatch"
    cp -a "$SRC_ROOT/smatch" "$PREFIX/_build/smatch"
    "$PYTHON" -m pip install --no-deps --no-build-isolation --no-compile -q \
        --target "$PREFIX/smatch/python" "$PREFIX/_build/smatch"
}

meson_project() {   # meson_project SRC BUILD PKG [MESON_ARG...]: configure, compile, install into PREFIX/PKG
    # The non-EUPS path of the lsst-dm meson builds (no `eups` on PATH): each project finds
    # the ones built before it by pkg-config (PREFIX/<pkg>/lib/pkgconfig, on PKG_CONFIG_PATH
    # through env.sh) and pybind11 by the venv's pybind11-config. Libraries go to
    # PREFIX/PKG/lib/lsst, Python modules to PREFIX/PKG/python.
    local src=$1 b=$2 inst="$PREFIX/$3" dbg=false outputs
    shift 3
    [ "$DEBUG" = True ] && dbg=true
    # Configured without PYTHONPATH: where lsst.sconsUtils imports, their top-level
    # meson.build runs a plain `scons` in the source tree (meant for the docs).
    # The package's own pkg-config dir first: gauss2d's python/ needs its python/lib's.
    PKG_CONFIG_PATH="$inst/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}" \
    env -u PYTHONPATH meson setup "$b" "$src" --buildtype=release -Doptimization="$OPT" \
        -Ddebug="$dbg" --prefix="$inst" -Dlibdir=lib \
        -Dpython.platlibdir="$inst/python" -Dpython.purelibdir="$inst/python" "$@"
    # Only what is installed: the C++ tests need doctest.h, which is not installed here.
    outputs=$("$PYTHON" "$HELPER" meson-install-outputs "$b")
    if [ -n "$outputs" ]; then
        # shellcheck disable=SC2086
        ninja -C "$b" -j "$JOBS" $outputs
    fi
    # Tagged files only: that leaves out the untagged install scripts, which symlink the
    # module into the source tree and pip-install a second copy (for a dist-info).
    meson install -C "$b" --no-rebuild --tags runtime,devel,python-runtime
}

build_gauss2d() {
    # The C++ library, its Python-specific headers (python/lib) and the pybind11 module
    # (python/), in that order, as gauss2d's setup-release.sh/build-release.sh do.
    local b="$PREFIX/_build/gauss2d" s="$SRC_ROOT/gauss2d"
    rm -rf "$b" "$PREFIX/gauss2d"
    meson_project "$s" "$b/cc" gauss2d
    meson_project "$s/python/lib" "$b/python-lib" gauss2d
    meson_project "$s/python" "$b/python" gauss2d
}

build_modelfit_parameters() {   # header-only
    rm -rf "$PREFIX/_build/modelfit_parameters" "$PREFIX/modelfit_parameters"
    meson_project "$SRC_ROOT/modelfit_parameters" "$PREFIX/_build/modelfit_parameters" modelfit_parameters
}

build_gauss2d_fit() {   # the C++ library, then its pybind11 module (lsst.gauss2d.fit)
    local b="$PREFIX/_build/gauss2d_fit" s="$SRC_ROOT/gauss2d_fit"
    rm -rf "$b" "$PREFIX/gauss2d_fit"
    meson_project "$s" "$b/cc" gauss2d_fit
    # Its headers include modelfit_parameters', which lsst_gauss2d_fit.pc does not name
    # (the non-EUPS build assumes one shared prefix): add them for the pybind11 module.
    meson_project "$s/python" "$b/python" gauss2d_fit \
        -Dcpp_args="$(pkg-config --cflags lsst_modelfit_parameters)"
}

build_pipelines_only() {
    # Pipeline definitions only (YAML and config files), no build: drp_pipe's DRP pipelines
    # import analysis_tools' pipeline files by $<PKG>_DIR/pipelines/..., so a pipeline can
    # be read (and a subset of it built) without that package's code.
    local pkg=$1 d
    rm -rf "${PREFIX:?}/$pkg"
    mkdir -p "$PREFIX/$pkg"
    for d in pipelines config ups; do
        [ -d "$SRC_ROOT/$pkg/$d" ] && cp -a "$SRC_ROOT/$pkg/$d" "$PREFIX/$pkg/"
    done
    return 0
}

build_obs_lsst() {
    # Its policy step runs bin.src/generateCamera.py, which imports lsst.obs.lsst from the
    # source tree (EUPS puts it on PYTHONPATH during a build; here we do).
    PYTHONPATH="$SRC_ROOT/obs_lsst/python${PYTHONPATH:+:$PYTHONPATH}" \
        build_scons_pkg obs_lsst "$1"
}

build_scons_pkg() {   # the Rubin packages: scons + sconsUtils, no EUPS, no tests
    local pkg=$1 ver=$2
    rm -rf "${PREFIX:?}/$pkg"
    (cd "$SRC_ROOT/$pkg" && scons -j "$JOBS" --no-eups --no-tests \
        opt="$OPT" debug="$DEBUG" version="$ver" prefix="$PREFIX/$pkg" install)
}

build_one() {
    local pkg=$1 commit want stamp start end secs
    case $pkg in
        minuit2) local s; s=$(minuit2_sdist); [ -n "$s" ] || die "no iminuit sdist in $SRC_ROOT"
                 commit="$(basename "$s")@$(sha256sum "$s" | cut -c1-16)+$(sha256sum "$HERE/rubin-stack/minuit2_print_impl.cxx" | cut -c1-12)" ;;
        starlink_ast) commit="debian-$(dpkg-query -W -f='${Version}' libstarlink-ast-dev 2>/dev/null || echo unknown)+$(sha256sum "$HERE/rubin-stack/ast_grf_stubs.c" | cut -c1-12)" ;;
        *) [ -d "$SRC_ROOT/$pkg" ] || die "no source tree $SRC_ROOT/$pkg"
           commit=$(src_commit "$SRC_ROOT/$pkg") ;;
    esac
    want="commit=$commit opt=$OPT debug=$DEBUG"
    # Was installed pipelines-only (no code) before; the marker makes such a stamp stale.
    [ "$pkg" = meas_extensions_multiprofit ] && want="$want install=full"
    stamp="$PREFIX/.stamps/$pkg"
    if [ -f "$stamp" ] && [ "$(head -1 "$stamp")" = "$want" ]; then
        log "$pkg: up to date ($commit), skipped"
        return 0
    fi
    rm -f "$stamp"
    log "$pkg: building $commit (log: $PREFIX/logs/$pkg.log)"
    load_env
    start=$(date +%s)
    set +e
    (
        set -e
        case $pkg in
            sconsUtils|ndarray|minuit2|starlink_ast|pex_config|kht|smatch) "build_$pkg" ;;
            gauss2d|modelfit_parameters|gauss2d_fit) "build_$pkg" ;;
            obs_lsst) build_obs_lsst "${commit:0:12}" ;;
            drp_pipe|analysis_tools) build_pipelines_only "$pkg" ;;
            *) build_scons_pkg "$pkg" "${commit:0:12}" ;;
        esac
    ) > "$PREFIX/logs/$pkg.log" 2>&1
    local rc=$?
    set -e
    if [ $rc -ne 0 ]; then
        tail -30 "$PREFIX/logs/$pkg.log"
        die "$pkg failed (rc=$rc) after $(( $(date +%s) - start )) s; full log: $PREFIX/logs/$pkg.log"
    fi
    end=$(date +%s); secs=$((end - start))
    printf '%s\n%s\n' "$want" "seconds=$secs finished=$(date -u +%FT%TZ) jobs=$JOBS" > "$stamp"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$pkg" "$commit" "$secs" "$(date -u +%FT%TZ)" "$JOBS" "$OPT" >> "$TIMES"
    log "$pkg: done in ${secs} s"
}

renice -n "$NICE" -p $$ >/dev/null   # every compiler below inherits it
log "SRC_ROOT=$SRC_ROOT PREFIX=$PREFIX PYTHON=$PYTHON JOBS=$JOBS OPT=$OPT NICE=$NICE"
for pkg in $PACKAGES; do
    build_one "$pkg"
done
load_env
log "all requested packages built; prefix size: $(du -sh --exclude=_build "$PREFIX" | cut -f1)"
log "use it with:  source $PREFIX/env.sh"
