"""fastxent.torch against PyTorch's own reference machinery.

* OpInfo sample inputs (``torch.testing._internal.common_methods_invocations.op_db``, the
  inputs torch's test_ops runs every operator on): values and input gradients equal torch's,
  computed in float64 from the same values; gradcheck / gradgradcheck in float64.
* Module inputs (``torch.testing._internal.common_modules.module_db``, torch's test_modules):
  the drop-in module equals torch's module and the reference function that comes with each
  input (these include class weights in [-9, 9]).

Samples the drop-in hands to torch instead of computing (``fastxent.torch.fallback_reason``):
soft targets of cross_entropy that require grad (torch differentiates the target too).  They
are checked as they come (torch's answer) and once more with the target detached, so
fastxent's kernel runs on every sample.  Every nll_loss sample runs on fastxent's kernel.
"""
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

common_methods_invocations = pytest.importorskip(
    "torch.testing._internal.common_methods_invocations")
common_modules = pytest.importorskip("torch.testing._internal.common_modules")

import fastxent.torch as ft  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated"),
              pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")]

F64 = torch.float64
# ours (computed in float32 for 16-bit input, rounded once) against float64: one rounding of
# the output dtype, plus float32's exp for float32
TOL = {F64: dict(rtol=1e-11, atol=1e-12), torch.float32: dict(rtol=2e-5, atol=2e-6),
       torch.float16: dict(rtol=2e-3, atol=2e-3), torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2)}
DTYPES = [F64, torch.float32, torch.bfloat16, torch.float16]

OPS = {op.name: op for op in common_methods_invocations.op_db
       if op.name in ("nn.functional.cross_entropy", "nn.functional.nll_loss")}
MODULES = {m.module_cls: m for m in common_modules.module_db
           if m.module_cls in (torch.nn.CrossEntropyLoss, torch.nn.NLLLoss)}


def _close(a, b, dtype, msg):
    assert a.shape == b.shape, (a.shape, b.shape, msg)
    b64 = b.detach().double()
    finite = b64[torch.isfinite(b64)]
    scale = float(finite.abs().max()) if finite.numel() else 1.0
    t = TOL[dtype]
    torch.testing.assert_close(a.detach().double(), b64, rtol=t["rtol"],
                               atol=t["atol"] * max(scale, 1.0), equal_nan=True,
                               msg=lambda m: f"{msg}: {m}")


def _value_and_grad(fn, input, args, kwargs, seed=0):
    """The loss and d(sum(loss * r))/d(input) for a fixed random r."""
    x = input.detach().clone().requires_grad_()
    loss = fn(x, *args, **kwargs)
    r = torch.rand(loss.shape, generator=torch.Generator().manual_seed(seed), dtype=F64) + 0.5
    (loss * r.to(loss.dtype)).sum().backward()
    return loss.detach(), x.grad


def _as64(v):
    if isinstance(v, torch.Tensor) and v.is_floating_point():
        return v.detach().double()
    return v


def _check_against_torch(ours, theirs, input, args, kwargs, desc):
    """ours at the input's dtype == torch at float64 on the same values; for float64/float32
    also == torch at the same dtype."""
    dtype = input.dtype
    loss, grad = _value_and_grad(ours, input, args, kwargs)
    assert loss.dtype == dtype and grad.dtype == dtype, desc
    exp_loss, exp_grad = _value_and_grad(theirs, _as64(input), [_as64(a) for a in args],
                                         {k: _as64(v) for k, v in kwargs.items()})
    _close(loss, exp_loss, dtype, f"{desc} loss")
    _close(grad, exp_grad, dtype, f"{desc} grad")
    if dtype in (F64, torch.float32):
        same_loss, same_grad = _value_and_grad(theirs, input, args, kwargs)
        _close(loss, same_loss, dtype, f"{desc} loss vs torch at {dtype}")
        _close(grad, same_grad, dtype, f"{desc} grad vs torch at {dtype}")


def _check_sample(ours, theirs, input, target, rest, kwargs, weight, desc):
    """One sample: ours == torch (see _check_against_torch).  A sample the drop-in hands to
    torch (a soft target that requires grad) must give torch's values and gradients of input
    and target, and is then checked once more with the target detached (fastxent's kernel).
    Returns True for such a sample."""
    reason = ft.fallback_reason(input, target, weight)
    if reason is not None:
        assert "target requires grad" in reason, (desc, reason)
        grads = []
        for fn in (ours, theirs):
            x = input.detach().clone().requires_grad_()
            t = target.detach().clone().requires_grad_()
            grads.append(torch.autograd.grad(fn(x, t, *rest, **kwargs).sum(), (x, t)))
        for u, v in zip(*grads):
            torch.testing.assert_close(u, v, msg=lambda m: f"{desc}: {m}")
        target = target.detach()
    _check_against_torch(ours, theirs, input, (target,) + tuple(rest), kwargs, desc)
    return reason is not None


def _describe(sample):
    def d(v):
        return f"{tuple(v.shape)} {v.dtype}" if isinstance(v, torch.Tensor) else repr(v)
    return (f"input {d(sample.input)}, args {[d(a) for a in sample.args]}, "
            f"kwargs { {k: d(v) for k, v in sample.kwargs.items()} }")


