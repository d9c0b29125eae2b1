"""Every status maps to its exception, carrying qrms_last_error()'s message."""
import re
import threading

import numpy as np
import pytest

import qrmsprop
from qrmsprop import _lib


def raises(exc, message):
    return pytest.raises(exc, match=re.escape(message))


@pytest.mark.parametrize("kwargs,message", [
    (dict(alpha=0.0), "RMSprop with alpha==0.0 is not supported!"),
    (dict(centered=True), "Centered RMSprop is not supported!"),
    (dict(optim_bits=16), "Amount of optimizer bits not supported: 16"),
    (dict(alpha=0.0, centered=True), "RMSprop with alpha==0.0 is not supported!"),  # alpha first
])
def test_not_implemented(kwargs, message):
    with raises(NotImplementedError, message) as info:
        qrmsprop.Optimizer(**kwargs)
    e = info.value
    assert isinstance(e, qrmsprop.QrmsError) and isinstance(e, qrmsprop.QrmsNotImplementedError)
    assert e.status == _lib.ERROR_NOT_IMPLEMENTED == 2
    assert e.status_name == "not implemented"
    assert e.message.endswith(message)  # the library prefixes the function name
    assert str(e) == e.message


@pytest.mark.parametrize("kwargs,message", [
    (dict(lr=-1.0), "Invalid learning rate: -1"),
    (dict(lr=float("inf")), "Invalid learning rate: inf"),
    (dict(alpha=1.0), "Invalid alpha value: 1"),
    (dict(eps=float("nan")), "Invalid epsilon value: nan"),
    (dict(weight_decay=-0.5), "Invalid weight_decay value: -0.5"),
    (dict(momentum=1.0), "Invalid momentum value: 1"),
    (dict(max_unorm=-1.0), "Invalid max_unorm value: -1"),
    (dict(min_8bit_size=-1), "Invalid min_8bit_size value: -1"),
    (dict(percentile_clipping=101), "Invalid percentile_clipping value: 101"),
])
def test_invalid_argument(kwargs, message):
    with raises(ValueError, message) as info:
        qrmsprop.Optimizer(**kwargs)
    assert isinstance(info.value, qrmsprop.InvalidArgumentError)
    assert info.value.status == _lib.ERROR_INVALID_ARGUMENT == 1
    assert info.value.message.startswith("qrms_optimizer_create: ")


def test_every_status_has_its_exception():
    expected = {
        1: (qrmsprop.InvalidArgumentError, ValueError),
        2: (qrmsprop.QrmsNotImplementedError, NotImplementedError),
        3: (qrmsprop.DeviceError, RuntimeError),
        4: (qrmsprop.OutOfMemoryError, MemoryError),
        5: (qrmsprop.BadStateError, RuntimeError),
        6: (qrmsprop.InternalError, RuntimeError),
    }
    from qrmsprop._errors import error_for

    for status, (cls, builtin) in expected.items():
        e = error_for(status, "m")
        assert type(e) is cls and isinstance(e, builtin) and isinstance(e, qrmsprop.QrmsError)
        assert e.status == status and e.message == "m"
        assert qrmsprop.status_string(status) != "unknown status"
    assert qrmsprop.status_string(99) == "unknown status"
    assert type(error_for(99, "m")) is qrmsprop.QrmsError


def test_unknown_config_key_and_variant():
    with pytest.raises(TypeError, match="unknown config keys"):
        qrmsprop.Optimizer(betas=(0.9, 0.0))
    with pytest.raises(ValueError, match="variant must be one of"):
        qrmsprop.Optimizer("adam")
    with pytest.raises(ValueError, match="conflicts with the variant"):
        qrmsprop.Optimizer("rmsprop8bit", optim_bits=32)
    with pytest.raises(ValueError, match="device must be"):
        qrmsprop.Optimizer(device="tpu")


def test_cuda_without_cuda_support_is_device_error():
    if qrmsprop.cuda_device_count() > 0:
        pytest.skip("this library has CUDA devices")
    with pytest.raises(qrmsprop.DeviceError) as info:
        qrmsprop.Optimizer(device="cuda")
    assert info.value.status == _lib.ERROR_DEVICE
    assert "qrms_optimizer_create" in info.value.message


