"""PyTorch drop-in: ``cross_entropy``, ``nll_loss``, ``CrossEntropyLoss``, ``NLLLoss`` and
``linear_cross_entropy`` for CPU tensors, computed by fastxent's fused kernels.

Optional integration (``pip install fastxent[torch]``): this module imports torch; ``import
fastxent`` never does.  Layering: this module converts tensors and calls the public NumPy API
(``fastxent.cross_entropy[_with_grad]``, ``nll_loss[_with_grad]``, ``linear_cross_entropy``);
``fastxent._torch_math`` holds the same gradients as differentiable torch operations.

How it works
------------
* CPU tensors are handed to the kernels zero-copy: ``tensor.detach().numpy()`` is a view of the
  tensor's memory (any strides, storage offsets included).  float32, float64 and float16 are
  read directly.  bfloat16 is read directly when ``ml_dtypes`` is installed (the tensor's bits
  are viewed as ``ml_dtypes.bfloat16``); without it the logits are converted to float32 (one
  copy) and the gradient converted back.
* With gradients (``torch.is_grad_enabled()`` and ``input.requires_grad``), the forward runs
  the fused loss+gradient kernel once and saves d(loss)/d(input) (unit ``grad_output``, written
  into a new tensor); the backward only scales it by ``grad_output`` (for reduction="none",
  row by row; when ``grad_output`` is exactly 1, the saved tensor is returned as is).  So the
  forward costs one pass over the logits and the backward at most one more.  The input is
  saved too (a reference), for the case below.
* When autograd records the backward itself (``create_graph=True``, ``torch.func``, forward-mode
  AD over the backward), the backward computes the same gradient with torch operations
  (``fastxent._torch_math``) from the saved input, so second derivatives are exact.  Forward-mode
  AD has a ``jvp`` (torch operations); ``torch.func.vmap`` runs the kernel once per batch element.
* Without gradients (``torch.no_grad()``, inference tensors, or an input that does not require
  grad) only the loss kernel runs: no gradient is computed or allocated.
* ``torch.compile``: the computation is the custom op ``torch.ops.fastxent.cross_entropy``
  (``torch.library.custom_op`` with a fake implementation and a registered autograd formula;
  ``log_probs=True`` for nll_loss), so a compiled training step traces through it without a
  graph break.
* Falls back to ``torch.nn.functional.cross_entropy`` / ``nll_loss`` (same result, torch's
  speed) for tensors not on the CPU (CUDA, MPS, meta, ...), for a ``target`` or ``weight`` that
  requires grad or carries a forward-mode tangent (torch differentiates soft targets; it
  rejects a weight requiring grad), for C = 0, and for dtypes fastxent has no kernel for.
  ``fastxent.torch.fallback_reason(...)`` says which.
* Class-index targets may have any integer dtype (torch itself wants int64 or uint8).
* ``num_threads=`` (keyword, an extension of torch's signature) sets fastxent's OpenMP
  threads for the call; by default they follow OMP_NUM_THREADS / threadpoolctl, not
  ``torch.set_num_threads``.
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch._C import _functorch
from torch.autograd import forward_ad as _fwAD

import fastxent as _fx
from . import _torch_math as _tm
from . import _validation as _check
from ._linear import linear_cross_entropy as _linear_cross_entropy_np

__all__ = ["CrossEntropyLoss", "NLLLoss", "as_numpy", "cross_entropy", "fallback_reason",
           "linear_cross_entropy", "nll_loss"]

try:                                   # bfloat16 as a NumPy dtype, for zero-copy bf16 tensors
    import ml_dtypes as _ml_dtypes
    _BF16 = np.dtype(_ml_dtypes.bfloat16)
except ImportError:                    # pragma: no cover - depends on the environment
    _BF16 = None

_KERNEL_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


# ------------------------------------------------------------------ tensors <-> NumPy
def _np_view(t, copy_bf16=True):
    """A CPU tensor as an ndarray sharing its memory (bfloat16 without ml_dtypes: a float32
    copy, or TypeError when ``copy_bf16`` is False)."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        if _BF16 is not None:
            return t.view(torch.int16).numpy().view(_BF16)
        if not copy_bf16:
            raise TypeError("bfloat16 tensors need ml_dtypes (pip install ml_dtypes) "
                            "to be viewed as NumPy arrays")
        return t.float().numpy()
    if t.is_conj() or t.is_neg():
        t = t.resolve_conj().resolve_neg()
    return t.numpy()


