"""fastxent.torch under autograd beyond ``loss.backward()``: double backward, forward-mode AD,
torch.func transforms, checked with torch's gradcheck / gradgradcheck and against torch itself.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch.autograd import forward_ad as fwAD  # noqa: E402
from torch.func import grad, hessian, jacfwd, jacrev, vmap  # noqa: E402

import fastxent.torch as ft  # noqa: E402
from fastxent import _torch_math  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated"),
              pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")]

F64 = torch.float64


def _close(a, b, rtol=1e-10, atol=1e-12, msg=""):
    assert a.shape == b.shape, (a.shape, b.shape, msg)
    torch.testing.assert_close(a.detach().double(), b.detach().double(), rtol=rtol, atol=atol,
                               equal_nan=True, msg=lambda m: f"{msg}: {m}")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _inputs(shape, target_kind, seed=0):
    """float64 logits and a target: labels with an ignored row (-100), or probabilities."""
    g = _gen(seed)
    x = torch.randn(shape, generator=g, dtype=F64) * 2
    C = shape[1] if len(shape) > 1 else shape[0]
    if target_kind == "index":
        t = torch.randint(0, C, shape[:1] + shape[2:] if len(shape) > 1 else (), generator=g)
        if t.dim():
            t.view(-1)[1] = -100
    else:
        t = torch.softmax(torch.randn(shape, generator=g, dtype=F64), dim=1 if len(shape) > 1
                          else 0)
    return x, t


# weights include negative ones, as torch's own test inputs do
WEIGHT = torch.tensor([-2.0, 3.0, 0.5, 9.0], dtype=F64)
SHAPES = {"2d": (5, 4), "nd": (3, 4, 2, 2), "unbatched": (4,)}
OPTIONS = {"plain": {}, "weight": dict(weight=WEIGHT), "smoothing": dict(label_smoothing=0.2),
           "all": dict(weight=WEIGHT, label_smoothing=0.3, ignore_index=2)}


def _cases():
    for shape in SHAPES:
        for kind in ("index", "probs"):
            for reduction in ("mean", "sum", "none"):
                for opt in OPTIONS:
                    if kind == "probs" and "ignore_index" in OPTIONS[opt]:
                        continue
                    yield pytest.param(shape, kind, reduction, opt,
                                       id=f"{shape}-{kind}-{reduction}-{opt}")


@pytest.mark.parametrize("shape,kind,reduction,opt", list(_cases()))
def test_gradcheck_and_gradgradcheck(shape, kind, reduction, opt):
    """First and second derivatives (reverse, forward, forward-over-reverse, batched) are
    consistent with finite differences, for every option."""
    x, t = _inputs(SHAPES[shape], kind)
    if opt == "all" and kind == "index":
        t = torch.where(t == -100, 2, t)                      # the ignored row: ignore_index 2
    kw = dict(OPTIONS[opt], reduction=reduction)

    def f(a):
        return ft.cross_entropy(a, t, **kw)

    x.requires_grad_()
    # fast mode: the Jacobians projected on random vectors (a wrong entry still shows);
    # the full Jacobians are compared in test_gradgradcheck_full_jacobians
    assert torch.autograd.gradcheck(f, (x,), check_forward_ad=True, check_batched_grad=True,
                                    fast_mode=True)
    assert torch.autograd.gradgradcheck(f, (x,), check_fwd_over_rev=True,
                                        check_batched_grad=True, fast_mode=True)


@pytest.mark.parametrize("kind", ["index", "probs"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradgradcheck_full_jacobians(kind, reduction):
    x, t = _inputs((4, 4), kind, seed=16)
    kw = dict(weight=WEIGHT, label_smoothing=0.2, reduction=reduction)
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda a: ft.cross_entropy(a, t, **kw), (x,),
                                    check_forward_ad=True)
    assert torch.autograd.gradgradcheck(lambda a: ft.cross_entropy(a, t, **kw), (x,))


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("kind", ["index", "probs"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_second_derivatives_match_torch(shape, kind, reduction):
    """create_graph=True: the gradient and a Hessian-vector product equal torch's."""
    x, t = _inputs(SHAPES[shape], kind, seed=1)
    kw = dict(weight=WEIGHT, label_smoothing=0.1, reduction=reduction)
    v = torch.randn(x.shape, generator=_gen(7), dtype=F64)
    res = []
    for fn in (ft.cross_entropy, F.cross_entropy):
        xx = x.clone().requires_grad_()
        loss = fn(xx, t, **kw)
        r = torch.rand(loss.shape, generator=_gen(3), dtype=F64) + 0.5
        g, = torch.autograd.grad((loss * r).sum(), xx, create_graph=True)
        hv, = torch.autograd.grad((g * v).sum(), xx)
        res.append((g, hv))
    _close(res[0][0], res[1][0], msg="gradient")
    _close(res[0][1], res[1][1], msg="Hessian-vector product")


