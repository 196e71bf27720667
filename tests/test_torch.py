"""fastxent.torch: the PyTorch drop-in, checked against torch.nn.functional.cross_entropy.

Skipped when torch is not installed (optional extra ``fastxent[torch]``).
"""
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

import fastxent  # noqa: E402
import fastxent.torch as ft  # noqa: E402
from fastxent._kernels import xent as _xent  # noqa: E402

# torch's own internals (dynamo / opcheck) use torch.jit.script_method, deprecated in 2.13
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")

# float64: both sides compute in float64 (a few ulp apart); float32: torch's and fastxent's
# exp differ by ~1e-7 relative, summed over C classes.
TOL = {torch.float64: dict(rtol=1e-11, atol=1e-12), torch.float32: dict(rtol=2e-5, atol=2e-6),
       torch.float16: dict(rtol=2e-3, atol=2e-3), torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2)}


def assert_tensors_close(a, b, dtype, msg=""):
    assert a.shape == b.shape, (a.shape, b.shape, msg)
    a64, b64 = a.detach().double(), b.detach().double()
    finite = b64[torch.isfinite(b64)]
    scale = max(float(finite.abs().max()) if finite.numel() else 1.0, 1e-300)
    t = TOL[dtype]
    torch.testing.assert_close(a64, b64, rtol=t["rtol"], atol=t["atol"] * scale, equal_nan=True,
                               msg=lambda m: f"{msg}: {m}")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _case(shape, dtype, target_kind, ignore=True, seed=0):
    """input (requires grad), target: class indices (some ignored) or probabilities."""
    g = _gen(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3).to(dtype).requires_grad_()
    C = shape[1] if len(shape) > 1 else shape[0]
    tshape = (shape[:1] + shape[2:]) if len(shape) > 1 else ()
    if target_kind == "index":
        t = torch.randint(0, C, tshape, generator=g)
        if ignore and t.dim():
            t.view(-1)[::4] = -100
    else:
        t = torch.softmax(torch.randn(shape, generator=g, dtype=torch.float64), dim=1 if
                          len(shape) > 1 else 0).to(dtype)
    return x, t


def _run(fn, x, t, grad_output_seed=1, **kw):
    """loss and d(sum(loss * r))/dx for a random r (a random vector for reduction='none')."""
    x = x.detach().clone().requires_grad_()
    loss = fn(x, t, **kw)
    r = torch.rand(loss.shape, generator=_gen(grad_output_seed), dtype=torch.float64).to(
        loss.dtype) + 0.5
    (loss * r).sum().backward()
    return loss.detach(), x.grad


SHAPES = [(13, 7), (5, 6, 3, 2), (9,)]


@pytest.mark.parametrize("shape", SHAPES, ids=["2d", "nd", "unbatched"])
@pytest.mark.parametrize("target_kind", ["index", "probs"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("with_weight", [False, True])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.15])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_torch(shape, target_kind, reduction, with_weight, label_smoothing, dtype):
    x, t = _case(shape, dtype, target_kind)
    C = shape[1] if len(shape) > 1 else shape[0]
    weight = torch.rand(C, generator=_gen(2), dtype=dtype) + 0.2 if with_weight else None
    kw = dict(weight=weight, reduction=reduction, label_smoothing=label_smoothing)
    loss, grad = _run(ft.cross_entropy, x, t, **kw)
    exp_loss, exp_grad = _run(F.cross_entropy, x, t, **kw)
    assert loss.dtype == dtype and grad.dtype == dtype
    assert_tensors_close(loss, exp_loss, dtype, "loss")
    assert_tensors_close(grad, exp_grad, dtype, "grad")


@pytest.mark.parametrize("ignore_index", [-100, 2, -1])
def test_ignore_index(ignore_index):
    x, t = _case((20, 5), torch.float64, "index", ignore=False)
    t[::3] = ignore_index
    for reduction in ("mean", "sum", "none"):
        kw = dict(ignore_index=ignore_index, reduction=reduction, label_smoothing=0.1)
        loss, grad = _run(ft.cross_entropy, x, t, **kw)
        exp_loss, exp_grad = _run(F.cross_entropy, x, t, **kw)
        assert_tensors_close(loss, exp_loss, torch.float64, reduction)
        assert_tensors_close(grad, exp_grad, torch.float64, reduction)
    t[:] = ignore_index                                   # every row ignored: nan, zero gradient
    loss, grad = _run(ft.cross_entropy, x, t, ignore_index=ignore_index)
    assert torch.isnan(loss) and not grad.any()


