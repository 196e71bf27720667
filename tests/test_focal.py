"""Focal loss (focal_gamma=): the per-row formula on every kernel path, against the float64
reference, finite differences and torch's autograd of -(1 - p_y)^gamma log p_y."""
import numpy as np
import pytest

import fastxent
from fastxent import reference as ref

from tests.conftest import (FLOAT_DTYPES, assert_close, f64, finite_differences, grad_unit, in_layout,
                      make_logits, make_target, make_weight)

# every kernel path: short rows vectorised across rows (C <= 32), rows one at a time, the
# buffered path (Fortran order: strided classes), long rows split across threads
PATHS = [
    ("short", 300, 10, "C", None),
    ("rows", 40, 1000, "C", None),
    ("buffered", 40, 100, "F", None),
    ("split", 1, 140000, "C", 2),
]
GAMMAS = [0.5, 1.0, 2.0, 3.7]


def _case(rng, n, c, dtype, layout, ignore=True):
    x = in_layout(make_logits(rng, n, c, dtype=dtype), layout)
    t = make_target(rng, n, c)
    if ignore and n > 3:
        t[::7] = -100
    return x, t


@pytest.mark.parametrize("name, n, c, layout, threads", PATHS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_gamma_zero_is_cross_entropy_bitwise(name, n, c, layout, threads, dtype, rng):
    x, t = _case(rng, n, c, dtype, layout)
    w = make_weight(rng, c)
    for red in ("mean", "none"):
        a = fastxent.cross_entropy(x, t, weight=w, reduction=red, num_threads=threads)
        b = fastxent.cross_entropy(x, t, weight=w, reduction=red, focal_gamma=0.0,
                                   num_threads=threads)
        np.testing.assert_array_equal(a, b)
        la, ga = fastxent.cross_entropy_with_grad(x, t, weight=w, reduction=red, num_threads=threads)
        lb, gb = fastxent.cross_entropy_with_grad(x, t, weight=w, reduction=red, focal_gamma=0,
                                                  num_threads=threads)
        np.testing.assert_array_equal(la, lb)
        np.testing.assert_array_equal(ga, gb)


@pytest.mark.parametrize("name, n, c, layout, threads", PATHS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_focal_matches_reference(name, n, c, layout, threads, dtype, gamma, reduction, rng):
    x, t = _case(rng, n, c, dtype, layout)
    w = make_weight(rng, c) if reduction != "sum" else None
    kw = dict(weight=w, reduction=reduction, focal_gamma=gamma)
    got = fastxent.cross_entropy(x, t, num_threads=threads, **kw)
    assert_close(got, ref.cross_entropy(f64(x), t, **kw), dtype)
    loss, grad = fastxent.cross_entropy_with_grad(x, t, num_threads=threads, **kw)
    exp_loss, exp_grad = ref.cross_entropy_with_grad(f64(x), t, **kw)
    assert_close(loss, exp_loss, dtype)
    assert_close(grad, exp_grad, dtype, scale=grad_unit(t, **kw))


@pytest.mark.parametrize("gamma", [0.3, 2.0])
def test_focal_gradient_finite_differences(gamma, rng):
    x = make_logits(rng, 6, 5)
    t = make_target(rng, 6, 5)
    w = make_weight(rng, 5)
    _, grad = fastxent.cross_entropy_with_grad(x, t, weight=w, focal_gamma=gamma)
    fd = finite_differences(lambda z: float(fastxent.cross_entropy(z, t, weight=w,
                                                                   focal_gamma=gamma)), x)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_focal_matches_torch_autograd(gamma, rng):
    torch = pytest.importorskip("torch")
    x = make_logits(rng, 64, 12)
    t = make_target(rng, 64, 12)
    w = make_weight(rng, 12)
    xt = torch.tensor(x, requires_grad=True)
    logp = torch.log_softmax(xt, dim=1)
    lp_y = logp[torch.arange(64), torch.tensor(t)]
    wt = torch.tensor(w)[torch.tensor(t)]
    loss_t = (wt * -(1 - lp_y.exp()) ** gamma * lp_y).sum() / wt.sum()
    loss_t.backward()
    loss, grad = fastxent.cross_entropy_with_grad(x, t, weight=w, focal_gamma=gamma)
    np.testing.assert_allclose(loss, loss_t.item(), rtol=1e-12)
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-10, atol=1e-15)


def test_focal_extremes():
    # a masked label: infinite loss (factor 1), the gradient is that of the cross-entropy
    x = np.array([[0.0, -np.inf, 1.0], [2.0, 1.0, 0.0]])
    t = np.array([1, 0])
    loss = fastxent.cross_entropy(x, t, focal_gamma=2.0, reduction="none")
    assert loss[0] == np.inf and np.isfinite(loss[1])
    _, g = fastxent.cross_entropy_with_grad(x, t, focal_gamma=2.0, reduction="none")
    _, g0 = fastxent.cross_entropy_with_grad(x, t, reduction="none")
    np.testing.assert_array_equal(g[0], g0[0])
    # one class: p_y = 1, loss and gradient exactly 0 (for gamma < 1 too: no 0 * inf)
    for gamma in (0.25, 2.0):
        loss, g = fastxent.cross_entropy_with_grad(np.zeros((3, 1)), np.zeros(3, int),
                                                   focal_gamma=gamma, reduction="sum")
        assert loss == 0.0 and not g.any()
    # a confident, correct row: the loss (1 - p)^g * l ~ l^(g+1) keeps its relative accuracy
    x = np.array([[40.0, 0.0, 0.0]])
    l = 2 * np.exp(-40.0)                       # -log p_y to first order
    got = fastxent.cross_entropy(x, np.array([0]), focal_gamma=2.0)
    np.testing.assert_allclose(got, l ** 3, rtol=1e-12)


def test_focal_threads_bitwise(rng):
    x = make_logits(rng, 5000, 37, dtype=np.float32)
    t = make_target(rng, 5000, 37)
    r1 = fastxent.cross_entropy_with_grad(x, t, focal_gamma=2.0, num_threads=1)
    r4 = fastxent.cross_entropy_with_grad(x, t, focal_gamma=2.0, num_threads=4)
    np.testing.assert_array_equal(r1[0], r4[0])
    np.testing.assert_array_equal(r1[1], r4[1])


@pytest.mark.parametrize("bad, err", [(-1.0, ValueError), (np.nan, ValueError),
                                      (np.inf, ValueError), ("2", TypeError), (None, TypeError)])
def test_focal_gamma_invalid(bad, err):
    with pytest.raises(err, match="^focal_gamma"):
        fastxent.cross_entropy(np.zeros((2, 3)), np.zeros(2, int), focal_gamma=bad)


def test_focal_needs_hard_labels_without_smoothing():
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match="^focal_gamma"):
        fastxent.cross_entropy(x, np.full((2, 3), 1 / 3), focal_gamma=1.0)
    with pytest.raises(ValueError, match="^focal_gamma"):
        fastxent.cross_entropy(x, np.zeros(2, int), focal_gamma=1.0, label_smoothing=0.1)


