#!/usr/bin/env bash
# shellcheck disable=SC2317  # phase functions run through `bash -c` under timeout
# One prepared check for a machine with an NVIDIA GPU (sized for an H200, no
# internet, one try of a few minutes), written so that it cannot miss:
#
#   bash scripts/gpu-check.sh [OUT_DIR]                      # configure + build here (nvcc), then check
#   bash scripts/gpu-check.sh --prebuilt BUILD_DIR [OUT_DIR] # binaries built beforehand (no cmake, no nvcc)
#   bash scripts/gpu-check.sh --emulated BUILD_DIR [OUT_DIR] # dry run on the emulated device (CI)
#   bash scripts/gpu-check.sh --stage-catch2 DIR             # copy this machine's Catch2 to carry along
#
# Phases, each under its own timeout and never past the budget:
#   environment  nvidia-smi, nvcc, compute-sanitizer versions (informational)
#   build        catch2, configure, build: only without --prebuilt/--emulated
#   preflight    `qrms_test_gpu --preflight`: driver against the build's
#                runtime, device properties, kernels present for this device;
#                when it fails the reason is recorded and the check stops
#   tests        every GPU test case as its own process with its own timeout;
#                a failing case is rerun with CUDA_LAUNCH_BLOCKING=1 and under
#                compute-sanitizer --tool memcheck (whose report names the kernel)
#   racecheck, synccheck, initcheck   compute-sanitizer on the [sanitize] cases
#   bench        the GPU benchmark with --quick
# OUT_DIR/gpu-check.json is rewritten after every phase (status, exit code,
# seconds, passed/failed/skipped, note), so a check cut short still says what
# ran; OUT_DIR/gpu-check.log holds everything, OUT_DIR/cases/ one log per
# test case. Exit status 0 when every phase that ran passed and test cases
# really ran.
#
# Environment: QRMS_GPU_CHECK_BUILD (build dir when building, default
# build-gpu-check), QRMS_GPU_CHECK_BUDGET (seconds for everything, default
# 450), QRMS_GPU_CHECK_CASE_TIMEOUT (seconds per test case, default 120),
# QRMS_GPU_CHECK_FILTER (Catch2 test spec choosing the cases; default all),
# QRMS_CUDA_ARCH (default 90), QRMS_CATCH2_PREFIX (a prefix holding
# include/catch2/catch.hpp and lib/cmake/Catch2 when the system has no catch2
# package; build-deps/catch2 in the repository is picked up without it).
set -uo pipefail
# shellcheck source=common.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# ---- --stage-catch2: copy the system Catch2 into a prefix to carry along ------
if [ "${1:-}" = "--stage-catch2" ]; then
  dest="${2:?usage: gpu-check.sh --stage-catch2 DIR}"
  if ! [ -f /usr/include/catch2/catch.hpp ] || ! [ -d /usr/lib/cmake/Catch2 ]; then
    echo "no system Catch2 here (/usr/include/catch2, /usr/lib/cmake/Catch2)" >&2
    exit 1
  fi
  mkdir -p "$dest/include" "$dest/lib/cmake"
  cp -r /usr/include/catch2 "$dest/include/"
  cp -r /usr/lib/cmake/Catch2 "$dest/lib/cmake/"
  # The package's CMake targets reference its static library too.
  cp /usr/lib/libCatch2WithMain.a "$dest/lib/" 2>/dev/null || true
  echo "Catch2 staged in $dest (pass QRMS_CATCH2_PREFIX=$dest to gpu-check.sh)"
  exit 0
fi

MODE=build
BUILD="${QRMS_GPU_CHECK_BUILD:-$QRMS_ROOT/build-gpu-check}"
case "${1:-}" in
  --prebuilt | --emulated)
    MODE="${1#--}"
    BUILD="$(cd "${2:?usage: gpu-check.sh $1 BUILD_DIR [OUT_DIR]}" && pwd)" || exit 2
    shift 2
    ;;
