#!/usr/bin/env bash
# shellcheck disable=SC2317  # phase functions run through `bash -c` under timeout
# One prepared check for a machine with an NVIDIA GPU (sized for an H200, no
# internet): builds with the CUDA backend for sm_90, runs every ctest test
# (GPU ones included), runs the GPU tests tagged [sanitize] under
# compute-sanitizer memcheck and racecheck, runs the GPU benchmark briefly,
# and writes a log and a JSON summary.
#
#   bash scripts/gpu-check.sh [OUT_DIR]     # default: $OUT, else ./gpu-check-out
#
# Output: OUT_DIR/gpu-check.log (everything), OUT_DIR/gpu-check.json (per
# phase: status, exit code, seconds, passed/failed/skipped counts),
# OUT_DIR/ctest-junit.xml, OUT_DIR/bench.jsonl.
# Exit status: 0 when every phase that ran passed and the GPU tests really ran
# (not skipped), 1 otherwise.
#
# Environment: QRMS_GPU_CHECK_BUILD (build dir, default build-gpu-check),
# QRMS_GPU_CHECK_BUDGET (seconds for everything, default 450),
# QRMS_CUDA_ARCH (default 90), QRMS_CATCH2_PREFIX (a prefix holding
# include/catch2/catch.hpp and lib/cmake/Catch2, used when the system has no
# catch2 package; `bash scripts/gpu-check.sh --stage-catch2 DIR` copies this
# machine's into DIR; build-deps/catch2 in the repository is picked up
# without the variable).
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

OUT_DIR="${1:-${OUT:-./gpu-check-out}}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
LOG="$OUT_DIR/gpu-check.log"
PHASES="$OUT_DIR/.phases.tsv"
: >"$LOG"
: >"$PHASES"
BUILD="${QRMS_GPU_CHECK_BUILD:-$QRMS_ROOT/build-gpu-check}"
BUDGET="${QRMS_GPU_CHECK_BUDGET:-450}"
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

# phase NAME MAX_SECONDS COMMAND...: runs COMMAND under `timeout` (at most
# MAX_SECONDS and never past the deadline) and records the result. The
# command's own counts, if any, are written by it to $PHASE_COUNTS as
# "passed failed skipped".
PHASE_COUNTS="$OUT_DIR/.counts"
phase() {
  local name="$1" max="$2" left rc start limit counts="- - -"
  shift 2
  left=$((DEADLINE - SECONDS - 15))
  limit=$((max < left ? max : left))
  if [ "$limit" -lt 20 ]; then
    log "phase $name: skipped, out of time budget"
    printf '%s\tskipped\t-\t0\t- - -\tout of time budget\n' "$name" >>"$PHASES"
    return 0
  fi
  log "phase $name (timeout ${limit}s): $*"
  rm -f "$PHASE_COUNTS"
  start=$SECONDS
  timeout --kill-after=10 "$limit" bash -c '"$@"' phase "$@"
  rc=$?
  [ -f "$PHASE_COUNTS" ] && counts="$(cat "$PHASE_COUNTS")"
  local status=passed note=""
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then status=failed; note="timed out after ${limit}s"
  elif [ "$rc" -eq 77 ]; then status=skipped; note="exit 77: skipped itself"
  elif [ "$rc" -ne 0 ]; then status=failed; note="exit $rc"; fi
  log "phase $name: $status ${note:+($note) }in $((SECONDS - start))s, counts (passed failed skipped): $counts"
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$((SECONDS - start))" "$counts" "$note" >>"$PHASES"
  return "$rc"
}

export OUT_DIR BUILD ARCH JOBS PHASE_COUNTS QRMS_ROOT

