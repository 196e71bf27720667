"""Pinned answers at the edges: huge logits, -inf masks, NaN / +inf rows, ties, C = 1, N = 0."""
import math

import mpmath
import numpy as np
import pytest

import fastxent
from fastxent import reference as ref
from tests.conftest import FLOAT_DTYPES, assert_close, assert_with_grad_close, f64

# run under every instruction-set level this CPU supports (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("every_isa")

REDUCTIONS = ["mean", "sum", "none"]


# ------------------------------------------------------------------ huge logits
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("big", [1e4, 1e30])
def test_huge_logits_never_overflow(big, dtype):
    x = np.array([[big, -big, 0.0],
                  [big, -big, 0.0],
                  [big, -big, 0.0],
                  [-big, big, big],
                  [big, big, big]], dtype=dtype)
    t = np.array([0, 1, 2, 0, 1])
    b = float(dtype(big))
    loss, grad = fastxent.cross_entropy_with_grad(x, t, reduction="none")
    expected = np.array([0.0, 2 * b, b, 2 * b, math.log(3)])
    expected[3] += math.log(2)   # two tied maxima: lse = big + log 2 (lost to rounding for 1e30)
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad))
    assert_close(loss, expected, dtype, scale=0)
    exp_grad = np.array([[0, 0, 0], [1, -1, 0], [1, 0, -1], [-1, 0.5, 0.5], [1 / 3, -2 / 3, 1 / 3]])
    assert_close(grad, exp_grad, dtype, scale=1)
    assert_close(fastxent.logsumexp(x), [b, b, b, b + math.log(2), b + math.log(3)], dtype, scale=0)
    exp_p = np.array([[1, 0, 0], [1, 0, 0], [1, 0, 0], [0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]])
    assert_close(fastxent.softmax(x), exp_p, dtype, scale=1)
    for reduction in ("mean", "sum"):
        got = fastxent.cross_entropy(x, t, reduction=reduction)
        assert np.isfinite(got)
        assert_close(got, expected.sum() / (5 if reduction == "mean" else 1), dtype, scale=0)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_huge_logits_with_smoothing_and_weight(dtype):
    x = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 5.0]], dtype=dtype)
    t = np.array([0, 2])
    kw = dict(weight=np.array([1.0, 2.0, 0.5]), label_smoothing=0.1)
    for reduction in REDUCTIONS:
        loss, grad = fastxent.cross_entropy_with_grad(x, t, reduction=reduction, **kw)
        assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad))
        assert_with_grad_close(loss, grad, x, t, dtype, reduction=reduction, **kw)