esac
OUT_DIR="${1:-${OUT:-./gpu-check-out}}"
mkdir -p "$OUT_DIR/cases"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
LOG="$OUT_DIR/gpu-check.log"
PHASES="$OUT_DIR/phases.tsv"
: >"$LOG"
: >"$PHASES"
BUDGET="${QRMS_GPU_CHECK_BUDGET:-450}"
CASE_TIMEOUT="${QRMS_GPU_CHECK_CASE_TIMEOUT:-120}"
FILTER="${QRMS_GPU_CHECK_FILTER:-}"
ARCH="${QRMS_CUDA_ARCH:-90}"
JOBS="$QRMS_JOBS"
DEADLINE=$((SECONDS + BUDGET))
cuda_on_path
# compute-sanitizer ships with the toolkit but is not always on PATH.
if ! command -v compute-sanitizer >/dev/null 2>&1; then
  for d in "$(dirname "$(command -v nvcc 2>/dev/null || echo /usr/local/cuda/bin/nvcc)")" \
           /usr/local/cuda/bin /usr/local/cuda/compute-sanitizer; do
    if [ -x "$d/compute-sanitizer" ]; then export PATH="$d:$PATH"; break; fi
  done
fi
exec > >(tee -a "$LOG") 2>&1
log "gpu-check: mode $MODE, build $BUILD, out $OUT_DIR, budget ${BUDGET}s"

