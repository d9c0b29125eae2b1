#!/usr/bin/env bash
# Tests the Python and Rust bindings against an INSTALLED qrmsprop (headers,
# libqrmsprop.so, qrmsprop.pc), never against the build tree.
#
#   bash scripts/test-bindings.sh [PREFIX]
#
# PREFIX: where `cmake --install` put the library. Without it, the library
# is configured, built and installed from this checkout into the work
# directory first (QRMS_CUDA=AUTO unless set).
#
# Work directory (build, install prefix, Python venv, cargo target):
# $QRMS_BINDINGS_WORKDIR, default ${TMPDIR:-/tmp}/qrmsprop-bindings-$UID-TAG (TAG:
# checkout_tag, one per checkout). It is
# kept between runs so the venv and builds are reused. If the base python3
# can import torch, the venv sees the system site-packages so that the torch
# tests run (QRMS_VENV_SYSTEM_SITE=0/1 forces it off/on).
#
# Installs what is missing: pkg-config and python3-venv through apt-get (as
# root or with sudo), numpy/pytest/ml_dtypes into the venv with pip (and
# scikit-build-core, the package's build backend, into pip's build env).
# Exit status: 0 only when every suite passed.
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

work=${QRMS_BINDINGS_WORKDIR:-${TMPDIR:-/tmp}/qrmsprop-bindings-$(id -u)-$(checkout_tag)}
mkdir -p "$work"
work=$(cd "$work" && pwd)

