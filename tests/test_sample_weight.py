"""``sample_weight=`` (one weight per row) in cross_entropy, cross_entropy_with_grad,
cross_entropy_from_probs and cross_entropy_from_probs_with_grad: the weighted mean of
scikit-learn's ``log_loss(sample_weight=)``, the gradient scaled per row, against the NumPy
reference, scikit-learn and finite differences.
"""
import numpy as np
import pytest
import scipy.special as sp
from sklearn.metrics import log_loss

import fastxent
from fastxent import reference as ref
from tests.conftest import FLOAT_DTYPES, assert_close, finite_differences

N, C = 9, 5


def _case(rng, dtype=np.float64, n=N, c=C):
    x = (rng.standard_normal((n, c)) * 2).astype(dtype)
    t = rng.integers(0, c, n)
    s = rng.uniform(0, 3, n)
    return x, t, s


# ------------------------------------------------------------------ against scikit-learn
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_weighted_mean_is_sklearn_log_loss(dtype, rng):
    x, t, s = _case(rng, dtype)
    want = log_loss(t, sp.softmax(x.astype(np.float64), axis=1), sample_weight=s,
                    labels=np.arange(C))
    assert_close(fastxent.cross_entropy(x, t, sample_weight=s), want, dtype)
    assert_close(fastxent.cross_entropy_with_grad(x, t, sample_weight=s)[0], want, dtype)


@pytest.mark.filterwarnings("ignore:The y_prob values do not sum to one")   # float32 rows
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("labels", [True, False], ids=["labels", "one-hot"])
def test_from_probs_weighted_mean_is_sklearn_log_loss(dtype, labels, rng):
    t = rng.integers(0, C, N)
    q = rng.dirichlet(np.ones(C), N).astype(dtype)
    s = rng.uniform(0, 3, N)
    p = t if labels else np.eye(C, dtype=dtype)[t]
    want = log_loss(t, q.astype(np.float64), sample_weight=s, labels=np.arange(C))
    assert_close(fastxent.cross_entropy_from_probs(p, q, sample_weight=s), want, dtype)
    assert_close(fastxent.cross_entropy_from_probs_with_grad(p, q, sample_weight=s)[0], want,
                 dtype)


# ------------------------------------------------------------------ against the reference
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("opts", [
    {}, dict(weight="w"), dict(ignore_index=2), dict(label_smoothing=0.2),
    dict(weight="w", ignore_index=1, label_smoothing=0.1), dict(soft=True),
    dict(soft=True, weight="w", label_smoothing=0.3), dict(z_loss=1e-2, return_z_loss=True),
    dict(base=2), dict(softcap=3.0, logit_scale=0.7),
], ids=lambda o: ",".join(o) or "plain")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_cross_entropy_matches_reference(reduction, opts, dtype, rng):
    opts = dict(opts)
    x, t, s = _case(rng, dtype)
    s[3] = 0.0
    s[4] = -0.5                                     # negative weights as torch's class weights
    if opts.pop("weight", None):
        opts["weight"] = rng.uniform(0.2, 2.0, C)
    if opts.pop("soft", False):
        t = rng.dirichlet(np.ones(C), N).astype(dtype)
    kw = dict(reduction=reduction, sample_weight=s, **opts)
    got = fastxent.cross_entropy(x, t, **kw)
    want = ref.cross_entropy(x.astype(np.float64), t, **kw)
    for g, w in zip(*(v if isinstance(v, tuple) else (v,) for v in (got, want))):
        assert_close(g, w, dtype)
    *losses, grad = fastxent.cross_entropy_with_grad(x, t, grad_output=1.5, **kw)
    *rlosses, rgrad = ref.cross_entropy_with_grad(x.astype(np.float64), t, grad_output=1.5, **kw)
    for g, w in zip(losses, rlosses):
        assert_close(g, w, dtype)
    assert_close(grad, rgrad, dtype, scale=float(np.abs(rgrad).max()))


