"""The ctypes declarations against the installed header and library."""
import ctypes
import os
import re
import shutil
import subprocess

import pytest

import qrmsprop
from qrmsprop import _lib
from conftest import REPO_ROOT, run_python


def header_path():
    candidates = []
    if os.environ.get("QRMS_INCLUDE_DIR"):
        candidates.append(os.environ["QRMS_INCLUDE_DIR"])
    if os.environ.get("QRMS_PREFIX"):
        candidates.append(os.path.join(os.environ["QRMS_PREFIX"], "include"))
    lib_dir = os.path.dirname(os.path.realpath(qrmsprop.library_path()))
    candidates.append(os.path.join(os.path.dirname(lib_dir), "include"))
    candidates.append(os.path.join(REPO_ROOT, "include"))
    for c in candidates:
        h = os.path.join(c, "qrmsprop", "qrmsprop.h")
        if os.path.exists(h):
            return h
    pytest.skip("qrmsprop.h not found (set QRMS_INCLUDE_DIR)")


def test_constants_match_header():
    with open(header_path()) as f:
        text = f.read()
    defines = dict(re.findall(r"#define (QRMS_[A-Z0-9_]+) (-?\d+)\b", text))
    names = {
        "QRMS_SUCCESS": _lib.SUCCESS, "QRMS_ERROR_INVALID_ARGUMENT": _lib.ERROR_INVALID_ARGUMENT,
        "QRMS_ERROR_NOT_IMPLEMENTED": _lib.ERROR_NOT_IMPLEMENTED, "QRMS_ERROR_DEVICE": _lib.ERROR_DEVICE,
        "QRMS_ERROR_OUT_OF_MEMORY": _lib.ERROR_OUT_OF_MEMORY, "QRMS_ERROR_BAD_STATE": _lib.ERROR_BAD_STATE,
        "QRMS_ERROR_INTERNAL": _lib.ERROR_INTERNAL, "QRMS_FLOAT32": _lib.FLOAT32, "QRMS_FLOAT16": _lib.FLOAT16,
        "QRMS_BFLOAT16": _lib.BFLOAT16, "QRMS_DEVICE_CPU": _lib.DEVICE_CPU, "QRMS_DEVICE_CUDA": _lib.DEVICE_CUDA,
        "QRMS_RMSPROP": _lib.RMSPROP, "QRMS_RMSPROP_8BIT": _lib.RMSPROP_8BIT,
        "QRMS_RMSPROP_32BIT": _lib.RMSPROP_32BIT, "QRMS_STATE_SQUARE_AVG": _lib.STATE_SQUARE_AVG,
        "QRMS_STATE_MOMENTUM": _lib.STATE_MOMENTUM,
    }
    for name, value in names.items():
        assert int(defines[name]) == value, name
    exported = set(re.findall(r"QRMS_API [^;]*?\b(qrms_\w+)\s*\(", text))
    assert exported == set(_lib._PROTOTYPES), exported ^ set(_lib._PROTOTYPES)


