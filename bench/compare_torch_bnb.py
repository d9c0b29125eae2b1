#!/usr/bin/env python3
"""Side by side on one GPU, same run, same tensors: qrmsprop (through its C ABI,
with ctypes, on torch CUDA tensors) against bitsandbytes' RMSprop32bit /
RMSprop8bit and torch.optim.RMSprop (foreach, and capturable).

Workloads: one large tensor (default 1e8 elements) and the 148 parameter
tensors of GPT-2 124M. For each optimizer: median step time (CUDA events
around many steps after a warm-up), the optimizer state bytes it holds, and
the ratios of every other optimizer's step time to qrmsprop's. One JSON line
per measurement on stdout; then one "summary" line per workload.

Requirements on the GPU machine: torch with CUDA, libqrmsprop.so built with
CUDA (QRMS_CUDA=ON). bitsandbytes is optional. The GPU machines have no
internet, so bitsandbytes comes from a wheel fetched beforehand on a machine
with internet, into wheels/ at the repository root:

    pip download bitsandbytes --no-deps --only-binary=:all: \
        --platform manylinux_2_24_x86_64 --python-version 3.11 -d wheels/

(match --python-version to the GPU machine's python). If bitsandbytes does not
import, this script installs the newest wheels/bitsandbytes-*.whl with
`pip install --no-index --no-deps` (falling back to --user); without a wheel
the bitsandbytes rows are skipped with a JSON note saying so.

Usage:
    python3 bench/compare_torch_bnb.py [--lib build/libqrmsprop.so] [--n 1e8]
        [--dtype f32|bf16|f16] [--workloads tensor,gpt2] [--iters 20] [--reps 5]
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
    """A qrmsprop optimizer over torch CUDA tensors that already have .grad."""

    def __init__(self, qrms, params, bits, block_wise=True):
        import torch

        self.q = qrms
        self.handle = ctypes.c_void_p()
        cfg = qlib.init_struct(qlib.qrms_config)  # defaults, struct_size the library accepts
        cfg.lr, cfg.alpha, cfg.eps = LR, ALPHA, EPS
        cfg.block_wise = 1 if block_wise else 0
        variant = qlib.RMSPROP_8BIT if bits == 8 else qlib.RMSPROP_32BIT
        dev = params[0].device.index or 0
        qrms.check(qrms.lib.qrms_optimizer_create(ctypes.byref(self.handle), variant, ctypes.byref(cfg),
                                                  qlib.DEVICE_CUDA, dev), "qrms_optimizer_create")
        dtypes = {torch.float32: qlib.FLOAT32, torch.float16: qlib.FLOAT16, torch.bfloat16: qlib.BFLOAT16}
        try:
            for p in params:
                assert p.is_cuda and p.is_contiguous() and p.grad is not None and p.grad.is_contiguous()
                qrms.check(qrms.lib.qrms_optimizer_add_param(self.handle, ctypes.c_void_p(p.data_ptr()),
                                                             ctypes.c_void_p(p.grad.data_ptr()), dtypes[p.dtype],
                                                             p.numel(), None), "qrms_optimizer_add_param")
        except Exception:
            self.close()
            raise

    def step(self):
        import torch

        stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
        self.q.check(self.q.lib.qrms_optimizer_step(self.handle, stream), "qrms_optimizer_step")

    def state_bytes(self):
        out = ctypes.c_int64()
        self.q.check(self.q.lib.qrms_optimizer_state_bytes(self.handle, ctypes.byref(out)),
                     "qrms_optimizer_state_bytes")
        return out.value

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


def make_params(shapes, dtype, seed=0):
    import torch

    gen = torch.Generator(device="cuda").manual_seed(seed)
    params = []
    for _, shape in shapes:
        p = torch.nn.Parameter((torch.randn(shape, device="cuda", generator=gen) * 0.5).to(dtype))
        p.grad = (torch.randn(shape, device="cuda", generator=gen) * 0.01).to(dtype)
        params.append(p)
    return params


def torch_state_bytes(opt):
    """Unique CUDA storage held in opt.state (bnb shares qmap tensors between params)."""
    import torch

    seen, total = set(), 0
    for st in opt.state.values():
        for v in st.values():
            if torch.is_tensor(v) and v.is_cuda:
                key = (v.untyped_storage().data_ptr(), v.untyped_storage().nbytes())
                if key not in seen:
                    seen.add(key)
                    total += v.untyped_storage().nbytes()
    return total


def time_steps(step, warmup, iters, reps):
    """Median ms per step over `reps` samples of `iters` steps, after `warmup` steps."""
    import torch

    for _ in range(warmup):
        step()
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
    return statistics.median(samples), min(samples)


def contenders(qrms, bnb, torch):
    """(name, factory(params) -> (step, state_bytes, close)) for every optimizer compared."""

    def qrms_factory(bits, block_wise=True):
        def make(params):
            o = QrmsOptimizer(qrms, params, bits, block_wise)
            return o.step, o.state_bytes, o.close
        return make

    def torch_factory(**kw):
        def make(params):
            o = torch.optim.RMSprop(params, lr=LR, alpha=ALPHA, eps=EPS, **kw)
            return o.step, (lambda: torch_state_bytes(o)), (lambda: o.state.clear())
        return make

    def bnb_factory(cls):
        def make(params):
            o = cls(params, lr=LR, alpha=ALPHA, eps=EPS)
            return o.step, (lambda: torch_state_bytes(o)), (lambda: o.state.clear())
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
    out += [
        ("torch_RMSprop_foreach", torch_factory(foreach=True)),
        ("torch_RMSprop_capturable", torch_factory(foreach=True, capturable=True)),
    ]
    return out


def check_against_torch(qrms, torch):
    """Three steps of qrmsprop 32-bit against torch.optim.RMSprop, fp32, 1e6 elements:
    a sanity check that the ctypes binding drives the right tensors."""
    shapes = [("check", (1000, 1000))]
    a = make_params(shapes, torch.float32, seed=7)
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lib", help="path to libqrmsprop.so (default: $QRMS_LIB, build/, /tmp/benchbuild/)")
    ap.add_argument("--n", type=float, default=1e8, help="elements of the large-tensor workload")
    ap.add_argument("--dtype", choices=["f32", "bf16", "f16"], default="f32")
    ap.add_argument("--workloads", default="tensor,gpt2", help="comma list of tensor, gpt2")
    ap.add_argument("--iters", type=int, default=20, help="steps per timed sample")
    ap.add_argument("--reps", type=int, default=5, help="timed samples (median reported)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--wheels", default=os.path.join(REPO, "wheels"), help="folder with a bitsandbytes wheel")
    ap.add_argument("--no-install", action="store_true", help="never pip-install bitsandbytes")
    ap.add_argument("--quick", action="store_true", help="fewer, shorter samples")
    args = ap.parse_args()
    if args.quick:
        args.iters, args.reps, args.warmup = 10, 3, 3

    try:
        import torch
    except ImportError as e:
        emit(bench="compare", error="torch is not installed: %s" % e)
        return 1
    if not torch.cuda.is_available():
        emit(bench="compare", skipped="no CUDA device visible to torch")
        return 77

    qrms = Qrms(find_lib(args.lib))
    if qrms.lib.qrms_cuda_device_count() == 0:
        emit(bench="compare", skipped="%s was built without CUDA support" % qrms.path)
        return 77
    bnb, bnb_note = import_bnb(args.wheels, not args.no_install)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[args.dtype]
    emit(bench="compare", meta=True, device=torch.cuda.get_device_name(), torch=torch.__version__,
         torch_cuda=torch.version.cuda, qrms_lib=qrms.path, qrms_version=int(qrms.lib.qrms_version()),
         bitsandbytes=bnb_note, dtype=args.dtype, lr=LR, alpha=ALPHA, eps=EPS)

    check_against_torch(qrms, torch)

    workloads = []
    for w in args.workloads.split(","):
        if w == "tensor":
            workloads.append(("tensor_%.0e" % args.n, [("tensor", (int(args.n),))]))
        elif w == "gpt2":
            workloads.append(("gpt2_124m", gpt_shapes(50257, 1024, 768, 12)))
        else:
            emit(bench="compare", error="unknown workload %s" % w)
            return 1

    failed = False
    for wname, shapes in workloads:
        params = make_params(shapes, dtype)
        numel = sum(p.numel() for p in params)
        results = {}
        for name, factory in contenders(qrms, bnb, torch):
            try:
                step, state_bytes, close = factory(params)
            except Exception as e:  # e.g. a dtype bitsandbytes or torch rejects
                emit(bench="compare", workload=wname, impl=name, error="%s: %s" % (type(e).__name__, e))
                failed = failed or name.startswith("qrmsprop")
                continue
            try:
                ms, ms_min = time_steps(step, args.warmup, args.iters, args.reps)
                sb = state_bytes()
                results[name] = ms
                emit(bench="compare", workload=wname, impl=name, dtype=args.dtype, tensors=len(params),
                     numel=numel, ms_per_step=ms, ms_per_step_min=ms_min, state_bytes=sb,
                     state_bytes_per_param=sb / numel)
            except Exception as e:
                emit(bench="compare", workload=wname, impl=name, error="%s: %s" % (type(e).__name__, e))
                failed = failed or name.startswith("qrmsprop")
            finally:
                close()
                torch.cuda.synchronize()
                torch.cuda.empty_cache()

        # speedup = other's step time / qrmsprop's (> 1: qrmsprop is faster).
        def ratio(other, ours):
            if other in results and ours in results and results[ours] > 0:
                return results[other] / results[ours]
            return None

        emit(bench="compare", summary=True, workload=wname, dtype=args.dtype,
             bnb=bnb_note if bnb is None else "present",
             speedup_8bit_vs_bnb8bit=ratio("bnb_RMSprop8bit", "qrmsprop_8bit_blockwise"),
             speedup_32bit_vs_bnb32bit=ratio("bnb_RMSprop32bit", "qrmsprop_32bit"),
             speedup_32bit_vs_torch_foreach=ratio("torch_RMSprop_foreach", "qrmsprop_32bit"),
             speedup_32bit_vs_torch_capturable=ratio("torch_RMSprop_capturable", "qrmsprop_32bit"),
             speedup_8bit_vs_torch_foreach=ratio("torch_RMSprop_foreach", "qrmsprop_8bit_blockwise"))
        del params
        torch.cuda.empty_cache()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
