"""fastxent.torch.nll_loss and NLLLoss: checked against torch.nn.functional.nll_loss."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch.autograd import forward_ad as fwAD  # noqa: E402
from torch.func import grad, jacfwd, jacrev, vmap  # noqa: E402

import fastxent  # noqa: E402
import fastxent.torch as ft  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated"),
              pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")]

# nll_loss only gathers and sums: float64 agrees to the last bits; 16-bit is computed in
# float32 by fastxent, in the input's precision by torch
TOL = {torch.float64: dict(rtol=1e-12, atol=1e-13), torch.float32: dict(rtol=1e-6, atol=1e-6),
       torch.float16: dict(rtol=2e-3, atol=2e-3), torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2)}


def _close(a, b, dtype, msg=""):
    assert a.shape == b.shape, (a.shape, b.shape, msg)
    b64 = b.detach().double()
    finite = b64[torch.isfinite(b64)]
    scale = float(finite.abs().max()) if finite.numel() else 1.0
    torch.testing.assert_close(a.detach().double(), b64, rtol=TOL[dtype]["rtol"],
                               atol=TOL[dtype]["atol"] * max(scale, 1.0), equal_nan=True,
                               msg=lambda m: f"{msg}: {m}")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _case(shape, dtype, seed=0, ignore=-100):
    """log-probabilities and labels (every fourth one ignored)."""
    g = _gen(seed)
    x = torch.log_softmax(torch.randn(shape, generator=g, dtype=torch.float64) * 3,
                          dim=1 if len(shape) > 1 else 0).to(dtype)
    C = shape[1] if len(shape) > 1 else shape[0]
    t = torch.randint(0, C, shape[:1] + shape[2:] if len(shape) > 1 else (), generator=g)
    if t.dim():
        t.view(-1)[::4] = ignore
    return x, t


def _run(fn, x, t, **kw):
    x = x.detach().clone().requires_grad_()
    loss = fn(x, t, **kw)
    r = torch.rand(loss.shape, generator=_gen(1), dtype=torch.float64).to(loss.dtype) + 0.5
    (loss * r).sum().backward()
    return loss.detach(), x.grad


@pytest.mark.parametrize("shape", [(13, 7), (5, 7, 3, 2), (7,)], ids=["2d", "nd", "unbatched"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weight", [None, "positive", "negative"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16],
                         ids=str)
def test_matches_torch(shape, reduction, weight, dtype):
    x, t = _case(shape, dtype)
    w = None
    if weight is not None:
        w = torch.rand(7, generator=_gen(2), dtype=torch.float64) + 0.2
        if weight == "negative":
            w = w * torch.tensor([-9.0, 9, -3, 1, 2, -1, 5], dtype=torch.float64)
        w = w.to(dtype)
    kw = dict(weight=w, reduction=reduction)
    loss, g = _run(ft.nll_loss, x, t, **kw)
    # torch at float64 on the same values (fastxent computes 16-bit input in float32)
    exp_loss, exp_g = _run(F.nll_loss, x.double(), t, weight=None if w is None else w.double(),
                           reduction=reduction)
    assert loss.dtype == dtype and g.dtype == dtype
    _close(loss, exp_loss, dtype, "loss")
    _close(g, exp_g, dtype, "grad")


@pytest.mark.parametrize("ignore_index", [-100, 2, -1])
def test_ignore_index_and_all_ignored(ignore_index):
    x, t = _case((20, 5), torch.float64, ignore=ignore_index)
    for reduction in ("mean", "sum", "none"):
        kw = dict(ignore_index=ignore_index, reduction=reduction)
        loss, g = _run(ft.nll_loss, x, t, **kw)
        exp_loss, exp_g = _run(F.nll_loss, x, t, **kw)
        _close(loss, exp_loss, torch.float64, reduction)
        _close(g, exp_g, torch.float64, reduction)
    t[:] = ignore_index                                  # every row ignored: nan, zero gradient
    loss, g = _run(ft.nll_loss, x, t, ignore_index=ignore_index)
    exp_loss, _ = _run(F.nll_loss, x, t, ignore_index=ignore_index)
    assert torch.isnan(loss) and torch.isnan(exp_loss) and not g.any()


@pytest.mark.filterwarnings("ignore:size_average and reduce args will be deprecated")
def test_module():
    w = torch.rand(7, dtype=torch.float64) + 0.5
    m = ft.NLLLoss(weight=w, ignore_index=3, reduction="sum", num_threads=1)
    ref = torch.nn.NLLLoss(weight=w, ignore_index=3, reduction="sum")
    assert isinstance(m, torch.nn.NLLLoss)
    assert m.state_dict().keys() == ref.state_dict().keys()
    x, t = _case((13, 7), torch.float64, ignore=3)
    loss, g = _run(lambda a, b: m(a, b), x, t)
    exp_loss, exp_g = _run(lambda a, b: ref(a, b), x, t)
    _close(loss, exp_loss, torch.float64)
    _close(g, exp_g, torch.float64)
    for sa, rd in ((False, None), (None, False), (True, True)):
        a, b = ft.NLLLoss(size_average=sa, reduce=rd), torch.nn.NLLLoss(size_average=sa, reduce=rd)
        assert a.reduction == b.reduction
        _close(a(x, t), b(x, t), torch.float64)
        _close(ft.nll_loss(x, t, size_average=sa, reduce=rd), b(x, t), torch.float64)


def test_the_kernel_runs(monkeypatch):
    """The forward is fastxent's fused nll kernel, reading the tensor's memory."""
    calls = []
    real = fastxent.nll_loss_with_grad
    monkeypatch.setattr(fastxent, "nll_loss_with_grad",
                        lambda *a, **k: calls.append(a) or real(*a, **k))
    x, t = _case((9, 4), torch.float32)
    x.requires_grad_()
    ft.nll_loss(x, t).backward()
    assert len(calls) == 1 and np.shares_memory(calls[0][0], x.detach().numpy())


def test_fallbacks_and_errors():
    x, t = _case((4, 3), torch.float64)
    # float targets: nll_loss takes class indices; torch's own error
    p = torch.softmax(torch.randn(4, 3, dtype=torch.float64), 1)
    assert "class indices" in ft.fallback_reason(x, p, loss="nll_loss")
    with pytest.raises(RuntimeError):
        ft.nll_loss(x, p)
    with pytest.raises(RuntimeError):
        F.nll_loss(x, p)
    # C = 0 with every label ignored: torch's nan / 0
    x0 = torch.zeros(3, 0, dtype=torch.float64, requires_grad=True)
    t0 = torch.full((3,), -100)
    for reduction in ("mean", "sum", "none"):
        _close(ft.nll_loss(x0, t0, reduction=reduction), F.nll_loss(x0, t0, reduction=reduction),
               torch.float64, reduction)
    # a bad label: fastxent's message; a bad reduction too
    with pytest.raises(ValueError, match=r"^target: label 3 at row 1 is out of range \[0, 3\)"):
        ft.nll_loss(x, torch.tensor([0, 3, 1, 2]))
    with pytest.raises(ValueError, match="^reduction"):
        ft.nll_loss(x, t, reduction="avg")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_higher_order_and_transforms(reduction):
    """Double backward (a gradient constant in the input, linear in grad_output), forward-mode
    AD and torch.func, as torch."""
    x, t = _case((6, 5), torch.float64, seed=3)
    w = torch.tensor([-2.0, 3.0, 0.5, 9.0, 1.0], dtype=torch.float64)
    kw = dict(weight=w, reduction=reduction)

    def ours(a):
        return ft.nll_loss(a, t, **kw)

    def theirs(a):
        return F.nll_loss(a, t, **kw)

    xx = x.clone().requires_grad_()
    assert torch.autograd.gradcheck(ours, (xx,), check_forward_ad=True, check_batched_grad=True)
    assert torch.autograd.gradgradcheck(ours, (xx,), check_fwd_over_rev=True,
                                        check_batched_grad=True)
    dx = torch.randn(x.shape, generator=_gen(4), dtype=torch.float64)
    with fwAD.dual_level():
        a = fwAD.unpack_dual(ours(fwAD.make_dual(x, dx))).tangent
        e = fwAD.unpack_dual(theirs(fwAD.make_dual(x, dx))).tangent
    _close(a, e, torch.float64, "tangent")
    xs = torch.stack([x, 2 * x])
    _close(vmap(ours)(xs), vmap(theirs)(xs), torch.float64, "vmap")
    _close(jacrev(ours)(x), jacrev(theirs)(x), torch.float64, "jacrev")
    _close(jacfwd(ours)(x), jacfwd(theirs)(x), torch.float64, "jacfwd")

    def total(fn):
        return lambda a: fn(a).sum()
    _close(grad(total(ours))(x), grad(total(theirs))(x), torch.float64, "grad")
    # log_softmax -> nll_loss: the second derivative flows through torch's log_softmax
    z = torch.randn(6, 5, generator=_gen(5), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda a: ft.nll_loss(torch.log_softmax(a, 1), t, **kw),
                                        (z,))


def test_torch_compile():
    """A compiled log_softmax + nll_loss step has no graph break and matches eager torch."""
    import torch._dynamo

    torch._dynamo.reset()
    g = _gen(6)
    W = torch.randn(8, 5, generator=g, requires_grad=True)
    X = torch.randn(32, 8, generator=g)
    y = torch.randint(0, 5, (32,), generator=g)
    y[::7] = -100

    def loss_fn(W, X, y):
        return ft.nll_loss(torch.log_softmax(X @ W, 1), y)

    assert torch._dynamo.explain(loss_fn)(W, X, y).graph_break_count == 0
    exp = F.nll_loss(torch.log_softmax(X @ W, 1), y)
    exp_grad, = torch.autograd.grad(exp, W)
    loss = torch.compile(loss_fn, fullgraph=True)(W, X, y)
    got, = torch.autograd.grad(loss, W)
    _close(loss, exp, torch.float32)
    _close(got, exp_grad, torch.float32)
