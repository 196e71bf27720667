"""Threads: bit-identical results for any thread count, threadpoolctl, fork safety, GIL release."""
import hashlib
import multiprocessing
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import fastxent
from fastxent import reference as ref
from tests.conftest import assert_close, assert_with_grad_close, f64

# Shapes that take the parallel paths: many rows x medium C, few rows x long C, many short rows.
SHAPES = [(4096, 1000), (64, 65536), (100000, 10)]


def _same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _all_results(x, t, w, num_threads):
    """Every function's output on one input, as a dict of arrays/scalars."""
    out = {}
    for reduction in ("mean", "sum", "none"):
        kw = dict(weight=w, reduction=reduction, label_smoothing=0.1, num_threads=num_threads)
        out[f"ce-{reduction}"] = fastxent.cross_entropy(x, t, **kw)
        out[f"loss-{reduction}"], out[f"grad-{reduction}"] = fastxent.cross_entropy_with_grad(x, t, **kw)
    out["lse"] = fastxent.logsumexp(x, num_threads=num_threads)
    out["log_softmax"] = fastxent.log_softmax(x, num_threads=num_threads)
    out["softmax"] = fastxent.softmax(x, num_threads=num_threads)
    return out


def _inputs(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    n, c = shape
    x = (rng.standard_normal((n, c), dtype=np.float32) * 3).astype(dtype)
    t = rng.integers(0, c, n)
    t[::5] = -100
    w = rng.uniform(0.5, 1.5, c)
    return x, t, w


@pytest.fixture(scope="module", params=[pytest.param((s, d), id=f"{s[0]}x{s[1]}-{np.dtype(d).name}")
                                        for s in SHAPES for d in (np.float32, np.float64)])
def case(request):
    (shape, dtype) = request.param
    x, t, w = _inputs(shape, dtype)
    return x, t, w, _all_results(x, t, w, 1)


def test_single_thread_results_are_correct(case):
    x, t, w, res1 = case
    dtype = x.dtype
    kw = dict(weight=w, label_smoothing=0.1)
    rows = slice(0, 64)          # the reference on a slice of rows keeps this fast; the sums in full
    exp_none = ref.cross_entropy(f64(x), t, reduction="none", **kw)
    assert_close(res1["ce-none"], exp_none, dtype)
    assert_close(res1["ce-sum"], exp_none.sum(), dtype)
    assert_close(res1["ce-mean"], exp_none.sum() / w[t[t != -100]].sum(), dtype)
    assert_with_grad_close(res1["loss-none"][rows], res1["grad-none"][rows], x[rows], t[rows], dtype,
                           reduction="none", **kw)
    assert_close(res1["lse"][rows], ref.logsumexp(f64(x[rows])), dtype)
    assert_close(res1["softmax"][rows], ref.softmax(f64(x[rows])), dtype)


@pytest.mark.parametrize("num_threads", [2, 4])
def test_bit_identical_for_any_thread_count(case, num_threads):
    x, t, w, res1 = case
    res = _all_results(x, t, w, num_threads)
    for key in res1:
        assert _same_bits(res[key], res1[key]), key


def test_default_threads_and_threadpool_limits(case):
    """num_threads=None follows the OpenMP default, which threadpoolctl can limit: same bits."""
    x, t, w, res1 = case
    res_default = _all_results(x, t, w, None)
    with threadpool_limits(limits=1):
        assert fastxent.config()["default_threads"] == 1
        res_limited = _all_results(x, t, w, None)
    with threadpool_limits(limits=2, user_api="openmp"):
        assert fastxent.config()["default_threads"] == 2
        res_two = _all_results(x, t, w, None)
    for key in res1:
        assert _same_bits(res_default[key], res1[key]), key
        assert _same_bits(res_limited[key], res1[key]), key
        assert _same_bits(res_two[key], res1[key]), key


@pytest.mark.parametrize("omp_num_threads", ["1", "3"])
def test_omp_num_threads_environment(omp_num_threads, tmp_path):
    """OMP_NUM_THREADS sets the default thread count; the results are the same bits."""
    code = (
        "import hashlib, numpy as np, fastxent\n"
        "rng = np.random.default_rng(0)\n"
        "x = rng.standard_normal((4096, 300), dtype=np.float32); t = rng.integers(0, 300, 4096)\n"
        "loss, grad = fastxent.cross_entropy_with_grad(x, t, reduction='sum')\n"
        "print(fastxent.config()['default_threads'],"
        " hashlib.sha256(np.asarray(loss).tobytes() + grad.tobytes()).hexdigest())\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS=omp_num_threads)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)     # not the repo: import the installed package
    assert proc.returncode == 0, proc.stderr
    threads, digest = proc.stdout.split()
    assert threads == omp_num_threads
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4096, 300), dtype=np.float32)
    t = rng.integers(0, 300, 4096)
    loss, grad = fastxent.cross_entropy_with_grad(x, t, reduction="sum", num_threads=1)
    assert digest == hashlib.sha256(np.asarray(loss).tobytes() + grad.tobytes()).hexdigest()


def _child(x, t, w, queue):
    try:
        loss, grad = fastxent.cross_entropy_with_grad(x, t, weight=w, reduction="sum", num_threads=2)
        queue.put((float(loss), grad.sum(dtype=np.float64), fastxent.logsumexp(x, num_threads=2)[:8]))
    except BaseException as e:          # pragma: no cover - reported to the parent
        queue.put(repr(e))


def test_fork_after_threaded_use():
    """GNU OpenMP's pool does not survive fork(): a forked child must still compute correctly."""
    x, t, w = _inputs((4096, 1000), np.float32)
    loss, grad = fastxent.cross_entropy_with_grad(x, t, weight=w, reduction="sum", num_threads=2)
    lse = fastxent.logsumexp(x, num_threads=2)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(x, t, w, queue))
    proc.start()
    try:
        got = queue.get(timeout=30)    # a few ms of work; a hang is the failure
    finally:
        proc.join(timeout=5)
        if proc.is_alive():             # pragma: no cover - a hang is the failure being tested
            proc.kill()
            proc.join()
    assert proc.exitcode == 0
    assert not isinstance(got, str), got
    child_loss, child_gsum, child_lse = got
    assert child_loss == float(loss)
    assert child_gsum == grad.sum(dtype=np.float64)
    assert _same_bits(child_lse, lse[:8])


def test_concurrent_python_threads():
    """Two Python threads calling fastxent at the same time get the results of serial calls."""
    inputs = [_inputs((2048, 1000), np.float32, seed=s) for s in (1, 2)]
    expected = [fastxent.cross_entropy_with_grad(x, t, weight=w, reduction="mean", num_threads=2)
                for x, t, w in inputs]
    results = [[], []]
    errors = []
    barrier = threading.Barrier(2)

    def work(k):
        try:
            x, t, w = inputs[k]
            barrier.wait()
            for _ in range(5):
                results[k].append(fastxent.cross_entropy_with_grad(x, t, weight=w, reduction="mean",
                                                                   num_threads=2))
        except BaseException as e:      # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not errors, errors
    for k in range(2):
        assert len(results[k]) == 5
        for loss, grad in results[k]:
            assert _same_bits(loss, expected[k][0])
            assert _same_bits(grad, expected[k][1])
