"""The optimizer object: a thin, checked wrapper of qrms_optimizer_*."""
import ctypes
import threading
from collections import namedtuple

from . import _arrays, _lib
from ._errors import DeviceError, check

VARIANTS = {
    "rmsprop": _lib.RMSPROP,
    "rmsprop8bit": _lib.RMSPROP_8BIT,
    "rmsprop32bit": _lib.RMSPROP_32BIT,
    "rmsprop4bit": _lib.RMSPROP_4BIT,
}
_VARIANT_BITS = {_lib.RMSPROP_8BIT: 8, _lib.RMSPROP_32BIT: 32, _lib.RMSPROP_4BIT: 4}

# bitsandbytes' names for the fields of qrms_config (SPEC section 2).
CONFIG_KEYS = (
    "lr",
    "alpha",
    "eps",
    "weight_decay",
    "momentum",
    "centered",
    "optim_bits",
    "min_8bit_size",
    "percentile_clipping",
    "block_wise",
    "max_unorm",
    "skip_zeros",
    "skip_nonfinite",
    "state_map",
    "stochastic_rounding",
    "seed",
)
_BOOL_KEYS = ("centered", "block_wise", "skip_zeros", "skip_nonfinite", "stochastic_rounding")
# Optimizer-wide keys: read by qrms_optimizer_create, ignored in per-parameter configs.
_OPTIMIZER_WIDE_KEYS = ("skip_nonfinite", "stochastic_rounding", "seed")

ParamInfo = namedtuple("ParamInfo", "numel dtype state_bits")
ParamInfo.__doc__ = """What a parameter is: numel, dtype ('float32', 'float16' or 'bfloat16') and the
precision of its state (4, 8 or 32 bits)."""
_STATES = {"square_avg": _lib.STATE_SQUARE_AVG, "momentum": _lib.STATE_MOMENTUM}
# state_map: the map of 8-bit square-average state, by name.
_STATE_MAPS = {"signed": _lib.MAP_SIGNED, "unsigned": _lib.MAP_UNSIGNED}


def default_config():
    """The library's defaults (qrms_config_init) as a dict."""
    return config_to_dict(_lib.init_struct(_lib.qrms_config))


def config_to_dict(c):
    d = {k: getattr(c, k) for k in CONFIG_KEYS}
    for k in _BOOL_KEYS:
        d[k] = bool(d[k])
    names = {v: k for k, v in _STATE_MAPS.items()}
    d["state_map"] = names.get(d["state_map"], d["state_map"])
    return d


def make_config(**values):
    """A qrms_config with the library defaults, then `values` (bitsandbytes names)."""
    unknown = sorted(set(values) - set(CONFIG_KEYS))
    if unknown:
        raise TypeError("unknown config keys %s; known: %s" % (unknown, ", ".join(CONFIG_KEYS)))
    c = _lib.init_struct(_lib.qrms_config)  # defaults, struct_size = ours
    for k, v in values.items():
        if v is None:
            continue
        if k in _BOOL_KEYS:
            v = 1 if v else 0
        elif k == "state_map":
            if v not in _STATE_MAPS:
                raise ValueError("state_map must be one of %s, got %r" % (", ".join(_STATE_MAPS), v))
            v = _STATE_MAPS[v]
            if v and c.struct_size <= _lib.qrms_config.state_map.offset:
                raise NotImplementedError("state_map needs a newer libqrmsprop (its qrms_config has no "
                                          "state_map field)")
        elif k in ("optim_bits", "min_8bit_size", "percentile_clipping", "seed"):
            if isinstance(v, bool) or int(v) != v:
                raise ValueError("%s must be an integer, got %r" % (k, v))
            v = int(v)
            if k == "seed" and not 0 <= v < 2**64:
                raise ValueError("seed must be in [0, 2**64), got %r" % (v,))
        else:
            v = float(v)
        if k in ("skip_nonfinite", "stochastic_rounding", "seed") and v and \
                c.struct_size <= getattr(_lib.qrms_config, k).offset:
            raise NotImplementedError("%s needs a newer libqrmsprop (its qrms_config has no %s field)" % (k, k))
        try:
            setattr(c, k, v)
        except (TypeError, OverflowError) as e:
            raise ValueError("%s=%r does not fit qrms_config.%s: %s" % (k, v, k, e)) from None
    return c


