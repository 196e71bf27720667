"""Shapes PyTorch accepts and fastxent must too: unbatched (C,) logits with a scalar target,
C = 0 classes (NaN means, as torch, for every reduction), and bfloat16 / negative class weights
-- each compared with ``torch.nn.functional.cross_entropy`` itself and with the reference.
"""
import ml_dtypes
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastxent
from fastxent import reference as ref
from tests.conftest import assert_close

REDUCTIONS = ["mean", "sum", "none"]


def torch_ce(x, t, **kw):
    w = kw.pop("weight", None)
    if w is not None:
        kw["weight"] = torch.from_numpy(np.asarray(w, dtype=np.float64))
    out = F.cross_entropy(torch.from_numpy(np.asarray(x, dtype=np.float64)),
                          _torch_target(t), **kw)
    return out.numpy()


def _torch_target(t):
    t = np.asarray(t)
    return torch.from_numpy(t.astype(np.int64) if t.dtype.kind in "iu" else t.astype(np.float64))


def torch_grad(x, t, **kw):
    xt = torch.from_numpy(np.asarray(x, dtype=np.float64)).requires_grad_()
    w = kw.pop("weight", None)
    if w is not None:
        kw["weight"] = torch.from_numpy(np.asarray(w, dtype=np.float64))
    loss = F.cross_entropy(xt, _torch_target(t), **kw)
    loss.sum().backward()
    return xt.grad.numpy()


# ------------------------------------------------------------------ unbatched (C,) logits
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("opts", [{}, dict(weight=[0.5, 2.0, 1.0, 3.0]), dict(label_smoothing=0.2),
                                  dict(ignore_index=2)], ids=["plain", "weight", "smooth", "ignored"])
@pytest.mark.parametrize("label", [2, np.int32(1), np.array(3)])
def test_unbatched_hard_label(reduction, opts, label, rng):
    x = rng.standard_normal(4)
    want = torch_ce(x, label, reduction=reduction, **opts)
    got = fastxent.cross_entropy(x, label, reduction=reduction, **opts)
    assert np.ndim(got) == 0 and isinstance(got, np.float64)
    assert_close(got, want, np.float64)
    assert_close(ref.cross_entropy(x, label, reduction=reduction, **opts), want, np.float64)
    loss, grad = fastxent.cross_entropy_with_grad(x, label, reduction=reduction, **opts)
    assert grad.shape == (4,)
    assert_close(loss, want, np.float64)
    assert_close(grad, torch_grad(x, label, reduction=reduction, **opts), np.float64)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_unbatched_soft_target(reduction, rng):
    x = rng.standard_normal(5)
    p = rng.dirichlet(np.ones(5))
    want = torch_ce(x, p, reduction=reduction, label_smoothing=0.1)
    assert_close(fastxent.cross_entropy(x, p, reduction=reduction, label_smoothing=0.1), want,
                 np.float64)
    _, grad = fastxent.cross_entropy_with_grad(x, p, reduction=reduction, label_smoothing=0.1)
    assert_close(grad, torch_grad(x, p, reduction=reduction, label_smoothing=0.1), np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16],
                         ids=["float32", "float16", "bfloat16"])
def test_unbatched_other_dtypes_and_out(dtype, rng):
    x = rng.standard_normal(6).astype(dtype)
    out = np.empty(6, dtype=dtype)
    loss, grad = fastxent.cross_entropy_with_grad(x, 4, out=out)
    assert grad is out and type(loss) is np.float32
    rloss, rgrad = ref.cross_entropy_with_grad(x.astype(np.float64), 4)
    assert_close(loss, rloss, np.float32)
    # the gradient is stored in the logits' dtype: 16-bit keeps about 3 significant digits
    atol = 1e-6 if dtype == np.float32 else 1e-2
    np.testing.assert_allclose(grad.astype(np.float64), rgrad, rtol=0, atol=atol)


