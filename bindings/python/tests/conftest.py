import os
import subprocess
import sys

import numpy as np
import pytest

import qrmsprop

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE_ROOT = os.path.dirname(HERE)
REPO_ROOT = os.path.dirname(os.path.dirname(PACKAGE_ROOT))


def pytest_report_header(config):
    # Fails loudly (no skipping) when the library cannot be found.
    return "qrmsprop library %s from %s, CUDA devices: %d" % (
        qrmsprop.version(), qrmsprop.library_path(), qrmsprop.cuda_device_count())


def reference_rmsprop(param, grads, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                      dtype=np.float32):
    """torch.optim.RMSprop(centered=False) in float32 numpy (SPEC section 3):
    returns (param after every grad, square_avg, momentum buffer). For 16-bit
    dtypes the param is rounded to `dtype` after every step."""
    f = np.float32
    p = np.asarray(param).astype(f)
    s = np.zeros_like(p)
    b = np.zeros_like(p)
    one_minus_alpha = f(1) - f(alpha)
    for g in grads:
        g = np.asarray(g).astype(f)
        if weight_decay > 0:
            g = g + f(weight_decay) * p
        s = f(alpha) * s + one_minus_alpha * g * g
        u = g / (np.sqrt(s) + f(eps))
        if momentum > 0:
            b = f(momentum) * b + u
            u = b
        p = p - f(lr) * u
        if dtype != np.float32:
            p = p.astype(dtype).astype(f)
    return p, s, b


def run_python(code, env_update=None):
    env = dict(os.environ)
    env.update(env_update or {})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
