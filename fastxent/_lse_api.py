"""Layer 3 of fastxent for the log-sum-exp family: ``logsumexp``, ``softmax``, ``log_softmax``.

Validation and dispatch with the semantics of ``scipy.special``: the reduced axes may be one
axis, a tuple of axes or all of them (``axis=None``); they are moved last and flattened into
rows of one kernel call of ``fastxent._xent.lse_family``.  ``logsumexp`` also takes SciPy's
``b=`` (scale factors, negative ones included), ``keepdims=`` and ``return_sign=``; float16 and
bfloat16 input is computed (and returned) in float32.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import _kernels
from . import _validation as check
from ._docs import fill

__all__ = ["logsumexp", "log_softmax", "softmax"]


def _input(x: Any) -> np.ndarray:
    """``x`` as a float32/float64 array (16-bit floats converted to float32)."""
    a = x if type(x) is np.ndarray else check.as_array(x, "x")
    if a.dtype == check.F16 or check.is_bf16(a.dtype):
        a = a.astype(check.F32)
    return check.float_array(a, "x")


def _axes(a: np.ndarray, axis: Any) -> tuple[int, ...]:
    """The reduced axes of ``a``: all for None; a 0-d ``a`` needs None (or ())."""
    if a.ndim == 0 and axis is not None and axis != ():
        raise ValueError("x: expected an array with at least 1 dimension, got a scalar "
                         "(pass axis=None to reduce a scalar)")
    return check.axes(axis, a.ndim)


def _rows(a: np.ndarray, axes: tuple[int, ...]) -> tuple[np.ndarray, tuple[int, ...], list[int]]:
    """(rows, moved shape, permutation): ``a`` with the reduced axes moved last (``a.transpose(
    perm)`` of shape ``moved``) as a 2-D (rows, K) array (a view where the layout allows)."""
    keep = [d for d in range(a.ndim) if d not in axes]
    perm = keep + list(axes)
    moved = a.transpose(perm) if perm != list(range(a.ndim)) else a
    K = math.prod(a.shape[d] for d in axes)
    rows = moved if moved.ndim == 2 and len(axes) == 1 else \
        moved.reshape(math.prod(moved.shape[:a.ndim - len(axes)]), K)
    return rows, moved.shape, perm


def _lse_rows(a: np.ndarray, axes: tuple[int, ...], n_threads: int) -> np.ndarray:
    """The log-sum-exp over ``axes`` of ``a`` (float32/float64), the kept axes' shape."""
    rows, moved, _ = _rows(a, axes)
    out = np.empty(rows.shape[0], dtype=a.dtype)
    if rows.shape[1] == 0:
        out.fill(-np.inf)               # the log of an empty sum
    else:
        _kernels.xent.lse_family(rows, _kernels.xent.LSE_LOGSUMEXP, out, None,
                                 check.rows_per_block(rows.shape[1]), n_threads)
    return out.reshape(moved[:a.ndim - len(axes)])


