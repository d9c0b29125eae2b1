#!/usr/bin/env bash
# Fresh-machine command 2: installs what the tests need, builds everything
# (with the CUDA backend when nvcc is present) and runs every test stage.
# Exits non-zero when any stage fails; every stage runs even after an
# earlier one failed, and the summary at the end lists the failures.
#
#   bash scripts/test.sh [stage ...]     # default: every stage in STAGES
#
# Environment: QRMS_BUILD_DIR (default build-test), QRMS_JOBS (default
# nproc), QRMS_CUDA (AUTO, ON or OFF; default AUTO), CMAKE_ARGS (extra
# CMake options, space-separated). CI runs this through .ci/run.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

BUILD_DIR="${QRMS_BUILD_DIR:-$QRMS_ROOT/build-test}"
JOBS="$QRMS_JOBS"
export BUILD_DIR JOBS

# ---- dependencies ------------------------------------------------------------
# Debian packages every stage needs; stages may call apt_ensure for more.
APT_PACKAGES=(cmake make g++ libc6-dev pkg-config catch2 python3)

# ---- stages ------------------------------------------------------------------
# A stage is a function stage_<name>; it runs in a subshell with `set -e`, so
# any failing command fails the stage. Available: $QRMS_ROOT, $BUILD_DIR (the
# configured and built tree after stage_cpp; libqrmsprop.so is in it),
# $JOBS, log, apt_ensure.

# NCCL's headers and library from PyPI (nvidia-nccl-cu13) in a venv of the
# build dir; prints the folder holding include/nccl.h and lib/libnccl.so.2.
nccl_root() {
  local venv="$BUILD_DIR/nccl-venv"
  apt_ensure python3-venv >&2
  [ -x "$venv/bin/pip" ] || python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check nvidia-nccl-cu13 >&2
  "$venv/bin/python" -c 'import nvidia.nccl; print(list(nvidia.nccl.__path__)[0])'
}

# Configure (CUDA backend when nvcc is there; the MPI adapter always, the
# NCCL adapter with CUDA), build everything, run ctest.
stage_cpp() {
  cuda_on_path
  apt_ensure openmpi-bin libopenmpi-dev
  local extra=(-DQRMS_MPI=ON) nccl
  if command -v nvcc >/dev/null 2>&1 && [ "${QRMS_CUDA:-AUTO}" != OFF ]; then
    nccl="$(nccl_root)"
    extra+=(-DQRMS_NCCL=ON "-DQRMS_NCCL_ROOT=$nccl")
  fi
  # shellcheck disable=SC2206  # CMAKE_ARGS is meant to be word-split
  [ -n "${CMAKE_ARGS:-}" ] && extra+=(${CMAKE_ARGS})
  log "configuring in $BUILD_DIR (QRMS_CUDA=${QRMS_CUDA:-AUTO}; nvcc: $(command -v nvcc || echo none))"
  cmake -S "$QRMS_ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DQRMS_CUDA="${QRMS_CUDA:-AUTO}" \
    -DQRMS_BUILD_TESTS=ON -DQRMS_BUILD_EXAMPLES=ON -DQRMS_BUILD_BENCH=ON "${extra[@]+"${extra[@]}"}"
  log "building with -j$JOBS"
  cmake --build "$BUILD_DIR" -j"$JOBS"
  log "ctest"
  ctest --test-dir "$BUILD_DIR" --output-on-failure --no-tests=error -j"$JOBS"
}
STAGES=(stage_cpp)

# ---- later stages go below ---------------------------------------------------
# Define stage_<name>() and append it: STAGES+=(stage_<name>).

# Python (pytest, numpy) and Rust (cargo test --offline) bindings, against
# the library installed from the build tree into a prefix (not the build tree).
stage_bindings() {
  rm -rf "$BUILD_DIR/install"
  cmake --install "$BUILD_DIR" --prefix "$BUILD_DIR/install"
  bash "$QRMS_ROOT/scripts/test-bindings.sh" "$BUILD_DIR/install"
}
STAGES+=(stage_bindings)

# The Python wheel that carries libqrmsprop.so (scripts/test-wheel.sh): sdist,
# wheel from it, auditwheel repair and checks, the binding's tests and
# quickstart against it in a fresh venv, and `pip install ./bindings/python`.
# It builds the library twice more, without tests: CUDA backend when nvcc is
# there, as for users (QRMS_CUDA applies).
stage_wheel() {
  cuda_on_path
  bash "$QRMS_ROOT/scripts/test-wheel.sh"
}
STAGES+=(stage_wheel)

# The CPU suite under AddressSanitizer + UndefinedBehaviorSanitizer (with the
# leak checker) and under ThreadSanitizer.
stage_sanitizers() {
  bash "$QRMS_ROOT/scripts/sanitize.sh" all
}
STAGES+=(stage_sanitizers)

