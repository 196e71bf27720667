"""Layer 3 of fastxent: the Python API.

Every public function validates its arguments here (each error names the argument and the
problem), resolves dtype, memory layout and thread count, allocates outputs and calls one
kernel of ``fastxent._xent``; reductions of the kernels' per-block partial sums happen here in
a fixed order, so results do not depend on the number of threads.
"""
import math
import numbers
import os

import numpy as np

from . import _xent

__all__ = [
    "logsumexp",
    "log_softmax",
    "softmax",
    "cross_entropy",
    "cross_entropy_with_grad",
]

_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)
_F16 = np.dtype(np.float16)
_I32 = np.dtype(np.int32)
_I64 = np.dtype(np.int64)
_FLOATS = (_F32, _F64)
_REDUCTIONS = ("mean", "sum", "none")
# Rows are processed in blocks of about this many elements: the unit of work of one thread
# and of the fixed-order reduction (so it depends on C only, never on the thread count).
_BLOCK_ELEMS = 1 << 16


# ------------------------------------------------------------------ argument checks
# GNU OpenMP's thread pool does not survive fork(): a child process would hang in its first
# parallel region.  A process forked after fastxent has run therefore computes single
# threaded (correct results; use the "spawn" or "forkserver" start method for threads).
_FORKED = False


def _after_fork_in_child():
    global _FORKED
    _FORKED = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _default_threads():
    return 1 if _FORKED else _xent.max_threads()


def _num_threads(num_threads):
    if num_threads is None:
        return _default_threads()
    if isinstance(num_threads, bool) or not isinstance(num_threads, numbers.Integral):
        raise TypeError(f"num_threads: expected an int or None, got {type(num_threads).__name__}")
    n = int(num_threads)
    if n < 1:
        raise ValueError(f"num_threads: must be >= 1, got {n}")
    return 1 if _FORKED else n


def _float_array(x, name):
    a = x if type(x) is np.ndarray else _as_array(x)
    dt = a.dtype
    if (dt is _F32 or dt is _F64) and a.flags.aligned:
        return a  # the common case, checked cheaply; strides of aligned arrays are whole items
    if dt.kind == "f" and dt.itemsize in (4, 8) and not dt.isnative:
        a = a.astype(dt.newbyteorder("="))
    if a.dtype not in _FLOATS:
        raise TypeError(
            f"{name}: expected a float32 or float64 array, got dtype {a.dtype}"
            + (" (convert it with .astype(np.float32))" if a.dtype.kind == "f" else "")
        )
    if not a.flags.aligned or any(s % a.itemsize for s in a.strides):
        a = a.copy()  # unaligned views (e.g. of structured arrays): the kernels need whole elements
    return a


def _rows_per_block(C):
    return max(1, _BLOCK_ELEMS // C)


def _reduction(reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction: expected one of 'mean', 'sum', 'none', got {reduction!r}")
    return reduction


def _label_smoothing(label_smoothing):
    try:
        eps = float(label_smoothing)
    except (TypeError, ValueError):
        raise TypeError(
            f"label_smoothing: expected a float in [0, 1], got {type(label_smoothing).__name__}"
        ) from None
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"label_smoothing: must be in [0, 1], got {label_smoothing!r}")
    return eps


def _ignore_index(ignore_index):
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"ignore_index: expected an int, got {type(ignore_index).__name__}")
    return int(ignore_index)


def _labels(t, C, ignore_index, row_shape):
    """Integer labels as a contiguous int32/int64 vector of the rows (row-major order)."""
    if t.dtype.kind not in "iu":
        raise TypeError(f"target: expected integer class labels or float class probabilities, "
                        f"got dtype {t.dtype}")
    if t.shape != row_shape:
        raise ValueError(f"target: expected shape {row_shape} to match the logits' rows, got {t.shape}")
    if t.ndim != 1:
        t = t.reshape(-1)
    if t.dtype is not _I64 and t.dtype is not _I32:
        if t.dtype == np.uint64 and t.size and t.max() > np.iinfo(np.int64).max:
            row = int(np.argmax(t > np.iinfo(np.int64).max))
            _bad_label(t, row, C, ignore_index)
        t = t.astype(_I64)
    return t