@pytest.mark.parametrize("axis", [1, -1])
def test_nd_logits_and_per_row_grad_output(axis, rng):
    x = rng.standard_normal((3, C, 4)) if axis == 1 else rng.standard_normal((3, 4, C))
    t = rng.integers(0, C, (3, 4))
    s = rng.uniform(0, 2, (3, 4))
    g = rng.standard_normal((3, 4))
    kw = dict(axis=axis, reduction="none", sample_weight=s, grad_output=g)
    loss, grad = fastxent.cross_entropy_with_grad(x, t, **kw)
    rloss, rgrad = ref.cross_entropy_with_grad(x, t, **kw)
    assert_close(loss, rloss, np.float64)
    assert_close(grad, rgrad, np.float64)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("labels", [True, False], ids=["labels", "probs"])
def test_from_probs_matches_reference(reduction, labels, rng):
    q = rng.dirichlet(np.ones(C), N)
    p = rng.integers(0, C, N) if labels else rng.dirichlet(np.ones(C), N)
    s = rng.uniform(0, 3, N)
    kw = dict(reduction=reduction, sample_weight=s, base=2)
    assert_close(fastxent.cross_entropy_from_probs(p, q, **kw),
                 ref.cross_entropy_from_probs(p, q, **kw), np.float64)
    loss, grad = fastxent.cross_entropy_from_probs_with_grad(p, q, **kw)
    rloss, rgrad = ref.cross_entropy_from_probs_with_grad(p, q, **kw)
    assert_close(loss, rloss, np.float64)
    assert_close(grad, rgrad, np.float64)


# ------------------------------------------------------------------ properties
def test_integer_weight_repeats_the_row(rng):
    """A row of weight 2 counts as that row twice (the mean of sklearn's sample_weight)."""
    x, t, _ = _case(rng)
    s = np.ones(N)
    s[0] = 2.0
    rep_x, rep_t = np.concatenate([x, x[:1]]), np.concatenate([t, t[:1]])
    w = rng.uniform(0.5, 2, C)
    assert_close(fastxent.cross_entropy(x, t, sample_weight=s, weight=w),
                 fastxent.cross_entropy(rep_x, rep_t, weight=w), np.float64)
    q = sp.softmax(x, axis=1)
    assert_close(fastxent.cross_entropy_from_probs(t, q, sample_weight=s),
                 fastxent.cross_entropy_from_probs(rep_t, sp.softmax(rep_x, axis=1)), np.float64)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gradient_is_the_derivative_of_the_weighted_loss(reduction, rng):
    x, t, s = _case(rng, n=4, c=3)
    w = rng.uniform(0.5, 2, 3)

    def f(z):
        return float(fastxent.cross_entropy(z, t, weight=w, sample_weight=s, reduction=reduction,
                                            label_smoothing=0.1))

    _, grad = fastxent.cross_entropy_with_grad(x, t, weight=w, sample_weight=s,
                                               reduction=reduction, label_smoothing=0.1)
    np.testing.assert_allclose(grad, finite_differences(f, x), rtol=1e-6, atol=1e-9)
    q = sp.softmax(x, axis=1)
    _, gq = fastxent.cross_entropy_from_probs_with_grad(t, q, sample_weight=s, reduction=reduction)
    fd = finite_differences(lambda z: float(fastxent.cross_entropy_from_probs(
        t, z, sample_weight=s, reduction=reduction)), q, h=1e-7)
    np.testing.assert_allclose(gq, fd, rtol=1e-5, atol=1e-7)


def test_unit_weights_change_nothing(rng):
    x, t, _ = _case(rng)
    for reduction in ("mean", "sum", "none"):
        assert_close(fastxent.cross_entropy(x, t, reduction=reduction, sample_weight=np.ones(N)),
                     fastxent.cross_entropy(x, t, reduction=reduction), np.float64)


