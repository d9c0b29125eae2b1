#!/usr/bin/env python3
"""Per-kernel SASS figures against the H200's instruction budget.

Reads `cuobjdump -res-usage` and `nvdisasm -c` output of sm_90 cubins and
prints, per update kernel (and per quantizer probe kernel): registers, stack
(spills), shared memory, whether 4 blocks of 256 threads fit an SM, and the
instructions per element of its hot loop next to the budget at 4.3 TB/s.

Hot loop: the longest loop (backward branch) with a global store in it. Its
count is static: every instruction of the body once, all paths (vector and
tail accesses, momentum, skip_zeros), so it is an upper bound of what one
element executes, except that a loop inside it that reads shared memory (the
map's binary search) counts 8 times (its trip count over 256 entries).
Elements per iteration: 8 for the update kernels (kVec, one chunk per
iteration), the number of byte stores for the probes. lds/elem: static
shared-memory loads in the hot loop per element (searches counted once).

Common path (columns common and common+mom): the hot loop of the
common-path probe of the same dtype and kind (bench/quant_probe.cu), which
runs the update kernel's element code with constant options: full aligned
chunks, no weight decay, skip_zeros, clipping, max_unorm or stochastic
rounding, without and with momentum. Every instruction of that loop, once,
over 8 elements: close to what a plain step executes per element. It errs
both ways (docs/performance.md, "The common path against the budget"): it
counts the slow-path call sites and the search behind its branch, and it
misses the selects the update kernel applies on every element for weight
decay, skip_zeros and momentum (about 6-10 instructions per element). This
is the figure to hold against the budget.

Budget: 132 SMs x 4 schedulers x 1.7 GHz warp instructions per second, x 32
threads, over the elements per second the bus moves at 4.3 TB/s:
6.68 x bytes per element thread-instructions per element.
"""
import re
import subprocess
import sys

ISSUE = 132 * 4 * 1.7e9 * 32  # thread-instructions per second
BUS = 4.3e12                  # bytes per second
DTYPE_BYTES = {"float": 4, "qrms::math::half_t": 2, "qrms::math::bf16_t": 2}
DTYPE_NAME = {"float": "f32", "qrms::math::half_t": "f16", "qrms::math::bf16_t": "bf16"}
KIND = {"0": "32bit", "1": "8bit_blockwise", "2": "8bit_tensor", "3": "4bit"}


def bytes_per_element(dtype, kind, momentum):
    d = DTYPE_BYTES[dtype]
    state = {"32bit": 8.0, "8bit_blockwise": 2.0 + 8.0 / 256, "8bit_tensor": 2.0, "4bit": 1.0 + 8.0 / 128}[kind]
    return 3 * d + state * (2 if momentum else 1)


def demangle(names):
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    return dict(zip(names, out.splitlines()))


def resources(text):
    res, fn = {}, None
    for line in text.splitlines():
        m = re.match(r"\s*Function (\S+):", line)
        if m:
            fn = m.group(1)
            continue
        if fn and "REG:" in line:
            res[fn] = {k: int(v) for k, v in re.findall(r"(\w+(?:\[\d+\])?):(\d+)", line)}
            fn = None
    return res


def functions(sass):
    funcs, cur = {}, None
    for line in sass.splitlines():
        m = re.match(r"^\.text\.(\S+):$", line)
        if m:
            cur = m.group(1)
            funcs[cur] = []
            continue
        if cur is None:
            continue
        m = re.match(r"^(\.L_x_\d+):", line)
        if m:
            funcs[cur].append(("label", m.group(1)))
            continue
        m = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(.*?)\s*;", line)
        if m:
            funcs[cur].append(("ins", m.group(1)))
    return funcs


SEARCH_TRIPS = 8  # a binary search over the 256-entry map halves its range 8 times