def parse_device(device):
    """'cpu', 'cuda', 'cuda:N' (or a torch.device) -> (QRMS_DEVICE_*, index, name)."""
    s = str(device)
    if s == "cpu":
        return _lib.DEVICE_CPU, 0, "cpu"
    if s == "cuda":
        return _lib.DEVICE_CUDA, 0, "cuda:0"
    if s.startswith("cuda:") and s[5:].isdigit():
        return _lib.DEVICE_CUDA, int(s[5:]), s
    raise ValueError("device must be 'cpu', 'cuda' or 'cuda:N', got %r" % (device,))


class Optimizer:
    """An RMSprop optimizer of the qrmsprop library.

    variant: 'rmsprop' (optim_bits from the config), 'rmsprop8bit',
    'rmsprop32bit' or 'rmsprop4bit' (optim_bits fixed). device: 'cpu',
    'cuda' or 'cuda:N'.
    config: bitsandbytes' names (lr, alpha, eps, weight_decay, momentum,
    centered, optim_bits, min_8bit_size, percentile_clipping, block_wise,
    max_unorm, skip_zeros), and state_map ('signed', the default, or
    'unsigned': 8-bit square-average state on the unsigned dynamic map, about
    twice the resolution; momentum buffers stay signed); unspecified ones
    take the SPEC defaults.

    skip_nonfinite=True: a step whose gradients (times the unscale factor of
    set_grad_unscale, if any) hold an inf or NaN changes nothing, for every
    parameter, and sets the found-inf flag (found_inf(), found_inf_ptr()).

    stochastic_rounding=True: the final rounding of float16 / bfloat16
    parameters is unbiased-stochastic, with random bits from Philox keyed by
    seed (an integer in [0, 2**64)), the step and the element's index:
    reproducible, and the same on the CPU and a GPU. float32 parameters are
    unaffected. skip_nonfinite, stochastic_rounding and seed are
    optimizer-wide.

    Parameters and gradients are used in place, never copied: the optimizer
    keeps a reference to every array it was given, so their memory stays
    valid while it may use them. One optimizer must not be used from two
    threads at once; this wrapper serialises its own calls with a lock.
    """

    def __init__(self, variant="rmsprop", device="cpu", *, skip_nonfinite=False, stochastic_rounding=False, seed=0,
                 **config):
        if isinstance(variant, str):
            key = variant.lower().replace("_", "").replace("-", "")
            if key not in VARIANTS:
                raise ValueError("variant must be one of %s, got %r" % (", ".join(VARIANTS), variant))
            variant = VARIANTS[key]
        elif variant not in VARIANTS.values():
            raise ValueError("variant must be one of %s or 0/1/2/3, got %r" % (", ".join(VARIANTS), variant))
        fixed = _VARIANT_BITS.get(variant)
        if fixed is not None:
            given = config.get("optim_bits")
            if given is not None and given != fixed:
                raise ValueError("optim_bits=%r conflicts with the variant, which fixes it to %d" % (given, fixed))
            config["optim_bits"] = fixed
        config["skip_nonfinite"] = bool(skip_nonfinite)
        config["stochastic_rounding"] = bool(stochastic_rounding)
        config["seed"] = seed
        self._lib = _lib.load_library()
        self._handle = None
        self._unscale = None  # Buffer of the unscale factor (kept alive) or None
        self._lock = threading.RLock()
        self.device_type, self.device_index, self.device = parse_device(device)
        self.variant = variant
        cfg = make_config(**config)
        handle = _lib.c_optimizer()
        check(self._lib.qrms_optimizer_create(ctypes.byref(handle), variant, ctypes.byref(cfg),
                                              self.device_type, self.device_index))
        self._handle = handle
        self._config = config_to_dict(cfg)
        self._params = []  # per index: (Buffer of the param, shape)
        self._grads = []  # per index: Buffer of the grad or None
        self._comm_fn = None  # set_comm's callback, kept alive while the library holds it

    # ---- lifetime -----------------------------------------------------------
    def close(self):
        """Frees the library object and its state now (also done on garbage collection)."""
        with self._lock:
            if self._handle is not None:
                self._lib.qrms_optimizer_destroy(self._handle)
                self._handle = None
                self._params = []
                self._grads = []
                self._unscale = None

    def __del__(self):
        if getattr(self, "_handle", None) is not None:
            try:
                self._lib.qrms_optimizer_destroy(self._handle)
            except Exception:
                pass
            self._handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _h(self):
        if self._handle is None:
            raise ValueError("this optimizer was closed")
        return self._handle

    # ---- parameters -----------------------------------------------------------
    def _buffer(self, obj, what):
        b = _arrays.describe(obj, what)
        want = "cpu" if self.device_type == _lib.DEVICE_CPU else "cuda"
        if b.device != want:
            raise DeviceError("%s is %s memory but this optimizer is on %s" % (what, b.device, self.device))
        if want == "cuda" and b.device_index is not None and b.device_index != self.device_index:
            raise DeviceError("%s is on cuda:%d but this optimizer is on %s" % (what, b.device_index, self.device))
        return b

    @staticmethod
    def _shape(obj):
        shape = getattr(obj, "shape", None)
        if shape is None:
            cai = getattr(obj, "__cuda_array_interface__", None) or getattr(obj, "__array_interface__", {})
            shape = cai.get("shape", ())
        return tuple(int(d) for d in shape)

    def _grad_buffer(self, grad, pb, index_text):
        if grad is None:
            return None
        g = self._buffer(grad, "grad" + index_text)
        if g.dtype != pb.dtype:
            raise ValueError("grad%s has dtype %s but the param has dtype %s"
                             % (index_text, _arrays.DTYPE_NAMES[g.dtype], _arrays.DTYPE_NAMES[pb.dtype]))
        if g.numel != pb.numel:
            raise ValueError("grad%s has %d elements but the param has %d" % (index_text, g.numel, pb.numel))
        return g

    def _param_buffers(self, param, grad):
        """The buffers of a new parameter (writable) and its gradient (or None)."""
        pb = self._buffer(param, "param")
        if pb.readonly:
            raise ValueError("param is read-only; the optimizer writes to it in place")
        return pb, self._grad_buffer(grad, pb, "")

    def add_param(self, param, grad=None):
        """Registers `param` (updated in place at every step) with its gradient
        (may be None: set it later with set_grad). Returns the index."""
        with self._lock:
            h = self._h()
            pb, gb = self._param_buffers(param, grad)
            index = ctypes.c_int64()
            check(self._lib.qrms_optimizer_add_param(h, pb.ptr, gb.ptr if gb else None, pb.dtype, pb.numel,
                                                     ctypes.byref(index)))
            self._params.append((pb, self._shape(param)))
            self._grads.append(gb)
            return index.value

    def add_param_shard(self, param, grad, global_numel, offset):
        """Registers this rank's part of a sharded tensor: `param` (flat, any
        size, also empty) holds elements [offset, offset + param.size) of a
        flattened tensor of `global_numel` elements. Every rank adds the same
        tensors in the same order (docs/distributed.md). Returns the index."""
        self._require("qrms_optimizer_add_param_shard")
        with self._lock:
            h = self._h()
            pb, gb = self._param_buffers(param, grad)
            index = ctypes.c_int64()
            check(self._lib.qrms_optimizer_add_param_shard(h, pb.ptr if pb.numel else None,
                                                           gb.ptr if gb and pb.numel else None, pb.dtype, pb.numel,
                                                           int(global_numel), int(offset), ctypes.byref(index)))
            self._params.append((pb, self._shape(param)))
            self._grads.append(gb)
            return index.value

    def shard_info(self, index):
        """(global_numel, offset) of parameter `index`."""
        self._require("qrms_optimizer_shard_info")
        with self._lock:
            g, o = ctypes.c_int64(), ctypes.c_int64()
            check(self._lib.qrms_optimizer_shard_info(self._h(), int(index), ctypes.byref(g), ctypes.byref(o)))
            return g.value, o.value

    def set_comm(self, rank, world_size, all_reduce):
        """Makes this optimizer rank `rank` of `world_size` (CPU optimizers).
        Each step calls all_reduce(values, op) at most 4 times, on every rank
        alike: `values` is a writable float32 memoryview to reduce in place
        across the ranks, op "sum" or "max" (with mpi4py:
        comm.Allreduce(MPI.IN_PLACE, values, op=MPI.SUM or MPI.MAX)). An
        exception in all_reduce fails the step. None for all_reduce removes
        the communicator."""
        self._require("qrms_optimizer_set_comm")
        with self._lock:
            h = self._h()
            if all_reduce is None:
                check(self._lib.qrms_optimizer_set_comm(h, None))
                self._comm_fn = None
                return

            def trampoline(_user, data, count, op, _stream):
                try:
                    values = memoryview((ctypes.c_float * count).from_address(ctypes.addressof(data.contents)))
                    all_reduce(values.cast("B").cast("f"), "sum" if op == _lib.REDUCE_SUM else "max")
                    return _lib.SUCCESS
                except Exception:  # noqa: BLE001  # reported as the step's failure
                    return _lib.ERROR_DEVICE

            fn = _lib.ALL_REDUCE_FN(trampoline)
            c = _lib.qrms_comm(ctypes.sizeof(_lib.qrms_comm), int(rank), int(world_size), _lib.DEVICE_CPU, 0, None,
                               fn)
            check(self._lib.qrms_optimizer_set_comm(h, ctypes.byref(c)))
            self._comm_fn = fn  # the library calls it from step(): keep it alive

    def _check_index(self, index):
        if not isinstance(index, int) or isinstance(index, bool):
            raise TypeError("index must be an int, got %r" % (index,))

    def set_grad(self, index, grad):
        """Points parameter `index` at a new gradient (or None: skipped by step)."""
        with self._lock:
            h = self._h()
            self._check_index(index)
            if 0 <= index < len(self._params):
                gb = self._grad_buffer(grad, self._params[index][0], " of parameter %d" % index)
            else:
                gb = None  # the library reports the bad index
            check(self._lib.qrms_optimizer_set_grad(h, index, gb.ptr if gb else None))
            self._grads[index] = gb

    def param_config(self, index):
        """The config parameter `index` uses (its own, or the optimizer's), as a dict."""
        with self._lock:
            h = self._h()
            self._check_index(index)
            if not hasattr(self._lib, "qrms_optimizer_get_param_config"):
                raise NotImplementedError("this libqrmsprop has no qrms_optimizer_get_param_config")
            cfg = _lib.init_struct(_lib.qrms_config)
            check(self._lib.qrms_optimizer_get_param_config(h, index, ctypes.byref(cfg)))
            return config_to_dict(cfg)

    def set_param_config(self, index, **overrides):
        """Gives parameter `index` its own config: the config it uses now with
        `overrides` applied (bitsandbytes' override_config; overrides add up).
        optim_bits and the other layout keys can only change before the
        parameter's first step."""
        with self._lock:
            h = self._h()
            self._check_index(index)
            unknown = sorted(set(overrides) - set(CONFIG_KEYS))
            if unknown:
                raise TypeError("unknown config keys %s; known: %s" % (unknown, ", ".join(CONFIG_KEYS)))
            wide = sorted(k for k in _OPTIMIZER_WIDE_KEYS if k in overrides and overrides[k] != self._config[k])
            if wide:
                raise ValueError("%s is optimizer-wide: give it to the Optimizer, not to one parameter"
                                 % ", ".join(wide))
            if hasattr(self._lib, "qrms_optimizer_get_param_config"):
                values = self.param_config(index)
            else:  # an older library: start from the optimizer's config
                values = dict(self._config)
            values.update(overrides)
            cfg = make_config(**values)
            check(self._lib.qrms_optimizer_set_param_config(h, index, ctypes.byref(cfg)))

    def set_lr(self, lr):
        """Sets the learning rate of every parameter, own configs included."""
        with self._lock:
            check(self._lib.qrms_optimizer_set_lr(self._h(), float(lr)))
            self._config["lr"] = float(lr)

    @property
    def config(self):
        """The optimizer's config (a copy)."""
        return dict(self._config)

    @property
    def lr(self):
        return self._config["lr"]

    def step(self, stream=None):
        """One update of every parameter whose grad is set. On CUDA it only
        enqueues work on `stream` (None: the default stream; an int
        cudaStream_t, a torch.cuda.Stream, a CuPy or Numba stream)."""
        s = _arrays.stream_pointer(stream)
        with self._lock:
            check(self._lib.qrms_optimizer_step(self._h(), s))

    # ---- loss scaling and non-finite gradients ------------------------------------
    def _require(self, name):
        if not hasattr(self._lib, name):
            raise NotImplementedError("this libqrmsprop has no %s" % name)

    def set_grad_unscale(self, unscale):
        """Multiplies every gradient by `unscale` (before clipping, the
        non-finite check and the update), or with None removes the factor.
        `unscale` is a float32 scalar on the optimizer's device, used in place:
        a 1-element numpy array (CPU), or a torch tensor / __cuda_array_interface__
        object. Every step reads its current value (on the device), so it may
        change between steps; the optimizer keeps a reference to it."""
        with self._lock:
            h = self._h()
            self._require("qrms_optimizer_set_grad_unscale")
            if unscale is None:
                check(self._lib.qrms_optimizer_set_grad_unscale(h, None))
                self._unscale = None
                return
            b = self._buffer(unscale, "unscale")
            if b.dtype != _lib.FLOAT32:
                raise ValueError("unscale has dtype %s; it must be float32" % _arrays.DTYPE_NAMES[b.dtype])
            if b.numel != 1:
                raise ValueError("unscale has %d elements; it must be a single float32" % b.numel)
            check(self._lib.qrms_optimizer_set_grad_unscale(h, b.ptr))
            self._unscale = b

    def found_inf(self):
        """True when the last step was skipped for an inf/NaN gradient
        (skip_nonfinite); synchronises with the device."""
        with self._lock:
            h = self._h()
            self._require("qrms_optimizer_read_found_inf")
            flag = ctypes.c_int32()
            check(self._lib.qrms_optimizer_read_found_inf(h, ctypes.byref(flag)))
            return bool(flag.value)

    def found_inf_ptr(self):
        """The address of the found-inf flag (an int32 on the optimizer's
        device: 1 after a skipped step, 0 after one that ran), for reading it
        without a host synchronisation. Valid while the optimizer is open."""
        with self._lock:
            h = self._h()
            self._require("qrms_optimizer_found_inf")
            p = ctypes.c_void_p()
            check(self._lib.qrms_optimizer_found_inf(h, ctypes.byref(p)))
            return int(p.value or 0)

    # ---- queries ----------------------------------------------------------------
    def __len__(self):
        return len(self._params)

    @property
    def param_count(self):
        with self._lock:
            n = ctypes.c_int64()
            check(self._lib.qrms_optimizer_param_count(self._h(), ctypes.byref(n)))
            return n.value

    def get_step(self, index):
        """Steps taken by parameter `index`."""
        with self._lock:
            self._check_index(index)
            s = ctypes.c_int64()
            check(self._lib.qrms_optimizer_get_step(self._h(), index, ctypes.byref(s)))
            return s.value

    def param_info(self, index):
        """ParamInfo(numel, dtype, state_bits) of parameter `index`."""
        with self._lock:
            h = self._h()
            self._check_index(index)
            self._require("qrms_optimizer_param_info")
            numel, dtype, bits = ctypes.c_int64(), ctypes.c_int32(), ctypes.c_int32()
            check(self._lib.qrms_optimizer_param_info(h, index, ctypes.byref(numel), ctypes.byref(dtype),
                                                      ctypes.byref(bits)))
            return ParamInfo(numel.value, _arrays.DTYPE_NAMES.get(dtype.value, dtype.value), bits.value)

    def read_state(self, index, which="square_avg"):
        """State of parameter `index` ('square_avg' or 'momentum'), dequantized
        to a new float32 numpy array shaped like the parameter. Synchronises."""
        import numpy as np

        with self._lock:
            h = self._h()
            self._check_index(index)
            w = _STATES.get(which, which)
            if w not in _STATES.values():
                raise ValueError("which must be 'square_avg' or 'momentum', got %r" % (which,))
            if not 0 <= index < len(self._params):
                n = len(self._params)
                raise ValueError("parameter index %d out of range (the optimizer has %d parameter%s)"
                                 % (index, n, "" if n == 1 else "s"))
            pb, shape = self._params[index]
            out = np.empty(pb.numel, dtype=np.float32)
            check(self._lib.qrms_optimizer_read_state(h, index, w,
                                                      out.ctypes.data_as(ctypes.POINTER(ctypes.c_float))))
            return out.reshape(shape) if _prod(shape) == pb.numel else out

    def state_bytes(self):
        """Bytes of state the optimizer holds on its device."""
        with self._lock:
            n = ctypes.c_int64()
            check(self._lib.qrms_optimizer_state_bytes(self._h(), ctypes.byref(n)))
            return n.value

    # ---- checkpoints ------------------------------------------------------------
    def save(self):
        """All state as a versioned, checksummed blob (bytes)."""
        with self._lock:
            h = self._h()
            size = ctypes.c_size_t()
            check(self._lib.qrms_optimizer_save(h, None, 0, ctypes.byref(size)))
            buf = ctypes.create_string_buffer(size.value)
            check(self._lib.qrms_optimizer_save(h, buf, size.value, ctypes.byref(size)))
            return buf.raw[: size.value]

    def load(self, blob):
        """Restores what save() wrote (bytes, bytearray, memoryview, a uint8
        numpy array or torch tensor). A bad blob raises BadStateError and
        leaves the optimizer as it was."""
        data = _as_bytes(blob)
        with self._lock:
            check(self._lib.qrms_optimizer_load(self._h(), data, len(data)))

    def __repr__(self):
        name = {v: k for k, v in VARIANTS.items()}[self.variant]
        return "qrmsprop.Optimizer(%r, device=%r, params=%d, lr=%g)" % (name, self.device, len(self._params),
                                                                          self._config["lr"])


