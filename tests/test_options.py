"""The options of cross_entropy / cross_entropy_with_grad beyond the torch basics (issue 5):
soft targets, the class axis and N-D logits, z_loss, softcap, logit_scale, base, return_z_loss,
16-bit logits and grad_dtype.

Every option against fastxent.reference in float64 and float32, the gradients against central
finite differences (float64) and against torch.nn.functional.cross_entropy, the documented no-op
properties, 16-bit logits against float32 on the same values, validation messages and bitwise
identity across thread counts.
"""
import math

import ml_dtypes
import numpy as np
import pytest
import torch

import fastxent
from fastxent import reference as ref
from tests.conftest import (finite_differences as _finite_differences, FLOAT_DTYPES, assert_close, assert_result_type, f64, in_layout,
                            make_logits, make_weight)

REDUCTIONS = ["mean", "sum", "none"]
BF16 = np.dtype(ml_dtypes.bfloat16)


# ------------------------------------------------------------------ helpers
def _probs(rng, shape, axis=-1, dtype=np.float64):
    """Random class probabilities (summing to 1 along ``axis``), some close to 0."""
    p = rng.gamma(0.5, size=shape) + 1e-12
    return (p / p.sum(axis=axis, keepdims=True)).astype(dtype)


def _labels(rng, row_shape, c, ignore_index=-100, ignore=True):
    """Labels in [0, C) with about a quarter set to ignore_index (the first always)."""
    t = rng.integers(0, c, size=row_shape)
    if ignore and t.size:
        hits = rng.random(row_shape) < 0.25
        hits.flat[0] = True
        t[hits] = ignore_index
    return t


def _target(rng, kind, shape, axis, dtype=np.float64):
    """Hard labels (with ignored rows) or soft targets for logits of ``shape``."""
    axis = axis % len(shape)
    if kind == "soft":
        return _probs(rng, shape, axis, dtype)
    return _labels(rng, shape[:axis] + shape[axis + 1:], shape[axis])


def _t64(t):
    """The target as the float64 reference sees it (labels unchanged, probabilities upcast)."""
    t = np.asarray(t)
    return f64(t) if t.dtype.kind == "f" or t.dtype == BF16 else t


def _unit(a):
    """Largest finite |a| (1 when none): the scale of a gradient's absolute tolerance."""
    a = np.asarray(a, dtype=np.float64)
    fin = np.abs(a[np.isfinite(a)])
    return float(fin.max()) if fin.size and fin.max() > 0 else 1.0


def _kdt(dtype):
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def check_vs_reference(x, t, dtype, **kw):
    """cross_entropy and cross_entropy_with_grad (loss, z term, gradient) vs the float64 reference."""
    x = np.asarray(x)
    loss, z, grad = fastxent.cross_entropy_with_grad(x, t, return_z_loss=True, **kw)
    el, ez, eg = ref.cross_entropy_with_grad(f64(x), _t64(t), return_z_loss=True, **kw)
    shape = np.shape(el)
    assert_result_type(loss, _kdt(x.dtype), shape)
    assert_result_type(z, _kdt(x.dtype), shape)
    assert grad.shape == x.shape and grad.dtype == np.dtype(kw.get("grad_dtype") or x.dtype)
    assert_close(loss, el, dtype, err_msg="loss")
    assert_close(z, ez, dtype, err_msg="z term")
    assert_close(grad, eg, dtype, err_msg="grad", scale=_unit(eg))
    kw.pop("grad_output", None)
    kw.pop("grad_dtype", None)
    only, z_only = fastxent.cross_entropy(x, t, return_z_loss=True, **kw)
    assert_close(only, el, dtype, err_msg="cross_entropy loss")
    assert_close(z_only, ez, dtype, err_msg="cross_entropy z term")
    return loss, z, grad


def _objective(x, t, kw):
    """The scalar whose gradient cross_entropy_with_grad returns: sum(grad_output * loss)."""
    kw = dict(kw)
    g = kw.pop("grad_output", 1.0)
    return float(np.sum(np.asarray(g) * np.asarray(fastxent.cross_entropy(x, t, **kw), np.float64)))


# The transform / z-loss / unit options, alone and combined.
TRANSFORMS = {
    "z_loss": dict(z_loss=1e-2),
    "z_loss_big": dict(z_loss=0.5),
    "softcap": dict(softcap=2.5),
    "logit_scale": dict(logit_scale=1.7),
    "logit_scale_neg": dict(logit_scale=-0.6),
    "softcap_scaled": dict(softcap=4.0, logit_scale=0.5),
    "base2": dict(base=2),
    "base10": dict(base=10.0),
    "all": dict(z_loss=0.05, softcap=3.0, logit_scale=1.3, base=2),
}


# ------------------------------------------------------------------ soft targets
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weight", [False, True])
@pytest.mark.parametrize("eps", [0.0, 0.3, 1.0])
def test_soft_targets_match_reference(eps, weight, reduction, dtype, rng):
    n, c = 23, 7
    x = make_logits(rng, n, c, dtype)
    p = _probs(rng, (n, c), dtype=dtype)
    kw = dict(reduction=reduction, label_smoothing=eps, weight=make_weight(rng, c) if weight else None)
    check_vs_reference(x, p, dtype, **kw)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("layout", ["F", "cols_sliced", "rows_reversed"])