# libFuzzer on the state blob parser and the C ABI, bounded in time, after
# replaying every regression input.
stage_fuzz() {
  apt_ensure clang libclang-rt-14-dev
  bash "$QRMS_ROOT/scripts/fuzz.sh" "${QRMS_FUZZ_SECONDS:-60}"
}
STAGES+=(stage_fuzz)

# A plain configure on a machine without Catch2 (a user who wants only the
# library) succeeds and leaves the tests out; asking for the tests there
# fails at configure with a clear message.
stage_no_catch2() {
  local dir="$BUILD_DIR/no-catch2"
  mkdir -p "$BUILD_DIR"
  rm -rf "$dir"
  cmake -S "$QRMS_ROOT" -B "$dir" -DQRMS_CUDA=OFF -DCMAKE_DISABLE_FIND_PACKAGE_Catch2=ON >"$dir.log" 2>&1 \
    || { cat "$dir.log"; echo "error: a plain configure without Catch2 failed" >&2; return 1; }
  grep -q '^QRMS_BUILD_TESTS:BOOL=OFF$' "$dir/CMakeCache.txt" \
    || { echo "error: without Catch2 the tests should be off by default" >&2; return 1; }
  rm -rf "$dir"
  if cmake -S "$QRMS_ROOT" -B "$dir" -DQRMS_CUDA=OFF -DCMAKE_DISABLE_FIND_PACKAGE_Catch2=ON \
    -DQRMS_BUILD_TESTS=ON >"$dir.log" 2>&1; then
    echo "error: QRMS_BUILD_TESTS=ON without Catch2 configured" >&2
    return 1
  fi
  grep -q "QRMS_BUILD_TESTS=ON needs Catch2" "$dir.log" \
    || { cat "$dir.log"; echo "error: no clear message for QRMS_BUILD_TESTS=ON without Catch2" >&2; return 1; }
  rm -rf "$dir" "$dir.log"
  echo "without Catch2: the library configures, tests off; QRMS_BUILD_TESTS=ON is a clear configure error"
}
STAGES+=(stage_no_catch2)

# The ABI against the committed baseline (abi/): abidiff (libabigail), the
# struct layouts and the constants; additions pass and are listed
# (scripts/abi.sh, docs/abi.md). Its own debug build in build-abi under $BUILD_DIR.
stage_abi() {
  apt_ensure abigail-tools
  QRMS_ABI_BUILD_DIR="$BUILD_DIR/abi" bash "$QRMS_ROOT/scripts/abi.sh" check
}
STAGES+=(stage_abi)

# The CUDA backend's kernels on the emulated device (cmake -DQRMS_CUDA=EMULATE):
# the whole GPU suite, one process per test case, then the [sanitize] cases
# under ASan+UBSan and under TSan; then scripts/gpu-check.sh's dry run on the
# same emulated build, so the GPU check itself is tested.
stage_gpu_emulated() {
  bash "$QRMS_ROOT/scripts/emu-gpu.sh" all
  # The dry run takes the [sanitize] cases: the suite itself ran just above.
  QRMS_GPU_CHECK_FILTER="[sanitize]" bash "$QRMS_ROOT/scripts/gpu-check.sh" --emulated "$QRMS_ROOT/build-emu" \
    "$QRMS_ROOT/build-emu/gpu-check-out"
}
STAGES+=(stage_gpu_emulated)

# ---- runner (keep at the end) -------------------------------------------------
run_stage() {
  local name="$1" rc start
  log "stage $name"
  start=$SECONDS
  # Not inside `if`/`||`: those would switch off `set -e` within the stage.
  set +e
  (set -euo pipefail; "$name")
  rc=$?
  set -e
  RESULTS+=("$(printf '%-24s %s (%ds)' "$name" "$([ "$rc" -eq 0 ] && echo ok || echo "FAILED (exit $rc)")" \
    $((SECONDS - start)))")
  [ "$rc" -eq 0 ] || FAILED+=("$name")
}

main() {
  local stages=("$@") s
  [ "${#stages[@]}" -gt 0 ] || stages=("${STAGES[@]}")
  for s in "${stages[@]}"; do
    [[ "$s" == stage_* ]] || s="stage_$s"
    if ! declare -F "$s" >/dev/null; then
      echo "error: no such stage: $s (have: ${STAGES[*]})" >&2
      exit 2
    fi
  done
  apt_ensure "${APT_PACKAGES[@]}"
  RESULTS=()
  FAILED=()
  for s in "${stages[@]}"; do
    [[ "$s" == stage_* ]] || s="stage_$s"
    run_stage "$s"
  done
  log "summary"
  printf '  %s\n' "${RESULTS[@]}"
  if [ "${#FAILED[@]}" -gt 0 ]; then
    echo "FAILED: ${FAILED[*]}" >&2
    exit 1
  fi
  echo "all stages passed"
}

main "$@"
