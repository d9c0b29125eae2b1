"""docs/ffi.md shows the example files unchanged, and the Python one runs."""
import os
import re
import subprocess
import sys

import pytest

from conftest import PACKAGE_ROOT, REPO_ROOT

DOC = os.path.join(REPO_ROOT, "docs", "ffi.md")


def doc_examples():
    if not os.path.exists(DOC):
        pytest.skip("docs/ffi.md is not next to these tests")
    with open(DOC) as f:
        text = f.read()
    return dict(re.findall(r"<!-- example: (\S+) -->\n```\w+\n(.*?)```\n", text, re.S))


def test_doc_examples_are_the_files():
    examples = doc_examples()
    assert set(examples) == {"bindings/python/examples/quickstart.py", "bindings/rust/examples/quickstart.rs"}
    for path, shown in examples.items():
        with open(os.path.join(REPO_ROOT, path)) as f:
            assert shown == f.read(), "docs/ffi.md shows an outdated %s" % path


def test_python_example_runs_and_prints_what_the_doc_says():
    script = os.path.join(PACKAGE_ROOT, "examples", "quickstart.py")
    r = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("steps 300, loss 4102.4 -> ") and lines[0].endswith(", state 16648 bytes")
    assert float(lines[0].split("-> ")[1].split(",")[0]) < 1e-6
    assert lines[1] == "error: qrms_optimizer_create: RMSprop with alpha==0.0 is not supported!"
    if os.path.exists(DOC):
        with open(DOC) as f:
            assert "\n".join(lines) in f.read()


def test_switch_demo_compiles():
    # It needs torch (and bitsandbytes for its other backend): only compiled here.
    path = os.path.join(PACKAGE_ROOT, "examples", "switch_demo.py")
    with open(path) as f:
        compile(f.read(), path, "exec")


def test_readme_python_lines_run():
    # The top-level README's Python block: the install line's package, in use.
    readme = os.path.join(REPO_ROOT, "README.md")
    if not os.path.exists(readme):
        pytest.skip("README.md is not next to these tests")
    with open(readme) as f:
        text = f.read()
    section = text.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    assert "pip install ./bindings/python" in section
    code = re.findall(r"```python\n(.*?)```\n", section, re.S)
    assert len(code) == 1
    r = subprocess.run([sys.executable, "-c", code[0] + "assert w[0] < 0 and abs(w).max() == abs(w).min(), w\n"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
