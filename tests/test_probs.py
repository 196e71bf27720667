"""The probability-space family: cross_entropy_from_probs (+ grad), entropy, kl_divergence,
perplexity.  Binary cross-entropy (on probabilities and logits) is in test_binary.py.

Each function against fastxent.reference (float64 ground truth, tolerances from conftest.TOL),
mpmath, torch, textbook values, central finite differences, extremes, thread counts, errors.
"""
import math

import mpmath
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastxent
from fastxent import reference as ref
from tests.conftest import FLOAT_DTYPES, LAYOUTS_2D, assert_close, f64, in_layout

# run under every instruction-set level this CPU supports (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("every_isa")

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
REDUCTIONS = ["mean", "sum", "none"]
BASES = [None, math.e, 2, 10, 0.5]


def starts(name):
    return rf"^{name}\b"


def dirichlet(rng, shape, dtype=np.float64, alpha=1.0):
    """Rows of probabilities along the last axis of ``shape``."""
    return rng.dirichlet(np.full(shape[-1], alpha), size=shape[:-1]).astype(dtype)


def ref_eps(dtype):
    """fastxent's default eps for ``dtype``, to hand to the float64 reference."""
    return float(np.finfo(dtype).eps)


# ============================================================================ textbook values
def test_textbook_one_hot():
    loss = fastxent.cross_entropy_from_probs([0, 1, 0], [0.228, 0.619, 0.153])
    np.testing.assert_allclose(loss, 0.47965000629754095, rtol=1e-15)
    assert type(loss) is np.float64


def test_textbook_soft():
    loss = fastxent.cross_entropy_from_probs([0.2, 0.3, 0.5], [0.3, 0.3, 0.4])
    np.testing.assert_allclose(loss, 1.0601317681000455, rtol=1e-15)


def test_textbook_label_matches_one_hot():
    q = np.array([[0.228, 0.619, 0.153], [0.1, 0.2, 0.7]])
    by_label = fastxent.cross_entropy_from_probs(np.array([1, 2]), q, reduction="none")
    one_hot = fastxent.cross_entropy_from_probs(np.eye(3)[[1, 2]], q, reduction="none")
    np.testing.assert_allclose(by_label, [0.47965000629754095, -math.log(0.7)], rtol=1e-15)
    np.testing.assert_array_equal(by_label, one_hot)


def test_textbook_entropy_and_kl():
    assert fastxent.entropy([0.5, 0.5], base=2) == 1.0
    np.testing.assert_allclose(fastxent.entropy([0.25] * 4), math.log(4), rtol=1e-15)
    np.testing.assert_allclose(fastxent.kl_divergence([0.5, 0.5], [0.9, 0.1]),
                               0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1), rtol=1e-15)


def test_textbook_bits():
    # a fair coin predicted as (0.25, 0.75): 0.5 * 2 + 0.5 * log2(4/3) bits
    np.testing.assert_allclose(fastxent.cross_entropy_from_probs([0.5, 0.5], [0.25, 0.75], base=2),
                               1.0 + 0.5 * math.log2(4 / 3), rtol=1e-15)


def test_sklearn_log_loss_convention():
    # sklearn.metrics.log_loss(y, q) = mean_i -log clip(q[i, y_i], eps, 1 - eps)
    y = np.array([0, 2, 1])
    q = np.array([[0.9, 0.05, 0.05], [0.0, 0.0, 1.0], [0.2, 0.5, 0.3]])
    expected = -(math.log(0.9) + math.log(1.0) + math.log(0.5)) / 3
    np.testing.assert_allclose(fastxent.cross_entropy_from_probs(y, q), expected, rtol=1e-15)