def _bad_label(t, row, C, ignore_index):
    raise ValueError(
        f"target: label {int(t.reshape(-1)[row])} at row {row} is out of range [0, {C}) "
        f"and is not ignore_index ({ignore_index})"
    )


def _weight(weight, C):
    """float64 contiguous class weights and their sum (None: unit weights, sum C)."""
    if weight is None:
        return None, float(C)
    w = weight if type(weight) is np.ndarray else np.asarray(weight)
    if w.dtype.kind not in "fiu":
        raise TypeError(f"weight: expected a real-valued array of class weights, got dtype {w.dtype}")
    if w.shape != (C,):
        raise ValueError(f"weight: expected shape ({C},) (one weight per class), got {w.shape}")
    w = np.ascontiguousarray(w, dtype=_F64)
    if not np.isfinite(w).all():
        raise ValueError("weight: contains NaN or inf")
    if (w < 0).any():
        raise ValueError(f"weight: must be non-negative, got {w.min()} at class {int(np.argmin(w))}")
    return w, math.fsum(w.tolist())


def _div(a, b):
    """a / b with IEEE semantics (0/0 -> nan, x/0 -> +-inf) and no warning."""
    if b != 0.0:
        return a / b
    if a != a or a == 0.0:
        return math.nan
    return math.copysign(math.inf, a)


def _check_no_overlap(arr, name, others):
    for other, oname in others:
        if isinstance(other, np.ndarray) and np.may_share_memory(arr, other):
            extra = "; use inplace=True to overwrite the logits" if oname == "logits" else ""
            raise ValueError(f"{name}: overlaps {oname} in memory{extra}")


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
        _check_no_overlap(logits, "logits", others)
        return logits
    if out is None:
        return np.empty_like(x, dtype=gdt) if x.ndim == 2 else np.empty(x.shape, dtype=gdt)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out: expected a NumPy array, got {type(out).__name__}")
    if out.shape != x.shape:
        raise ValueError(f"out: expected shape {x.shape}, got {out.shape}")
    if out.dtype != gdt:
        raise ValueError(f"out: expected dtype {gdt} (the gradient's dtype), got {out.dtype}")
    if not out.flags.writeable:
        raise ValueError("out: the array is read-only")
    if not out.flags.aligned:
        raise ValueError("out: must be aligned with strides that are whole elements")
    _check_no_overlap(out, "out", [(logits, "logits")] + others)
    return out


def _grad_output(grad_output, reduction, N, row_shape):
    """(scalar scale, per-row scale or None)."""
    if isinstance(grad_output, numbers.Real) and not isinstance(grad_output, bool):
        return float(grad_output), None
    g = np.asarray(grad_output)
    if g.dtype.kind not in "fiu":
        raise TypeError(f"grad_output: expected a real number or array, got dtype {g.dtype}")
    if g.ndim == 0 or (g.size == 1 and reduction != "none"):
        return float(g.reshape(())), None
    if reduction == "none" and g.shape == row_shape:
        return 1.0, np.ascontiguousarray(g, dtype=_F64).reshape(-1)
    want = f"a scalar or shape {row_shape}" if reduction == "none" else "a scalar"
    raise ValueError(f"grad_output: expected {want} for reduction={reduction!r}, got shape {g.shape}")


# ------------------------------------------------------------------ cross-entropy
def _as_array(obj):
    """An ndarray view of ``obj``: DLPack producers (torch, JAX, CuPy on the CPU, ...) are read
    without a copy where they allow it, anything else goes through ``np.asarray``."""
    if isinstance(obj, np.ndarray):
        return obj
    if hasattr(obj, "__dlpack__"):
        try:
            return np.from_dlpack(obj)
        except (TypeError, ValueError, RuntimeError, BufferError):
            pass
    return np.asarray(obj)


def _logits_nd(logits, name="logits"):
    """The logits as an ndarray of a supported dtype (16-bit floats included)."""
    x = logits if type(logits) is np.ndarray else _as_array(logits)
    dt = x.dtype
    if (dt is _F32 or dt is _F64) and x.flags.aligned:
        return x
    if dt == _F16 or _is_bf16(dt):
        return x if x.flags.aligned else x.copy()
    return _float_array(x, name)


def _is_bf16(dt):
    return dt.name == "bfloat16" and dt.itemsize == 2


