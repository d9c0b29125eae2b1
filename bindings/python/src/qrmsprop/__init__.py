"""qrmsprop: RMSprop with 32-bit and 8-bit quantized state (bitsandbytes'
RMSprop / RMSprop8bit / RMSprop32bit) through the library's C ABI, on ctypes.

    import numpy as np, qrmsprop
    w = np.zeros(10, np.float32); g = np.ones(10, np.float32)
    opt = qrmsprop.Optimizer("rmsprop8bit", lr=1e-2)
    opt.add_param(w, g)      # no copies: w is updated in place
    opt.step()

For PyTorch, `qrmsprop.torch` has RMSprop, RMSprop8bit and RMSprop32bit with
bitsandbytes' signatures, and RMSprop4bit (4-bit state). The shared library is found through QRMS_LIBRARY,
QRMS_PREFIX, the copy inside this package (a wheel carries one), then the
system (see qrmsprop._lib); build_info() says which and what it has.
"""
import ctypes

from . import _lib
from ._arrays import stream_pointer
from ._errors import (
    BadStateError,
    DeviceError,
    InternalError,
    InvalidArgumentError,
    OutOfMemoryError,
    QrmsError,
    QrmsNotImplementedError,
    check,
    status_string,
)
from ._lib import LibraryNotFoundError, build_info, library_path, load_library
from .optimizer import CONFIG_KEYS, VARIANTS, Optimizer, ParamInfo, default_config, merge_states

__version__ = "0.1.0"

FLOAT32 = _lib.FLOAT32
FLOAT16 = _lib.FLOAT16
BFLOAT16 = _lib.BFLOAT16

__all__ = [
    "Optimizer",
    "ParamInfo",
    "QrmsError",
    "InvalidArgumentError",
    "QrmsNotImplementedError",
    "DeviceError",
    "OutOfMemoryError",
    "BadStateError",
    "InternalError",
    "LibraryNotFoundError",
    "CONFIG_KEYS",
    "VARIANTS",
    "default_config",
    "merge_states",
    "version",
    "library_version",
    "library_path",
    "build_info",
    "cuda_device_count",
    "set_num_threads",
    "get_num_threads",
    "dynamic_map",
    "quantize_blockwise",
    "dequantize_blockwise",
    "status_string",
    "stream_pointer",
]


def library_version():
    """(major, minor, patch) of the loaded libqrmsprop."""
    return _lib.version_of(load_library())


def version():
    """The loaded library's version as 'MAJOR.MINOR.PATCH'."""
    return "%d.%d.%d" % library_version()


def cuda_device_count():
    """CUDA devices the library can use (0 without CUDA support or devices)."""
    return int(load_library().qrms_cuda_device_count())


def set_num_threads(n):
    """Threads of the CPU backend (n <= 0: the default). Results do not depend on it."""
    check(load_library().qrms_set_num_threads(int(n)))


def get_num_threads():
    return int(load_library().qrms_get_num_threads())


def _np():
    import numpy as np

    return np


def _fptr(a):
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))


def dynamic_map(signed=True):
    """bitsandbytes' create_dynamic_map(signed, 7, 8): 256 ascending float32 (numpy)."""
    np = _np()
    out = np.empty(256, dtype=np.float32)
    check(load_library().qrms_dynamic_map(1 if signed else 0, _fptr(out)))
    return out


def _host_f32(a, what):
    np = _np()
    a = np.ascontiguousarray(a, dtype=np.float32)
    if a.size == 0:
        raise ValueError("%s is empty" % what)
    return a


def quantize_blockwise(values, blocksize=256, qmap=None):
    """CPU block-wise quantization of a float array (numpy): returns
    (codes uint8 shaped like values, absmax float32 per block). qmap defaults
    to the signed dynamic map. Same layout as bitsandbytes' quantize_blockwise."""
    np = _np()
    x = _host_f32(values, "values")
    q = dynamic_map(True) if qmap is None else _host_f32(qmap, "qmap")
    if q.size != 256:
        raise ValueError("qmap must have 256 entries, got %d" % q.size)
    codes = np.empty(x.shape, dtype=np.uint8)
    absmax = np.empty(-(-x.size // int(blocksize)) if blocksize > 0 else 1, dtype=np.float32)
    check(load_library().qrms_quantize_blockwise(
        _lib.DEVICE_CPU, _fptr(q), _fptr(x), codes.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)), _fptr(absmax),
        x.size, int(blocksize), None))
    return codes, absmax


def dequantize_blockwise(codes, absmax, blocksize=256, qmap=None):
    """Inverse of quantize_blockwise (CPU, numpy): float32 shaped like codes."""
    np = _np()
    c = np.ascontiguousarray(codes, dtype=np.uint8)
    a = _host_f32(absmax, "absmax")
    if blocksize <= 0:
        raise ValueError("blocksize must be > 0, got %r" % (blocksize,))
    if a.size < -(-c.size // int(blocksize)):
        raise ValueError("absmax has %d entries; %d codes in blocks of %d need %d"
                         % (a.size, c.size, blocksize, -(-c.size // int(blocksize))))
    q = dynamic_map(True) if qmap is None else _host_f32(qmap, "qmap")
    if q.size != 256:
        raise ValueError("qmap must have 256 entries, got %d" % q.size)
    out = np.empty(c.shape, dtype=np.float32)
    check(load_library().qrms_dequantize_blockwise(
        _lib.DEVICE_CPU, _fptr(q), c.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)), _fptr(a), _fptr(out),
        c.size, int(blocksize), None))
    return out