# ============================================================================ vs the reference
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS_2D)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_xent_probs_vs_reference(rng, dtype, layout, reduction):
    p = in_layout(dirichlet(rng, (37, 11), dtype, 0.5), layout)
    q = in_layout(dirichlet(rng, (37, 11), dtype, 0.5), layout)
    got = fastxent.cross_entropy_from_probs(p, q, reduction=reduction)
    exp = ref.cross_entropy_from_probs(f64(p), f64(q), reduction=reduction, eps=ref_eps(dtype))
    assert_close(got, exp, dtype)
    assert np.asarray(got).dtype == dtype


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS_2D)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_xent_probs_grad_vs_reference(rng, dtype, layout, reduction):
    p = in_layout(dirichlet(rng, (23, 9), dtype), layout)
    q = in_layout(dirichlet(rng, (23, 9), dtype), layout)
    go = rng.uniform(0.5, 2.0, 23) if reduction == "none" else 1.7
    loss, grad = fastxent.cross_entropy_from_probs_with_grad(p, q, reduction=reduction,
                                                             grad_output=go)
    el, eg = ref.cross_entropy_from_probs_with_grad(f64(p), f64(q), reduction=reduction,
                                                    grad_output=go, eps=ref_eps(dtype))
    assert_close(loss, el, dtype)
    assert_close(grad, eg, dtype)
    assert grad.dtype == dtype and grad.shape == q.shape


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("label_dtype", [np.int64, np.int32, np.uint8, np.int16])
def test_xent_probs_labels_vs_reference(rng, dtype, reduction, label_dtype):
    q = dirichlet(rng, (40, 7), dtype)
    y = rng.integers(0, 7, 40).astype(label_dtype)
    loss, grad = fastxent.cross_entropy_from_probs_with_grad(y, q, reduction=reduction)
    el, eg = ref.cross_entropy_from_probs_with_grad(y, f64(q), reduction=reduction,
                                                    eps=ref_eps(dtype))
    assert_close(loss, el, dtype)
    assert_close(grad, eg, dtype)
    assert_close(fastxent.cross_entropy_from_probs(y, q, reduction=reduction), el, dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_xent_probs_nd_axis(rng, dtype, axis):
    shape = (3, 5, 4)
    p = np.moveaxis(dirichlet(rng, (3, 5, 4), dtype), -1, axis)
    q = np.moveaxis(dirichlet(rng, (3, 5, 4), dtype), -1, axis)
    assert p.shape[axis] == shape[-1]
    for reduction in REDUCTIONS:
        got = fastxent.cross_entropy_from_probs(p, q, axis=axis, reduction=reduction)
        exp = ref.cross_entropy_from_probs(f64(p), f64(q), axis=axis, reduction=reduction,
                                           eps=ref_eps(dtype))
        assert_close(got, exp, dtype)
    loss, grad = fastxent.cross_entropy_from_probs_with_grad(p, q, axis=axis, reduction="sum")
    _, eg = ref.cross_entropy_from_probs_with_grad(f64(p), f64(q), axis=axis, reduction="sum",
                                                   eps=ref_eps(dtype))
    assert_close(grad, eg, dtype)
    labels = np.argmax(p, axis=axis)
    got = fastxent.cross_entropy_from_probs(labels, q, axis=axis, reduction="none")
    exp = ref.cross_entropy_from_probs(labels, f64(q), axis=axis, reduction="none",
                                       eps=ref_eps(dtype))
    assert_close(got, exp, dtype)


@pytest.mark.parametrize("base", BASES)
def test_xent_probs_base(rng, base):
    p, q = dirichlet(rng, (10, 6)), dirichlet(rng, (10, 6))
    nats = fastxent.cross_entropy_from_probs(p, q, reduction="none")
    got = fastxent.cross_entropy_from_probs(p, q, reduction="none", base=base)
    unit = 1.0 if base is None else math.log(base)
    np.testing.assert_allclose(got, nats / unit, rtol=1e-15)
    _, g = fastxent.cross_entropy_from_probs_with_grad(p, q, base=base)
    _, g0 = fastxent.cross_entropy_from_probs_with_grad(p, q)
    np.testing.assert_allclose(g, g0 / unit, rtol=1e-15)


def test_xent_probs_mixed_dtypes(rng):
    p = dirichlet(rng, (5, 4))
    q32 = dirichlet(rng, (5, 4), np.float32)
    assert fastxent.cross_entropy_from_probs(p, q32).dtype == np.float64
    assert fastxent.cross_entropy_from_probs(p.astype(np.float32), q32).dtype == np.float32
    # integer one-hot / float16 targets are converted to q's dtype
    onehot = np.eye(4, dtype=np.int64)[[0, 1, 2, 3, 0]]
    assert fastxent.cross_entropy_from_probs(onehot, q32).dtype == np.float32
    assert_close(fastxent.cross_entropy_from_probs(onehot, q32),
                 fastxent.cross_entropy_from_probs(np.array([0, 1, 2, 3, 0]), q32), np.float32)
    assert fastxent.cross_entropy_from_probs(p.astype(np.float16), q32).dtype == np.float32
    assert fastxent.cross_entropy_from_probs(onehot.astype(bool), q32).dtype == np.float32


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS_2D)
def test_entropy_vs_reference(rng, dtype, layout):
    p = in_layout(dirichlet(rng, (31, 13), dtype, 0.3), layout)
    p[0, :3] = 0
    for axis in (0, 1):
        for base in (None, 2):
            got = fastxent.entropy(p, axis=axis, base=base)
            assert_close(got, ref.entropy(f64(p), axis=axis, base=base), dtype)
            assert got.dtype == dtype and got.shape == (p.shape[1 - axis],)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS_2D)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean", "batchmean"])
@pytest.mark.parametrize("logs", [(False, False), (True, False), (False, True), (True, True)],
                         ids=["probs", "log_q", "log_p", "log_both"])
