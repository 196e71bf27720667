"""Layer 3 of fastxent: the Python API.

Every public function validates its arguments here (each error names the argument and the
problem), resolves dtype, memory layout and thread count, allocates outputs and calls one
kernel of ``fastxent._xent``; reductions of the kernels' per-block partial sums happen here in
a fixed order, so results do not depend on the number of threads.
"""
import math
import numbers

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
_I32 = np.dtype(np.int32)
_I64 = np.dtype(np.int64)
_FLOATS = (_F32, _F64)
_REDUCTIONS = ("mean", "sum", "none")
# Rows are processed in blocks of about this many elements: the unit of work of one thread
# and of the fixed-order reduction (so it depends on C only, never on the thread count).
_BLOCK_ELEMS = 1 << 16


# ------------------------------------------------------------------ argument checks
def _num_threads(num_threads):
    if num_threads is None:
        return _xent.max_threads()
    if isinstance(num_threads, bool) or not isinstance(num_threads, numbers.Integral):
        raise TypeError(f"num_threads: expected an int or None, got {type(num_threads).__name__}")
    n = int(num_threads)
    if n < 1:
        raise ValueError(f"num_threads: must be >= 1, got {n}")
    return n


def _float_array(x, name):
    a = x if type(x) is np.ndarray else np.asarray(x)
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


def _logits_2d(logits, name="logits"):
    x = _float_array(logits, name)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array of shape (N, C), got {x.ndim}-D shape {x.shape}")
    if x.shape[1] == 0:
        raise ValueError(f"{name}: the class axis has length 0 (C = 0)")
    return x


def _labels(target, N, C, ignore_index):
    t = target if type(target) is np.ndarray else np.asarray(target)
    if t.dtype.kind not in "iu":
        raise TypeError(f"target: expected an integer array of class labels, got dtype {t.dtype}")
    if t.shape != (N,):
        raise ValueError(f"target: expected shape ({N},) to match logits' {N} rows, got {t.shape}")
    if t.dtype is not _I64 and t.dtype is not _I32:
        if t.dtype == np.uint64 and N and t.max() > np.iinfo(np.int64).max:
            row = int(np.argmax(t > np.iinfo(np.int64).max))
            _bad_label(t, row, C, ignore_index)
        t = t.astype(_I64)
    return t


