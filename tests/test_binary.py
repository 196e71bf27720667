"""Binary cross-entropy on probabilities and on logits (+ gradients): reference, torch,
hand-checked values, finite differences, broadcasting, extremes, threads, properties, errors."""
import math

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
BCE = fastxent.binary_cross_entropy
BCEG = fastxent.binary_cross_entropy_with_grad
BCEL = fastxent.binary_cross_entropy_with_logits
BCELG = fastxent.binary_cross_entropy_with_logits_with_grad


def starts(name):
    return rf"^{name}\b"


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def grad_scale(weight=None, pos_weight=None, grad_output=1.0, n=1, reduction="mean"):
    """The natural size of the gradient entries (their error is measured against it)."""
    s = float(np.max(np.abs(grad_output)))
    for a in (weight, pos_weight):
        if a is not None:
            s *= max(1.0, float(np.max(np.abs(a))))
    return s / n if reduction == "mean" else s


# ============================================================================ hand-checked
def test_hand_checked_probabilities():
    p = np.array([0.9, 0.2, 0.6, 0.5])
    y = np.array([1.0, 0.0, 0.3, 1.0])
    rows = -y * np.log(p) - (1 - y) * np.log(1 - p)
    np.testing.assert_allclose(BCE(p, y, reduction="none"), rows, rtol=1e-15)
    np.testing.assert_allclose(BCE(p, y), rows.mean(), rtol=1e-15)
    np.testing.assert_allclose(BCE(p, y, reduction="sum", base=2), rows.sum() / math.log(2),
                               rtol=1e-15)
    np.testing.assert_allclose(BCE(np.array([0.7]), [1.0]), -math.log(0.7), rtol=1e-15)


def test_hand_checked_logits():
    x = np.array([2.0, -1.0, 0.0, 3.0])
    y = np.array([1.0, 0.0, 0.5, 0.25])
    p = sigmoid(x)
    rows = -y * np.log(p) - (1 - y) * np.log(1 - p)
    np.testing.assert_allclose(BCEL(x, y, reduction="none"), rows, rtol=1e-14)
    pw = 3.0
    rows = -pw * y * np.log(p) - (1 - y) * np.log(1 - p)
    np.testing.assert_allclose(BCEL(x, y, pos_weight=np.array(pw), reduction="none"), rows,
                               rtol=1e-14)
    assert BCEL(np.array([0.0]), [1.0]) == np.float64(math.log(2))


