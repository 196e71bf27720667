"""Shared tolerances, array builders and comparison helpers for the fastxent test-suite.

Ground truth is always :mod:`fastxent.reference` run on float64 copies of the inputs (the float32
inputs are converted exactly, so both sides see the same numbers).
"""
import numpy as np
import pytest

# --------------------------------------------------------------------------------------------
# THE tolerance table (the only one in the suite).
#
# A check passes when, element-wise,
#     |actual - expected| <= atol * scale + rtol * |expected|
# with ``scale`` = the largest finite |expected| in the array (1 when there is none), so atol is
# relative to the size of the whole result: a mean gradient of order 1/N is held to the same
# relative standard as a per-row loss of order 10.  NaN and inf must match exactly, position and sign.
#
# float32: the kernels use a polynomial exp with ~2 ulp error (1.2e-7 relative) summed in float64, and
#   write float32 results (rounding 6e-8).  A loss lse - x[y] and a log-probability x - lse carry an
#   absolute error of a few ulp of max(|x|, lse), i.e. ~1e-6 for logits of order 10: rtol 1e-5 leaves
#   a 10x margin, atol 1e-6 (of the largest value) covers entries that cancel to almost zero.
#   A float32 accumulation of 1e7 rows would be off by >1e-3, so the same rtol still catches it.
# float64: libm-grade exp (<= 1 ulp) and float64 sums of up to 32768 terms per row (worst-case
#   rounding C * 1.1e-16 = 4e-12 relative on the sum; statistically ~sqrt(C) * 1.1e-16 = 2e-14).
#   rtol 1e-12 / atol 1e-13 is loose enough for that and still 1e4x tighter than float32 code
#   hiding behind a float64 interface.
# --------------------------------------------------------------------------------------------
TOL = {
    np.dtype(np.float32): dict(rtol=1e-5, atol=1e-6),
    np.dtype(np.float64): dict(rtol=1e-12, atol=1e-13),
}

FLOAT_DTYPES = [np.float32, np.float64]

# Memory layouts of a 2-D (or 1-D) array holding the same values.
LAYOUTS_2D = ["C", "F", "cols_sliced", "rows_sliced", "rows_reversed", "cols_reversed"]
LAYOUTS_1D = ["C", "sliced", "reversed"]


def tol(dtype):
    return TOL[np.dtype(dtype)]


def in_layout(a, layout, fill=np.nan):
    """Return an array equal to ``a`` (2-D) laid out in memory as ``layout``.

    The sliced layouts live in a buffer twice as large whose other entries hold ``fill`` (NaN for
    floats), so a kernel that reads the wrong memory gives a visibly wrong answer.
    """
    a = np.asarray(a)
    n, c = a.shape
    if layout == "C":
        out = np.array(a, order="C", copy=True)
    elif layout == "F":
        out = np.array(a, order="F", copy=True)
    elif layout == "cols_sliced":            # x[:, ::2]
        big = np.full((n, 2 * c), fill, dtype=a.dtype)
        big[:, ::2] = a
        out = big[:, ::2]
    elif layout == "rows_sliced":            # x[::2]
        big = np.full((2 * n, c), fill, dtype=a.dtype)
        big[::2] = a
        out = big[::2]
    elif layout == "rows_reversed":          # x[::-1]
        out = np.ascontiguousarray(a[::-1])[::-1]
    elif layout == "cols_reversed":          # x[:, ::-1]
        out = np.ascontiguousarray(a[:, ::-1])[:, ::-1]
    else:
        raise ValueError(layout)
    assert np.array_equal(out, a, equal_nan=True)
    return out


def in_layout_1d(a, layout, fill=0):
    """Return a 1-D array equal to ``a`` laid out as "C", "sliced" (x[::2]) or "reversed" (x[::-1])."""
    a = np.asarray(a)
    if layout == "C":
        out = a.copy()
    elif layout == "sliced":
        big = np.full(2 * a.shape[0], fill, dtype=a.dtype)
        big[::2] = a
        out = big[::2]
    elif layout == "reversed":
        out = np.ascontiguousarray(a[::-1])[::-1]
    else:
        raise ValueError(layout)
    assert np.array_equal(out, a, equal_nan=True)
    return out


def make_logits(rng, n, c, dtype=np.float64, scale=3.0):
    """Random logits of order ``scale``; generated in float32 directly when that is asked for."""
    return (rng.standard_normal((n, c), dtype=np.dtype(dtype)) * np.dtype(dtype).type(scale))


def make_target(rng, n, c, dtype=np.int64):
    return rng.integers(0, c, size=n).astype(dtype)


def make_weight(rng, c, dtype=np.float64):
    return rng.uniform(0.1, 2.0, size=c).astype(dtype)