def as_numpy(obj):
    """``obj`` as a NumPy array, zero-copy where possible.

    * NumPy arrays are returned as they are.
    * torch tensors on the CPU: a view of their memory (``detach().numpy()``; requires_grad is
      ignored); bfloat16 needs ``ml_dtypes`` for that.  Tensors on other devices raise
      ValueError (copy them with ``.cpu()`` first, deliberately).
    * objects with ``__dlpack__`` (JAX, CuPy, TensorFlow, Arrow, ...): ``np.from_dlpack``, a
      view of CPU memory; when that is not possible (another device, an unsupported dtype),
    * anything else, and ``__array__`` objects: ``np.asarray`` (a view when the object allows).
    """
    if isinstance(obj, np.ndarray):
        return obj
    if isinstance(obj, torch.Tensor):
        if obj.device.type != "cpu":
            raise ValueError(f"as_numpy: the tensor is on {obj.device}; NumPy needs CPU memory, "
                             "copy it with .cpu() first")
        return _np_view(obj, copy_bf16=False)
    if hasattr(obj, "__dlpack__"):
        try:
            return np.from_dlpack(obj)
        except (BufferError, TypeError, ValueError, RuntimeError):
            pass
    return np.asarray(obj)


def _reduction_of(size_average, reduce, reduction):
    if size_average is not None or reduce is not None:
        return torch.nn._reduction.legacy_get_string(size_average, reduce)
    return reduction


def fallback_reason(input, target, weight=None, *, loss="cross_entropy"):
    """Why ``cross_entropy`` (``loss="nll_loss"``: ``nll_loss``) would hand these tensors to
    torch, or None when fastxent runs."""
    if not isinstance(input, torch.Tensor) or not isinstance(target, torch.Tensor):
        return "input and target must be tensors"
    if loss == "nll_loss" and target.is_floating_point():
        return "nll_loss takes class indices, not probabilities (torch's error)"
    for t, name in ((input, "input"), (target, "target"), (weight, "weight")):
        if t is not None and t.device.type != "cpu":
            return f"{name} is on {t.device}, fastxent runs on the CPU"
    if input.dtype not in _KERNEL_DTYPES:
        return f"input dtype {input.dtype} has no fastxent kernel"
    if target.is_floating_point() and target.dtype not in _KERNEL_DTYPES:
        return f"target dtype {target.dtype} has no fastxent kernel"
    if input.dim() and input.shape[input.dim() > 1] == 0:
        return "no classes (C = 0): nothing to compute"
    if torch.is_grad_enabled():
        if target.requires_grad:
            return "target requires grad (fastxent differentiates the input only)"
        if weight is not None and weight.requires_grad:
            return "weight requires grad"
    if _has_tangent(target) or _has_tangent(weight):
        return ("target or weight has a forward-mode tangent (fastxent differentiates the "
                "input only)")
    return None