def test_torch_clamp_at_minus_100():
    p = np.array([0.0, 1.0, 0.0, 1.0, 1e-45, 5e-324])
    y = np.array([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    np.testing.assert_array_equal(BCE(p, y, reduction="none"), [100, 100, 0, 0, 100, 100])
    got = BCE(p.astype(np.float32), y.astype(np.float32), reduction="none")
    np.testing.assert_array_equal(got, [100, 100, 0, 0, 100, 100])
    # a soft target still takes the clamped logs
    np.testing.assert_allclose(BCE(np.array([0.0]), [0.25], reduction="sum"), 25.0, rtol=1e-15)


# ============================================================================ vs the reference
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS_2D)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("wkind", ["none", "cols", "rows", "full", "scalar"])
def test_bce_vs_reference(rng, dtype, layout, reduction, wkind):
    n, c = 17, 13
    p = in_layout(rng.uniform(0, 1, (n, c)).astype(dtype), layout)
    y = in_layout(rng.uniform(0, 1, (n, c)).astype(dtype), layout)
    w = {"none": None, "cols": rng.uniform(0, 2, c), "rows": rng.uniform(0, 2, (n, 1)),
         "full": rng.uniform(0, 2, (n, c)), "scalar": np.float64(1.5)}[wkind]
    go = rng.uniform(0.5, 2, (n, c)) if reduction == "none" else 0.75
    loss, g = BCEG(p, y, weight=w, reduction=reduction, grad_output=go)
    el, eg = ref.binary_cross_entropy_with_grad(f64(p), f64(y), weight=f64(w), reduction=reduction,
                                                grad_output=go)
    assert_close(loss, el, dtype)
    assert_close(g, eg, dtype)
    assert_close(BCE(p, y, weight=w, reduction=reduction), el, dtype)
    assert g.dtype == dtype and g.shape == p.shape
    assert np.asarray(loss).dtype == dtype


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS_2D)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("wkind", ["none", "weight", "pos_weight", "both"])
def test_bce_logits_vs_reference(rng, dtype, layout, reduction, wkind):
    n, c = 19, 11
    x = in_layout((rng.standard_normal((n, c)) * 6).astype(dtype), layout)
    y = in_layout(rng.uniform(0, 1, (n, c)).astype(dtype), layout)
    y[0, :3] = [0, 1, 1]
    w = rng.uniform(0, 2, (n, 1)) if wkind in ("weight", "both") else None
    pw = rng.uniform(0.2, 4, c) if wkind in ("pos_weight", "both") else None
    go = rng.uniform(0.5, 2, (1, c)) if reduction == "none" else 1.25
    loss, g = BCELG(x, y, weight=w, pos_weight=pw, reduction=reduction, grad_output=go)
    el, eg = ref.binary_cross_entropy_with_logits_with_grad(
        f64(x), f64(y), weight=w, pos_weight=pw, reduction=reduction, grad_output=go)
    assert_close(loss, el, dtype)
    assert_close(g, eg, dtype, scale=grad_scale(w, pw, go, x.size, reduction))
    assert_close(BCEL(x, y, weight=w, pos_weight=pw, reduction=reduction), el, dtype)


@pytest.mark.parametrize("shape, wshape", [
    ((), ()), ((7,), (7,)), ((7,), ()), ((3, 4, 5), (5,)), ((3, 4, 5), (4, 1)),
    ((3, 4, 5), (3, 1, 1)), ((2, 3, 4, 5), (3, 1, 5)), ((6, 1, 3), (1, 3)), ((2, 70), (2, 1)),
    ((4, 0, 3), (3,)),
])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_shapes_and_broadcasting(rng, shape, wshape, dtype):
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    y = rng.uniform(0, 1, shape).astype(dtype)
    w = rng.uniform(0, 2, wshape)
    pw = rng.uniform(0.5, 2, wshape)
    for reduction in REDUCTIONS:
        loss, g = BCELG(x, y, weight=w, pos_weight=pw, reduction=reduction)
        el, eg = ref.binary_cross_entropy_with_logits_with_grad(
            f64(x), f64(y), weight=w, pos_weight=pw, reduction=reduction)
        assert_close(loss, el, dtype)
        assert_close(g, eg, dtype, scale=grad_scale(w, pw, 1.0, max(x.size, 1), reduction))
        p = sigmoid(x)
        loss, g = BCEG(p, y, weight=w, reduction=reduction)
        el, eg = ref.binary_cross_entropy_with_grad(f64(p), f64(y), weight=w, reduction=reduction)
        assert_close(loss, el, dtype)
        assert_close(g, eg, dtype)
        if reduction == "none":
            assert np.shape(loss) == shape


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_non_contiguous_nd(rng, dtype):
    # 3-D views that do not collapse to a 2-D grid: the contiguous fallback
    x = (rng.standard_normal((5, 6, 7)) * 3).astype(dtype).transpose(2, 0, 1)[::2, :, ::-1]
    y = rng.uniform(0, 1, (7, 6, 5)).astype(dtype).transpose(0, 2, 1)[::2, :, ::-1]
    w = rng.uniform(0, 2, (5, 1))
    pw = rng.uniform(0.5, 2, (4, 1, 1))
    out = np.empty((4, 5, 12), dtype)[:, :, ::2]
    assert x.shape == y.shape == out.shape == (4, 5, 6)
    loss, g = BCELG(x, y, weight=w, pos_weight=pw, reduction="none", out=out)
    el, eg = ref.binary_cross_entropy_with_logits_with_grad(f64(x), f64(y), weight=w,
                                                            pos_weight=pw, reduction="none")
    assert g is out
    assert_close(loss, el, dtype)
    assert_close(g, eg, dtype, scale=4.0)