@pytest.mark.parametrize("tdtype", [torch.int64, torch.int32, torch.int16, torch.uint8])
def test_target_integer_dtypes(tdtype):
    """Any integer dtype works (torch itself wants int64 or uint8)."""
    x, t = _case((12, 6), torch.float64, "index", ignore=False)
    loss, grad = _run(ft.cross_entropy, x, t.to(tdtype))
    exp_loss, exp_grad = _run(F.cross_entropy, x, t)
    assert_tensors_close(loss, exp_loss, torch.float64)
    assert_tensors_close(grad, exp_grad, torch.float64)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_16bit(dtype, reduction, monkeypatch):
    x, t = _case((16, 10), dtype, "index")
    loss, grad = _run(ft.cross_entropy, x, t, reduction=reduction)
    exp_loss, exp_grad = _run(F.cross_entropy, x, t, reduction=reduction)
    assert loss.dtype == dtype and grad.dtype == dtype
    assert_tensors_close(loss, exp_loss, dtype, "loss")
    assert_tensors_close(grad, exp_grad, dtype, "grad")
    if dtype == torch.bfloat16:
        # without ml_dtypes, bfloat16 goes through a float32 copy: the same answer
        monkeypatch.setattr(ft, "_BF16", None)
        loss2, grad2 = _run(ft.cross_entropy, x, t, reduction=reduction)
        assert_tensors_close(loss2, exp_loss, dtype, "loss")
        assert_tensors_close(grad2, exp_grad, dtype, "grad")


@pytest.mark.filterwarnings("ignore:size_average and reduce args will be deprecated")
def test_module():
    w = torch.rand(7, dtype=torch.float64) + 0.5
    m = ft.CrossEntropyLoss(weight=w, ignore_index=3, reduction="sum", label_smoothing=0.05,
                            num_threads=1)
    ref_m = torch.nn.CrossEntropyLoss(weight=w, ignore_index=3, reduction="sum",
                                      label_smoothing=0.05)
    assert isinstance(m, torch.nn.CrossEntropyLoss)
    assert m.state_dict().keys() == ref_m.state_dict().keys()
    x, t = _case((13, 7), torch.float64, "index", ignore=False)
    t[::4] = 3
    loss, grad = _run(lambda x, t: m(x, t), x, t)
    exp_loss, exp_grad = _run(lambda x, t: ref_m(x, t), x, t)
    assert_tensors_close(loss, exp_loss, torch.float64)
    assert_tensors_close(grad, exp_grad, torch.float64)
    assert "num_threads" not in m.state_dict()
    # the legacy arguments map to the same reductions as torch's
    for sa, rd in ((False, None), (None, False), (True, True)):
        a = ft.CrossEntropyLoss(size_average=sa, reduce=rd)
        b = torch.nn.CrossEntropyLoss(size_average=sa, reduce=rd)
        assert a.reduction == b.reduction
        assert_tensors_close(a(x, t), b(x, t), torch.float64)
        assert_tensors_close(ft.cross_entropy(x, t, size_average=sa, reduce=rd),
                             b(x, t), torch.float64)


# ------------------------------------------------------------------ zero copy, autograd paths
class _Spy:
    def __init__(self, monkeypatch, name):
        self.calls = []
        real = getattr(fastxent, name)

        def spy(logits, target, **kw):
            self.calls.append((logits, target, kw))
            return real(logits, target, **kw)
        monkeypatch.setattr(fastxent, name, spy)


