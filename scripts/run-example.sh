#!/usr/bin/env bash
# Fresh-machine command 1: installs the build tools if missing, builds the
# library and the example trainer (examples/train_mlp.c) and runs it on the
# CPU.
#
#   bash scripts/run-example.sh [-DCMAKE_OPTION=...] [train_mlp flags]
#
# Arguments starting with -D go to CMake (e.g. -DQRMS_CUDA=AUTO to build the
# CUDA backend too, which `--device cuda` needs); the rest go to train_mlp
# (--steps N, --seed S, --lr X, --batch B, --device cpu|cuda, --json).
# QRMS_BUILD_DIR overrides the build directory (default build-example).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

cmake_args=(-DQRMS_CUDA=OFF)   # the example runs on the CPU; -DQRMS_CUDA=... overrides
example_args=()
for arg in "$@"; do
  case "$arg" in
    -D*) cmake_args+=("$arg") ;;
    *) example_args+=("$arg") ;;
  esac
done

apt_ensure cmake make g++ libc6-dev
cuda_on_path

build_dir="${QRMS_BUILD_DIR:-$QRMS_ROOT/build-example}"
log "configuring in $build_dir"
cmake -S "$QRMS_ROOT" -B "$build_dir" -DCMAKE_BUILD_TYPE=Release \
  -DQRMS_BUILD_TESTS=OFF -DQRMS_BUILD_BENCH=OFF -DQRMS_BUILD_EXAMPLES=ON "${cmake_args[@]}"
log "building train_mlp"
cmake --build "$build_dir" --target train_mlp -j"$QRMS_JOBS"
log "running examples/train_mlp ${example_args[*]:-}"
"$build_dir/examples/train_mlp" "${example_args[@]+"${example_args[@]}"}"
