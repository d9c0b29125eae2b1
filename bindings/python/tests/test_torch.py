"""qrmsprop.torch against torch.optim.RMSprop. Skipped where torch is not
installed; the CUDA tests also need a GPU and a library built with CUDA, the
bitsandbytes comparison of the switch demo needs bitsandbytes."""
import inspect
import io
import os
import re
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

import qrmsprop  # noqa: E402
import qrmsprop.torch as qtorch  # noqa: E402

HAVE_CUDA = torch.cuda.is_available() and qrmsprop.cuda_device_count() > 0
cuda = pytest.mark.skipif(not HAVE_CUDA, reason="needs a CUDA device and a libqrmsprop built with CUDA")
DEVICES = ["cpu", pytest.param("cuda", marks=cuda)]


def fixed_grads(shapes, steps, seed=0, device="cpu", dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=g).to(device=device, dtype=dtype) for s in shapes] for _ in range(steps)]


def run_with_grads(opt_cls, params, grads, **kw):
    opt = opt_cls(params, **kw)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        opt.step()
    return opt


def clone_params(shapes, seed=1, device="cpu", dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    base = [torch.randn(s, generator=g) for s in shapes]
    return lambda: [torch.nn.Parameter(b.clone().to(device=device, dtype=dtype)) for b in base]


def rmsprop_float64(params, grads, lr, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0):
    """torch.optim.RMSprop's update (not centered) evaluated in float64."""
    ps = [p.detach().cpu().double() for p in params]
    sq = [torch.zeros_like(p) for p in ps]
    buf = [torch.zeros_like(p) for p in ps]
    for step_grads in grads:
        for i, g in enumerate(step_grads):
            g = g.cpu().double() + weight_decay * ps[i]
            sq[i] = alpha * sq[i] + (1 - alpha) * g * g
            u = g / (sq[i].sqrt() + eps)
            if momentum > 0:
                buf[i] = momentum * buf[i] + u
                u = buf[i]
            ps[i] = ps[i] - lr * u
    return ps


CONFIGS = [
    dict(lr=1e-2),
    dict(lr=1e-3, alpha=0.9, eps=1e-6),
    dict(lr=1e-2, weight_decay=0.1),
    dict(lr=1e-2, momentum=0.9),
    dict(lr=3e-3, alpha=0.95, weight_decay=0.01, momentum=0.5),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cfg", CONFIGS, ids=[str(c) for c in CONFIGS])
@pytest.mark.parametrize("cls", [qtorch.RMSprop, qtorch.RMSprop32bit])
def test_32bit_matches_torch_optim(device, cfg, cls):
    shapes = [(33, 17), (100,), (3,)]
    make = clone_params(shapes, device=device)
    grads = fixed_grads(shapes, 25, device=device)
    ours = make()
    ref = make()
    opt = run_with_grads(cls, ours, grads, **cfg)
    run_with_grads(torch.optim.RMSprop, ref, grads, **cfg)
    exact = rmsprop_float64(make(), grads, **cfg)
    # Same formula as torch; the two float32 evaluations round at different
    # places. Momentum 0.9 sums about ten updates, so their differences reach
    # a few 1e-6 on parameters of magnitude ~5 (on the CPU, torch itself was
    # 1.7e-6 and qrmsprop 2.1e-6 from the float64 result): the tolerance grows
    # with 1 / (1 - momentum), and ours must be about as close to float64 as
    # torch is.
    atol = 1e-6 / (1.0 - cfg.get("momentum", 0.0))
    for a, b, x in zip(ours, ref, exact):
        a, b = a.detach().cpu(), b.detach().cpu()
        torch.testing.assert_close(a, b, rtol=1e-5, atol=atol)
        assert (a.double() - x).abs().max() <= 3 * (b.double() - x).abs().max() + 1e-6
    for p in ours:
        assert opt.get_step(p) == 25


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_8bit_close_to_torch_optim(device, momentum):
    shapes = [(64, 128)]  # 8192 elements: 8-bit state
    make = clone_params(shapes, device=device)
    grads = fixed_grads(shapes, 30, device=device)
    ours, ref = make(), make()
    opt = run_with_grads(qtorch.RMSprop8bit, ours, grads, lr=1e-3, momentum=momentum)
    run_with_grads(torch.optim.RMSprop, ref, grads, lr=1e-3, momentum=momentum)
    start = make()[0].detach().cpu()
    moved = (ref[0].detach().cpu() - start).abs()
    err = (ours[0].detach().cpu() - ref[0].detach().cpu()).abs()
    assert err.mean() < 0.05 * moved.mean()
    assert err.max() < 0.08 * moved.max()
    assert opt.state_bytes() == (8192 + 32 * 4) * (2 if momentum > 0 else 1) + 8  # + the step counter


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_4bit_close_to_torch_optim(device, momentum):
    shapes = [(64, 128)]  # 8192 elements: 4-bit state
    make = clone_params(shapes, device=device)
    grads = fixed_grads(shapes, 30, device=device)
    ours, ref = make(), make()
    opt = run_with_grads(qtorch.RMSprop4bit, ours, grads, lr=1e-3, momentum=momentum)
    run_with_grads(torch.optim.RMSprop, ref, grads, lr=1e-3, momentum=momentum)
    start = make()[0].detach().cpu()
    moved = (ref[0].detach().cpu() - start).abs()
    err = (ours[0].detach().cpu() - ref[0].detach().cpu()).abs()
    assert err.mean() < (0.4 if momentum > 0 else 0.15) * moved.mean()  # see test_numpy's 4-bit test
    assert err.max() < 0.6 * moved.max()
    assert opt.state_bytes() == (4096 + 64 * 4) * (2 if momentum > 0 else 1) + 8  # + the step counter


def test_rmsprop_optim_bits_8_and_min_8bit_size():
    big = torch.nn.Parameter(torch.zeros(8192))
    small = torch.nn.Parameter(torch.zeros(100))
    opt = qtorch.RMSprop([big, small], optim_bits=8)
    assert opt.state_bytes() == 8192 + 32 * 4 + 100 * 4 + 2 * 8
    opt = qtorch.RMSprop8bit([torch.nn.Parameter(torch.zeros(100))], min_8bit_size=0)
    assert opt.state_bytes() == 100 + 4 + 8


def test_signatures_match_bitsandbytes():
    common = ["params", "lr", "alpha", "eps", "weight_decay", "momentum", "centered"]
    tail = ["args", "min_8bit_size", "percentile_clipping", "block_wise"]
    defaults = dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False, args=None,
                    min_8bit_size=4096, percentile_clipping=100, block_wise=True)
    for cls, names in [(qtorch.RMSprop, common + ["optim_bits"] + tail), (qtorch.RMSprop8bit, common + tail),
                       (qtorch.RMSprop32bit, common + tail), (qtorch.RMSprop4bit, common + tail)]:
        sig = inspect.signature(cls.__init__)
        positional = [n for n, p in sig.parameters.items()
                      if n != "self" and p.kind == p.POSITIONAL_OR_KEYWORD]
        assert positional == names, cls
        for k, v in defaults.items():
            assert sig.parameters[k].default == v, (cls, k)
        assert issubclass(cls, torch.optim.Optimizer)
    assert qtorch.optim.RMSprop8bit is qtorch.RMSprop8bit
    assert inspect.signature(qtorch.RMSprop.__init__).parameters["optim_bits"].default == 32


def test_constructor_errors():
    p = [torch.nn.Parameter(torch.zeros(4))]
    with pytest.raises(NotImplementedError, match=r"^RMSprop with alpha==0\.0 is not supported!$"):
        qtorch.RMSprop(p, alpha=0)
    with pytest.raises(NotImplementedError, match=r"^Centered RMSprop is not supported!$"):
        qtorch.RMSprop8bit(p, centered=True)
    with pytest.raises(NotImplementedError, match="Amount of optimizer bits not supported: 16"):
        qtorch.RMSprop(p, optim_bits=16)
    with pytest.raises(ValueError, match="Invalid learning rate: -1"):
        qtorch.RMSprop32bit(p, lr=-1)
    with pytest.raises(ValueError, match="Invalid momentum value: 1"):
        qtorch.RMSprop([{"params": p, "momentum": 1.0}])


def test_grad_none_is_skipped_and_closure_returns_loss():
    a = torch.nn.Parameter(torch.ones(8))
    b = torch.nn.Parameter(torch.ones(8))
    opt = qtorch.RMSprop([a, b], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (a * a).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert float(loss.detach()) == 8.0
    assert torch.all(a < 1) and torch.all(b == 1)
    assert opt.get_step(a) == 1 and opt.get_step(b) == 0


def test_param_groups_lr_scheduler_and_override():
    a = torch.nn.Parameter(torch.ones(8))
    b = torch.nn.Parameter(torch.ones(8))
    c = torch.nn.Parameter(torch.ones(8192))
    mng = qtorch.GlobalOptimManager.get_instance()
    mng.override_config(c, "optim_bits", 32)
    opt = qtorch.RMSprop8bit([{"params": [a], "lr": 0.0}, {"params": [b, c]}], lr=0.1)
    other = qtorch.RMSprop8bit([torch.nn.Parameter(torch.ones(8192))])  # no override: 8-bit
    assert other.state_bytes() == 8192 + 32 * 4 + 8
    assert opt.state_bytes() == 8 * 4 * 2 + 8192 * 4 + 3 * 8  # c kept 32-bit by the override
    for p in (a, b, c):
        p.grad = torch.ones_like(p)
    opt.step()
    assert torch.all(a == 1) and torch.all(b < 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 0.0)
    assert opt.param_groups[1]["lr"] == 0.0
    b_before = b.detach().clone()
    opt.step()
    sched.step()
    assert torch.equal(b.detach(), b_before)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cls,kw", [(qtorch.RMSprop8bit, dict(momentum=0.9, percentile_clipping=90)),
                                    (qtorch.RMSprop, dict(momentum=0.5))])
