#!/usr/bin/env python3
"""Plot achieved bandwidth as a fraction of the same-run baseline against
tensor size, one line per variant (and momentum), one panel per dtype.

Reads the JSON lines of qrms_bench_cpu (fraction_of_stream: a read-modify-write
stream over the same arrays) or qrms_bench_gpu (fraction_of_copy: a
device-to-device copy of the same byte count) from the files given; lines
without a "variant" (meta, errors, skips) are ignored. GPU model cases (GPT-2,
1.3B) are drawn as separate markers at their total element count.

    python3 bench/plot.py cpu.jsonl [more.jsonl ...] -o docs/img/cpu_bandwidth.png
        [--threads 2] [--logy] [--title "..."]
    python3 bench/plot.py --table cpu.jsonl     # Markdown table of the cases instead


Needs matplotlib (pip install matplotlib).
"""

import argparse
import collections
import json
import sys

VARIANTS = ["32bit", "8bit_blockwise", "8bit_tensor"]
COLORS = {"32bit": "tab:blue", "8bit_blockwise": "tab:orange", "8bit_tensor": "tab:green"}
DTYPES = ["f32", "bf16", "f16"]


def read(paths):
    rows = []
    for path in paths:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line.startswith("{"):
                    continue
                try:
                    d = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if "variant" in d and ("fraction_of_stream" in d or "fraction_of_copy" in d):
                    rows.append(d)
    return rows


def fraction(d):
    return d["fraction_of_stream"] if "fraction_of_stream" in d else d["fraction_of_copy"]


def table(rows):
    """Markdown table: CPU rows side by side per thread count; GPU rows one per case."""
    if rows[0].get("backend", "cpu") == "cpu":
        threads = sorted({d["threads"] for d in rows})
        head = "| n | variant | dtype | momentum | bytes/elem |"
        rule = "|---|---|---|---|---|"
        for t in threads:
            head += " %dT Melem/s | %dT GB/s | %dT stream GB/s | %dT fraction |" % (t, t, t, t)
            rule += "---|---|---|---|"
        print(head)
        print(rule)
        keys = []
        for d in rows:
            k = (d["n"], d["variant"], d["dtype"], d["momentum"])
            if k not in keys:
                keys.append(k)
        for k in keys:
            line = "| %d | %s | %s | %s |" % (k[0], k[1], k[2], "yes" if k[3] else "no")
            first = True
            for t in threads:
                ds = [d for d in rows if (d["n"], d["variant"], d["dtype"], d["momentum"]) == k and d["threads"] == t]
                if first:
                    line += " %.2f |" % (ds[0]["bytes_per_elem"] if ds else float("nan"))
                    first = False
                if ds:
                    d = ds[-1]  # a rerun (later line) replaces an earlier one
                    line += " %.1f | %.2f | %.1f | %.3f |" % (d["elems_per_s"] / 1e6, d["bytes_per_s"] / 1e9,
                                                            d["stream_bytes_per_s"] / 1e9, d["fraction_of_stream"])
                else:
                    line += " | | | |"
            print(line)
    else:
        print("| case | n | tensors | variant | dtype | momentum | ms/step | GB/s | copy GB/s | fraction of copy |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for d in rows:
            print("| %s | %d | %d | %s | %s | %s | %.4f | %.1f | %.1f | %.3f |" % (
                d.get("case", "size"), d["n"], d.get("tensors", 1), d["variant"], d["dtype"],
                "yes" if d["momentum"] else "no", d["ms_per_step"], d["bytes_per_s"] / 1e9,
                d["copy_bytes_per_s"] / 1e9, d["fraction_of_copy"]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("-o", "--out", help="output PNG")
    ap.add_argument("--table", action="store_true", help="print a Markdown table instead of plotting")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU: plot only this thread count (default: the largest present)")
    ap.add_argument("--title", default=None)
    ap.add_argument("--logy", action="store_true", help="logarithmic fraction axis (for fractions far below 1)")
    args = ap.parse_args()

    rows = read(args.files)
    if not rows:
        sys.exit("no benchmark lines with a variant and a fraction in %s" % ", ".join(args.files))
    if args.table:
        table(rows)
        return
    if not args.out:
        ap.error("-o/--out is required unless --table is given")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backend = rows[0].get("backend", "cpu")
    if backend == "cpu":
        threads = args.threads or max(d.get("threads", 1) for d in rows)
        rows = [d for d in rows if d.get("threads", 1) == threads]
        baseline = "read-modify-write stream over the same arrays"
        subtitle = "CPU, %d thread%s" % (threads, "" if threads == 1 else "s")
        device = None
    else:
        baseline = "device-to-device copy of the same bytes"
        device = rows[0].get("device", "GPU")
        subtitle = device

    dtypes = [t for t in DTYPES if any(d["dtype"] == t for d in rows)]
    fig, axes = plt.subplots(1, len(dtypes), figsize=(5.2 * len(dtypes), 4.4), sharey=True, squeeze=False)
    ymax = max(1.05, max(fraction(d) for d in rows) * 1.08)
    for ax, dt in zip(axes[0], dtypes):
        series = collections.defaultdict(list)
        models = collections.defaultdict(list)
        for d in rows:
            if d["dtype"] != dt:
                continue
            key = (d["variant"], bool(d["momentum"]))
            if d.get("case", "size") == "size":
                series[key].append((d["n"], fraction(d)))
            else:
                models[key].append((d["n"], fraction(d), d["case"]))
        for v in VARIANTS:
            for mom in (False, True):
                pts = sorted(series.get((v, mom), []))
                label = "%s%s" % (v, " + momentum" if mom else "")
                if pts:
                    xs, ys = zip(*pts)
                    ax.plot(xs, ys, marker="o", ms=4, color=COLORS[v], ls="--" if mom else "-", label=label)
                for n, fr, case in models.get((v, mom), []):
                    ax.plot([n], [fr], marker="*", ms=11, color=COLORS[v], ls="none",
                            markeredgecolor="black" if mom else COLORS[v])
                    ax.annotate(case, (n, fr), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.axhline(1.0, color="gray", lw=0.8, ls=":")
        ax.set_xscale("log", base=2 if backend == "cpu" else 10)
        if args.logy:
            ax.set_yscale("log")
            ax.set_ylim(max(1e-3, 0.7 * min(fraction(d) for d in rows)), ymax)
        else:
            ax.set_ylim(0, ymax)
        ax.set_title("%s params/grads" % dt)
        ax.set_xlabel("elements per tensor" if backend == "cpu" else "elements (stars: model cases, total)")
        ax.grid(True, which="both" if args.logy else "major", alpha=0.3)
    axes[0][0].set_ylabel("achieved bytes/s / baseline bytes/s")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(args.title or "qrmsprop step: fraction of %s (%s)" % (baseline, subtitle), fontsize=11)
    fig.tight_layout(rect=(0, 0.1, 1, 0.95))
    fig.savefig(args.out, dpi=110)
    print("wrote %s (%d cases)" % (args.out, len(rows)))


if __name__ == "__main__":
    main()
