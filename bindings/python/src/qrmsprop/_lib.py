"""Finding libqrmsprop.so and declaring the C ABI of include/qrmsprop/qrmsprop.h.

The library is looked up, in this order:
  1. QRMS_LIBRARY: the full path of the shared library (an error if it is set
     and cannot be loaded: no silent fallback to another copy);
  2. QRMS_PREFIX: an install prefix; <prefix>/lib, lib64 and lib/<multiarch>;
  3. the copy inside this package (libqrmsprop.so.0 next to this file), which
     a wheel built by scikit-build-core carries (see build_info());
  4. ctypes.util.find_library("qrmsprop") and the dynamic loader's own search
     (LD_LIBRARY_PATH, the ld.so cache);
  5. the usual install locations (/usr/local/lib, /usr/lib, sys.prefix/lib, ...).
It is loaded on first use, so `import qrmsprop` works without it.
"""
import ctypes
import ctypes.util
import os
import sys
import threading

# What this binding was written against: the same major version, at least this
# minor version (0.x: the minor is the compatibility level).
ABI_MAJOR = 0
ABI_MIN_MINOR = 1

# ---- constants (values fixed by the header; appended, never renumbered) ----
SUCCESS = 0
ERROR_INVALID_ARGUMENT = 1
ERROR_NOT_IMPLEMENTED = 2
ERROR_DEVICE = 3
ERROR_OUT_OF_MEMORY = 4
ERROR_BAD_STATE = 5
ERROR_INTERNAL = 6

FLOAT32 = 0
FLOAT16 = 1
BFLOAT16 = 2

DEVICE_CPU = 0
DEVICE_CUDA = 1

RMSPROP = 0
RMSPROP_8BIT = 1
RMSPROP_32BIT = 2
RMSPROP_4BIT = 3

STATE_SQUARE_AVG = 0
STATE_MOMENTUM = 1

MAP_SIGNED = 0
MAP_UNSIGNED = 1

REDUCE_SUM = 0
REDUCE_MAX = 1

c_status = ctypes.c_int32
c_dtype = ctypes.c_int32
c_device = ctypes.c_int32
c_variant = ctypes.c_int32
c_stream = ctypes.c_void_p  # qrms_stream_t: same ABI as cudaStream_t, NULL = default stream
c_optimizer = ctypes.c_void_p  # qrms_optimizer_t (opaque handle)


class qrms_config(ctypes.Structure):
    """struct qrms_config; struct_size must be set (config_init does it)."""

    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("lr", ctypes.c_float),
        ("alpha", ctypes.c_float),
        ("eps", ctypes.c_float),
        ("weight_decay", ctypes.c_float),
        ("momentum", ctypes.c_float),
        ("centered", ctypes.c_int32),
        ("optim_bits", ctypes.c_int32),
        ("min_8bit_size", ctypes.c_int64),
        ("percentile_clipping", ctypes.c_int32),
        ("block_wise", ctypes.c_int32),
        ("max_unorm", ctypes.c_float),
        ("skip_zeros", ctypes.c_int32),
        # Appended after the first published struct (64 bytes on LP64, which
        # ends with skip_zeros); a library that predates it gets 64 bytes.
        ("skip_nonfinite", ctypes.c_int32),
        # Appended later (issue 15; not yet exposed as optimizer keys here):
        # reserved0 is the tail padding of the layout above, never read.
        ("reserved0", ctypes.c_int32),
        ("seed", ctypes.c_uint64),
        ("stochastic_rounding", ctypes.c_int32),
        # reserved1 is the tail padding of the 88-byte layout, never read.
        ("reserved1", ctypes.c_int32),
        ("state_map", ctypes.c_int32),  # MAP_SIGNED / MAP_UNSIGNED (the 'state_map' optimizer key)
    ]


# struct_size of the first published qrms_config: the smallest the library takes.
CONFIG_FIRST_SIZE = qrms_config.skip_nonfinite.offset


class qrms_update_params(ctypes.Structure):
    """struct qrms_update_params (the core entry points on raw pointers)."""

    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("lr", ctypes.c_float),
        ("alpha", ctypes.c_float),
        ("eps", ctypes.c_float),
        ("weight_decay", ctypes.c_float),
        ("momentum", ctypes.c_float),
        ("max_unorm", ctypes.c_float),
        ("skip_zeros", ctypes.c_int32),
    ]