def _kernel_dtype(dt):
    """float64 logits are computed in float64, every other float type in float32."""
    return _F64 if dt is _F64 or dt == _F64 else _F32


def _rows_of(a, axis, C, name, need_view):
    """``a`` as a 2-D (rows, C) or 3-D (A, D, C) view with the class axis last, rows in the
    C order of the remaining axes.  Raises if a view is needed but only a copy is possible."""
    if a.ndim == 2 and axis == 1:
        return a
    shape = a.shape
    A = math.prod(shape[:axis])
    if axis == a.ndim - 1:
        v = a.reshape(A, C)
    else:
        D = math.prod(shape[axis + 1:])
        v = a.reshape(A, C, D).transpose(0, 2, 1)
    if need_view and v.size and not np.may_share_memory(v, a):
        raise ValueError(f"{name}: this memory layout cannot be written in place; "
                         "pass a C-contiguous array")
    return v


def _log_base_scale(base):
    """1 / ln(base): the factor that turns nats into the requested unit (None: nats)."""
    if base is None:
        return 1.0
    if isinstance(base, bool) or not isinstance(base, numbers.Real):
        raise TypeError(f"base: expected a positive number or None, got {type(base).__name__}")
    b = float(base)
    if not (b > 0.0 and math.isfinite(b)) or b == 1.0:
        raise ValueError(f"base: must be a positive finite number other than 1, got {base!r}")
    return 1.0 / math.log(b)


def _nonneg(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a non-negative float, got {type(value).__name__}")
    v = float(value)
    if not (v >= 0.0 and math.isfinite(v)):
        raise ValueError(f"{name}: must be a finite number >= 0, got {value!r}")
    return v


def _transform(softcap, logit_scale):
    cap = 0.0
    if softcap is not None:
        if isinstance(softcap, bool) or not isinstance(softcap, numbers.Real):
            raise TypeError(f"softcap: expected a positive float or None, got {type(softcap).__name__}")
        cap = float(softcap)
        if not (cap > 0.0 and math.isfinite(cap)):
            raise ValueError(f"softcap: must be a positive finite number or None, got {softcap!r}")
    if isinstance(logit_scale, bool) or not isinstance(logit_scale, numbers.Real):
        raise TypeError(f"logit_scale: expected a float, got {type(logit_scale).__name__}")
    scale = float(logit_scale)
    if not math.isfinite(scale):
        raise ValueError(f"logit_scale: must be finite, got {logit_scale!r}")
    return cap, scale


def _grad_dtype(grad_dtype, dt):
    if grad_dtype is None:
        return dt
    gdt = np.dtype(grad_dtype)
    if gdt == dt or (gdt == _F32 and dt.itemsize == 2):
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
    return _rows_of(p, axis, C, "target", False)


def _cross_entropy(logits, target, weight, ignore_index, reduction, label_smoothing, num_threads,
                   axis, z_loss, softcap, logit_scale, base, return_z_loss, with_grad,
                   grad_output=1.0, out=None, inplace=False, grad_dtype=None):
    x = _logits_nd(logits)
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
    kdt = _kernel_dtype(x.dtype)
    if type(ignore_index) is not int:
        ignore_index = _ignore_index(ignore_index)
    w, W = (None, float(C)) if weight is None else _weight(weight, C)
    if reduction not in _REDUCTIONS:
        _reduction(reduction)
    eps = label_smoothing
    if type(eps) is not float or not 0.0 <= eps <= 1.0:
        eps = _label_smoothing(label_smoothing)
    zl = z_loss if type(z_loss) is float and z_loss == 0.0 else _nonneg(z_loss, "z_loss")
    cap, scale = (0.0, 1.0) if softcap is None and logit_scale == 1.0 else \
        _transform(softcap, logit_scale)
    lscale = 1.0 if base is None else _log_base_scale(base)
    rpb = _BLOCK_ELEMS // C or 1
    if num_threads is not None:
        n_threads = _num_threads(num_threads)
    # one block of rows: computed on the calling thread, no parallel region
    n_threads = 1 if N <= rpb else (_default_threads() if num_threads is None else n_threads)

    tgt = target if type(target) is np.ndarray else _as_array(target)
    kind = tgt.dtype.kind
    soft = kind == "f" or (kind == "V" and _is_bf16(tgt.dtype))
    if soft:
        t, probs = None, _soft_targets(tgt, x, axis, C, kdt)
    else:
        probs = None
        t = tgt if (tgt.dtype is _I64 or tgt.dtype is _I32) and tgt.ndim == 1 and tgt.shape == row_shape \
            else _labels(tgt, C, ignore_index, row_shape)
    xv = x if nd == 2 and axis == 1 else _rows_of(x, axis, C, "logits", inplace)

    grad = gv = None
    gscale, row_scale = 1.0, None
    if with_grad:
        gdt = _grad_dtype(grad_dtype, x.dtype)
        gscale, row_scale = _grad_output(grad_output, reduction, N, row_shape)
        gscale *= lscale
        grad = _grad_buffer(x, logits, out, inplace, gdt,
                            [(target, "target"), (weight, "weight")])
        gv = xv if grad is x else _rows_of(grad, axis, C, "out", True)
        if soft:
            wsum = float(N)
        else:
            # Labels are checked before the gradient is written, so a bad label never leaves
            # out= or the logits half overwritten; the mean needs sum(w[y]) up front.
            bad, wsum = _xent.label_stats(t, C, ignore_index, w)
            if bad >= 0:
                _bad_label(t, bad, C, ignore_index)
        if reduction == "mean":
            gscale = _div(gscale, wsum)

    if reduction == "none":
        loss_rows = np.empty(N, dtype=kdt)
        z_rows = np.empty(N, dtype=kdt) if return_z_loss else None
    else:
        loss_rows = z_rows = None
    total, ztotal, wsum, bad = _xent.xent(xv, t, probs, w, W, ignore_index, eps, zl, scale, cap,
                                          lscale, gscale, row_scale, loss_rows, z_rows, gv,
                                          rpb, n_threads)
    if bad >= 0:
        _bad_label(t, bad, C, ignore_index)
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


# ------------------------------------------------------------------ log-sum-exp family
def _rows_view(x, axis):
    """x with ``axis`` moved last and flattened to (rows, C), plus the moved shape."""
    a = _float_array(x, "x")
    if a.ndim == 0:
        raise ValueError("x: expected an array with at least 1 dimension, got a scalar")
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"axis: expected an int, got {type(axis).__name__}")
    if not -a.ndim <= axis < a.ndim:
        raise ValueError(f"axis: {axis} is out of bounds for an array of dimension {a.ndim}")
    axis = int(axis) % a.ndim
    if a.shape[axis] == 0:
        raise ValueError(f"x: the class axis (axis {axis}) has length 0")
    moved = a if axis == a.ndim - 1 else np.moveaxis(a, axis, -1)
    C = moved.shape[-1]
    rows = moved.reshape(-1, C) if moved.ndim != 2 else moved
    return rows, moved.shape, axis


