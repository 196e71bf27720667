"""Layer 3 of fastxent for binary cross-entropy, on probabilities and on logits.

Validation and dispatch for ``binary_cross_entropy`` and ``binary_cross_entropy_with_logits``
(+ ``_with_grad``) with PyTorch's semantics: the target, ``weight`` and ``pos_weight`` are
broadcast to the input's shape, the broadcast operands are laid out as one (R, K) grid of byte
strides where they allow it (contiguous copies otherwise), and the elementwise kernel of
``fastxent._probs`` does the work, returning a float64 sum in a fixed order (bit-identical for
any ``num_threads``).
"""
from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from . import _kernels
from . import _validation as check
from ._docs import fill

__all__ = [
    "binary_cross_entropy",
    "binary_cross_entropy_with_grad",
    "binary_cross_entropy_with_logits",
    "binary_cross_entropy_with_logits_with_grad",
]


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
    dims: list = []          # [size, [stride per array]]
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
    n_threads = check.work_threads(num_threads, numel, None, None)

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
        gtarget: Any = grad
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
        xs, ys, ws, pws, gos, gs = (None if a is None else (a, *next(it)) for a in ops)
        if out is not None and op == _kernels.probs.OP_BCE:
            # out is written only once the values are known to be in range: a loss-only pass
            # (no writes) checks them while they are intact -- out may be probs itself.  One read
            # of the inputs, paid only by callers who pass out=.
            if _kernels.probs.binary(op, R, K, xs, ys, ws, pws, gos, None, None, lscale, gscale,
                                     n_threads)[1]:
                _raise_range(x, xname)
                _raise_range(y, "target")
        total, bad = _kernels.probs.binary(op, R, K, xs, ys, ws, pws, gos, gs, loss_flat, lscale,
                                           gscale, n_threads)
        if bad:
            _raise_range(x, xname)
            _raise_range(y, "target")
        if gtarget is not grad and grad is not None:
            np.copyto(grad, gtarget)
    if reduction == "none":
        loss = check.values_of(loss_flat, shape)
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


@fill
def binary_cross_entropy(probs: Any, target: Any, *, weight: Any = None, reduction: str = "mean",
                         base: float | None = None, num_threads: int | None = None) -> Any:
    """Binary cross-entropy of probabilities, as ``torch.nn.functional.binary_cross_entropy``.

    Elementwise ``l = -w * (y * max(log p, -100) + (1 - y) * max(log(1 - p), -100))``: the log
    terms are clamped at -100 as in PyTorch, so p = 0 or 1 gives at most 100 per element.

    Parameters
    ----------
    probs : array_like
        float32 or float64 probabilities in [0, 1], any shape.
    target : array_like
        Targets in [0, 1] of probs' shape (any real dtype).
    weight : array_like, optional
        Broadcastable to probs' shape (any values, as torch).
    reduction : {"mean", "sum", "none"}, default "mean"
        "mean" over all elements, "sum", or "none" (probs' shape).
    %(base)s
    %(num_threads)s

    Returns
    -------
    numpy scalar or numpy.ndarray
        In probs' dtype.

    Raises
    ------
    TypeError
        probs is not a float array, or an argument has the wrong type.
    ValueError
        A probability or target outside [0, 1] (NaN included, as torch), shapes that do not
        broadcast, or an option out of range.

    Examples
    --------
    >>> import numpy as np
    >>> import fastxent
    >>> fastxent.binary_cross_entropy(np.array([0.9, 0.2]), np.array([1.0, 0.0]),
    ...                               reduction="none")
    array([0.10536052, 0.22314355])
    """
    return _binary(_kernels.probs.OP_BCE, probs, target, weight, None, reduction, base, num_threads, False)


@fill
def binary_cross_entropy_with_grad(probs: Any, target: Any, *, weight: Any = None,
                                   reduction: str = "mean", base: float | None = None,
                                   grad_output: Any = 1.0, out: np.ndarray | None = None,
                                   num_threads: int | None = None) -> tuple[Any, np.ndarray]:
    """:func:`binary_cross_entropy` and its gradient with respect to ``probs``.

    torch's formula ``w * (p - y) / max((1 - p) * p, 1e-12)`` (the float 1e-12, as torch also
    for float64), times ``grad_output``, divided by numel for "mean" and by ``ln(base)``.

    Parameters
    ----------
    probs, target, weight, reduction, base, num_threads
        As :func:`binary_cross_entropy`.
    grad_output : float or array_like, default 1.0
        A scalar; for ``reduction="none"`` also an array broadcastable to probs' shape.
    out : numpy.ndarray, optional
        An array of probs' shape and dtype for the gradient; it may be probs itself.  It is
        written only once every value has been checked.

    Returns
    -------
    loss : numpy scalar or numpy.ndarray
        As :func:`binary_cross_entropy`.
    grad : numpy.ndarray
        d(loss)/d(probs), of probs' shape (``out`` when given).

    Raises
    ------
    TypeError, ValueError
        As :func:`binary_cross_entropy`, and for a bad ``out`` or ``grad_output``.

    Examples
    --------
    >>> import numpy as np
    >>> import fastxent
    >>> fastxent.binary_cross_entropy_with_grad(np.array([0.5, 0.2]), np.array([1.0, 0.0]),
    ...                                         reduction="sum")[1]
    array([-2.  ,  1.25])
    """
    return _binary(_kernels.probs.OP_BCE, probs, target, weight, None, reduction, base, num_threads, True,
                   grad_output, out)


