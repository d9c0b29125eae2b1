#!/usr/bin/env bash
# Builds the CPU library and its tests with sanitizers and runs them:
#   address,undefined  -> build-asan (LeakSanitizer included), whole suite
#   thread             -> build-tsan, whole suite (the CPU backend's threads)
#   bash scripts/sanitize.sh [asan|tsan|all]   (default all)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
what=${1:-all}
jobs=$(nproc)

run() {  # name sanitizers
  local dir="$here/build-$1"
  echo "== $1: -fsanitize=$2"
  cmake -S "$here" -B "$dir" -DQRMS_CUDA=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQRMS_SANITIZE="$2" \
        -DQRMS_BUILD_BENCH=OFF -DQRMS_BUILD_EXAMPLES=ON >/dev/null
  cmake --build "$dir" -j"$jobs"
  # Threads: the CPU backend uses 2 threads whatever the machine has. The
  # installed-package consumer is left out: it links the sanitized library
  # into a program built without the sanitizer runtime. So is the quantizer's
  # sweep of every float in [-1, 1] (4 billion values of pure arithmetic,
  # far too slow under the sanitizers; its quick cases stay).
  QRMS_NUM_THREADS=2 ctest --test-dir "$dir" --output-on-failure -j"$jobs" \
    -E '^(consumer_of_installed_package|quant_sweep_every_float)$'
}

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1
case "$what" in
  asan) run asan address,undefined ;;
  tsan) run tsan thread ;;
  all) run asan address,undefined; run tsan thread ;;
  *) echo "usage: $0 [asan|tsan|all]" >&2; exit 2 ;;
esac
