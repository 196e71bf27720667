"""Every public function against fastxent.reference (float64 ground truth).

Shapes: every (N, C) with C in (1, 2, 3, 17, 1000, 32768) and N in (0, 1, 7, 4096).  Small shapes run
in every dtype x memory layout; the two big ones (N*C > 1e6) run fewer layouts, and the largest
(4096 x 32768) only in float32 C-order, checking every loss / logsumexp and the (N, C) outputs of a
sample of rows (rows are independent), to keep the suite fast.
Options (weight, ignore_index hits, label_smoothing, reductions, grad_output) run in their full
product on a set of small shapes; out= and inplace= in their own product with every option on.
"""
import itertools

import numpy as np
import pytest

import fastxent
from fastxent import reference as ref
from tests.conftest import (FLOAT_DTYPES, LAYOUTS_1D, LAYOUTS_2D, assert_close, assert_result_type,
                            assert_with_grad_close, f64, in_layout, in_layout_1d, make_logits,
                            make_target, make_weight, ref_chunked)

NS = (0, 1, 7, 4096)
CS = (1, 2, 3, 17, 1000, 32768)
SHAPES = [(n, c) for n in NS for c in CS]
HUGE = (4096, 32768)


def _shape_cases():
    """(N, C, dtype, layout) for every shape; fewer dtype/layout combos where N*C > 1e6."""
    cases = []
    for n, c in SHAPES:
        if (n, c) == HUGE:
            combos = [(np.float32, "C")]
        elif n * c > 1e6:
            combos = [(np.float32, "C"), (np.float64, "C"), (np.float32, "cols_sliced"),
                      (np.float64, "rows_reversed")]
        else:
            combos = list(itertools.product(FLOAT_DTYPES, LAYOUTS_2D))
        for dtype, layout in combos:
            cases.append(pytest.param(n, c, dtype, layout,
                                      id=f"{n}x{c}-{np.dtype(dtype).name}-{layout}"))
    return cases


SHAPE_CASES = _shape_cases()


@pytest.fixture(scope="module")
def huge_logits():
    rng = np.random.default_rng(1234)
    x = make_logits(rng, *HUGE, dtype=np.float32)
    t = make_target(rng, HUGE[0], HUGE[1])
    return x, t


def _inputs(rng, n, c, dtype, layout, huge_logits):
    if (n, c) == HUGE:
        return huge_logits
    x = in_layout(make_logits(rng, n, c, dtype), layout)
    return x, make_target(rng, n, c)


def _ignore_some(rng, t, ignore_index):
    """Set about a third of the labels to ignore_index (at least one when N > 0)."""
    t = t.copy()
    if t.size:
        hits = rng.random(t.size) < 1 / 3
        hits[0] = True
        t[hits] = ignore_index
    return t


# ------------------------------------------------------------------ log-sum-exp family, all shapes
def _sample_rows(n, k=200):
    """Row indices to check in the huge case: the first, the last and a fixed random sample."""
    pick = np.random.default_rng(7).choice(n, size=k, replace=False)
    return np.unique(np.concatenate([[0, 1, n - 2, n - 1], pick]))