# ------------------------------------------------------------------ the computation
def _forward(input, target, weight, ignore_index, reduction, label_smoothing, focal_gamma,
             need_grad, num_threads, log_probs=False):
    """(loss, grad or None) for CPU tensors: d(loss)/d(input) at unit grad_output; the loss is
    the cross-entropy of logits, or with ``log_probs`` the nll_loss of log-probabilities."""
    x = _np_view(input)
    t = _np_view(target)
    w = None if weight is None else _np_view(weight)
    kw = dict(weight=w, ignore_index=ignore_index, reduction=reduction, axis=1,
              num_threads=num_threads if num_threads else None)
    if log_probs:
        loss_fn, loss_with_grad = _fx.nll_loss, _fx.nll_loss_with_grad
    else:
        loss_fn, loss_with_grad = _fx.cross_entropy, _fx.cross_entropy_with_grad
        kw["label_smoothing"] = label_smoothing
        kw["focal_gamma"] = focal_gamma
    grad = None
    if need_grad:
        # A new tensor from torch's allocator, written by the kernel through a NumPy view.
        kernel_writes_input_dtype = input.dtype != torch.bfloat16 or _BF16 is not None
        grad = torch.empty(input.shape, dtype=input.dtype if kernel_writes_input_dtype
                           else torch.float32)
        loss, _ = loss_with_grad(x, t, out=_np_view(grad), **kw)
        if grad.dtype != input.dtype:
            grad = grad.to(input.dtype)
    else:
        loss = loss_fn(x, t, **kw)
    if isinstance(loss, np.ndarray):
        loss_t = torch.from_numpy(loss)
    else:
        loss_t = torch.tensor(float(loss), dtype=torch.float64 if loss.dtype == np.float64
                              else torch.float32)
    if loss_t.dtype != input.dtype:
        loss_t = loss_t.to(input.dtype)
    return loss_t, grad


def _scale(grad, grad_output, reduction, shortcut):
    """The fused backward: the saved unit gradient times grad_output (row-wise for "none");
    ``shortcut`` (eager only, it reads the value): return the saved gradient when grad_output
    is exactly 1, as in ``loss.backward()`` (autograd copies it if needed)."""
    if reduction == "none":
        return grad * grad_output.unsqueeze(1)          # (N, d1, ...) -> (N, 1, d1, ...)
    if (shortcut and grad_output.numel() == 1 and _is_plain(grad_output)
            and grad_output.item() == 1.0):
        return grad
    return grad * grad_output


def _is_plain(t):
    """False for the batched and wrapped tensors of vmap and torch.func (their values cannot be
    read in Python)."""
    if torch.compiler.is_compiling():                   # traced: fake tensors, never wrapped
        return True
    return not (_functorch.is_functorch_wrapped_tensor(t) or _functorch.is_legacy_batchedtensor(t))


def _has_tangent(t):
    """True when ``t`` carries a forward-mode AD tangent (``forward_ad.make_dual``)."""
    return t is not None and _fwAD.unpack_dual(t).tangent is not None


def _row_grad(ctx, input, target, weight):
    """(g, denom, valid) of the saved forward in torch operations (see fastxent._torch_math),
    computed in float32 for 16-bit input."""
    x = input.to(_tm.compute_dtype(input.dtype))
    if ctx.log_probs:
        return _tm.nll_row_grad(x, target, weight, ctx.ignore_index)
    return _tm.xent_row_grad(x, target, weight, ctx.ignore_index, ctx.label_smoothing,
                             focal_gamma=ctx.focal_gamma)


def _input_grad(ctx, grad_loss, shortcut=False):
    """d(loss)/d(input) * grad_loss for the saved forward: the fused kernel's saved gradient,
    or, when autograd records the backward itself (create_graph=True, torch.func, forward-mode
    AD over the backward) or no gradient was saved, the same formula in torch operations."""
    input, target, weight, grad = ctx.saved_tensors
    if ctx.fused and not (torch.is_grad_enabled() or _has_tangent(input)
                          or _has_tangent(grad_loss)):
        return _scale(grad, grad_loss, ctx.reduction, shortcut)
    g, denom, valid = _row_grad(ctx, input, target, weight)
    return _tm.scale_rows(g, grad_loss, ctx.reduction, denom, valid).to(input.dtype)


