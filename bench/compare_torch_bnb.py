#!/usr/bin/env python3
"""Side by side in one process, same tensors: qrmsprop (through its C ABI, with
ctypes, on torch tensors) against bitsandbytes' RMSprop32bit / RMSprop8bit and
torch.optim.RMSprop, on one GPU (--device cuda, the default) or on the CPU
(--device cpu).

Workloads: one large tensor (default 1e8 elements on the GPU, 2^24 on the
CPU) and the 148 parameter tensors of GPT-2 124M. For each optimizer: median
step time (CUDA events on the GPU, perf_counter on the CPU, around a few
steps after a warm-up), the optimizer state bytes it holds, and the ratios of
every other optimizer's step time to qrmsprop's. One JSON line per
measurement on stdout; then one "summary" line per workload.

GPU (--device cuda): torch.optim.RMSprop with foreach and with capturable.
Needs torch with CUDA and libqrmsprop.so built with CUDA (QRMS_CUDA=ON).
bitsandbytes is optional. The GPU machines have no internet, so bitsandbytes
comes from a wheel fetched beforehand on a machine with internet, into
wheels/ at the repository root:

    pip download bitsandbytes --no-deps --only-binary=:all: \
        --platform manylinux_2_24_x86_64 --python-version 3.11 -d wheels/

(match --python-version to the GPU machine's python). If bitsandbytes does not
import, this script installs the newest wheels/bitsandbytes-*.whl with
`pip install --no-index --no-deps` (falling back to --user); without a wheel
the bitsandbytes rows are skipped with a JSON note saying so.

CPU (--device cpu): qrmsprop's CPU backend on torch CPU tensors, against
torch.optim.RMSprop with foreach=False and foreach=True and bitsandbytes'
CPU optimizers (bitsandbytes 0.50 runs RMSprop32bit / RMSprop8bit on CPU
tensors). --threads (default 2) sets torch.set_num_threads,
qrms_set_num_threads and OMP_NUM_THREADS. Any libqrmsprop.so works (a
CPU-only build is enough). Every line carries os.getloadavg(), the
process's CPU ms per step (cpu_ms_per_step, all threads) and its share of
the --threads CPUs while timed (cpu_share; near 1.0 on a quiet machine): on
a shared machine, read the ratios, not the milliseconds, and compare
cpu_share between lines. Before timing (--no-check skips it), it checks
agreement from one start over --check-steps steps with fresh f32 gradients
every step, on 2^20 elements: qrmsprop 32-bit against torch.optim.RMSprop
(foreach=False), relative differences of parameters and square averages;
qrmsprop 8-bit against bitsandbytes 8-bit, how many square-average codes
differ, and after the first step how many of each library's codes are not
the nearest code of its own float32 square average; and the two quantizers
alone on the same values. Steps: torch and bitsandbytes from PyPI in a
virtual environment (PyPI's torch is the CUDA build; it runs on the CPU),
a CPU-only build of the library:

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install torch bitsandbytes numpy
    cmake -S . -B build-cpu -DQRMS_CUDA=OFF -DCMAKE_BUILD_TYPE=Release \
        -DQRMS_BUILD_TESTS=OFF -DQRMS_BUILD_BENCH=OFF
    cmake --build build-cpu -j2 --target qrmsprop
    /tmp/venv/bin/python bench/compare_torch_bnb.py --device cpu --lib build-cpu/libqrmsprop.so \
        --dtype f32 > cpu-compare.jsonl
    /tmp/venv/bin/python bench/compare_torch_bnb.py --device cpu --lib build-cpu/libqrmsprop.so \
        --dtype bf16 --no-check >> cpu-compare.jsonl

Usage:
    python3 bench/compare_torch_bnb.py [--device cuda|cpu] [--lib build/libqrmsprop.so] [--n 1e8]
        [--dtype f32|bf16|f16] [--workloads tensor,gpt2] [--iters N] [--reps N] [--warmup N]
        [--threads 2] [--check-steps 10] [--no-check]
        [--wheels wheels] [--no-install] [--quick]
"""

import argparse
import ctypes
import glob
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LR, ALPHA, EPS = 1e-4, 0.99, 1e-8

# qrmsprop's own Python binding declares the C ABI (ctypes only, nothing to
# build or install); this script calls the raw C functions through it.
sys.path.insert(0, os.path.join(REPO, "bindings", "python", "src"))
from qrmsprop import _lib as qlib  # noqa: E402