def test_state_dict_round_trip(device, cls, kw):
    shapes = [(64, 80), (10,)]
    grads = fixed_grads(shapes, 10, device=device)
    params = clone_params(shapes, device=device)()
    opt = cls(params, lr=1e-3, **kw)
    for step_grads in grads[:5]:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        opt.step()
    opt.param_groups[0]["lr"] = 5e-4
    buf = io.BytesIO()
    torch.save({"params": [p.detach().clone() for p in params], "opt": opt.state_dict()}, buf)
    for step_grads in grads[5:]:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        opt.step()

    buf.seek(0)
    try:
        ckpt = torch.load(buf, weights_only=True)  # plain tensors, dicts, lists: weights_only works
    except TypeError:  # torch < 1.13
        buf.seek(0)
        ckpt = torch.load(buf)
    params2 = [torch.nn.Parameter(t.clone()) for t in ckpt["params"]]
    opt2 = cls(params2, lr=1e-3, **kw)
    opt2.load_state_dict(ckpt["opt"])
    assert opt2.param_groups[0]["lr"] == 5e-4
    assert opt2.get_step(params2[0]) == 5
    for step_grads in grads[5:]:
        for p, g in zip(params2, step_grads):
            p.grad = g.clone()
        opt2.step()
    for p, q in zip(params, params2):
        if device == "cpu":
            assert torch.equal(p.detach(), q.detach())
        else:  # reductions on the GPU need not be bit-reproducible
            torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6)


