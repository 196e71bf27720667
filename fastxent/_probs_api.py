"""Layer 3 of fastxent for the probability-space members of the cross-entropy family.

Validation and dispatch for ``cross_entropy_from_probs``, ``entropy``, ``kl_divergence`` and
``perplexity`` (binary cross-entropy is in ``_binary_api``): every error
names the argument; dtypes, layouts and the thread count are resolved here; the kernels of
``fastxent._probs`` do the work and return float64 sums (combined in a fixed order, so results
are bit-identical for any ``num_threads``).

Units: ``base=None`` (or e) gives nats, ``base=2`` bits, any other b > 0, != 1 divides by ln(b).
"""
from __future__ import annotations

import inspect
import math
import numbers
from typing import Any

import numpy as np

from . import _kernels
from . import _validation as check
from ._docs import fill

__all__ = [
    "cross_entropy_from_probs",
    "cross_entropy_from_probs_with_grad",
    "entropy",
    "kl_divergence",
    "perplexity",
]

# ------------------------------------------------------------------ argument helpers
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
    n_threads = check.work_threads(num_threads, N * C, N, C)
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
        loss = check.values_of(vals, row_shape)
    elif reduction == "mean":
        loss = kdt.type(check.div(total, count) * lscale if N else math.nan)
    else:
        loss = kdt.type(total * lscale)
    return (loss, grad) if with_grad else loss


@fill
def cross_entropy_from_probs(p: Any, q: Any, *, eps: float | None = None, axis: int = -1,
                             reduction: str = "mean", base: float | None = None,
                             sample_weight: Any = None, num_threads: int | None = None) -> Any:
    """Cross-entropy ``H(p, q) = -sum_c p_c log q_c`` of predicted probabilities.

    Per row along ``axis``, of predicted probabilities ``q`` against target probabilities or
    labels ``p``: scikit-learn's ``log_loss``, threaded.

    Parameters
    ----------
    p : array_like
        Target probabilities of q's shape (one-hot or soft; any real dtype), or integer class
        labels of q's shape without the class axis (picks ``-log q[label]``).  A term with
        ``p == 0`` is 0 (0 log 0 = 0).
    q : array_like
        float32 or float64 predicted probabilities, used as given (rows need not sum to 1, and
        that is not checked), clipped to ``[eps, 1]`` before the log.
    eps : float, optional
        The lower clip in [0, 1): None is the machine epsilon of the computation dtype
        (2.2e-16 for float64, 1.2e-7 for float32, as scikit-learn >= 1.5); 0 disables it
        (``p > 0`` with ``q == 0`` then gives inf).
    axis : int, default -1
        The class axis.
    reduction : {"mean", "sum", "none"}, default "mean"
        "mean" over rows (weighted with ``sample_weight``), "sum", or "none" (one value per row,
        q's shape without the class axis; a NumPy scalar for 1-D input).
    %(base)s
    sample_weight : array_like, optional
        One finite weight per row: row i counts ``sample_weight[i]`` times, and "mean" is
        ``sum(s_i H_i) / sum(s_i)`` (scikit-learn's ``log_loss(sample_weight=)``).
    %(num_threads)s

    Returns
    -------
    numpy scalar or numpy.ndarray
        The loss, in float64 if q or a float p is float64, else float32.  NaN propagates to its
        row.

    Raises
    ------
    TypeError
        q is not a float array, labels are not integers, an option has the wrong type.
    ValueError
        A negative probability (with labels: among the q entries read), a label outside
        [0, C), a wrong shape, or an option out of range.

    Examples
    --------
    >>> import numpy as np
    >>> import fastxent
    >>> q = np.array([[0.2, 0.7, 0.1], [0.3, 0.3, 0.4]])
    >>> fastxent.cross_entropy_from_probs(np.array([1, 2]), q, reduction="none")
    array([0.35667494, 0.91629073])
    >>> fastxent.cross_entropy_from_probs(np.array([[0.0, 1.0, 0.0], [0.5, 0.0, 0.5]]), q)
    np.float64(0.7084...)
    """
    return _xent_probs(p, q, eps, axis, reduction, base, num_threads, False,
                       sample_weight=sample_weight)