def test_param_errors():
    opt = qrmsprop.Optimizer()
    with raises(ValueError, "dtype float64"):
        opt.add_param(np.zeros(4))
    with raises(ValueError, "dtype int32"):
        opt.add_param(np.zeros(4, np.int32))
    with raises(ValueError, "not C-contiguous"):
        opt.add_param(np.zeros((4, 4), np.float32)[:, 1])
    with raises(ValueError, "not C-contiguous"):
        opt.add_param(np.zeros((4, 4), np.float32).T)
    ro = np.zeros(4, np.float32)
    ro.setflags(write=False)
    with raises(ValueError, "param is read-only"):
        opt.add_param(ro)
    with raises(ValueError, "numel must be > 0, got 0"):
        opt.add_param(np.zeros(0, np.float32))
    with raises(ValueError, "is not an array qrmsprop can use"):
        opt.add_param([1.0, 2.0])
    p = np.zeros(4, np.float32)
    with raises(ValueError, "grad has 5 elements but the param has 4"):
        opt.add_param(p, np.zeros(5, np.float32))
    with raises(ValueError, "grad has dtype float16 but the param has dtype float32"):
        opt.add_param(p, np.zeros(4, np.float16))
    assert len(opt) == 0  # nothing was added by the failing calls
    opt.add_param(p)
    with raises(ValueError, "this param pointer was already added"):
        opt.add_param(p)
    with raises(ValueError, "parameter index 5 out of range (the optimizer has 1 parameter)"):
        opt.set_grad(5, None)
    with raises(ValueError, "parameter index -1 out of range"):
        opt.get_step(-1)
    with raises(ValueError, "has no momentum buffer"):
        opt.read_state(0, "momentum")
    with raises(ValueError, "which must be"):
        opt.read_state(0, "variance")
    with raises(ValueError, "grad of parameter 0 has 3 elements"):
        opt.set_grad(0, np.zeros(3, np.float32))
    read_only_grad = np.zeros(4, np.float32)
    read_only_grad.setflags(write=False)
    opt.set_grad(0, read_only_grad)  # grads are only read


def test_layout_change_after_first_step_is_rejected():
    opt = qrmsprop.Optimizer("rmsprop8bit")
    p = np.zeros(8192, np.float32)
    opt.add_param(p, np.ones_like(p))
    opt.step()
    with raises(ValueError, "can only change before its first step") as info:
        opt.set_param_config(0, optim_bits=32)
    assert info.value.message.startswith("qrms_optimizer_set_param_config: ")
    opt.set_param_config(0, lr=1e-4)  # hyper-parameters may change any time
    with raises(NotImplementedError, "Centered RMSprop is not supported!"):
        opt.set_param_config(0, centered=True)
    with raises(ValueError, "Invalid learning rate: -1"):
        opt.set_lr(-1)
    assert opt.lr == pytest.approx(0.01)


def test_bad_blob_is_bad_state_and_changes_nothing():
    p = np.ones(300, np.float32)
    opt = qrmsprop.Optimizer(momentum=0.9)
    opt.add_param(p, np.full_like(p, 0.5))
    opt.step()
    blob = opt.save()
    before = (opt.read_state(0), opt.read_state(0, "momentum"), opt.get_step(0))

    corrupt = bytearray(blob)
    corrupt[len(corrupt) // 2] ^= 0xFF
    cases = [
        (b"", "truncated"),
        (b"not a blob at all" * 4, "bad magic"),
        (bytes(corrupt), "checksum"),
        (blob[:-1], "corrupt or truncated"),
    ]
    for bad, text in cases:
        with pytest.raises(qrmsprop.BadStateError, match=re.escape(text)) as info:
            opt.load(bad)
        assert info.value.status == _lib.ERROR_BAD_STATE
        after = (opt.read_state(0), opt.read_state(0, "momentum"), opt.get_step(0))
        assert np.array_equal(after[0], before[0]) and np.array_equal(after[1], before[1])
        assert after[2] == before[2]

    other = qrmsprop.Optimizer(momentum=0.9)  # no parameters
    with pytest.raises(qrmsprop.BadStateError):
        other.load(blob)
    with pytest.raises(TypeError, match="bytes-like"):
        opt.load(12345)


def test_save_buffer_too_small_is_invalid_argument():
    opt = qrmsprop.Optimizer()
    p = np.ones(10, np.float32)
    opt.add_param(p)
    import ctypes

    size = ctypes.c_size_t()
    assert opt._lib.qrms_optimizer_save(opt._h(), None, 0, ctypes.byref(size)) == 0
    buf = ctypes.create_string_buffer(size.value)
    status = opt._lib.qrms_optimizer_save(opt._h(), buf, size.value - 1, ctypes.byref(size))
    assert status == _lib.ERROR_INVALID_ARGUMENT
    assert "smaller than the" in opt._lib.qrms_last_error().decode()


def test_closed_optimizer():
    with qrmsprop.Optimizer() as opt:
        opt.add_param(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="closed"):
        opt.step()
    opt.close()  # twice is fine


def test_last_error_is_per_thread():
    barrier = threading.Barrier(2)
    seen = {}

    def fail(name, kwargs):
        barrier.wait()
        for _ in range(200):
            try:
                qrmsprop.Optimizer(**kwargs)
            except qrmsprop.QrmsError as e:
                seen.setdefault(name, set()).add(e.message)

    a = threading.Thread(target=fail, args=("lr", dict(lr=-1.0)))
    b = threading.Thread(target=fail, args=("eps", dict(eps=-1.0)))
    a.start()
    b.start()
    a.join()
    b.join()
    assert seen["lr"] == {"qrms_optimizer_create: Invalid learning rate: -1"}
    assert seen["eps"] == {"qrms_optimizer_create: Invalid epsilon value: -1"}