def test_zero_total_weight_gives_nan_mean(rng):
    x, t, _ = _case(rng)
    assert np.isnan(fastxent.cross_entropy(x, t, sample_weight=np.zeros(N)))
    assert fastxent.cross_entropy(x, t, sample_weight=np.zeros(N), reduction="sum") == 0.0
    assert np.isnan(fastxent.cross_entropy_from_probs(t, sp.softmax(x, axis=1),
                                                      sample_weight=np.zeros(N)))


def test_bit_identical_for_any_thread_count(rng):
    x, t, s = _case(rng, np.float32, n=40000, c=8)
    runs = [fastxent.cross_entropy_with_grad(x, t, sample_weight=s, num_threads=n)
            for n in (1, 2, 3)]
    for loss, grad in runs[1:]:
        assert loss == runs[0][0] and np.array_equal(grad, runs[0][1])


def test_sample_weight_is_not_modified(rng):
    x, t, s = _case(rng)
    s0 = s.copy()
    fastxent.cross_entropy_with_grad(x, t, sample_weight=s)
    fastxent.cross_entropy_from_probs_with_grad(t, sp.softmax(x, axis=1), sample_weight=s)
    assert np.array_equal(s, s0)


# ------------------------------------------------------------------ errors
FUNCS = [
    lambda s: fastxent.cross_entropy(np.zeros((N, C)), np.zeros(N, int), sample_weight=s),
    lambda s: fastxent.cross_entropy_with_grad(np.zeros((N, C)), np.zeros(N, int), sample_weight=s),
    lambda s: fastxent.cross_entropy_from_probs(np.zeros(N, int), np.ones((N, C)) / C,
                                                sample_weight=s),
    lambda s: fastxent.cross_entropy_from_probs_with_grad(np.zeros(N, int), np.ones((N, C)) / C,
                                                          sample_weight=s),
]


@pytest.mark.parametrize("func", FUNCS, ids=["ce", "ce_grad", "probs", "probs_grad"])
@pytest.mark.parametrize("s, exc", [
    (np.ones(N + 1), ValueError), (np.ones((N, 1)), ValueError), (1.0, ValueError),
    (np.full(N, np.nan), ValueError), (np.full(N, np.inf), ValueError),
    (np.array(["a"] * N), TypeError), (np.ones(N, complex), TypeError),
    (np.ones(N, object), TypeError), ("abc", TypeError), ([[1.0], [1.0, 2.0]], TypeError),
], ids=["long", "2d", "scalar", "nan", "inf", "str", "complex", "object", "string", "ragged"])
def test_bad_sample_weight(func, s, exc):
    with pytest.raises(exc, match=r"^sample_weight\b"):
        func(s)


# ------------------------------------------------------------------ nll_loss
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_nll_loss_of_log_softmax_is_cross_entropy(reduction, rng):
    x, t, s = _case(rng)
    t[2] = -100
    w = rng.uniform(0.5, 2, C)
    kw = dict(reduction=reduction, sample_weight=s, weight=w)
    lp = sp.log_softmax(x, axis=1)
    assert_close(fastxent.nll_loss(lp, t, **kw), fastxent.cross_entropy(x, t, **kw), np.float64)
    loss, grad = fastxent.nll_loss_with_grad(lp, t, **kw)
    rloss, rgrad = ref.nll_loss_with_grad(lp, t, **kw)
    assert_close(loss, rloss, np.float64)
    assert_close(grad, rgrad, np.float64)


def test_nll_loss_unbatched_as_torch(rng):
    import torch
    import torch.nn.functional as F

    lp = sp.log_softmax(rng.standard_normal(5))
    want = F.nll_loss(torch.from_numpy(lp), torch.tensor(3)).item()
    got = fastxent.nll_loss(lp, 3)
    assert isinstance(got, np.float64)
    assert_close(got, want, np.float64)