def logsumexp(x, axis=-1, *, num_threads=None):
    """log(sum(exp(x), axis)), computed stably (no overflow for any finite x).

    Rows with a NaN or +inf, or with every element -inf, give NaN.
    """
    rows, shape, axis = _rows_view(x, axis)
    n_threads = _num_threads(num_threads)
    out = np.empty(rows.shape[0], dtype=rows.dtype)
    _xent.lse_family(rows, 0, out, None, _rows_per_block(rows.shape[1]), n_threads)
    out = out.reshape(shape[:-1])
    return out[()] if out.ndim == 0 else out


def _softmax_like(x, axis, num_threads, mode):
    rows, shape, axis = _rows_view(x, axis)
    n_threads = _num_threads(num_threads)
    out = np.empty(rows.shape, dtype=rows.dtype)
    _xent.lse_family(rows, mode, None, out, _rows_per_block(rows.shape[1]), n_threads)
    out = out.reshape(shape)
    return out if axis == out.ndim - 1 else np.moveaxis(out, -1, axis)


def log_softmax(x, axis=-1, *, num_threads=None):
    """x - logsumexp(x, axis), keeping dims; computed as (x - max) - log(sum(exp(x - max)))."""
    return _softmax_like(x, axis, num_threads, 1)


def softmax(x, axis=-1, *, num_threads=None):
    """exp(x - logsumexp(x, axis)); masked (-inf) entries are exactly 0."""
    return _softmax_like(x, axis, num_threads, 2)