def assert_close(actual, expected, dtype, err_msg="", scale=None):
    """Compare with the tolerance of ``dtype`` (see TOL); shapes must match, NaN/inf exactly.

    ``scale`` multiplies atol: by default the largest finite |expected|, at least 1 (log-probabilities
    and losses carry an absolute error of a few ulp of the logits, which are O(1) here); pass the
    natural unit of a gradient (see ``grad_unit``), or 0 for a purely relative check (down to the
    smallest normal number of ``dtype``).
    """
    t = tol(dtype)
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"shape {actual.shape} != {expected.shape} {err_msg}"
    if scale is None:
        finite = np.isfinite(expected)
        scale = max(float(np.max(np.abs(expected[finite]))) if finite.any() else 1.0, 1.0)
    # below the smallest normal number of the dtype nothing is relatively accurate (it may flush to 0)
    atol = max(t["atol"] * scale, float(np.finfo(dtype).tiny))
    np.testing.assert_allclose(actual, expected, rtol=t["rtol"], atol=atol, equal_nan=True,
                               err_msg=err_msg)


def grad_unit(target, weight=None, ignore_index=-100, reduction="mean", grad_output=1.0, **_):
    """The natural size of the gradient entries: max|grad_output| * max(weight) (/ total weight for
    "mean").  Entries such as p[y] - 1 cancel to far below it, so their error is measured against it.
    """
    target = np.asarray(target)
    valid = target != ignore_index
    w = np.ones(int(target.max(initial=0)) + 1) if weight is None else np.asarray(weight, dtype=np.float64)
    unit = float(np.max(np.abs(grad_output), initial=0.0)) * float(np.max(w, initial=0.0))
    if reduction == "mean":
        wsum = float(np.sum(w[target[valid].astype(np.int64)])) if valid.any() else 0.0
        unit = unit / wsum if wsum > 0 else unit
    return unit if unit > 0 else 1.0


def assert_with_grad_close(loss, grad, x, target, dtype, **kw):
    """Check (loss, grad) of fastxent.cross_entropy_with_grad against the float64 reference."""
    from fastxent import reference as ref
    exp_loss, exp_grad = ref.cross_entropy_with_grad(f64(x), target, **kw)
    assert_close(loss, exp_loss, dtype, err_msg="loss")
    assert_close(grad, exp_grad, dtype, err_msg="grad", scale=grad_unit(target, **kw))


def assert_result_type(result, dtype, shape):
    """A reduction gives a numpy scalar of ``dtype``; otherwise an ndarray of ``dtype`` and ``shape``."""
    dtype = np.dtype(dtype)
    if shape == ():
        assert type(result) is dtype.type, f"expected a numpy {dtype} scalar, got {type(result)}"
    else:
        assert isinstance(result, np.ndarray), type(result)
        assert result.dtype == dtype, result.dtype
        assert result.shape == shape, result.shape


def f64(a):
    """float64 copy for the reference (None passes through)."""
    return None if a is None else np.array(a, dtype=np.float64)


def ref_chunked(func, logits, *args, chunk=256, **kwargs):
    """Apply a row-wise reference function to float64 copies of ``chunk`` rows at a time.

    Keeps the memory of the huge cases low; ``func`` must return per-row outputs (logsumexp over the
    last axis, log_softmax, softmax, cross_entropy with reduction="none", ...).
    """
    parts = [func(np.asarray(logits[i:i + chunk], dtype=np.float64), *[a[i:i + chunk] for a in args],
                  **kwargs) for i in range(0, logits.shape[0], chunk)]
    if isinstance(parts[0], tuple):
        return tuple(np.concatenate([p[k] for p in parts]) for k in range(len(parts[0])))
    return np.concatenate(parts)


@pytest.fixture
def rng(request):
    """A generator seeded from the test's id, so every test is reproducible on its own."""
    import zlib
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def finite_differences(f, x, h=1e-5):
    """Central finite differences of the scalar function f at x (float64 gradients check)."""
    grad = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        grad[idx] = (f(xp) - f(xm)) / (2 * h)
    return grad


# --------------------------------------------------------------------------------------------
# Instruction-set levels: the modules that mark themselves with
#     pytestmark = pytest.mark.usefixtures("every_isa")
# run once under every kernel level this CPU supports (x86-64-v2 / -v3 / -v4 on x86-64), through
# fastxent._kernels.use; the rest of the suite runs the level chosen at import.
# --------------------------------------------------------------------------------------------
def _supported_levels():
    from fastxent import _kernels
    return _kernels.supported()


@pytest.fixture(scope="module", params=_supported_levels())
def every_isa(request):
    from fastxent import _kernels
    before = _kernels.level, _kernels.chosen_by
    _kernels.use(request.param)
    yield request.param
    _kernels.use(before[0])
    _kernels.chosen_by = before[1]
