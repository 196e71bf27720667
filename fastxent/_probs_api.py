"""Layer 3 of fastxent for the probability-space members of the cross-entropy family.

Validation and dispatch for ``cross_entropy_from_probs``, ``binary_cross_entropy`` (on
probabilities and on logits), ``entropy``, ``kl_divergence`` and ``perplexity``: every error
names the argument; dtypes, layouts and the thread count are resolved here; the kernels of
``fastxent._probs`` do the work and return float64 sums (combined in a fixed order, so results
are bit-identical for any ``num_threads``).

Units: ``base=None`` (or e) gives nats, ``base=2`` bits, any other b > 0, != 1 divides by ln(b).
"""
import inspect
import math
import numbers

import numpy as np

from . import _kernels
from . import _validation as check

__all__ = [
    "binary_cross_entropy",
    "binary_cross_entropy_with_grad",
    "binary_cross_entropy_with_logits",
    "binary_cross_entropy_with_logits_with_grad",
    "cross_entropy_from_probs",
    "cross_entropy_from_probs_with_grad",
    "entropy",
    "kl_divergence",
    "perplexity",
]

_SEG = 65536            # FX_SEG of _rowmath.h: rows longer than this may be split over threads
_TILE = 16384           # TILE of _kernels.probs.pyx: elements per partial sum of the elementwise kernels


# ------------------------------------------------------------------ argument helpers
def _vals(arr, shape):
    """Per-row / per-element results: an array of ``shape`` (a NumPy scalar for shape ())."""
    arr = arr.reshape(shape)
    return arr[()] if arr.ndim == 0 else arr


