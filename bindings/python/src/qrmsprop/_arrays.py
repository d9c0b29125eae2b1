"""Raw pointers of arrays from numpy, __cuda_array_interface__ (CuPy, Numba)
and torch, without copying. Only C-contiguous float32/float16/bfloat16 data
is accepted; anything else is a ValueError that says what was wrong."""
import sys
from collections import namedtuple

from . import _lib

Buffer = namedtuple("Buffer", "ptr dtype numel device device_index readonly keepalive kind")
# device: "cpu" or "cuda"; device_index: int or None (unknown); kind: "numpy",
# "cuda_array_interface" or "torch"; keepalive: the object whose lifetime
# keeps the memory valid.

DTYPE_NAMES = {_lib.FLOAT32: "float32", _lib.FLOAT16: "float16", _lib.BFLOAT16: "bfloat16"}

_TYPESTR = {"<f4": _lib.FLOAT32, "<f2": _lib.FLOAT16, "=f4": _lib.FLOAT32, "=f2": _lib.FLOAT16}


def _typestr_dtype(typestr, dtype_name, what):
    if dtype_name == "bfloat16":  # ml_dtypes.bfloat16 in numpy (typestr '<V2')
        return _lib.BFLOAT16
    if sys.byteorder == "little" and typestr in _TYPESTR:
        return _TYPESTR[typestr]
    raise ValueError(
        "%s has dtype %s (typestr %r); qrmsprop needs float32, float16 or bfloat16 in native byte order"
        % (what, dtype_name or typestr, typestr)
    )


def _check_c_contiguous(shape, strides, itemsize, what):
    if strides is None:
        return
    expected = itemsize
    for dim, stride in zip(reversed(shape), reversed(strides)):
        if dim != 1 and stride != expected:
            raise ValueError(
                "%s is not C-contiguous (shape %s, strides %s); pass a contiguous array "
                "(numpy.ascontiguousarray / .contiguous()) and keep that array as the parameter"
                % (what, tuple(shape), tuple(strides))
            )
        expected *= dim


def _numel(shape):
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _torch_buffer(t, what):
    import torch

    dtypes = {torch.float32: _lib.FLOAT32, torch.float16: _lib.FLOAT16, torch.bfloat16: _lib.BFLOAT16}
    if t.dtype not in dtypes:
        raise ValueError("%s has dtype %s; qrmsprop needs torch.float32, float16 or bfloat16" % (what, t.dtype))
    if not t.is_contiguous():
        raise ValueError(
            "%s is not contiguous (shape %s, stride %s); call .contiguous() and keep that tensor"
            % (what, tuple(t.shape), t.stride())
        )
    if t.device.type not in ("cpu", "cuda"):
        raise ValueError("%s is on device %s; qrmsprop supports cpu and cuda tensors" % (what, t.device))
    # detach() shares the storage: holding it keeps the memory alive even if
    # the caller later rebinds p.data.
    return Buffer(
        ptr=t.data_ptr(),
        dtype=dtypes[t.dtype],
        numel=t.numel(),
        device=t.device.type,
        device_index=t.device.index if t.device.type == "cuda" else None,
        readonly=False,
        keepalive=t.detach(),
        kind="torch",
    )


def is_torch_tensor(obj):
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def describe(obj, what):
    """The Buffer of `obj` (numpy array, __cuda_array_interface__ object or torch tensor)."""
    if is_torch_tensor(obj):
        return _torch_buffer(obj, what)
    cai = getattr(obj, "__cuda_array_interface__", None)
    if cai is not None:
        if cai.get("mask") is not None:
            raise ValueError("%s has a mask in __cuda_array_interface__; masked arrays are not supported" % what)
        shape = tuple(cai["shape"])
        dtype = _typestr_dtype(cai["typestr"], getattr(getattr(obj, "dtype", None), "name", None), what)
        itemsize = 4 if dtype == _lib.FLOAT32 else 2
        _check_c_contiguous(shape, cai.get("strides"), itemsize, what)
        ptr, readonly = cai["data"]
        dev = getattr(obj, "device", None)
        index = getattr(dev, "id", None)
        return Buffer(ptr or 0, dtype, _numel(shape), "cuda", index if isinstance(index, int) else None,
                      bool(readonly), obj, "cuda_array_interface")
    ai = getattr(obj, "__array_interface__", None)
    if ai is not None:
        shape = tuple(ai["shape"])
        dtype = _typestr_dtype(ai["typestr"], getattr(getattr(obj, "dtype", None), "name", None), what)
        itemsize = 4 if dtype == _lib.FLOAT32 else 2
        _check_c_contiguous(shape, ai.get("strides"), itemsize, what)
        ptr, readonly = ai["data"]
        return Buffer(ptr or 0, dtype, _numel(shape), "cpu", None, bool(readonly), obj, "numpy")
    raise ValueError(
        "%s (%s) is not an array qrmsprop can use: pass a numpy array, an object with "
        "__cuda_array_interface__ (CuPy, Numba) or a torch tensor" % (what, type(obj).__name__)
    )


def stream_pointer(stream):
    """A cudaStream_t as an int (or None for the default stream) from None, an
    int, torch.cuda.Stream (.cuda_stream), CuPy (.ptr) or Numba (.handle)."""
    if stream is None:
        return None
    if isinstance(stream, int):
        return stream or None
    for attr in ("cuda_stream", "ptr"):
        v = getattr(stream, attr, None)
        if isinstance(v, int):
            return v or None
    handle = getattr(stream, "handle", None)
    if handle is not None:
        v = getattr(handle, "value", handle)
        if v is None or isinstance(v, int):
            return v or None
    raise ValueError(
        "stream must be None, an int (cudaStream_t), a torch.cuda.Stream, a CuPy stream or a Numba stream; got %r"
        % (stream,)
    )