@pytest.mark.parametrize("layout", ["contiguous", "transposed", "sliced", "nd_channels_last"])
def test_zero_copy(layout, monkeypatch):
    """The kernel reads the tensor's own memory: no conversion or copy of the logits."""
    base = torch.randn(40, 24, dtype=torch.float32)
    if layout == "contiguous":
        x = base
    elif layout == "transposed":
        x = base.t()                                     # (24, 40), column-major
    elif layout == "sliced":
        x = base[1::3, ::2]                              # storage offset + strides
    else:
        x = base.reshape(2, 4, 10, 12).permute(0, 3, 1, 2)   # (N, C, H, W) with C innermost
    x = x.requires_grad_() if x.is_leaf else x.detach().requires_grad_()
    t = torch.randint(0, x.shape[1], x.shape[:1] + x.shape[2:])
    spy = _Spy(monkeypatch, "cross_entropy_with_grad")
    loss = ft.cross_entropy(x, t)
    loss.backward()
    (logits, target, kw), = spy.calls
    assert isinstance(logits, np.ndarray) and np.shares_memory(logits, base.detach().numpy())
    assert np.shares_memory(target, t.numpy())
    assert kw["out"] is not None                     # gradient written into a torch tensor
    exp = F.cross_entropy(x.detach().clone().requires_grad_(), t)
    assert_tensors_close(loss, exp, torch.float32)


def test_no_grad_skips_gradient_work(monkeypatch):
    x, t = _case((10, 5), torch.float64, "index")
    with_grad = _Spy(monkeypatch, "cross_entropy_with_grad")
    loss_only = _Spy(monkeypatch, "cross_entropy")
    with torch.no_grad():
        a = ft.cross_entropy(x, t)
    b = ft.cross_entropy(x.detach(), t)                 # input that does not require grad
    with torch.inference_mode():
        c = ft.cross_entropy(x, t)
    assert len(loss_only.calls) == 3 and not with_grad.calls
    assert a.grad_fn is None and b.grad_fn is None and not c.requires_grad
    exp = F.cross_entropy(x.detach(), t)
    for v in (a, b, c):
        assert_tensors_close(v, exp, torch.float64)
    ft.cross_entropy(x, t).backward()
    assert len(with_grad.calls) == 1


def test_backward_scaling_and_reuse():
    """grad_output != 1, the same input used twice, retain_graph and a second backward."""
    x, t = _case((11, 4), torch.float64, "index")
    exp = torch.autograd.grad(F.cross_entropy(x, t), x)[0]
    loss = ft.cross_entropy(x, t)
    g1 = torch.autograd.grad(loss, x, retain_graph=True)[0]
    g2 = torch.autograd.grad(loss * -2.5, x)[0]
    assert_tensors_close(g1, exp, torch.float64)
    assert_tensors_close(g2, -2.5 * exp, torch.float64)
    (ft.cross_entropy(x, t) + ft.cross_entropy(x, t)).backward()     # accumulate twice
    assert_tensors_close(x.grad, 2 * exp, torch.float64)
    x.grad = None
    y = x * 2.0                                          # a non-leaf input
    ft.cross_entropy(y, t).backward()
    assert_tensors_close(x.grad, torch.autograd.grad(F.cross_entropy(x * 2.0, t), x)[0],
                         torch.float64)


def test_fallbacks():
    # tensors on another device (meta stands in for CUDA here): torch computes, documented
    xm, tm = torch.randn(4, 3, device="meta"), torch.zeros(4, dtype=torch.long, device="meta")
    assert "meta" in ft.fallback_reason(xm, tm)
    out = ft.cross_entropy(xm, tm)
    assert out.device.type == "meta"
    # soft targets that require grad: torch differentiates them too
    x, p = _case((6, 5), torch.float64, "probs")
    p = p.detach().requires_grad_()
    assert "target requires grad" in ft.fallback_reason(x, p)
    loss = ft.cross_entropy(x, p)
    gp = torch.autograd.grad(loss, p)[0]
    p2 = p.detach().clone().requires_grad_()
    assert_tensors_close(gp, torch.autograd.grad(F.cross_entropy(x, p2), p2)[0], torch.float64)
    # a weight requiring grad: torch's own error
    w = torch.ones(5, dtype=torch.float64, requires_grad=True)
    t = torch.zeros(6, dtype=torch.long)
    with pytest.raises(RuntimeError, match="weight"):
        ft.cross_entropy(x, t, weight=w)
    # integer input: no kernel, torch's error
    assert ft.fallback_reason(torch.zeros(2, 3, dtype=torch.int64), t[:2]) is not None
    assert ft.fallback_reason(x, t) is None