# ============================================================================ finite differences
def test_bce_grad_finite_differences(rng):
    p = rng.uniform(0.05, 0.95, (3, 4))
    y = rng.uniform(0, 1, (3, 4))
    w = rng.uniform(0.5, 2, 4)
    for reduction in ("mean", "sum"):
        _, g = BCEG(p, y, weight=w, reduction=reduction, base=2, grad_output=1.5)
        fd = np.empty_like(p)
        h = 1e-6
        for idx in np.ndindex(p.shape):
            a, b = p.copy(), p.copy()
            a[idx] += h
            b[idx] -= h
            fd[idx] = 1.5 * (BCE(a, y, weight=w, reduction=reduction, base=2)
                             - BCE(b, y, weight=w, reduction=reduction, base=2)) / (2 * h)
        np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-10)


def test_bce_logits_grad_finite_differences(rng):
    x = rng.standard_normal((3, 5)) * 4
    y = rng.uniform(0, 1, (3, 5))
    w, pw = rng.uniform(0.5, 2, (3, 1)), rng.uniform(0.5, 3, 5)
    for reduction in ("mean", "sum"):
        _, g = BCELG(x, y, weight=w, pos_weight=pw, reduction=reduction)
        fd = np.empty_like(x)
        h = 1e-6
        for idx in np.ndindex(x.shape):
            a, b = x.copy(), x.copy()
            a[idx] += h
            b[idx] -= h
            fd[idx] = (BCEL(a, y, weight=w, pos_weight=pw, reduction=reduction)
                       - BCEL(b, y, weight=w, pos_weight=pw, reduction=reduction)) / (2 * h)
        np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-10)


# ============================================================================ torch
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_matches_torch(rng, dtype, reduction):
    p = rng.uniform(0, 1, (8, 6)).astype(dtype)
    p[0, :2] = [0.0, 1.0]
    y = rng.uniform(0, 1, (8, 6)).astype(dtype)
    y[0, :2] = [1.0, 0.0]                            # the clamped -100 terms
    w = rng.uniform(0.5, 2, 6).astype(dtype)
    tp = torch.from_numpy(p.copy()).requires_grad_(True)
    t = F.binary_cross_entropy(tp, torch.from_numpy(y), weight=torch.from_numpy(w),
                               reduction=reduction)
    t.backward(torch.ones_like(t))
    loss, g = BCEG(p, y, weight=w, reduction=reduction, grad_output=np.ones(p.shape)
                   if reduction == "none" else 1.0)
    assert_close(loss, t.detach().numpy(), dtype)
    assert_close(g, tp.grad.numpy(), dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape, wshape, pwshape", [
    ((8, 6), None, (6,)), ((8, 6), (8, 1), None), ((4, 3, 5), (3, 1), (5,)), ((10,), (), ())])
def test_bce_logits_matches_torch(rng, dtype, reduction, shape, wshape, pwshape):
    x = (rng.standard_normal(shape) * 5).astype(dtype)
    y = (rng.uniform(0, 1, shape) > 0.5).astype(dtype)
    w = None if wshape is None else rng.uniform(0.5, 2, wshape).astype(dtype)
    pw = None if pwshape is None else rng.uniform(0.5, 3, pwshape).astype(dtype)
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    t = F.binary_cross_entropy_with_logits(
        tx, torch.from_numpy(y), weight=None if w is None else torch.from_numpy(w),
        pos_weight=None if pw is None else torch.from_numpy(pw), reduction=reduction)
    go = rng.uniform(0.5, 2, shape).astype(dtype) if reduction == "none" else 2.0
    t.backward(torch.from_numpy(go) if reduction == "none" else torch.tensor(2.0, dtype=t.dtype))
    loss, g = BCELG(x, y, weight=w, pos_weight=pw, reduction=reduction, grad_output=go)
    assert_close(loss, t.detach().numpy(), dtype)
    assert_close(g, tx.grad.numpy(), dtype, scale=grad_scale(w, pw, go, x.size, reduction))