def emit(**fields):
    print(json.dumps(fields), flush=True)


# ---- qrmsprop through ctypes -------------------------------------------------


def find_lib(explicit):
    candidates = [explicit] if explicit else []
    if os.environ.get("QRMS_LIB"):
        candidates.append(os.environ["QRMS_LIB"])
    candidates += [
        os.path.join(REPO, "build", "libqrmsprop.so"),
        os.path.join(REPO, "build-cuda", "libqrmsprop.so"),
        "/tmp/benchbuild/libqrmsprop.so",
    ]
    for c in candidates:
        if c and os.path.exists(c):
            return c
    sys.exit(
        json.dumps({"bench": "compare", "error": "libqrmsprop.so not found; pass --lib or set QRMS_LIB",
                    "tried": candidates})
    )


class Qrms:
    def __init__(self, path):
        os.environ["QRMS_LIBRARY"] = path  # the binding loads exactly this file
        self.lib = qlib.load_library()
        self.path = path

    def check(self, status, what):
        if status != qlib.SUCCESS:
            raise RuntimeError(
                "%s: %s: %s" % (what, self.lib.qrms_status_string(status).decode(),
                                self.lib.qrms_last_error().decode())
            )


class QrmsOptimizer:
    """A qrmsprop optimizer over torch tensors (all CUDA or all CPU) that already have .grad."""

    def __init__(self, qrms, params, bits, block_wise=True, alpha=ALPHA):
        import torch

        self.q = qrms
        self.handle = ctypes.c_void_p()
        cfg = qlib.init_struct(qlib.qrms_config)  # defaults, struct_size the library accepts
        cfg.lr, cfg.alpha, cfg.eps = LR, alpha, EPS
        cfg.block_wise = 1 if block_wise else 0
        variant = qlib.RMSPROP_8BIT if bits == 8 else qlib.RMSPROP_32BIT
        self.cuda = params[0].is_cuda
        dev = (params[0].device.index or 0) if self.cuda else 0
        qrms.check(qrms.lib.qrms_optimizer_create(ctypes.byref(self.handle), variant, ctypes.byref(cfg),
                                                  qlib.DEVICE_CUDA if self.cuda else qlib.DEVICE_CPU, dev),
                   "qrms_optimizer_create")
        dtypes = {torch.float32: qlib.FLOAT32, torch.float16: qlib.FLOAT16, torch.bfloat16: qlib.BFLOAT16}
        try:
            for p in params:
                assert p.is_cuda == self.cuda and p.is_contiguous() and p.grad is not None and p.grad.is_contiguous()
                qrms.check(qrms.lib.qrms_optimizer_add_param(self.handle, ctypes.c_void_p(p.data_ptr()),
                                                             ctypes.c_void_p(p.grad.data_ptr()), dtypes[p.dtype],
                                                             p.numel(), None), "qrms_optimizer_add_param")
        except Exception:
            self.close()
            raise

    def step(self):
        import torch

        stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream) if self.cuda else None
        self.q.check(self.q.lib.qrms_optimizer_step(self.handle, stream), "qrms_optimizer_step")

    def state_bytes(self):
        out = ctypes.c_int64()
        self.q.check(self.q.lib.qrms_optimizer_state_bytes(self.handle, ctypes.byref(out)),
                     "qrms_optimizer_state_bytes")
        return out.value

    def read_state(self, index, numel):
        """State QRMS_STATE_SQUARE_AVG of parameter `index`, dequantized, as a float32 CPU tensor."""
        import torch

        out = torch.empty(numel, dtype=torch.float32)
        self.q.check(self.q.lib.qrms_optimizer_read_state(self.handle, index, qlib.STATE_SQUARE_AVG,
                                                          ctypes.cast(out.data_ptr(), qlib._FP)),
                     "qrms_optimizer_read_state")
        return out

    def close(self):
        if self.handle:
            self.q.lib.qrms_optimizer_destroy(self.handle)
            self.handle = ctypes.c_void_p()


# ---- bitsandbytes from a local wheel ---------------------------------------------


def _import_quietly():
    """bitsandbytes may print banners on import: keep stdout JSON-only."""
    import contextlib

    with contextlib.redirect_stdout(sys.stderr):
        import bitsandbytes
    return bitsandbytes


