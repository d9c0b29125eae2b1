#!/usr/bin/env bash
# The SASS report of issue 12: per update kernel (and per quantizer probe,
# bench/quant_probe.cu) registers, spills, shared memory and instructions
# per element of the hot loop against the H200's budget at 4.3 TB/s.
#
#   bash scripts/sass-report.sh [SOURCE_ROOT]    # default: this checkout
#
# Compiles the kernel files of SOURCE_ROOT for sm_90 with the library's
# flags (nvcc -O3 -fmad=false), so another checkout (an older commit) can be
# reported for comparison. cuobjdump and nvdisasm come from PyPI
# (nvidia-cuda-cuobjdump, nvidia-cuda-nvdisasm) into a venv in
# $QRMS_SASS_DIR (default build-sass/ of this checkout).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

SRC="$(cd "${1:-$QRMS_ROOT}" && pwd)"
DIR="${QRMS_SASS_DIR:-$QRMS_ROOT/build-sass}"
mkdir -p "$DIR"
cuda_on_path
command -v nvcc >/dev/null || { echo "error: nvcc not found (CUDA Toolkit needed)" >&2; exit 1; }
apt_ensure python3 python3-venv binutils

VENV="$DIR/venv"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if ! ls "$VENV"/lib/python3*/site-packages/nvidia/cu*/bin/nvdisasm >/dev/null 2>&1; then
  "$VENV/bin/pip" install -q "nvidia-cuda-cuobjdump>=13.2" "nvidia-cuda-nvdisasm>=13.2"
fi
BIN="$(dirname "$(ls "$VENV"/lib/python3*/site-packages/nvidia/cu*/bin/nvdisasm | head -n1)")"

OUT="$DIR/$(basename "$SRC")-$(git -C "$SRC" rev-parse --short HEAD 2>/dev/null || echo src)"
mkdir -p "$OUT"
files=(cuda/update_32bit.cu cuda/update_blockwise8.cu cuda/update_tensor8.cu)
[ -f "$SRC/cuda/update_blockwise4.cu" ] && files+=(cuda/update_blockwise4.cu)
[ -f "$SRC/bench/quant_probe.cu" ] && files+=(bench/quant_probe.cu)
args=()
for f in "${files[@]}"; do
  base="$OUT/$(basename "$f" .cu)"
  nvcc -cubin -arch=sm_90 -O3 -DNDEBUG -std=c++17 -fmad=false -I"$SRC/include" -I"$SRC/src" -I"$SRC/cuda" \
    "$SRC/$f" -o "$base.cubin"
done
for f in "${files[@]}"; do
  base="$OUT/$(basename "$f" .cu)"
  "$BIN/cuobjdump" -res-usage "$base.cubin" > "$base.res"
  "$BIN/nvdisasm" -c "$base.cubin" > "$base.sass"
  args+=("$base.res" "$base.sass")
done
python3 "$QRMS_ROOT/scripts/sass_report.py" "${args[@]}" "$(basename "$SRC") at $(git -C "$SRC" rev-parse --short HEAD 2>/dev/null || echo '?')"
