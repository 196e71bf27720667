"""Layer 3 of fastxent: the Python API.

Every public function validates its arguments here (each error names the argument and the
problem), resolves dtype, memory layout and thread count, allocates outputs and calls one
kernel of ``fastxent._xent``; reductions of the kernels' per-block partial sums happen here in
a fixed order, so results do not depend on the number of threads.
"""
import math
import numbers

import numpy as np

from . import _kernels
from . import _validation as check

__all__ = [
    "cross_entropy",
    "cross_entropy_with_grad",
]


def _grad_buffer(x, logits, out, inplace, gdt, others):
    if inplace:
        if out is not None:
            raise ValueError("out: cannot be combined with inplace=True")
        if not isinstance(logits, np.ndarray):
            raise TypeError(f"logits: inplace=True needs a NumPy array, got {type(logits).__name__}")
        if x is not logits:
            raise ValueError("logits: inplace=True needs an aligned float array the kernels "
                             "can write (float32, float64, float16 or bfloat16)")
        if gdt != x.dtype:
            raise ValueError(f"grad_dtype: inplace=True writes the logits' own dtype {x.dtype}")
        if not logits.flags.writeable:
            raise ValueError("logits: inplace=True but the array is read-only")
        check.check_no_overlap(logits, "logits", others)
        return logits
    if out is None:
        return np.empty_like(x, dtype=gdt) if x.ndim == 2 else np.empty(x.shape, dtype=gdt)
    return check.check_out(out, x.shape, gdt, others=[(x, "logits")] + others, what="gradient")


def _grad_dtype(grad_dtype, dt):
    if grad_dtype is None:
        return dt
    gdt = np.dtype(grad_dtype)
    if gdt == dt or (gdt == check.F32 and dt.itemsize == 2):
        return gdt
    raise ValueError(f"grad_dtype: must be None, the logits' dtype ({dt}) or float32 for 16-bit "
                     f"logits, got {gdt}")


def _soft_targets(target, x, axis, C, kdt):
    p = target if type(target) is np.ndarray else np.asarray(target)
    if p.shape != x.shape:
        raise ValueError(f"target: soft targets (class probabilities) must have the logits' shape "
                         f"{x.shape}, got {p.shape}")
    if p.dtype != kdt and p.dtype != x.dtype:
        p = p.astype(kdt)
    elif not p.flags.aligned:
        p = p.copy()
    return check.rows_of(p, axis, C, "target", False)


def _cross_entropy(logits, target, weight, ignore_index, reduction, label_smoothing, num_threads,
                   axis, z_loss, softcap, logit_scale, base, return_z_loss, with_grad,
                   grad_output=1.0, out=None, inplace=False, grad_dtype=None):
    x = check.logits_array(logits)
    nd = x.ndim
    if nd < 2:
        raise ValueError(f"logits: expected at least 2 dimensions (N, C, ...), got shape {x.shape}")
    if type(axis) is not int or not -nd <= axis < nd:
        if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
            raise TypeError(f"axis: expected an int, got {type(axis).__name__}")
        if not -nd <= axis < nd:
            raise ValueError(f"axis: {axis} is out of bounds for logits of dimension {nd}")
    axis = int(axis) % nd
    C = x.shape[axis]
    if C == 0:
        raise ValueError(f"logits: the class axis (axis {axis}) has length 0 (C = 0)")
    if nd == 2 and axis == 1:
        N = x.shape[0]
        row_shape = (N,)
    else:
        row_shape = x.shape[:axis] + x.shape[axis + 1:]
        N = math.prod(row_shape)
    kdt = check.kernel_dtype(x.dtype)
    if type(ignore_index) is not int:
        ignore_index = check.integer(ignore_index, "ignore_index")
    w, W = (None, float(C)) if weight is None else check.class_weight(weight, C)
    if reduction not in check.REDUCTIONS:
        check.reduction(reduction)
    eps = label_smoothing
    if type(eps) is not float or not 0.0 <= eps <= 1.0:
        eps = check.unit_float(label_smoothing, "label_smoothing")
    zl = z_loss if type(z_loss) is float and z_loss == 0.0 else check.nonneg_float(z_loss, "z_loss")
    cap, scale = (0.0, 1.0) if softcap is None and logit_scale == 1.0 else \
        check.logit_transform(softcap, logit_scale)
    lscale = 1.0 if base is None else check.log_base_scale(base)
    rpb = check.BLOCK_ELEMS // C or 1
    if num_threads is not None:
        n_threads = check.num_threads(num_threads)
    # one block of rows: computed on the calling thread, no parallel region
    n_threads = 1 if N <= rpb else (check.default_threads() if num_threads is None else n_threads)

    tgt = target if type(target) is np.ndarray else check.as_array(target)
    kind = tgt.dtype.kind
    soft = kind == "f" or (kind == "V" and check.is_bf16(tgt.dtype))
    if soft:
        t, probs = None, _soft_targets(tgt, x, axis, C, kdt)
    else:
        probs = None
        t = tgt if (tgt.dtype is check.I64 or tgt.dtype is check.I32) and tgt.ndim == 1 and tgt.shape == row_shape \
            else check.labels(tgt, C, ignore_index, row_shape)
    xv = x if nd == 2 and axis == 1 else check.rows_of(x, axis, C, "logits", inplace)

    grad = gv = None
    gscale, row_scale = 1.0, None
    if with_grad:
        gdt = _grad_dtype(grad_dtype, x.dtype)
        gscale, row_scale = check.grad_output(grad_output, reduction, row_shape)
        gscale *= lscale
        grad = _grad_buffer(x, logits, out, inplace, gdt,
                            [(target, "target"), (weight, "weight")])
        gv = xv if grad is x else check.rows_of(grad, axis, C, "out", True)
        if soft:
            wsum = float(N)
        else:
            # Labels are checked before the gradient is written, so a bad label never leaves
            # out= or the logits half overwritten; the mean needs sum(w[y]) up front.
            bad, wsum = _kernels.xent.label_stats(t, C, ignore_index, w)
            if bad >= 0:
                check.raise_bad_label(t, bad, C, ignore_index)
        if reduction == "mean":
            gscale = check.div(gscale, wsum)

    if reduction == "none":
        loss_rows = np.empty(N, dtype=kdt)
        z_rows = np.empty(N, dtype=kdt) if return_z_loss else None
    else:
        loss_rows = z_rows = None
    total, ztotal, wsum, bad = _kernels.xent.xent(xv, t, probs, w, W, ignore_index, eps, zl, scale, cap,
                                          lscale, gscale, row_scale, loss_rows, z_rows, gv,
                                          rpb, n_threads)
    if bad >= 0:
        check.raise_bad_label(t, bad, C, ignore_index)
    if reduction == "none":
        loss = loss_rows.reshape(row_shape)
        zterm = z_rows.reshape(row_shape) if return_z_loss else None
    else:
        if reduction == "mean":
            # as torch: 0/0 when no non-ignored row has weight (also with label smoothing,
            # whose torch mean is nan then since its nll part is 0/0)
            total = total / wsum if wsum != 0.0 else math.nan
            ztotal = ztotal / wsum if wsum != 0.0 else math.nan
        loss = kdt.type(total * lscale)
        zterm = kdt.type(ztotal * lscale)
    if with_grad:
        return (loss, zterm, grad) if return_z_loss else (loss, grad)
    return (loss, zterm) if return_z_loss else loss