# ------------------------------------------------------------------ OpInfo sample inputs
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cross_entropy_opinfo_samples(dtype):
    op = OPS["nn.functional.cross_entropy"]
    samples = list(op.sample_inputs("cpu", dtype, requires_grad=True))
    assert len(samples) >= 20
    n_fallback = 0
    for s in samples:
        n_fallback += _check_sample(ft.cross_entropy, op.op, s.input, s.args[0], s.args[1:],
                                    s.kwargs, s.kwargs.get("weight"), _describe(s))
    assert 0 < n_fallback < len(samples)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nll_loss_opinfo_samples(dtype):
    op = OPS["nn.functional.nll_loss"]
    samples = list(op.sample_inputs("cpu", dtype, requires_grad=True))
    assert len(samples) >= 50
    for s in samples:
        assert ft.fallback_reason(s.input, s.args[0], s.kwargs.get("weight"),
                                  loss="nll_loss") is None
        _check_sample(ft.nll_loss, op.op, s.input, s.args[0], s.args[1:], s.kwargs,
                      s.kwargs.get("weight"), _describe(s))


@pytest.mark.parametrize("name,fn", [("nn.functional.cross_entropy", ft.cross_entropy),
                                     ("nn.functional.nll_loss", ft.nll_loss)],
                         ids=["cross_entropy", "nll_loss"])
def test_opinfo_samples_gradgradcheck(name, fn):
    """torch's test_ops runs gradcheck and gradgradcheck on every float64 sample: so do we."""
    op = OPS[name]
    for s in op.sample_inputs("cpu", F64, requires_grad=True):
        target = s.args[0].detach()

        def f(x):
            return fn(x, target, *s.args[1:], **s.kwargs)

        x = s.input.detach().clone().requires_grad_()
        assert torch.autograd.gradcheck(f, (x,), check_forward_ad=True, fast_mode=True)
        assert torch.autograd.gradgradcheck(f, (x,), check_fwd_over_rev=True, fast_mode=True)


# ------------------------------------------------------------------ module inputs
def _module_inputs(module_cls, dtype):
    info = MODULES[module_cls]
    if dtype not in info.dtypes:
        pytest.skip(f"torch's module_db has no {dtype} inputs for {module_cls.__name__}")
    return list(info.module_inputs_func(info, device="cpu", dtype=dtype, requires_grad=True,
                                        training=True))


def _functional(module):
    """torch's module as its functional, the weight converted to the input's dtype."""
    def fn(a, b):
        w = None if module.weight is None else module.weight.to(a.dtype)
        kw = {k: getattr(module, k) for k in ("ignore_index", "reduction", "label_smoothing")
              if hasattr(module, k)}
        fun = F.cross_entropy if hasattr(module, "label_smoothing") else F.nll_loss
        return fun(a, b, weight=w, **kw)
    return fn


@pytest.mark.parametrize("dtype", [F64, torch.float32, torch.float16], ids=str)
def test_cross_entropy_loss_module_inputs(dtype):
    inputs = _module_inputs(torch.nn.CrossEntropyLoss, dtype)
    assert len(inputs) >= 100
    negative_weights = 0
    for mi in inputs:
        ci, fi = mi.constructor_input, mi.forward_input
        ours = ft.CrossEntropyLoss(*ci.args, **ci.kwargs)
        theirs = torch.nn.CrossEntropyLoss(*ci.args, **ci.kwargs)
        w = ci.kwargs.get("weight")
        negative_weights += w is not None and bool((w < 0).any())
        x, t = fi.args
        desc = f"{mi.desc}: input {tuple(x.shape)}, target {tuple(t.shape)} {t.dtype}"
        _check_sample(lambda a, b: ours(a, b), _functional(theirs), x, t, (), {}, w, desc)
        t = t.detach()
        _close(ours(x, t), theirs(x, t), dtype, f"{desc} vs torch's module")
        # the reference function that comes with the input (torch's Python reference, at the
        # input's dtype: it reads the weight from the constructor's arguments; in float16 it
        # rounds every step, so it gets a looser tolerance: the float64 check above is exact)
        with torch.no_grad():
            _close(ours(x, t), mi.reference_fn(theirs, x, t),
                   torch.bfloat16 if dtype == torch.float16 else dtype, f"{desc} vs reference_fn")
    assert negative_weights > 0                     # torch's inputs exercise weights < 0


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=str)
def test_nll_loss_module_inputs(dtype):
    inputs = _module_inputs(torch.nn.NLLLoss, dtype)
    assert len(inputs) >= 20
    for mi in inputs:
        ci, fi = mi.constructor_input, mi.forward_input
        ours = ft.NLLLoss(*ci.args, **ci.kwargs)
        theirs = torch.nn.NLLLoss(*ci.args, **ci.kwargs)
        x, t = fi.args
        desc = f"{mi.desc}: input {tuple(x.shape)}, target {tuple(t.shape)} {t.dtype}"
        _check_sample(lambda a, b: ours(a, b), _functional(theirs), x, t, (), {},
                      ci.kwargs.get("weight"), desc)
        _close(ours(x, t), theirs(x, t), dtype, f"{desc} vs torch's module")
        with torch.no_grad():
            _close(ours(x, t), mi.reference_fn(theirs, x, t), dtype, f"{desc} vs reference_fn")
