"""Accuracy against exact answers: textbook values, mpmath at 50 digits, long reductions."""
import mpmath
import numpy as np
import pytest

import fastxent
from fastxent import reference as ref
from tests.conftest import FLOAT_DTYPES, TOL, assert_close, make_logits

# run under every instruction-set level this CPU supports (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("every_isa")

mpmath.mp.dps = 50


def _mp_rows(x, target=None):
    """Exact (50-digit) logsumexp and loss of every row of ``x`` (the values as stored)."""
    lse, loss = [], []
    for i, row in enumerate(np.asarray(x, dtype=np.float64)):
        s = mpmath.log(mpmath.fsum(mpmath.exp(mpmath.mpf(float(v))) for v in row))
        lse.append(s)
        if target is not None:
            loss.append(s - mpmath.mpf(float(row[target[i]])))
    return lse, loss


# ------------------------------------------------------------------ the textbook case
def test_textbook_three_classes_float64():
    """True class 1 of 3 with probabilities [0.228, 0.619, 0.153]: loss = -log(0.619)."""
    p = np.array([[0.228, 0.619, 0.153]])
    logits = np.log(p)
    t = np.array([1])
    expected = 0.47965000629754095
    for reduction in ("mean", "sum"):
        got = fastxent.cross_entropy(logits, t, reduction=reduction)
        np.testing.assert_allclose(got, expected, rtol=1e-15, atol=0)
        loss, grad = fastxent.cross_entropy_with_grad(logits, t, reduction=reduction)
        np.testing.assert_allclose(loss, expected, rtol=1e-15, atol=0)
        np.testing.assert_allclose(grad, p - [[0, 1, 0]], rtol=1e-14, atol=1e-16)
    np.testing.assert_allclose(fastxent.cross_entropy(logits, t, reduction="none"), [expected],
                               rtol=1e-15, atol=0)
    # and the textbook identities
    np.testing.assert_allclose(fastxent.softmax(logits), p, rtol=1e-15, atol=0)
    np.testing.assert_allclose(fastxent.log_softmax(logits), logits, rtol=1e-15, atol=0)
    # exact value 2.6e-17: a log-sum-exp near 0 is only accurate to ulps of max|x| (~0.5 here)
    np.testing.assert_allclose(fastxent.logsumexp(logits), [0.0], rtol=0, atol=2.5e-16)


def test_textbook_three_classes_float32():
    p = np.array([[0.228, 0.619, 0.153]])
    logits = np.log(p).astype(np.float32)
    exact = float(_mp_rows(logits, [1])[1][0])             # of the float32-rounded logits
    got = fastxent.cross_entropy(logits, np.array([1]))
    assert type(got) is np.float32
    assert_close(got, exact, np.float32, scale=0)


# ------------------------------------------------------------------ against mpmath
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("c, scale", [(2, 1.0), (5, 3.0), (17, 10.0), (64, 30.0), (300, 1.0)])
def test_against_mpmath(c, scale, dtype):
    rng = np.random.default_rng(c)
    n = 12
    x = make_logits(rng, n, c, dtype, scale=scale)
    t = rng.integers(0, c, n)
    lse, loss = _mp_rows(x, t)
    lse = np.array([float(v) for v in lse])
    loss = np.array([float(v) for v in loss])
    assert_close(fastxent.logsumexp(x), lse, dtype)
    assert_close(fastxent.cross_entropy(x, t, reduction="none"), loss, dtype)
    assert_close(fastxent.cross_entropy(x, t, reduction="sum"), float(sum(loss)), dtype)
    assert_close(fastxent.log_softmax(x), x.astype(np.float64) - lse[:, None], dtype)
    # probabilities: relative accuracy, even the small ones, down to the smallest normal number of
    # the dtype (below it a probability may flush to 0)
    exact_p = np.array([[float(mpmath.exp(mpmath.mpf(float(v)) - mpmath.mpf(float(l))))
                         for v in row] for row, l in zip(x.astype(np.float64), lse)])
    np.testing.assert_allclose(fastxent.softmax(x), exact_p, rtol=TOL[np.dtype(dtype)]["rtol"],
                               atol=np.finfo(dtype).tiny)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("gap", [5.0, 20.0, 40.0, 80.0])
def test_tiny_loss_is_relatively_accurate(gap, dtype):
    """A confident correct prediction: loss = log1p(exp(-gap)) ~ exp(-gap), far below 1 ulp of 1.

    Computing log(sum(exp(x - max))) would round the sum to 1 and give 0; splitting out the max term
    and using log1p keeps the loss relatively accurate.
    """
    x = np.array([[gap, 0.0], [0.0, gap], [gap, -gap]], dtype=dtype)
    t = np.array([0, 1, 0])
    exact = [float(mpmath.log1p(mpmath.exp(-gap))), float(mpmath.log1p(mpmath.exp(-gap))),
             float(mpmath.log1p(mpmath.exp(-2 * gap)))]
    got = fastxent.cross_entropy(x, t, reduction="none")
    # positive wherever the exact loss is representable (exp(-160) underflows float32)
    assert np.all(got[np.array(exact) > np.finfo(dtype).tiny] > 0)
    assert_close(got, exact, dtype, scale=0)
    loss, _ = fastxent.cross_entropy_with_grad(x, t, reduction="none")
    assert_close(loss, exact, dtype, scale=0)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_large_offset_logits(dtype):
    """Adding a large constant to a row changes nothing but rounding of the inputs."""
    rng = np.random.default_rng(5)
    base = make_logits(rng, 8, 10, np.float64)
    x = (base + 1e3).astype(dtype)
    t = rng.integers(0, 10, 8)
    _, loss = _mp_rows(x, t)
    assert_close(fastxent.cross_entropy(x, t, reduction="none"), [float(v) for v in loss], dtype)