def import_bnb(wheels, allow_install):
    """Returns (module, note). module is None when bitsandbytes is unavailable."""
    try:
        bnb = _import_quietly()

        return bnb, "bitsandbytes %s (already installed)" % getattr(bnb, "__version__", "?")
    except Exception as e:  # ImportError, or a broken native library
        first_error = "%s: %s" % (type(e).__name__, e)
    found = sorted(glob.glob(os.path.join(wheels, "bitsandbytes-*.whl")))
    if not found:
        return None, ("bitsandbytes not importable (%s) and no wheel in %s: bnb columns skipped. On a machine "
                      "with internet: pip download bitsandbytes --no-deps --only-binary=:all: "
                      "--platform manylinux_2_24_x86_64 -d wheels/" % (first_error, wheels))
    if not allow_install:
        return None, "bitsandbytes not importable and --no-install given: bnb columns skipped"
    wheel = found[-1]
    base = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--quiet", wheel]
    for cmd in (base, base + ["--user"]):
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode == 0:
            break
    else:
        return None, "pip install of %s failed: %s" % (wheel, r.stdout.strip()[-500:])
    import importlib
    import site

    importlib.invalidate_caches()
    user_site = site.getusersitepackages()
    if isinstance(user_site, str) and user_site not in sys.path:
        sys.path.append(user_site)
    try:
        bnb = _import_quietly()
        return bnb, "bitsandbytes %s installed from %s" % (getattr(bnb, "__version__", "?"), wheel)
    except Exception as e:
        return None, "bitsandbytes installed from %s but does not import: %s: %s" % (wheel, type(e).__name__, e)