# ---- environment --------------------------------------------------------------
env_info() {
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host: $(uname -a)"
  echo "cores: $(nproc)"
  git -C "$QRMS_ROOT" rev-parse HEAD 2>/dev/null | sed 's/^/commit: /'
  nvidia-smi || echo "nvidia-smi failed"
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader || true
  nvcc --version || echo "nvcc not found"
  cmake --version | head -1
  command -v compute-sanitizer && compute-sanitizer --version | head -3 || echo "compute-sanitizer not found"
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>/dev/null || true
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
phase catch2 150 catch2
HAVE_CATCH2=$?

# ---- configure and build ------------------------------------------------------
TESTS=ON
[ "$HAVE_CATCH2" -ne 0 ] && TESTS=OFF
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
phase configure 120 configure
CONFIGURED=$?

build() {
  local t0=$SECONDS
  cmake --build "$BUILD" -j"$JOBS" || return 1
  echo "build took $((SECONDS - t0))s on $JOBS jobs"
}
export -f build
BUILT=1
[ "$CONFIGURED" -eq 0 ] && { phase build 300 build; BUILT=$?; }

GPU_BIN="$BUILD/tests/gpu/qrms_test_gpu"
export GPU_BIN

# ---- ctest: every test, GPU ones included -------------------------------------
run_ctest() {
  ctest --test-dir "$BUILD" --output-on-failure --no-tests=error -j"$(( JOBS > 8 ? 8 : JOBS ))" \
    --timeout 300 --output-junit "$OUT_DIR/ctest-junit.xml"
  local rc=$?
  python3 - "$OUT_DIR/ctest-junit.xml" >"$PHASE_COUNTS" <<'EOF' || true
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
p = f = s = 0
for tc in root.iter("testcase"):
    st = tc.get("status", "")
    if tc.find("failure") is not None or st == "fail": f += 1
    elif tc.find("skipped") is not None or st in ("notrun", "disabled"): s += 1
    else: p += 1
print(p, f, s)
EOF
  # A GPU machine must really run the GPU tests: skipped counts as failed here.
  if ! python3 - "$OUT_DIR/ctest-junit.xml" <<'EOF'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
ran = [tc.get("name") for tc in root.iter("testcase")
       if tc.get("name") in ("gpu_tests", "gpu_large_tensor") and tc.find("skipped") is None and tc.get("status") != "notrun"]
sys.exit(0 if "gpu_tests" in ran else 1)
EOF
  then
    echo "GPU TESTS DID NOT RUN (skipped or missing) on a GPU machine"
    return 3
  fi
  return "$rc"
}
export -f run_ctest
if [ "$BUILT" -eq 0 ] && [ "$TESTS" = ON ]; then phase ctest 300 run_ctest; fi

# ---- one NCCL rank on one GPU (a sharded step through qrms_comm_nccl) -----------
nccl_one_rank() {
  "$BUILD/tests/gpu/qrms_test_gpu_nccl"
  local rc=$?
  [ "$rc" -eq 0 ] && echo "1 0 0" >"$PHASE_COUNTS" || echo "0 1 0" >"$PHASE_COUNTS"
  return "$rc"
}
export -f nccl_one_rank
if [ "$BUILT" -eq 0 ] && [ -x "$BUILD/tests/gpu/qrms_test_gpu_nccl" ]; then
  phase nccl 60 nccl_one_rank
else
  log "phase nccl: skipped (no NCCL found: set QRMS_NCCL_ROOT)"
fi

# ---- compute-sanitizer on the [sanitize] subset --------------------------------
# Catch2's summary line gives the counts ("All tests passed (N assertions in M
# test cases)" or "test cases: M | P passed | F failed").
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
if [ "$BUILT" -eq 0 ] && [ -x "$GPU_BIN" ] && command -v compute-sanitizer >/dev/null 2>&1; then
  phase memcheck 150 sanitize memcheck
  phase racecheck 180 sanitize racecheck
elif ! command -v compute-sanitizer >/dev/null 2>&1; then
  log "compute-sanitizer not found: sanitizer phases not run"
  printf 'sanitizers\tskipped\t-\t0\t- - -\tcompute-sanitizer not found\n' >>"$PHASES"
fi

# ---- the GPU benchmark, briefly -------------------------------------------------
bench() {
  "$1" --quick | tee "$OUT_DIR/bench.out"
  local rc=${PIPESTATUS[0]}
  grep -E '^\{' "$OUT_DIR/bench.out" >"$OUT_DIR/bench.jsonl" || true
  echo "$(wc -l <"$OUT_DIR/bench.jsonl") JSON lines in bench.jsonl"
  return "$rc"
}
export -f bench
BENCH_BIN="$BUILD/bench/qrms_bench_gpu"
if [ "$BUILT" -eq 0 ] && [ -x "$BENCH_BIN" ]; then
  phase bench 90 bench "$BENCH_BIN"
else
  log "no $BENCH_BIN: benchmark not run"
  printf 'bench\tskipped\t-\t0\t- - -\tbench/qrms_bench_gpu not built\n' >>"$PHASES"
fi

# ---- summary --------------------------------------------------------------------
python3 - "$PHASES" "$OUT_DIR/gpu-check.json" "$SECONDS" <<'EOF'
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
summary = {
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    "gpu": q(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap", "--format=csv,noheader"]),
    "nvcc": q(["nvcc", "--version"]).splitlines()[-1:] ,
    "total_seconds": int(sys.argv[3]),
    "ok": all(p["status"] != "failed" for p in phases) and any(p["phase"] == "ctest" and p["status"] == "passed" for p in phases),
    "phases": phases,
}
json.dump(summary, open(sys.argv[2], "w"), indent=2)
print(json.dumps(summary, indent=2))
sys.exit(0 if summary["ok"] else 1)
EOF
rc=$?
rm -f "$PHASES" "$PHASE_COUNTS"
log "gpu-check done in ${SECONDS}s: $([ $rc -eq 0 ] && echo OK || echo FAILED); $OUT_DIR/gpu-check.json"
exit "$rc"