# ---- the installed library -------------------------------------------------
if [ $# -ge 1 ] && [ -n "$1" ]; then
  [ -d "$1" ] || { echo "error: install prefix $1 does not exist" >&2; exit 1; }
  prefix=$(cd "$1" && pwd)
else
  { command -v cmake && command -v c++ && command -v make; } >/dev/null 2>&1 || apt_ensure cmake make g++ libc6-dev
  cuda_on_path
  prefix="$work/prefix"
  log "building qrmsprop from $QRMS_ROOT, installing into $prefix"
  cmake -S "$QRMS_ROOT" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DQRMS_CUDA="${QRMS_CUDA:-AUTO}" \
    -DQRMS_BUILD_TESTS=OFF -DQRMS_BUILD_EXAMPLES=OFF -DQRMS_BUILD_BENCH=OFF \
    -DCMAKE_INSTALL_PREFIX="$prefix" >"$work/cmake-configure.log" 2>&1 \
    || { cat "$work/cmake-configure.log"; exit 1; }
  cmake --build "$work/build" -j "$QRMS_JOBS"
  cmake --install "$work/build" --prefix "$prefix" >/dev/null
fi

libdir=""
for d in lib lib64 "lib/$(gcc -dumpmachine 2>/dev/null || echo none)"; do
  if [ -e "$prefix/$d/libqrmsprop.so" ]; then libdir="$prefix/$d"; break; fi
done
[ -n "$libdir" ] || { echo "error: no libqrmsprop.so under $prefix/lib*" >&2; exit 1; }
[ -f "$prefix/include/qrmsprop/qrmsprop.h" ] || { echo "error: no $prefix/include/qrmsprop/qrmsprop.h" >&2; exit 1; }
[ -f "$libdir/pkgconfig/qrmsprop.pc" ] || { echo "error: no $libdir/pkgconfig/qrmsprop.pc" >&2; exit 1; }
log "testing the bindings against $libdir/libqrmsprop.so"

# Nothing may come from the build tree or a stray library path.
unset LD_LIBRARY_PATH QRMS_LIBRARY QRMS_LIB_DIR QRMS_INCLUDE_DIR
export PYTHONDONTWRITEBYTECODE=1

# Each suite runs in a subshell with `set -e` (a function called as `f || x`
# would run with -e ignored) and appends its result line to $summary_file.
summary_file="$work/summary.txt"
: >"$summary_file"

# ---- Python ----------------------------------------------------------------
python_suite() {
  local py=python3 sys_site=${QRMS_VENV_SYSTEM_SITE:-}
  command -v "$py" >/dev/null 2>&1 || apt_ensure python3 python3-pip
  if [ -z "$sys_site" ]; then
    if "$py" -c "import torch" >/dev/null 2>&1; then sys_site=1; else sys_site=0; fi
  fi
  local venv="$work/venv" venv_args=()
  if [ "$sys_site" = 1 ]; then venv="$work/venv-system-site"; venv_args=(--system-site-packages); fi
  if [ ! -x "$venv/bin/python" ]; then
    log "creating the venv $venv"
    if ! "$py" -m venv "${venv_args[@]}" "$venv"; then
      rm -rf "$venv"
      apt_ensure python3-venv
      "$py" -m venv "${venv_args[@]}" "$venv"
    fi
  fi
  local vpy="$venv/bin/python"
  if ! "$vpy" -c "import numpy, pytest" >/dev/null 2>&1; then
    "$vpy" -m pip install -q --disable-pip-version-check numpy pytest
  fi
  # bfloat16 numpy arrays (optional: its test skips without it).
  "$vpy" -c "import ml_dtypes" >/dev/null 2>&1 \
    || "$vpy" -m pip install -q --disable-pip-version-check ml_dtypes \
    || echo "warning: ml_dtypes not installed; the numpy bfloat16 test will skip" >&2

  log "pip install bindings/python without its own library (QRMS_PYTHON_BUNDLE=OFF)"
  # A regular (not editable) install: the tests import the installed package.
  # Without the library inside the package, it must find the prefix's (the
  # wheel that carries one is scripts/test-wheel.sh's). pip builds in the
  # source directory, so build from a copy (the checkout stays clean).
  local pysrc="$work/python-src"
  rm -rf "$pysrc" && mkdir -p "$pysrc"
  cp -R "$QRMS_ROOT/bindings/python/pyproject.toml" "$QRMS_ROOT/bindings/python/README.md" \
    "$QRMS_ROOT/bindings/python/CMakeLists.txt" "$QRMS_ROOT/bindings/python/_build_info.py.in" \
    "$QRMS_ROOT/bindings/python/src" "$pysrc/"
  QRMS_PYTHON_BUNDLE=OFF "$vpy" -m pip install -q --disable-pip-version-check --no-deps --force-reinstall "$pysrc"
  if [ -e "$("$vpy" -c 'import qrmsprop._lib as l; print(l.PACKAGE_DIR)' 2>/dev/null)/libqrmsprop.so.0" ]; then
    echo "error: QRMS_PYTHON_BUNDLE=OFF installed a library into the package" >&2; return 1
  fi
  local where
  where=$(cd "$work" && QRMS_PREFIX="$prefix" "$vpy" -c "import qrmsprop; print(qrmsprop.__file__, qrmsprop.library_path())")
  echo "using $where"
  case "$where" in
    "$venv"/*" $libdir"/*) ;;
    *) echo "error: the installed package or library is not the expected one" >&2; return 1 ;;
  esac

  log "pytest bindings/python/tests"
  local log_file="$work/pytest.log" rc=0
  (cd "$QRMS_ROOT/bindings/python" && QRMS_PREFIX="$prefix" "$vpy" -m pytest -p no:cacheprovider -q -rs tests) \
    2>&1 | tee "$log_file" || rc=$?
  echo "python: $(grep -E ' in [0-9.]+s( \(.*\))?( =+)?$' "$log_file" | tail -1) (pytest exit $rc)" \
    >>"$summary_file"
  # 5 (no tests collected) is a failure too: the tests are always there.
  [ "$rc" -eq 0 ]

  log "python example (docs/ffi.md)"
  (cd "$work" && QRMS_PREFIX="$prefix" "$vpy" "$QRMS_ROOT/bindings/python/examples/quickstart.py")
}

# ---- Rust --------------------------------------------------------------------
rust_suite() {
  command -v cargo >/dev/null 2>&1 || { echo "error: cargo is not installed" >&2; return 1; }
  command -v pkg-config >/dev/null 2>&1 || apt_ensure pkg-config
  local manifest="$QRMS_ROOT/bindings/rust/Cargo.toml" log_file="$work/cargo-test.log" rc=0
  export CARGO_TARGET_DIR="$work/cargo-target"

  log "cargo test --offline (library found through pkg-config)"
  (PKG_CONFIG_PATH="$libdir/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}" \
    cargo test --offline --manifest-path "$manifest") 2>&1 | tee "$log_file" || rc=$?
  echo "rust: $(grep -E '^test result' "$log_file" | awk '{p+=$4; f+=$6; i+=$8} END {printf "%d passed, %d failed, %d ignored in %d test binaries", p, f, i, NR}') (cargo exit $rc)" \
    >>"$summary_file"
  [ "$rc" -eq 0 ]

  log "rust example (docs/ffi.md), library found through QRMS_LIB_DIR"
  QRMS_LIB_DIR="$libdir" QRMS_INCLUDE_DIR="$prefix/include" \
    cargo run --offline --quiet --manifest-path "$manifest" --example quickstart
}

# Not `if (...)` or `||`: those would switch -e off inside the suites.
set +e
(set -e; python_suite); python_rc=$?
(set -e; rust_suite); rust_rc=$?
set -e
failures=()
[ "$python_rc" -eq 0 ] || failures+=(python)
[ "$rust_rc" -eq 0 ] || failures+=(rust)

log "summary"
sed 's/^/  /' "$summary_file"
if [ "${#failures[@]}" -gt 0 ]; then
  echo "FAILED: ${failures[*]}" >&2
  exit 1
fi
echo "bindings: all passed"
