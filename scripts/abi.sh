#!/usr/bin/env bash
# The ABI baseline of libqrmsprop.so (docs/abi.md, "Checking the ABI").
#
#   bash scripts/abi.sh check    # fails when this tree breaks the baseline's callers
#   bash scripts/abi.sh update   # rewrites the baseline from this tree (on purpose)
#
# Builds the shared library alone, with debug information and without CUDA
# (the exported interface is the same), in $QRMS_ABI_BUILD_DIR (default
# build-abi), then:
#  * abidw writes its ABI (the qrms_* functions and the types of qrmsprop.h,
#    abi/public.suppr drops the rest), compared with abi/qrmsprop.abi by
#    abidiff: a removed function or a changed one (parameter or return type,
#    a struct it reaches) fails; added functions and fields appended to a
#    struct (abi/abidiff.suppr) pass and are listed;
#  * scripts/abi_structs.py compares every field of the header's structs
#    with the baseline (what the appended-growth suppression would hide);
#  * the values of the header's QRMS_* constants are compared with
#    abi/constants.txt: a renumbered or removed constant fails, new ones pass.
# Needs abidw/abidiff (Debian package abigail-tools), python3, cmake, a C
# compiler.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

mode="${1:-check}"
case "$mode" in check | update) ;; *)
  echo "usage: bash scripts/abi.sh check|update" >&2
  exit 2
  ;;
esac
build="${QRMS_ABI_BUILD_DIR:-$QRMS_ROOT/build-abi}"
abi_dir="$QRMS_ROOT/abi"
header="$QRMS_ROOT/include/qrmsprop/qrmsprop.h"

log "building libqrmsprop.so with debug information in $build"
cmake -S "$QRMS_ROOT" -B "$build" -DCMAKE_BUILD_TYPE=Debug -DQRMS_CUDA=OFF -DQRMS_BUILD_TESTS=OFF \
  -DQRMS_BUILD_EXAMPLES=OFF -DQRMS_BUILD_BENCH=OFF >/dev/null
cmake --build "$build" --target qrmsprop -j"$QRMS_JOBS" >/dev/null
lib="$build/libqrmsprop.so"

# The ABI as abidw sees it; locations as file names only, type ids as hashes,
# so the baseline does not depend on the checkout's path.
abidw --no-corpus-path --no-comp-dir-path --short-locs --type-id-style hash --drop-private-types \
  --suppressions "$abi_dir/public.suppr" --out-file "$build/qrmsprop.abi" "$lib"

# "QRMS_NAME value" for every object-like QRMS_* macro of the header, except
# the version (it changes on purpose) and QRMS_API.
"${CC:-cc}" -E -dM -x c "$header" | awk '$1 == "#define" && $2 ~ /^QRMS_/ && $2 !~ /^QRMS_(API|VERSION_)/ &&
  $2 !~ /\(/ { v = $3; for (i = 4; i <= NF; ++i) v = v " " $i; print $2, v }' | LC_ALL=C sort >"$build/constants.txt"

if [ "$mode" = update ]; then
  cp "$build/qrmsprop.abi" "$abi_dir/qrmsprop.abi"
  cp "$build/constants.txt" "$abi_dir/constants.txt"
  log "baseline updated: abi/qrmsprop.abi ($(grep -c '<elf-symbol' "$abi_dir/qrmsprop.abi") symbols), abi/constants.txt ($(wc -l <"$abi_dir/constants.txt") constants); commit both"
  exit 0
fi

failed=0

log "abidiff abi/qrmsprop.abi (baseline) against this tree"
# Breaking changes: everything but additions. Exit status bits: 1 error,
# 2 usage, 4 ABI change, 8 incompatible change.
rc=0
abidiff --no-added-syms --suppressions "$abi_dir/abidiff.suppr" "$abi_dir/qrmsprop.abi" "$build/qrmsprop.abi" \
  >"$build/abidiff-breaks.txt" || rc=$?
if [ $((rc & 3)) -ne 0 ]; then
  cat "$build/abidiff-breaks.txt"
  echo "error: abidiff failed to run (exit $rc)" >&2
  failed=1
elif [ $((rc & 12)) -ne 0 ]; then
  cat "$build/abidiff-breaks.txt"
  echo "ABI BREAK: abidiff exit $rc ($([ $((rc & 8)) -ne 0 ] && echo incompatible || echo changed))" >&2
  failed=1
else
  # The same comparison with additions, to list them.
  abidiff --suppressions "$abi_dir/abidiff.suppr" "$abi_dir/qrmsprop.abi" "$build/qrmsprop.abi" || true
  echo "abidiff: no breaking change"
fi

log "struct layouts (scripts/abi_structs.py)"
python3 "$QRMS_ROOT/scripts/abi_structs.py" "$abi_dir/qrmsprop.abi" "$build/qrmsprop.abi" || failed=1

log "constants (abi/constants.txt)"
changed=$(LC_ALL=C comm -23 "$abi_dir/constants.txt" "$build/constants.txt")
# New names only (a changed value of an old name is a break, not an addition).
added=$(awk 'NR == FNR { old[$1] = 1; next } !($1 in old)' "$abi_dir/constants.txt" "$build/constants.txt")
[ -z "$added" ] || printf '  addition: %s\n' "$added"
if [ -n "$changed" ]; then
  while read -r name value; do
    now=$(awk -v n="$name" '$1 == n { $1 = ""; sub(/^ /, ""); print }' "$build/constants.txt")
    echo "  BREAK: $name was $value, now ${now:-removed}"
  done <<<"$changed"
  failed=1
fi
echo "constants: $(wc -l <"$abi_dir/constants.txt") in the baseline, $(printf '%s' "$added" | grep -c . || true) added, $(printf '%s' "$changed" | grep -c . || true) changed or removed"

if [ "$failed" -ne 0 ]; then
  echo "FAILED: this tree breaks the ABI baseline. If the break is intended (a new major version), run" \
    "'bash scripts/abi.sh update' and commit abi/ (docs/abi.md)." >&2
  exit 1
fi
echo "ABI check passed"
