"""Layer 3 of fastxent: the Python API.

Every public function validates its arguments here (each error names the argument and the
problem), resolves dtype, memory layout and thread count, allocates outputs and calls one
kernel of ``fastxent._xent``; reductions of the kernels' per-block partial sums happen here in
a fixed order, so results do not depend on the number of threads.
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
    "cross_entropy",
    "cross_entropy_with_grad",
    "nll_loss",
    "nll_loss_with_grad",
]


def _grad_buffer(x, logits, out, inplace, gdt, others, name="logits"):
    if inplace:
        if out is not None:
            raise ValueError("out: cannot be combined with inplace=True")
        if not isinstance(logits, np.ndarray):
            raise TypeError(f"{name}: inplace=True needs a NumPy array, got {type(logits).__name__}")
        if x is not logits:
            raise ValueError(f"{name}: inplace=True needs an aligned float array the kernels "
                             "can write (float32, float64, float16 or bfloat16)")
        if gdt != x.dtype:
            raise ValueError(f"grad_dtype: inplace=True writes the {name}' own dtype {x.dtype}")
        if not logits.flags.writeable:
            raise ValueError(f"{name}: inplace=True but the array is read-only")
        check.check_no_overlap(logits, name, others)
        return logits
    if out is None:
        return np.empty_like(x, dtype=gdt) if x.ndim == 2 else np.empty(x.shape, dtype=gdt)
    return check.check_out(out, x.shape, gdt, others=[(x, name)] + others, what="gradient")


def _grad_dtype(grad_dtype, dt):
    if grad_dtype is None:
        return dt
    try:
        gdt = np.dtype(grad_dtype)
    except TypeError:
        raise TypeError(f"grad_dtype: expected None or a NumPy dtype, got {grad_dtype!r}") from None
    if gdt == dt or (gdt == check.F32 and dt.itemsize == 2):
        return gdt
    raise ValueError(f"grad_dtype: must be None, the logits' dtype ({dt}) or float32 for 16-bit "
                     f"logits, got {gdt}")


def _soft_targets(target, x, axis, C, kdt):
    p = target if type(target) is np.ndarray else check.as_array(target, "target")
    if p.shape != x.shape:
        raise ValueError(f"target: soft targets (class probabilities) must have the logits' shape "
                         f"{x.shape}, got {p.shape}")
    if p.dtype != kdt and p.dtype != x.dtype:
        p = p.astype(kdt)
    elif not p.flags.aligned:
        p = p.copy()
    return check.rows_of(p, axis, C, "target", False)


def _no_classes(N, t, ignore_index, eps, zl, loss_rows, z_rows):
    """The kernel's results for C = 0, as torch: every label is out of range unless ignored;
    an ignored row's loss is 0, NaN with label smoothing (torch's 0 * eps / C, also in the sum
    of no rows); a soft-target row's loss is 0 (NaN with a z-loss: the log-sum-exp of an empty
    row is not finite, as for a row of -inf), and the soft mean is 0 / 0 (NaN)."""
    if t is not None:
        bad = np.flatnonzero(t != ignore_index)
        rows, z = np.full(N, math.nan if eps > 0.0 else 0.0), np.zeros(N)
    else:
        bad = np.zeros(0, dtype=np.intp)
        rows = z = np.full(N, math.nan if zl > 0.0 else 0.0)
    if loss_rows is not None:
        loss_rows[...] = rows
    if z_rows is not None:
        z_rows[...] = z
    # torch sums the smoothing terms before scaling them by eps / C: NaN even for N = 0
    total = math.nan if t is not None and eps > 0.0 else math.fsum(rows)
    return total, math.fsum(z), 0.0, int(bad[0]) if len(bad) else -1


def _weighted_count(sw, t, w, ignore_index, C):
    """The denominator of the mean with sample weights: sum(s_i * w[y_i]) over the rows that
    are not ignored (sum(s_i) for soft targets, ``t`` None; 0 for C = 0, as torch's 0 / 0).
    The labels must have been checked."""
    if C == 0:
        return 0.0
    if t is None:
        return float(np.sum(sw))
    valid = t != ignore_index
    wy = valid.astype(check.F64) if w is None else np.where(valid, w[np.where(valid, t, 0)], 0.0)
    return float(np.sum(sw * wy))


def _cross_entropy(logits, target, weight, ignore_index, reduction, label_smoothing, num_threads,
                   axis, z_loss, softcap, logit_scale, base, return_z_loss, with_grad,
                   grad_output=1.0, out=None, inplace=False, grad_dtype=None, focal_gamma=0.0,
                   log_probs=False, sample_weight=None):
    xname = "log_probs" if log_probs else "logits"          # the input's name in errors
    x = check.logits_array(logits, xname)
    nd = x.ndim
    if nd < 1:
        raise ValueError(f"{xname}: expected at least 1 dimension ((C,), (N, C) or (N, C, ...)), "
                         "got a scalar")
    if type(axis) is not int or not -nd <= axis < nd:
        if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
            raise TypeError(f"axis: expected an int, got {type(axis).__name__}")
        if not -nd <= axis < nd:
            raise ValueError(f"axis: {axis} is out of bounds for {xname} of dimension {nd}")
    axis = int(axis) % nd
    C = x.shape[axis]
    if nd == 2 and axis == 1:
        N = x.shape[0]
        row_shape = (N,)
    else:
        row_shape = x.shape[:axis] + x.shape[axis + 1:]
        N = math.prod(row_shape)
    kdt = check.kernel_dtype(x.dtype)
    if type(ignore_index) is not int or not -2**63 <= ignore_index < 2**63:
        ignore_index = check.integer(ignore_index, "ignore_index")
    w, W = (None, float(C)) if weight is None else check.class_weight(weight, C)
    if type(reduction) is not str or reduction not in check.REDUCTIONS:
        check.reduction(reduction)
    eps = label_smoothing
    if type(eps) is not float or not 0.0 <= eps <= 1.0:
        eps = check.unit_float(label_smoothing, "label_smoothing")
    zl = z_loss if type(z_loss) is float and z_loss == 0.0 else check.nonneg_float(z_loss, "z_loss")
    cap, scale = (0.0, 1.0) if softcap is None and type(logit_scale) is float and logit_scale == 1.0 else \
        check.logit_transform(softcap, logit_scale)
    lscale = 1.0 if base is None else check.log_base_scale(base)
    gamma = focal_gamma if type(focal_gamma) is float and focal_gamma == 0.0 else \
        check.nonneg_float(focal_gamma, "focal_gamma")
    rpb = check.rows_per_block(C)
    if return_z_loss is not False:
        return_z_loss = check.flag(return_z_loss, "return_z_loss")
    sw = None if sample_weight is None else check.sample_weight(sample_weight, row_shape)
    if num_threads is not None:
        n_threads = check.num_threads(num_threads)
    # one block of rows: computed on the calling thread, no parallel region
    n_threads = 1 if N <= rpb else (check.default_threads() if num_threads is None else n_threads)

    tgt = target if type(target) is np.ndarray else check.as_array(target, "target")
    kind = tgt.dtype.kind
    soft = kind == "f" or (kind == "V" and check.is_bf16(tgt.dtype))
    if soft and log_probs:
        raise TypeError(f"target: expected integer class labels, got dtype {tgt.dtype}")
    if gamma != 0.0 and (soft or eps != 0.0):
        raise ValueError("focal_gamma: the focal loss needs integer class labels and no "
                         "label_smoothing")
    t: Any                                  # labels (None for soft targets)
    if soft:
        t, probs = None, _soft_targets(tgt, x, axis, C, kdt)
    else:
        probs = None
        t = tgt if (tgt.dtype is check.I64 or tgt.dtype is check.I32) and tgt.ndim == 1 and tgt.shape == row_shape \
            else check.labels(tgt, C, ignore_index, row_shape)
    xv = x if nd == 2 and axis == 1 else check.rows_of(x, axis, C, xname, inplace)

    grad = gv = None
    gscale, row_scale = 1.0, None
    if with_grad:
        if inplace is not False:
            inplace = check.flag(inplace, "inplace")
        gdt = _grad_dtype(grad_dtype, x.dtype)
        gscale, row_scale = check.grad_output(grad_output, reduction, row_shape)
        if sw is not None:
            row_scale = sw if row_scale is None else row_scale * sw
        gscale *= lscale
        grad = _grad_buffer(x, logits, out, inplace, gdt,
                            [(target, "target"), (weight, "weight")], xname)
        gv = xv if grad is x else check.rows_of(grad, axis, C, "out", True)
        if soft:
            wsum = float(N)
        else:
            # Labels are checked before the gradient is written, so a bad label never leaves
            # out= or the logits half overwritten; the mean needs sum(w[y]) up front.
            bad, wsum = _kernels.xent.label_stats(t, C, ignore_index, w)
            if bad >= 0:
                check.raise_bad_label(t, bad, C, ignore_index)
        if sw is not None:
            wsum = _weighted_count(sw, t, w, ignore_index, C)
        if reduction == "mean":
            gscale = check.div(gscale, wsum)

    loss_rows: Any
    z_rows: Any
    if reduction == "none" or sw is not None:
        loss_rows = np.empty(N, dtype=kdt)
        z_rows = np.empty(N, dtype=kdt) if return_z_loss else None
    else:
        loss_rows = z_rows = None
    if C == 0:
        total, ztotal, wsum, bad = _no_classes(N, t, ignore_index, eps, zl, loss_rows, z_rows)
    else:
        total, ztotal, wsum, bad = _kernels.xent.xent(
            xv, t, probs, w, W, ignore_index, eps, zl, gamma,
            _kernels.xent.INPUT_LOGPROBS if log_probs else _kernels.xent.INPUT_LOGITS, scale, cap,
            lscale, gscale, row_scale, loss_rows, z_rows, gv, rpb, n_threads)
    if bad >= 0:
        check.raise_bad_label(t, bad, C, ignore_index)
    if sw is not None and C:
        # s_i * loss_i per row; sums of the weighted rows (the rows hold lscale already).
        # (C = 0: every row is 0 or NaN whatever its weight, and the mean is NaN.)
        weighted = sw * loss_rows
        total, loss_rows = float(np.sum(weighted)) / lscale, weighted.astype(kdt)
        if return_z_loss:
            weighted = sw * z_rows
            ztotal, z_rows = float(np.sum(weighted)) / lscale, weighted.astype(kdt)
        wsum = _weighted_count(sw, t, w, ignore_index, C)
    if reduction == "none":
        loss = loss_rows.reshape(row_shape)[()]
        zterm = z_rows.reshape(row_shape)[()] if return_z_loss else None
    else:
        if reduction == "mean":
            # as torch: sum / sum of the weights, IEEE (x/0 = +-inf, 0/0 = nan: no row left, or
            # weights that cancel); with label smoothing torch divides its nll part (0 there)
            # separately, so the mean is nan whenever the weights sum to 0
            if wsum == 0.0 and (eps != 0.0 or soft):
                total = ztotal = math.nan
            else:
                total, ztotal = check.div(total, wsum), check.div(ztotal, wsum)
        loss = kdt.type(total * lscale)
        zterm = kdt.type(ztotal * lscale)
    if with_grad:
        return (loss, zterm, grad) if return_z_loss else (loss, grad)
    return (loss, zterm) if return_z_loss else loss


_NUMBER = (float, int)     # plain Python numbers (not bool): the per-call fast path's options


@fill
def cross_entropy(logits: Any, target: Any, *, weight: Any = None, ignore_index: int = -100,
                  reduction: str = "mean", label_smoothing: float = 0.0, axis: int = -1,
                  z_loss: float = 0.0, softcap: float | None = None, logit_scale: float = 1.0,
                  base: float | None = None, return_z_loss: bool = False,
                  focal_gamma: float = 0.0, sample_weight: Any = None,
                  num_threads: int | None = None) -> Any:
    """Cross-entropy between ``softmax(logits)`` and the targets.

    The semantics of ``torch.nn.functional.cross_entropy`` (class weights, ``ignore_index``,
    label smoothing, soft targets, N-D input, unbatched input, the reductions), plus
    ``sample_weight`` (scikit-learn's ``log_loss``) and the options of LLM training.

    Parameters
    ----------
    logits : array_like
        float32 or float64 (float16 and bfloat16 are read directly and computed in float32), of
        shape (N, C), (C,) (one unbatched row) or N-D with the classes along ``axis`` (PyTorch's
        (N, C, d1, ...) layout is ``axis=1``); any memory layout.  C = 0 is allowed (every row
        must then be ignored, as in PyTorch).
    target : array_like
        Integer class labels (any integer dtype) of the logits' shape without the class axis
        (a scalar for (C,) logits), or class probabilities of the logits' shape (soft targets,
        a float array).
    weight : array_like, optional
        (C,) class weights (any real values, negative included, as PyTorch; float16 and
        bfloat16 too).  Each row's loss is multiplied by the weight of its label.
    ignore_index : int, default -100
        Rows labelled ``ignore_index`` have loss 0 and are left out of the mean.
    reduction : {"mean", "sum", "none"}, default "mean"
        "mean" divides the sum by the sum of the (class times sample) weights of the rows that
        are not ignored (soft targets: of the rows); "none" returns one loss per row.
    label_smoothing : float, default 0.0
        In [0, 1]: the target becomes ``(1 - eps) * target + eps / C``.
    axis : int, default -1
        The class axis of ``logits``.
    z_loss : float, default 0.0
        Adds ``z_loss * logsumexp(z)**2`` to each row that is not ignored (PaLM).
    softcap : float, optional
        Replaces the logits ``z`` by ``softcap * tanh(z / softcap)`` (Gemma 2).
    logit_scale : float, default 1.0
        Multiplies the logits first (inverse temperature).
    %(base)s
    return_z_loss : bool, default False
        Also return the z-loss part, reduced like the loss.
    focal_gamma : float, default 0.0
        The focal loss of Lin et al. (2017), multi-class form: ``-(1 - p_y)**gamma log p_y``
        per row (times ``weight[y]``; "mean" divides by the same weights as the
        cross-entropy); integer labels only, without label smoothing; 0 is the cross-entropy.
    sample_weight : array_like, optional
        One finite real weight per row (the target's shape for hard labels): row i's loss is
        multiplied by ``sample_weight[i]``, and "mean" becomes the weighted mean
        ``sum(s_i * loss_i) / sum(s_i * weight[y_i])`` over the rows that are not ignored
        (``sum(s_i * loss_i) / sum(s_i)`` without class weights, as scikit-learn's ``log_loss``).
    %(num_threads)s

    Returns
    -------
    loss : numpy scalar or numpy.ndarray
        A NumPy scalar for "mean" and "sum" (and for "none" with unbatched logits), otherwise
        one loss per row in the target's shape; float64 for float64 logits, else float32.
        A mean over no weight at all (every row ignored, N = 0) is NaN, as PyTorch.
    z_term : numpy scalar or numpy.ndarray
        With ``return_z_loss=True``: the z-loss part of ``loss``, reduced the same way.

    Raises
    ------
    TypeError
        An argument of the wrong type or dtype (the message starts with its name).
    ValueError
        A wrong shape, a label outside [0, C) that is not ``ignore_index``, an option out of
        range (the message starts with the argument's name).

    Examples
    --------
    >>> import numpy as np
    >>> import fastxent
    >>> logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
    >>> fastxent.cross_entropy(logits, np.array([0, 2]))
    np.float64(0.1754...)
    >>> fastxent.cross_entropy(logits, np.array([0, 2]), reduction="none")
    array([0.2413113 , 0.10960146])
    >>> fastxent.cross_entropy(logits, np.array([0, 2]), sample_weight=np.array([3.0, 1.0]))
    np.float64(0.2083...)
    >>> fastxent.cross_entropy(logits[0], 0)               # one unbatched row
    np.float64(0.2413...)
    """
    if (weight is None and softcap is None and base is None and sample_weight is None
            and (num_threads is None
                 or type(num_threads) is int and 0 < num_threads <= check.MAX_THREADS)
            and return_z_loss is False and type(ignore_index) is int
            and type(axis) is int and axis == -1 and type(reduction) is str
            and type(label_smoothing) in _NUMBER and label_smoothing == 0
            and type(z_loss) in _NUMBER and z_loss == 0
            and type(logit_scale) in _NUMBER and logit_scale == 1
            and type(focal_gamma) in _NUMBER and focal_gamma == 0
            and (reduction == "mean" or reduction == "sum")):
        # small plain inputs: one kernel call that checks what it needs (the per-call cost)
        loss = _kernels.xent.plain_scalar(logits, target, ignore_index, reduction == "mean",
                                          check.BLOCK_ELEMS)
        if loss is not None:
            return loss
    return _cross_entropy(logits, target, weight, ignore_index, reduction, label_smoothing,
                          num_threads, axis, z_loss, softcap, logit_scale, base, return_z_loss,
                          False, focal_gamma=focal_gamma, sample_weight=sample_weight)




@fill
def cross_entropy_with_grad(logits: Any, target: Any, *, weight: Any = None,
                            ignore_index: int = -100, reduction: str = "mean",
                            label_smoothing: float = 0.0, axis: int = -1, z_loss: float = 0.0,
                            softcap: float | None = None, logit_scale: float = 1.0,
                            base: float | None = None, return_z_loss: bool = False,
                            grad_output: Any = 1.0, out: np.ndarray | None = None,
                            inplace: bool = False, grad_dtype: Any = None,
                            focal_gamma: float = 0.0, sample_weight: Any = None,
                            num_threads: int | None = None) -> tuple[Any, ...]:
    """The loss of :func:`cross_entropy` and its gradient, in one fused pass over the logits.

    Parameters
    ----------
    logits, target, weight, ignore_index, reduction, label_smoothing, axis, z_loss, softcap, \
logit_scale, base, return_z_loss, focal_gamma, num_threads
        As :func:`cross_entropy`.
    grad_output : float or array_like, default 1.0
        The gradient of whatever follows the loss: the result is d(loss)/d(logits) times it.
        A scalar; for ``reduction="none"`` also an array of the target's shape (one per row).
    out : numpy.ndarray, optional
        An array of the logits' shape (and of ``grad_dtype``) that receives the gradient.  It
        is written only once every argument has been checked.
    inplace : bool, default False
        Overwrite ``logits`` with the gradient (no new N x C memory).
    grad_dtype : dtype, optional
        The gradient's dtype: the logits' (default), or float32 for 16-bit logits.
    sample_weight : array_like, optional
        As :func:`cross_entropy`; row i's gradient is multiplied by ``sample_weight[i]`` (and
        divided by the weighted mean's denominator for "mean").

    Returns
    -------
    loss : numpy scalar or numpy.ndarray
        As :func:`cross_entropy`.
    z_term : numpy scalar or numpy.ndarray
        With ``return_z_loss=True`` only.
    grad : numpy.ndarray
        d(loss)/d(logits) * grad_output, of the logits' shape (``out`` or ``logits`` itself when
        given).  Ignored rows have gradient 0.

    Raises
    ------
    TypeError
        An argument of the wrong type or dtype (the message starts with its name).
    ValueError
        As :func:`cross_entropy`, and for an ``out`` of the wrong shape, dtype or layout, a
        read-only or overlapping ``out``, or ``grad_output`` of the wrong shape.

    Examples
    --------
    >>> import numpy as np
    >>> import fastxent
    >>> logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
    >>> loss, grad = fastxent.cross_entropy_with_grad(logits, np.array([0, 2]))
    >>> grad.round(4)
    array([[-0.1072,  0.0876,  0.0196],
           [ 0.0247,  0.0272, -0.0519]])
    >>> np.allclose(grad.sum(axis=1), 0.0)
    True
    """
    return _cross_entropy(logits, target, weight, ignore_index, reduction, label_smoothing,
                          num_threads, axis, z_loss, softcap, logit_scale, base, return_z_loss,
                          True, grad_output, out, inplace, grad_dtype, focal_gamma,
                          sample_weight=sample_weight)


@fill
def nll_loss(log_probs: Any, target: Any, *, weight: Any = None, ignore_index: int = -100,
             reduction: str = "mean", axis: int = -1, base: float | None = None,
             sample_weight: Any = None, num_threads: int | None = None) -> Any:
    """Negative log-likelihood of log-probabilities, as ``torch.nn.functional.nll_loss``.

    ``-w[y] * log_probs[y]`` per row: no softmax is taken (the input is usually the output of
    :func:`log_softmax`).

    Parameters
    ----------
    log_probs : array_like
        float32 or float64 (16-bit floats are computed in float32) of shape (N, C), (C,) (one
        unbatched row, with a scalar target) or N-D with the class axis ``axis`` (PyTorch's
        (N, C, d1, ...) layout is ``axis=1``).
    target : array_like
        Integer class labels of the input's shape without the class axis.
    weight, ignore_index, reduction, axis
        As :func:`cross_entropy` ("mean" divides by the sum of ``w[y]`` over the rows that are
        not ignored).
    %(base)s
    sample_weight : array_like, optional
        One finite weight per row: row i's loss is multiplied by ``sample_weight[i]``, and
        "mean" is ``sum(s_i * loss_i) / sum(s_i * weight[y_i])`` over the rows that are not
        ignored.
    %(num_threads)s

    Returns
    -------
    numpy scalar or numpy.ndarray
        As :func:`cross_entropy`.

    Raises
    ------
    TypeError
        An argument of the wrong type or dtype (soft targets included).
    ValueError
        A wrong shape, a label outside [0, C) that is not ``ignore_index``, or an option out of
        range.

    Examples
    --------
    >>> import numpy as np
    >>> import fastxent
    >>> log_probs = np.log(np.array([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]))
    >>> fastxent.nll_loss(log_probs, np.array([0, 2]), reduction="none")
    array([0.69314718, 0.22314355])
    """
    return _cross_entropy(log_probs, target, weight, ignore_index, reduction, 0.0, num_threads,
                          axis, 0.0, None, 1.0, base, False, False, log_probs=True,
                          sample_weight=sample_weight)


@fill
def nll_loss_with_grad(log_probs: Any, target: Any, *, weight: Any = None,
                       ignore_index: int = -100, reduction: str = "mean", axis: int = -1,
                       base: float | None = None, grad_output: Any = 1.0,
                       out: np.ndarray | None = None, inplace: bool = False,
                       sample_weight: Any = None,
                       num_threads: int | None = None) -> tuple[Any, np.ndarray]:
    """:func:`nll_loss` and its gradient with respect to ``log_probs``.

    The gradient is ``-w[y] * grad_output`` (times ``sample_weight[i]``, divided by the
    denominator of "mean") at each row's label and 0 elsewhere.

    Parameters
    ----------
    log_probs, target, weight, ignore_index, reduction, axis, base, sample_weight, num_threads
        As :func:`nll_loss`.
    grad_output, out, inplace
        As :func:`cross_entropy_with_grad`.

    Returns
    -------
    loss : numpy scalar or numpy.ndarray
        As :func:`nll_loss`.
    grad : numpy.ndarray
        d(loss)/d(log_probs), of the input's shape (``out`` or ``log_probs`` itself when given).

    Raises
    ------
    TypeError, ValueError
        As :func:`nll_loss`, and for a bad ``out``, ``inplace`` or ``grad_output``.

    Examples
    --------
    >>> import numpy as np
    >>> import fastxent
    >>> log_probs = np.log(np.array([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]))
    >>> loss, grad = fastxent.nll_loss_with_grad(log_probs, np.array([0, 2]))
    >>> grad + 0.0                                # (+ 0.0: no negative zeros in the print)
    array([[-0.5,  0. ,  0. ],
           [ 0. ,  0. , -0.5]])
    """
    return _cross_entropy(log_probs, target, weight, ignore_index, reduction, 0.0, num_threads,
                          axis, 0.0, None, 1.0, base, False, True, grad_output, out, inplace,
                          None, log_probs=True, sample_weight=sample_weight)