# ------------------------------------------------------------------ the PyTorch drop-in
def _torch_focal(x, t, w, gamma, reduction="mean"):
    import torch
    logp = torch.log_softmax(x, dim=1)
    lp_y = logp.gather(1, t.unsqueeze(1)).squeeze(1)
    wy = w[t] if w is not None else torch.ones_like(lp_y)
    rows = -wy * (1 - lp_y.exp()) ** gamma * lp_y
    return {"none": rows, "sum": rows.sum(), "mean": rows.sum() / wy.sum()}[reduction]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_torch_dropin_focal(reduction, gamma, rng):
    torch = pytest.importorskip("torch")
    import fastxent.torch as ft
    x = torch.tensor(make_logits(rng, 32, 7), requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    t = torch.tensor(make_target(rng, 32, 7))
    w = torch.tensor(make_weight(rng, 7))
    got = ft.cross_entropy(x, t, weight=w, reduction=reduction, focal_gamma=gamma)
    exp = _torch_focal(x2, t, w, gamma, reduction)
    torch.testing.assert_close(got, exp, rtol=1e-12, atol=1e-14)
    got.sum().backward()
    exp.sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-10, atol=1e-14)
    # the module form
    crit = ft.CrossEntropyLoss(weight=w, reduction=reduction, focal_gamma=gamma)
    torch.testing.assert_close(crit(x.detach(), t), exp.detach(), rtol=1e-12, atol=1e-14)


def test_torch_dropin_focal_second_derivatives(rng):
    torch = pytest.importorskip("torch")
    import fastxent.torch as ft
    x = torch.tensor(make_logits(rng, 5, 4), requires_grad=True)
    t = torch.tensor(make_target(rng, 5, 4))
    w = torch.tensor(make_weight(rng, 4))
    f = lambda z: ft.cross_entropy(z, t, weight=w, focal_gamma=1.5)     # noqa: E731
    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


def test_torch_dropin_focal_fallback_computes_focal(rng):
    # a weight that requires grad sends the call to torch operations: still the focal loss
    torch = pytest.importorskip("torch")
    import fastxent.torch as ft
    x = torch.tensor(make_logits(rng, 16, 5))
    t = torch.tensor(make_target(rng, 16, 5))
    w = torch.tensor(make_weight(rng, 5), requires_grad=True)
    assert ft.fallback_reason(x, t, w) is not None
    got = ft.cross_entropy(x, t, weight=w, focal_gamma=2.0)
    torch.testing.assert_close(got, _torch_focal(x, t, w, 2.0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got.item(), fastxent.cross_entropy(x.numpy(), t.numpy(),
                               weight=w.detach().numpy(), focal_gamma=2.0), rtol=1e-12)
    with pytest.raises(ValueError, match="^focal_gamma"):
        ft.cross_entropy(x, t, focal_gamma=1.0, label_smoothing=0.1)