# ------------------------------------------------------------------ C = 0
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("smoothing", [0.0, 0.25])
@pytest.mark.parametrize("n", [0, 3])
def test_zero_classes_hard_labels_all_ignored(reduction, smoothing, n):
    x = np.zeros((n, 0))
    t = np.full(n, -100)
    want = torch_ce(x, t, reduction=reduction, label_smoothing=smoothing)
    for f in (fastxent.cross_entropy, ref.cross_entropy):
        got = f(x, t, reduction=reduction, label_smoothing=smoothing)
        np.testing.assert_array_equal(got, want)
    loss, grad = fastxent.cross_entropy_with_grad(x, t, reduction=reduction,
                                                  label_smoothing=smoothing)
    np.testing.assert_array_equal(loss, want)
    assert grad.shape == (n, 0)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("n", [0, 3])
def test_zero_classes_soft_targets(reduction, n):
    x = np.zeros((n, 0))
    want = torch_ce(x, np.zeros((n, 0)), reduction=reduction, label_smoothing=0.1)
    for f in (fastxent.cross_entropy, ref.cross_entropy):
        got = f(x, np.zeros((n, 0)), reduction=reduction, label_smoothing=0.1)
        np.testing.assert_array_equal(np.abs(got), np.abs(want))     # torch gives -0.0


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_zero_classes_unbatched_and_nd(reduction):
    want = torch_ce(np.zeros(0), np.array(-100), reduction=reduction)
    np.testing.assert_array_equal(fastxent.cross_entropy(np.zeros(0), -100, reduction=reduction),
                                  want)
    # (N, 0, d): torch refuses the shape, fastxent gives the 2-D answer per position
    got = fastxent.cross_entropy(np.zeros((2, 0, 3)), np.full((2, 3), -100), axis=1,
                                 reduction=reduction)
    np.testing.assert_array_equal(got, torch_ce(np.zeros((6, 0)), np.full(6, -100),
                                                reduction=reduction).reshape(np.shape(got)))


def test_zero_classes_with_a_label_is_an_error():
    with pytest.raises(IndexError):
        torch_ce(np.zeros((2, 0)), np.array([-100, 0]))
    with pytest.raises(ValueError, match=r"^target: label 0 at row 1"):
        fastxent.cross_entropy(np.zeros((2, 0)), np.array([-100, 0]))
    with pytest.raises(ValueError, match=r"^target: label 0 at row 1"):
        fastxent.cross_entropy_with_grad(np.zeros((2, 0)), np.array([-100, 0]))


# ------------------------------------------------------------------ class weights as torch
@pytest.mark.parametrize("wdtype", [ml_dtypes.bfloat16, np.float16, np.float32, np.int64],
                         ids=["bfloat16", "float16", "float32", "int64"])
def test_class_weight_dtypes(wdtype, rng):
    x = rng.standard_normal((6, 4))
    t = rng.integers(0, 4, 6)
    w = np.array([0.5, -2.0, 1.0, 3.0]).astype(wdtype)
    w64 = w.astype(np.float64)
    want = torch_ce(x, t, weight=w64)
    assert_close(fastxent.cross_entropy(x, t, weight=w), want, np.float64)
    assert_close(ref.cross_entropy(x, t, weight=w), want, np.float64)
    assert_close(fastxent.cross_entropy_with_grad(x, t, weight=w)[1], torch_grad(x, t, weight=w64),
                 np.float64)


def test_bfloat16_logits_with_bfloat16_weights_as_torch(rng):
    """torch needs bfloat16 weights for bfloat16 input; fastxent computes it in float32."""
    x = rng.standard_normal((8, 5)).astype(ml_dtypes.bfloat16)
    t = rng.integers(0, 5, 8)
    w = rng.uniform(0.5, 2, 5).astype(ml_dtypes.bfloat16)
    want = F.cross_entropy(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(t),
                           weight=torch.from_numpy(w.astype(np.float32)))
    tb = F.cross_entropy(torch.from_numpy(x.astype(np.float32)).bfloat16(), torch.from_numpy(t),
                         weight=torch.from_numpy(w.astype(np.float32)).bfloat16())
    got = fastxent.cross_entropy(x, t, weight=w)
    assert_close(got, want.item(), np.float32)
    assert abs(got - tb.float().item()) < 2e-2          # torch rounds the result to bfloat16