def _save_context(ctx, inputs, output):
    (input, target, weight, ignore_index, reduction, label_smoothing, focal_gamma, compute_grad,
     _threads, log_probs) = inputs
    ctx.ignore_index, ctx.reduction, ctx.label_smoothing = ignore_index, reduction, label_smoothing
    ctx.focal_gamma = focal_gamma
    ctx.fused, ctx.log_probs = compute_grad, log_probs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(input, target, weight, output[1])
    ctx.save_for_forward(input, target, weight, output[1])


class _LossFunction(torch.autograd.Function):
    """Autograd for the eager path of cross_entropy and nll_loss.  forward = the fused
    loss+gradient kernel (returns the loss and d(loss)/d(input) at unit grad_output, or an
    empty tensor when ``compute_grad`` is False); backward = scale the saved gradient (see
    ``_input_grad``); jvp = the tangent in torch operations; vmap = the kernel once per batch
    element, the results stacked."""

    @staticmethod
    def forward(input, target, weight, ignore_index, reduction, label_smoothing, focal_gamma,
                compute_grad, num_threads, log_probs):
        loss, grad = _forward(input, target, weight, ignore_index, reduction, label_smoothing,
                              focal_gamma, compute_grad, num_threads, log_probs)
        return loss, (grad if grad is not None else input.new_empty((0,)))

    setup_context = staticmethod(_save_context)

    @staticmethod
    def backward(ctx, grad_loss, _grad_grad):
        return (_input_grad(ctx, grad_loss, shortcut=True),) + (None,) * 9

    @staticmethod
    def jvp(ctx, input_t, target_t, weight_t, *_):
        # tangents of target and weight never get here: the callers hand those to torch
        input, target, weight, _grad = ctx.saved_tensors
        g, denom, _valid = _row_grad(ctx, input, target, weight)
        rows = (g * input_t.to(g.dtype)).sum(1)
        return _tm.reduce_rows(rows, ctx.reduction, denom).to(input.dtype), None

    @staticmethod
    def vmap(info, in_dims, *args):
        def element(b):
            return _LossFunction.apply(*(a if d is None else a.select(d, b)
                                         for a, d in zip(args, in_dims)))
        outs = [element(b) for b in range(info.batch_size)]
        return tuple(torch.stack(o) for o in zip(*outs)), (0, 0)