def test_bce_logits_large_logits_match_torch():
    x = np.array([1e4, -1e4, 1e30, -1e30, 50.0, -50.0, 1e4, -1e4])
    y = np.array([0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0])
    t = F.binary_cross_entropy_with_logits(torch.from_numpy(x), torch.from_numpy(y),
                                           reduction="none").numpy()
    np.testing.assert_allclose(BCEL(x, y, reduction="none"), t, rtol=1e-15)
    np.testing.assert_array_equal(BCEL(x, y, reduction="none"), [1e4, 1e4, 1e30, 1e30, 50, 50,
                                                                  0, 0])


# ============================================================================ extremes
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_logits_never_overflow(dtype):
    x = np.array([1e4, -1e4, 1e30, -1e30, np.inf, -np.inf, 80, -80, 700, -700], dtype)
    y = np.array([0, 1, 0, 1, 0, 1, 0, 1, 0, 1], dtype)
    loss, g = BCELG(x, y, reduction="none")
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(loss, np.abs(x.astype(np.float64)).astype(dtype))
    np.testing.assert_array_equal(g, [1, -1] * 5)
    loss, g = BCELG(x, 1 - y, reduction="none")          # the confident, correct side
    assert np.all(loss[:6] == 0) and np.all(g[:6] == 0)
    assert np.all(np.isfinite(g))


def test_infinite_logits_give_the_limit():
    # torch's (1 - y) x - log sigmoid(x) is nan here; the stable form gives the limit 0
    x = np.array([np.inf, -np.inf])
    y = np.array([1.0, 0.0])
    np.testing.assert_array_equal(BCEL(x, y, reduction="none"), [0.0, 0.0])
    np.testing.assert_array_equal(BCELG(x, y, reduction="none")[1], [0.0, 0.0])
    np.testing.assert_array_equal(BCEL(x, y[::-1], reduction="none"), [np.inf, np.inf])


def test_soft_targets_at_large_logits_are_accurate():
    # torch's form cancels (1 - y) x against x; the stable form keeps every digit
    x = np.array([-1e4, -30.0])
    y = np.array([1e-6, 1e-9])
    exact = (1 - y) * np.log1p(np.exp(x)) + y * (np.log1p(np.exp(x)) - x)
    np.testing.assert_allclose(BCEL(x, y, reduction="none"), exact, rtol=1e-15)


def test_nan_propagates():
    x = np.array([0.5, np.nan, -1.0])
    y = np.array([1.0, 0.0, 0.5])
    loss, g = BCELG(x, y, reduction="none")
    assert np.isnan(loss[1]) and np.isnan(g[1]) and np.isfinite(loss[[0, 2]]).all()
    assert np.isnan(BCEL(x, y))
    assert np.isnan(BCEL(np.array([1.0]), [np.nan]))


def test_empty_and_zero_d():
    e = np.zeros((0, 3))
    assert np.isnan(BCE(e, e)) and BCE(e, e, reduction="sum") == 0
    assert BCEL(e, e, reduction="none").shape == (0, 3)
    loss, g = BCELG(e, e)
    assert np.isnan(loss) and g.shape == (0, 3)
    v = BCEL(np.float64(0.0), np.float64(1.0), reduction="none")
    assert type(v) is np.float64 and v == np.float64(math.log(2))
    loss, g = BCEG(np.float32(0.25), np.float32(1.0))
    assert type(loss) is np.float32 and g.shape == () and g.dtype == np.float32