@pytest.mark.parametrize("shape", [(3, 0), (0,), (2, 0, 4)], ids=["2d", "unbatched", "nd"])
@pytest.mark.parametrize("target_kind", ["ignored", "probs"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_no_classes(shape, target_kind, reduction):
    """C = 0: torch's answer (mean nan, sum 0, zeros), an empty gradient; a label that is not
    ignored is torch's IndexError (no class can match it)."""
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    if target_kind == "ignored":
        t = torch.full(shape[:1] + shape[2:] if len(shape) > 1 else (), -100)
    else:
        t = torch.randn(shape, dtype=torch.float64)
    assert "C = 0" in ft.fallback_reason(x, t)
    try:
        exp_loss, exp_grad = _run(F.cross_entropy, x, t, reduction=reduction)
    except RuntimeError as e:                  # torch's own limit (N-D labels): the same error
        with pytest.raises(RuntimeError, match=re.escape(str(e)[:20])):
            ft.cross_entropy(x, t, reduction=reduction)
        return
    loss, grad = _run(ft.cross_entropy, x, t, reduction=reduction)
    assert_tensors_close(loss, exp_loss, torch.float64)
    assert grad.shape == x.shape and exp_grad.shape == x.shape
    if target_kind == "ignored":
        with pytest.raises(IndexError):
            ft.cross_entropy(x, torch.zeros_like(t))


@pytest.mark.parametrize("shape", [(13, 7), (5, 7, 3), (7,)], ids=["2d", "nd", "unbatched"])
@pytest.mark.parametrize("target_kind", ["index", "probs"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_negative_class_weights(shape, target_kind, label_smoothing):
    """Weights in [-9, 9] (as torch's own test inputs), all reductions, as torch."""
    x, t = _case(shape, torch.float64, target_kind)
    w = torch.linspace(-9, 9, 7, dtype=torch.float64)
    w[3] = 2.5                                  # keep sum(w[y]) away from 0 for the mean
    for reduction in ("mean", "sum", "none"):
        kw = dict(weight=w, reduction=reduction, label_smoothing=label_smoothing)
        loss, grad = _run(ft.cross_entropy, x, t, **kw)
        exp_loss, exp_grad = _run(F.cross_entropy, x, t, **kw)
        assert_tensors_close(loss, exp_loss, torch.float64, reduction)
        assert_tensors_close(grad, exp_grad, torch.float64, reduction)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("target_kind", ["index", "probs"])
def test_16bit_class_weights(dtype, target_kind):
    """torch requires the weight in the input's dtype: bfloat16 weights with bfloat16 logits."""
    x, t = _case((16, 10), dtype, target_kind)
    w = (torch.rand(10, generator=_gen(4)) + 0.5).to(dtype)
    for reduction in ("mean", "none"):
        kw = dict(weight=w, reduction=reduction, label_smoothing=0.1)
        loss, grad = _run(ft.cross_entropy, x, t, **kw)
        exp_loss, exp_grad = _run(F.cross_entropy, x, t, **kw)
        assert loss.dtype == dtype and grad.dtype == dtype
        assert_tensors_close(loss, exp_loss, dtype, reduction)
        assert_tensors_close(grad, exp_grad, dtype, reduction)


def test_unbatched_scalar_target():
    """(C,) logits with a () label: a () loss for every reduction, as torch."""
    x = torch.randn(6, dtype=torch.float64)
    w = torch.rand(6, dtype=torch.float64) + 0.5
    for label in (4, -100):
        t = torch.tensor(label)
        for reduction in ("mean", "sum", "none"):
            kw = dict(weight=w, reduction=reduction, label_smoothing=0.1)
            loss, grad = _run(ft.cross_entropy, x, t, **kw)
            exp_loss, exp_grad = _run(F.cross_entropy, x, t, **kw)
            assert loss.shape == exp_loss.shape == ()
            assert_tensors_close(loss, exp_loss, torch.float64, f"{label} {reduction}")
            assert_tensors_close(grad, exp_grad, torch.float64, f"{label} {reduction}")


def test_errors_come_from_fastxent():
    x = torch.randn(4, 3, requires_grad=True)
    with pytest.raises(ValueError, match=r"^target: label 3 at row 1 is out of range \[0, 3\)"):
        ft.cross_entropy(x, torch.tensor([0, 3, 1, 2]))
    with pytest.raises(ValueError, match="^reduction"):
        ft.cross_entropy(x, torch.tensor([0, 1, 1, 2]), reduction="avg")
    with pytest.raises(ValueError, match="^num_threads: must be between 1 and"):
        ft.cross_entropy(x, torch.tensor([0, 1, 1, 2]), num_threads=0)


# ------------------------------------------------------------------ inputs from other libraries
def test_as_numpy():
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    a = ft.as_numpy(t[:, 1::2])
    assert np.shares_memory(a, t.numpy()) and a.shape == (3, 2)
    g = torch.randn(3, 2, requires_grad=True)
    assert np.shares_memory(ft.as_numpy(g), g.detach().numpy())
    arr = np.ones(5)
    assert ft.as_numpy(arr) is arr

    class DLPackOnly:                                   # e.g. a JAX / Arrow buffer on the CPU
        def __init__(self, a):
            self._a = a

        def __dlpack__(self, **kw):
            return self._a.__dlpack__(**kw)

        def __dlpack_device__(self):
            return self._a.__dlpack_device__()

    src = np.arange(6.0).reshape(2, 3)
    v = ft.as_numpy(DLPackOnly(src))
    assert np.shares_memory(v, src) and np.array_equal(v, src)

    class ArrayOnly:
        def __init__(self, a):
            self._a = a

        def __array__(self, dtype=None, copy=None):
            return self._a

    v = ft.as_numpy(ArrayOnly(src))
    assert np.shares_memory(v, src)
    assert ft.as_numpy([1, 2]).tolist() == [1, 2]
    with pytest.raises(ValueError, match="copy it with .cpu"):
        ft.as_numpy(torch.zeros(2, device="meta"))
    # fastxent's NumPy API reads the views directly
    x, tgt = torch.randn(5, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 0])
    assert np.isclose(fastxent.cross_entropy(ft.as_numpy(x), ft.as_numpy(tgt)),
                      F.cross_entropy(x, tgt).item(), rtol=1e-12)


def test_bfloat16_zero_copy_with_ml_dtypes(monkeypatch):
    if ft._BF16 is None:
        pytest.skip("needs ml_dtypes (bfloat16 then goes through a float32 copy)")
    x = torch.randn(8, 5).bfloat16().requires_grad_()
    t = torch.randint(0, 5, (8,))
    spy = _Spy(monkeypatch, "cross_entropy_with_grad")
    ft.cross_entropy(x, t).backward()
    (logits, _, kw), = spy.calls
    assert logits.dtype == ft._BF16
    assert np.shares_memory(logits, x.detach().view(torch.int16).numpy())
    assert x.grad.dtype == torch.bfloat16


def test_as_numpy_bfloat16():
    t = torch.randn(4, 3).bfloat16()
    if ft._BF16 is None:
        with pytest.raises(TypeError, match="ml_dtypes"):
            ft.as_numpy(t)
    else:
        a = ft.as_numpy(t)
        assert a.dtype == ft._BF16 and np.shares_memory(a, t.view(torch.int16).numpy())
        assert np.array_equal(a.astype(np.float32), t.float().numpy())


def test_import_fastxent_does_not_import_torch():
    code = "import sys, fastxent; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(sys.executable))


# ------------------------------------------------------------------ training: same loss curve
def _train_digits(loss_fn, dtype, steps=50, lr=0.5, **kw):
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    X, y = sklearn_datasets.load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=dtype)
    y = torch.tensor(y)
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 10, dtype=dtype)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(model(X), y, **kw)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        acc = (model(X).argmax(1) == y).double().mean().item()
    return np.array(losses), acc


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-10), (torch.float32, 1e-4)],
                         ids=["float64", "float32"])