def test_soft_targets_any_layout(layout, dtype, rng):
    n, c = 17, 9
    x = in_layout(make_logits(rng, n, c, dtype), layout)
    p = in_layout(_probs(rng, (n, c), dtype=dtype), layout[::-1] if layout == "F" else layout)
    check_vs_reference(x, p, dtype, reduction="none", label_smoothing=0.1)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_soft_targets_of_another_dtype_and_unnormalised(dtype, rng):
    """Target dtype need not match the logits'; torch does not require rows to sum to 1."""
    n, c = 12, 5
    x = make_logits(rng, n, c, dtype)
    other = np.float64 if dtype == np.float32 else np.float32
    p = _probs(rng, (n, c), dtype=other)
    check_vs_reference(x, p, dtype, reduction="sum")
    q = rng.uniform(0, 2, (n, c)).astype(dtype)          # not normalised
    check_vs_reference(x, q, dtype, reduction="none", weight=make_weight(rng, c))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_soft_targets_per_row_grad_output(dtype, rng):
    n, c = 19, 6
    x = make_logits(rng, n, c, dtype)
    p = _probs(rng, (n, c), dtype=dtype)
    check_vs_reference(x, p, dtype, reduction="none", grad_output=rng.uniform(-2, 2, n),
                       weight=make_weight(rng, c), label_smoothing=0.2)


def test_soft_target_mean_divides_by_rows(rng):
    """Soft targets: "mean" is the sum over the number of rows, whatever the weights."""
    n, c = 10, 4
    x = make_logits(rng, n, c)
    p = _probs(rng, (n, c))
    w = make_weight(rng, c)
    total = fastxent.cross_entropy(x, p, weight=w, reduction="sum")
    mean = fastxent.cross_entropy(x, p, weight=w, reduction="mean")
    np.testing.assert_allclose(mean, total / n, rtol=1e-15)
    _, gs = fastxent.cross_entropy_with_grad(x, p, weight=w, reduction="sum")
    _, gm = fastxent.cross_entropy_with_grad(x, p, weight=w, reduction="mean")
    np.testing.assert_allclose(gm, gs / n, rtol=1e-14, atol=1e-15 * _unit(gs / n))