def test_struct_layout_matches_the_c_compiler(tmp_path):
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler to check the struct layout with")
    include = os.path.dirname(os.path.dirname(header_path()))
    lines = []
    for struct in (_lib.qrms_config, _lib.qrms_update_params, _lib.qrms_comm):
        name = struct.__name__
        lines.append('printf("%s sizeof %%zu\\n", sizeof(%s));' % (name, name))
        for field, _ in struct._fields_:
            lines.append('printf("%s %s %%zu\\n", offsetof(%s, %s));' % (name, field, name, field))
    src = tmp_path / "layout.c"
    src.write_text("#include <stddef.h>\n#include <stdio.h>\n#include <qrmsprop/qrmsprop.h>\n"
                   "int main(void) {\n" + "\n".join(lines) + "\nreturn 0;\n}\n")
    exe = tmp_path / "layout"
    subprocess.run([cc, "-std=c99", "-I", include, str(src), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    got = {}
    for line in out.splitlines():
        struct, field, value = line.split()
        got[(struct, field)] = int(value)
    for struct in (_lib.qrms_config, _lib.qrms_update_params, _lib.qrms_comm):
        name = struct.__name__
        assert got[(name, "sizeof")] == ctypes.sizeof(struct)
        for field, _ in struct._fields_:
            assert got[(name, field)] == getattr(struct, field).offset, (name, field)


def test_config_init_fills_spec_defaults():
    c = _lib.init_struct(_lib.qrms_config)
    assert c.struct_size == ctypes.sizeof(_lib.qrms_config)
    # The exported qrms_config_init (what a caller of the first header, or
    # FFI, reaches) writes exactly the first published struct, 64 bytes.
    raw = (ctypes.c_uint8 * 512)(*([0xAB] * 512))
    _lib.load_library().qrms_config_init(ctypes.cast(raw, ctypes.POINTER(_lib.qrms_config)))
    assert ctypes.cast(raw, ctypes.POINTER(_lib.qrms_config)).contents.struct_size == _lib.CONFIG_FIRST_SIZE == 64
    assert list(raw[_lib.CONFIG_FIRST_SIZE:]) == [0xAB] * (512 - _lib.CONFIG_FIRST_SIZE)
    d = qrmsprop.default_config()
    expected = dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False, optim_bits=32,
                    min_8bit_size=4096, percentile_clipping=100, block_wise=True, max_unorm=0.0, skip_zeros=False,
                    skip_nonfinite=False)
    for k, v in expected.items():
        assert d[k] == pytest.approx(v, rel=1e-6), k
    hp = _lib.init_struct(_lib.qrms_update_params)
    assert hp.struct_size == ctypes.sizeof(hp)
    assert hp.lr == pytest.approx(1e-2) and hp.alpha == pytest.approx(0.99)


def test_old_struct_size_still_works_and_too_small_is_rejected():
    lib = _lib.load_library()
    c = _lib.init_struct(_lib.qrms_config)
    handle = _lib.c_optimizer()
    c.struct_size = 4
    assert lib.qrms_optimizer_create(ctypes.byref(handle), _lib.RMSPROP, ctypes.byref(c), 0, 0) == 1
    assert "struct_size 4 is smaller than the first published" in lib.qrms_last_error().decode()
    c.struct_size = ctypes.sizeof(c)
    assert lib.qrms_optimizer_create(ctypes.byref(handle), _lib.RMSPROP, ctypes.byref(c), 0, 0) == 0
    lib.qrms_optimizer_destroy(handle)
    # The first published struct (ending with skip_zeros) keeps working.
    c.struct_size = _lib.CONFIG_FIRST_SIZE
    assert lib.qrms_optimizer_create(ctypes.byref(handle), _lib.RMSPROP, ctypes.byref(c), 0, 0) == 0
    lib.qrms_optimizer_destroy(handle)
    # A larger struct (a newer caller): its unknown bytes must be zero.
    big = (ctypes.c_uint8 * (ctypes.sizeof(c) + 8))()
    ctypes.memmove(big, ctypes.byref(c), ctypes.sizeof(c))
    bigc = ctypes.cast(big, ctypes.POINTER(_lib.qrms_config))
    bigc.contents.struct_size = len(big)
    assert lib.qrms_optimizer_create(ctypes.byref(handle), _lib.RMSPROP, bigc, 0, 0) == 0
    lib.qrms_optimizer_destroy(handle)
    big[-1] = 1
    assert lib.qrms_optimizer_create(ctypes.byref(handle), _lib.RMSPROP, bigc, 0, 0) == 1
    assert not handle


def test_config_init_sized_writes_at_most_the_given_size():
    lib = _lib.load_library()
    raw = (ctypes.c_uint8 * 128)(*([0xAB] * 128))
    cfg = ctypes.cast(raw, ctypes.POINTER(_lib.qrms_config))
    assert lib.qrms_config_init_sized(cfg, _lib.CONFIG_FIRST_SIZE) == 0
    assert cfg.contents.struct_size == _lib.CONFIG_FIRST_SIZE
    assert cfg.contents.optim_bits == 32 and cfg.contents.skip_zeros == 0
    assert list(raw[_lib.CONFIG_FIRST_SIZE:]) == [0xAB] * (128 - _lib.CONFIG_FIRST_SIZE)
    assert lib.qrms_config_init_sized(cfg, ctypes.sizeof(_lib.qrms_config)) == 0
    assert cfg.contents.struct_size == ctypes.sizeof(_lib.qrms_config) and cfg.contents.skip_nonfinite == 0
    assert lib.qrms_config_init_sized(cfg, _lib.CONFIG_FIRST_SIZE - 8) == 1
    assert lib.qrms_config_init_sized(None, ctypes.sizeof(_lib.qrms_config)) == 1
    lib.qrms_optimizer_destroy(None)  # NULL is fine


def test_version():
    major, minor, patch = qrmsprop.library_version()
    assert (major, minor) >= (_lib.ABI_MAJOR, _lib.ABI_MIN_MINOR)
    assert qrmsprop.version() == "%d.%d.%d" % (major, minor, patch)


def test_qrms_library_overrides_everything():
    path = os.path.realpath(qrmsprop.library_path())
    r = run_python("import qrmsprop; print(qrmsprop.library_path())",
                   {"QRMS_LIBRARY": path, "QRMS_PREFIX": "/nonexistent"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == path



def test_qrms_prefix_comes_before_the_bundled_copy(tmp_path):
    # A prefix of its own (the library in use, linked), so that this holds
    # whether the package carries a library or was installed without one.
    (tmp_path / "lib").mkdir()
    os.symlink(os.path.realpath(qrmsprop.library_path()), str(tmp_path / "lib" / "libqrmsprop.so"))
    r = run_python("import os; os.environ.pop('QRMS_LIBRARY', None); import qrmsprop; "
                   "print(qrmsprop.library_path())", {"QRMS_PREFIX": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(tmp_path / "lib" / "libqrmsprop.so")


def test_missing_library_is_a_clear_error():
    r = run_python("import qrmsprop\n"  # importing works without the library
                   "try:\n qrmsprop.version()\n"
                   "except qrmsprop.LibraryNotFoundError as e:\n print('ERR', e)\n",
                   {"QRMS_LIBRARY": "/nonexistent/libqrmsprop.so"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ERR QRMS_LIBRARY='/nonexistent/libqrmsprop.so' could not be loaded")