# The JSON summary from phases.tsv, rewritten after every phase.
write_json() {
  python3 - "$PHASES" "$OUT_DIR/gpu-check.json" "$SECONDS" "$MODE" "${1:-running}" <<'EOF'
import json, subprocess, sys, datetime
phases = []
for line in open(sys.argv[1]):
    name, status, rc, secs, counts, note = (line.rstrip("\n").split("\t") + [""] * 6)[:6]
    c = counts.split()
    num = lambda v: int(v) if v.isdigit() else None
    phases.append({"phase": name, "status": status, "exit_code": num(rc), "seconds": num(secs),
                   "passed": num(c[0]) if len(c) > 0 else None, "failed": num(c[1]) if len(c) > 1 else None,
                   "skipped": num(c[2]) if len(c) > 2 else None, "note": note})
def q(cmd):
    try: return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception: return ""
tests = [p for p in phases if p["phase"] == "tests"]
summary = {
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    "mode": sys.argv[4],
    "state": sys.argv[5],
    "gpu": q(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap", "--format=csv,noheader"]) if sys.argv[4] != "emulated" else "emulated device",
    "total_seconds": int(sys.argv[3]),
    "ok": all(p["status"] != "failed" for p in phases) and any(t["status"] == "passed" for t in tests),
    "phases": phases,
}
json.dump(summary, open(sys.argv[2], "w"), indent=2)
if sys.argv[5] == "done":
    print(json.dumps(summary, indent=2))
sys.exit(0 if summary["ok"] else 1)
EOF
}

# record NAME STATUS RC SECONDS "P F S" NOTE: one phase's line, then the JSON.
record() {
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$PHASES"
  write_json running >/dev/null
}

# phase NAME MAX_SECONDS COMMAND...: runs COMMAND under `timeout` (at most
# MAX_SECONDS and never past the deadline) and records the result. The
# command may write its counts to $PHASE_COUNTS ("passed failed skipped") and
# a reason to $OUT_DIR/.note.
PHASE_COUNTS="$OUT_DIR/.counts"
phase() {
  local name="$1" max="$2" left rc start limit counts="- - -"
  shift 2
  left=$((DEADLINE - SECONDS - 10))
  limit=$((max < left ? max : left))
  if [ "$limit" -lt 20 ]; then
    log "phase $name: skipped, out of time budget"
    record "$name" skipped - 0 "- - -" "out of time budget"
    return 0
  fi
  log "phase $name (timeout ${limit}s): $*"
  rm -f "$PHASE_COUNTS" "$OUT_DIR/.note"
  start=$SECONDS
  timeout --kill-after=10 "$limit" bash -c '"$@"' phase "$@"
  rc=$?
  [ -f "$PHASE_COUNTS" ] && counts="$(cat "$PHASE_COUNTS")"
  local status=passed note=""
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then status=failed; note="timed out after ${limit}s"
  elif [ "$rc" -eq 77 ]; then status=skipped; note="exit 77: skipped itself"
  elif [ "$rc" -ne 0 ]; then status=failed; note="exit $rc"; fi
  if [ -s "$OUT_DIR/.note" ]; then note="${note:+$note: }$(head -c 300 "$OUT_DIR/.note" | tr '\t\n' '  ')"; fi
  rm -f "$OUT_DIR/.note"
  log "phase $name: $status ${note:+($note) }in $((SECONDS - start))s, counts (passed failed skipped): $counts"
  record "$name" "$status" "$rc" "$((SECONDS - start))" "$counts" "$note"
  return "$rc"
}

export OUT_DIR BUILD ARCH JOBS PHASE_COUNTS QRMS_ROOT MODE CASE_TIMEOUT FILTER

finish() {
  write_json "done"
  local rc=$?
  rm -f "$PHASE_COUNTS"
  log "gpu-check done in ${SECONDS}s: $([ "$rc" -eq 0 ] && echo OK || echo FAILED); $OUT_DIR/gpu-check.json"
  exit "$rc"
}

# ---- environment (informational) -----------------------------------------------
env_info() {
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host: $(uname -a)"
  echo "cores: $(nproc)"
  git -C "$QRMS_ROOT" rev-parse HEAD 2>/dev/null | sed 's/^/commit: /'
  if [ "$MODE" = emulated ]; then
    echo "emulated device: nvidia-smi and compute-sanitizer are not used"
  else
    nvidia-smi || echo "nvidia-smi failed"
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader || true
    command -v compute-sanitizer && compute-sanitizer --version | head -3 || echo "compute-sanitizer not found"
  fi
  nvcc --version 2>/dev/null | tail -2 || echo "nvcc not found"
  cmake --version 2>/dev/null | head -1
  return 0
}
export -f env_info log
phase environment 60 env_info

# ---- Catch2 -------------------------------------------------------------------
catch2() {
  if [ -f /usr/include/catch2/catch.hpp ] && [ -d /usr/lib/cmake/Catch2 ]; then
    echo "system Catch2 found"
    return 0
  fi
  if [ -n "${QRMS_CATCH2_PREFIX:-}" ] && [ -f "$QRMS_CATCH2_PREFIX/include/catch2/catch.hpp" ]; then
    echo "using staged Catch2 in $QRMS_CATCH2_PREFIX"
    return 0
  fi
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "trying apt-get install catch2 (no internet here is likely)"
    timeout 60 env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends catch2 && return 0
    timeout 60 env DEBIAN_FRONTEND=noninteractive apt-get update >/dev/null 2>&1 &&
      timeout 60 env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends catch2 && return 0
  fi
  echo "CATCH2 MISSING: no /usr/include/catch2/catch.hpp, no QRMS_CATCH2_PREFIX, apt-get impossible."
  echo "The Catch2 tests (CPU and GPU) cannot be built; stage one with"
  echo "  bash scripts/gpu-check.sh --stage-catch2 DIR   (on a machine with catch2)"
  return 1
}
export -f catch2
# A staged prefix carried along in the (git-ignored) build-deps/ folder is used
# automatically.
if [ -z "${QRMS_CATCH2_PREFIX:-}" ] && [ -f "$QRMS_ROOT/build-deps/catch2/include/catch2/catch.hpp" ]; then
  QRMS_CATCH2_PREFIX="$QRMS_ROOT/build-deps/catch2"
fi
if [ -n "${QRMS_CATCH2_PREFIX:-}" ] && [ -d "$QRMS_CATCH2_PREFIX" ]; then
  QRMS_CATCH2_PREFIX="$(cd "$QRMS_CATCH2_PREFIX" && pwd)"
fi
export QRMS_CATCH2_PREFIX="${QRMS_CATCH2_PREFIX:-}"

# ---- configure and build (only without --prebuilt / --emulated) ---------------
TESTS=ON
export TESTS
# NCCL (the machine has no internet): QRMS_NCCL_ROOT, a venv that test.sh
# left in a build dir of the repository (carry it along), or the CUDA
# Toolkit's own nccl.h. Without one the NCCL adapter is not built and the
# nccl phase is skipped.
nccl_root() {
  local d
  if [ -n "${QRMS_NCCL_ROOT:-}" ]; then echo "$QRMS_NCCL_ROOT"; return 0; fi
  for d in "$QRMS_ROOT"/build-*/nccl-venv/lib/python3*/site-packages/nvidia/nccl; do
    [ -f "$d/include/nccl.h" ] && { echo "$d"; return 0; }
  done
  for d in /usr/local/cuda/include /usr/include; do
    [ -f "$d/nccl.h" ] && { echo "system"; return 0; }
  done
  return 1
}
NCCL_ROOT="$(nccl_root || true)"
export NCCL_ROOT
configure() {
  local extra=()
  [ -n "$QRMS_CATCH2_PREFIX" ] && extra+=("-DCMAKE_PREFIX_PATH=$QRMS_CATCH2_PREFIX")
  if [ "$NCCL_ROOT" = system ]; then extra+=(-DQRMS_NCCL=ON)
  elif [ -n "$NCCL_ROOT" ]; then extra+=(-DQRMS_NCCL=ON "-DQRMS_NCCL_ROOT=$NCCL_ROOT"); fi
  cmake -S "$QRMS_ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DQRMS_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$ARCH" \
    -DQRMS_BUILD_TESTS="$TESTS" -DQRMS_BUILD_BENCH=ON -DQRMS_BUILD_EXAMPLES=ON "${extra[@]+"${extra[@]}"}"
}
export -f configure

build() {
  local t0=$SECONDS
  cmake --build "$BUILD" -j"$JOBS" || return 1
  echo "build took $((SECONDS - t0))s on $JOBS jobs"
}
export -f build
if [ "$MODE" = build ]; then
  phase catch2 150 catch2 || { log "no Catch2: the GPU tests cannot be built"; finish; }
  phase configure 120 configure || finish
  phase build 300 build || finish
fi

GPU_BIN="$BUILD/tests/gpu/qrms_test_gpu"
BENCH_BIN="$BUILD/bench/qrms_bench_gpu"
export GPU_BIN

# ---- preflight: can this device run this build? -------------------------------
preflight() {
  [ -x "$GPU_BIN" ] || { echo "no test binary $GPU_BIN" | tee "$OUT_DIR/.note"; return 2; }
  if [ "$MODE" != emulated ]; then
    nvidia-smi -L || { echo "nvidia-smi sees no GPU" | tee "$OUT_DIR/.note"; return 2; }
  fi
  "$GPU_BIN" --preflight | tee "$OUT_DIR/preflight.txt"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || grep -m1 "PREFLIGHT FAILED" "$OUT_DIR/preflight.txt" >"$OUT_DIR/.note"
  return "$rc"
}
export -f preflight
phase preflight 60 preflight || { log "preflight failed: the device cannot run this build; stopping"; finish; }

# ---- every test case as its own process -----------------------------------------
# Catch2 test specs treat , [ ] as syntax: they are escaped to name one case.
run_cases() {
  local names name safe rc out t0 p=0 f=0 s=0 i=0 failed=()
  mapfile -t names < <("$GPU_BIN" --list-test-names-only ${FILTER:+"$FILTER"} | grep -v '^$')
  echo "${#names[@]} test cases${FILTER:+ matching $FILTER}"
  for name in "${names[@]}"; do
    i=$((i + 1))
    safe=$(printf '%s' "$name" | sed -e 's/[],[]/\\&/g')
    out="$OUT_DIR/cases/$(printf '%02d' "$i").log"
    t0=$SECONDS
    timeout --kill-after=5 "$CASE_TIMEOUT" "$GPU_BIN" "$safe" >"$out" 2>&1
    rc=$?
    case "$rc" in
      0) p=$((p + 1)); echo "ok      ($((SECONDS - t0))s) $name" ;;
      77) s=$((s + 1)); echo "skipped ($((SECONDS - t0))s) $name: $(grep -m1 '^skipped' "$out")" ;;
      *) f=$((f + 1)); failed+=("$name|$safe|$out")
         echo "FAILED  ($((SECONDS - t0))s, exit $rc$([ "$rc" -eq 124 ] && echo ': timed out')) $name (log $out)"
         tail -n 25 "$out" ;;
    esac
  done
  echo "$p $f $s" >"$PHASE_COUNTS"
  # Each failure again: synchronous launches first, then under memcheck (its
  # report names the kernel and the faulting access).
  local entry
  for entry in "${failed[@]+"${failed[@]}"}"; do
    IFS='|' read -r name safe out <<<"$entry"
    echo "== rerun with CUDA_LAUNCH_BLOCKING=1: $name"
    CUDA_LAUNCH_BLOCKING=1 timeout --kill-after=5 "$CASE_TIMEOUT" "$GPU_BIN" "$safe" >"$out.blocking" 2>&1
    echo "exit $?"; tail -n 25 "$out.blocking"
    if [ "$MODE" != emulated ] && command -v compute-sanitizer >/dev/null 2>&1; then
      echo "== rerun under compute-sanitizer memcheck: $name"
      timeout --kill-after=5 "$CASE_TIMEOUT" compute-sanitizer --tool memcheck --error-exitcode 99 "$GPU_BIN" "$safe" \
        >"$out.memcheck" 2>&1
      echo "exit $?"; grep -m 20 -E "Invalid|ERROR SUMMARY|at .* in |by thread" "$out.memcheck" || tail -n 25 "$out.memcheck"
    fi
  done
  # A GPU machine must really run the GPU tests.
  if [ "$p" -eq 0 ]; then echo "no GPU test case ran" >"$OUT_DIR/.note"; return 3; fi
  [ "$f" -eq 0 ]
}
export -f run_cases
phase tests 300 run_cases

