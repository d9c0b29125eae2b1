#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz with clang (ASan + UBSan), runs
# every committed regression input, then fuzzes each target for a bounded
# time from its committed seed corpus (copied, so the tree stays clean).
#   bash scripts/fuzz.sh [seconds per target]   (default 60)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-60}
out=${QRMS_FUZZ_DIR:-$here/build-fuzz}
mkdir -p "$out"

if ! command -v clang++ >/dev/null || ! ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1; then
  source "$here/scripts/common.sh"
  apt_ensure clang libclang-rt-14-dev
fi

srcs=("$here"/src/validate.cpp "$here"/src/qmap.cpp "$here"/src/cpu_backend.cpp "$here"/src/quant_table.cpp
      "$here"/src/optimizer.cpp "$here"/src/state_format.cpp "$here"/src/reduce_slots.cpp "$here"/src/no_cuda.cpp "$here"/capi/capi.cpp)
flags=(-std=c++17 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
       -I"$here"/include -I"$here"/src -pthread)

for target in fuzz_load fuzz_api; do
  echo "== building $target"
  clang++ "${flags[@]}" "$here/tests/fuzz/$target.cpp" "${srcs[@]}" -o "$out/$target"
done

# Each crash the fuzzers ever found is kept under regressions/<target>/ and
# replayed first.
for target in fuzz_load fuzz_api; do
  reg="$here/tests/fuzz/regressions/$target"
  if compgen -G "$reg/*" >/dev/null; then
    echo "== $target: replaying $(ls "$reg" | wc -l) regression inputs"
    "$out/$target" -runs=1 "$reg"/*
  fi
done

status=0
for target in fuzz_load fuzz_api; do
  corpus="$out/corpus-$target"
  rm -rf "$corpus" && mkdir -p "$corpus"
  cp "$here/tests/fuzz/corpus/$target"/* "$corpus"/ 2>/dev/null || true
  echo "== fuzzing $target for ${seconds}s (seed corpus: $(ls "$corpus" | wc -l) inputs)"
  if ! "$out/$target" -max_total_time="$seconds" -max_len=16384 -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$out/$target-" -print_final_stats=1 "$corpus" 2>"$out/$target.log"; then
    echo "!! $target found a failure; see $out/$target.log and the artifact in $out"
    tail -40 "$out/$target.log"
    status=1
  fi
  grep -E "^stat::number_of_executed_units|^#[0-9]+.*DONE" "$out/$target.log" | tail -2 || true
done
exit $status