def test_kl_vs_reference(rng, dtype, layout, reduction, logs):
    log_q, log_p = logs
    p = dirichlet(rng, (19, 8), np.float64, 0.5)
    q = dirichlet(rng, (19, 8), np.float64, 0.5)
    p[0, 0] = 0.0                   # 0 log 0 = 0
    with np.errstate(divide="ignore"):
        pin = in_layout((np.log(p) if log_p else p).astype(dtype), layout)
    qin = in_layout((np.log(q) if log_q else q).astype(dtype), layout)
    got = fastxent.kl_divergence(pin, qin, reduction=reduction, log_q=log_q, log_p=log_p)
    exp = ref.kl_divergence(f64(pin), f64(qin), reduction=reduction, log_q=log_q, log_p=log_p)
    assert_close(got, exp, dtype)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_kl_nd_axis_and_base(rng, axis):
    p = np.moveaxis(dirichlet(rng, (2, 3, 6)), -1, axis)
    q = np.moveaxis(dirichlet(rng, (2, 3, 6)), -1, axis)
    got = fastxent.kl_divergence(p, q, axis=axis, base=2)
    assert_close(got, ref.kl_divergence(p, q, axis=axis, base=2), np.float64)
    np.testing.assert_allclose(got * math.log(2), fastxent.kl_divergence(p, q, axis=axis),
                               rtol=1e-15)


def test_one_d_inputs_give_scalars():
    p, q = np.array([0.2, 0.8]), np.array([0.5, 0.5])
    for value in (fastxent.entropy(p), fastxent.kl_divergence(p, q),
                  fastxent.cross_entropy_from_probs(p, q, reduction="none"),
                  fastxent.cross_entropy_from_probs(np.int64(1), q, reduction="none")):
        assert type(value) is np.float64
    assert fastxent.cross_entropy_from_probs(np.int64(1), q) == np.float64(-math.log(0.5))


# ============================================================================ mpmath
def _mp_xent(p, q, eps):
    with mpmath.workdps(50):
        total = mpmath.mpf(0)
        for pi, qi in zip(p.ravel().tolist(), q.ravel().tolist()):
            if pi != 0:
                total -= mpmath.mpf(pi) * mpmath.log(min(max(mpmath.mpf(qi), eps), 1))
        return float(total)


def test_xent_probs_vs_mpmath(rng):
    p = dirichlet(rng, (6, 9), alpha=0.2)
    q = dirichlet(rng, (6, 9), alpha=0.2)
    q[0, 1] = 0.0
    q[1, 2] = 1e-300
    q[2, 3] = 5e-324
    got = fastxent.cross_entropy_from_probs(p, q, reduction="none")
    exp = [_mp_xent(p[i], q[i], np.finfo(np.float64).eps) for i in range(6)]
    np.testing.assert_allclose(got, exp, rtol=1e-14)
    got = fastxent.cross_entropy_from_probs(p, q, reduction="none", eps=0.0)
    exp = [_mp_xent(p[i], q[i], 0) if q[i].min() > 0 else math.inf for i in range(6)]
    np.testing.assert_allclose(got[1:], exp[1:], rtol=1e-14)
    assert got[0] == (math.inf if p[0, 1] > 0 else got[0])


def test_entropy_and_kl_vs_mpmath(rng):
    p = dirichlet(rng, (5, 12), alpha=0.3)
    q = dirichlet(rng, (5, 12), alpha=0.3)
    p[0, :4] = 0.0
    p[1, 0] = 1e-310                          # subnormal probability
    with mpmath.workdps(50):
        H = [float(-mpmath.fsum(mpmath.mpf(x) * mpmath.log(x) for x in row.tolist() if x))
             for row in p]
        KL = [float(mpmath.fsum(mpmath.mpf(a) * (mpmath.log(a) - mpmath.log(b))
                                for a, b in zip(pr.tolist(), qr.tolist()) if a))
              for pr, qr in zip(p, q)]
    np.testing.assert_allclose(fastxent.entropy(p), H, rtol=1e-14)
    np.testing.assert_allclose(fastxent.kl_divergence(p, q), KL, rtol=1e-12)


def test_vector_log_all_ranges():
    # the kernels' log is exercised through entropy terms p log p over every binade
    p = np.concatenate([2.0 ** np.arange(-1074, 1, 7.0), np.linspace(0.001, 1, 50)])
    terms = np.array([fastxent.entropy(np.array([x, 0.0])) for x in p])
    with mpmath.workdps(40):
        exp = np.array([float(-mpmath.mpf(x) * mpmath.log(x)) for x in p.tolist()])
    np.testing.assert_allclose(terms, exp, rtol=4e-16, atol=0)
    p32 = p[p >= 2.0 ** -149].astype(np.float32)
    terms = np.array([fastxent.entropy(np.array([x, 0], np.float32)) for x in p32])
    exp32 = -p32.astype(np.float64) * np.log(p32.astype(np.float64))
    np.testing.assert_allclose(terms, exp32, rtol=5e-7, atol=1e-44)