@fill
def cross_entropy_from_probs_with_grad(p: Any, q: Any, *, eps: float | None = None,
                                       axis: int = -1, reduction: str = "mean",
                                       base: float | None = None, grad_output: Any = 1.0,
                                       out: np.ndarray | None = None, sample_weight: Any = None,
                                       num_threads: int | None = None) -> tuple[Any, np.ndarray]:
    """The loss of :func:`cross_entropy_from_probs` and its gradient with respect to ``q``.

    ``grad = -p / q`` (times ``grad_output`` and ``sample_weight[i]``, divided by the mean's
    denominator and by ``ln(base)``) where ``eps <= q <= 1``; 0 where q was clipped (the
    derivative of the clipped loss) or ``p == 0``; ``-inf`` for ``eps=0``, ``p > 0``, ``q == 0``.

    Parameters
    ----------
    p, q, eps, axis, reduction, base, sample_weight, num_threads
        As :func:`cross_entropy_from_probs`.
    grad_output : float or array_like, default 1.0
        A scalar; for ``reduction="none"`` also an array of the loss's shape (one per row).
    out : numpy.ndarray, optional
        An array of q's shape and computation dtype that receives the gradient; it may be q
        itself.  It is written only once every input has been checked.

    Returns
    -------
    loss : numpy scalar or numpy.ndarray
        As :func:`cross_entropy_from_probs`.
    grad : numpy.ndarray
        d(loss)/dq, of q's shape (``out`` when given).

    Raises
    ------
    TypeError
        As :func:`cross_entropy_from_probs`, or ``out`` is not an array.
    ValueError
        As :func:`cross_entropy_from_probs`, or ``out`` / ``grad_output`` has the wrong shape,
        dtype or layout.

    Examples
    --------
    >>> import numpy as np
    >>> import fastxent
    >>> q = np.array([[0.2, 0.7, 0.1], [0.3, 0.3, 0.4]])
    >>> loss, grad = fastxent.cross_entropy_from_probs_with_grad(np.array([1, 2]), q)
    >>> grad
    array([[ 0.        , -0.71428571,  0.        ],
           [ 0.        ,  0.        , -1.25      ]])
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


@fill
def entropy(p: Any, axis: int = -1, base: float | None = None, *,
            num_threads: int | None = None) -> Any:
    """Shannon entropy ``H(p) = -sum p log p`` of each row of ``p`` along ``axis``.

    Parameters
    ----------
    p : array_like
        float32 or float64 probabilities, used as given (rows need not sum to 1: unlike
        ``scipy.stats.entropy`` they are not normalised).  0 log 0 = 0.
    axis : int, default -1
        The axis of one distribution.
    %(base)s
    %(num_threads)s

    Returns
    -------
    numpy scalar or numpy.ndarray
        p's shape without ``axis`` (a NumPy scalar for 1-D input), in p's dtype.  NaN
        propagates to its row.

    Raises
    ------
    TypeError
        p is not a float array, or an option has the wrong type.
    ValueError
        A negative probability, an empty class axis, or an option out of range.

    Examples
    --------
    >>> import numpy as np
    >>> import fastxent
    >>> fastxent.entropy(np.array([[0.5, 0.5, 0.0], [0.25, 0.25, 0.5]]), base=2)
    array([1. , 1.5])
    """
    a, ax, C = _rows_input(p, "p", axis)
    lscale = check.log_base_scale(base)
    row_shape = a.shape[:ax] + a.shape[ax + 1:]
    N = math.prod(row_shape)
    n_threads = check.work_threads(num_threads, N * C, N, C)
    vals = np.empty(N, dtype=a.dtype)
    _, bad = _kernels.probs.rows(check.rows_of(a, ax, C, "p", False), None, None, None, _kernels.probs.OP_ENTROPY, 0,
                         0.0, 1.0, 1.0, None, vals, lscale, max(1, check.BLOCK_ELEMS // C), n_threads)
    if bad:
        _raise_negative(a, "p")
    return check.values_of(vals, row_shape)


_KL_REDUCTIONS = ("none", "sum", "mean", "batchmean")


@fill
def kl_divergence(p: Any, q: Any, *, axis: int = -1, reduction: str = "none",
                  base: float | None = None, log_q: bool = False, log_p: bool = False,
                  num_threads: int | None = None) -> Any:
    """Kullback-Leibler divergence ``KL(p || q) = sum p (log p - log q)`` of each row.

    ``torch.nn.functional.kl_div(input, target, reduction=r, log_target=lt)`` (input = log q)
    is ``kl_divergence(target, input, log_q=True, log_p=lt, reduction=r)`` for r in "sum",
    "mean", "batchmean" (torch's "none" is elementwise, here it is per row; where torch gives
    NaN for a zero target next to a ``-inf`` input, this gives 0).

    Parameters
    ----------
    p, q : array_like
        float32 or float64 arrays of the same shape (mixed: computed in float64), used as given
        (not normalised).  A term with ``p == 0`` is 0, even where ``q == 0``; ``p > 0`` with
        ``q == 0`` gives inf.
    axis : int, default -1
        The axis of one distribution.
    reduction : {"none", "sum", "mean", "batchmean"}, default "none"
        "none": one value per row (p's shape without ``axis``, a NumPy scalar for 1-D input);
        "mean": the sum / ``p.size``; "batchmean": the sum / ``p.shape[0]`` (as torch).
    %(base)s
    log_q, log_p : bool, default False
        q (p) holds log-probabilities (not checked for sign).
    %(num_threads)s

    Returns
    -------
    numpy scalar or numpy.ndarray
        The divergence; NaN propagates to its row.

    Raises
    ------
    TypeError
        p or q is not a float array, or an option has the wrong type.
    ValueError
        A negative probability, different shapes, or an option out of range.

    Examples
    --------
    >>> import numpy as np
    >>> import fastxent
    >>> p = np.array([0.5, 0.5, 0.0])
    >>> fastxent.kl_divergence(p, np.array([0.25, 0.25, 0.5]), base=2)
    np.float64(1.0)
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
    n_threads = check.work_threads(num_threads, N * C, N, C)
    mode = (_kernels.probs.KL_LOG_Q if log_q else 0) | (_kernels.probs.KL_LOG_P if log_p else 0)
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
        return check.values_of(vals, row_shape)
    if reduction == "mean":
        total = check.div(total, a.size)
    elif reduction == "batchmean":
        total = check.div(total, a.shape[0])
    return kdt.type(total * lscale)


# ------------------------------------------------------------------ perplexity
@fill
def perplexity(logits: Any, target: Any, *, base: float | None = None,
               **cross_entropy_kwargs: Any) -> Any:
    """Perplexity: ``exp`` of the cross-entropy (in nats) of ``cross_entropy(logits, target)``.

    Parameters
    ----------
    logits, target : array_like
        As :func:`fastxent.cross_entropy`.
    base : float, optional
        Accepted (and checked) for symmetry with the losses; it does not change the result,
        which is the same in every unit (b ** H_b == e ** H_nats).
    **cross_entropy_kwargs
        Keywords of :func:`fastxent.cross_entropy` (weight, ignore_index, label_smoothing,
        axis, softcap, sample_weight, ...); ``reduction`` is "mean" (the default: exp of the
        mean loss, the usual perplexity) or "none" (exp of each row's loss).  ``z_loss`` and
        ``return_z_loss`` are refused.

    Returns
    -------
    numpy scalar or numpy.ndarray
        In the dtype of the loss; overflow gives inf.

    Raises
    ------
    TypeError
        A keyword cross_entropy does not take (or a z-loss one), or as cross_entropy.
    ValueError
        As cross_entropy, or another reduction.

    Examples
    --------
    >>> import numpy as np
    >>> import fastxent
    >>> fastxent.perplexity(np.zeros((2, 4)), np.array([1, 3]))   # uniform over 4 classes
    np.float64(4.0)
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