@fill
def binary_cross_entropy_with_logits(logits: Any, target: Any, *, weight: Any = None,
                                     pos_weight: Any = None, reduction: str = "mean",
                                     base: float | None = None,
                                     num_threads: int | None = None) -> Any:
    """Binary cross-entropy of ``sigmoid(logits)``, as
    ``torch.nn.functional.binary_cross_entropy_with_logits``.

    Computed in the stable form ``l = w * ((1 - y) * softplus(x) + pos_weight * y *
    softplus(-x))``: no overflow for any logit (1e4, 1e30, inf) and no cancellation for soft
    targets.  A term whose coefficient is 0 is 0, so infinite logits give the loss's limit
    (torch's formula gives NaN for x = -inf, y = 0 and for x = +inf, y = 1).

    Parameters
    ----------
    logits : array_like
        float32 or float64, any shape.
    target : array_like
        Of the logits' shape (any real values, as torch).
    weight, pos_weight : array_like, optional
        Broadcastable to the logits' shape (a (C,) ``pos_weight`` applies along the last axis,
        as torch).
    reduction : {"mean", "sum", "none"}, default "mean"
        "mean" over all elements, "sum", or "none".
    %(base)s
    %(num_threads)s

    Returns
    -------
    numpy scalar or numpy.ndarray
        In the logits' dtype.

    Raises
    ------
    TypeError
        logits is not a float array, or an argument has the wrong type.
    ValueError
        Shapes that do not broadcast, or an option out of range.

    Examples
    --------
    >>> import numpy as np
    >>> import fastxent
    >>> fastxent.binary_cross_entropy_with_logits(np.array([1e4, -3.0]), np.array([1.0, 0.0]),
    ...                                           reduction="none")
    array([0.        , 0.04858735])
    """
    return _binary(_kernels.probs.OP_BCE_LOGITS, logits, target, weight, pos_weight, reduction, base,
                   num_threads, False)


@fill
def binary_cross_entropy_with_logits_with_grad(logits: Any, target: Any, *, weight: Any = None,
                                               pos_weight: Any = None, reduction: str = "mean",
                                               base: float | None = None,
                                               grad_output: Any = 1.0,
                                               out: np.ndarray | None = None,
                                               num_threads: int | None = None
                                               ) -> tuple[Any, np.ndarray]:
    """:func:`binary_cross_entropy_with_logits` and its gradient with respect to the logits.

    ``w * ((1 - y) * sigmoid(x) - pos_weight * y * sigmoid(-x))`` times ``grad_output`` (divided
    by numel for "mean" and by ``ln(base)``), finite for every finite or infinite logit.

    Parameters
    ----------
    logits, target, weight, pos_weight, reduction, base, num_threads
        As :func:`binary_cross_entropy_with_logits`.
    grad_output : float or array_like, default 1.0
        A scalar; for ``reduction="none"`` also an array broadcastable to the logits' shape.
    out : numpy.ndarray, optional
        An array of the logits' shape and dtype (it may be the logits themselves).

    Returns
    -------
    loss : numpy scalar or numpy.ndarray
        As :func:`binary_cross_entropy_with_logits`.
    grad : numpy.ndarray
        d(loss)/d(logits), of the logits' shape (``out`` when given).

    Raises
    ------
    TypeError, ValueError
        As :func:`binary_cross_entropy_with_logits`, and for a bad ``out`` or ``grad_output``.

    Examples
    --------
    >>> import numpy as np
    >>> import fastxent
    >>> fastxent.binary_cross_entropy_with_logits_with_grad(
    ...     np.array([0.0, 0.0]), np.array([1.0, 0.0]), reduction="sum")[1]
    array([-0.5,  0.5])
    """
    return _binary(_kernels.probs.OP_BCE_LOGITS, logits, target, weight, pos_weight, reduction, base,
                   num_threads, True, grad_output, out)
