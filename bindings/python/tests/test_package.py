"""The package's own copy of the library (a wheel carries one) and
build_info(): where the library is looked for, and what build_info says."""
import os
import shutil

import pytest

import qrmsprop
from qrmsprop import _lib
from conftest import run_python

BUNDLED = os.path.join(_lib.PACKAGE_DIR, _lib.BUNDLED_NAME)
NO_ENV = "import os\nfor k in ('QRMS_LIBRARY', 'QRMS_PREFIX'): os.environ.pop(k, None)\n"


def has_bundled_library():
    return os.path.exists(BUNDLED)


def test_search_order_prefix_then_package_then_system(monkeypatch):
    monkeypatch.setenv("QRMS_PREFIX", "/some/prefix")
    where = [origin for _, origin in _lib._candidates()]
    paths = [p for p, _ in _lib._candidates()]
    first_other = next(i for i, o in enumerate(where) if o != "QRMS_PREFIX")
    assert all(o == "QRMS_PREFIX" for o in where[:first_other]) and first_other > 0
    assert paths[first_other] == BUNDLED and where[first_other] == "bundled with the package"
    assert "QRMS_PREFIX" not in where[first_other + 1:]
    assert where.count("bundled with the package") == 1


def test_bundled_library_loads_without_any_variable():
    if not has_bundled_library():
        pytest.skip("this package was installed without its library (QRMS_PYTHON_BUNDLE=OFF)")
    r = run_python(NO_ENV + "import qrmsprop; print(qrmsprop.library_path()); print(qrmsprop.version())")
    assert r.returncode == 0, r.stderr
    path, version = r.stdout.split()
    assert path == BUNDLED
    assert version == qrmsprop.version()


def test_build_info_describes_the_library_in_use():
    info = qrmsprop.build_info()
    assert set(info) == {"version", "library", "bundled", "backends", "cuda_architectures", "cuda_version",
                         "compiler"}
    assert info["version"] == qrmsprop.version()
    assert info["library"] == qrmsprop.library_path()
    in_use = os.path.realpath(qrmsprop.library_path())
    assert info["bundled"] == (has_bundled_library() and in_use == os.path.realpath(BUNDLED))
    if info["bundled"]:
        assert info["backends"] in (["cpu"], ["cpu", "cuda"])
        assert ("cuda" in info["backends"]) == (info["cuda_version"] != "")
        if qrmsprop.cuda_device_count() > 0:
            assert "cuda" in info["backends"]
    else:
        assert info["backends"] is None and info["compiler"] is None


def test_build_info_of_another_library_says_not_bundled(tmp_path):
    # A copy of the library in use brought in through QRMS_LIBRARY: another
    # file, so build_info must not claim the bundled build's backends for it.
    other = tmp_path / "libqrmsprop.so"
    shutil.copyfile(os.path.realpath(qrmsprop.library_path()), str(other))
    r = run_python("import qrmsprop; i = qrmsprop.build_info(); print(i['library'], i['bundled'], i['backends'])",
                   {"QRMS_LIBRARY": str(other)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(other), "False", "None"]


def test_versions_agree_with_the_bundled_library():
    # pyproject takes the version from __version__; the library has its own
    # (qrmsprop.h): a wheel must not carry a library of another version.
    from importlib.metadata import version as dist_version

    if not has_bundled_library():
        pytest.skip("this package was installed without its library (QRMS_PYTHON_BUNDLE=OFF)")
    from qrmsprop import _build_info

    assert dist_version("qrmsprop") == qrmsprop.__version__
    assert _build_info.VERSION == qrmsprop.__version__
    r = run_python(NO_ENV + "import qrmsprop; print(qrmsprop.version())")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == qrmsprop.__version__
