"""The numpy front end against a float32 reference of torch.optim.RMSprop."""
import ctypes
import threading

import numpy as np
import pytest

import qrmsprop
from conftest import reference_rmsprop


def make_grads(rng, n, steps, scale=1.0):
    return [(rng.standard_normal(n) * scale).astype(np.float32) for _ in range(steps)]


def run_optimizer(variant, p0, grads, **cfg):
    p = p0.copy()
    g = np.empty_like(p)
    opt = qrmsprop.Optimizer(variant, **cfg)
    opt.add_param(p, g)
    for gi in grads:
        g[...] = gi
        opt.step()
    return p, opt


CONFIGS = [
    dict(),
    dict(lr=1e-3, alpha=0.9),
    dict(weight_decay=0.1),
    dict(momentum=0.9),
    dict(lr=3e-3, alpha=0.95, eps=1e-6, weight_decay=0.01, momentum=0.5),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=[str(c) for c in CONFIGS])
@pytest.mark.parametrize("variant", ["rmsprop", "rmsprop32bit"])
def test_32bit_matches_reference(rng, variant, cfg):
    n, steps = 1000, 25
    p0 = rng.standard_normal(n).astype(np.float32)
    grads = make_grads(rng, n, steps)
    p, opt = run_optimizer(variant, p0, grads, **cfg)
    ref_p, ref_s, ref_b = reference_rmsprop(p0, grads, **cfg)
    np.testing.assert_allclose(p, ref_p, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(opt.read_state(0), ref_s, rtol=1e-5, atol=1e-6)
    if cfg.get("momentum", 0) > 0:
        np.testing.assert_allclose(opt.read_state(0, "momentum"), ref_b, rtol=1e-5, atol=1e-6)
    assert opt.get_step(0) == steps
    assert opt.state_bytes() == n * 4 * (2 if cfg.get("momentum", 0) > 0 else 1) + 8  # + the step counter


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("block_wise", [True, False])
def test_8bit_close_to_reference(rng, momentum, block_wise):
    n, steps, lr = 8192, 30, 1e-3
    p0 = rng.standard_normal(n).astype(np.float32)
    grads = make_grads(rng, n, steps)
    p, opt = run_optimizer("rmsprop8bit", p0, grads, lr=lr, momentum=momentum, block_wise=block_wise)
    ref_p, ref_s, _ = reference_rmsprop(p0, grads, lr=lr, momentum=momentum)
    # The update moved every element by O(steps * lr); 8-bit state keeps it
    # within a few percent of the 32-bit trajectory (measured: mean error
    # 0.8-2.3 %, max 2-3 % of the largest move; median state error ~2 %).
    moved = np.abs(ref_p - p0)
    err = np.abs(p - ref_p)
    assert np.median(moved) > 0.5 * steps * lr * (0.5 if momentum == 0 else 2.0)
    assert err.max() < 0.08 * moved.max(), (err.max(), moved.max())
    assert np.mean(err) < 0.05 * np.mean(moved), (np.mean(err), np.mean(moved))
    rel_state = np.abs(opt.read_state(0) - ref_s) / ref_s
    assert np.median(rel_state) < 0.05, np.median(rel_state)
    blocks = -(-n // 256)
    scales = blocks * 4 if block_wise else 8
    assert opt.state_bytes() == (n + scales) * (2 if momentum > 0 else 1) + 8


@pytest.mark.parametrize("block_wise", [True, False])
def test_unsigned_state_map_is_closer_to_32bit_state(rng, block_wise):
    n, steps, lr = 8192, 30, 1e-3
    p0 = rng.standard_normal(n).astype(np.float32)
    grads = make_grads(rng, n, steps)
    _, ref_s, _ = reference_rmsprop(p0, grads, lr=lr)
    err = {}
    for state_map in ("signed", "unsigned"):
        _, opt = run_optimizer("rmsprop8bit", p0, grads, lr=lr, block_wise=block_wise, state_map=state_map)
        assert opt.param_config(0)["state_map"] == state_map
        err[state_map] = np.median(np.abs(opt.read_state(0) - ref_s) / ref_s)
    assert err["unsigned"] < 0.8 * err["signed"], err


def test_state_map_values_are_checked():
    assert qrmsprop.default_config()["state_map"] == "signed"
    for bad in ("Unsigned", 1, "both"):
        with pytest.raises(ValueError, match="state_map"):
            qrmsprop.Optimizer("rmsprop8bit", state_map=bad)
    opt = qrmsprop.Optimizer("rmsprop8bit", min_8bit_size=0)
    p = np.zeros(300, np.float32)
    opt.add_param(p, np.ones_like(p))
    opt.set_param_config(0, state_map="unsigned")
    assert opt.param_config(0)["state_map"] == "unsigned"
    opt.step()
    with pytest.raises(ValueError, match="state map"):  # the layout is fixed after the first step
        opt.set_param_config(0, state_map="signed")


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("variant", ["rmsprop4bit", "rmsprop"])
def test_4bit_close_to_reference(rng, variant, momentum):
    n, steps, lr = 8191, 30, 1e-3
    p0 = rng.standard_normal(n).astype(np.float32)
    grads = make_grads(rng, n, steps)
    extra = {} if variant == "rmsprop4bit" else dict(optim_bits=4)
    p, opt = run_optimizer(variant, p0, grads, lr=lr, momentum=momentum, **extra)
    ref_p, ref_s, _ = reference_rmsprop(p0, grads, lr=lr, momentum=momentum)
    # 4-bit state follows the 32-bit trajectory less closely than 8-bit
    # (measured: mean error 8 % of the mean move without momentum, 27 % with
    # it, against 0.8 % and 2 % for 8-bit; max about 0.42 of the largest
    # move; median state error 7 %); the square average never reads back as 0.
    moved = np.abs(ref_p - p0)
    err = np.abs(p - ref_p)
    assert err.max() < 0.6 * moved.max(), (err.max(), moved.max())
    assert np.mean(err) < (0.4 if momentum > 0 else 0.15) * np.mean(moved), (np.mean(err), np.mean(moved))
    s = opt.read_state(0)
    assert np.all(s > 0)
    assert np.median(np.abs(s - ref_s) / ref_s) < 0.15
    assert opt.param_info(0).state_bits == 4
    per_buffer = (n + 1) // 2 + 4 * (-(-n // 128))
    assert opt.state_bytes() == per_buffer * (2 if momentum > 0 else 1) + 8


def test_4bit_save_load_and_variant_fixes_bits(rng):
    n = 4097
    p = rng.standard_normal(n).astype(np.float32)
    g = np.empty_like(p)
    opt = qrmsprop.Optimizer("rmsprop4bit", lr=1e-3, momentum=0.9)
    opt.add_param(p, g)
    for gi in make_grads(rng, n, 3):
        g[...] = gi
        opt.step()
    blob = opt.save()
    q = p.copy()
    opt2 = qrmsprop.Optimizer("rmsprop4bit", lr=1e-3, momentum=0.9)
    opt2.add_param(q, g)
    opt2.load(blob)
    assert opt2.save() == blob
    g[...] = make_grads(rng, n, 1)[0]
    opt.step()
    opt2.step()
    assert np.array_equal(p, q)
    with pytest.raises(ValueError, match="fixes it to 4"):
        qrmsprop.Optimizer("rmsprop4bit", optim_bits=8)
    with pytest.raises(NotImplementedError, match="block-wise only"):
        qrmsprop.Optimizer("rmsprop4bit", block_wise=False)


def test_8bit_small_tensor_keeps_32bit_state(rng):
    opt = qrmsprop.Optimizer("rmsprop8bit")
    small = np.zeros(100, np.float32)
    big = np.zeros(4096, np.float32)
    opt.add_param(small, np.zeros_like(small))
    opt.add_param(big, np.zeros_like(big))
    assert opt.state_bytes() == 100 * 4 + 4096 + 16 * 4 + 2 * 8
    opt2 = qrmsprop.Optimizer("rmsprop8bit", min_8bit_size=0)
    opt2.add_param(small, np.zeros_like(small))
    assert opt2.state_bytes() == 100 + 4 + 8


def test_float16_params_round_each_step(rng):
    n, steps = 512, 10
    p0 = rng.standard_normal(n).astype(np.float16)
    grads16 = [g.astype(np.float16) for g in make_grads(rng, n, steps)]
    p = p0.copy()
    g = np.empty_like(p)
    opt = qrmsprop.Optimizer(lr=1e-3)
    opt.add_param(p, g)
    for gi in grads16:
        g[...] = gi
        opt.step()
    ref_p, _, _ = reference_rmsprop(p0, grads16, lr=1e-3, dtype=np.float16)
    ulp = np.spacing(np.abs(ref_p).astype(np.float16)).astype(np.float32)
    assert np.all(np.abs(p.astype(np.float32) - ref_p) <= ulp)
    assert np.mean(p.astype(np.float32) == ref_p) > 0.99


def test_bfloat16_numpy_via_ml_dtypes(rng):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    n, steps = 512, 10
    p0 = rng.standard_normal(n).astype(ml_dtypes.bfloat16)
    grads = [gi.astype(ml_dtypes.bfloat16) for gi in make_grads(rng, n, steps)]
    p = p0.copy()
    g = np.empty_like(p)
    opt = qrmsprop.Optimizer(lr=1e-2)
    opt.add_param(p, g)
    for gi in grads:
        g[...] = gi
        opt.step()
    ref_p, _, _ = reference_rmsprop(p0, grads, lr=1e-2, dtype=ml_dtypes.bfloat16)
    ulp = np.abs(ref_p) * 2.0 ** -7
    assert np.all(np.abs(p.astype(np.float32) - ref_p) <= ulp + 1e-30)


@pytest.mark.parametrize("variant", ["rmsprop32bit", "rmsprop8bit"])
def test_training_converges(rng, variant):
    # 0.5 * sum(a * (w - w*)^2) with a badly scaled diagonal.
    n = 8192
    a = np.exp(rng.uniform(-3, 3, n)).astype(np.float32)
    w_star = rng.standard_normal(n).astype(np.float32)
    w = np.zeros(n, np.float32)
    g = np.empty_like(w)
    opt = qrmsprop.Optimizer(variant, lr=1e-2)
    opt.add_param(w, g)

    def loss():
        return float(0.5 * np.sum(a * (w - w_star) ** 2))

    start = loss()
    for it in range(400):
        np.multiply(a, w - w_star, out=g)
        opt.step()
        if it == 300:
            opt.set_lr(1e-3)
    assert loss() < start * 1e-3, (start, loss())


def test_linear_regression_converges(rng):
    x = rng.standard_normal((256, 64)).astype(np.float32)
    w_true = rng.standard_normal(64).astype(np.float32)
    y = x @ w_true
    w = np.zeros(64, np.float32)
    g = np.empty_like(w)
    opt = qrmsprop.Optimizer("rmsprop", lr=1e-2, momentum=0.5)
    opt.add_param(w, g)
    for it in range(600):
        g[...] = x.T @ (x @ w - y) / len(y)
        opt.step()
        if it == 400:
            opt.set_lr(1e-3)
    assert float(np.mean((x @ w - y) ** 2)) < 1e-3


def test_no_copy_param_updated_in_place_and_grad_read_live():
    w = np.ones((4, 8), np.float32)
    view = w.reshape(-1)  # another view of the same memory
    g = np.zeros_like(w)
    opt = qrmsprop.Optimizer(lr=0.1)
    opt.add_param(w, g)
    opt.step()  # zero grad: s stays 0, u = 0
    assert np.all(w == 1)
    g[...] = 1.0  # the optimizer reads the grad array at every step
    opt.step()
    assert np.all(w < 1)
    assert np.shares_memory(w, view) and np.all(view == w.reshape(-1))
    assert opt.read_state(0).shape == (4, 8)


def test_param_kept_alive_by_optimizer():
    opt = qrmsprop.Optimizer(lr=0.1)
    opt.add_param(np.ones(16, np.float32), np.ones(16, np.float32))  # temporaries
    for _ in range(3):
        opt.step()  # would touch freed memory if the arrays were not kept
    assert opt.get_step(0) == 3


def test_grad_none_skips_parameter():
    a = np.ones(8, np.float32)
    b = np.ones(8, np.float32)
    opt = qrmsprop.Optimizer(lr=0.1)
    opt.add_param(a, np.ones(8, np.float32))
    opt.add_param(b)  # no grad yet
    opt.step()
    assert opt.get_step(0) == 1 and opt.get_step(1) == 0
    assert np.all(b == 1) and np.all(a < 1)
    opt.set_grad(1, np.ones(8, np.float32))
    opt.set_grad(0, None)
    a_before = a.copy()
    opt.step()
    assert opt.get_step(0) == 1 and opt.get_step(1) == 1
    assert np.all(a == a_before) and np.all(b < 1)
    assert len(opt) == opt.param_count == 2


def test_set_param_config_and_set_lr():
    a = np.ones(16, np.float32)
    b = np.ones(16, np.float32)
    opt = qrmsprop.Optimizer(lr=0.1)
    opt.add_param(a, np.ones(16, np.float32))
    opt.add_param(b, np.ones(16, np.float32))
    opt.set_param_config(1, lr=0.0)  # frozen
    opt.step()
    assert np.all(a < 1) and np.all(b == 1)
    opt.set_lr(0.05)  # moves every parameter, own configs included
    opt.step()
    assert np.all(b < 1)
    assert opt.lr == pytest.approx(0.05)


def test_param_config_round_trip_and_overrides_add_up():
    opt = qrmsprop.Optimizer("rmsprop8bit", lr=0.1, momentum=0.5)
    a = np.zeros(16, np.float32)
    opt.add_param(a)
    c = opt.param_config(0)
    assert c["optim_bits"] == 8 and c["momentum"] == pytest.approx(0.5) and c["lr"] == pytest.approx(0.1)
    opt.set_param_config(0, lr=0.2)
    opt.set_param_config(0, weight_decay=0.01)  # keeps lr=0.2
    c = opt.param_config(0)
    assert c["lr"] == pytest.approx(0.2) and c["weight_decay"] == pytest.approx(0.01)
    opt.set_lr(0.3)  # moves own configs too
    assert opt.param_config(0)["lr"] == pytest.approx(0.3)
    with pytest.raises(TypeError, match="unknown config keys"):
        opt.set_param_config(0, betas=(0.9, 0.9))
    with pytest.raises(ValueError, match="parameter index 3 out of range"):
        opt.param_config(3)


def test_override_keeps_one_tensor_32bit_in_8bit_optimizer():
    opt = qrmsprop.Optimizer("rmsprop8bit")
    a = np.zeros(8192, np.float32)
    opt.add_param(a, np.zeros_like(a))
    assert opt.state_bytes() == 8192 + 32 * 4 + 8
    opt.set_param_config(0, optim_bits=32)
    assert opt.state_bytes() == 8192 * 4 + 8


def test_cpu_threads_do_not_change_results(rng):
    n = 50000
    p0 = rng.standard_normal(n).astype(np.float32)
    grads = make_grads(rng, n, 3)
    try:
        qrmsprop.set_num_threads(1)
        assert qrmsprop.get_num_threads() == 1
        p1, _ = run_optimizer("rmsprop8bit", p0, grads)
        qrmsprop.set_num_threads(2)
        p2, _ = run_optimizer("rmsprop8bit", p0, grads)
    finally:
        qrmsprop.set_num_threads(0)
    assert np.array_equal(p1, p2)


def test_different_optimizers_in_threads(rng):
    n, steps = 4096, 20
    p0 = rng.standard_normal(n).astype(np.float32)
    grads = make_grads(rng, n, steps)
    expected, _ = run_optimizer("rmsprop8bit", p0, grads, momentum=0.9)
    results = [None] * 4

    def work(i):
        results[i] = run_optimizer("rmsprop8bit", p0, grads, momentum=0.9)[0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        assert np.array_equal(r, expected)


@pytest.mark.parametrize("variant,momentum,state_map", [("rmsprop32bit", 0.9, "signed"), ("rmsprop8bit", 0.9, "signed"),
                                                        ("rmsprop8bit", 0.0, "signed"), ("rmsprop8bit", 0.9, "unsigned")])
def test_save_load_round_trip(rng, variant, momentum, state_map):
    n = 5000
    p = rng.standard_normal(n).astype(np.float32)
    g = np.empty_like(p)
    cfg = dict(lr=1e-3, momentum=momentum, percentile_clipping=95, state_map=state_map)
    opt = qrmsprop.Optimizer(variant, **cfg)
    opt.add_param(p, g)
    grads = make_grads(rng, n, 10)
    for gi in grads[:5]:
        g[...] = gi
        opt.step()
    blob = opt.save()
    assert isinstance(blob, bytes) and len(blob) > n
    p_mid = p.copy()
    for gi in grads[5:]:
        g[...] = gi
        opt.step()

    q = p_mid.copy()
    h = np.empty_like(q)
    opt2 = qrmsprop.Optimizer(variant, **cfg)
    opt2.add_param(q, h)
    opt2.load(blob)
    assert opt2.get_step(0) == 5
    for gi in grads[5:]:
        h[...] = gi
        opt2.step()
    np.testing.assert_array_equal(q, p)
    np.testing.assert_array_equal(opt2.read_state(0), opt.read_state(0))
    assert opt2.save() == opt.save()
    # Other bytes-like containers work too.
    opt2.load(bytearray(blob))
    opt2.load(np.frombuffer(blob, dtype=np.uint8))
    assert opt2.get_step(0) == 5


def test_dynamic_map():
    m = qrmsprop.dynamic_map()
    assert m.dtype == np.float32 and m.shape == (256,)
    assert np.all(np.diff(m) > 0)
    assert m[-1] == 1.0 and m.min() >= -1.0 and 0.0 in m
    u = qrmsprop.dynamic_map(signed=False)
    assert np.all(np.diff(u) >= 0) and u.min() >= 0.0 and u[-1] == 1.0


def test_quantize_blockwise_round_trip(rng):
    x = rng.standard_normal(1000).astype(np.float32)
    codes, absmax = qrmsprop.quantize_blockwise(x)
    assert codes.dtype == np.uint8 and codes.shape == x.shape and absmax.shape == (4,)
    np.testing.assert_allclose(absmax, [np.abs(x[i:i + 256]).max() for i in range(0, 1000, 256)])
    y = qrmsprop.dequantize_blockwise(codes, absmax)
    scale = np.repeat(absmax, 256)[:1000]
    assert np.all(np.abs(y - x) <= 0.05 * scale)


@pytest.mark.parametrize("variant", ["rmsprop32bit", "rmsprop8bit"])
def test_skip_nonfinite_skips_a_step_with_an_inf_grad(rng, variant):
    n = 8192
    a = rng.standard_normal(n).astype(np.float32)
    b = rng.standard_normal(100).astype(np.float32)
    ga = np.zeros_like(a)
    gb = np.zeros_like(b)
    opt = qrmsprop.Optimizer(variant, skip_nonfinite=True, momentum=0.9)
    assert opt.config["skip_nonfinite"] is True
    opt.add_param(a, ga)
    opt.add_param(b, gb)
    assert not opt.found_inf()
    ga[...] = rng.standard_normal(n)
    gb[...] = rng.standard_normal(100)
    opt.step()
    assert not opt.found_inf()
    assert opt.get_step(0) == opt.get_step(1) == 1
    before = (a.copy(), b.copy(), opt.save(), opt.read_state(0), opt.read_state(1, "momentum"))
    flag = ctypes.c_int32.from_address(opt.found_inf_ptr())  # host memory on the CPU
    assert flag.value == 0
    for bad in (np.inf, -np.inf, np.nan):
        gb[17] = bad  # one element of the other parameter: the whole step is skipped
        opt.step()
        assert opt.found_inf() and flag.value == 1
        assert np.array_equal(a, before[0]) and np.array_equal(b, before[1])
        assert opt.get_step(0) == opt.get_step(1) == 1  # skipped steps do not count
        np.testing.assert_array_equal(opt.read_state(0), before[3])
        np.testing.assert_array_equal(opt.read_state(1, "momentum"), before[4])
        assert opt.save() == before[2]
    gb[17] = 0.5
    opt.step()
    assert not opt.found_inf() and flag.value == 0
    assert opt.get_step(0) == opt.get_step(1) == 2
    assert not np.array_equal(a, before[0])
    assert np.all(np.isfinite(a)) and np.all(np.isfinite(b))


def test_without_skip_nonfinite_an_inf_grad_propagates():
    p = np.ones(16, np.float32)
    g = np.ones(16, np.float32)
    g[3] = np.inf
    opt = qrmsprop.Optimizer()
    assert opt.config["skip_nonfinite"] is False
    opt.add_param(p, g)
    opt.step()
    assert opt.get_step(0) == 1
    assert not np.all(np.isfinite(p))
    assert not opt.found_inf()


def test_grad_unscale_multiplies_the_grads_and_feeds_the_check(rng):
    n, steps = 1000, 5
    p0 = rng.standard_normal(n).astype(np.float32)
    grads = make_grads(rng, n, steps)
    ref_p, ref_s, _ = reference_rmsprop(p0, grads)
    p = p0.copy()
    g = np.empty_like(p)
    scale = np.array([0.25], np.float32)
    opt = qrmsprop.Optimizer(skip_nonfinite=True)
    opt.add_param(p, g)
    opt.set_grad_unscale(scale)
    for gi in grads:
        g[...] = gi * np.float32(4)  # scaled by 4, unscaled by 0.25: exact in float32
        opt.step()
    np.testing.assert_allclose(p, ref_p, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(opt.read_state(0), ref_s, rtol=1e-5, atol=1e-6)
    # The factor is read at every step: an inf factor makes the step non-finite.
    scale[0] = np.inf
    before = p.copy()
    opt.step()
    assert opt.found_inf() and np.array_equal(p, before) and opt.get_step(0) == steps
    opt.set_grad_unscale(None)  # removed: the scaled grads are used as they are
    opt.step()
    assert not opt.found_inf() and opt.get_step(0) == steps + 1
    with pytest.raises(ValueError, match="must be a single float32"):
        opt.set_grad_unscale(np.ones(2, np.float32))
    with pytest.raises(ValueError, match="dtype float16"):
        opt.set_grad_unscale(np.ones(1, np.float16))
    with pytest.raises(ValueError, match="optimizer-wide"):
        opt.set_param_config(0, skip_nonfinite=False)


def test_param_info():
    opt = qrmsprop.Optimizer("rmsprop8bit")
    big = np.zeros(8192, np.float32)
    small = np.zeros(100, np.float16)
    opt.add_param(big)
    opt.add_param(small)
    assert opt.param_info(0) == qrmsprop.ParamInfo(8192, "float32", 8)
    assert opt.param_info(1) == (100, "float16", 32)  # below min_8bit_size: 32-bit state
    assert opt.param_info(1).state_bits == 32
    with pytest.raises(qrmsprop.InvalidArgumentError, match="out of range"):
        opt.param_info(2)


def test_stochastic_rounding_of_bfloat16_params_is_keyed_by_the_seed():
    # Updates of 1e-3 and less on bfloat16 weights near 1 (spacing 2^-8):
    # round-to-nearest loses every one; stochastic rounding keeps their mean.
    ml_dtypes = pytest.importorskip("ml_dtypes")
    n, steps = 4096, 20
    p0 = np.ones(n, ml_dtypes.bfloat16)
    grads = [np.ones(n, ml_dtypes.bfloat16)] * steps

    def run(**kw):
        p, opt = run_optimizer("rmsprop", p0, grads, lr=1e-4, **kw)
        assert opt.config["stochastic_rounding"] == kw.get("stochastic_rounding", False)
        assert opt.param_config(0)["seed"] == kw.get("seed", 0)
        return p.view(np.uint16)

    a = run(stochastic_rounding=True, seed=42)
    np.testing.assert_array_equal(a, run(stochastic_rounding=True, seed=42))
    assert np.any(a != run(stochastic_rounding=True, seed=43))
    nearest = run()
    assert np.all(nearest.view(ml_dtypes.bfloat16).astype(np.float32) == 1.0)
    exact, _, _ = reference_rmsprop(np.ones(1, np.float32), [np.ones(1, np.float32)] * steps, lr=1e-4)
    mean = a.view(ml_dtypes.bfloat16).astype(np.float64).mean()
    assert abs(mean - exact[0]) < 0.1 * (1.0 - exact[0]), (mean, exact[0])


def test_stochastic_rounding_and_seed_are_optimizer_wide_and_checked():
    opt = qrmsprop.Optimizer("rmsprop", stochastic_rounding=True, seed=2**64 - 1)
    assert opt.config["seed"] == 2**64 - 1
    p = np.zeros(8, np.float32)
    opt.add_param(p, np.ones_like(p))
    with pytest.raises(ValueError, match="optimizer-wide"):
        opt.set_param_config(0, seed=3)
    with pytest.raises(ValueError, match="optimizer-wide"):
        opt.set_param_config(0, stochastic_rounding=False)
    opt.set_param_config(0, lr=0.5, seed=2**64 - 1)  # unchanged wide keys pass
    for bad in (-1, 2**64, 1.5):
        with pytest.raises(ValueError, match="seed"):
            qrmsprop.Optimizer("rmsprop", seed=bad)
