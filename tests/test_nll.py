"""nll_loss: the cross-entropy kernels on log-probability input (no softmax), against torch's
F.nll_loss, the float64 reference, and every path (short rows, long rows, buffered, N-D)."""
import numpy as np
import pytest

import fastxent
from fastxent import reference as ref

from tests.conftest import FLOAT_DTYPES, assert_close, f64, grad_unit, in_layout, make_target

torch = pytest.importorskip("torch")
F = torch.nn.functional

CASES = [(300, 10, "C"), (40, 1000, "C"), (40, 100, "F"), (50, 20, "rows_reversed")]


def _log_probs(rng, n, c, dtype):
    x = rng.standard_normal((n, c)) * 3
    return (x - np.log(np.exp(x).sum(1, keepdims=True))).astype(dtype)


@pytest.mark.parametrize("n, c, layout", CASES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_nll_matches_torch(n, c, layout, dtype, reduction, weighted, rng):
    lp = in_layout(_log_probs(rng, n, c, dtype), layout)
    t = make_target(rng, n, c)
    t[::5] = -100
    w = rng.uniform(-2.0, 3.0, c) if weighted else None     # torch allows negative weights
    kw = dict(weight=w, reduction=reduction)
    xt = torch.tensor(np.ascontiguousarray(lp), requires_grad=True)
    exp = F.nll_loss(xt, torch.tensor(t), weight=None if w is None else torch.tensor(w, dtype=xt.dtype),
                     reduction=reduction)
    exp.sum().backward()
    got = fastxent.nll_loss(lp, t, **kw)
    assert_close(got, exp.detach().numpy(), dtype)
    loss, grad = fastxent.nll_loss_with_grad(lp, t, **kw)
    assert_close(loss, exp.detach().numpy(), dtype)
    assert_close(grad, xt.grad.numpy(), dtype, scale=grad_unit(t, **kw))
    # and the reference
    assert_close(got, ref.nll_loss(f64(lp), t, **kw), dtype)


def test_nll_nd_axis1_matches_torch(rng):
    lp = np.log(rng.dirichlet(np.ones(5), size=(3, 4, 6))).transpose(0, 3, 1, 2).copy()  # (3,5,4,6)
    t = rng.integers(0, 5, (3, 4, 6))
    xt = torch.tensor(lp, requires_grad=True)
    exp = F.nll_loss(xt, torch.tensor(t))
    exp.backward()
    loss, grad = fastxent.nll_loss_with_grad(lp, t, axis=1)
    np.testing.assert_allclose(loss, exp.item(), rtol=1e-12)
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-12, atol=0)


def test_nll_is_cross_entropy_of_log_softmax(rng):
    x = rng.standard_normal((200, 30)).astype(np.float32)
    t = make_target(rng, 200, 30)
    lp = fastxent.log_softmax(x)
    np.testing.assert_allclose(fastxent.nll_loss(lp, t), fastxent.cross_entropy(x, t), rtol=1e-6)


def test_nll_grad_out_and_inplace(rng):
    lp = _log_probs(rng, 64, 9, np.float64)
    t = make_target(rng, 64, 9)
    _, g = fastxent.nll_loss_with_grad(lp, t)
    out = np.full_like(lp, 7.0)
    _, g2 = fastxent.nll_loss_with_grad(lp, t, out=out)
    assert g2 is out
    np.testing.assert_array_equal(out, g)
    work = lp.copy()
    _, g3 = fastxent.nll_loss_with_grad(work, t, inplace=True)
    assert g3 is work
    np.testing.assert_array_equal(work, g)
    assert (g != 0).sum() == 64   # one entry per row


def test_nll_16bit_input(rng):
    lp = _log_probs(rng, 100, 17, np.float32)
    t = make_target(rng, 100, 17)
    got = fastxent.nll_loss(lp.astype(np.float16), t)
    exp = ref.nll_loss(lp.astype(np.float16).astype(np.float64), t)
    np.testing.assert_allclose(got, exp, rtol=1e-6)
    assert got.dtype == np.float32


def test_nll_values_beyond_log_probabilities():
    # no softmax is taken: any values (positive, -inf, NaN off the label) are read as given
    lp = np.array([[5.0, -np.inf, np.nan], [0.0, 100.0, -1.0]])
    loss, g = fastxent.nll_loss_with_grad(lp, np.array([0, 2]), reduction="none")
    np.testing.assert_array_equal(loss, [-5.0, 1.0])
    np.testing.assert_array_equal(g, [[-1.0, 0, 0], [0, 0, -1.0]])


def test_nll_threads_bitwise(rng):
    lp = _log_probs(rng, 20000, 40, np.float32)
    t = make_target(rng, 20000, 40)
    a = fastxent.nll_loss_with_grad(lp, t, num_threads=1)
    b = fastxent.nll_loss_with_grad(lp, t, num_threads=3)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_nll_errors():
    lp = np.zeros((3, 4))
    with pytest.raises(TypeError, match="^target: expected integer class labels"):
        fastxent.nll_loss(lp, np.full((3, 4), 0.25))
    with pytest.raises(ValueError, match=r"^target: label 4 at row 1 is out of range \[0, 4\)"):
        fastxent.nll_loss(lp, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match="^reduction"):
        fastxent.nll_loss(lp, np.array([0, 1, 1]), reduction="avg")
    with pytest.raises(TypeError, match="^weight"):
        fastxent.nll_loss(lp, np.array([0, 1, 1]), weight=np.array(["a"] * 4))