# ============================================================================ threads / out=
@pytest.mark.parametrize("shape", [(3, 50_000), (100_000,), (20_000, 5), (40_000, 1)])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_bit_identical_for_any_thread_count(rng, shape, dtype):
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    y = rng.uniform(0, 1, shape).astype(dtype)
    pw = rng.uniform(0.5, 2, shape[-1:])
    p = sigmoid(x)

    def run(nt):
        return [BCEL(x, y, pos_weight=pw, num_threads=nt),
                BCELG(x, y, reduction="sum", num_threads=nt)[1],
                BCEL(x, y, reduction="none", num_threads=nt),
                BCEG(p, y, weight=pw, num_threads=nt)]

    base = run(1)
    for nt in (2, 3, 7):
        for a, b in zip(base, run(nt)):
            if isinstance(a, tuple):
                assert all(np.asarray(u).tobytes() == np.asarray(v).tobytes() for u, v in zip(a, b))
            else:
                assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_out_and_in_place(rng):
    x = rng.standard_normal((6, 4))
    y = rng.uniform(0, 1, (6, 4))
    _, expected = BCELG(x, y)
    out = np.empty((4, 6)).T
    loss, g = BCELG(x, y, out=out)
    assert g is out
    np.testing.assert_array_equal(out, expected)
    x2 = x.copy()
    _, g = BCELG(x2, y, out=x2)
    assert g is x2
    np.testing.assert_array_equal(x2, expected)
    p = sigmoid(x)
    _, expected = BCEG(p, y)
    p2 = p.copy()
    BCEG(p2, y, out=p2)
    np.testing.assert_array_equal(p2, expected)


def test_inputs_not_modified(rng):
    x = rng.standard_normal((6, 4))
    y = rng.uniform(0, 1, (6, 4))
    x.flags.writeable = False
    y.flags.writeable = False
    xc = x.copy()
    BCELG(x, y, pos_weight=np.ones(4))
    BCEG(sigmoid(x), y)
    np.testing.assert_array_equal(x, xc)


# ============================================================================ properties
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(z=hnp.arrays(np.float64, st.integers(1, 30),
                    elements=st.floats(-1e4, 1e4) | st.sampled_from([-1e30, 1e30, 0.0])),
       data=st.data())
def test_bce_logits_is_two_class_cross_entropy(z, data):
    y = data.draw(hnp.arrays(np.int64, z.shape, elements=st.integers(0, 1)))
    logits = np.stack([np.zeros_like(z), z], axis=-1)
    ce = fastxent.cross_entropy(logits, y, reduction="none")
    bce = BCEL(z, y.astype(np.float64), reduction="none")
    np.testing.assert_allclose(bce, ce, rtol=1e-13, atol=1e-300)
    np.testing.assert_allclose(BCEL(z, y, base=2), BCEL(z, y) / math.log(2), rtol=1e-15)


@SETTINGS
@given(x=hnp.arrays(np.float64, st.integers(1, 20), elements=st.floats(-15, 15)),
       data=st.data())