def _mlp_gradient_penalty(loss_fn):
    """A WGAN-GP / R1-style penalty: the squared norm of d(loss)/d(input) through a small MLP,
    differentiated with respect to the weights (a double backward)."""
    g = _gen(11)
    X = torch.randn(16, 6, generator=g, dtype=F64, requires_grad=True)
    y = torch.randint(0, 5, (16,), generator=g)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(),
                                torch.nn.Linear(8, 5)).double()
    loss = loss_fn(model(X), y, label_smoothing=0.1)
    gx, = torch.autograd.grad(loss, X, create_graph=True)
    penalty = gx.pow(2).sum()
    W = model[0].weight
    return penalty.detach(), torch.autograd.grad(penalty, W)[0]


def test_gradient_penalty_through_mlp():
    ours, ours_grad = _mlp_gradient_penalty(ft.cross_entropy)
    exp, exp_grad = _mlp_gradient_penalty(F.cross_entropy)
    _close(ours, exp, msg="penalty")
    _close(ours_grad, exp_grad, msg="d penalty / d W")
    assert exp_grad.abs().max() > 1e-4                     # a real second-order signal


def test_module_double_backward():
    m = ft.CrossEntropyLoss(weight=WEIGHT, label_smoothing=0.1)
    x, t = _inputs((6, 4), "index", seed=2)
    x.requires_grad_()
    assert torch.autograd.gradgradcheck(lambda a: m(a, t), (x,))