def cross_entropy(logits, target, *, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, axis=-1, z_loss=0.0, softcap=None, logit_scale=1.0,
                  base=None, return_z_loss=False, num_threads=None):
    """Cross-entropy between softmax(logits) and the targets, as
    ``torch.nn.functional.cross_entropy``.

    logits: float32/float64 (float16 and bfloat16 are read directly and computed in
    float32), shape (N, C) or N-D with the class axis ``axis`` (PyTorch's (N, C, d1, ...)
    layout is ``axis=1``).  target: integer class labels of the logits' shape without the
    class axis (any integer dtype), or class probabilities of the logits' shape (soft
    targets, a float array).

    weight (C,) rescales each class; rows whose label equals ``ignore_index`` contribute 0
    and are left out of the mean's denominator; ``label_smoothing`` mixes the uniform
    distribution into the target.  reduction: "mean" (sum of losses / sum of the weights of
    the non-ignored rows; soft targets: / number of rows), "sum", or "none" (one loss per
    row, the target's shape).  Scalars come back as NumPy scalars of the computation dtype.

    LLM-training options: ``z_loss`` adds z_loss * logsumexp(z)^2 per row (PaLM); ``softcap``
    replaces the logits z by softcap * tanh(z / softcap) (Gemma 2); ``logit_scale`` multiplies
    the logits first (inverse temperature).  ``return_z_loss=True`` returns (loss, z_term),
    the z-loss part reduced like the loss.  ``base`` gives the unit: None (nats), 2 (bits),
    any b > 0, != 1.  Sums are in float64, in an order that does not depend on
    ``num_threads``: results are bit-identical for any thread count.
    """
    return _cross_entropy(logits, target, weight, ignore_index, reduction, label_smoothing,
                          num_threads, axis, z_loss, softcap, logit_scale, base, return_z_loss,
                          False)


def cross_entropy_with_grad(logits, target, *, weight=None, ignore_index=-100, reduction="mean",
                            label_smoothing=0.0, axis=-1, z_loss=0.0, softcap=None,
                            logit_scale=1.0, base=None, return_z_loss=False, grad_output=1.0,
                            out=None, inplace=False, grad_dtype=None, num_threads=None):
    """``(loss, grad)`` in one fused pass over the logits; grad = d(loss)/d(logits) * grad_output
    (``(loss, z_term, grad)`` with ``return_z_loss=True``).

    ``grad_output``: a scalar; for reduction="none" also an array of the target's shape that
    scales each row.  ``out=``: a caller's array of the logits' shape (and of ``grad_dtype``)
    that receives the gradient; ``inplace=True`` overwrites ``logits`` with it (no new N x C
    memory).  Otherwise a new array is allocated (its first touch costs about as much as
    writing it).  ``grad_dtype``: the gradient's dtype, the logits' by default; float32 may be
    asked for 16-bit logits.  Other arguments as ``cross_entropy``.
    """
    return _cross_entropy(logits, target, weight, ignore_index, reduction, label_smoothing,
                          num_threads, axis, z_loss, softcap, logit_scale, base, return_z_loss,
                          True, grad_output, out, inplace, grad_dtype)