def test_bce_of_sigmoid_is_bce_with_logits(x, data):
    y = data.draw(hnp.arrays(np.float64, x.shape, elements=st.floats(0, 1)))
    p = sigmoid(x)
    np.testing.assert_allclose(BCE(p, y, reduction="none"), BCEL(x, y, reduction="none"),
                               rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(BCE(p, y, base=2, reduction="none"),
                               BCE(p, y, reduction="none") / math.log(2), rtol=1e-15)
    assert np.all(BCEL(x, y, reduction="none") >= 0)


# ============================================================================ errors
def _args(kw, logits):
    x = np.zeros((3, 4)) if logits else np.full((3, 4), 0.5)
    args = dict(x=x, target=np.full((3, 4), 0.5))
    args.update(kw)
    return args.pop("x"), args.pop("target"), args


@pytest.mark.parametrize("func", [BCE, BCEG, BCEL, BCELG],
                         ids=["bce", "bce_grad", "bce_logits", "bce_logits_grad"])
@pytest.mark.parametrize("kw, exc, name", [
    (dict(x=np.zeros((3, 4), np.int64)), TypeError, "X"),
    (dict(x=np.zeros((3, 4), np.float16)), TypeError, "X"),
    (dict(x=np.zeros((3, 4), np.complex64)), TypeError, "X"),
    (dict(target=np.zeros((3, 4), np.complex64)), TypeError, "target"),
    (dict(target=np.zeros((4, 3))), ValueError, "target"),
    (dict(target=np.zeros(4)), ValueError, "target"),
    (dict(weight=np.ones(3)), ValueError, "weight"),
    (dict(weight=np.ones((2, 3, 4))), ValueError, "weight"),
    (dict(weight=np.array(["a"])), TypeError, "weight"),
    (dict(reduction="batchmean"), ValueError, "reduction"),
    (dict(base=1.0), ValueError, "base"),
    (dict(base=-3), ValueError, "base"),
    (dict(num_threads=0), ValueError, "num_threads"),
])
def test_errors(func, kw, exc, name):
    logits = func in (BCEL, BCELG)
    if name == "X":
        name = "logits" if logits else "probs"
    x, t, args = _args(kw, logits)
    with pytest.raises(exc, match=starts(name)):
        func(x, t, **args)


@pytest.mark.parametrize("func", [BCE, BCEG])
@pytest.mark.parametrize("bad, name", [
    (dict(x=np.array([0.5, 1.5])), "probs"), (dict(x=np.array([0.5, -0.1])), "probs"),
    (dict(x=np.array([0.5, np.nan])), "probs"), (dict(target=np.array([0.5, 2.0])), "target"),
    (dict(target=np.array([np.nan, 0.0])), "target"),
])
def test_probs_range_errors(func, bad, name):
    args = dict(x=np.array([0.5, 0.5]), target=np.array([0.5, 0.5]))
    args.update(bad)
    with pytest.raises(ValueError, match=starts(name) + r": all elements must be in \[0, 1\]"):
        func(args["x"], args["target"])


def test_pos_weight_and_grad_output_errors():
    x, y = np.zeros((3, 4)), np.zeros((3, 4))
    with pytest.raises(ValueError, match=starts("pos_weight")):
        BCEL(x, y, pos_weight=np.ones(3))
    with pytest.raises(TypeError, match=starts("pos_weight")):
        BCEL(x, y, pos_weight=np.array([1j]))
    with pytest.raises(ValueError, match=starts("grad_output")):
        BCELG(x, y, grad_output=np.ones((3, 4)))
    with pytest.raises(ValueError, match=starts("grad_output")):
        BCELG(x, y, grad_output=np.ones(3), reduction="none")
    with pytest.raises(TypeError, match=starts("grad_output")):
        BCELG(x, y, grad_output="1")


def test_out_errors():
    x, y = np.zeros((3, 4)), np.zeros((3, 4))
    with pytest.raises(TypeError, match=starts("out")):
        BCELG(x, y, out=[0.0])
    with pytest.raises(ValueError, match=starts("out")):
        BCELG(x, y, out=np.empty((4, 3)))
    with pytest.raises(ValueError, match=starts("out")):
        BCELG(x, y, out=np.empty((3, 4), np.float32))
    with pytest.raises(ValueError, match=r"^out: overlaps target"):
        BCELG(x, y, out=y)
    big = np.zeros((3, 8))
    with pytest.raises(ValueError, match=r"^out: overlaps logits"):
        BCELG(big[:, :4], y, out=big[:, 1:5])
    ro = np.empty((3, 4))
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=starts("out")):
        BCELG(x, y, out=ro)
