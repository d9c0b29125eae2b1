#!/usr/bin/env bash
# The GPU suite on the emulated CUDA device (cmake -DQRMS_CUDA=EMULATE, the
# unmodified cuda/*.cu built by the host compiler against tests/emu):
#   suite  -> build-emu: every GPU test case, one ctest entry (process) each
#   asan   -> build-emu-asan: the [sanitize] cases under ASan + UBSan
#             (out-of-bounds device accesses, misaligned vector loads)
#   tsan   -> build-emu-tsan: the [sanitize] cases under TSan, each emulated
#             thread an OS thread (shared-memory races, missing barriers)
#   bash scripts/emu-gpu.sh [suite|asan|tsan|all]   (default all)
# Environment: QRMS_EMU_BUILD_PREFIX (default <repo>/build-emu), QRMS_JOBS.
set -euo pipefail
# shellcheck source=common.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
what=${1:-all}
prefix=${QRMS_EMU_BUILD_PREFIX:-$QRMS_ROOT/build-emu}
jobs=$QRMS_JOBS

configure() {  # dir build-type sanitizers
  cmake -S "$QRMS_ROOT" -B "$1" -DQRMS_CUDA=EMULATE -DCMAKE_BUILD_TYPE="$2" -DQRMS_SANITIZE="$3" \
        -DQRMS_BUILD_BENCH=OFF -DQRMS_BUILD_EXAMPLES=OFF >/dev/null
  # Only the GPU suite: the rest of the tree is built and tested elsewhere.
  cmake --build "$1" -j"$jobs" --target qrms_test_gpu
}

suite() {
  local dir="$prefix"
  echo "== emulated device: the whole GPU suite ($dir)"
  configure "$dir" Release ""
  ctest --test-dir "$dir" -R gpu --output-on-failure -j"$jobs" --no-tests=error
}

sanitized() {  # name sanitizers
  local dir="$prefix-$1"
  echo "== emulated device: the [sanitize] GPU cases under -fsanitize=$2 ($dir)"
  configure "$dir" RelWithDebInfo "$2"
  "$dir/tests/gpu/qrms_test_gpu" "[sanitize]" --durations yes
}

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1
case "$what" in
  suite) suite ;;
  asan) sanitized asan address,undefined ;;
  tsan) sanitized tsan thread ;;
  all) suite; sanitized asan address,undefined; sanitized tsan thread ;;
  *) echo "usage: $0 [suite|asan|tsan|all]" >&2; exit 2 ;;
esac