def test_foreign_and_mismatched_state_dicts_are_rejected():
    p = [torch.nn.Parameter(torch.ones(4))]
    ref = torch.optim.RMSprop(p)
    opt = qtorch.RMSprop(p)
    with pytest.raises(ValueError, match="no 'qrmsprop' entry"):
        opt.load_state_dict(ref.state_dict())
    other = qtorch.RMSprop([torch.nn.Parameter(torch.ones(4)), torch.nn.Parameter(torch.ones(4))])
    with pytest.raises(ValueError):
        opt.load_state_dict(other.state_dict())
    sd = opt.state_dict()
    sd["qrmsprop"]["blobs"][0] = torch.zeros(10, dtype=torch.uint8)
    with pytest.raises(qrmsprop.BadStateError):
        opt.load_state_dict(sd)


def test_16bit_params_cpu():
    for dtype in (torch.float16, torch.bfloat16):
        shapes = [(300,)]
        make = clone_params(shapes, dtype=dtype)
        grads = fixed_grads(shapes, 10, dtype=dtype)
        ours = make()
        run_with_grads(qtorch.RMSprop, ours, grads, lr=1e-2)
        # float32 math, rounded to the dtype after every step (SPEC section 3).
        p = make()[0].detach().float()
        s = torch.zeros_like(p)
        for (g,) in grads:
            g = g.float()
            s = 0.99 * s + (1 - torch.tensor(0.99, dtype=torch.float32)) * g * g
            p = (p - 1e-2 * (g / (s.sqrt() + 1e-8))).to(dtype).float()
        diff = (ours[0].detach().float() - p).abs()
        ulp = p.abs() * (2.0 ** -7 if dtype == torch.bfloat16 else 2.0 ** -10)
        assert torch.all(diff <= 2 * ulp + 1e-6), dtype  # at most a rounding step or two apart