# ------------------------------------------------------------------ long reductions
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_reduction_over_ten_million_rows(reduction, dtype):
    """Mean/sum over 10^7 rows are accumulated in float64: a float32 running sum would be off by >1e-3.

    Rows cycle through K patterns [0, d_k] with target 0 (loss log1p(exp(d_k))), so the exact answer
    is known from K mpmath values.  With label smoothing the per-row loss changes, checked as well.
    """
    n, k = 10_000_000, 10
    d = np.linspace(-3.0, 2.0, k).astype(dtype)
    x = np.zeros((n, 2), dtype=dtype)
    x[:, 1] = np.tile(d, n // k)
    t = np.zeros(n, dtype=np.int8)
    per_pattern = [mpmath.log1p(mpmath.exp(mpmath.mpf(float(v)))) for v in d]
    exact_sum = mpmath.fsum(per_pattern) * (n // k)
    exact = exact_sum / n if reduction == "mean" else exact_sum
    got = fastxent.cross_entropy(x, t, reduction=reduction)
    assert type(got) is np.dtype(dtype).type
    assert_close(got, float(exact), dtype, scale=0)
    loss, _ = fastxent.cross_entropy_with_grad(x, t, reduction=reduction)
    assert_close(loss, float(exact), dtype, scale=0)


# ------------------------------------------------------------------ the ground truth itself
@pytest.mark.parametrize("c, scale", [(3, 1.0), (40, 10.0), (7, 300.0)])
def test_reference_is_exact_in_float64(c, scale):
    """fastxent.reference (the ground truth of the suite) agrees with mpmath to float64 precision."""
    rng = np.random.default_rng(100 + c)
    x = make_logits(rng, 10, c, np.float64, scale=scale)
    t = rng.integers(0, c, 10)
    lse, loss = _mp_rows(x, t)
    np.testing.assert_allclose(ref.logsumexp(x), [float(v) for v in lse], rtol=4e-16 * c, atol=0)
    np.testing.assert_allclose(ref.cross_entropy(x, t, reduction="none"), [float(v) for v in loss],
                               rtol=1e-14, atol=1e-15 * scale)
    p = np.array([[0.228, 0.619, 0.153]])
    assert ref.cross_entropy(np.log(p), np.array([1])) == pytest.approx(0.47965000629754095, rel=1e-15)
    gap = 40.0
    tiny = ref.cross_entropy(np.array([[gap, 0.0]]), np.array([0]))
    assert tiny == pytest.approx(float(mpmath.log1p(mpmath.exp(-gap))), rel=1e-15)


# ------------------------------------------------------------------ every exp, element by element
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("width", [37, 4096, 70_000])
def test_softmax_elements_against_long_double(dtype, width):
    """Each probability of a row spanning the whole exp range against exp and a sum in long
    double: float64 within 4 ulp (exp at most 1.2 ulp, the rescaling between blocks and
    segments, the division), float32 within 6 ulp (exp at most 2.3 ulp).  The logits are
    multiples of 1/1024, so that every difference x - m the kernels take is exact and the error
    measured is the exp's, not the conditioning of exp (a rounded x - m of size d alone costs
    up to d / 2 ulp, in every softmax)."""
    if np.finfo(np.longdouble).nmant < 63:
        pytest.skip("long double is not wider than float64 on this platform")
    rng = np.random.default_rng(width)
    lo = -700.0 if dtype == np.float64 else -86.0
    x = np.round(rng.uniform(lo, 0.0, size=(4, width)) * 1024) / 1024
    x[1, :width // 2] = np.round(rng.uniform(-1.0, 0.0, size=width // 2) * 1024) / 1024
    x[:, width // 3] = 0                                # the max; row 1: a sum near width / 2
    x = x.astype(dtype)
    got = fastxent.softmax(x, axis=-1)
    e = np.exp(x.astype(np.longdouble))
    want = e / e.sum(axis=1, keepdims=True)
    normal = want >= np.finfo(dtype).tiny * 4
    ulps = np.abs(got.astype(np.longdouble) - want)[normal] / (want[normal] * np.finfo(dtype).eps)
    assert float(ulps.max()) <= (4.0 if dtype == np.float64 else 6.0)
    assert np.all(got[e < np.finfo(dtype).tiny / 2] == 0)      # exp below the normal range: 0