def test_training_digits_same_loss_curve(dtype, rtol):
    """Softmax regression on scikit-learn's digits, full-batch SGD with momentum, 50 steps."""
    kw = dict(label_smoothing=0.05)
    ours, acc = _train_digits(ft.cross_entropy, dtype, **kw)
    theirs, acc_t = _train_digits(F.cross_entropy, dtype, **kw)
    np.testing.assert_allclose(ours, theirs, rtol=rtol)
    assert ours[-1] < 0.5 * ours[0] and acc > 0.9
    assert abs(acc - acc_t) < 1e-3


# ------------------------------------------------------------------ torch.compile
def _inductor_has_a_compiler():
    """torch.compile's default backend (inductor) compiles C++: without a compiler it cannot run
    (e.g. where fastxent is installed from a wheel on a machine without one)."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
        get_cpp_compiler()
        return True
    except Exception:
        return False


needs_inductor = pytest.mark.skipif(not _inductor_has_a_compiler(),
                                    reason="torch.compile's inductor backend needs a C++ compiler")


def test_custom_op_opcheck():
    """torch.library.opcheck: schema, fake (meta) implementation and autograd registration."""
    x, t = _case((6, 4), torch.float64, "index")
    op = torch.ops.fastxent.cross_entropy.default
    w = torch.rand(4, dtype=torch.float64) + 0.5
    for reduction in ("mean", "none"):
        torch.library.opcheck(op, (x, t, w, -100, reduction, 0.1, 0.0, True, 0, False))
        torch.library.opcheck(op, (x, t, w, -100, reduction, 0.0, 2.0, True, 0, False))  # focal
        torch.library.opcheck(op, (torch.log_softmax(x, 1), t, w, -100, reduction, 0.0, 0.0,
                                   True, 0, True))                  # nll_loss
    xn, p = _case((3, 4, 2), torch.float32, "probs")
    torch.library.opcheck(op, (xn, p, None, -100, "none", 0.0, 0.0, True, 0, False))
    torch.library.opcheck(op, (x.detach(), t, None, -100, "sum", 0.0, 0.0, False, 0, False))


@needs_inductor
def test_torch_compile_training_step():
    """A compiled loss has no graph break; a compiled forward+backward step matches eager."""
    import torch._dynamo

    torch._dynamo.reset()
    g = _gen(0)
    W = torch.randn(8, 5, generator=g, requires_grad=True)
    X = torch.randn(32, 8, generator=g)
    y = torch.randint(0, 5, (32,), generator=g)
    y[::7] = -100

    def loss_fn(W, X, y):
        return ft.cross_entropy(X @ W, y, label_smoothing=0.1)

    def step(W, X, y):
        loss = loss_fn(W, X, y)
        loss.backward()
        return loss

    assert torch._dynamo.explain(loss_fn)(W, X, y).graph_break_count == 0
    exp = F.cross_entropy(X @ W, y, label_smoothing=0.1)
    exp_grad = torch.autograd.grad(exp, W)[0]

    compiled = torch.compile(loss_fn, fullgraph=True)
    loss = compiled(W, X, y)
    loss.backward()
    assert_tensors_close(loss, exp, torch.float32)
    assert_tensors_close(W.grad, exp_grad, torch.float32)
    W.grad = None
    loss = torch.compile(step)(W, X, y)                  # backward inside: mode default
    assert_tensors_close(loss, exp, torch.float32)
    assert_tensors_close(W.grad, exp_grad, torch.float32)
    with torch.no_grad():
        assert_tensors_close(compiled(W, X, y), exp, torch.float32)
    # reduction="none" with a per-row backward, N-D input
    Xn = torch.randn(4, 5, 3, generator=g, requires_grad=True)
    yn = torch.randint(0, 5, (4, 3), generator=g)
    r = torch.rand(4, 3, generator=g)

    def rows(Xn):
        return (ft.cross_entropy(Xn, yn, reduction="none") * r).sum()
    gn = torch.autograd.grad(torch.compile(rows, fullgraph=True)(Xn), Xn)[0]
    Xc = Xn.detach().clone().requires_grad_()
    assert_tensors_close(gn, torch.autograd.grad((F.cross_entropy(Xc, yn, reduction="none") * r)
                                                 .sum(), Xc)[0], torch.float32)


@needs_inductor
def test_torch_compile_linear_cross_entropy_graph_break():
    """fastxent.torch.linear_cross_entropy is not traced (a graph break), never an error."""
    import torch._dynamo

    torch._dynamo.reset()
    g = _gen(5)
    h = torch.randn(12, 4, generator=g, requires_grad=True)
    W = torch.randn(9, 4, generator=g, requires_grad=True)
    y = torch.randint(0, 9, (12,), generator=g)

    def step(h, W, y):
        loss = ft.linear_cross_entropy(h * 1.0, W, y, chunk_size=5)
        loss.backward()
        return loss

    loss = torch.compile(step)(h, W, y)
    exp = F.cross_entropy(F.linear(h, W), y)
    gh, gW = torch.autograd.grad(exp, (h, W))
    assert_tensors_close(loss, exp, torch.float32)
    assert_tensors_close(h.grad, gh, torch.float32)
    assert_tensors_close(W.grad, gW, torch.float32)


# ------------------------------------------------------------------ threads
def test_threadpool_limits_with_torch_loaded():
    """With torch (and its own OpenMP runtime) loaded, threadpoolctl still limits fastxent."""
    if _xent.max_threads() < 2:
        pytest.skip("one CPU: nothing to limit")
    before = _xent.max_threads()
    x, t = _case((4096, 100), torch.float32, "index")
    exp = ft.cross_entropy(x, t)
    with threadpool_limits(limits=1):
        assert _xent.max_threads() == 1
        assert torch.equal(ft.cross_entropy(x, t), exp)              # bit-identical
        assert torch.equal(ft.cross_entropy(x, t, num_threads=2), exp)
    assert _xent.max_threads() == before


_THREADS_SCRIPT = textwrap.dedent("""
    import os, sys
    import numpy as np
    import torch
    import fastxent.torch as ft
    from fastxent._kernels import xent as _xent

    def nthreads():
        return len(os.listdir("/proc/self/task"))

    x = torch.randn(4096, 1000)
    t = torch.randint(0, 1000, (4096,))
    ft.cross_entropy(x, t)                # default threads (OMP_NUM_THREADS=1)
    before = nthreads()
    ft.cross_entropy(x, t, num_threads=2)  # the per-call count wins: OpenMP starts a worker
    print(_xent.max_threads(), before, nthreads())