@pytest.mark.parametrize("n, c, dtype, layout", SHAPE_CASES)
@pytest.mark.parametrize("func", ["logsumexp", "log_softmax", "softmax"])
def test_lse_family_shapes(func, n, c, dtype, layout, rng, huge_logits):
    x, _ = _inputs(rng, n, c, dtype, layout, huge_logits)
    got = getattr(fastxent, func)(x)
    want_shape = (n,) if func == "logsumexp" else (n, c)
    assert_result_type(got, dtype, want_shape)
    if (n, c) == HUGE:
        rows = _sample_rows(n) if func != "logsumexp" else slice(None)
        assert_close(got[rows], ref_chunked(getattr(ref, func), x[rows]), dtype)
    else:
        assert_close(got, getattr(ref, func)(f64(x)), dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("func", ["logsumexp", "log_softmax", "softmax"])
@pytest.mark.parametrize("shape, axis", [((5,), 0), ((5,), -1), ((3, 4, 5), 0), ((3, 4, 5), 1),
                                         ((3, 4, 5), 2), ((3, 4, 5), -2), ((2, 3, 4, 6), 1),
                                         ((1, 1), 0), ((6, 1), 1)])
def test_lse_family_axis(func, shape, axis, dtype, rng):
    x = rng.standard_normal(shape).astype(dtype) * 4
    x = x.transpose(*reversed(range(x.ndim)))[..., ::-1]      # a non-trivial layout
    x = x.transpose(*reversed(range(x.ndim)))
    got = getattr(fastxent, func)(x, axis=axis)
    expected = getattr(ref, func)(f64(x), axis=axis)
    if func == "logsumexp":
        want_shape = np.sum(x, axis=axis).shape
    else:
        want_shape = x.shape
    assert_result_type(got, dtype, want_shape)
    assert_close(got, expected, dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_logsumexp_1d_gives_numpy_scalar(dtype):
    x = np.array([0.5, -1.0, 2.0], dtype=dtype)
    got = fastxent.logsumexp(x)
    assert type(got) is np.dtype(dtype).type
    assert_close(got, np.log(np.sum(np.exp(x.astype(np.float64)))), dtype)


# ------------------------------------------------------------------ cross-entropy, all shapes
@pytest.mark.parametrize("n, c, dtype, layout", SHAPE_CASES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_shapes(n, c, dtype, layout, reduction, rng, huge_logits):
    x, t = _inputs(rng, n, c, dtype, layout, huge_logits)
    got = fastxent.cross_entropy(x, t, reduction=reduction)
    assert_result_type(got, dtype, (n,) if reduction == "none" else ())
    if (n, c) == HUGE:
        rows = ref_chunked(ref.cross_entropy, x, t, reduction="none")
        assert_close(got, {"none": rows, "sum": rows.sum(), "mean": rows.mean()}[reduction], dtype)
    else:
        assert_close(got, ref.cross_entropy(f64(x), t, reduction=reduction), dtype)


@pytest.mark.parametrize("n, c, dtype, layout", SHAPE_CASES)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_cross_entropy_with_grad_shapes(n, c, dtype, layout, reduction, rng, huge_logits):
    x, t = _inputs(rng, n, c, dtype, layout, huge_logits)
    loss, grad = fastxent.cross_entropy_with_grad(x, t, reduction=reduction)
    assert_result_type(loss, dtype, (n,) if reduction == "none" else ())
    assert_result_type(grad, dtype, (n, c))
    if (n, c) == HUGE:
        # every row's loss, and the gradient of a sample of rows (rows are independent)
        rows_loss = ref_chunked(ref.cross_entropy, x, t, reduction="none")
        assert_close(loss, rows_loss if reduction == "none" else rows_loss.mean(), dtype)
        rows = _sample_rows(n)
        gout = 1.0 if reduction == "none" else 1.0 / n   # mean: row gradient / N (nothing ignored)
        _, exp_grad = ref.cross_entropy_with_grad(f64(x[rows]), t[rows], reduction="none", grad_output=gout)
        assert_close(grad[rows], exp_grad, dtype, scale=gout)
    else:
        assert_with_grad_close(loss, grad, x, t, dtype, reduction=reduction)
    # the loss of the fused call is the loss of cross_entropy
    assert_close(loss, fastxent.cross_entropy(x, t, reduction=reduction), dtype)


@pytest.mark.parametrize("n, c, dtype, layout",
                         [p for p in SHAPE_CASES if p.values[0] * p.values[1] <= 1e6])
def test_cross_entropy_shapes_all_options(n, c, dtype, layout, rng):
    """Every option on at once (weight, ignored rows, smoothing, per-row grad_output), every layout."""
    x = in_layout(make_logits(rng, n, c, dtype), layout)
    t = in_layout_1d(_ignore_some(rng, make_target(rng, n, c), -100), "sliced")
    w = in_layout_1d(make_weight(rng, c), "reversed")
    g = in_layout_1d(rng.uniform(-2, 2, n), "sliced")
    kw = dict(weight=w, label_smoothing=0.25)
    for reduction, gout in [("none", g), ("mean", 0.5), ("sum", -1.5)]:
        loss, grad = fastxent.cross_entropy_with_grad(x, t, reduction=reduction, grad_output=gout, **kw)
        assert_with_grad_close(loss, grad, x, t, dtype, reduction=reduction, grad_output=gout, **kw)
        assert_close(fastxent.cross_entropy(x, t, reduction=reduction, **kw),
                     ref.cross_entropy(f64(x), t, reduction=reduction, **kw), dtype)


# ------------------------------------------------------------------ the full option product
OPTION_SHAPES = [(0, 3), (1, 1), (7, 3), (7, 17), (33, 1000), (300, 2)]
WEIGHTS = ["none", "weight"]
IGNORES = ["no_hits", "default_hits", "custom_hits"]   # -100 absent / -100 present / ignore_index=1
SMOOTHINGS = [0.0, 0.1, 1.0]
REDUCTIONS = ["mean", "sum", "none"]


def _options(rng, n, c, weight, ignore):
    kw = {}
    t = make_target(rng, n, c)
    if weight == "weight":
        kw["weight"] = make_weight(rng, c)
    if ignore == "default_hits":
        t = _ignore_some(rng, t, -100)
    elif ignore == "custom_hits":
        kw["ignore_index"] = min(1, c - 1)
        t = _ignore_some(rng, t, kw["ignore_index"])
    return t, kw


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("n, c", OPTION_SHAPES)
@pytest.mark.parametrize("weight", WEIGHTS)
@pytest.mark.parametrize("ignore", IGNORES)
@pytest.mark.parametrize("eps", SMOOTHINGS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_options(reduction, eps, ignore, weight, n, c, dtype, rng):
    x = make_logits(rng, n, c, dtype)
    t, kw = _options(rng, n, c, weight, ignore)
    got = fastxent.cross_entropy(x, t, reduction=reduction, label_smoothing=eps, **kw)
    expected = ref.cross_entropy(f64(x), t, reduction=reduction, label_smoothing=eps, **kw)
    assert_result_type(got, dtype, (n,) if reduction == "none" else ())
    assert_close(got, expected, dtype)


def _grad_outputs(reduction, n):
    if reduction == "none":
        return ["one", "scalar", "per_row"]
    return ["one", "scalar"]


GRAD_CASES = [(r, g) for r in REDUCTIONS for g in _grad_outputs(r, 0)]


def _call_with_grad(x, t, dest, **kw):
    n, c = x.shape
    if dest == "out":
        out = np.full((n, c), np.nan, dtype=x.dtype)
        loss, grad = fastxent.cross_entropy_with_grad(x, t, out=out, **kw)
        assert grad is out
    elif dest == "inplace":
        xin = x.copy()
        loss, grad = fastxent.cross_entropy_with_grad(xin, t, inplace=True, **kw)
        assert grad is xin
    else:
        loss, grad = fastxent.cross_entropy_with_grad(x, t, **kw)
    assert_result_type(loss, x.dtype, (n,) if kw.get("reduction", "mean") == "none" else ())
    assert_result_type(grad, x.dtype, (n, c))
    return loss, grad


def _grad_output(rng, gout, n):
    return {"one": 1.0, "scalar": -0.37, "per_row": rng.uniform(-2, 2, n)}[gout]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("n, c", OPTION_SHAPES)
@pytest.mark.parametrize("weight", WEIGHTS)
@pytest.mark.parametrize("ignore", IGNORES)
@pytest.mark.parametrize("eps", SMOOTHINGS)
@pytest.mark.parametrize("reduction, gout", GRAD_CASES)
def test_cross_entropy_with_grad_options(reduction, gout, eps, ignore, weight, n, c, dtype, rng):
    x = make_logits(rng, n, c, dtype)
    t, kw = _options(rng, n, c, weight, ignore)
    kw.update(reduction=reduction, label_smoothing=eps, grad_output=_grad_output(rng, gout, n))
    loss, grad = _call_with_grad(x, t, "new", **kw)
    assert_with_grad_close(loss, grad, x, t, dtype, **kw)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("n, c", OPTION_SHAPES)
@pytest.mark.parametrize("reduction, gout", GRAD_CASES)
@pytest.mark.parametrize("dest", ["out", "inplace"])
def test_cross_entropy_with_grad_out_inplace(dest, reduction, gout, n, c, dtype, rng):
    """out= and inplace=True give the same results as a new array, with every option on."""
    x = make_logits(rng, n, c, dtype)
    t, kw = _options(rng, n, c, "weight", "default_hits")
    kw.update(reduction=reduction, label_smoothing=0.1, grad_output=_grad_output(rng, gout, n))
    loss, grad = _call_with_grad(x, t, dest, **kw)
    assert_with_grad_close(loss, grad, x, t, dtype, **kw)
    loss_new, grad_new = fastxent.cross_entropy_with_grad(x, t, **kw)
    assert np.array_equal(grad, grad_new, equal_nan=True)
    assert np.array_equal(loss, loss_new, equal_nan=True)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS_2D)
@pytest.mark.parametrize("dest", ["out", "inplace"])
def test_out_and_inplace_in_every_layout(dest, layout, dtype, rng):
    """out= / inplace=True arrays of any strides are written exactly where they live, nowhere else."""
    n, c = 37, 19
    x0 = make_logits(rng, n, c, dtype)
    t = make_target(rng, n, c)
    buf = in_layout(x0 if dest == "inplace" else np.full((n, c), -7.0, dtype=dtype), layout, fill=-3.0)
    view_before = buf.copy()
    base = buf if buf.base is None else buf.base          # the memory behind the view, gaps included
    base_before = base.copy()
    if dest == "out":
        loss, grad = fastxent.cross_entropy_with_grad(x0, t, reduction="sum", label_smoothing=0.1, out=buf)
    else:
        loss, grad = fastxent.cross_entropy_with_grad(buf, t, reduction="sum", label_smoothing=0.1,
                                                      inplace=True)
    assert grad is buf
    assert_with_grad_close(loss, grad, x0, t, dtype, reduction="sum", label_smoothing=0.1)
    # restoring the view's old values restores the whole buffer: nothing outside the view was written
    buf[...] = view_before
    assert np.array_equal(base, base_before)


# ------------------------------------------------------------------ label dtypes
LABEL_DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
                np.dtype(">i8"), np.dtype(">u4")]           # the last two: non-native byte order


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("label_dtype", LABEL_DTYPES, ids=lambda d: np.dtype(d).str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("label_layout", LAYOUTS_1D)
@pytest.mark.parametrize("ignore_index", [-100, 5])
def test_label_dtypes(ignore_index, label_layout, reduction, label_dtype, dtype, rng):
    n, c = 50, 100
    x = make_logits(rng, n, c, dtype)
    t = make_target(rng, n, c)
    if ignore_index >= 0 or np.dtype(label_dtype).kind == "i":
        t = _ignore_some(rng, t, ignore_index)          # hits (for unsigned labels -100 cannot occur)
    t = in_layout_1d(t.astype(label_dtype), label_layout)
    t_copy = t.copy()
    kw = dict(ignore_index=ignore_index, reduction=reduction, weight=make_weight(rng, c))
    assert_close(fastxent.cross_entropy(x, t, **kw), ref.cross_entropy(f64(x), t.astype(np.int64), **kw),
                 dtype)
    loss, grad = fastxent.cross_entropy_with_grad(x, t, **kw)
    assert_with_grad_close(loss, grad, x, t.astype(np.int64), dtype, **kw)
    assert t.dtype == np.dtype(label_dtype) and np.array_equal(t, t_copy)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_read_only_inputs_work(dtype, rng):
    """Inputs behind read-only (e.g. memory-mapped) arrays are accepted by every function."""
    n, c = 20, 9
    x = make_logits(rng, n, c, dtype)
    t = make_target(rng, n, c)
    w = make_weight(rng, c)
    g = rng.uniform(size=n)
    for a in (x, t, w, g):
        a.setflags(write=False)
    assert_close(fastxent.logsumexp(x), ref.logsumexp(f64(x)), dtype)
    assert_close(fastxent.log_softmax(x), ref.log_softmax(f64(x)), dtype)
    assert_close(fastxent.softmax(x), ref.softmax(f64(x)), dtype)
    assert_close(fastxent.cross_entropy(x, t, weight=w), ref.cross_entropy(f64(x), t, weight=w), dtype)
    loss, grad = fastxent.cross_entropy_with_grad(x, t, weight=w, reduction="none", grad_output=g)
    assert_with_grad_close(loss, grad, x, t, dtype, weight=w, reduction="none", grad_output=g)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_weight_of_other_float_dtypes(dtype, rng):
    """weight may be any float dtype (converted to float64 internally)."""
    n, c = 30, 6
    x = make_logits(rng, n, c, dtype)
    t = make_target(rng, n, c)
    w64 = np.array([0.5, 1.0, 1.5, 2.0, 0.25, 3.0])     # exactly representable in float16
    expected = ref.cross_entropy(f64(x), t, weight=w64)
    for wdt in (np.float16, np.float32, np.float64, np.longdouble):
        assert_close(fastxent.cross_entropy(x, t, weight=w64.astype(wdt)), expected, dtype,
                     err_msg=str(np.dtype(wdt)))


def test_num_threads_accepts_numpy_integers(rng):
    x = make_logits(rng, 100, 10)
    t = make_target(rng, 100, 10)
    expected = fastxent.cross_entropy(x, t, num_threads=2)
    assert fastxent.cross_entropy(x, t, num_threads=np.int64(2)) == expected
    assert_close(expected, ref.cross_entropy(x, t), np.float64)


def test_dlpack_and_array_like_inputs():
    """Objects exposing DLPack (a torch CPU tensor) or only __array__ give the same results."""
    import torch

    rng = np.random.default_rng(7)
    x = rng.standard_normal((9, 6)).astype(np.float32)
    t = rng.integers(0, 6, 9)

    class ArrayLike:
        def __init__(self, a):
            self.a = a

        def __array__(self, dtype=None, copy=None):
            return self.a

    expected = fastxent.cross_entropy(x, t, reduction="none")
    np.testing.assert_array_equal(
        fastxent.cross_entropy(torch.from_numpy(x), torch.from_numpy(t), reduction="none"), expected)
    np.testing.assert_array_equal(
        fastxent.cross_entropy(ArrayLike(x), ArrayLike(t), reduction="none"), expected)
    np.testing.assert_array_equal(fastxent.logsumexp(torch.from_numpy(x)), fastxent.logsumexp(x))