def test_fused_kernel_unless_a_graph_is_recorded(monkeypatch):
    """Plain backward: the kernel's saved gradient; create_graph=True: the torch formula."""
    calls = []
    real = _torch_math.xent_row_grad
    monkeypatch.setattr(_torch_math, "xent_row_grad",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    x, t = _inputs((6, 4), "index", seed=3)
    x.requires_grad_()
    g1, = torch.autograd.grad(ft.cross_entropy(x, t), x)
    assert not calls and not g1.requires_grad
    g2, = torch.autograd.grad(ft.cross_entropy(x, t), x, create_graph=True)
    assert calls and g2.requires_grad
    _close(g1, g2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_double_backward_low_precision(dtype):
    """The formula computes 16-bit logits in float32 and returns the input's dtype."""
    x, t = _inputs((8, 4), "index", seed=4)
    x = x.to(dtype)
    res = []
    for fn in (ft.cross_entropy, F.cross_entropy):
        xx = x.clone().requires_grad_()
        g, = torch.autograd.grad(fn(xx, t, label_smoothing=0.1), xx, create_graph=True)
        hv, = torch.autograd.grad(g.pow(2).sum(), xx)
        assert g.dtype == dtype and hv.dtype == dtype
        res.append((g, hv))
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-3)
    _close(res[0][0], res[1][0], **tol)
    _close(res[0][1], res[1][1], **tol)


# ------------------------------------------------------------------ forward-mode AD
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("kind", ["index", "probs"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_forward_ad_tangent_matches_torch(shape, kind, reduction):
    x, t = _inputs(SHAPES[shape], kind, seed=5)
    dx = torch.randn(x.shape, generator=_gen(8), dtype=F64)
    kw = dict(weight=WEIGHT, label_smoothing=0.1, reduction=reduction)
    out = []
    for fn in (ft.cross_entropy, F.cross_entropy):
        with fwAD.dual_level():
            primal, tangent = fwAD.unpack_dual(fn(fwAD.make_dual(x, dx), t, **kw))
            out.append((primal, tangent))
    assert out[0][1] is not None
    _close(out[0][0], out[1][0], msg="primal")
    _close(out[0][1], out[1][1], msg="tangent")


def test_forward_over_reverse_without_create_graph():
    """A tangent through a plain backward (forward AD over reverse) is not dropped."""
    x, t = _inputs((5, 4), "index", seed=6)
    dx = torch.randn(x.shape, generator=_gen(9), dtype=F64)
    out = []
    for fn in (ft.cross_entropy, F.cross_entropy):
        with fwAD.dual_level():
            xd = fwAD.make_dual(x.clone().requires_grad_(), dx)
            g, = torch.autograd.grad(fn(xd, t, label_smoothing=0.1), xd)
            out.append(fwAD.unpack_dual(g).tangent)
    assert out[0] is not None
    _close(out[0], out[1])


def test_forward_ad_tangent_of_soft_target_and_weight():
    """Tangents on the target or the weight: handed to torch (fastxent differentiates the
    input only), so the tangent is torch's."""
    x, p = _inputs((5, 4), "probs", seed=7)
    dp = torch.randn(p.shape, generator=_gen(10), dtype=F64)
    with fwAD.dual_level():
        pd = fwAD.make_dual(p, dp)
        assert "tangent" in ft.fallback_reason(x, pd)
        a = fwAD.unpack_dual(ft.cross_entropy(x, pd)).tangent
        b = fwAD.unpack_dual(F.cross_entropy(x, pd)).tangent
    _close(a, b)


# ------------------------------------------------------------------ torch.func
@pytest.mark.parametrize("kind", ["index", "probs"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_torch_func_transforms(kind, reduction):
    x, t = _inputs((5, 4), kind, seed=8)
    kw = dict(weight=WEIGHT, label_smoothing=0.1, reduction=reduction)
    xs = torch.stack([x, 2 * x, -x])

    def ours(a):
        return ft.cross_entropy(a, t, **kw)

    def theirs(a):
        return F.cross_entropy(a, t, **kw)

    def total(fn):
        return lambda a: fn(a).sum()

    _close(vmap(ours)(xs), vmap(theirs)(xs), msg="vmap")
    _close(vmap(ours, in_dims=1)(xs.movedim(0, 1)), vmap(theirs)(xs), msg="vmap in_dims=1")
    _close(grad(total(ours))(x), grad(total(theirs))(x), msg="grad")
    _close(jacrev(ours)(x), jacrev(theirs)(x), msg="jacrev")
    _close(jacfwd(ours)(x), jacfwd(theirs)(x), msg="jacfwd")
    _close(hessian(total(ours))(x), hessian(total(theirs))(x), msg="hessian")
    _close(jacfwd(jacrev(total(ours)))(x), hessian(total(theirs))(x), msg="jacfwd(jacrev)")
    _close(vmap(grad(total(ours)))(xs), vmap(grad(total(theirs)))(xs), msg="per-sample grad")


def test_vmap_over_target_and_unbatched_rows():
    """Batched targets (torch's own cross_entropy cannot vmap over them with a weight and
    label smoothing: a loop of torch calls is the reference) and per-row unbatched calls."""
    x, t = _inputs((5, 4), "index", seed=9)
    xs, ts = torch.stack([x, x.flip(0)]), torch.stack([t, t.flip(0)])
    kw = dict(weight=WEIGHT, label_smoothing=0.1)
    got = vmap(lambda a, b: ft.cross_entropy(a, b, **kw))(xs, ts)
    _close(got, torch.stack([F.cross_entropy(a, b, **kw) for a, b in zip(xs, ts)]))
    rows = vmap(lambda a, b: ft.cross_entropy(a, b, reduction="none"))(x, t.clamp(min=0))
    _close(rows, F.cross_entropy(x, t.clamp(min=0), reduction="none"))


def test_torch_func_grad_of_soft_target():
    """grad with respect to the soft target goes to torch (a tracked target falls back)."""
    x, p = _inputs((5, 4), "probs", seed=10)
    _close(grad(lambda q: ft.cross_entropy(x, q))(p), grad(lambda q: F.cross_entropy(x, q))(p))


# ------------------------------------------------------------------ linear_cross_entropy
def _linear_case(seed=12):
    g = _gen(seed)
    h = torch.randn(2, 3, 3, generator=g, dtype=F64, requires_grad=True)
    W = torch.randn(5, 3, generator=g, dtype=F64, requires_grad=True)
    b = torch.randn(5, generator=g, dtype=F64, requires_grad=True)
    y = torch.randint(0, 5, (2, 3), generator=g)
    y[0, 1] = -100
    return h, W, b, y


LINEAR_OPTIONS = {"plain": {}, "llm": dict(label_smoothing=0.1, z_loss=0.01, softcap=3.0)}


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("opt", list(LINEAR_OPTIONS))
def test_linear_cross_entropy_double_backward(reduction, opt):
    h, W, b, y = _linear_case()
    kw = dict(LINEAR_OPTIONS[opt], reduction=reduction, chunk_size=4)

    def f(h, W, b):
        return ft.linear_cross_entropy(h, W, y, b, **kw)

    assert torch.autograd.gradcheck(f, (h, W, b), check_forward_ad=True,
                                    check_batched_grad=True, fast_mode=True)
    assert torch.autograd.gradgradcheck(f, (h, W, b), check_fwd_over_rev=True,
                                        check_batched_grad=True, fast_mode=True)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_linear_cross_entropy_matches_torch_second_order(reduction):
    """The value and a second derivative against torch's F.linear + F.cross_entropy (+ the
    z-loss and softcap written out in torch)."""
    h, W, b, y = _linear_case(13)
    zl, cap = 0.01, 3.0

    def theirs(h, W, b):
        z = F.linear(h, W, b).reshape(6, 5)
        z = cap * torch.tanh(z / cap)
        t = y.reshape(6)
        valid = t != -100
        rows = F.cross_entropy(z, t, reduction="none", label_smoothing=0.1)
        rows = rows + torch.where(valid, zl * torch.logsumexp(z, 1) ** 2, 0.0)
        if reduction == "none":
            return rows.reshape(2, 3)
        return rows.sum() / valid.sum() if reduction == "mean" else rows.sum()

    def ours(h, W, b):
        return ft.linear_cross_entropy(h, W, y, b, reduction=reduction, label_smoothing=0.1,
                                       z_loss=zl, softcap=cap, chunk_size=4)

    out = []
    for fn in (ours, theirs):
        loss = fn(h, W, b)
        gh, = torch.autograd.grad(loss.sum(), h, create_graph=True)
        out.append((loss, gh, torch.autograd.grad(gh.pow(2).sum(), (W, b))))
    _close(out[0][0], out[1][0], msg="loss")
    _close(out[0][1], out[1][1], msg="grad")
    for a, e in zip(out[0][2], out[1][2]):
        _close(a, e, msg="second order")
    with fwAD.dual_level():                                # forward mode: torch operations
        dh = torch.randn(h.shape, generator=_gen(14), dtype=F64)
        a = fwAD.unpack_dual(ours(fwAD.make_dual(h.detach(), dh), W.detach(), b.detach()))
        e = fwAD.unpack_dual(theirs(fwAD.make_dual(h.detach(), dh), W.detach(), b.detach()))
    _close(a.primal, e.primal)
    _close(a.tangent, e.tangent)
    _close(jacrev(lambda hh: ours(hh, W, b))(h), jacrev(lambda hh: theirs(hh, W, b))(h))


def test_linear_cross_entropy_torch_path_checks_options():
    h, W, b, y = _linear_case()
    with pytest.raises(ValueError, match="^label_smoothing"):
        vmap(lambda hh: ft.linear_cross_entropy(hh, W, y, b, label_smoothing=2.0))(h)
    with pytest.raises(ValueError, match="^reduction"):
        grad(lambda hh: ft.linear_cross_entropy(hh, W, y, b, reduction="avg"))(h)


def test_no_silent_numpy_on_wrapped_tensors():
    """Every public entry point gives torch's number under a transform (never a detached
    NumPy value): a jvp through each equals the jvp through torch."""
    x, t = _inputs((5, 4), "index", seed=15)
    dx = torch.ones_like(x)
    got = torch.func.jvp(lambda a: ft.CrossEntropyLoss(reduction="sum")(a, t), (x,), (dx,))
    exp = torch.func.jvp(lambda a: F.cross_entropy(a, t, reduction="sum"), (x,), (dx,))
    _close(got[0], exp[0])
    _close(got[1], exp[1])
    assert np.isfinite(got[1].item())


def test_documented_deviations():
    """The deviations listed in the README's "Differences from PyTorch" are what happens."""
    x, t = _inputs((5, 4), "index", seed=17)
    # the input is saved for second derivatives: modifying it in place after the forward is
    # autograd's error in the backward (torch's cross_entropy saves its log-softmax instead)
    y = x.clone().requires_grad_() * 1.0
    loss = ft.cross_entropy(y, t)
    y.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    # (no longer a deviation) a mean whose target weights sum to exactly 0: +-inf, as torch
    w = torch.tensor([1.0, -1.0, 0.0, 0.0], dtype=F64)
    t0 = torch.tensor([0, 1, 0, 1])
    assert torch.isinf(F.cross_entropy(x[:4], t0, weight=w))
    assert ft.cross_entropy(x[:4], t0, weight=w) == F.cross_entropy(x[:4], t0, weight=w)