# ------------------------------------------------------------------ -inf masks
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_masked_classes_behave_as_if_absent(dtype):
    """A -inf logit is a masked class: the loss equals that of the row with the class removed."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((4, 6)) * 2).astype(dtype)
    t = np.array([0, 2, 5, 1])
    masked = np.zeros_like(x, dtype=bool)
    masked[0, [1, 4]] = masked[1, 0] = masked[2, [0, 1, 2, 3]] = True
    xm = np.where(masked, -np.inf, x).astype(dtype)
    loss, grad = fastxent.cross_entropy_with_grad(xm, t, reduction="none")
    for i in range(4):
        keep = ~masked[i]
        sub = x[i, keep][None]
        sub_t = np.array([np.flatnonzero(keep).tolist().index(t[i])])
        assert_close(loss[i], ref.cross_entropy(f64(sub), sub_t, reduction="none")[0], dtype)
        assert_close(grad[i, keep], ref.cross_entropy_with_grad(f64(sub), sub_t, reduction="none")[1][0],
                     dtype)
    assert np.all(grad[masked] == 0)
    sm = fastxent.softmax(xm)
    assert np.all(sm[masked] == 0)
    assert np.all(np.isneginf(fastxent.log_softmax(xm)[masked]))
    assert_close(sm.sum(axis=1), np.ones(4), dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_masked_target_gives_inf_loss_and_finite_grad(reduction, dtype):
    x = np.array([[0.0, -np.inf, 1.0], [0.5, 0.2, -1.0]], dtype=dtype)
    t = np.array([1, 0])
    loss, grad = fastxent.cross_entropy_with_grad(x, t, reduction=reduction)
    np.testing.assert_array_equal(fastxent.cross_entropy(x, t, reduction=reduction), loss)
    if reduction == "none":
        assert loss[0] == np.inf and np.isfinite(loss[1])
    else:
        assert loss == np.inf
    assert np.all(np.isfinite(grad))
    s = 0.5 if reduction == "mean" else 1.0
    p = np.exp([0.0, 1.0]) / np.exp([0.0, 1.0]).sum()
    assert_close(grad[0], s * np.array([p[0], -1.0, p[1]]), dtype, scale=1)
    assert_with_grad_close(loss, grad, x, t, dtype, reduction=reduction)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_masked_class_with_label_smoothing_gives_inf(dtype):
    """As torch: the smoothing term sums -log p over all classes, +inf for a masked one."""
    x = np.array([[0.0, -np.inf, 1.0], [0.5, 0.2, -1.0]], dtype=dtype)
    t = np.array([0, 0])
    loss, grad = fastxent.cross_entropy_with_grad(x, t, reduction="none", label_smoothing=0.1)
    assert loss[0] == np.inf and np.isfinite(loss[1])
    assert np.all(np.isfinite(grad))
    assert_with_grad_close(loss, grad, x, t, dtype, reduction="none", label_smoothing=0.1)


# ------------------------------------------------------------------ ties
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("c", [1, 2, 3, 1000, 32768])
@pytest.mark.parametrize("value", [0.0, -7.5, 1e4])
def test_all_equal_logits(value, c, dtype):
    x = np.full((3, c), value, dtype=dtype)
    t = np.array([0, c - 1, c // 2])
    loss, grad = fastxent.cross_entropy_with_grad(x, t, reduction="none")
    assert_close(loss, np.full(3, math.log(c)), dtype, scale=0 if c > 1 else 1)
    exp_grad = np.full((3, c), 1.0 / c)
    exp_grad[np.arange(3), t] -= 1.0
    assert_close(grad, exp_grad, dtype, scale=1)
    assert_close(fastxent.softmax(x), np.full((3, c), 1.0 / c), dtype, scale=0)
    assert_close(fastxent.logsumexp(x), np.full(3, float(dtype(value)) + math.log(c)), dtype)


# ------------------------------------------------------------------ NaN / +inf / all -inf rows
BAD_ROWS = {
    "nan": [0.5, np.nan, 1.0, -2.0],
    "nan_at_target": [np.nan, 0.0, 1.0, -2.0],
    "+inf": [0.5, np.inf, 1.0, -2.0],
    "+inf_at_target": [np.inf, 0.0, 1.0, -2.0],
    "+inf_and_-inf": [np.inf, -np.inf, 1.0, -2.0],
    "all_-inf": [-np.inf] * 4,
    "nan_and_+inf": [np.nan, np.inf, 0.0, 0.0],
}


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("kind", list(BAD_ROWS))
@pytest.mark.parametrize("eps", [0.0, 0.2])
@pytest.mark.parametrize("weight", [False, True])
def test_bad_row_gives_nan_in_that_row_only(weight, eps, kind, dtype):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 4)).astype(dtype)
    x[2] = BAD_ROWS[kind]
    t = np.array([1, 2, 0, 3, 0])
    kw = dict(label_smoothing=eps, weight=np.array([0.5, 1.0, 2.0, 1.5]) if weight else None)
    good = np.array([True, True, False, True, True])
    loss, grad = fastxent.cross_entropy_with_grad(x, t, reduction="none", **kw)
    assert np.isnan(loss[2]) and np.all(np.isnan(grad[2]))
    assert np.all(np.isfinite(loss[good])) and np.all(np.isfinite(grad[good]))
    exp_loss, exp_grad = ref.cross_entropy_with_grad(f64(x[good]), t[good], reduction="none", **kw)
    assert_close(loss[good], exp_loss, dtype)
    assert_close(grad[good], exp_grad, dtype)
    assert np.all(np.isnan(fastxent.cross_entropy(x, t, reduction="none", **kw)) == ~good)
    for reduction in ("mean", "sum"):
        assert np.isnan(fastxent.cross_entropy(x, t, reduction=reduction, **kw))
        loss_r, grad_r = fastxent.cross_entropy_with_grad(x, t, reduction=reduction, **kw)
        assert np.isnan(loss_r)
        assert np.all(np.isnan(grad_r[2])) and np.all(np.isfinite(grad_r[good]))
    # the row functions: NaN in the log-softmax / softmax of that row only
    for func in (fastxent.log_softmax, fastxent.softmax):
        out = func(x)
        assert np.all(np.isnan(out[2])) and not np.any(np.isnan(out[good]))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("kind, expected", [("nan", np.nan), ("nan_and_+inf", np.nan), ("+inf", np.inf),
                                            ("+inf_and_-inf", np.inf), ("all_-inf", -np.inf)])
def test_logsumexp_of_bad_rows(kind, expected, dtype):
    """logsumexp follows torch.logsumexp / scipy.special.logsumexp: a row holding +inf (and no NaN)
    gives +inf, an all -inf row gives -inf (log of an empty sum), a NaN row gives NaN."""
    x = np.zeros((3, 4), dtype=dtype)
    x[1] = BAD_ROWS[kind]
    got = fastxent.logsumexp(x)
    np.testing.assert_array_equal(got, np.array([math.log(4), expected, math.log(4)], dtype=dtype))
    np.testing.assert_array_equal(got, ref.logsumexp(x))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("kind", ["nan", "+inf", "all_-inf"])
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_ignored_bad_row_contributes_nothing(eps, kind, dtype):
    """An ignored row has loss 0 and gradient 0 whatever its logits (the spec; torch's autograd
    gives a NaN gradient for such a row, its loss is 0 too)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 4)).astype(dtype)
    x[1] = BAD_ROWS[kind]
    t = np.array([0, -100, 3, 2])
    for reduction in REDUCTIONS:
        loss, grad = fastxent.cross_entropy_with_grad(x, t, reduction=reduction, label_smoothing=eps)
        assert np.all(np.isfinite(loss)), reduction
        assert np.all(grad[1] == 0), reduction
        assert_with_grad_close(loss, grad, x, t, dtype, reduction=reduction, label_smoothing=eps)


