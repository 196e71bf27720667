"""Gradients: against central finite differences (float64) and against the reference (both dtypes)."""
import itertools

import numpy as np
import pytest

import fastxent
from tests.conftest import finite_differences as _finite_differences, FLOAT_DTYPES, assert_with_grad_close, grad_unit, make_logits

# run under every instruction-set level this CPU supports (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("every_isa")

REDUCTIONS = ["mean", "sum", "none"]


def _case(rng, n, c, weight, ignore, eps, reduction, gout):
    x = make_logits(rng, n, c, np.float64, scale=2.0)
    t = rng.integers(0, c, n)
    kw = dict(reduction=reduction, label_smoothing=eps)
    if weight:
        kw["weight"] = rng.uniform(0.2, 2.0, c)
    if ignore == "default":
        t[::3] = -100
    elif ignore == "custom":
        kw["ignore_index"] = 1
        t[::3] = 1
    if gout == "per_row":
        kw["grad_output"] = rng.uniform(-2, 2, n)
    elif gout == "scalar":
        kw["grad_output"] = -0.6
    return x, t, kw


def _objective(x, t, kw):
    """The scalar whose gradient cross_entropy_with_grad returns: sum(grad_output * loss)."""
    kw = dict(kw)
    g = kw.pop("grad_output", 1.0)
    loss = fastxent.cross_entropy(x, t, **kw)
    return float(np.sum(np.asarray(g) * np.asarray(loss, dtype=np.float64)))


OPTIONS = [o for o in itertools.product([False, True], ["none", "default", "custom"], [0.0, 0.2, 1.0],
                                        REDUCTIONS, ["one", "scalar", "per_row"])
           if o[4] != "per_row" or o[3] == "none"]


@pytest.mark.parametrize("weight, ignore, eps, reduction, gout", OPTIONS)
def test_grad_matches_finite_differences(weight, ignore, eps, reduction, gout, rng):
    n, c = 6, 4
    x, t, kw = _case(rng, n, c, weight, ignore, eps, reduction, gout)
    _, grad = fastxent.cross_entropy_with_grad(x, t, **kw)
    fd = _finite_differences(lambda z: _objective(z, t, kw), x)
    # central differences with h = 1e-5: truncation ~h^2 = 1e-10, rounding ~1e-16 / h = 1e-11
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8 * grad_unit(t, **kw))
    if ignore != "none":
        ignored = t == kw.get("ignore_index", -100)
        assert np.all(grad[ignored] == 0)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("weight, ignore, eps, reduction, gout", OPTIONS)
def test_grad_matches_reference(weight, ignore, eps, reduction, gout, dtype, rng):
    n, c = 40, 13
    x, t, kw = _case(rng, n, c, weight, ignore, eps, reduction, gout)
    x = x.astype(dtype)
    loss, grad = fastxent.cross_entropy_with_grad(x, t, **kw)
    assert grad.dtype == dtype
    assert_with_grad_close(loss, grad, x, t, dtype, **kw)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("eps", [0.0, 0.3])
def test_grad_with_masked_classes_matches_finite_differences(reduction, eps, rng):
    """-inf logits are masked classes: gradient exactly 0 there (without smoothing; with smoothing
    it is -s * eps / C * w[c], as in torch), finite differences elsewhere."""
    n, c = 5, 6
    x = make_logits(rng, n, c, np.float64, scale=2.0)
    t = np.array([0, 1, 2, 3, 4])
    x[0, 3] = x[1, [0, 5]] = x[4, 1] = -np.inf
    kw = dict(reduction=reduction, label_smoothing=eps)
    _, grad = fastxent.cross_entropy_with_grad(x, t, **kw)
    masked = np.isneginf(x)
    assert np.all(np.isfinite(grad))
    s = 1.0 / n if reduction == "mean" else 1.0
    np.testing.assert_allclose(grad[masked], -s * eps / c, rtol=1e-14, atol=0)
    assert_with_grad_close(*fastxent.cross_entropy_with_grad(x, t, **kw), x, t, np.float64, **kw)
    if eps == 0.0:    # with smoothing the loss is +inf (sum over a masked log-probability)
        fd = _finite_differences(lambda z: _objective(z, t, kw), x)
        np.testing.assert_allclose(grad[~masked], fd[~masked], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("weight", [False, True])
@pytest.mark.parametrize("eps", [0.0, 0.4])
def test_grad_rows_sum_to_zero(weight, eps, dtype, rng):
    """sum_c d(loss)/d(logit_c) = 0 for every row: the loss is invariant to adding a constant."""
    n, c = 64, 33
    x = make_logits(rng, n, c, dtype)
    t = rng.integers(0, c, n)
    w = rng.uniform(0.2, 2.0, c) if weight else None
    _, grad = fastxent.cross_entropy_with_grad(x, t, weight=w, label_smoothing=eps, reduction="sum")
    scale = 1.0 if w is None else w.max()
    atol = {np.float32: 1e-6, np.float64: 1e-14}[dtype] * c * scale
    np.testing.assert_allclose(grad.astype(np.float64).sum(axis=1), 0.0, atol=atol)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_grad_is_linear_in_grad_output(reduction, dtype, rng):
    n, c = 30, 7
    x = make_logits(rng, n, c, dtype)
    t = rng.integers(0, c, n)
    _, g1 = fastxent.cross_entropy_with_grad(x, t, reduction=reduction)
    for a in (0.0, 2.0, -3.5):
        _, ga = fastxent.cross_entropy_with_grad(x, t, reduction=reduction, grad_output=a)
        np.testing.assert_allclose(ga, a * g1.astype(np.float64), rtol=1e-6 if dtype == np.float32 else 1e-14,
                                   atol=1e-7 if dtype == np.float32 else 1e-16)
    if reduction == "none":
        g = rng.uniform(-2, 2, n)
        _, gr = fastxent.cross_entropy_with_grad(x, t, reduction="none", grad_output=g)
        np.testing.assert_allclose(gr, g[:, None] * g1.astype(np.float64),
                                   rtol=1e-6 if dtype == np.float32 else 1e-14,
                                   atol=1e-7 if dtype == np.float32 else 1e-16)


def test_softmax_is_gradient_of_logsumexp(rng):
    x = make_logits(rng, 4, 9, np.float64)
    fd = _finite_differences(lambda z: float(np.sum(fastxent.logsumexp(z))), x)
    np.testing.assert_allclose(fastxent.softmax(x), fd, rtol=1e-6, atol=1e-9)


def test_mean_gradient_is_sum_gradient_over_total_weight(rng):
    n, c = 50, 8
    x = make_logits(rng, n, c, np.float64)
    t = rng.integers(0, c, n)
    t[::4] = -100
    w = rng.uniform(0.2, 2.0, c)
    _, g_mean = fastxent.cross_entropy_with_grad(x, t, weight=w, reduction="mean", label_smoothing=0.1)
    _, g_sum = fastxent.cross_entropy_with_grad(x, t, weight=w, reduction="sum", label_smoothing=0.1)
    total = w[t[t != -100]].sum()
    np.testing.assert_allclose(g_mean, g_sum / total, rtol=1e-13, atol=1e-17)