def _threads(num_threads, work, rows, C):
    """Thread count of a call: the OpenMP default or ``num_threads``; 1 for small inputs."""
    n = check.num_threads(num_threads)
    if rows is None:
        return 1 if work <= _TILE else n
    if rows <= max(1, check.BLOCK_ELEMS // max(C, 1)) and not (rows < n and C > _SEG):
        return 1
    return n


def _raise_negative(a, name):
    with np.errstate(invalid="ignore"):
        mask = a < 0
    if mask.any():
        idx = check.first_index(mask)
        raise ValueError(f"{name}: probabilities must be non-negative, got {a[idx].item()!r} "
                         f"at index {idx}")


# ------------------------------------------------------------------ cross-entropy of probabilities
def _eps(eps, kdt):
    if eps is None:
        return float(np.finfo(kdt).eps)
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps: expected a float in [0, 1) or None, got {type(eps).__name__}")
    e = check.to_float(eps, "eps")
    if not 0.0 <= e < 1.0:
        raise ValueError(f"eps: must be in [0, 1), got {eps!r}")
    return e


def _bad_label(t, C):
    mask = (t < 0) | (t >= C)
    if mask.any():
        check.raise_bad_label(t, int(np.argmax(mask.reshape(-1))), C, name="p", as_index=True)


def _raise_xent_invalid(pa, qa, labels, C, ax):
    """The error for the invalid flag of the cross-entropy kernel: a label outside [0, C), or
    a negative probability (with labels, only among the q entries read)."""
    if labels is not None:
        _bad_label(pa, C)
        y = np.expand_dims(pa.astype(np.intp), ax)
        _raise_negative(np.take_along_axis(qa, y, ax), "q")
    _raise_negative(pa, "p")
    _raise_negative(qa, "q")


def _xent_probs(p, q, eps, axis, reduction, base, num_threads, with_grad, grad_output=1.0,
                out=None, sample_weight=None):
    qa = check.float_array(q, "q")
    if qa.ndim == 0:
        raise ValueError("q: expected an array with at least 1 dimension (the class axis), "
                         "got a scalar")
    ax = check.axis(axis, qa.ndim, "q")
    C = qa.shape[ax]
    if C == 0:
        raise ValueError(f"q: the class axis (axis {ax}) has length 0")
    row_shape = qa.shape[:ax] + qa.shape[ax + 1:]
    N = math.prod(row_shape)
    pa = check.real_array(p, "p")
    if pa.shape == qa.shape:
        labels = None
        kdt = check.promote(qa.dtype, pa.dtype if pa.dtype.kind == "f" else qa.dtype)
    elif pa.shape == row_shape and pa.dtype.kind in "iu":
        if pa.dtype.kind == "u" and pa.size and pa.max() > np.iinfo(np.int64).max:
            _bad_label(pa, C)
        labels = np.ascontiguousarray(check.labels(pa, C, None, row_shape, "p"))
        kdt = qa.dtype
    elif pa.shape == row_shape:
        raise TypeError(f"p: class labels (shape {row_shape}) must be integers, "
                        f"got dtype {pa.dtype}")
    else:
        raise ValueError(f"p: expected q's shape {qa.shape} (probabilities) or {row_shape} "
                         f"(integer class labels), got {pa.shape}")
    e = _eps(eps, kdt)
    check.reduction(reduction)
    lscale = check.log_base_scale(base)
    sw = check.sample_weight(sample_weight, row_shape)
    count = N if sw is None else float(np.sum(sw))      # the mean's denominator
    n_threads = _threads(num_threads, N * C, N, C)
    rpb = check.rows_per_block(C)
    qk = check.as_kernel_dtype(qa, kdt)
    qv = check.rows_of(qk, ax, C, "q", False)
    pv = None if labels is not None else check.rows_of(check.as_kernel_dtype(pa, kdt), ax, C, "p", False)

    grad = gv = row_scale = None
    gscale = 1.0
    if with_grad:
        gscale, row_scale = check.grad_output(grad_output, reduction, row_shape)
        if sw is not None:
            row_scale = sw if row_scale is None else row_scale * sw
        gscale *= lscale
        if reduction == "mean":
            gscale = check.div(gscale, count)
        if out is None:
            grad = np.empty(qa.shape, dtype=kdt)
        else:
            grad = check.check_out(out, qa.shape, kdt, [(q, "q")], [(p, "p"), (sample_weight, "sample_weight")], "gradient")
            # The caller's array is written only once the inputs are known to be valid: a
            # loss-only pass (no writes) finds a bad label or a negative probability while p and
            # q are intact -- out may be q itself.  It costs one read of the inputs, and only
            # callers who pass out= pay it.
            if _kernels.probs.rows(pv, qv, None, labels, _kernels.probs.OP_XENT, 0, e, 1.0, 1.0,
                                   None, None, lscale, rpb, n_threads)[1]:
                _raise_xent_invalid(pa, qa, labels, C, ax)
        gv = check.rows_of(grad, ax, C, "out", True)
    vals = np.empty(N, dtype=kdt) if reduction == "none" or sw is not None else None
    total, bad = _kernels.probs.rows(pv, qv, gv, labels, _kernels.probs.OP_XENT, 0, e, 1.0, gscale, row_scale,
                             vals, lscale, rpb, n_threads)
    if bad:
        _raise_xent_invalid(pa, qa, labels, C, ax)
    if sw is not None:
        weighted = sw * vals                             # s_i * loss_i (the rows hold lscale)
        total, vals = float(np.sum(weighted)) / lscale, weighted.astype(kdt)
    if reduction == "none":
        loss = _vals(vals, row_shape)
    elif reduction == "mean":
        loss = kdt.type(check.div(total, count) * lscale if N else math.nan)
    else:
        loss = kdt.type(total * lscale)
    return (loss, grad) if with_grad else loss


def cross_entropy_from_probs(p, q, *, eps=None, axis=-1, reduction="mean", base=None,
                             sample_weight=None, num_threads=None):
    """Cross-entropy H(p, q) = -sum_c p_c log q_c of predicted probabilities ``q`` against
    target probabilities ``p``, per row along ``axis`` (scikit-learn's ``log_loss``).

    q: float32/float64 predicted probabilities, any shape with the class axis ``axis``; they
    are used as given (not renormalised: rows need not sum to 1, and that is not checked) and
    clipped to [eps, 1] before the log, so q == 0 gives a large finite loss.  ``eps=None`` is the
    machine epsilon of the computation dtype (2.2e-16 for float64, 1.2e-7 for float32, as
    scikit-learn >= 1.5); ``eps=0`` disables the lower clip (p > 0 with q == 0 gives inf).
    p: target probabilities of q's shape (one-hot or soft; any real dtype, converted), or integer
    class labels of q's shape without the class axis (picks -log q[label]).  A term with p == 0
    is 0 (0 log 0 = 0).  Negative probabilities (and labels outside [0, C)) raise ValueError;
    with labels only the q entries read are checked.  NaN propagates to its row.
    reduction: "mean" (over rows), "sum", or "none" (one value per row: q's shape without the
    class axis; a NumPy scalar for 1-D input).  base: None (nats), 2 (bits), any b > 0, != 1.
    Mixed float32/float64 inputs are computed in float64; sums are in float64, in an order that
    does not depend on ``num_threads``.
    """
    return _xent_probs(p, q, eps, axis, reduction, base, num_threads, False,
                       sample_weight=sample_weight)


def cross_entropy_from_probs_with_grad(p, q, *, eps=None, axis=-1, reduction="mean", base=None,
                                       grad_output=1.0, out=None, sample_weight=None,
                                       num_threads=None):
    """``(loss, grad)``: the loss of :func:`cross_entropy_from_probs` and d(loss)/dq * grad_output.

    grad = -p / q (/ rows for "mean", / ln(base)) where eps <= q <= 1, and 0 where q was clipped
    (the derivative of the clipped loss) or p == 0; with eps=0, p > 0 and q == 0 it is -inf.
    ``grad_output``: a scalar, or for reduction="none" an array of the loss's shape scaling each
    row.  ``out=``: an array of q's shape and dtype receiving the gradient (it may be q itself).
    """
    return _xent_probs(p, q, eps, axis, reduction, base, num_threads, True, grad_output, out,
                       sample_weight)


# ------------------------------------------------------------------ entropy / KL divergence
def _rows_input(p, name, axis):
    a = check.float_array(p, name)
    if a.ndim == 0:
        raise ValueError(f"{name}: expected an array with at least 1 dimension (the class axis), "
                         "got a scalar")
    ax = check.axis(axis, a.ndim, name)
    C = a.shape[ax]
    if C == 0:
        raise ValueError(f"{name}: the class axis (axis {ax}) has length 0")
    return a, ax, C


def entropy(p, axis=-1, base=None, *, num_threads=None):
    """Shannon entropy H(p) = -sum p log p of each row of ``p`` along ``axis``, 0 log 0 = 0.

    p: float32/float64 probabilities, used as given (not normalised: rows need not sum to 1,
    unlike ``scipy.stats.entropy``).  Negative entries raise ValueError; NaN propagates to its
    row.  Returns p's shape without ``axis`` (a NumPy scalar for 1-D input), in p's dtype;
    ``base``: None (nats), 2 (bits), any b > 0, != 1.
    """
    a, ax, C = _rows_input(p, "p", axis)
    lscale = check.log_base_scale(base)
    row_shape = a.shape[:ax] + a.shape[ax + 1:]
    N = math.prod(row_shape)
    n_threads = _threads(num_threads, N * C, N, C)
    vals = np.empty(N, dtype=a.dtype)
    _, bad = _kernels.probs.rows(check.rows_of(a, ax, C, "p", False), None, None, None, _kernels.probs.OP_ENTROPY, 0,
                         0.0, 1.0, 1.0, None, vals, lscale, max(1, check.BLOCK_ELEMS // C), n_threads)
    if bad:
        _raise_negative(a, "p")
    return _vals(vals, row_shape)


_KL_REDUCTIONS = ("none", "sum", "mean", "batchmean")


def kl_divergence(p, q, *, axis=-1, reduction="none", base=None, log_q=False, log_p=False,
                  num_threads=None):
    """Kullback-Leibler divergence KL(p || q) = sum p (log p - log q) of each row along ``axis``.

    p, q: float32/float64 arrays of the same shape (mixed: computed in float64).  A term with
    p == 0 is 0 (0 log 0 = 0, even where q == 0); p > 0 with q == 0 gives +inf.  Rows are used as
    given (not normalised; sums to 1 are not checked).  Negative probabilities raise ValueError
    (arguments given as logs are not checked); NaN propagates to its row.
    ``log_q=True``: q holds log-probabilities; ``log_p=True``: p holds log-probabilities.
    ``torch.nn.functional.kl_div(input, target, reduction=r, log_target=lt)`` (input = log q) is
    ``kl_divergence(target, input, log_q=True, log_p=lt, reduction=r)`` for r in "sum", "mean",
    "batchmean" (torch's "none" is elementwise; here it is per row; and where torch gives NaN
    for a zero target next to a -inf input, this gives 0).
    reduction: "none" (default: p's shape without ``axis``, a NumPy scalar for 1-D input),
    "sum", "mean" (the sum / p.size, as torch), "batchmean" (the sum / p.shape[0], as torch: the
    batch size of (N, C, ...) inputs).  base: None (nats), 2 (bits), any b > 0, != 1.
    """
    a, ax, C = _rows_input(p, "p", axis)
    b = check.float_array(q, "q")
    if b.shape != a.shape:
        raise ValueError(f"q: expected p's shape {a.shape}, got {b.shape}")
    check.reduction(reduction, _KL_REDUCTIONS)
    log_q, log_p = check.flag(log_q, "log_q"), check.flag(log_p, "log_p")
    lscale = check.log_base_scale(base)
    kdt = check.promote(a.dtype, b.dtype)
    a, b = check.as_kernel_dtype(a, kdt), check.as_kernel_dtype(b, kdt)
    row_shape = a.shape[:ax] + a.shape[ax + 1:]
    N = math.prod(row_shape)
    n_threads = _threads(num_threads, N * C, N, C)
    mode = (1 if log_q else 0) | (2 if log_p else 0)
    vals = np.empty(N, dtype=kdt) if reduction == "none" else None
    total, bad = _kernels.probs.rows(check.rows_of(a, ax, C, "p", False), check.rows_of(b, ax, C, "q", False), None,
                             None, _kernels.probs.OP_KL, mode, 0.0, 1.0, 1.0, None, vals, lscale,
                             max(1, check.BLOCK_ELEMS // C), n_threads)
    if bad:
        if not log_p:
            _raise_negative(a, "p")
        if not log_q:
            _raise_negative(b, "q")
    if reduction == "none":
        return _vals(vals, row_shape)
    if reduction == "mean":
        total = check.div(total, a.size)
    elif reduction == "batchmean":
        total = check.div(total, a.shape[0])
    return kdt.type(total * lscale)


# ------------------------------------------------------------------ perplexity
def perplexity(logits, target, *, base=None, **cross_entropy_kwargs):
    """exp(cross-entropy in nats) of ``fastxent.cross_entropy(logits, target, ...)``.

    ``base`` is accepted (and validated) for symmetry with the losses but does not change the
    result: perplexity is the same in every unit (b ** H_b == e ** H_nats).  Keywords are
    those of :func:`fastxent.cross_entropy` (weight, ignore_index, label_smoothing, axis,
    softcap, ...); ``reduction`` may be "mean" (default: exp of the mean loss, the usual
    perplexity) or "none" (exp of each row's loss); ``z_loss`` and ``return_z_loss`` are refused.
    """
    from ._api import cross_entropy

    check.log_base_scale(base)
    reduction = cross_entropy_kwargs.pop("reduction", "mean")
    check.reduction(reduction, ("mean", "none"))
    accepted = inspect.signature(cross_entropy).parameters
    for key in cross_entropy_kwargs:
        if key in ("z_loss", "return_z_loss") or key not in accepted:
            raise TypeError(f"{key}: not accepted by perplexity")
    loss = cross_entropy(logits, target, reduction=reduction, **cross_entropy_kwargs)
    with np.errstate(over="ignore"):
        return np.exp(loss)


# ------------------------------------------------------------------ binary cross-entropy
def _same_shape(target, shape, kdt, xname):
    t = check.real_array(target, "target")
    if t.shape != shape:
        raise ValueError(f"target: expected shape {shape} (the {xname}' shape), got {t.shape}")
    return check.as_kernel_dtype(t, kdt)


def _broadcast(v, shape, kdt, name, xname):
    if v is None:
        return None
    a = check.real_array(v, name)
    try:
        ok = np.broadcast_shapes(a.shape, shape) == shape
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"{name}: shape {a.shape} cannot be broadcast to the {xname}' "
                         f"shape {shape}")
    return np.broadcast_to(check.as_kernel_dtype(a, kdt), shape)


def _coalesce(shape, arrays):
    """The broadcast shape as an (R, K) grid with each array's byte strides on it: dimensions
    of length 1 dropped, neighbours merged where every array allows; None if more than 2
    dimensions remain."""
    dims = []          # [size, [stride per array]]
    for d, n in enumerate(shape):
        if n == 1:
            continue
        st = [a.strides[d] for a in arrays]
        if dims and all(s0 == s1 * n for s0, s1 in zip(dims[-1][1], st)):
            dims[-1][0] *= n
            dims[-1][1] = st
        else:
            dims.append([n, st])
    if len(dims) > 2:
        return None
    while len(dims) < 2:
        dims.insert(0, [1, [0] * len(arrays)])
    (R, s0), (K, s1) = dims
    return R, K, list(zip(s0, s1))


def _binary(op, x_in, target, weight, pos_weight, reduction, base, num_threads, with_grad,
            grad_output=1.0, out=None):
    xname = "probs" if op == _kernels.probs.OP_BCE else "logits"
    x = check.float_array(x_in, xname)
    kdt, shape = x.dtype, x.shape
    y = _same_shape(target, shape, kdt, xname)
    w = _broadcast(weight, shape, kdt, "weight", xname)
    pw = _broadcast(pos_weight, shape, kdt, "pos_weight", xname)
    check.reduction(reduction)
    lscale = check.log_base_scale(base)
    numel = math.prod(shape)
    n_threads = _threads(num_threads, numel, None, None)

    grad = go = None
    gscale = 1.0
    if with_grad:
        if isinstance(grad_output, numbers.Real) and not isinstance(grad_output, bool):
            gscale = check.to_float(grad_output, "grad_output")
        else:
            g = check.real_array(grad_output, "grad_output")
            if g.size == 1 and (g.ndim == 0 or reduction != "none"):
                gscale = float(g.reshape(()))
            elif reduction == "none":
                go = _broadcast(g, shape, kdt, "grad_output", xname)
            else:
                raise ValueError(f"grad_output: expected a scalar for reduction={reduction!r}, "
                                 f"got shape {g.shape}")
        gscale *= lscale
        if reduction == "mean":
            gscale = check.div(gscale, numel)
        if out is None:
            grad = np.empty(shape, dtype=kdt)
        else:
            grad = check.check_out(out, shape, kdt, [(x_in, xname)],
                                   [(target, "target"), (weight, "weight"),
                                    (pos_weight, "pos_weight"), (grad_output, "grad_output")],
                                   "gradient")

    loss_flat = np.empty(numel, dtype=kdt) if reduction == "none" else None
    total, bad = 0.0, 0
    if numel:
        ops = [x, y, w, pw, go, grad]
        present = [a for a in ops if a is not None]
        grid = _coalesce(shape, present)
        gtarget = grad
        if grid is None or (grid[0] > 1 and grid[1] < 32):
            # not a 2-D grid (or rows too short to pay per row): contiguous copies, one 1-D run
            x, y, w, pw, go = (None if a is None else np.ascontiguousarray(a)
                               for a in (x, y, w, pw, go))
            if grad is not None and not grad.flags.c_contiguous:
                gtarget = np.empty(shape, dtype=kdt)
            ops = [x, y, w, pw, go, gtarget]
            present = [a for a in ops if a is not None]
            grid = _coalesce(shape, present)
        R, K, strides = grid
        it = iter(strides)
        specs = [None if a is None else (a, *next(it)) for a in ops]
        if out is not None and op == _kernels.probs.OP_BCE:
            # out is written only once the values are known to be in range: a loss-only pass
            # (no writes) checks them while they are intact -- out may be probs itself.  One read
            # of the inputs, paid only by callers who pass out=.
            if _kernels.probs.binary(op, R, K, *specs[:5], None, None, lscale, gscale,
                                     n_threads)[1]:
                _raise_range(x, xname)
                _raise_range(y, "target")
        total, bad = _kernels.probs.binary(op, R, K, *specs, loss_flat, lscale, gscale, n_threads)
        if bad:
            _raise_range(x, xname)
            _raise_range(y, "target")
        if gtarget is not grad:
            np.copyto(grad, gtarget)
    if reduction == "none":
        loss = _vals(loss_flat, shape)
    elif reduction == "mean":
        loss = kdt.type(total * lscale / numel if numel else math.nan)
    else:
        loss = kdt.type(total * lscale)
    return (loss, grad) if with_grad else loss


def _raise_range(a, name):
    with np.errstate(invalid="ignore"):
        mask = ~((a >= 0) & (a <= 1))
    if mask.any():
        idx = check.first_index(mask)
        raise ValueError(f"{name}: all elements must be in [0, 1] (as torch's "
                         f"binary_cross_entropy), got {a[idx].item()!r} at index {idx}")


def binary_cross_entropy(probs, target, *, weight=None, reduction="mean", base=None,
                         num_threads=None):
    """Binary cross-entropy of probabilities, as ``torch.nn.functional.binary_cross_entropy``:
    ``l = -w * (y * max(log p, -100) + (1 - y) * max(log(1 - p), -100))`` elementwise (the log
    terms are clamped at -100, as torch, so p = 0 or 1 gives at most 100 per element).

    probs: float32/float64, any shape; target: the same shape (any real dtype, converted);
    both must lie in [0, 1] (ValueError otherwise, NaN included, as torch).  weight: None or an
    array broadcastable to probs' shape (any values, as torch).  reduction: "mean" (over all
    elements), "sum", "none" (probs' shape).  base: None (nats), 2 (bits), any b > 0, != 1.
    """
    return _binary(_kernels.probs.OP_BCE, probs, target, weight, None, reduction, base, num_threads, False)


def binary_cross_entropy_with_grad(probs, target, *, weight=None, reduction="mean", base=None,
                                   grad_output=1.0, out=None, num_threads=None):
    """``(loss, grad)``: :func:`binary_cross_entropy` and d(loss)/d(probs) * grad_output, with
    torch's formula ``w * (p - y) / max((1 - p) * p, 1e-12)`` (/ numel for "mean"; 1e-12 in
    float32, 9.99999996e-13, as torch also for float64).

    ``grad_output``: a scalar, or for reduction="none" an array broadcastable to probs' shape.
    ``out=``: an array of probs' shape and dtype for the gradient (it may be probs itself); it
    is written only once every value has been checked.
    """
    return _binary(_kernels.probs.OP_BCE, probs, target, weight, None, reduction, base, num_threads, True,
                   grad_output, out)


def binary_cross_entropy_with_logits(logits, target, *, weight=None, pos_weight=None,
                                     reduction="mean", base=None, num_threads=None):
    """Binary cross-entropy of sigmoid(logits), as
    ``torch.nn.functional.binary_cross_entropy_with_logits``, in the stable form
    ``l = w * ((1 - y) * softplus(x) + pos_weight * y * softplus(-x))``: no overflow for any
    logit (1e4, 1e30, inf), and no cancellation for soft targets.  A term whose coefficient is 0
    is 0, so infinite logits give the loss's limit (torch's formula gives NaN for x = -inf,
    y = 0 and for x = +inf, y = 1).

    logits: float32/float64, any shape; target: the same shape (any real values, as torch).
    weight, pos_weight: None or arrays broadcastable to the logits' shape (pos_weight of shape
    (C,) applies along the last axis, as torch).  reduction: "mean" (over all elements), "sum",
    "none".  base: None (nats), 2 (bits), any b > 0, != 1.
    """
    return _binary(_kernels.probs.OP_BCE_LOGITS, logits, target, weight, pos_weight, reduction, base,
                   num_threads, False)


def binary_cross_entropy_with_logits_with_grad(logits, target, *, weight=None, pos_weight=None,
                                               reduction="mean", base=None, grad_output=1.0,
                                               out=None, num_threads=None):
    """``(loss, grad)``: :func:`binary_cross_entropy_with_logits` and d(loss)/d(logits) *
    grad_output: ``w * ((1 - y) * sigmoid(x) - pos_weight * y * sigmoid(-x))`` (/ numel for
    "mean"), finite for every finite or infinite logit.

    ``grad_output``: a scalar, or for reduction="none" an array broadcastable to the logits'
    shape.  ``out=``: an array of the logits' shape and dtype (it may be the logits themselves).
    """
    return _binary(_kernels.probs.OP_BCE_LOGITS, logits, target, weight, pos_weight, reduction, base,
                   num_threads, True, grad_output, out)
