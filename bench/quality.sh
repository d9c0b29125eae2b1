#!/usr/bin/env bash
# Quality of the quantized state: runs the example trainer
# (examples/train_mlp.c: a 2-128-128-3 MLP on three spirals, trained with
# RMSprop32bit, RMSprop8bit block-wise, RMSprop8bit per-tensor and RMSprop4bit
# from the same initial weights and batches) over several seeds and prints,
# per variant, the final loss and the accuracies (mean, standard deviation,
# min, max) and the paired difference of each quantized variant's final loss
# to the 32-bit one of the same seed.
#
#   bash bench/quality.sh [--seeds N] [--steps N] [--device cpu|cuda]
#                         [--weights f32,bf16,bf16-sr] [--bin path/to/train_mlp]
#                         [--state-maps signed,unsigned] [--jsonl out.jsonl]
#
# --weights: a comma-separated list of train_mlp --weights values (default
# f32); each runs every variant, named "<variant> (<weights>)" unless f32.
# --state-maps: a comma-separated list of train_mlp --state-map values
# (default signed); the 8-bit variants of each map other than signed are
# named "<variant> (<map> map)" (32-bit state has no map: run once).
#
# The trainer is found at --bin, $TRAIN_MLP, or <build>/examples/train_mlp for
# the build folders $QRMS_BUILD_DIR, build, build-example; failing that it is
# built in build-quality/ (CPU only). Prints a Markdown table on stdout.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seeds=5
steps=600
device=cpu
bin="${TRAIN_MLP:-}"
jsonl=""
weights=f32
state_maps=signed

while [[ $# -gt 0 ]]; do
  case "$1" in
    --seeds) seeds="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --device) device="$2"; shift 2 ;;
    --bin) bin="$2"; shift 2 ;;
    --jsonl) jsonl="$2"; shift 2 ;;
    --weights) weights="$2"; shift 2 ;;
    --state-maps) state_maps="$2"; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "quality.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

if [[ -z "$bin" ]]; then
  for d in "${QRMS_BUILD_DIR:-}" "$root/build" "$root/build-example"; do
    if [[ -n "$d" && -x "$d/examples/train_mlp" ]]; then bin="$d/examples/train_mlp"; break; fi
  done
fi
if [[ -z "$bin" ]]; then
  b="$root/build-quality"
  echo "quality.sh: no train_mlp found; building it in $b" >&2
  cmake -S "$root" -B "$b" -DCMAKE_BUILD_TYPE=Release -DQRMS_CUDA=OFF -DQRMS_BUILD_TESTS=OFF \
    -DQRMS_BUILD_BENCH=OFF -DQRMS_BUILD_EXAMPLES=ON >&2
  cmake --build "$b" --target train_mlp -j"$(nproc)" >&2
  bin="$b/examples/train_mlp"
fi

out="$(mktemp)"
trap 'rm -f "$out"' EXIT
echo "quality.sh: $bin --steps $steps --device $device --weights $weights --state-maps $state_maps," \
  "seeds 1..$seeds" >&2
IFS=, read -r -a weight_list <<<"$weights"
IFS=, read -r -a map_list <<<"$state_maps"
for w in "${weight_list[@]}"; do
  for m in "${map_list[@]}"; do
    for ((s = 1; s <= seeds; ++s)); do
      # Exit status 1 means a variant did not reduce the loss: keep the numbers,
      # the table shows it. 2 is a usage or library error: stop.
      rc=0
      "$bin" --steps "$steps" --seed "$s" --device "$device" --weights "$w" --state-map "$m" --json |
        sed "s/^{/{\"seed\":$s,/" >>"$out" || rc=$?
      if [[ $rc -ge 2 ]]; then echo "quality.sh: train_mlp failed (exit $rc) for seed $s" >&2; exit 1; fi
    done
  done
done
[[ -n "$jsonl" ]] && cp "$out" "$jsonl"

python3 - "$out" "$steps" "$device" <<'EOF'
import json, statistics, sys

path, steps, device = sys.argv[1], sys.argv[2], sys.argv[3]
rows = [json.loads(l) for l in open(path) if l.startswith("{")]
# 32-bit state has no map: keep its signed-map run only.
rows = [r for r in rows if r.get("state_map", "signed") == "signed" or "8bit" in r["variant"]]
for r in rows:
    if r.get("weights", "f32") != "f32":
        r["variant"] += " (%s weights)" % r["weights"]
    if r.get("state_map", "signed") != "signed":
        r["variant"] += " (%s map)" % r["state_map"]
variants = []
for r in rows:
    if r["variant"] not in variants:
        variants.append(r["variant"])
by = {v: [r for r in rows if r["variant"] == v] for v in variants}
seeds = sorted({r["seed"] for r in rows})

def stat(xs, fmt):
    m = statistics.mean(xs)
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return ("%s ± %s [%s, %s]" % (fmt, fmt, fmt, fmt)) % (m, sd, min(xs), max(xs))

print("train_mlp, %s steps, device %s, seeds %s" % (steps, device, ", ".join(map(str, seeds))))
print()
print("| variant | final loss: mean ± sd [min, max] | train acc mean | test acc: mean ± sd [min, max] | state bytes |")
print("|---|---|---|---|---|")
for v in variants:
    rs = by[v]
    print("| %s | %s | %.2f%% | %s | %d |" % (
        v, stat([r["final_loss"] for r in rs], "%.4f"),
        100 * statistics.mean(r["train_accuracy"] for r in rs),
        stat([100 * r["test_accuracy"] for r in rs], "%.2f%%").replace("%%", "%"),
        rs[0]["state_bytes"]))

base = variants[0]
base_loss = {r["seed"]: r["final_loss"] for r in by[base]}
print()
print("Paired by seed, final loss minus %s's:" % base)
print()
print("| variant | mean diff ± sd | seeds where it is lower |")
print("|---|---|---|")
for v in variants[1:]:
    d = [r["final_loss"] - base_loss[r["seed"]] for r in by[v] if r["seed"] in base_loss]
    sd = statistics.stdev(d) if len(d) > 1 else 0.0
    print("| %s | %+.4f ± %.4f | %d of %d |" % (v, statistics.mean(d), sd, sum(x < 0 for x in d), len(d)))
EOF