def hot_loop(items):
    ins, labels = [], {}
    for kind, val in items:
        if kind == "label":
            labels[val] = len(ins)
        else:
            ins.append(val)
    loops = []  # (first, last) instruction index of each backward branch's body
    for i, text in enumerate(ins):
        m = re.search(r"\bBRA\b.*`\((\.L_x_\d+)\)", text)
        if m and m.group(1) in labels and labels[m.group(1)] <= i:
            loops.append((labels[m.group(1)], i))
    with_stores = [lp for lp in loops if any(re.search(r"\bSTG\b", t) for t in ins[lp[0]:lp[1] + 1])]
    if not with_stores:
        return None
    first, last = max(with_stores, key=lambda lp: lp[1] - lp[0])
    body = ins[first:last + 1]
    # Loops inside the hot loop that read shared memory are map searches:
    # counted SEARCH_TRIPS times; other inner loops (the tensor walk) once.
    extra = 0
    for a, b in loops:
        if first <= a and b < last and any(re.search(r"\bLDS\b", t) for t in ins[a:b + 1]):
            extra += (SEARCH_TRIPS - 1) * (b - a + 1)
    return {"instructions": len(body), "dynamic": len(body) + extra,
            "byte_stores": sum(1 for t in body if re.search(r"\bSTG\.E\.U8\b", t)),
            "shared_loads": sum(1 for t in body if re.search(r"\bLDS", t))}


def main(argv):
    # argv: pairs of (res-usage file, sass file); the last argument is a label.
    label = argv[-1]
    rows, common = [], {}
    for res_file, sass_file in zip(argv[:-1:2], argv[1:-1:2]):
        res = resources(open(res_file).read())
        funcs = functions(open(sass_file).read())
        names = demangle(list(funcs))
        for mangled, items in funcs.items():
            name = names[mangled]
            c = re.search(r"probe_common_kernel<(.+), \(qrms::core::StateKind\)(\d), (true|false)>", name)
            if c:
                loop = hot_loop(items)
                key = f"update {KIND[c.group(2)]} {DTYPE_NAME[c.group(1)]}"
                common[(key, c.group(3) == "true")] = loop["instructions"] / 8 if loop else float("nan")
                continue
            m = re.search(r"(update|reduce)_kernel_impl<(.+), \(qrms::core::StateKind\)(\d)>", name)
            p = re.search(r"(probe_\w+)_kernel", name)
            if not (m and m.group(1) == "update") and not p:
                continue
            loop = hot_loop(items)
            r = res.get(mangled, {})
            regs = r.get("REG", 0)
            row = {"kernel": (f"update {KIND[m.group(3)]} {DTYPE_NAME[m.group(2)]}" if m else p.group(1)),
                   "regs": regs, "stack": r.get("STACK", 0), "local": r.get("LOCAL", 0),
                   "shared": r.get("SHARED", 0), "4x256/SM": "yes" if regs * 256 * 4 <= 65536 else "no"}
            if loop:
                per = 8 if m else max(1, loop["byte_stores"])
                row["loop_ins"] = loop["instructions"]
                row["ins/elem"] = loop["dynamic"] / per
                row["lds/elem"] = loop["shared_loads"] / per
            if m:
                row["budget"] = ISSUE / (BUS / bytes_per_element(m.group(2), KIND[m.group(3)], False))
                row["budget_mom"] = ISSUE / (BUS / bytes_per_element(m.group(2), KIND[m.group(3)], True))
            rows.append(row)
    rows.sort(key=lambda r: r["kernel"])
    nan = float("nan")
    print(f"SASS report ({label}; sm_90; hot loop instructions per element: static, all paths, searches x8;"
          " common: the common path, once)")
    print(f"{'kernel':28} {'regs':>4} {'stack':>5} {'local':>5} {'shared':>6} {'4x256/SM':>8} {'loop':>5} "
          f"{'ins/elem':>8} {'lds/elem':>8} {'budget':>6} {'budget+mom':>10} {'common':>6} {'common+mom':>10} "
          f"{'within':>6}")
    for r in rows:
        plain, mom = common.get((r["kernel"], False), nan), common.get((r["kernel"], True), nan)
        within = ""
        if "budget" in r and plain == plain and mom == mom:
            within = {(True, True): "yes", (True, False): "plain", (False, True): "mom", (False, False): "no"}[
                (plain <= r["budget"], mom <= r["budget_mom"])]
        print(f"{r['kernel']:28} {r['regs']:4d} {r['stack']:5d} {r['local']:5d} {r['shared']:6d} {r['4x256/SM']:>8} "
              f"{r.get('loop_ins', 0):5d} {r.get('ins/elem', 0):8.1f} {r.get('lds/elem', 0):8.1f} "
              f"{r.get('budget', nan):6.1f} {r.get('budget_mom', nan):10.1f} "
              f"{plain if 'budget' in r else nan:6.1f} {mom if 'budget' in r else nan:10.1f} {within:>6}")


if __name__ == "__main__":
    main(sys.argv[1:])