def test_unsupported_params():
    with pytest.raises(ValueError, match="not contiguous"):
        qtorch.RMSprop([torch.nn.Parameter(torch.zeros(4, 4).t())]).step()
    with pytest.raises(ValueError, match="dtype torch.float64"):
        qtorch.RMSprop([torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))]).step()
    p = torch.nn.Parameter(torch.zeros(4))
    opt = qtorch.RMSprop([p])
    p.grad = torch.ones(4)
    opt.step()
    p.data = torch.zeros(4)
    with pytest.raises(RuntimeError, match="storage changed"):
        opt.step()


def test_core_optimizer_accepts_torch_tensors_without_copy():
    t = torch.ones(16)
    g = torch.ones(16)
    opt = qrmsprop.Optimizer(lr=0.1)
    opt.add_param(t, g)
    opt.step()
    assert torch.all(t < 1)
    assert opt.read_state(0).shape == (16,)


def test_training_a_small_model_converges():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
    x = torch.randn(256, 8)
    y = (x[:, :1] * 2 - x[:, 1:2]).tanh()
    opt = qtorch.RMSprop8bit(model.parameters(), lr=3e-3, min_8bit_size=256)
    first = None
    for _ in range(300):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        first = first if first is not None else float(loss.detach())
    assert float(loss.detach()) < 0.1 * first


@cuda
def test_cuda_steps_on_the_current_stream_and_matches_cpu():
    shapes = [(64, 128), (7,)]
    grads_cpu = fixed_grads(shapes, 10)
    cpu = clone_params(shapes)()
    gpu = clone_params(shapes, device="cuda")()
    run_with_grads(qtorch.RMSprop8bit, cpu, grads_cpu, lr=1e-3, momentum=0.9)
    opt = qtorch.RMSprop8bit(gpu, lr=1e-3, momentum=0.9)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for step_grads in grads_cpu:
            for p, g in zip(gpu, step_grads):
                p.grad = g.to("cuda", non_blocking=True)
            opt.step()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    # Same element math on both backends; a quantization code may still flip
    # where float contraction differs, which moves an element by ~1 % of lr * u.
    for a, b in zip(cpu, gpu):
        torch.testing.assert_close(a.detach(), b.detach().cpu(), rtol=1e-4, atol=5e-4)
    assert (cpu[0].detach() - gpu[0].detach().cpu()).abs().mean() < 1e-5


@cuda
def test_cuda_state_dict_loads_on_cpu():
    shapes = [(64, 128)]
    grads = fixed_grads(shapes, 3, device="cuda")
    gpu = clone_params(shapes, device="cuda")()
    opt = run_with_grads(qtorch.RMSprop8bit, gpu, grads, lr=1e-3)
    sd = opt.state_dict()
    cpu = [torch.nn.Parameter(gpu[0].detach().cpu())]
    opt_cpu = qtorch.RMSprop8bit(cpu, lr=1e-3)
    opt_cpu.load_state_dict(sd)
    assert opt_cpu.get_step(cpu[0]) == 3
    assert torch.equal(opt_cpu.read_state(cpu[0]), opt.read_state(gpu[0]))


@cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_16bit_matches_cpu(dtype):
    shapes = [(4096,)]
    grads = fixed_grads(shapes, 5, dtype=dtype)
    cpu = clone_params(shapes, dtype=dtype)()
    gpu = clone_params(shapes, device="cuda", dtype=dtype)()
    run_with_grads(qtorch.RMSprop8bit, cpu, grads, lr=1e-3)
    run_with_grads(qtorch.RMSprop8bit, gpu, [[g.cuda() for g in s] for s in grads], lr=1e-3)
    diff = (cpu[0].detach().float() - gpu[0].detach().cpu().float()).abs()
    assert torch.all(diff <= cpu[0].detach().float().abs() * 2.0 ** -6 + 1e-6)