# ------------------------------------------------------------------ huge C with a dominant logit
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_huge_c_one_dominant_logit(dtype):
    c, k, big = 262144, 123457, 30.0
    x = np.zeros((3, c), dtype=dtype)
    x[:, k] = big
    t = np.array([k, 0, c - 1])
    others = mpmath.mpf(c - 1) * mpmath.exp(-big)        # sum of exp(x - max) over the other classes
    lse = big + float(mpmath.log1p(others))
    loss_k = float(mpmath.log1p(others))                 # ~ 2.4e-8: a tiny but exact loss
    loss, grad = fastxent.cross_entropy_with_grad(x, t, reduction="none")
    assert_close(loss, [loss_k, lse, lse], dtype)
    assert_close(fastxent.logsumexp(x), [lse] * 3, dtype)
    p_other = float(mpmath.exp(-mpmath.mpf(lse)))
    p_k = float(mpmath.exp(big - mpmath.mpf(lse)))
    assert_close(grad[0, k], p_k - 1, dtype, scale=1)      # p - 1 cancels: absolute accuracy
    assert_close(grad[1, 0], p_other - 1, dtype, scale=0)
    assert_close(grad[1, 1], p_other, dtype, scale=0)
    assert_close(grad[1, k], p_k, dtype, scale=0)
    assert_close(np.sum(grad.astype(np.float64), axis=1), np.zeros(3), dtype, scale=1)
    for reduction in ("mean", "sum"):
        total = loss_k + 2 * lse
        assert_close(fastxent.cross_entropy(x, t, reduction=reduction),
                     total / 3 if reduction == "mean" else total, dtype, scale=0)


# ------------------------------------------------------------------ C = 1 and N = 0
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("eps", [0.0, 0.5])
def test_single_class_loss_is_zero(eps, reduction, dtype):
    x = np.array([[3.0], [-1e30], [0.0], [1e4]], dtype=dtype)
    t = np.zeros(4, dtype=np.int64)
    loss, grad = fastxent.cross_entropy_with_grad(x, t, reduction=reduction, label_smoothing=eps)
    assert np.all(np.asarray(loss) == 0)
    assert np.all(grad == 0)
    np.testing.assert_array_equal(fastxent.log_softmax(x), np.zeros((4, 1), dtype))
    np.testing.assert_array_equal(fastxent.softmax(x), np.ones((4, 1), dtype))
    np.testing.assert_array_equal(fastxent.logsumexp(x), x[:, 0])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("c", [1, 3, 1000])