# ------------------------------------------------------------------ class axis and N-D logits
ND_CASES = [
    pytest.param((3, 5, 4), 1, id="3d-axis1"),
    pytest.param((2, 6, 3, 4), 1, id="4d-axis1"),
    pytest.param((3, 4, 5), -1, id="3d-axis-1"),
    pytest.param((2, 3, 2, 7), -1, id="4d-axis-1"),
    pytest.param((5, 3, 4), 0, id="3d-axis0"),
    pytest.param((4, 2, 3, 2), 0, id="4d-axis0"),
    pytest.param((2, 3, 4, 5), 2, id="4d-axis2"),
    pytest.param((6, 5), 0, id="2d-axis0"),
]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("kind", ["hard", "soft"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape, axis", ND_CASES)
def test_nd_matches_reference(shape, axis, reduction, kind, dtype, rng):
    x = make_logits(rng, 1, math.prod(shape), dtype).reshape(shape)
    t = _target(rng, kind, shape, axis, dtype)
    c = shape[axis]
    kw = dict(axis=axis, reduction=reduction, weight=make_weight(rng, c), label_smoothing=0.1)
    loss, _, grad = check_vs_reference(x, t, dtype, **kw)
    row_shape = shape[:axis % len(shape)] + shape[axis % len(shape) + 1:]
    if reduction == "none":
        assert loss.shape == row_shape
    if kind == "hard":                       # ignored positions: loss 0 and gradient 0
        ignored = t == -100
        assert ignored.any()
        assert np.all(np.moveaxis(grad, axis, -1)[ignored] == 0)
        if reduction == "none":
            assert np.all(loss[ignored] == 0)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("kind", ["hard", "soft"])
@pytest.mark.parametrize("shape, axis", ND_CASES)
def test_nd_equals_2d_rows(shape, axis, kind, dtype, rng):
    """N-D with a class axis = the 2-D call on the rows (class axis moved last, C order)."""
    x = make_logits(rng, 1, math.prod(shape), dtype).reshape(shape)
    t = _target(rng, kind, shape, axis, dtype)
    c = shape[axis]
    kw = dict(weight=make_weight(rng, c), label_smoothing=0.2, z_loss=1e-3)
    loss, grad = fastxent.cross_entropy_with_grad(x, t, axis=axis, reduction="none", **kw)
    x2 = np.moveaxis(x, axis, -1).reshape(-1, c)
    t2 = np.moveaxis(t, axis, -1).reshape(-1, c) if kind == "soft" else t.reshape(-1)
    loss2, grad2 = fastxent.cross_entropy_with_grad(x2, t2, reduction="none", **kw)
    assert_close(loss, loss2.reshape(loss.shape), dtype)
    moved = np.moveaxis(grad, axis, -1)
    assert_close(moved.reshape(-1, c), grad2, dtype, scale=_unit(grad2))
    for red in ("mean", "sum"):
        assert_close(fastxent.cross_entropy(x, t, axis=axis, reduction=red, **kw),
                     fastxent.cross_entropy(x2, t2, reduction=red, **kw), dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("kind", ["hard", "soft"])
@pytest.mark.parametrize("axis", [1, -1, 0])
def test_nd_out_and_inplace(axis, kind, dtype, rng):
    shape = (3, 5, 4, 2)
    x = make_logits(rng, 1, math.prod(shape), dtype).reshape(shape)
    t = _target(rng, kind, shape, axis, dtype)
    kw = dict(axis=axis, reduction="mean", softcap=3.0 if kind == "soft" else None)
    loss, grad = fastxent.cross_entropy_with_grad(x, t, **kw)
    out = np.full_like(x, np.nan)
    loss_o, got = fastxent.cross_entropy_with_grad(x, t, out=out, **kw)
    assert got is out
    assert loss_o == loss and np.array_equal(out, grad)
    xi = x.copy()
    loss_i, got = fastxent.cross_entropy_with_grad(xi, t, inplace=True, **kw)
    assert got is xi
    assert loss_i == loss and np.array_equal(xi, grad)


def test_nd_per_position_grad_output(rng):
    """reduction="none" on N-D: grad_output has the target's shape and scales each position."""
    shape, axis = (3, 4, 5, 2), 1
    x = make_logits(rng, 1, math.prod(shape)).reshape(shape)
    t = _labels(rng, (3, 5, 2), 4)
    g = rng.uniform(-2, 2, (3, 5, 2))
    check_vs_reference(x, t, np.float64, axis=axis, reduction="none", grad_output=g)
    _, g1 = fastxent.cross_entropy_with_grad(x, t, axis=axis, reduction="none")
    _, gg = fastxent.cross_entropy_with_grad(x, t, axis=axis, reduction="none", grad_output=g)
    np.testing.assert_allclose(gg, g1 * g[:, None], rtol=1e-14, atol=1e-300)


def test_nd_mean_denominator_skips_ignored_positions(rng):
    shape = (2, 3, 6)
    x = make_logits(rng, 1, math.prod(shape)).reshape(shape)
    t = _labels(rng, (2, 6), 3)
    w = make_weight(rng, 3)
    none = fastxent.cross_entropy(x, t, axis=1, weight=w, reduction="none")
    mean = fastxent.cross_entropy(x, t, axis=1, weight=w, reduction="mean")
    keep = t != -100
    np.testing.assert_allclose(mean, none.sum() / w[t[keep]].sum(), rtol=1e-14)


# ------------------------------------------------------------------ z_loss, softcap, logit_scale, base
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("kind", ["hard", "soft"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("opts", list(TRANSFORMS.values()), ids=list(TRANSFORMS))
def test_transforms_match_reference(opts, reduction, kind, dtype, rng):
    n, c = 21, 6
    x = make_logits(rng, n, c, dtype)
    t = _target(rng, kind, (n, c), -1, dtype)
    check_vs_reference(x, t, dtype, reduction=reduction, **opts)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("kind", ["hard", "soft"])
@pytest.mark.parametrize("opts", [TRANSFORMS["all"], TRANSFORMS["softcap"], TRANSFORMS["z_loss"]],
                         ids=["all", "softcap", "z_loss"])
def test_transforms_with_every_option(opts, kind, dtype, rng):
    """Combined with weight, label smoothing, a custom ignore_index, N-D and per-row grad_output."""
    shape, axis = (3, 7, 4), 1
    x = make_logits(rng, 1, math.prod(shape), dtype, scale=4.0).reshape(shape)
    if kind == "soft":
        t = _probs(rng, shape, axis, dtype)
    else:
        t = _labels(rng, (3, 4), 7, ignore_index=2)
    check_vs_reference(x, t, dtype, axis=axis, weight=make_weight(rng, 7), label_smoothing=0.15,
                       ignore_index=2, reduction="none", grad_output=rng.uniform(-1, 1, (3, 4)), **opts)
    check_vs_reference(x, t, dtype, axis=axis, weight=make_weight(rng, 7), label_smoothing=0.15,
                       ignore_index=2, reduction="mean", grad_output=-0.7, **opts)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("layout", ["F", "cols_sliced", "rows_reversed", "cols_reversed"])
def test_transforms_any_layout(layout, dtype, rng):
    n, c = 15, 11
    x = in_layout(make_logits(rng, n, c, dtype), layout)
    t = _labels(rng, n, c)
    check_vs_reference(x, t, dtype, reduction="sum", **TRANSFORMS["all"])


def test_softcap_bounds_the_logits(rng):
    """|z'| < cap: huge (and infinite) logits give a finite loss, and the loss equals the plain
    loss of cap * tanh(x / cap)."""
    n, c, cap = 8, 5, 3.0
    x = make_logits(rng, n, c, scale=1e4)
    x[0, 0], x[1, 2] = np.inf, -np.inf
    t = _labels(rng, n, c, ignore=False)
    loss = fastxent.cross_entropy(x, t, softcap=cap, reduction="none")
    assert np.all(np.isfinite(loss)) and np.all(loss <= 2 * cap + np.log(c) + 1e-12)
    np.testing.assert_allclose(loss, fastxent.cross_entropy(cap * np.tanh(x / cap), t, reduction="none"),
                               rtol=1e-13, atol=1e-15)
    _, grad = fastxent.cross_entropy_with_grad(x, t, softcap=cap)
    assert np.all(np.isfinite(grad))
    assert grad[0, 0] == 0 and grad[1, 2] == 0         # tanh saturated: d z'/d x = 0


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_logit_scale_equals_scaled_logits(dtype, rng):
    n, c, s = 13, 6, 2.0                                # 2 * x is exact
    x = make_logits(rng, n, c, dtype)
    t = _labels(rng, n, c)
    loss, grad = fastxent.cross_entropy_with_grad(x, t, logit_scale=s, reduction="none")
    l2, g2 = fastxent.cross_entropy_with_grad(s * x, t, reduction="none")
    assert_close(loss, l2, dtype)
    assert_close(grad, s * g2.astype(np.float64), dtype, scale=_unit(g2) * s)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("kind", ["hard", "soft"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_return_z_loss(reduction, kind, dtype, rng):
    """The z term is z_loss * lse^2 per non-ignored row, reduced like the loss (same denominator),
    and loss - z term is the loss without z_loss."""
    n, c, zl = 30, 8, 0.02
    x = make_logits(rng, n, c, dtype)
    t = _target(rng, kind, (n, c), -1, dtype)
    w = make_weight(rng, c)
    loss, z = fastxent.cross_entropy(x, t, weight=w, z_loss=zl, reduction=reduction, return_z_loss=True)
    plain = fastxent.cross_entropy(x, t, weight=w, reduction=reduction)
    assert_close(np.asarray(loss, np.float64) - z, plain, dtype)
    lse = np.asarray(ref.logsumexp(f64(x)))
    if kind == "hard":
        keep = t != -100
        rows = np.where(keep, zl * lse ** 2, 0.0)
        denom = w[t[keep]].sum()
    else:
        rows, denom = zl * lse ** 2, n
    expected = {"none": rows, "sum": rows.sum(), "mean": rows.sum() / denom}[reduction]
    assert_close(z, expected, dtype)
    # with_grad returns (loss, z, grad), the same numbers
    l3, z3, g3 = fastxent.cross_entropy_with_grad(x, t, weight=w, z_loss=zl, reduction=reduction,
                                                  return_z_loss=True)
    assert np.array_equal(l3, loss) and np.array_equal(z3, z)
    _, g2 = fastxent.cross_entropy_with_grad(x, t, weight=w, z_loss=zl, reduction=reduction)
    assert np.array_equal(g3, g2)


def test_return_z_loss_without_z_loss_is_zero(rng):
    x = make_logits(rng, 9, 4)
    t = _labels(rng, 9, 4)
    loss, z = fastxent.cross_entropy(x, t, reduction="none", return_z_loss=True)
    assert np.all(z == 0) and z.shape == (9,)
    loss, z = fastxent.cross_entropy(x, t, reduction="sum", return_z_loss=True)
    assert z == 0


# ------------------------------------------------------------------ gradients vs finite differences
FD_CASES = {
    "z_loss": ("hard", dict(z_loss=0.1)),
    "softcap": ("hard", dict(softcap=1.5)),
    "logit_scale": ("hard", dict(logit_scale=1.8)),
    "logit_scale_neg": ("hard", dict(logit_scale=-0.7)),
    "softcap_scale": ("hard", dict(softcap=2.0, logit_scale=0.6, weight=True, label_smoothing=0.2)),
    "base": ("hard", dict(base=2, z_loss=0.05)),
    "soft": ("soft", dict()),
    "soft_weight_smooth": ("soft", dict(weight=True, label_smoothing=0.3)),
    "soft_z_softcap": ("soft", dict(z_loss=0.05, softcap=2.0, logit_scale=1.2)),
    "all": ("hard", dict(z_loss=0.05, softcap=2.5, logit_scale=1.3, weight=True, label_smoothing=0.1,
                         base=10)),
}


@pytest.mark.parametrize("reduction, gout", [("mean", None), ("sum", -0.6), ("none", "per_row")])
@pytest.mark.parametrize("name", list(FD_CASES))
@pytest.mark.parametrize("nd", [False, True], ids=["2d", "nd"])
def test_grad_matches_finite_differences(nd, name, reduction, gout, rng):
    kind, opts = FD_CASES[name]
    shape, axis = ((2, 4, 3), 1) if nd else ((5, 4), -1)
    c = shape[axis]
    x = make_logits(rng, 1, math.prod(shape), scale=2.0).reshape(shape)
    t = _target(rng, kind, shape, axis)
    kw = dict(opts, axis=axis, reduction=reduction)
    if kw.get("weight") is True:
        kw["weight"] = make_weight(rng, c)
    if gout == "per_row":
        kw["grad_output"] = rng.uniform(-2, 2, np.shape(fastxent.cross_entropy(x, t, **kw)))
    elif gout is not None:
        kw["grad_output"] = gout
    _, grad = fastxent.cross_entropy_with_grad(x, t, **kw)
    fd = _finite_differences(lambda v: _objective(v, t, kw), x)
    # h = 1e-5: truncation ~h^2 * f''' ~ 1e-10, rounding ~1e-16 / h = 1e-11
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8 * _unit(fd))
    _, ref_grad = ref.cross_entropy_with_grad(x, t, **kw)
    np.testing.assert_allclose(ref_grad, fd, rtol=1e-6, atol=1e-8 * _unit(fd))


# ------------------------------------------------------------------ parity with torch
def _torch_loss_and_grad(x, t, reduction, weight=None, label_smoothing=0.0, ignore_index=-100,
                         grad_output=1.0):
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    tt = torch.tensor(t) if np.asarray(t).dtype.kind in "iu" else torch.tensor(t, dtype=torch.float64)
    wt = None if weight is None else torch.tensor(weight, dtype=torch.float64)
    loss = torch.nn.functional.cross_entropy(xt, tt, weight=wt, ignore_index=ignore_index,
                                             reduction=reduction, label_smoothing=label_smoothing)
    loss.backward(torch.as_tensor(grad_output, dtype=torch.float64).expand_as(loss))
    return loss.detach().numpy(), xt.grad.numpy()


TORCH_CASES = [
    pytest.param("soft", (9, 6), id="soft-2d"),
    pytest.param("soft", (3, 6, 4, 2), id="soft-4d"),
    pytest.param("hard", (3, 6, 5), id="hard-3d"),
    pytest.param("hard", (2, 6, 3, 4), id="hard-4d"),
]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weight", [False, True])
@pytest.mark.parametrize("eps", [0.0, 0.25])
@pytest.mark.parametrize("kind, shape", TORCH_CASES)
def test_matches_torch(kind, shape, eps, weight, reduction, dtype, rng):
    """torch's layout: classes on axis 1; soft targets with weights and label smoothing."""
    c = shape[1]
    x = make_logits(rng, 1, math.prod(shape), dtype).reshape(shape)
    t = _target(rng, kind, shape, 1, dtype)
    w = make_weight(rng, c) if weight else None
    gout = rng.uniform(-2, 2, np.shape(t) if kind == "hard" else shape[:1] + shape[2:]) \
        if reduction == "none" else 1.5
    loss, grad = fastxent.cross_entropy_with_grad(x, t, axis=1, weight=w, label_smoothing=eps,
                                                  reduction=reduction, grad_output=gout)
    tl, tg = _torch_loss_and_grad(f64(x), _t64(t), reduction, w, eps, grad_output=gout)
    assert_close(loss, tl, dtype, err_msg="loss")
    assert_close(grad, tg, dtype, err_msg="grad", scale=_unit(tg))


# ------------------------------------------------------------------ exact no-op properties
def _bitwise_equal(a, b):
    for u, v in zip(a, b):
        assert type(u) is type(v)
        assert np.asarray(u).dtype == np.asarray(v).dtype
        assert np.array_equal(u, v, equal_nan=True), (u, v)


NOOP_CASES = [
    pytest.param("hard", (20, 7), -1, id="hard"),
    pytest.param("soft", (20, 7), -1, id="soft"),
    pytest.param("hard", (3, 7, 4), 1, id="hard-nd"),
    pytest.param("soft", (3, 7, 4), 1, id="soft-nd"),
    pytest.param("hard", (3, 1000), -1, id="hard-long"),
]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("kind, shape, axis", NOOP_CASES)
def test_neutral_options_are_bit_identical(kind, shape, axis, reduction, dtype, rng):
    """z_loss=0, softcap=None, logit_scale=1, label_smoothing=0, base=None are exact no-ops."""
    x = make_logits(rng, 1, math.prod(shape), dtype).reshape(shape)
    x.flat[3] = -np.inf                                   # a masked class too
    t = _target(rng, kind, shape, axis, dtype)
    kw = dict(axis=axis, reduction=reduction, weight=make_weight(rng, shape[axis]))
    plain = fastxent.cross_entropy_with_grad(x, t, **kw)
    for neutral in (dict(z_loss=0.0, softcap=None, logit_scale=1.0, label_smoothing=0.0, base=None),
                    dict(z_loss=0, logit_scale=1, label_smoothing=0)):
        _bitwise_equal(fastxent.cross_entropy_with_grad(x, t, **kw, **neutral), plain)
        _bitwise_equal([fastxent.cross_entropy(x, t, **kw, **neutral)], [plain[0]])
        loss, z, grad = fastxent.cross_entropy_with_grad(x, t, return_z_loss=True, **kw, **neutral)
        _bitwise_equal([loss, grad], plain)
        assert np.all(z == 0)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weight", [False, True])
@pytest.mark.parametrize("eps", [0.0, 0.2])
@pytest.mark.parametrize("nd", [False, True], ids=["2d", "nd"])
def test_one_hot_soft_targets_equal_hard_labels(nd, eps, weight, reduction, dtype, rng):
    """Soft CE with one-hot p = hard-label CE (close, not bitwise).  "mean" divides by the rows for
    soft targets and by the target weights for labels (the same without weights)."""
    shape, axis = ((3, 5, 4), 1) if nd else ((25, 5), -1)
    c = shape[axis]
    x = make_logits(rng, 1, math.prod(shape), dtype).reshape(shape)
    y = _labels(rng, shape[:axis % 3] + shape[axis % 3 + 1:] if nd else (25,), c, ignore=False)
    onehot = np.moveaxis(np.eye(c, dtype=dtype)[y], -1, axis)
    kw = dict(axis=axis, reduction=reduction, label_smoothing=eps,
              weight=make_weight(rng, c) if weight else None)
    lh, gh = fastxent.cross_entropy_with_grad(x, y, **kw)
    ls, gs = fastxent.cross_entropy_with_grad(x, onehot, **kw)
    if weight and reduction == "mean":
        ratio = y.size / kw["weight"][y].sum()       # number of rows / sum(w[y])
        ls, gs = ls * ratio, gs * ratio
    assert_close(ls, lh, dtype)
    assert_close(gs, gh, dtype, scale=_unit(gh))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_base_2_is_nats_over_ln2(kind, reduction, dtype, rng):
    n, c = 40, 9
    x = make_logits(rng, n, c, dtype)
    t = _target(rng, kind, (n, c), -1, dtype)
    kw = dict(reduction=reduction, z_loss=0.01, return_z_loss=True)
    nats = fastxent.cross_entropy_with_grad(x, t, **kw)
    bits = fastxent.cross_entropy_with_grad(x, t, base=2, **kw)
    ulp = np.finfo(dtype).eps
    for b, a in zip(bits[:2], nats[:2]):                 # loss and z term: a couple of roundings
        assert np.asarray(b).dtype == np.asarray(a).dtype
        np.testing.assert_allclose(b, np.asarray(a, np.float64) / math.log(2), rtol=2 * ulp, atol=0)
    gn = nats[2].astype(np.float64)
    np.testing.assert_allclose(bits[2], gn / math.log(2), rtol=4 * ulp, atol=4 * ulp * _unit(gn))
    e = fastxent.cross_entropy_with_grad(x, t, base=math.e, **kw)
    for u, v in zip(e, nats):
        assert_close(u, v, dtype, scale=_unit(v))


# ------------------------------------------------------------------ 16-bit logits
HALF = [pytest.param(np.dtype(np.float16), 2.0 ** -11, id="float16"),
        pytest.param(BF16, 2.0 ** -8, id="bfloat16")]
HALF_OPTS = {
    "plain": ("hard", -1, dict()),
    "options": ("hard", -1, dict(weight=True, label_smoothing=0.1, z_loss=1e-3)),
    "softcap": ("hard", -1, dict(softcap=5.0, logit_scale=1.5)),
    "soft": ("soft", -1, dict(label_smoothing=0.1)),
    "nd": ("hard", 1, dict(z_loss=1e-3)),
    "nd_soft_softcap": ("soft", 1, dict(softcap=4.0)),
}


def _half_case(rng, hdt, name, reduction):
    kind, axis, opts = HALF_OPTS[name]
    shape = (40, 13) if axis == -1 else (4, 13, 5)
    x = make_logits(rng, 1, math.prod(shape), np.float32).reshape(shape).astype(hdt)
    t = _target(rng, kind, shape, axis, np.float32)
    kw = dict(opts, axis=axis, reduction=reduction)
    if kw.get("weight") is True:
        kw["weight"] = make_weight(rng, shape[axis])
    return x, t, kw


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", list(HALF_OPTS))
@pytest.mark.parametrize("hdt, half_ulp", HALF)
def test_16bit_logits_match_float32_on_same_values(hdt, half_ulp, name, reduction, rng):
    """16-bit logits are computed in float32: the loss is that of the upcast logits; the gradient
    is the float32 gradient rounded to the input dtype (within half an ulp of it)."""
    x, t, kw = _half_case(rng, hdt, name, reduction)
    x32 = x.astype(np.float32)
    l16, z16, g16 = fastxent.cross_entropy_with_grad(x, t, return_z_loss=True, **kw)
    l32, z32, g32 = fastxent.cross_entropy_with_grad(x32, t, return_z_loss=True, **kw)
    assert_result_type(l16, np.float32, np.shape(l32))
    assert g16.dtype == hdt and g16.shape == x.shape
    assert_close(l16, l32, np.float32)
    assert_close(z16, z32, np.float32)
    assert_close(fastxent.cross_entropy(x, t, **kw), l32, np.float32)
    g = g16.astype(np.float64)
    ref32 = g32.astype(np.float64)
    tiny = np.finfo(np.float16).smallest_subnormal if hdt == np.float16 else 0.0
    bound = half_ulp * np.abs(ref32) * (1 + 1e-3) + tiny + 1e-6 * _unit(ref32)
    assert np.all(np.abs(g - ref32) <= bound), np.max(np.abs(g - ref32) - bound)
    # and the float64 reference on the upcast values
    el, eg = ref.cross_entropy_with_grad(f64(x), _t64(t), **kw)
    assert_close(l16, el, np.float32)
    assert np.all(np.abs(g - eg) <= half_ulp * np.abs(eg) * (1 + 1e-3) + tiny + 2e-6 * _unit(eg))


@pytest.mark.parametrize("name", ["plain", "softcap", "soft", "nd_soft_softcap"])
@pytest.mark.parametrize("hdt, half_ulp", HALF)
def test_16bit_grad_dtype_float32(hdt, half_ulp, name, rng):
    """grad_dtype=float32: the float32 gradient itself; rounding it gives exactly the 16-bit one."""
    x, t, kw = _half_case(rng, hdt, name, "mean")
    l16, g16 = fastxent.cross_entropy_with_grad(x, t, **kw)
    l_f, g_f = fastxent.cross_entropy_with_grad(x, t, grad_dtype=np.float32, **kw)
    assert g_f.dtype == np.float32 and g_f.shape == x.shape
    assert l_f == l16
    assert np.array_equal(g_f.astype(hdt), g16)
    l32, g32 = fastxent.cross_entropy_with_grad(x.astype(np.float32), t, **kw)
    assert_close(l_f, l32, np.float32)
    assert_close(g_f, g32, np.float32, scale=_unit(g32))
    # grad_dtype=None and grad_dtype=<the logits' dtype> are the same
    _bitwise_equal(fastxent.cross_entropy_with_grad(x, t, grad_dtype=hdt, **kw), (l16, g16))
    # out= of the requested dtype
    out = np.empty(x.shape, np.float32)
    _, got = fastxent.cross_entropy_with_grad(x, t, grad_dtype=np.float32, out=out, **kw)
    assert got is out and np.array_equal(out, g_f)


@pytest.mark.parametrize("hdt, half_ulp", HALF)
def test_16bit_inplace(hdt, half_ulp, rng):
    x, t, kw = _half_case(rng, hdt, "options", "sum")
    loss, grad = fastxent.cross_entropy_with_grad(x, t, **kw)
    xi = x.copy()
    loss_i, got = fastxent.cross_entropy_with_grad(xi, t, inplace=True, **kw)
    assert got is xi and loss_i == loss and np.array_equal(xi, grad)
    with pytest.raises(ValueError, match="^grad_dtype"):
        fastxent.cross_entropy_with_grad(x.copy(), t, inplace=True, grad_dtype=np.float32, **kw)


@pytest.mark.parametrize("hdt", [
    np.dtype(np.float16),
    BF16,
], ids=["float16", "bfloat16"])
def test_16bit_soft_targets_of_16bit_dtype(hdt, rng):
    """Soft targets stored in the logits' own 16-bit type are read as such."""
    n, c = 30, 7
    x = make_logits(rng, n, c, np.float32).astype(hdt)
    p = _probs(rng, (n, c), dtype=np.float32).astype(hdt)
    l16, g16 = fastxent.cross_entropy_with_grad(x, p, reduction="none")
    l32, g32 = fastxent.cross_entropy_with_grad(x.astype(np.float32), p.astype(np.float32),
                                                reduction="none")
    assert_close(l16, l32, np.float32)
    _, gf = fastxent.cross_entropy_with_grad(x, p, reduction="none", grad_dtype=np.float32)
    assert_close(gf, g32, np.float32, scale=_unit(g32))
    assert np.array_equal(gf.astype(hdt), g16)


# ------------------------------------------------------------------ validation
BOTH = [fastxent.cross_entropy, fastxent.cross_entropy_with_grad]
BOTH_IDS = ["cross_entropy", "with_grad"]
ALL = BOTH + [ref.cross_entropy, ref.cross_entropy_with_grad]
ALL_IDS = BOTH_IDS + ["ref.cross_entropy", "ref.with_grad"]


@pytest.fixture
def xt():
    rng = np.random.default_rng(0)
    return make_logits(rng, 4, 5), np.array([0, 1, 4, -100])


@pytest.mark.parametrize("func", ALL, ids=ALL_IDS)
@pytest.mark.parametrize("arg, bad", [
    ("softcap", 0.0), ("softcap", -1.0), ("softcap", np.nan), ("softcap", np.inf),
    ("z_loss", -1e-3), ("z_loss", np.nan), ("z_loss", np.inf),
    ("base", 0.0), ("base", -2.0), ("base", 1.0), ("base", 1), ("base", np.nan), ("base", np.inf),
    ("logit_scale", np.nan), ("logit_scale", np.inf),
])
def test_invalid_option_values(func, arg, bad, xt):
    x, t = xt
    with pytest.raises(ValueError, match=f"^{arg}:"):
        func(x, t, **{arg: bad})


@pytest.mark.parametrize("func", BOTH, ids=BOTH_IDS)
@pytest.mark.parametrize("arg, bad", [("softcap", "2"), ("z_loss", None), ("base", "e"),
                                      ("logit_scale", None), ("axis", 1.0), ("softcap", True)])
def test_option_types(func, arg, bad, xt):
    x, t = xt
    with pytest.raises(TypeError, match=f"^{arg}:"):
        func(x, t, **{arg: bad})


@pytest.mark.parametrize("func", ALL, ids=ALL_IDS)
@pytest.mark.parametrize("shape, axis", [((4, 5), 2), ((4, 5), -3), ((2, 3, 4), 3), ((2, 3, 4), -4)])
def test_axis_out_of_range(func, shape, axis):
    x = np.zeros(shape)
    t = np.zeros(shape[:-1], dtype=np.int64)
    with pytest.raises(ValueError, match="^axis:"):
        func(x, t, axis=axis)


@pytest.mark.parametrize("func", ALL, ids=ALL_IDS)
@pytest.mark.parametrize("shape, pshape, axis", [((4, 5), (4, 6), -1), ((4, 5), (5, 4), -1),
                                                  ((4, 5), (4,), -1), ((2, 3, 4), (2, 4, 3), 1),
                                                  ((2, 3, 4), (2, 3, 4, 1), 1)])
def test_soft_target_shape_mismatch(func, shape, pshape, axis):
    with pytest.raises(ValueError, match="^target:"):
        func(np.zeros(shape), np.full(pshape, 0.2), axis=axis)


@pytest.mark.parametrize("func", ALL, ids=ALL_IDS)
def test_hard_target_shape_mismatch_nd(func):
    """N-D labels must have the logits' shape without the class axis."""
    x = np.zeros((2, 3, 4))
    with pytest.raises(ValueError, match="^target:"):
        func(x, np.zeros((2, 3), dtype=np.int64), axis=1)
    with pytest.raises(ValueError, match="^target:"):
        func(x, np.zeros((8,), dtype=np.int64), axis=1)


@pytest.mark.parametrize("func", [fastxent.cross_entropy_with_grad, ref.cross_entropy_with_grad],
                         ids=["with_grad", "ref.with_grad"])
@pytest.mark.parametrize("ldt, gdt", [(np.float32, np.float64), (np.float32, np.float16),
                                      (np.float64, np.float32), (np.float32, np.int32),
                                      (np.float16, np.float64), (np.float16, BF16),
                                      (BF16, np.float16)])
def test_invalid_grad_dtype(func, ldt, gdt):
    x = np.zeros((3, 4), dtype=ldt)
    with pytest.raises(ValueError, match="^grad_dtype:"):
        func(x, np.array([0, 1, 2]), grad_dtype=gdt)


def test_out_of_wrong_dtype_for_grad_dtype():
    x = np.zeros((3, 4), dtype=np.float16)
    with pytest.raises(ValueError, match="^out:"):
        fastxent.cross_entropy_with_grad(x, np.array([0, 1, 2]), out=np.empty((3, 4), np.float16),
                                         grad_dtype=np.float32)


def test_nd_grad_output_of_wrong_shape(rng):
    x = make_logits(rng, 1, 24).reshape(2, 3, 4)
    t = np.zeros((2, 4), dtype=np.int64)
    with pytest.raises(ValueError, match="^grad_output:"):
        fastxent.cross_entropy_with_grad(x, t, axis=1, reduction="none", grad_output=np.ones(8))


def test_nd_inplace_and_out_need_a_writable_view(rng):
    """inplace=True / out= on a layout whose class rows cannot be viewed without a copy (here
    Fortran order, 4-D, axis=1) are refused with a message, and nothing is written."""
    x = np.asfortranarray(make_logits(rng, 1, 120).reshape(2, 3, 4, 5))
    t = np.zeros((2, 4, 5), dtype=np.int64)
    before = x.copy()
    with pytest.raises(ValueError, match="^logits:"):
        fastxent.cross_entropy_with_grad(x, t, axis=1, inplace=True)
    assert np.array_equal(x, before)
    with pytest.raises(ValueError, match="^out:"):
        fastxent.cross_entropy_with_grad(before, t, axis=1, out=np.asfortranarray(np.empty_like(x)))
    # 3-D Fortran order with axis=1 is a view: allowed, and right
    x3 = np.asfortranarray(make_logits(rng, 1, 60).reshape(3, 4, 5))
    t3 = np.zeros((3, 5), dtype=np.int64)
    _, expected = fastxent.cross_entropy_with_grad(x3, t3, axis=1)
    _, got = fastxent.cross_entropy_with_grad(x3, t3, axis=1, inplace=True)
    assert got is x3 and np.array_equal(x3, expected)


# ------------------------------------------------------------------ threads: bitwise identity
def _thread_case(rng, name, dtype):
    if name == "soft":
        x = make_logits(rng, 3000, 64, dtype)
        return x, _probs(rng, x.shape, dtype=dtype), dict(weight=make_weight(rng, 64), label_smoothing=0.1)
    if name == "nd_axis1":
        x = make_logits(rng, 1, 6 * 64 * 400, dtype).reshape(6, 64, 20, 20)
        return x, _labels(rng, (6, 20, 20), 64), dict(axis=1, z_loss=1e-3)
    if name == "nd_axis1_soft":
        x = make_logits(rng, 1, 6 * 64 * 400, dtype).reshape(6, 64, 20, 20)
        return x, _probs(rng, x.shape, axis=1, dtype=dtype), dict(axis=1)
    if name == "nd_axis0":
        x = make_logits(rng, 1, 32 * 3000, dtype).reshape(32, 3000)
        return x, _labels(rng, (3000,), 32), dict(axis=0, label_smoothing=0.2)
    if name == "softcap":
        x = make_logits(rng, 3000, 64, dtype, scale=8.0)
        return x, _labels(rng, 3000, 64), dict(softcap=5.0, logit_scale=1.3, z_loss=1e-3)
    if name == "long_rows_z":                # one long row per thread or fewer: split across threads
        x = make_logits(rng, 1, 200_000, dtype)
        return x, np.array([17]), dict(z_loss=1e-3, label_smoothing=0.1)
    raise ValueError(name)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("name", ["soft", "nd_axis1", "nd_axis1_soft", "nd_axis0", "softcap",
                                  "long_rows_z"])
def test_threads_bit_identical(name, reduction, dtype, rng):
    x, t, kw = _thread_case(rng, name, dtype)
    kw = dict(kw, reduction=reduction, return_z_loss=True)
    one = fastxent.cross_entropy_with_grad(x, t, num_threads=1, **kw)
    for n_threads in (2, 3):
        _bitwise_equal(fastxent.cross_entropy_with_grad(x, t, num_threads=n_threads, **kw), one)
        _bitwise_equal(fastxent.cross_entropy(x, t, num_threads=n_threads, **kw), one[:2])