@cuda
def test_cupy_arrays():
    cp = pytest.importorskip("cupy")
    p = cp.ones(4096, dtype=cp.float32)
    g = cp.ones(4096, dtype=cp.float32)
    opt = qrmsprop.Optimizer("rmsprop8bit", device="cuda:%d" % p.device.id, lr=0.1)
    opt.add_param(p, g)
    opt.step(cp.cuda.get_current_stream())
    cp.cuda.get_current_stream().synchronize()
    assert bool((p < 1).all())
    with pytest.raises(qrmsprop.DeviceError):
        qrmsprop.Optimizer(device="cpu").add_param(p)


SWITCH_DEMO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "switch_demo.py")


def run_switch_demo(*argv):
    r = subprocess.run([sys.executable, SWITCH_DEMO, "--device", "cpu"] + list(argv), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_switch_demo_qrmsprop_backend():
    out = run_switch_demo("--backend", "qrmsprop", "--steps", "50", "--compare-steps", "5")
    losses = [float(v) for v in re.findall(r"^step +\d+  loss (\S+)", out, re.M)]
    assert len(losses) == 3 and losses[-1] < 0.1 * losses[0], out  # steps 1, 25, 50
    assert "checkpoint restored at step 25" in out
    assert float(re.search(r"^final loss (\S+)$", out, re.M).group(1)) < losses[0]
    diffs = [float(v) for v in re.findall(r"max \|param diff\| (\S+)", out)]
    assert len(diffs) == 3 and max(diffs) < 1e-6, out  # RMSprop32bit vs torch.optim.RMSprop


def test_switch_demo_same_losses_as_bitsandbytes_32bit():
    # Only where bitsandbytes is installed (never in CI): the same script with
    # the other import gives the same 32-bit training run.
    pytest.importorskip("bitsandbytes")
    runs = [run_switch_demo("--backend", b, "--optimizer", "RMSprop32bit", "--steps", "50", "--compare-steps", "0")
            for b in ("bnb", "qrmsprop")]
    losses = [[float(v) for v in re.findall(r"^(?:step +\d+ |final) loss (\S+)", out, re.M)] for out in runs]
    assert len(losses[0]) == len(losses[1]) == 4  # steps 1, 25, 50, final
    for a, b in zip(*losses):
        assert abs(a - b) <= 1e-4 * abs(a), runs


def test_state_map_and_stochastic_rounding_options():
    # state_map: per optimizer and through override-free args; bad values are refused.
    shapes = [(4096,)]
    make = clone_params(shapes)
    grads = fixed_grads(shapes, 5)
    runs = {}
    for state_map in ("signed", "unsigned"):
        ps = make()
        run_with_grads(qtorch.RMSprop8bit, ps, grads, lr=1e-3, min_8bit_size=0, state_map=state_map)
        runs[state_map] = ps[0].detach().clone()
    assert not torch.equal(runs["signed"], runs["unsigned"])
    with pytest.raises(ValueError, match="state_map"):
        qtorch.RMSprop8bit(make(), state_map="both")
    # stochastic rounding of bfloat16 weights: keyed by the seed, unbiased
    # where round-to-nearest loses every update.
    def bf16_run(**kw):
        p = [torch.nn.Parameter(torch.ones(4096, dtype=torch.bfloat16))]
        g = [(torch.ones(4096, dtype=torch.bfloat16),)] * 20
        run_with_grads(qtorch.RMSprop, p, g, lr=1e-4, **kw)
        return p[0].detach().clone()
    a = bf16_run(stochastic_rounding=True, seed=42)
    assert torch.equal(a.view(torch.int16), bf16_run(stochastic_rounding=True, seed=42).view(torch.int16))
    assert not torch.equal(a, bf16_run(stochastic_rounding=True, seed=43))
    assert torch.all(bf16_run() == 1.0)
    assert a.float().mean().item() < 1.0 - 0.004  # the float32 trajectory ends near 0.9915