""")


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")
def test_omp_num_threads_and_per_call_override():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", _THREADS_SCRIPT], env=env, check=True,
                         capture_output=True, text=True, cwd=os.path.dirname(sys.executable))
    max_threads, before, after = map(int, out.stdout.split())
    assert max_threads == 1
    assert after == before + 1
    env["OMP_NUM_THREADS"] = "3"
    code = "from fastxent._kernels import xent; print(xent.max_threads())"
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True,
                         text=True, cwd=os.path.dirname(sys.executable))
    assert int(out.stdout) == 3


# ------------------------------------------------------------------ fused linear cross-entropy
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_linear_cross_entropy_autograd(reduction, with_bias):
    g = _gen(3)
    h = torch.randn(4, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    W = torch.randn(11, 6, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(11, generator=g, dtype=torch.float64, requires_grad=True) if with_bias \
        else None
    y = torch.randint(0, 11, (4, 5), generator=g)
    y[0, ::2] = -100
    r = torch.rand((4, 5) if reduction == "none" else (), generator=g, dtype=torch.float64) + 0.5
    params = [p for p in (h, W, b) if p is not None]

    loss = ft.linear_cross_entropy(h, W, y, b, chunk_size=3, reduction=reduction,
                                   label_smoothing=0.1)
    got = torch.autograd.grad((loss * r).sum(), params)
    exp_loss = F.cross_entropy(F.linear(h, W, b).reshape(20, 11), y.reshape(20),
                               reduction=reduction, label_smoothing=0.1)
    if reduction == "none":
        exp_loss = exp_loss.reshape(4, 5)
    exp = torch.autograd.grad((exp_loss * r).sum(), params)
    assert_tensors_close(loss, exp_loss, torch.float64, "loss")
    for a, e in zip(got, exp):
        assert_tensors_close(a, e, torch.float64, "grad")
    with torch.no_grad():
        assert_tensors_close(ft.linear_cross_entropy(h, W, y, b, reduction=reduction,
                                                     label_smoothing=0.1),
                             exp_loss, torch.float64)
