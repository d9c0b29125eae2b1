"""Array interop without a GPU: __cuda_array_interface__ parsing, stream
objects, and the device checks that keep CUDA pointers away from the CPU."""
import ctypes

import numpy as np
import pytest

import qrmsprop
from qrmsprop import _arrays, _lib


class FakeCudaArray:
    """Looks like a CuPy/Numba device array (the pointer is never dereferenced here)."""

    def __init__(self, shape, typestr="<f4", strides=None, ptr=0x7F0000000000, readonly=False, mask=None):
        self.__cuda_array_interface__ = {
            "shape": shape, "typestr": typestr, "data": (ptr, readonly), "strides": strides, "version": 3,
        }
        if mask is not None:
            self.__cuda_array_interface__["mask"] = mask


def test_cuda_array_interface_is_parsed():
    b = _arrays.describe(FakeCudaArray((4, 8)), "param")
    assert (b.ptr, b.dtype, b.numel, b.device, b.readonly) == (0x7F0000000000, _lib.FLOAT32, 32, "cuda", False)
    b = _arrays.describe(FakeCudaArray((4, 8), "<f2", strides=(16, 2)), "param")  # explicit C strides
    assert b.dtype == _lib.FLOAT16 and b.numel == 32
    b = _arrays.describe(FakeCudaArray((1, 8), "<f4", strides=(999, 4)), "param")  # size-1 dim: any stride
    assert b.numel == 8


@pytest.mark.parametrize("obj,message", [
    (FakeCudaArray((4, 8), strides=(4, 16)), "not C-contiguous"),
    (FakeCudaArray((4,), "<f8"), "typestr '<f8'"),
    (FakeCudaArray((4,), ">f4"), "native byte order"),
    (FakeCudaArray((4,), mask=object()), "masked arrays"),
])
def test_cuda_array_interface_rejections(obj, message):
    with pytest.raises(ValueError, match=message):
        _arrays.describe(obj, "param")


def test_cuda_memory_is_refused_by_a_cpu_optimizer():
    opt = qrmsprop.Optimizer(device="cpu")
    with pytest.raises(qrmsprop.DeviceError, match="param is cuda memory but this optimizer is on cpu"):
        opt.add_param(FakeCudaArray((16,)))
    p = np.zeros(16, np.float32)
    with pytest.raises(qrmsprop.DeviceError, match="grad is cuda memory"):
        opt.add_param(p, FakeCudaArray((16,)))
    assert len(opt) == 0


def test_numpy_buffer_is_the_array_itself():
    a = np.zeros((3, 5), np.float32)
    b = _arrays.describe(a, "param")
    assert b.ptr == a.ctypes.data and b.numel == 15 and b.device == "cpu" and b.keepalive is a


class Handle:
    def __init__(self, v):
        self.value = v


@pytest.mark.parametrize("stream,expected", [
    (None, None),
    (0, None),
    (1234, 1234),
    (type("TorchStream", (), {"cuda_stream": 77})(), 77),
    (type("CupyStream", (), {"ptr": 88})(), 88),
    (type("NumbaStream", (), {"handle": ctypes.c_void_p(99)})(), 99),
    (type("NumbaDefault", (), {"handle": ctypes.c_void_p(None)})(), None),
])
def test_stream_pointer(stream, expected):
    assert _arrays.stream_pointer(stream) == expected


def test_stream_pointer_rejects_junk():
    with pytest.raises(ValueError, match="stream must be"):
        _arrays.stream_pointer("default")


def test_cpu_step_accepts_and_ignores_a_stream():
    p = np.ones(8, np.float32)
    opt = qrmsprop.Optimizer(lr=0.1)
    opt.add_param(p, np.ones_like(p))
    opt.step(stream=None)
    opt.step(stream=0)
    assert opt.get_step(0) == 2
