#!/usr/bin/env bash
# Tests the Python package as users get it: the wheel that carries
# libqrmsprop.so, and `pip install ./bindings/python` (the README's line).
#
#   bash scripts/test-wheel.sh
#
# 1. scripts/python-dist.sh builds the sdist and, from it, the wheel, repaired
#    by auditwheel; checked here: a manylinux tag, one library in the package
#    under its soname, no absolute RPATH/RUNPATH, the C sources in the sdist.
# 2. The wheel goes into a fresh venv; from outside the repository, with no
#    QRMS_* variable, the package must load its own library; then the
#    binding's tests (bindings/python/tests) and the quickstart run against it.
# 3. `pip install ./bindings/python` into another fresh venv, then
#    `python -c "import qrmsprop; print(qrmsprop.version())"`.
#
# QRMS_CUDA (AUTO, ON, OFF) picks the backends of the wheel; CI sets nothing
# and test.sh's stage passes OFF (see there). Work directory:
# $QRMS_WHEEL_WORKDIR, default ${TMPDIR:-/tmp}/qrmsprop-wheel-$UID-TAG (TAG:
# checkout_tag, one per checkout); its venvs
# are made anew on every run.
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

work=${QRMS_WHEEL_WORKDIR:-${TMPDIR:-/tmp}/qrmsprop-wheel-$(id -u)-$(checkout_tag)}
mkdir -p "$work"
work=$(cd "$work" && pwd)
case "$work/" in "$QRMS_ROOT"/*) echo "error: the work directory must be outside the repository" >&2; exit 2 ;; esac
command -v readelf >/dev/null 2>&1 || apt_ensure binutils
unset LD_LIBRARY_PATH QRMS_LIBRARY QRMS_PREFIX QRMS_LIB_DIR QRMS_INCLUDE_DIR PYTHONPATH
export PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
fail() { echo "error: $*" >&2; exit 1; }

# ---- 1. build and inspect ----------------------------------------------------
dist="$work/dist"
bash "$QRMS_ROOT/scripts/python-dist.sh" "$dist"
wheels=("$dist"/qrmsprop-*.whl)
[ "${#wheels[@]}" -eq 1 ] || fail "expected one wheel in $dist, found ${wheels[*]}"
wheel=${wheels[0]}
name=$(basename "$wheel")
[[ "$name" =~ ^qrmsprop-[0-9.]+-py3-none-manylinux_[0-9]+_[0-9]+_[a-z0-9_]+\.whl$ ]] \
  || fail "$name: not a py3-none-manylinux wheel"

unpacked="$work/unpacked"
rm -rf "$unpacked" && mkdir -p "$unpacked"
python3 -m zipfile -e "$wheel" "$unpacked"
libs=$(cd "$unpacked" && find . -name 'libqrmsprop*' | sort)
[ "$libs" = "./qrmsprop/libqrmsprop.so.0" ] || fail "the wheel's libraries are [$libs], not ./qrmsprop/libqrmsprop.so.0"
dyn=$(readelf -d "$unpacked/qrmsprop/libqrmsprop.so.0")
grep -q 'Library soname: \[libqrmsprop.so.0\]' <<<"$dyn" || fail "soname is not libqrmsprop.so.0: $dyn"
# auditwheel may add $ORIGIN-relative paths; nothing may point into the build machine.
if grep -E '\((RPATH|RUNPATH)\)' <<<"$dyn" | grep -vE '\[(\$ORIGIN[^]:]*)(:\$ORIGIN[^]:]*)*\]$'; then
  fail "the library has a search path that is not \$ORIGIN-relative"
fi
sdist=$(ls "$dist"/qrmsprop-*.tar.gz)
listing=$(tar -tzf "$sdist")
for f in c/CMakeLists.txt c/include/qrmsprop/qrmsprop.h c/capi/exports.map c/adapters/CMakeLists.txt CMakeLists.txt pyproject.toml src/qrmsprop/_lib.py; do
  grep -qx "qrmsprop-[0-9.]*/$f" <<<"$listing" || fail "$(basename "$sdist") has no $f"
done
info_py="$unpacked/qrmsprop/_build_info.py"
log "wheel $name: $(stat -c %s "$wheel") bytes; sdist $(basename "$sdist"): $(stat -c %s "$sdist") bytes"
grep '^BACKENDS' "$info_py"

# ---- 2. the wheel in a fresh venv ---------------------------------------------
fresh_venv() {
  rm -rf "$1"
  python3 -m venv "$1" || { rm -rf "$1"; apt_ensure python3-venv; python3 -m venv "$1"; }
}
venv="$work/venv-wheel"
fresh_venv "$venv"
log "pip install $name (fresh venv $venv)"
"$venv/bin/pip" install -q "$wheel" pytest
"$venv/bin/pip" install -q ml_dtypes || echo "warning: ml_dtypes not installed; the numpy bfloat16 test will skip" >&2
where=$(cd "$work" && "$venv/bin/python" -c "import qrmsprop; print(qrmsprop.__file__, qrmsprop.library_path())")
echo "using $where"
site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['platlib'])")
[ "$where" = "$site/qrmsprop/__init__.py $site/qrmsprop/libqrmsprop.so.0" ] \
  || fail "the package or its library is not the wheel's ($site/qrmsprop)"
(cd "$work" && "$venv/bin/python" -c "import qrmsprop; print(qrmsprop.version(), qrmsprop.build_info())")

log "pytest bindings/python/tests against the wheel"
log_file="$work/pytest-wheel.log"
rc=0
(cd "$QRMS_ROOT/bindings/python" && "$venv/bin/python" -m pytest -p no:cacheprovider -q -rs tests) \
  2>&1 | tee "$log_file" || rc=$?
echo "python (wheel): $(grep -E ' in [0-9.]+s( \(.*\))?( =+)?$' "$log_file" | tail -1) (pytest exit $rc)"
[ "$rc" -eq 0 ] || fail "pytest exit $rc"
log "quickstart against the wheel"
(cd "$work" && "$venv/bin/python" "$QRMS_ROOT/bindings/python/examples/quickstart.py")

# ---- 3. the README's line ------------------------------------------------------
venv2="$work/venv-source"
fresh_venv "$venv2"
log "pip install ./bindings/python (fresh venv $venv2)"
(cd "$QRMS_ROOT" && "$venv2/bin/pip" install -q ./bindings/python)
out=$(cd "$work" && "$venv2/bin/python" -c "import qrmsprop; print(qrmsprop.version())")
echo "$out"
[ "$out" = "$(cd "$work" && "$venv/bin/python" -c "import qrmsprop; print(qrmsprop.version())")" ] \
  || fail "pip install ./bindings/python gave version '$out'"
(cd "$work" && "$venv2/bin/python" -c "import qrmsprop; i = qrmsprop.build_info(); assert i['bundled'], i; print(i)")
echo "wheel: all passed"