def _scale_factors(b: Any, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``a`` and ``b`` (a real array) broadcast together, in the computation dtype."""
    bb = b if type(b) is np.ndarray else check.as_array(b, "b")
    if check.is_bf16(bb.dtype):
        bb = bb.astype(check.F32)
    bb = check.real_array(bb, "b")
    kdt = check.promote(a.dtype, bb.dtype if bb.dtype.kind == "f" else a.dtype)
    try:
        a, bb = np.broadcast_arrays(a, bb)
    except ValueError:
        raise ValueError(f"b: shape {bb.shape} cannot be broadcast with x's shape "
                         f"{a.shape}") from None
    return check.as_kernel_dtype(a, kdt), bb.astype(kdt, copy=False)


def _log_abs_diff(lp: np.ndarray, ln: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(log|exp(lp) - exp(ln)|, sign of the difference): +1, -1, 0 (equal), NaN (NaN or
    inf - inf)."""
    with np.errstate(all="ignore"):
        hi, lo = np.maximum(lp, ln), np.minimum(lp, ln)
        d = lo - hi                                        # <= 0, -inf if lo is -inf
        # log(1 - e^d): through expm1 near d = 0, through log1p below -ln 2 (no cancellation)
        res = hi + np.where(d > -math.log(2.0), np.log(-np.expm1(d)), np.log1p(-np.exp(d)))
        res = np.where(hi == -np.inf, hi, res)             # both parts empty: log 0
        sign = np.sign(lp - ln)
        sign = np.where(hi == -np.inf, 0, sign)
        sign = np.where(np.isnan(res), np.nan, sign)
    return res.astype(lp.dtype), sign.astype(lp.dtype)


@fill
def logsumexp(x: Any, axis: Any = -1, *, b: Any = None, keepdims: bool = False,
              return_sign: bool = False, num_threads: int | None = None) -> Any:
    """Log of the sum of exponentials, ``log(sum(b * exp(x), axis))``, without overflow.

    The semantics of ``scipy.special.logsumexp``, computed by fastxent's threaded kernels.

    Parameters
    ----------
    %(lse_x)s
    axis : int, tuple of int or None, default -1
        The axis or axes to sum over; ``None`` sums over all of them.  (SciPy's default is
        ``None``; fastxent's is the last axis, the class axis of logits.)
    b : array_like, optional
        Scale factors of the exponentials, broadcast with ``x`` (real; negative values
        subtract).  Where ``b == 0`` the element is left out, even a NaN or infinite one.
    keepdims : bool, default False
        Keep the reduced axes as axes of length 1.
    return_sign : bool, default False
        Also return the sign of the sum.  Without it a negative sum gives NaN.
    %(num_threads)s

    Returns
    -------
    res : numpy.ndarray or numpy scalar
        ``log(|sum(b * exp(x))|)`` with the reduced axes removed (a NumPy scalar when none
        remain), in float64 if ``x`` or ``b`` is float64, else float32.  A sum over nothing, or
        of zeros only, is ``-inf``; a NaN gives NaN, a ``+inf`` element ``+inf``.
    sign : numpy.ndarray or numpy scalar
        With ``return_sign=True``: +1.0, -1.0, 0.0 (the sum is 0) or NaN, of ``res``'s shape.

    Raises
    ------
    TypeError
        ``x`` is not a float array (integers included), ``b`` is not real, or an option has the
        wrong type.
    ValueError
        An axis is out of bounds or repeated, ``b`` does not broadcast with ``x``, or
        ``num_threads`` is out of range.

    Examples
    --------
    >>> import numpy as np
    >>> import fastxent
    >>> x = np.array([[0.0, 1.0, 2.0], [1000.0, 1000.0, -np.inf]])
    >>> fastxent.logsumexp(x)
    array([   2.40760596, 1000.69314718])
    >>> fastxent.logsumexp(x, axis=None)
    np.float64(1000.6931471805599)
    >>> res, sign = fastxent.logsumexp(np.array([1.0, 1.0, 1.0]), b=np.array([1.0, -1.0, -1.0]),
    ...                                return_sign=True)        # log|e - 2e| = 1, negative
    >>> round(float(res), 12), float(sign)
    (1.0, -1.0)
    """
    a = _input(x)
    if b is not None:
        a, bb = _scale_factors(b, a)
    axes = _axes(a, axis)
    keepdims = check.flag(keepdims, "keepdims")
    return_sign = check.flag(return_sign, "return_sign")
    n_threads = check.num_threads(num_threads)
    if b is None:
        res = _lse_rows(a, axes, n_threads)
        with np.errstate(invalid="ignore"):
            sign = np.where(res == -np.inf, 0, np.where(np.isnan(res), np.nan, 1)).astype(a.dtype)
    else:
        with np.errstate(all="ignore"):
            # log(b * exp(a)) = a + log(b); b == 0 leaves the element out (also a NaN or inf a)
            zero = bb == 0
            pos = np.where(zero | (bb < 0), -np.inf, a + np.log(bb))
            res = _lse_rows(pos, axes, n_threads)
            neg_mask = bb < 0
            if neg_mask.any():
                neg = np.where(neg_mask, a + np.log(-bb), -np.inf)
                res, sign = _log_abs_diff(res, _lse_rows(neg, axes, n_threads))
            else:
                sign = np.where(res == -np.inf, 0, np.where(np.isnan(res), np.nan, 1))
            sign = sign.astype(res.dtype)
        if not return_sign:
            res = np.where(sign < 0, np.asarray(np.nan, res.dtype), res)
    if keepdims:
        shape = tuple(1 if d in axes else n for d, n in enumerate(a.shape))
        res, sign = res.reshape(shape), sign.reshape(shape)
    res, sign = res[()] if res.ndim == 0 else res, sign[()] if sign.ndim == 0 else sign
    return (res, sign) if return_sign else res


def _softmax_like(x: Any, axis: Any, num_threads: int | None, mode: int) -> Any:
    a = _input(x)
    axes = _axes(a, axis)
    n_threads = check.num_threads(num_threads)
    rows, moved, perm = _rows(a, axes)
    out = np.empty(rows.shape, dtype=a.dtype)
    if out.size:
        _kernels.xent.lse_family(rows, mode, None, out, check.rows_per_block(rows.shape[1]),
                                 n_threads)
    out = out.reshape(moved)
    if perm != list(range(a.ndim)):
        out = out.transpose(np.argsort(perm))
    return out[()] if out.ndim == 0 else out


@fill
def log_softmax(x: Any, axis: Any = -1, *, num_threads: int | None = None) -> Any:
    """Logarithm of the softmax, ``x - logsumexp(x, axis, keepdims=True)``, computed stably.

    Computed as ``(x - max) - log(sum(exp(x - max)))`` per row: no overflow, and exact where
    ``log(softmax(x))`` would give ``-inf`` (``scipy.special.log_softmax``'s semantics).

    %(lse_params)s

    Returns
    -------
    log_probs : numpy.ndarray
        ``x``'s shape, in float64 for float64 input, else float32.  A row with a NaN, a
        ``+inf`` or only ``-inf`` values is NaN throughout (as ``torch.log_softmax``); a
        ``-inf`` value in a finite row gives ``-inf``.  Empty input gives an empty result.

    Raises
    ------
    %(lse_raises)s

    Examples
    --------
    >>> import numpy as np
    >>> import fastxent
    >>> fastxent.log_softmax(np.array([1000.0, 1.0]))
    array([   0., -999.])
    >>> fastxent.log_softmax(np.array([[0.0, 0.0], [0.0, 0.0]]), axis=None)
    array([[-1.38629436, -1.38629436],
           [-1.38629436, -1.38629436]])
    """
    return _softmax_like(x, axis, num_threads, _kernels.xent.LSE_LOG_SOFTMAX)


@fill
def softmax(x: Any, axis: Any = -1, *, num_threads: int | None = None) -> Any:
    """Softmax, ``exp(x - logsumexp(x, axis, keepdims=True))``: each row sums to 1.

    ``scipy.special.softmax``'s semantics, computed by fastxent's threaded kernels.

    %(lse_params)s

    Returns
    -------
    probs : numpy.ndarray
        ``x``'s shape, in float64 for float64 input, else float32.  A ``-inf`` value (a masked
        class) gives exactly 0; a row with a NaN, a ``+inf`` or only ``-inf`` values is NaN
        throughout.  Empty input gives an empty result.

    Raises
    ------
    %(lse_raises)s

    Examples
    --------
    Any array-like of floats is accepted; a ``-inf`` entry is a masked class:

    >>> import fastxent
    >>> fastxent.softmax([[1000.0, 0.0], [1000.0, 0.0]], axis=0)
    array([[0.5, 0.5],
           [0.5, 0.5]])
    >>> fastxent.softmax([0.0, 1.0986122886681098, float("-inf")])     # 0, log 3, -inf
    array([0.25, 0.75, 0.  ])
    """
    return _softmax_like(x, axis, num_threads, _kernels.xent.LSE_SOFTMAX)