# ============================================================================ finite differences
def test_xent_probs_grad_finite_differences(rng):
    p = dirichlet(rng, (4, 5))
    q = rng.uniform(0.05, 0.95, (4, 5))
    for reduction in ("mean", "sum"):
        _, g = fastxent.cross_entropy_from_probs_with_grad(p, q, reduction=reduction, base=3)
        h = 1e-6
        fd = np.empty_like(q)
        for idx in np.ndindex(q.shape):
            qp, qm = q.copy(), q.copy()
            qp[idx] += h
            qm[idx] -= h
            up = fastxent.cross_entropy_from_probs(p, qp, reduction=reduction, base=3)
            down = fastxent.cross_entropy_from_probs(p, qm, reduction=reduction, base=3)
            fd[idx] = (up - down) / (2 * h)
        np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-9)


def test_xent_probs_grad_clipped_is_zero():
    p = np.array([[0.5, 0.5, 0.0]])
    q = np.array([[0.0, 1.0, 0.5]])
    loss, g = fastxent.cross_entropy_from_probs_with_grad(p, q, reduction="sum")
    np.testing.assert_allclose(loss, -0.5 * math.log(np.finfo(float).eps), rtol=1e-15)
    np.testing.assert_array_equal(g, [[0.0, -0.5, 0.0]])      # clipped entry and p == 0: 0
    loss, g = fastxent.cross_entropy_from_probs_with_grad(p, q, reduction="sum", eps=0.0)
    assert loss == math.inf and g[0, 0] == -math.inf and g[0, 2] == 0.0


# ============================================================================ torch
@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides:UserWarning")
def test_kl_matches_torch_kl_div(rng):
    p = dirichlet(rng, (6, 10))
    q = dirichlet(rng, (6, 10))
    tp, tlq = torch.from_numpy(p), torch.from_numpy(np.log(q))
    for reduction in ("sum", "mean", "batchmean"):
        t = F.kl_div(tlq, tp, reduction=reduction).item()
        np.testing.assert_allclose(fastxent.kl_divergence(p, np.log(q), log_q=True,
                                                          reduction=reduction), t, rtol=1e-13)
        t = F.kl_div(tlq, torch.log(tp), reduction=reduction, log_target=True).item()
        np.testing.assert_allclose(fastxent.kl_divergence(np.log(p), np.log(q), log_q=True,
                                                          log_p=True, reduction=reduction),
                                   t, rtol=1e-13)
    # torch's elementwise "none" summed over the class axis is our per-row "none"
    t = F.kl_div(tlq, tp, reduction="none").sum(-1).numpy()
    np.testing.assert_allclose(fastxent.kl_divergence(p, np.log(q), log_q=True), t, rtol=1e-13)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_xent_probs_labels_matches_torch_nll(rng, dtype):
    q = dirichlet(rng, (20, 6), dtype)
    y = rng.integers(0, 6, 20)
    tq = torch.from_numpy(q).requires_grad_(True)
    t = F.nll_loss(torch.log(tq), torch.from_numpy(y))
    t.backward()
    loss, g = fastxent.cross_entropy_from_probs_with_grad(y, q)
    assert_close(loss, t.item(), dtype)
    assert_close(g, tq.grad.numpy(), dtype)


def test_entropy_matches_torch_categorical(rng):
    p = dirichlet(rng, (7, 9), alpha=0.4)
    t = torch.distributions.Categorical(probs=torch.from_numpy(p)).entropy().numpy()
    np.testing.assert_allclose(fastxent.entropy(p), t, rtol=1e-13)


def test_perplexity_matches_torch(rng):
    x = rng.standard_normal((30, 12)) * 2
    y = rng.integers(0, 12, 30)
    y[3] = -100
    t = torch.exp(F.cross_entropy(torch.from_numpy(x), torch.from_numpy(y))).item()
    np.testing.assert_allclose(fastxent.perplexity(x, y), t, rtol=1e-13)
    for base in (2, 10, None, math.e):
        np.testing.assert_allclose(fastxent.perplexity(x, y, base=base), t, rtol=1e-13)
    w = rng.uniform(0.5, 2, 12)
    t = torch.exp(F.cross_entropy(torch.from_numpy(x), torch.from_numpy(y),
                                  weight=torch.from_numpy(w), reduction="none")).numpy()
    np.testing.assert_allclose(fastxent.perplexity(x, y, weight=w, reduction="none"), t, rtol=1e-13)
    x32 = x.astype(np.float32)
    assert fastxent.perplexity(x32, y).dtype == np.float32
    np.testing.assert_allclose(fastxent.perplexity(x, y),
                               ref.perplexity(x, y, ignore_index=-100), rtol=1e-13)