# The same computation as a custom op, for torch.compile (dynamo cannot trace into NumPy).
@torch.library.custom_op("fastxent::cross_entropy", mutates_args=(), device_types="cpu")
def _loss_op(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
             ignore_index: int, reduction: str, label_smoothing: float, focal_gamma: float,
             compute_grad: bool, num_threads: int,
             log_probs: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, d(loss)/d(input) at unit grad_output); the gradient is an empty tensor when
    compute_grad is False.  ``log_probs``: the input is log-probabilities (nll_loss)."""
    return _LossFunction.forward(input, target, weight, ignore_index, reduction,
                                 label_smoothing, focal_gamma, compute_grad, num_threads,
                                 log_probs)


def _loss_shape(input, target):
    if not target.is_floating_point():
        return target.shape
    return input.shape[:1] + input.shape[2:]


@_loss_op.register_fake
def _(input, target, weight, ignore_index, reduction, label_smoothing, focal_gamma, compute_grad,
      num_threads, log_probs):
    shape = _loss_shape(input, target) if reduction == "none" else ()
    loss = input.new_empty(shape)
    grad = input.new_empty(input.shape) if compute_grad else input.new_empty((0,))
    return loss, grad


def _op_backward(ctx, grad_loss, _grad_grad):
    return (_input_grad(ctx, grad_loss),) + (None,) * 9


_loss_op.register_autograd(_op_backward, setup_context=_save_context)


def _needs_autograd(input):
    """Whether the loss must be connected to autograd: backward mode, forward mode or torch.func."""
    return ((torch.is_grad_enabled() and input.requires_grad) or _has_tangent(input)
            or torch._C._are_functorch_transforms_active())


def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
                  reduction="mean", label_smoothing=0.0, *, focal_gamma=0.0, num_threads=None):
    """``torch.nn.functional.cross_entropy`` computed by fastxent's fused kernels.

    Same arguments and results as torch's: input (N, C), (C,) or (N, C, d1, ...); target class
    indices (any integer dtype) or class probabilities (input's shape); weight (C,);
    ignore_index; reduction "mean" | "sum" | "none"; label_smoothing; the deprecated
    size_average/reduce.  ``num_threads``: fastxent's threads for this call (default: the
    OpenMP default, which OMP_NUM_THREADS and threadpoolctl set).  See the module docstring
    for what falls back to torch.

    ``focal_gamma`` (keyword, an extension of torch's signature): the focal loss
    -(1 - p_y)^gamma log p_y of ``fastxent.cross_entropy`` (class indices, no label smoothing);
    where fastxent falls back to torch it is computed with torch operations.
    """
    reduction = _reduction_of(size_average, reduce, reduction)
    gamma = 0.0 if focal_gamma == 0 else _check.nonneg_float(focal_gamma, "focal_gamma")
    if gamma and (label_smoothing or (isinstance(target, torch.Tensor)
                                      and target.is_floating_point())):
        raise ValueError("focal_gamma: the focal loss needs integer class labels and no "
                         "label_smoothing")
    if fallback_reason(input, target, weight) is not None:
        if gamma:
            return _tm.focal_loss(input, target, weight, ignore_index, reduction, gamma)
        return F.cross_entropy(input, target, weight=weight, ignore_index=ignore_index,
                               reduction=reduction, label_smoothing=label_smoothing)
    return _loss(input, target, weight, ignore_index, reduction, float(label_smoothing),
                 num_threads, False, gamma)


def _loss(input, target, weight, ignore_index, reduction, label_smoothing, num_threads,
          log_probs, focal_gamma=0.0):
    """cross_entropy / nll_loss of tensors fastxent computes: the custom op when traced by
    torch.compile, the autograd Function when autograd needs the loss, else the plain kernel."""
    unbatched = input.dim() == 1
    if unbatched:                                   # (C,) with a () label or (C,) probabilities
        input, target = input.unsqueeze(0), target.unsqueeze(0)
    nt = 0 if num_threads is None else _check.num_threads(num_threads)   # 0: the default
    args = (input, target, weight, ignore_index, reduction, label_smoothing, focal_gamma)
    if torch.compiler.is_compiling():
        need_grad = torch.is_grad_enabled() and input.requires_grad
        loss = _loss_op(*args, need_grad, nt, log_probs)[0]
    elif _needs_autograd(input):
        # the fused gradient only serves a plain backward; torch.func always records its own
        fused = input.requires_grad and not torch._C._are_functorch_transforms_active()
        loss = _LossFunction.apply(*args, fused, nt, log_probs)[0]
    else:
        loss = _forward(*args, False, nt, log_probs)[0]
    if unbatched and reduction == "none":
        loss = loss.squeeze(0)
    return loss


class CrossEntropyLoss(torch.nn.CrossEntropyLoss):
    """``torch.nn.CrossEntropyLoss`` (same constructor, attributes and state dict) computed by
    ``fastxent.torch.cross_entropy``; ``num_threads`` is an optional extra keyword."""

    def __init__(self, weight=None, size_average=None, ignore_index=-100, reduce=None,
                 reduction="mean", label_smoothing=0.0, *, focal_gamma=0.0, num_threads=None):
        super().__init__(weight=weight, size_average=size_average, ignore_index=ignore_index,
                         reduce=reduce, reduction=reduction, label_smoothing=label_smoothing)
        self.focal_gamma = focal_gamma
        self.num_threads = num_threads

    def forward(self, input, target):
        return cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                             reduction=self.reduction, label_smoothing=self.label_smoothing,
                             focal_gamma=self.focal_gamma, num_threads=self.num_threads)


def nll_loss(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
             reduction="mean", *, num_threads=None):
    """``torch.nn.functional.nll_loss`` computed by fastxent's kernels: ``-w[y] * input[y]`` per
    row of log-probabilities (usually the output of ``log_softmax``).

    Same arguments and results as torch's: input (N, C), (C,) or (N, C, d1, ...); target class
    indices (any integer dtype); weight (C,); ignore_index; reduction "mean" (divided by the
    sum of w[y] over the rows that are not ignored) | "sum" | "none"; the deprecated
    size_average/reduce; ``num_threads`` and the fallbacks to torch as ``cross_entropy``.
    """
    reduction = _reduction_of(size_average, reduce, reduction)
    if fallback_reason(input, target, weight, loss="nll_loss") is not None:
        return F.nll_loss(input, target, weight=weight, ignore_index=ignore_index,
                          reduction=reduction)
    return _loss(input, target, weight, ignore_index, reduction, 0.0, num_threads, True)


class NLLLoss(torch.nn.NLLLoss):
    """``torch.nn.NLLLoss`` (same constructor, attributes and state dict) computed by
    ``fastxent.torch.nll_loss``; ``num_threads`` is an optional extra keyword."""

    def __init__(self, weight=None, size_average=None, ignore_index=-100, reduce=None,
                 reduction="mean", *, num_threads=None):
        super().__init__(weight=weight, size_average=size_average, ignore_index=ignore_index,
                         reduce=reduce, reduction=reduction)
        self.num_threads = num_threads

    def forward(self, input, target):
        return nll_loss(input, target, weight=self.weight, ignore_index=self.ignore_index,
                        reduction=self.reduction, num_threads=self.num_threads)


# ------------------------------------------------------------------ fused linear cross-entropy
def _linear_np(hidden, weight, target, bias, options, **extra):
    return _linear_cross_entropy_np(_np_view(hidden), _np_view(weight), _np_view(target),
                                    bias=None if bias is None else _np_view(bias),
                                    **options, **extra)


def _linear_logits(hidden, weight, bias, softcap):
    """(z, dz/dlogits or None): the (N, V) logits of the rows, soft-capped, in torch operations."""
    z = F.linear(hidden.reshape(-1, hidden.shape[-1]), weight, bias)
    if softcap is None:
        return z, None
    u = torch.tanh(z / softcap)
    return softcap * u, 1.0 - u * u


def _linear_torch(hidden, weight, target, bias, o):
    """The loss of ``linear_cross_entropy`` in torch operations (forward-mode AD, torch.func)."""
    z, _ = _linear_logits(hidden, weight, bias, o["softcap"])
    t = target.reshape(-1)
    rows = F.cross_entropy(z, t, ignore_index=o["ignore_index"], reduction="none",
                           label_smoothing=o["label_smoothing"])
    valid = t != o["ignore_index"]
    if o["z_loss"]:
        rows = rows + torch.where(valid, o["z_loss"] * torch.logsumexp(z, 1) ** 2, 0.0)
    if o["reduction"] == "none":
        return rows.reshape(target.shape)
    return _tm.reduce_rows(rows, o["reduction"], valid.sum())


def _linear_grads_torch(hidden, weight, target, bias, o, grad_output):
    """The gradients of hidden, weight (and bias) in differentiable torch operations."""
    z, dz = _linear_logits(hidden, weight, bias, o["softcap"])
    g, denom, valid = _tm.xent_row_grad(z, target.reshape(-1), None, o["ignore_index"],
                                        o["label_smoothing"], o["z_loss"])
    go = grad_output.reshape(-1) if o["reduction"] == "none" else grad_output
    g = _tm.scale_rows(g, go, o["reduction"], denom, valid.reshape(-1, 1))
    if dz is not None:
        g = g * dz
    h2 = hidden.reshape(-1, hidden.shape[-1])
    grads = [(g @ weight).reshape(hidden.shape), g.t() @ h2]
    return grads + ([g.sum(0)] if bias is not None else [])


class _LinearCrossEntropyFunction(torch.autograd.Function):
    """forward: the chunked NumPy loss with the gradients of hidden, weight and bias at unit
    grad_output (saved; reduction "none": recomputed in backward with the per-row
    grad_output); backward: scale them, or, when autograd records the backward, the same
    gradients in torch operations."""

    @staticmethod
    def forward(ctx, hidden, weight, target, bias, options):
        ctx.options, ctx.has_bias = options, bias is not None
        ctx.recompute = options["reduction"] == "none"
        if ctx.recompute:
            loss, grads = _linear_np(hidden, weight, target, bias, options), []
        else:
            loss, *res = _linear_np(hidden, weight, target, bias, options, return_grad=True)
            grads = [torch.from_numpy(g) for g in res]
        ctx.save_for_backward(hidden, weight, target, bias, *grads)
        return torch.from_numpy(np.asarray(loss)).to(hidden.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        hidden, weight, target, bias, *grads = ctx.saved_tensors
        if (torch.is_grad_enabled() or not _is_plain(grad_output)
                or any(_has_tangent(t) for t in (hidden, weight, bias, grad_output))):
            grads = _linear_grads_torch(hidden, weight, target, bias, ctx.options, grad_output)
        elif ctx.recompute:
            res = _linear_np(hidden, weight, target, bias, ctx.options, return_grad=True,
                             grad_output=_np_view(grad_output))
            grads = [torch.from_numpy(g) for g in res[1:]]
        elif grad_output.item() != 1.0:
            grads = [g * grad_output for g in grads]
        return grads[0], grads[1], None, grads[2] if ctx.has_bias else None, None


@torch.compiler.disable
def linear_cross_entropy(hidden, weight, target, bias=None, *, chunk_size=None,
                         ignore_index=-100, reduction="mean", label_smoothing=0.0, z_loss=0.0,
                         softcap=None, num_threads=None):
    """``fastxent.linear_cross_entropy`` for CPU tensors, with autograd: the loss of
    ``F.linear(hidden, weight, bias)`` followed by cross-entropy, without the N x V logits.

    hidden (..., d) and weight (V, d) float32/float64 CPU tensors, target integer (...).  The
    forward computes the gradients of hidden, weight and bias chunk by chunk and saves them
    (reduction "none": recomputed in backward with the per-row grad_output).  A backward that
    records a graph (``create_graph=True``) computes them in torch operations instead, so
    second derivatives are exact; forward-mode AD and ``torch.func`` transforms get the whole
    loss in torch operations (the N x V logits exist then).  Not traced by torch.compile (a
    graph break).
    """
    options = dict(chunk_size=chunk_size, ignore_index=ignore_index, reduction=reduction,
                   label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
                   num_threads=num_threads)
    for t, name in ((hidden, "hidden"), (weight, "weight"), (target, "target"), (bias, "bias")):
        if t is not None and t.device.type != "cpu":
            raise ValueError(f"{name}: fastxent.torch.linear_cross_entropy runs on CPU tensors, "
                             f"got a tensor on {t.device}")
    params = (hidden, weight, bias)
    if torch._C._are_functorch_transforms_active() or any(_has_tangent(t) for t in params):
        _check.reduction(reduction)                        # the NumPy API's option checks
        _check.integer(ignore_index, "ignore_index")
        options.update(label_smoothing=_check.unit_float(label_smoothing, "label_smoothing"),
                       z_loss=_check.nonneg_float(z_loss, "z_loss"),
                       softcap=_check.logit_transform(softcap, 1.0)[0] or None)
        return _linear_torch(hidden, weight, target, bias, options)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in params):
        return _LinearCrossEntropyFunction.apply(hidden, weight, target, bias, options)
    return torch.from_numpy(np.asarray(_linear_np(hidden, weight, target, bias, options))).to(
        hidden.dtype)