# qrms_status_t (*all_reduce)(void *user, float *data, int64_t count, qrms_reduce_op_t op, qrms_stream_t stream)
ALL_REDUCE_FN = ctypes.CFUNCTYPE(c_status, ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.c_int64,
                                 ctypes.c_int32, c_stream)


class qrms_comm(ctypes.Structure):
    """struct qrms_comm: the collectives of a sharded optimizer (docs/distributed.md)."""

    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("rank", ctypes.c_int32),
        ("world_size", ctypes.c_int32),
        ("device", ctypes.c_int32),
        ("device_index", ctypes.c_int32),
        ("user", ctypes.c_void_p),
        ("all_reduce", ALL_REDUCE_FN),
    ]


_P = ctypes.c_void_p
_I64 = ctypes.c_int64
_I32 = ctypes.c_int32
_FP = ctypes.POINTER(ctypes.c_float)
_U8P = ctypes.POINTER(ctypes.c_uint8)

# name: (restype, argtypes)
_PROTOTYPES = {
    "qrms_version": (ctypes.c_uint32, []),
    "qrms_status_string": (ctypes.c_char_p, [c_status]),
    "qrms_last_error": (ctypes.c_char_p, []),
    "qrms_cuda_device_count": (ctypes.c_int32, []),
    "qrms_set_num_threads": (c_status, [_I32]),
    "qrms_get_num_threads": (ctypes.c_int32, []),
    "qrms_config_init": (None, [ctypes.POINTER(qrms_config)]),
    "qrms_config_init_sized": (c_status, [ctypes.POINTER(qrms_config), ctypes.c_size_t]),
    "qrms_optimizer_create": (
        c_status,
        [ctypes.POINTER(c_optimizer), c_variant, ctypes.POINTER(qrms_config), c_device, _I32],
    ),
    "qrms_optimizer_destroy": (None, [c_optimizer]),
    "qrms_optimizer_add_param": (c_status, [c_optimizer, _P, _P, c_dtype, _I64, ctypes.POINTER(_I64)]),
    "qrms_optimizer_set_grad": (c_status, [c_optimizer, _I64, _P]),
    "qrms_optimizer_set_param_config": (c_status, [c_optimizer, _I64, ctypes.POINTER(qrms_config)]),
    "qrms_optimizer_get_param_config": (c_status, [c_optimizer, _I64, ctypes.POINTER(qrms_config)]),
    "qrms_optimizer_set_lr": (c_status, [c_optimizer, ctypes.c_float]),
    "qrms_optimizer_step": (c_status, [c_optimizer, c_stream]),
    "qrms_optimizer_get_step": (c_status, [c_optimizer, _I64, ctypes.POINTER(_I64)]),
    "qrms_optimizer_read_state": (c_status, [c_optimizer, _I64, _I32, _FP]),
    "qrms_optimizer_state_bytes": (c_status, [c_optimizer, ctypes.POINTER(_I64)]),
    "qrms_optimizer_save": (c_status, [c_optimizer, _P, ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t)]),
    "qrms_optimizer_load": (c_status, [c_optimizer, _P, ctypes.c_size_t]),
    "qrms_optimizer_param_count": (c_status, [c_optimizer, ctypes.POINTER(_I64)]),
    "qrms_optimizer_param_info": (
        c_status,
        [c_optimizer, _I64, ctypes.POINTER(_I64), ctypes.POINTER(c_dtype), ctypes.POINTER(_I32)],
    ),
    "qrms_optimizer_set_grad_unscale": (c_status, [c_optimizer, _P]),
    "qrms_optimizer_found_inf": (c_status, [c_optimizer, ctypes.POINTER(_P)]),
    "qrms_optimizer_read_found_inf": (c_status, [c_optimizer, ctypes.POINTER(_I32)]),
    "qrms_optimizer_add_param_shard": (
        c_status, [c_optimizer, _P, _P, c_dtype, _I64, _I64, _I64, ctypes.POINTER(_I64)],
    ),
    "qrms_optimizer_shard_info": (c_status, [c_optimizer, _I64, ctypes.POINTER(_I64), ctypes.POINTER(_I64)]),
    "qrms_optimizer_set_comm": (c_status, [c_optimizer, ctypes.POINTER(qrms_comm)]),
    "qrms_state_merge": (
        c_status,
        [ctypes.POINTER(_P), ctypes.POINTER(ctypes.c_size_t), _I32, _P, ctypes.c_size_t,
         ctypes.POINTER(ctypes.c_size_t)],
    ),
    "qrms_dynamic_map": (c_status, [_I32, _FP]),
    "qrms_quantize_blockwise": (c_status, [c_device, _FP, _FP, _U8P, _FP, _I64, _I64, c_stream]),
    "qrms_dequantize_blockwise": (c_status, [c_device, _FP, _U8P, _FP, _FP, _I64, _I64, c_stream]),
    "qrms_update_params_init": (None, [ctypes.POINTER(qrms_update_params)]),
    "qrms_update_32bit": (
        c_status,
        [c_device, c_dtype, _P, _P, _FP, _FP, _I64, ctypes.POINTER(qrms_update_params), _FP, _FP, c_stream],
    ),
    "qrms_update_8bit_blockwise": (
        c_status,
        [c_device, c_dtype, _P, _P, _U8P, _FP, _U8P, _FP, _FP, _I64,
         ctypes.POINTER(qrms_update_params), _FP, _FP, c_stream],
    ),
    "qrms_update_8bit_tensor": (
        c_status,
        [c_device, c_dtype, _P, _P, _U8P, _FP, _U8P, _FP, _FP, _I64,
         ctypes.POINTER(qrms_update_params), _FP, _FP, c_stream],
    ),
    "qrms_update_4bit_blockwise": (
        c_status,
        [c_device, c_dtype, _P, _P, _U8P, _FP, _U8P, _FP, _I64,
         ctypes.POINTER(qrms_update_params), _FP, _FP, c_stream],
    ),
    "qrms_percentile_clipping": (
        c_status,
        [c_device, c_dtype, _P, _I64, _FP, ctypes.POINTER(_I64), _I32, _FP, c_stream],
    ),
}