# ---- one NCCL rank on one GPU (a sharded step through qrms_comm_nccl) -----------
nccl_one_rank() {
  "$BUILD/tests/gpu/qrms_test_gpu_nccl"
  local rc=$?
  [ "$rc" -eq 0 ] && echo "1 0 0" >"$PHASE_COUNTS" || echo "0 1 0" >"$PHASE_COUNTS"
  return "$rc"
}
export -f nccl_one_rank
if [ -x "$BUILD/tests/gpu/qrms_test_gpu_nccl" ]; then
  phase nccl 60 nccl_one_rank
else
  log "phase nccl: skipped (adapter not built: NCCL not found, set QRMS_NCCL_ROOT)"
  record nccl skipped - 0 "- - -" "qrms_test_gpu_nccl not built (no NCCL$([ "$MODE" = emulated ] && echo ' on the emulated device'))"
fi

# ---- compute-sanitizer on the [sanitize] cases ---------------------------------
# Catch2's summary gives the counts ("All tests passed (N assertions in M test
# cases)" or "test cases: M | P passed | F failed").
sanitize() {
  local tool="$1" out="$OUT_DIR/sanitize-$1.txt"
  compute-sanitizer --tool "$tool" --error-exitcode 99 "$GPU_BIN" "[sanitize]" >"$out" 2>&1
  local rc=$?
  tail -n 40 "$out"
  python3 - "$out" >"$PHASE_COUNTS" <<'EOF' || true
import re, sys
text = open(sys.argv[1], errors="replace").read()
m = re.search(r"All tests passed \(\d+ assertions? in (\d+) test cases?\)", text)
if m: print(m.group(1), 0, 0); sys.exit()
m = re.search(r"test cases:\s*(\d+)\s*\|\s*(\d+) passed\s*\|\s*(\d+) failed", text)
print(f"{m.group(2)} {m.group(3)} 0" if m else "- - -")
EOF
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$out" || true
  return "$rc"
}
export -f sanitize
for tool in racecheck synccheck initcheck; do
  if [ "$MODE" = emulated ]; then
    record "$tool" skipped - 0 "- - -" "emulated device: its ASan/UBSan/TSan builds stand in (scripts/emu-gpu.sh)"
  elif command -v compute-sanitizer >/dev/null 2>&1; then
    phase "$tool" 120 sanitize "$tool"
  else
    log "compute-sanitizer not found: $tool not run"
    record "$tool" skipped - 0 "- - -" "compute-sanitizer not found"
  fi
done

# ---- the GPU benchmark, briefly -------------------------------------------------
bench() {
  "$1" --quick | tee "$OUT_DIR/bench.out"
  local rc=${PIPESTATUS[0]}
  grep -E '^\{' "$OUT_DIR/bench.out" >"$OUT_DIR/bench.jsonl" || true
  echo "$(wc -l <"$OUT_DIR/bench.jsonl") JSON lines in bench.jsonl"
  return "$rc"
}
export -f bench
if [ -x "$BENCH_BIN" ]; then
  phase bench 90 bench "$BENCH_BIN"
else
  log "no $BENCH_BIN: benchmark not run"
  record bench skipped - 0 "- - -" "bench/qrms_bench_gpu not built$([ "$MODE" = emulated ] && echo ' (needs nvcc)')"
fi

finish