def _bad_label(t, row, C, ignore_index):
    raise ValueError(
        f"target: label {int(t[row])} at row {row} is out of range [0, {C}) "
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


def _grad_buffer(x, logits, out, inplace, others):
    if inplace:
        if out is not None:
            raise ValueError("out: cannot be combined with inplace=True")
        if not isinstance(logits, np.ndarray):
            raise TypeError(f"logits: inplace=True needs a NumPy array, got {type(logits).__name__}")
        if logits.dtype not in _FLOATS:
            raise TypeError(f"logits: inplace=True needs float32 or float64 logits, got dtype {logits.dtype}")
        if not logits.flags.writeable:
            raise ValueError("logits: inplace=True but the array is read-only")
        if x is not logits:
            raise ValueError("logits: inplace=True needs an aligned array of whole elements")
        _check_no_overlap(logits, "logits", others)
        return logits
    if out is None:
        return np.empty(x.shape, dtype=x.dtype)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out: expected a NumPy array, got {type(out).__name__}")
    if out.shape != x.shape:
        raise ValueError(f"out: expected shape {x.shape}, got {out.shape}")
    if out.dtype != x.dtype:
        raise ValueError(f"out: expected dtype {x.dtype} (the logits' dtype), got {out.dtype}")
    if not out.flags.writeable:
        raise ValueError("out: the array is read-only")
    if not out.flags.aligned or any(s % out.itemsize for s in out.strides):
        raise ValueError("out: must be aligned with strides that are whole elements")
    _check_no_overlap(out, "out", [(logits, "logits")] + others)
    return out


def _grad_output(grad_output, reduction, N):
    """(scalar scale, per-row scale or None)."""
    if isinstance(grad_output, numbers.Real) and not isinstance(grad_output, bool):
        return float(grad_output), None
    g = np.asarray(grad_output)
    if g.dtype.kind not in "fiu":
        raise TypeError(f"grad_output: expected a real number or array, got dtype {g.dtype}")
    if g.ndim == 0 or g.shape == (1,) and reduction != "none":
        return float(g.reshape(())), None
    if reduction == "none" and g.shape == (N,):
        return 1.0, np.ascontiguousarray(g, dtype=_F64)
    want = f"a scalar or shape ({N},)" if reduction == "none" else "a scalar"
    raise ValueError(f"grad_output: expected {want} for reduction={reduction!r}, got shape {g.shape}")


# ------------------------------------------------------------------ cross-entropy
def _cross_entropy(logits, target, weight, ignore_index, reduction, label_smoothing, num_threads,
                   with_grad, grad_output=1.0, out=None, inplace=False):
    x = _logits_2d(logits)
    N, C = x.shape
    if type(ignore_index) is not int:
        ignore_index = _ignore_index(ignore_index)
    t = _labels(target, N, C, ignore_index)
    w, W = _weight(weight, C)
    if reduction not in _REDUCTIONS:
        _reduction(reduction)
    eps = label_smoothing
    if type(eps) is not float or not 0.0 <= eps <= 1.0:
        eps = _label_smoothing(label_smoothing)
    n_threads = _xent.max_threads() if num_threads is None else _num_threads(num_threads)
    rpb = _BLOCK_ELEMS // C or 1
    if N <= rpb:
        n_threads = 1

    grad = None
    gscale, row_scale = 1.0, None
    if with_grad:
        gscale, row_scale = _grad_output(grad_output, reduction, N)
        grad = _grad_buffer(x, logits, out, inplace, [(target, "target"), (weight, "weight")])
        # Labels are checked before the gradient is written, so a bad label never leaves
        # out= or the logits half overwritten; the mean needs sum(w[y]) up front.
        bad, wsum = _xent.label_stats(t, C, ignore_index, w)
        if bad >= 0:
            _bad_label(t, bad, C, ignore_index)
        if reduction == "mean":
            gscale = _div(gscale, wsum)

    loss_rows = np.empty(N, dtype=x.dtype) if reduction == "none" else None
    total, wsum, bad = _xent.xent(x, t, w, W, ignore_index, eps, gscale, row_scale, loss_rows,
                                  grad, rpb, n_threads)
    if bad >= 0:
        _bad_label(t, bad, C, ignore_index)
    if reduction == "none":
        loss = loss_rows
    elif reduction == "mean":
        loss = x.dtype.type(_div(total, wsum) if N else math.nan)
    else:
        loss = x.dtype.type(total)
    return (loss, grad) if with_grad else loss


def cross_entropy(logits, target, *, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, num_threads=None):
    """Cross-entropy between softmax(logits) and integer class labels.

    Same semantics as ``torch.nn.functional.cross_entropy`` for logits of shape (N, C) and
    ``target`` of shape (N,) (any integer dtype): ``weight`` (C,) rescales each class,
    rows whose label equals ``ignore_index`` contribute 0 (and are left out of the mean's
    denominator), ``label_smoothing`` mixes the uniform distribution into the target.

    reduction: "mean" (sum of losses / sum of the weights of non-ignored rows), "sum"
    (scalars of the logits' dtype) or "none" (per-row losses, shape (N,)).
    Accumulation is in float64 in a fixed order: identical results for any ``num_threads``.
    """
    return _cross_entropy(logits, target, weight, ignore_index, reduction, label_smoothing,
                          num_threads, False)


def cross_entropy_with_grad(logits, target, *, weight=None, ignore_index=-100, reduction="mean",
                            label_smoothing=0.0, grad_output=1.0, out=None, inplace=False,
                            num_threads=None):
    """``(loss, grad)`` in one fused pass over the logits; grad = d(loss)/d(logits).

    ``grad_output`` scales the gradient (a scalar; for reduction="none" also an array of
    shape (N,) that scales each row).  ``out=`` writes the gradient into a caller's array of
    the logits' shape and dtype; ``inplace=True`` overwrites ``logits`` with it (no new N x C
    memory).  Otherwise a new array is allocated.  Other arguments as ``cross_entropy``.
    """
    return _cross_entropy(logits, target, weight, ignore_index, reduction, label_smoothing,
                          num_threads, True, grad_output, out, inplace)


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