# Functions added after the first 0.1.0 builds: a library without them still
# loads; the methods that need them say so.
_OPTIONAL = {
    "qrms_optimizer_get_param_config",
    "qrms_config_init_sized",
    "qrms_optimizer_param_info",
    "qrms_optimizer_set_grad_unscale",
    "qrms_optimizer_found_inf",
    "qrms_optimizer_read_found_inf",
    "qrms_optimizer_add_param_shard",
    "qrms_optimizer_shard_info",
    "qrms_optimizer_set_comm",
    "qrms_state_merge",
    "qrms_update_4bit_blockwise",
}


class LibraryNotFoundError(OSError):
    """libqrmsprop.so could not be found or loaded."""


# Where a wheel puts the library: this package's directory, under its soname.
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
BUNDLED_NAME = "libqrmsprop.so.%d" % ABI_MAJOR

_lock = threading.Lock()
_lib = None
_lib_path = None


def _candidates():
    """(path or soname, where it came from) in search order, after QRMS_LIBRARY."""
    names = ["libqrmsprop.so", "libqrmsprop.so.0"]
    out = []
    prefix = os.environ.get("QRMS_PREFIX")
    if prefix:
        multiarch = getattr(sys.implementation, "_multiarch", None)
        dirs = ["lib", "lib64"] + (["lib/" + multiarch] if multiarch else [])
        for d in dirs:
            for n in names:
                out.append((os.path.join(prefix, d, n), "QRMS_PREFIX"))
    out.append((os.path.join(PACKAGE_DIR, BUNDLED_NAME), "bundled with the package"))
    found = ctypes.util.find_library("qrmsprop")
    if found:
        out.append((found, "ctypes.util.find_library"))
    for n in names:
        out.append((n, "dynamic loader search"))
    std = ["/usr/local/lib", "/usr/local/lib64", "/usr/lib", "/usr/lib64", os.path.join(sys.prefix, "lib")]
    multiarch = getattr(sys.implementation, "_multiarch", None)
    if multiarch:
        std[3:3] = ["/usr/lib/" + multiarch, "/usr/local/lib/" + multiarch]
    for d in std:
        for n in names:
            out.append((os.path.join(d, n), "standard location"))
    return out


def _declare(lib):
    for name, (restype, argtypes) in _PROTOTYPES.items():
        if name in _OPTIONAL and not hasattr(lib, name):
            continue
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes


def version_of(lib):
    """(major, minor, patch) of a loaded library, from qrms_version()."""
    v = lib.qrms_version()
    return (v // 10000, (v // 100) % 100, v % 100)


def _check_version(lib, path):
    major, minor, patch = version_of(lib)
    if major != ABI_MAJOR or minor < ABI_MIN_MINOR:
        raise LibraryNotFoundError(
            "%s is qrmsprop %d.%d.%d; these bindings need %d.x with x >= %d"
            % (path, major, minor, patch, ABI_MAJOR, ABI_MIN_MINOR)
        )


def load_library():
    """Returns the loaded ctypes.CDLL, loading it on the first call."""
    global _lib, _lib_path
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is not None:
            return _lib
        explicit = os.environ.get("QRMS_LIBRARY")
        tried = []
        lib = None
        path = None
        if explicit:
            try:
                lib = ctypes.CDLL(explicit)
                path = explicit
            except OSError as e:
                raise LibraryNotFoundError(
                    "QRMS_LIBRARY=%r could not be loaded: %s" % (explicit, e)
                ) from None
        else:
            for cand, origin in _candidates():
                if os.path.isabs(cand) and not os.path.exists(cand):
                    tried.append("%s (%s: no such file)" % (cand, origin))
                    continue
                try:
                    lib = ctypes.CDLL(cand)
                    path = cand
                    break
                except OSError as e:
                    tried.append("%s (%s: %s)" % (cand, origin, e))
        if lib is None:
            raise LibraryNotFoundError(
                "libqrmsprop.so not found. Set QRMS_LIBRARY to its full path or QRMS_PREFIX to the "
                "prefix it was installed to (cmake --install <build> --prefix <prefix>). Tried:\n  "
                + "\n  ".join(tried)
            )
        try:
            _declare(lib)
        except AttributeError as e:
            raise LibraryNotFoundError("%s is not a usable qrmsprop library: %s" % (path, e)) from None
        _check_version(lib, path)
        _lib_path = path
        _lib = lib
        return _lib


# qrms_config goes through qrms_config_init_sized with this binding's size:
# the library writes at most that and sets struct_size to what it wrote (its
# own, smaller size when it is older). Only the first 0.1.0 builds lack it;
# their qrms_config_init wrote their whole sizeof(qrms_config), so that
# fallback lets it write into scratch memory this large and copies what this
# binding knows. qrms_update_params_init writes the first published struct
# (its size is pinned in capi.cpp).
_INIT_SCRATCH_BYTES = 4096


def init_struct(struct_cls):
    """A struct_cls filled by the library with its defaults, struct_size set."""
    lib = load_library()
    out = struct_cls()
    if struct_cls is qrms_config and hasattr(lib, "qrms_config_init_sized"):
        status = lib.qrms_config_init_sized(ctypes.byref(out), ctypes.sizeof(out))
        if status != SUCCESS:
            raise RuntimeError("qrms_config_init_sized failed: %s" % lib.qrms_last_error().decode())
        return out
    if struct_cls is qrms_update_params:
        lib.qrms_update_params_init(ctypes.byref(out))
        return out
    scratch = (ctypes.c_uint64 * (_INIT_SCRATCH_BYTES // 8))()
    lib.qrms_config_init(ctypes.cast(scratch, ctypes.POINTER(qrms_config)))
    library_size = int(scratch[0])
    ctypes.memmove(ctypes.byref(out), scratch, ctypes.sizeof(out))
    out.struct_size = min(ctypes.sizeof(out), max(library_size, CONFIG_FIRST_SIZE))
    return out


def library_path():
    """The path (or soname) the library was loaded from."""
    load_library()
    return _lib_path


def build_info():
    """What the library in use is, as a dict:
      version   the loaded library's version, 'MAJOR.MINOR.PATCH';
      library   the path (or soname) it was loaded from;
      bundled   True when it is the copy inside this package;
      backends  ['cpu'] or ['cpu', 'cuda'] for the bundled copy, None (not
                known) for one brought with QRMS_LIBRARY, QRMS_PREFIX or the
                system;
      cuda_architectures, cuda_version, compiler: how the bundled copy was
                built ('' for no CUDA; None when not bundled).
    Read from _build_info.py, which the wheel's build writes; a package
    installed without the library (QRMS_PYTHON_BUNDLE=OFF) has none."""
    info = {"version": "%d.%d.%d" % version_of(load_library()), "library": _lib_path,
            "bundled": False, "backends": None, "cuda_architectures": None, "cuda_version": None,
            "compiler": None}
    try:
        from . import _build_info as built
    except ImportError:
        return info
    bundled = os.path.join(PACKAGE_DIR, built.LIBRARY_FILE)
    if os.path.exists(_lib_path) and os.path.realpath(_lib_path) == os.path.realpath(bundled):
        info.update(bundled=True, backends=list(built.BACKENDS), cuda_architectures=built.CUDA_ARCHITECTURES,
                    cuda_version=built.CUDA_VERSION, compiler=built.COMPILER)
    return info