@pytest.mark.parametrize("eps", [0.0, 0.3])
@pytest.mark.parametrize("weight", [False, True])
def test_empty_batch(weight, eps, c, dtype):
    """N = 0: mean -> nan, sum -> 0, none -> empty; the gradient is an empty (0, C) array."""
    x = np.zeros((0, c), dtype=dtype)
    t = np.zeros(0, dtype=np.int64)
    kw = dict(label_smoothing=eps, weight=np.ones(c) if weight else None)
    for _ in range(3):      # repeated: a result read from uninitialised memory would show up
        # leave some non-zero garbage around in freed memory first
        fastxent.cross_entropy(np.full((4, c), 5.0, dtype=dtype), np.zeros(4, np.int64), reduction="sum")
        mean = fastxent.cross_entropy(x, t, reduction="mean", **kw)
        assert type(mean) is np.dtype(dtype).type and np.isnan(mean)
        total = fastxent.cross_entropy(x, t, reduction="sum", **kw)
        assert type(total) is np.dtype(dtype).type and total == 0
        none = fastxent.cross_entropy(x, t, reduction="none", **kw)
        assert isinstance(none, np.ndarray) and none.shape == (0,) and none.dtype == dtype
        for reduction, check in (("mean", np.isnan), ("sum", lambda v: v == 0)):
            loss, grad = fastxent.cross_entropy_with_grad(x, t, reduction=reduction, **kw)
            assert type(loss) is np.dtype(dtype).type and check(loss), (reduction, loss)
            assert grad.shape == (0, c) and grad.dtype == dtype
        loss, grad = fastxent.cross_entropy_with_grad(x, t, reduction="none", grad_output=np.zeros(0), **kw)
        assert loss.shape == (0,) and grad.shape == (0, c)
    assert fastxent.logsumexp(x).shape == (0,)
    assert fastxent.log_softmax(x).shape == (0, c) and fastxent.softmax(x).shape == (0, c)


# ------------------------------------------------------------------ degenerate weights / all ignored
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("eps", [0.0, 0.3])
def test_all_rows_ignored(eps, dtype):
    x = np.arange(12, dtype=dtype).reshape(4, 3)
    t = np.full(4, -100)
    assert np.isnan(fastxent.cross_entropy(x, t, label_smoothing=eps))
    assert fastxent.cross_entropy(x, t, reduction="sum", label_smoothing=eps) == 0
    np.testing.assert_array_equal(fastxent.cross_entropy(x, t, reduction="none", label_smoothing=eps),
                                  np.zeros(4, dtype))
    for reduction in REDUCTIONS:
        loss, grad = fastxent.cross_entropy_with_grad(x, t, reduction=reduction, label_smoothing=eps)
        assert np.all(grad == 0), reduction
        if reduction == "mean":
            assert np.isnan(loss)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_zero_weight_rows(dtype):
    """Rows whose target has weight 0 add 0 to the loss and to the mean's denominator."""
    x = np.array([[0.0, 1.0, 2.0], [1.0, 0.0, -1.0], [0.3, 0.2, 0.1]], dtype=dtype)
    t = np.array([1, 0, 2])
    w = np.array([1.0, 0.0, 2.0])
    for reduction in REDUCTIONS:
        loss, grad = fastxent.cross_entropy_with_grad(x, t, weight=w, reduction=reduction)
        assert np.all(grad[0] == 0)
        assert_with_grad_close(loss, grad, x, t, dtype, weight=w, reduction=reduction)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_mean_with_zero_total_weight_and_smoothing_is_nan(dtype):
    """Every non-ignored target has weight 0: torch computes the mean of the nll and of the smoothing
    terms separately, and the nll term is 0/0 = nan, so the mean is nan (not +inf)."""
    x = np.array([[0.0, 1.0, 2.0], [1.0, 0.0, -1.0]], dtype=dtype)
    t = np.array([1, 1])
    w = np.array([1.0, 0.0, 2.0])
    assert np.isnan(fastxent.cross_entropy(x, t, weight=w))
    assert np.isnan(fastxent.cross_entropy(x, t, weight=w, label_smoothing=0.2))
    assert np.isnan(fastxent.cross_entropy_with_grad(x, t, weight=w, label_smoothing=0.2)[0])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_zero_weight_on_masked_target_is_nan_as_torch(eps, dtype):
    """-w[y] * log p[y] with w[y] = 0 and log p[y] = -inf is 0 * inf = nan in torch; the gradient
    of that row stays finite."""
    x = np.array([[0.0, -np.inf, 1.0], [0.3, 0.2, 0.1]], dtype=dtype)
    t = np.array([1, 0])
    w = np.array([1.0, 0.0, 2.0])
    loss, grad = fastxent.cross_entropy_with_grad(x, t, weight=w, reduction="none", label_smoothing=eps)
    assert np.isnan(loss[0]) and np.isfinite(loss[1])
    assert np.all(np.isfinite(grad))
    assert np.isnan(fastxent.cross_entropy(x, t, weight=w, reduction="sum", label_smoothing=eps))