def merge_states(blobs):
    """One unsharded checkpoint (bytes) from the save() blobs of every rank of
    a sharded optimizer, in any order. Raises BadStateError for a missing or
    doubled rank or shards that do not tile their tensors."""
    lib = _lib.load_library()
    if not hasattr(lib, "qrms_state_merge"):
        raise NotImplementedError("this libqrmsprop has no qrms_state_merge")
    data = [_as_bytes(b) for b in blobs]
    ptrs = (ctypes.c_void_p * len(data))(*[ctypes.cast(ctypes.c_char_p(d), ctypes.c_void_p) for d in data])
    sizes = (ctypes.c_size_t * len(data))(*[len(d) for d in data])
    size = ctypes.c_size_t()
    check(lib.qrms_state_merge(ptrs, sizes, len(data), None, 0, ctypes.byref(size)))
    buf = ctypes.create_string_buffer(size.value)
    check(lib.qrms_state_merge(ptrs, sizes, len(data), buf, size.value, ctypes.byref(size)))
    return buf.raw[: size.value]


def _prod(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def _as_bytes(blob):
    if isinstance(blob, bytes):
        return blob
    if _arrays.is_torch_tensor(blob):
        return blob.detach().cpu().contiguous().numpy().tobytes()
    try:
        return bytes(memoryview(blob).cast("B"))
    except TypeError:
        raise TypeError("blob must be bytes-like (bytes, bytearray, memoryview, numpy uint8 array) or a torch "
                        "uint8 tensor, got %s" % type(blob).__name__) from None
