"""Sharded optimizers from Python: two ranks as threads with a Python
all-reduce, against one optimizer holding the whole tensor; merge_states."""
import threading

import numpy as np
import pytest

import qrmsprop


class ThreadComm:
    """all_reduce for `world` threads: sums (or maxima) in rank order."""

    def __init__(self, world):
        self.world = world
        self.barrier = threading.Barrier(world, timeout=20)
        self.slots = [None] * world
        self.result = None

    def for_rank(self, rank):
        def all_reduce(values, op):
            self.slots[rank] = np.frombuffer(values, dtype=np.float32)
            if self.barrier.wait() == 0:
                stack = np.stack(self.slots)
                self.result = stack.sum(axis=0, dtype=np.float32) if op == "sum" else stack.max(axis=0)
            self.barrier.wait()
            self.slots[rank][...] = self.result
            self.barrier.wait()
        return all_reduce


def train(n, steps, cfg, world=None, rank=None, comm=None, offset=0, numel=None):
    rng = np.random.default_rng(5)
    p0 = rng.standard_normal(n).astype(np.float32)
    grads = [(rng.standard_normal(n) * (1 + 7 * (t % 3 == 2))).astype(np.float32) for t in range(steps)]
    numel = n if numel is None else numel
    p = p0[offset:offset + numel].copy()
    g = np.empty_like(p)
    opt = qrmsprop.Optimizer("rmsprop8bit", **cfg)
    if comm is not None:
        opt.set_comm(rank, world, comm.for_rank(rank))
        opt.add_param_shard(p, g, n, offset)
    else:
        opt.add_param(p, g)
    for gi in grads:
        g[...] = gi[offset:offset + numel]
        opt.step()
    return p, opt


@pytest.mark.parametrize("cfg,exact", [
    (dict(lr=1e-3, momentum=0.9), True),
    (dict(lr=1e-3, percentile_clipping=50, max_unorm=0.5, block_wise=False), False),
])
def test_two_thread_ranks_match_one_process(cfg, exact):
    n, steps, cut = 10000, 5, 4096
    whole, whole_opt = train(n, steps, cfg)
    comm = ThreadComm(2)
    parts = [None, None]

    def rank(r):
        off, num = (0, cut) if r == 0 else (cut, n - cut)
        parts[r] = train(n, steps, cfg, world=2, rank=r, comm=comm, offset=off, numel=num)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = np.concatenate([parts[0][0], parts[1][0]])
    if exact:
        assert np.array_equal(got.view(np.uint32), whole.view(np.uint32))
    else:
        np.testing.assert_allclose(got, whole, rtol=1e-3, atol=1e-5)
    assert parts[1][1].shard_info(0) == (n, cut)
    merged = qrmsprop.merge_states([parts[1][1].save(), parts[0][1].save()])
    if exact:
        assert merged == whole_opt.save()
    fresh = qrmsprop.Optimizer("rmsprop8bit", **cfg)
    fresh.add_param(np.zeros(n, np.float32), np.zeros(n, np.float32))
    fresh.load(merged)
    assert fresh.get_step(0) == steps


def test_merge_refuses_a_missing_rank():
    comm = ThreadComm(1)
    _, opt = train(10000, 1, dict(lr=1e-3), world=1, rank=0, comm=comm)
    with pytest.raises(qrmsprop.InvalidArgumentError):
        qrmsprop.merge_states([])
    blob = opt.save()
    assert qrmsprop.merge_states([blob]) == blob
    with pytest.raises(qrmsprop.BadStateError, match="twice"):
        qrmsprop.merge_states([blob, blob])


def test_a_failing_all_reduce_fails_the_step():
    p = np.ones(5000, np.float32)
    g = np.full(5000, 0.5, np.float32)
    opt = qrmsprop.Optimizer("rmsprop", max_unorm=0.5)

    def broken(values, op):
        raise RuntimeError("network down")

    opt.set_comm(0, 2, broken)
    opt.add_param_shard(p, g, 10000, 0)
    with pytest.raises(qrmsprop.DeviceError, match="all_reduce"):
        opt.step()
    assert np.all(p == 1.0)