def cpu_name():
    """The CPU as /proc/cpuinfo names it: model name, family and model."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        return "?"
    return "%s (family %s, model %s)" % (info.get("model name", "?"), info.get("cpu family", "?"),
                                         info.get("model", "?"))


# ---- workloads ---------------------------------------------------------------------------


def gpt_shapes(vocab, ctx, d, layers):
    shapes = [("wte", (vocab, d)), ("wpe", (ctx, d))]
    for layer in range(layers):
        h = "h.%d." % layer
        shapes += [
            (h + "ln_1.weight", (d,)), (h + "ln_1.bias", (d,)),
            (h + "attn.c_attn.weight", (d, 3 * d)), (h + "attn.c_attn.bias", (3 * d,)),
            (h + "attn.c_proj.weight", (d, d)), (h + "attn.c_proj.bias", (d,)),
            (h + "ln_2.weight", (d,)), (h + "ln_2.bias", (d,)),
            (h + "mlp.c_fc.weight", (d, 4 * d)), (h + "mlp.c_fc.bias", (4 * d,)),
            (h + "mlp.c_proj.weight", (4 * d, d)), (h + "mlp.c_proj.bias", (d,)),
        ]
    shapes += [("ln_f.weight", (d,)), ("ln_f.bias", (d,))]
    return shapes


def make_params(shapes, dtype, device, seed=0):
    import torch

    gen = torch.Generator(device=device).manual_seed(seed)
    params = []
    for _, shape in shapes:
        p = torch.nn.Parameter((torch.randn(shape, device=device, generator=gen) * 0.5).to(dtype))
        p.grad = (torch.randn(shape, device=device, generator=gen) * 0.01).to(dtype)
        params.append(p)
    return params


def torch_state_bytes(opt, device):
    """Unique storage on `device` ("cuda" or "cpu") held in opt.state (bnb shares qmap
    tensors between params)."""
    import torch

    seen, total = set(), 0
    for st in opt.state.values():
        for v in st.values():
            if torch.is_tensor(v) and v.device.type == device:
                key = (v.untyped_storage().data_ptr(), v.untyped_storage().nbytes())
                if key not in seen:
                    seen.add(key)
                    total += v.untyped_storage().nbytes()
    return total


def time_steps(step, warmup, iters, reps, device, threads=1):
    """Median and minimum ms per step over `reps` samples of `iters` steps, after `warmup`
    steps, and (CPU) a dict: the process's CPU ms per timed step (all threads) and its share
    of `threads` CPUs over the timed steps (near 1.0 when nothing else competes)."""
    import torch

    for _ in range(warmup):
        step()
    if device == "cpu":
        samples = []
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for _ in range(reps):
            t0 = time.perf_counter()
            for _ in range(iters):
                step()
            samples.append((time.perf_counter() - t0) * 1e3 / iters)
        cpu_s, wall_s = time.process_time() - cpu0, time.perf_counter() - wall0
        return statistics.median(samples), min(samples), dict(cpu_ms_per_step=cpu_s * 1e3 / (reps * iters),
                                                              cpu_share=cpu_s / (wall_s * threads))
    torch.cuda.synchronize()
    samples = []
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(reps):
        start.record()
        for _ in range(iters):
            step()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / iters)
    return statistics.median(samples), min(samples), None


def contenders(qrms, bnb, torch, device):
    """(name, factory(params) -> (step, state_bytes, close)) for every optimizer compared."""

    def qrms_factory(bits, block_wise=True):
        def make(params):
            o = QrmsOptimizer(qrms, params, bits, block_wise)
            return o.step, o.state_bytes, o.close
        return make

    def torch_factory(**kw):
        def make(params):
            o = torch.optim.RMSprop(params, lr=LR, alpha=ALPHA, eps=EPS, **kw)
            return o.step, (lambda: torch_state_bytes(o, device)), (lambda: o.state.clear())
        return make

    def bnb_factory(cls):
        def make(params):
            o = cls(params, lr=LR, alpha=ALPHA, eps=EPS)
            return o.step, (lambda: torch_state_bytes(o, device)), (lambda: o.state.clear())
        return make

    out = [
        ("qrmsprop_32bit", qrms_factory(32)),
        ("qrmsprop_8bit_blockwise", qrms_factory(8, True)),
    ]
    if bnb is not None:
        out += [
            ("bnb_RMSprop32bit", bnb_factory(bnb.optim.RMSprop32bit)),
            ("bnb_RMSprop8bit", bnb_factory(bnb.optim.RMSprop8bit)),
        ]
    if device == "cpu":
        out += [
            ("torch_RMSprop", torch_factory(foreach=False)),
            ("torch_RMSprop_foreach", torch_factory(foreach=True)),
        ]
    else:
        out += [
            ("torch_RMSprop_foreach", torch_factory(foreach=True)),
            ("torch_RMSprop_capturable", torch_factory(foreach=True, capturable=True)),
        ]
    return out


def check_against_torch(qrms, torch):
    """Three steps of qrmsprop 32-bit against torch.optim.RMSprop, fp32, 1e6 elements:
    a sanity check that the ctypes binding drives the right tensors."""
    shapes = [("check", (1000, 1000))]
    a = make_params(shapes, torch.float32, "cuda", seed=7)
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    for p, q in zip(a, b):
        q.grad = p.grad.clone()
    o = QrmsOptimizer(qrms, a, 32)
    try:
        for _ in range(3):
            o.step()
    finally:
        torch.cuda.synchronize()
        o.close()
    t = torch.optim.RMSprop(b, lr=LR, alpha=ALPHA, eps=EPS, foreach=False)
    for _ in range(3):
        t.step()
    diff = max((p.float() - q.float()).abs().max().item() for p, q in zip(a, b))
    emit(bench="compare", check="qrmsprop_32bit vs torch.optim.RMSprop, fp32, 3 steps, 1e6 elements",
         max_abs_diff=diff)


def rel_diff(a, b):
    """Element-wise: max |a - b| / |b| over the elements where b != 0, in float64."""
    a, b = a.double().flatten(), b.double().flatten()
    nz = b != 0
    return ((a[nz] - b[nz]).abs() / b[nz].abs()).max().item()


def norm_rel_diff(a, b):
    """max |a - b| / max |b|, in float64 (parameters near zero would dominate rel_diff)."""
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max()).item()


def check_cpu_agreement(qrms, bnb, torch, steps, n=1 << 20):
    """From one start, `steps` steps with the same fresh f32 gradients, one tensor of n
    elements. qrmsprop 32-bit against torch.optim.RMSprop (foreach=False), at alpha 0.99
    (1 - alpha is not exact in float32) and 0.875 (exact). qrmsprop 8-bit block-wise
    against bitsandbytes' RMSprop8bit: codes compared after the first and the last step
    (qrmsprop's read back dequantized and quantized again, which gives the same codes), and
    after the first step each library's codes against the nearest code of the float32 square
    average it quantized (qrmsprop's: its 32-bit state; bitsandbytes' CPU step has torch's
    arithmetic: torch's state), in its own map. Last, the two quantizers alone on the same
    values and map: bitsandbytes.functional.quantize_blockwise and qrms_quantize_blockwise."""
    steps = max(1, steps)
    gen = torch.Generator().manual_seed(7)
    start = torch.randn(n, generator=gen) * 0.5
    grads = [torch.randn(n, generator=gen) * 0.01 for _ in range(steps)]

    def param():
        p = torch.nn.Parameter(start.clone())
        p.grad = torch.zeros(n)
        return p

    def run(p, step, k):
        p.grad.copy_(grads[k])
        step()

    s1 = {}  # alpha -> (qrmsprop's, torch's) square average after step 1
    for alpha in (ALPHA, 0.875):
        a, b = param(), param()
        qa = QrmsOptimizer(qrms, [a], 32, alpha=alpha)
        tb = torch.optim.RMSprop([b], lr=LR, alpha=alpha, eps=EPS, foreach=False)
        try:
            for k in range(steps):
                run(a, qa.step, k)
                run(b, tb.step, k)
                if k == 0:
                    s1[alpha] = (qa.read_state(0, n), tb.state[b]["square_avg"].clone())
            emit(bench="compare", check="qrmsprop_32bit vs torch.optim.RMSprop(foreach=False)", dtype="f32",
                 numel=n, steps=steps, alpha=alpha,
                 square_avg_step1_max_rel_diff=rel_diff(*s1[alpha]),
                 square_avg_max_rel_diff=rel_diff(qa.read_state(0, n), tb.state[b]["square_avg"]),
                 param_max_abs_diff=(a - b).abs().max().item(), param_norm_rel_diff=norm_rel_diff(a, b),
                 param_max_move=(b - start).abs().max().item())
        finally:
            qa.close()
    if bnb is None:
        return

    qmap = torch.empty(256, dtype=torch.float32)
    qrms.check(qrms.lib.qrms_dynamic_map(1, ctypes.cast(qmap.data_ptr(), qlib._FP)), "qrms_dynamic_map")
    fp = lambda t: ctypes.cast(t.data_ptr(), qlib._FP)  # noqa: E731

    def nearest(x, code_map, bs):
        """The nearest codes of x (qrmsprop's rule) in code_map, and the absmax per block."""
        codes = torch.empty(n, dtype=torch.uint8)
        absmax = torch.empty((n + bs - 1) // bs, dtype=torch.float32)
        qrms.check(qrms.lib.qrms_quantize_blockwise(qlib.DEVICE_CPU, fp(code_map.contiguous()), fp(x),
                                                    ctypes.cast(codes.data_ptr(), qlib._U8P), fp(absmax), n,
                                                    bs, None), "qrms_quantize_blockwise")
        return codes, absmax

    def farther(codes, ref, absmax, x, code_map, bs):
        """How many codes are strictly farther from x / absmax than ref's codes (float64)."""
        y = x.double() / absmax.double().repeat_interleave(bs)[:n]
        m = code_map.double()
        return int(((m[codes.long()] - y).abs() > (m[ref.long()] - y).abs()).sum())

    c, d = param(), param()
    qc = QrmsOptimizer(qrms, [c], 8)
    bd = bnb.optim.RMSprop8bit([d], lr=LR, alpha=ALPHA, eps=EPS)
    try:
        out = {}
        for k in range(steps):
            run(c, qc.step, k)
            run(d, bd.step, k)
            st = bd.state[d]
            bs, bmap = n // st["absmax1"].numel(), st["qmap1"].float()
            qcodes, qabsmax = nearest(qc.read_state(0, n), qmap, bs)
            if k == 0:
                qs1, ts1 = s1[ALPHA]
                ref_q, _ = nearest(qs1, qmap, bs)
                ref_b, ref_b_absmax = nearest(ts1, bmap, bs)
                out.update(
                    blocksize=bs, map_entries_differ=int((bmap != qmap).sum()),
                    map_max_abs_diff=(bmap - qmap).abs().max().item(),
                    step1_codes_differ=int((qcodes != st["state1"]).sum()),
                    step1_absmax_max_rel_diff=rel_diff(qabsmax, st["absmax1"]),
                    step1_qrms_codes_not_nearest=int((qcodes != ref_q).sum()),
                    step1_bnb_codes_not_nearest=int((st["state1"] != ref_b).sum()),
                    step1_bnb_codes_farther_than_nearest=farther(st["state1"], ref_b, ref_b_absmax, ts1, bmap, bs))
        out.update(codes_differ=int((qcodes != st["state1"]).sum()),
                   param_max_abs_diff=(c - d).abs().max().item(), param_norm_rel_diff=norm_rel_diff(c, d))
        emit(bench="compare", check="qrmsprop_8bit_blockwise vs bnb RMSprop8bit", dtype="f32", numel=n,
             steps=steps, **out)
    finally:
        qc.close()

    import bitsandbytes.functional as F

    for what, x in (("square_avg_step1", s1[ALPHA][1]), ("signed_randn", torch.randn(n, generator=gen))):
        ref, ref_absmax = nearest(x, bmap, bs)
        codes, state = F.quantize_blockwise(x, code=bmap.clone(), blocksize=bs)
        emit(bench="compare", check="bitsandbytes.functional.quantize_blockwise vs qrms_quantize_blockwise",
             values=what, map="bitsandbytes'", numel=n, blocksize=bs,
             absmax_differ=int((state.absmax != ref_absmax).sum()), codes_differ=int((codes != ref).sum()),
             bnb_codes_farther_than_nearest=farther(codes, ref, ref_absmax, x, bmap, bs))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--lib", help="path to libqrmsprop.so (default: $QRMS_LIB, build/, /tmp/benchbuild/)")
    ap.add_argument("--n", type=float, help="elements of the large-tensor workload (1e8 GPU, 2^24 CPU)")
    ap.add_argument("--dtype", choices=["f32", "bf16", "f16"], default="f32")
    ap.add_argument("--workloads", default="tensor,gpt2", help="comma list of tensor, gpt2")
    ap.add_argument("--iters", type=int, help="steps per timed sample (20 GPU, 2 CPU)")
    ap.add_argument("--reps", type=int, help="timed samples, median reported (5 GPU, 3 CPU)")
    ap.add_argument("--warmup", type=int, help="untimed steps first (5 GPU, 1 CPU)")
    ap.add_argument("--threads", type=int, default=2, help="CPU: threads of torch, qrmsprop and OpenMP")
    ap.add_argument("--check-steps", type=int, default=10, help="CPU: steps of the agreement check")
    ap.add_argument("--no-check", action="store_true", help="CPU: skip the agreement check")
    ap.add_argument("--wheels", default=os.path.join(REPO, "wheels"), help="folder with a bitsandbytes wheel")
    ap.add_argument("--no-install", action="store_true", help="never pip-install bitsandbytes")
    ap.add_argument("--quick", action="store_true", help="fewer, shorter samples")
    args = ap.parse_args()
    cpu = args.device == "cpu"
    defaults = (2, 3, 1, 1 << 24) if cpu else (20, 5, 5, 1e8)  # iters, reps, warmup, n
    if args.quick:
        defaults = (1, 3, 1, 1 << 24) if cpu else (10, 3, 3, 1e8)
    for name, value in zip(("iters", "reps", "warmup", "n"), defaults):
        if getattr(args, name) is None:
            setattr(args, name, value)
    if cpu:  # before torch (and bitsandbytes) start their thread pools
        os.environ["OMP_NUM_THREADS"] = str(args.threads)

    try:
        import torch
    except ImportError as e:
        emit(bench="compare", error="torch is not installed: %s" % e)
        return 1
    if not cpu and not torch.cuda.is_available():
        emit(bench="compare", skipped="no CUDA device visible to torch")
        return 77

    qrms = Qrms(find_lib(args.lib))
    if not cpu and qrms.lib.qrms_cuda_device_count() == 0:
        emit(bench="compare", skipped="%s was built without CUDA support" % qrms.path)
        return 77
    bnb, bnb_note = import_bnb(args.wheels, not args.no_install)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[args.dtype]
    if cpu:
        torch.set_num_threads(args.threads)
        qrms.check(qrms.lib.qrms_set_num_threads(args.threads), "qrms_set_num_threads")
        emit(bench="compare", meta=True, device="cpu", cpu=cpu_name(), threads=args.threads,
             torch=torch.__version__, torch_threads=torch.get_num_threads(),
             qrms_threads=int(qrms.lib.qrms_get_num_threads()), qrms_lib=qrms.path,
             qrms_version=int(qrms.lib.qrms_version()), bitsandbytes=bnb_note, python=sys.version.split()[0],
             dtype=args.dtype, lr=LR, alpha=ALPHA, eps=EPS, iters=args.iters, reps=args.reps,
             warmup=args.warmup, loadavg=os.getloadavg())
        if not args.no_check:
            check_cpu_agreement(qrms, bnb, torch, args.check_steps)
    else:
        emit(bench="compare", meta=True, device=torch.cuda.get_device_name(), torch=torch.__version__,
             torch_cuda=torch.version.cuda, qrms_lib=qrms.path, qrms_version=int(qrms.lib.qrms_version()),
             bitsandbytes=bnb_note, dtype=args.dtype, lr=LR, alpha=ALPHA, eps=EPS)
        check_against_torch(qrms, torch)

    workloads = []
    for w in args.workloads.split(","):
        if w == "tensor":
            label = ("tensor_2^%d" % (int(args.n).bit_length() - 1)) if int(args.n) & (int(args.n) - 1) == 0 \
                else "tensor_%.0e" % args.n
            workloads.append((label, [("tensor", (int(args.n),))]))
        elif w == "gpt2":
            workloads.append(("gpt2_124m", gpt_shapes(50257, 1024, 768, 12)))
        else:
            emit(bench="compare", error="unknown workload %s" % w)
            return 1

    failed = False
    for wname, shapes in workloads:
        params = make_params(shapes, dtype, args.device)
        numel = sum(p.numel() for p in params)
        results = {}
        for name, factory in contenders(qrms, bnb, torch, args.device):
            try:
                step, state_bytes, close = factory(params)
            except Exception as e:  # e.g. a dtype bitsandbytes or torch rejects
                emit(bench="compare", workload=wname, impl=name, error="%s: %s" % (type(e).__name__, e))
                failed = failed or name.startswith("qrmsprop")
                continue
            try:
                ms, ms_min, cpu_use = time_steps(step, args.warmup, args.iters, args.reps, args.device,
                                                 args.threads)
                sb = state_bytes()
                results[name] = ms
                extra = {}
                if cpu:
                    extra = dict(threads=args.threads, loadavg=os.getloadavg(), **cpu_use)
                emit(bench="compare", workload=wname, impl=name, dtype=args.dtype, tensors=len(params),
                     numel=numel, ms_per_step=ms, ms_per_step_min=ms_min, state_bytes=sb,
                     state_bytes_per_param=sb / numel, **extra)
            except Exception as e:
                emit(bench="compare", workload=wname, impl=name, error="%s: %s" % (type(e).__name__, e))
                failed = failed or name.startswith("qrmsprop")
            finally:
                close()
                if not cpu:
                    torch.cuda.synchronize()
                    torch.cuda.empty_cache()

        # speedup = other's step time / qrmsprop's (> 1: qrmsprop is faster).
        def ratio(other, ours):
            if other in results and ours in results and results[ours] > 0:
                return results[other] / results[ours]
            return None

        extra = {}
        if cpu:
            extra = dict(speedup_32bit_vs_torch=ratio("torch_RMSprop", "qrmsprop_32bit"),
                         speedup_8bit_vs_torch=ratio("torch_RMSprop", "qrmsprop_8bit_blockwise"),
                         loadavg=os.getloadavg())
        else:
            extra = dict(speedup_32bit_vs_torch_capturable=ratio("torch_RMSprop_capturable", "qrmsprop_32bit"))
        emit(bench="compare", summary=True, workload=wname, dtype=args.dtype,
             bnb=bnb_note if bnb is None else "present",
             speedup_8bit_vs_bnb8bit=ratio("bnb_RMSprop8bit", "qrmsprop_8bit_blockwise"),
             speedup_32bit_vs_bnb32bit=ratio("bnb_RMSprop32bit", "qrmsprop_32bit"),
             speedup_32bit_vs_torch_foreach=ratio("torch_RMSprop_foreach", "qrmsprop_32bit"),
             speedup_8bit_vs_torch_foreach=ratio("torch_RMSprop_foreach", "qrmsprop_8bit_blockwise"), **extra)
        del params
        if not cpu:
            torch.cuda.empty_cache()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