def test_perplexity_of_uniform_predictions_is_class_count():
    x = np.zeros((5, 17))
    np.testing.assert_allclose(fastxent.perplexity(x, np.arange(5)), 17.0, rtol=1e-14)


# ============================================================================ extremes
def test_xent_probs_zero_q_default_eps_is_finite():
    for dtype in FLOAT_DTYPES:
        q = np.array([[0.0, 1.0]], dtype)
        loss = fastxent.cross_entropy_from_probs(np.array([0]), q)
        assert np.isfinite(loss)
        assert_close(loss, -math.log(np.finfo(dtype).eps), dtype)
        assert fastxent.cross_entropy_from_probs(np.array([0]), q, eps=0) == math.inf


def test_zero_times_log_zero_is_zero():
    p = np.array([[0.0, 1.0, 0.0]])
    q = np.array([[0.0, 1.0, 0.0]])
    assert fastxent.cross_entropy_from_probs(p, q, eps=0.0) == 0.0
    assert fastxent.entropy(p)[0] == 0.0
    assert fastxent.kl_divergence(p, q)[0] == 0.0
    with np.errstate(divide="ignore"):
        lp, lq = np.log(p), np.log(q)
    assert fastxent.kl_divergence(p, lq, log_q=True)[0] == 0.0   # torch: nan
    assert fastxent.kl_divergence(lp, lq, log_p=True, log_q=True)[0] == 0.0
    assert fastxent.kl_divergence(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == math.inf


def test_q_above_one_is_clipped():
    assert fastxent.cross_entropy_from_probs([1.0, 0.0], [1.5, 0.0]) == 0.0


def test_nan_stays_in_its_row():
    q = np.full((3, 4), 0.25)
    q[1, 2] = np.nan
    p = np.full((3, 4), 0.25)
    got = fastxent.cross_entropy_from_probs(p, q, reduction="none")
    assert np.isnan(got[1]) and np.isfinite(got[[0, 2]]).all()
    _, g = fastxent.cross_entropy_from_probs_with_grad(p, q, reduction="none")
    assert np.isnan(g[1, 2]) and np.isfinite(np.delete(g, 1, axis=0)).all()
    assert np.isnan(fastxent.cross_entropy_from_probs(p, q))
    h = fastxent.entropy(q)
    assert np.isnan(h[1]) and np.isfinite(h[[0, 2]]).all()
    k = fastxent.kl_divergence(p, q)
    assert np.isnan(k[1]) and np.isfinite(k[[0, 2]]).all()


def test_empty_rows():
    q = np.zeros((0, 5))
    assert np.isnan(fastxent.cross_entropy_from_probs(q, q))
    assert fastxent.cross_entropy_from_probs(q, q, reduction="sum") == 0.0
    assert fastxent.cross_entropy_from_probs(q, q, reduction="none").shape == (0,)
    loss, g = fastxent.cross_entropy_from_probs_with_grad(q, q)
    assert np.isnan(loss) and g.shape == (0, 5)
    assert fastxent.entropy(q).shape == (0,)
    assert fastxent.kl_divergence(q, q, reduction="sum") == 0.0


@pytest.mark.parametrize("c", [1, 2, 17, 2047, 2048, 2049, 4097])
@pytest.mark.parametrize("layout", ["C", "F", "cols_sliced", "rows_reversed"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_row_lengths_around_chunk_sizes(rng, c, layout, dtype):
    # rows of up to 2048 classes are computed in runs of whole rows, longer ones in chunks
    n = max(3, 5000 // c)
    p = in_layout(dirichlet(rng, (n, c), dtype, 0.5), layout)
    q = in_layout(dirichlet(rng, (n, c), dtype, 0.5), layout)
    y = rng.integers(0, c, n)
    eps = ref_eps(dtype)
    go = rng.uniform(0.5, 2, n)
    loss, g = fastxent.cross_entropy_from_probs_with_grad(p, q, reduction="none", grad_output=go)
    el, eg = ref.cross_entropy_from_probs_with_grad(f64(p), f64(q), reduction="none",
                                                    grad_output=go, eps=eps)
    assert_close(loss, el, dtype)
    assert_close(g, eg, dtype)
    loss, g = fastxent.cross_entropy_from_probs_with_grad(y, q, reduction="sum")
    el, eg = ref.cross_entropy_from_probs_with_grad(y, f64(q), reduction="sum", eps=eps)
    assert_close(loss, el, dtype)
    assert_close(g, eg, dtype)
    assert_close(fastxent.entropy(p), ref.entropy(f64(p)), dtype)
    assert_close(fastxent.kl_divergence(p, q), ref.kl_divergence(f64(p), f64(q)), dtype)


def test_huge_rows_and_many_rows(rng):
    # one row longer than a segment (split over threads), and many short rows
    for shape in [(2, 200_003), (50_000, 3)]:
        p = dirichlet(rng, shape)
        q = dirichlet(rng, shape)
        got = fastxent.cross_entropy_from_probs(p, q, reduction="none")
        assert_close(got, ref.cross_entropy_from_probs(p, q, reduction="none"), np.float64)
        assert_close(fastxent.entropy(p), ref.entropy(p), np.float64)
        assert_close(fastxent.kl_divergence(p, q), ref.kl_divergence(p, q), np.float64)


# ============================================================================ threads
@pytest.mark.parametrize("shape", [(3, 150_001), (1, 70_000), (5000, 40), (40_000, 2)])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_bit_identical_for_any_thread_count(rng, shape, dtype):
    p = dirichlet(rng, shape, dtype)
    q = dirichlet(rng, shape, dtype)
    y = rng.integers(0, shape[1], shape[0])

    def run(nt):
        return [fastxent.cross_entropy_from_probs(p, q, reduction="sum", num_threads=nt),
                fastxent.cross_entropy_from_probs(p, q, reduction="none", num_threads=nt),
                fastxent.cross_entropy_from_probs_with_grad(p, q, num_threads=nt)[1],
                fastxent.cross_entropy_from_probs_with_grad(y, q, num_threads=nt)[1],
                fastxent.entropy(p, num_threads=nt),
                fastxent.kl_divergence(p, q, reduction="sum", num_threads=nt)]

    base = run(1)
    for nt in (2, 3, 8):
        for a, b in zip(base, run(nt)):
            assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


# ============================================================================ properties
def _rows(draw, n, c):
    w = draw(hnp.arrays(np.float64, (n, c), elements=st.floats(0.0, 1.0)))
    w[:, 0] += 1e-3                                     # no all-zero row
    if draw(st.booleans()):
        zero = draw(hnp.arrays(np.bool_, (n, c), elements=st.booleans()))
        zero[:, 0] = False
        w[zero] = 0.0
    return w / w.sum(axis=1, keepdims=True)


@st.composite
def distributions(draw, max_c=12):
    return _rows(draw, draw(st.integers(1, 6)), draw(st.integers(1, max_c)))


@st.composite
def distribution_pairs(draw, max_c=12):
    n, c = draw(st.integers(1, 6)), draw(st.integers(1, max_c))
    return _rows(draw, n, c), _rows(draw, n, c)


@SETTINGS
@given(pq=distribution_pairs())
def test_gibbs_inequality(pq):
    """H(p, q) >= H(p), with equality iff q == p; KL >= 0 and H(p, q) = H(p) + KL(p || q)."""
    p, q = pq
    h_pq = fastxent.cross_entropy_from_probs(p, q, reduction="none", eps=0.0)
    h_p = fastxent.entropy(p)
    assert np.all(h_pq >= h_p - 1e-12 * np.maximum(1.0, np.abs(h_p)))
    same = fastxent.cross_entropy_from_probs(p, p, reduction="none", eps=0.0)
    np.testing.assert_allclose(same, h_p, rtol=1e-15, atol=1e-15)
    kl = fastxent.kl_divergence(p, q)
    assert np.all(kl >= -1e-12)
    finite = np.isfinite(h_pq)
    assert np.array_equal(finite, np.isfinite(kl))
    np.testing.assert_allclose(h_pq[finite], (h_p + kl)[finite], rtol=1e-10, atol=1e-12)
    differ = np.any(np.abs(p - q) > 1e-3, axis=1) & finite
    assert np.all(h_pq[differ] > h_p[differ])
    assert np.all(kl[differ] > 0)


@SETTINGS
@given(p=distributions())
def test_kl_self_is_zero_and_base_two_is_nats_over_ln2(p):
    assert np.all(fastxent.kl_divergence(p, p) == 0.0)
    q = np.roll(p, 1, axis=1)
    nats = fastxent.kl_divergence(p, q)
    bits = fastxent.kl_divergence(p, q, base=2)
    np.testing.assert_allclose(bits, nats / math.log(2), rtol=1e-15)
    np.testing.assert_allclose(fastxent.entropy(p, base=2), fastxent.entropy(p) / math.log(2),
                               rtol=1e-15)
    np.testing.assert_allclose(
        fastxent.cross_entropy_from_probs(p, q, base=2, reduction="none"),
        fastxent.cross_entropy_from_probs(p, q, reduction="none") / math.log(2), rtol=1e-15)


@SETTINGS
@given(p=distributions(), dtype=st.sampled_from(FLOAT_DTYPES),
       reduction=st.sampled_from(REDUCTIONS))
def test_property_xent_probs_vs_reference(p, dtype, reduction):
    q = np.roll(p, 1, axis=0).astype(dtype)
    p = p.astype(dtype)
    got = fastxent.cross_entropy_from_probs(p, q, reduction=reduction)
    assert_close(got, ref.cross_entropy_from_probs(f64(p), f64(q), reduction=reduction,
                                                   eps=ref_eps(dtype)), dtype)


# ============================================================================ out= and inputs
def test_inputs_not_modified_and_read_only_inputs(rng):
    p, q = dirichlet(rng, (8, 5)), dirichlet(rng, (8, 5))
    p.flags.writeable = False
    q.flags.writeable = False
    pc, qc = p.copy(), q.copy()
    fastxent.cross_entropy_from_probs_with_grad(p, q)
    fastxent.kl_divergence(p, q)
    fastxent.entropy(p)
    np.testing.assert_array_equal(p, pc)
    np.testing.assert_array_equal(q, qc)


def test_out_and_in_place(rng):
    p, q = dirichlet(rng, (8, 5)), dirichlet(rng, (8, 5))
    _, expected = fastxent.cross_entropy_from_probs_with_grad(p, q)
    out = np.empty_like(q)
    loss, g = fastxent.cross_entropy_from_probs_with_grad(p, q, out=out)
    assert g is out
    np.testing.assert_array_equal(out, expected)
    out = np.empty((5, 8)).T                                      # any layout
    fastxent.cross_entropy_from_probs_with_grad(p, q, out=out)
    np.testing.assert_array_equal(out, expected)
    q2 = q.copy()
    _, g = fastxent.cross_entropy_from_probs_with_grad(p, q2, out=q2)       # in place
    assert g is q2
    np.testing.assert_array_equal(q2, expected)
    y = np.array([0, 1, 2, 3, 4, 0, 1, 2])
    _, expected = fastxent.cross_entropy_from_probs_with_grad(y, q)
    q2 = q.copy()
    fastxent.cross_entropy_from_probs_with_grad(y, q2, out=q2)
    np.testing.assert_array_equal(q2, expected)


# ============================================================================ errors
def _xp(**kw):
    args = dict(p=np.full((4, 3), 1 / 3), q=np.full((4, 3), 1 / 3))
    args.update(kw)
    return fastxent.cross_entropy_from_probs(args.pop("p"), args.pop("q"), **args)


def _xpg(**kw):
    args = dict(p=np.full((4, 3), 1 / 3), q=np.full((4, 3), 1 / 3))
    args.update(kw)
    return fastxent.cross_entropy_from_probs_with_grad(args.pop("p"), args.pop("q"), **args)


XENT_FUNCS = [pytest.param(_xp, id="loss"), pytest.param(_xpg, id="with_grad")]
Q = np.full((4, 3), 1 / 3)


@pytest.mark.parametrize("func", XENT_FUNCS)
@pytest.mark.parametrize("kw, exc, name", [
    (dict(q=np.ones((4, 3), np.int64)), TypeError, "q"),
    (dict(q=np.ones((4, 3), np.complex128)), TypeError, "q"),
    (dict(q=np.ones((4, 3), np.float16)), TypeError, "q"),
    (dict(q=np.float64(0.5)), ValueError, "q"),
    (dict(q=np.ones((4, 0)), p=np.ones((4, 0))), ValueError, "q"),
    (dict(p=np.full((4, 2), 0.5)), ValueError, "p"),
    (dict(p=np.array([0.0, 1.0, 0.0, 1.0])), TypeError, "p"),
    (dict(p=np.array(["a", "b", "c", "d"])), TypeError, "p"),
    (dict(p=np.array([0, 1, 3, 1])), ValueError, "p"),
    (dict(p=np.array([0, -1, 2, 1])), ValueError, "p"),
    (dict(p=np.array([0, 1, 2, 2**64 - 1], np.uint64)), ValueError, "p"),
    (dict(p=-Q), ValueError, "p"),
    (dict(q=-Q), ValueError, "q"),
    (dict(p=np.array([0, 1, 2, 1]), q=-Q), ValueError, "q"),
    (dict(eps="0.1"), TypeError, "eps"),
    (dict(eps=1.0), ValueError, "eps"),
    (dict(eps=-1e-3), ValueError, "eps"),
    (dict(eps=math.nan), ValueError, "eps"),
    (dict(axis=1.0), TypeError, "axis"),
    (dict(axis=2), ValueError, "axis"),
    (dict(reduction="batchmean"), ValueError, "reduction"),
    (dict(base=1), ValueError, "base"),
    (dict(base=0), ValueError, "base"),
    (dict(base=-2.0), ValueError, "base"),
    (dict(base=math.inf), ValueError, "base"),
    (dict(base="2"), TypeError, "base"),
    (dict(num_threads=0), ValueError, "num_threads"),
    (dict(num_threads=2.0), TypeError, "num_threads"),
])
def test_xent_probs_errors(func, kw, exc, name):
    with pytest.raises(exc, match=starts(name)):
        func(**kw)


def test_label_error_message():
    with pytest.raises(ValueError, match=r"^p: label 3 at index \(2,\) is out of range \[0, 3\)"):
        _xp(p=np.array([0, 1, 3, 1]))
    with pytest.raises(ValueError, match=r"^q: probabilities must be non-negative, got -0.5 at "
                                         r"index \(1, 2\)"):
        _xp(q=np.array([[0.5, 0.5, 0], [0.5, 1, -0.5], [1, 0, 0], [1, 0, 0]]))


@pytest.mark.parametrize("kw, exc", [
    (dict(grad_output=np.ones(3)), ValueError),
    (dict(grad_output=np.ones(4)), ValueError),              # per-row only for "none"
    (dict(grad_output=np.ones(5), reduction="none"), ValueError),
    (dict(grad_output="x"), TypeError),
])
def test_grad_output_errors(kw, exc):
    with pytest.raises(exc, match=starts("grad_output")):
        _xpg(**kw)


def test_out_errors():
    p = np.full((4, 3), 1 / 3)
    with pytest.raises(TypeError, match=starts("out")):
        _xpg(out=[[0.0] * 3] * 4)
    with pytest.raises(ValueError, match=starts("out")):
        _xpg(out=np.empty((3, 4)))
    with pytest.raises(ValueError, match=starts("out")):
        _xpg(out=np.empty((4, 3), np.float32))
    ro = np.empty((4, 3))
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=starts("out")):
        _xpg(out=ro)
    with pytest.raises(ValueError, match=r"^out: overlaps p"):
        _xpg(p=p, out=p)
    big = np.full((4, 6), 1 / 3)
    with pytest.raises(ValueError, match=r"^out: overlaps q"):
        _xpg(q=big[:, :3], out=big[:, 1:4])


@pytest.mark.parametrize("kw, exc, name", [
    (dict(p=np.ones((2, 3), np.int64)), TypeError, "p"),
    (dict(p=np.float64(1.0)), ValueError, "p"),
    (dict(p=-np.ones((2, 3))), ValueError, "p"),
    (dict(axis=5), ValueError, "axis"),
    (dict(axis="0"), TypeError, "axis"),
    (dict(base=1.0), ValueError, "base"),
    (dict(num_threads=-1), ValueError, "num_threads"),
])
def test_entropy_errors(kw, exc, name):
    args = dict(p=np.full((2, 3), 1 / 3))
    args.update(kw)
    with pytest.raises(exc, match=starts(name)):
        fastxent.entropy(args.pop("p"), **args)


@pytest.mark.parametrize("kw, exc, name", [
    (dict(q=np.ones((2, 4))), ValueError, "q"),
    (dict(q=np.ones((2, 3), np.int32)), TypeError, "q"),
    (dict(p=np.ones((2, 3), bool)), TypeError, "p"),
    (dict(p=-np.ones((2, 3))), ValueError, "p"),
    (dict(q=-np.ones((2, 3))), ValueError, "q"),
    (dict(reduction="avg"), ValueError, "reduction"),
    (dict(base=-1), ValueError, "base"),
    (dict(axis=2), ValueError, "axis"),
])
def test_kl_errors(kw, exc, name):
    args = dict(p=np.full((2, 3), 1 / 3), q=np.full((2, 3), 1 / 3))
    args.update(kw)
    with pytest.raises(exc, match=starts(name)):
        fastxent.kl_divergence(args.pop("p"), args.pop("q"), **args)


def test_kl_log_inputs_are_not_range_checked():
    lp = np.log(np.full((2, 3), 1 / 3))
    assert np.all(fastxent.kl_divergence(lp, lp, log_p=True, log_q=True) == 0)
    assert np.isfinite(fastxent.kl_divergence(np.full((2, 3), 1 / 3), lp, log_q=True)).all()


@pytest.mark.parametrize("kw, exc, name", [
    (dict(reduction="sum"), ValueError, "reduction"),
    (dict(z_loss=1e-4), TypeError, "z_loss"),
    (dict(return_z_loss=True), TypeError, "return_z_loss"),
    (dict(base=1), ValueError, "base"),
    (dict(base=0.0), ValueError, "base"),
])
def test_perplexity_errors(kw, exc, name):
    with pytest.raises(exc, match=starts(name)):
        fastxent.perplexity(np.zeros((3, 4)), np.array([0, 1, 2]), **kw)
