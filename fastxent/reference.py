"""Plain NumPy reference implementations: the ground truth and the benchmark baseline.

Every public function of :mod:`fastxent` has a twin here with the same signature and the same
semantics (those of ``torch.nn.functional.cross_entropy`` / ``torch.logsumexp`` /
``torch.log_softmax`` / ``torch.softmax``), written for clarity rather than speed:

* no Cython, no SciPy, no threads -- ``num_threads`` is accepted so that signatures match, and ignored;
* computed in the dtype of the input (the test-suite passes float64 copies to get ground truth; the
  benchmarks pass float32 / float64 arrays as they are to get a fair "plain NumPy" baseline);
* only the validation needed to refuse obvious misuse (wrong ndim / dtype / shape, labels out of
  range, unknown reduction).  The messages start with the argument name, like the real API, but
  this module is not the API and does not try to match every check of :mod:`fastxent._api`.

Numerics, per row of ``x`` along ``axis``::

    m   = max(x)                         (NaN if the row holds a NaN)
    t   = sum(exp(x - m)) - 1            computed as the sum over all entries but one maximal one,
                                         so no cancellation: tiny losses stay exact
    lse = m + log1p(t)

Rows whose maximum is not finite follow torch: ``logsumexp`` returns that maximum (NaN for a NaN
row, +inf for a row holding +inf, -inf for an all -inf row) and ``log_softmax`` / ``softmax`` /
``cross_entropy`` / the gradient return NaN for the whole row.  A -inf logit in a finite row is a
masked class: probability 0, log-probability -inf, gradient 0 there.

``cross_entropy`` / ``cross_entropy_with_grad`` take the same options as fastxent's: soft targets,
``axis`` (N-D logits), ``z_loss``, ``softcap``, ``logit_scale``, ``base``, ``return_z_loss``, and
16-bit logits (computed in float32, gradient in ``grad_dtype``).

``cross_entropy_with_grad`` supports ``grad_output`` (a scalar, or an array of the target's shape
for ``reduction="none"``), ``out=`` (the gradient is written into the caller's array, which is
returned) and ``inplace=True`` (the gradient overwrites ``logits``, which is returned).  Both are
written only after everything was computed, so a bad argument leaves them untouched.

The probability-space family (``cross_entropy_from_probs``, binary cross-entropy, ``entropy``,
``kl_divergence``) lives in ``fastxent._reference_probs`` and is re-exported here.
"""
from types import SimpleNamespace

import numpy as np

from ._reference_probs import *  # noqa: F401,F403  (the probability family)
from ._reference_probs import __all__ as _probs_all
from ._reference_probs import _REDUCTIONS, _as_float_array, _check_reduction, _log_unit

__all__ = ["logsumexp", "log_softmax", "softmax", "cross_entropy", "cross_entropy_with_grad",
           "nll_loss", "nll_loss_with_grad", "perplexity", "score_rows"] + list(_probs_all)


# --------------------------------------------------------------------------------------------
# validation helpers (minimal: this module is ground truth, not the API)
# --------------------------------------------------------------------------------------------
def _check_target(target, row_shape, c, ignore_index):
    """Hard labels of shape ``row_shape`` (the logits' shape without the class axis): return the
    flattened (N,) safe class indices and the mask of the rows that are not ignored."""
    target = np.asarray(target)
    if target.dtype.kind not in "iu":
        raise TypeError(f"target: expected integer class labels or float class probabilities, "
                        f"got dtype {target.dtype}")
    if target.shape != row_shape:
        raise ValueError(f"target: expected shape {row_shape} to match logits, got {target.shape}")
    target = target.reshape(-1)
    ignored = target == ignore_index
    bad = ~ignored & ((target < 0) | (target >= c))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"target: label {int(target[row])} at row {row} is out of range [0, {c})")
    # Safe class indices (0 for ignored rows; those rows are masked out later).
    y = np.where(ignored, 0, target).astype(np.intp)
    return y, ~ignored


# --------------------------------------------------------------------------------------------
# row numerics
# --------------------------------------------------------------------------------------------
def _lse_parts(x, axis):
    """Return (m, shifted, t) with keepdims along ``axis``.

    ``m`` is the row maximum, ``shifted = x - m`` (``x`` itself where ``m`` is not finite, so no
    inf - inf is formed) and ``t = sum(exp(shifted)) - 1`` computed without cancellation by leaving
    one maximal entry out of the sum.  For a finite row ``lse = m + log1p(t)``.
    """
    m = np.max(x, axis=axis, keepdims=True)
    shift = np.where(np.isfinite(m), m, np.zeros_like(m))
    shifted = x - shift
    e = np.exp(shifted)
    np.put_along_axis(e, np.argmax(x, axis=axis, keepdims=True), 0, axis=axis)
    t = np.sum(e, axis=axis, keepdims=True)
    return m, shifted, t


def _lse_input(x):
    """float32/float64 input of the log-sum-exp family (float16 / bfloat16 become float32)."""
    x = np.asarray(x)
    if x.dtype == np.float16 or x.dtype.name == "bfloat16":
        x = x.astype(np.float32)
    return _as_float_array(x, "x")


def _reduced_last(x, axis):
    """``x`` with the reduced axes (an int, a tuple or None: all) moved last and flattened into
    one axis, plus a function that undoes it for an array of the moved shape."""
    if x.ndim == 0 and axis is not None and axis != ():
        raise ValueError("x: expected at least 1 dimension, got a 0-d array")
    axes = tuple(range(x.ndim)) if axis is None else axis if isinstance(axis, tuple) else (axis,)
    if any(not -x.ndim <= a < x.ndim for a in axes):
        raise ValueError(f"axis: {axis!r} is out of bounds for an array of dimension {x.ndim}")
    axes = tuple(sorted(a % x.ndim for a in axes))
    if len(set(axes)) != len(axes):
        raise ValueError(f"axis: repeated axis in {axis!r}")
    keep = [d for d in range(x.ndim) if d not in axes]
    moved = np.transpose(x, keep + list(axes))
    flat = moved.reshape(moved.shape[:len(keep)] + (int(np.prod([x.shape[a] for a in axes])),))

    def undo(out):
        return np.transpose(out.reshape(moved.shape), np.argsort(keep + list(axes)))

    return flat, axes, undo


def logsumexp(x, axis=-1, *, b=None, keepdims=False, return_sign=False, num_threads=None):
    """log(|sum(b * exp(x))|) over ``axis`` (an int, a tuple, or None: all), without overflow;
    the semantics of ``scipy.special.logsumexp``.

    Per reduction: the largest element x_m is taken out of the sum, ``s = sum(b * exp(x - x_m))``
    over the others divided by ``b_m`` (the scale of the maximal elements), so that
    ``res = x_m + log|b_m| + log1p(s)`` keeps small results exact.  An element with ``b == 0``
    is left out.  A sum over nothing, or a zero sum, is -inf (sign 0); NaN gives NaN (sign NaN),
    +inf gives +inf.  Without ``return_sign`` a negative sum is NaN.
    """
    x = _lse_input(x)
    if b is None:
        b = np.ones((), dtype=x.dtype)
    else:
        b = np.asarray(b)
        b = b.astype(np.float32) if b.dtype.name == "bfloat16" else b
        dt = np.result_type(x.dtype, b.dtype) if b.dtype.kind == "f" else x.dtype
        dt = np.float64 if dt == np.float64 else np.float32
        x, b = (a.astype(dt) for a in np.broadcast_arrays(x, b))
    x, b = np.broadcast_arrays(x, b)
    xs, axes, _ = _reduced_last(x, axis)
    bs, _, _ = _reduced_last(b, axis)
    dt = x.dtype
    with np.errstate(all="ignore"):
        xs = np.where(bs == 0, -np.inf, xs)                       # b == 0: left out
        m = np.max(xs, axis=-1, keepdims=True, initial=-np.inf)
        shift = np.where(np.isfinite(m), m, 0)
        at_max = xs == m
        bm = np.sum(np.where(at_max, bs, 0), axis=-1, keepdims=True)   # the maximal terms' scale
        rest = np.sum(np.where(at_max, 0, bs * np.exp(xs - shift)), axis=-1, keepdims=True)
        s = np.where(rest == 0, 0, rest / bm)
        sign = np.sign(1 + s) * np.sign(bm)
        res = np.log1p(np.where(s < -1, -s - 2, s)) + np.log(np.abs(bm)) + m
        # not finite (a NaN, an inf, or a zero sum): the direct sum decides
        direct = np.sum(bs * np.exp(xs), axis=-1, keepdims=True)
        bad = ~np.isfinite(res)
        res = np.where(bad, np.log(np.abs(direct)), res)
        sign = np.where(bad, np.sign(direct), sign)
        if not return_sign:
            res = np.where(sign < 0, np.nan, res)
    res, sign = res[..., 0].astype(dt), sign[..., 0].astype(dt)
    if keepdims:
        shape = tuple(1 if d in axes else n for d, n in enumerate(x.shape))
        res, sign = res.reshape(shape), sign.reshape(shape)
    return (res[()], sign[()]) if return_sign else res[()]


def _softmax_rows(x, axis, log):
    x = _lse_input(x)
    xs, _, undo = _reduced_last(x, axis)
    if xs.size == 0:
        return x.copy()
    with np.errstate(all="ignore"):
        m, shifted, t = _lse_parts(xs, -1)
        out = shifted - np.log1p(t) if log else np.exp(shifted) / (1 + t)
        out = np.where(np.isfinite(m), out, np.asarray(np.nan, dtype=x.dtype))
    return undo(out.astype(x.dtype, copy=False))[()]


def log_softmax(x, axis=-1, *, num_threads=None):
    """x - logsumexp(x) along ``axis`` (an int, a tuple, or None: all); NaN for rows whose
    maximum is not finite."""
    return _softmax_rows(x, axis, True)


def softmax(x, axis=-1, *, num_threads=None):
    """exp(x - max) / sum(exp(x - max)) along ``axis`` (an int, a tuple, or None: all); NaN for
    rows whose maximum is not finite."""
    return _softmax_rows(x, axis, False)


# --------------------------------------------------------------------------------------------
# cross-entropy
# --------------------------------------------------------------------------------------------
def _logits_array(logits):
    x = np.asarray(logits)
    if x.dtype not in (np.float16, np.float32, np.float64) and x.dtype.name != "bfloat16":
        raise TypeError(f"logits: expected a float16, bfloat16, float32 or float64 array, "
                        f"got dtype {x.dtype}")
    return x


def _compute_dtype(dtype):
    """float64 logits are computed in float64; float32, float16 and bfloat16 logits in float32."""
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


def _rows(a, axis, c):
    """``a`` with the class axis moved last and flattened to (N, C): one row per position of the
    other axes, in C order (the order of the flattened target)."""
    moved = np.moveaxis(a, axis, -1)
    return moved.reshape(int(np.prod(moved.shape[:-1])), c)


def _unrows(g, shape, axis):
    """Inverse of :func:`_rows`: an (N, C) array back to ``shape`` with the classes at ``axis``."""
    moved = shape[:axis] + shape[axis + 1:] + (shape[axis],)
    return np.moveaxis(g.reshape(moved), -1, axis)


def _check_options(reduction, label_smoothing, z_loss, softcap, logit_scale, base):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction: expected one of {_REDUCTIONS}, got {reduction!r}")
    eps = float(label_smoothing)
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"label_smoothing: expected a value in [0, 1], got {label_smoothing!r}")
    zl = float(z_loss)
    if not (zl >= 0.0 and np.isfinite(zl)):
        raise ValueError(f"z_loss: must be a finite number >= 0, got {z_loss!r}")
    cap = None
    if softcap is not None:
        cap = float(softcap)
        if not (cap > 0.0 and np.isfinite(cap)):
            raise ValueError(f"softcap: must be a positive finite number or None, got {softcap!r}")
    scale = float(logit_scale)
    if not np.isfinite(scale):
        raise ValueError(f"logit_scale: must be finite, got {logit_scale!r}")
    log_base = 1.0
    if base is not None:
        b = float(base)
        if not (b > 0.0 and np.isfinite(b)) or b == 1.0:
            raise ValueError(f"base: must be a positive finite number other than 1, got {base!r}")
        log_base = float(np.log(b))
    return eps, zl, cap, scale, log_base


def _xent_rows(logits, target, weight, ignore_index, reduction, label_smoothing, axis=-1,
               z_loss=0.0, softcap=None, logit_scale=1.0, base=None, sample_weight=None,
               focal_gamma=0.0):
    """Validate, then return everything the loss and the gradient need (a namespace).

    The logits are viewed as (N, C) rows (class axis last; (C,) logits are one row); the
    transformed logits ``z = cap * tanh(scale * x / cap)`` (``scale * x`` without a softcap) are
    what the softmax sees.
    """
    x = _logits_array(logits)
    if x.ndim < 1:
        raise ValueError("logits: expected at least 1 dimension, got a 0-d array")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis: {axis} is out of bounds for logits of dimension {x.ndim}")
    axis = axis % x.ndim
    c = x.shape[axis]
    row_shape = x.shape[:axis] + x.shape[axis + 1:]
    eps, zl, cap, scale, log_base = _check_options(reduction, label_smoothing, z_loss, softcap,
                                                   logit_scale, base)
    gamma = float(focal_gamma)
    if not (gamma >= 0.0 and np.isfinite(gamma)):
        raise ValueError(f"focal_gamma: must be a finite number >= 0, got {focal_gamma!r}")
    dt = _compute_dtype(x.dtype)
    if weight is None:
        w = np.ones(c, dtype=dt)
    else:
        w = np.asarray(weight)
        if w.dtype.kind not in "fiu" and w.dtype.name != "bfloat16":
            raise TypeError(f"weight: expected a real-valued array, got dtype {w.dtype}")
        if w.shape != (c,):
            raise ValueError(f"weight: expected shape ({c},), got {w.shape}")
        if not np.all(np.isfinite(w)):
            raise ValueError("weight: entries must be finite (negative weights are allowed, as torch)")
        w = w.astype(np.float64).astype(dt)
    sw = np.ones(int(np.prod(row_shape)))
    if sample_weight is not None:
        sw = np.asarray(sample_weight)
        if sw.shape != row_shape:
            raise ValueError(f"sample_weight: expected shape {row_shape}, got {sw.shape}")
        sw = sw.astype(np.float64).reshape(-1)
        if not np.all(np.isfinite(sw)):
            raise ValueError("sample_weight: entries must be finite")

    t = np.asarray(target)
    soft = t.dtype.kind == "f"
    if gamma != 0.0 and (soft or eps != 0.0):
        raise ValueError("focal_gamma: the focal loss needs integer class labels and no "
                         "label_smoothing")
    if soft and t.shape != x.shape:
        raise ValueError(f"target: soft targets (class probabilities) must have the logits' shape "
                         f"{x.shape}, got {t.shape}")
    with np.errstate(all="ignore"):
        z = _rows(x, axis, c).astype(dt, copy=False)            # (N, C)
        dz = None                                               # dz/dx (None: 1)
        if cap is not None:
            u = scale * z / cap
            z = (cap * np.tanh(u)).astype(dt)
            dz = (scale / np.cosh(u) ** 2).astype(dt)
        elif scale != 1.0:
            z = (scale * z).astype(dt)
            dz = np.full_like(z, scale)
        n = z.shape[0]
        logp = log_softmax(z, axis=1)
        if soft:
            # torch's class probabilities: q = (1 - eps) p + eps / C,  loss_i = -sum_c w_c q_c logp_c;
            # every row counts, and "mean" divides by the number of rows.
            y = None
            q = _rows(t, axis, c).astype(dt, copy=False)
            if eps != 0.0:
                q = ((1 - eps) * q + eps / max(c, 1)).astype(dt)
            valid = np.ones(n, dtype=bool)
            # torch's mean divides by numel / C: 0 / 0 = NaN when C = 0
            w_y = np.full(n, 1 if c else 0, dtype=dt)
            loss = (-np.sum(w * q * logp, axis=1)).astype(dt)
        else:
            q = None
            focal_grad = None
            y, valid = _check_target(t, row_shape, c, ignore_index)
            rows = np.arange(n)
            if c == 0:
                # every row is ignored (else the label is out of range): as torch, a loss of 0,
                # and NaN with label smoothing (its term is 0 * eps / 0)
                w_y = np.zeros(n, dtype=dt)
                loss = np.full(n, np.nan if eps else 0.0, dtype=dt)
            else:
                w_y = np.where(valid, w[y], 0).astype(dt)       # weight of each row's target
                loss = np.where(valid, -w[y] * logp[rows, y], 0).astype(dt)
                if gamma != 0.0:
                    # focal loss (Lin et al. 2017): -(1 - p_y)^gamma log p_y, and its derivative
                    # factor F = (1 - p_y)^gamma - gamma (1 - p_y)^(gamma - 1) p_y log p_y
                    logp_y = logp[rows, y]
                    p_y, q_y = np.exp(logp_y), -np.expm1(logp_y)   # p_y and 1 - p_y
                    loss = (loss * q_y ** gamma).astype(dt)
                    focal_grad = q_y ** gamma - gamma * q_y ** (gamma - 1) * p_y * logp_y
                    focal_grad = np.where(q_y == 0, 0.0, np.where(p_y == 0, 1.0, focal_grad))
                if eps != 0.0:
                    # As torch, no smoothing term at all when eps == 0 (so a masked class does
                    # not give 0 * inf = nan).
                    smooth = np.where(valid, -np.sum(logp * w, axis=1), 0).astype(dt)
                    loss = ((1 - eps) * loss + (eps / c) * smooth).astype(dt)
        lse = None
        zrow = np.zeros(n, dtype=dt)
        if zl != 0.0:
            # z-loss (PaLM): zl * logsumexp(z)^2 per non-ignored row, unweighted; NaN in a row
            # whose log-sum-exp is not finite (its loss is NaN too)
            lse = logsumexp(z, axis=1)
            zrow = np.where(valid, np.where(np.isfinite(lse), zl * lse * lse, np.nan), 0).astype(dt)
            loss = (loss + zrow).astype(dt)
    return SimpleNamespace(x=x, shape=x.shape, axis=axis, row_shape=row_shape, c=c, dt=dt, z=z,
                           dz=dz, soft=soft, y=y, q=q, valid=valid, w=w, w_y=w_y, loss=loss,
                           zrow=zrow, lse=lse, eps=eps, zl=zl, log_base=log_base, sw=sw,
                           focal_grad=focal_grad if not soft else None)


def _reduce(loss, w_y, reduction, dt, sw):
    """Reduce per-row losses; with sample weights ``sw`` each row counts ``sw[i]`` times (in the
    sum and in the mean's denominator of weights ``w_y``)."""
    with np.errstate(all="ignore"):
        loss = (loss * sw).astype(dt)
        w_y = w_y * sw
    if reduction == "none":
        return loss
    with np.errstate(all="ignore"):
        total = np.sum(loss, dtype=dt)
        if reduction == "sum":
            return dt.type(total)
        total_weight = np.sum(w_y, dtype=dt)
        # as torch: total / total weight with IEEE division (nan when nothing is left; +-inf when
        # negative and positive weights cancel to exactly 0)
        return dt.type(total / total_weight)


def _finish(values, r, reduction, loss=True):
    """Reduce per-row ``values`` (the loss, or the z-loss part: ``loss=False``), convert to the
    unit of ``base``, give "none" the target's shape."""
    out = _reduce(values, r.w_y, reduction, r.dt, r.sw)
    if loss and r.c == 0 and r.eps and not r.soft and reduction != "none":
        # torch scales the sum of the smoothing terms by eps / C = inf: NaN, even for no rows
        out = r.dt.type(np.nan)
    if r.log_base != 1.0:
        out = (out / r.log_base).astype(r.dt) if reduction == "none" else r.dt.type(out / r.log_base)
    return out.reshape(r.row_shape)[()] if reduction == "none" else out


def cross_entropy(logits, target, *, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, axis=-1, z_loss=0.0, softcap=None, logit_scale=1.0,
                  base=None, return_z_loss=False, focal_gamma=0.0, sample_weight=None,
                  num_threads=None):
    """Softmax cross-entropy of ``logits`` (classes along ``axis``) against ``target``.

    Same semantics as ``torch.nn.functional.cross_entropy``.  Hard labels (an integer ``target``
    of the logits' shape without the class axis)::

        loss_i = (1 - eps) * (-w[y_i] * logp[i, y_i]) + (eps / C) * (-sum_c w[c] * logp[i, c])

    with ``loss_i = 0`` where ``target == ignore_index``; ``"mean"`` divides the sum by the total
    weight of the rows that are not ignored.  Soft targets (a float ``target`` of the logits'
    shape)::

        loss_i = -sum_c w[c] * q[i, c] * logp[i, c],   q = (1 - eps) * target + eps / C

    and ``"mean"`` divides by the number of rows.  Options: ``logp = log_softmax(z)`` of the
    transformed logits ``z = softcap * tanh(logit_scale * logits / softcap)`` (``logit_scale *
    logits`` when ``softcap`` is None); ``z_loss`` adds ``z_loss * logsumexp(z)^2`` to every row
    that is not ignored; ``base`` divides everything by ``ln(base)``.  ``return_z_loss=True``
    returns ``(loss, z_term)``, the z-loss part reduced like the loss.  float16 / bfloat16 logits
    are computed in float32.  ``focal_gamma`` multiplies each hard-label row's loss by
    ``(1 - p_y)^focal_gamma`` (focal loss; no label smoothing, no soft targets).  ``sample_weight`` (one weight s_i per row) multiplies row i's loss
    and its weight in the mean: ``"mean"`` is ``sum(s_i * loss_i) / sum(s_i * w[y_i])``.

    (C,) logits with a scalar target are one unbatched row; C = 0 follows torch (labels must be
    ignored; loss 0, NaN with label smoothing; the mean is NaN).
    """
    r = _xent_rows(logits, target, weight, ignore_index, reduction, label_smoothing, axis,
                   z_loss, softcap, logit_scale, base, sample_weight, focal_gamma)
    loss = _finish(r.loss, r, reduction)
    return (loss, _finish(r.zrow, r, reduction, loss=False)) if return_z_loss else loss


def cross_entropy_with_grad(logits, target, *, weight=None, ignore_index=-100, reduction="mean",
                            label_smoothing=0.0, axis=-1, z_loss=0.0, softcap=None,
                            logit_scale=1.0, base=None, return_z_loss=False, grad_output=1.0,
                            out=None, inplace=False, grad_dtype=None, focal_gamma=0.0,
                            sample_weight=None, num_threads=None):
    """Return ``(loss, grad)`` (``(loss, z_term, grad)`` with ``return_z_loss=True``): the loss of
    :func:`cross_entropy` and d(loss)/d(logits) * grad_output, in the logits' shape.

    Gradient with respect to the transformed logits ``z`` of row i (zero for ignored rows)::

        hard: s * [(1 - eps) * w[y_i] * (p_i - onehot(y_i)) + (eps / C) * (sum(w) * p_i - w)]
        focal: s * F_i * w[y_i] * (p_i - onehot(y_i)),
               F_i = (1 - p_y)^gamma - gamma * (1 - p_y)^(gamma - 1) * p_y * log(p_y)
        soft: s * [sum(w * q_i) * p_i - w * q_i]
        z-loss adds s * 2 * z_loss * logsumexp(z_i) * p_i

    with ``p_i = softmax(z_i)`` and ``s = grad_output`` (divided by the denominator of ``"mean"``;
    row i uses ``grad_output[i]`` when it is an array of the target's shape, allowed for
    ``reduction="none"`` only), then times dz/dlogits (``logit_scale / cosh(logit_scale * x /
    softcap)^2``, or ``logit_scale``) and divided by ``ln(base)``.  ``grad_dtype``: the
    gradient's dtype (None: the logits' dtype; float32 is allowed for 16-bit logits).  Row i's
    gradient is also multiplied by ``sample_weight[i]``.
    """
    r = _xent_rows(logits, target, weight, ignore_index, reduction, label_smoothing, axis,
                   z_loss, softcap, logit_scale, base, sample_weight, focal_gamma)
    n, c = r.z.shape
    dt = r.dt
    gdt = r.x.dtype if grad_dtype is None else np.dtype(grad_dtype)
    if gdt != r.x.dtype and not (gdt == np.float32 and r.x.dtype.itemsize == 2):
        raise ValueError(f"grad_dtype: must be None, the logits' dtype ({r.x.dtype}) or float32 for "
                         f"16-bit logits, got {gdt}")

    g = np.asarray(grad_output, dtype=np.float64)
    if g.ndim == 0 or (g.size == 1 and reduction != "none"):
        scale = np.full(n, float(g.reshape(())))
    elif reduction == "none" and g.shape == r.row_shape:
        scale = g.reshape(-1).copy()
    else:
        want = f"a scalar or shape {r.row_shape}" if reduction == "none" else "a scalar"
        raise ValueError(f"grad_output: expected {want} for reduction={reduction!r}, got shape {g.shape}")
    if out is not None:
        if not isinstance(out, np.ndarray) or out.shape != r.shape or out.dtype != gdt:
            raise ValueError(f"out: expected an array of shape {r.shape} and dtype {gdt}")
        if not out.flags.writeable:
            raise ValueError("out: array is read-only")
    if inplace:
        if not r.x.flags.writeable:
            raise ValueError("logits: inplace=True needs a writeable array")
        if gdt != r.x.dtype:
            raise ValueError(f"grad_dtype: inplace=True writes the logits' own dtype {r.x.dtype}")

    scale = scale * r.sw
    with np.errstate(all="ignore"):
        if reduction == "mean":
            total_weight = np.sum(r.w_y * r.sw, dtype=dt)
            scale = scale / total_weight if total_weight != 0 else np.full(n, np.nan)
        scale = np.where(r.valid, scale, 0).astype(dt)
        p = softmax(r.z, axis=1)                                   # NaN rows stay NaN
        w, eps = r.w, r.eps
        if r.soft:
            grad = np.sum(w * r.q, axis=1)[:, None] * p - w * r.q
        else:
            onehot = np.zeros((n, c), dtype=dt)
            if c:
                onehot[np.arange(n), r.y] = 1
            grad = (1 - eps) * r.w_y[:, None] * (p - onehot) + (eps / max(c, 1)) * (np.sum(w) * p - w)
            if r.focal_grad is not None:
                grad = r.focal_grad[:, None] * grad
        if r.zl != 0.0:
            grad = grad + 2 * r.zl * r.lse[:, None] * p
        grad = scale[:, None] * grad
        if r.dz is not None:
            grad = grad * r.dz                                     # chain rule through the transform
        # Ignored rows get exactly 0, even when their logits hold NaN / inf.
        grad = np.where(r.valid[:, None], grad, 0).astype(dt)
        if r.log_base != 1.0:
            grad = (grad / r.log_base).astype(dt)
    grad = _unrows(grad, r.shape, r.axis).astype(gdt)
    result: tuple = (_finish(r.loss, r, reduction),)
    if return_z_loss:
        result += (_finish(r.zrow, r, reduction, loss=False),)

    if inplace:
        logits[...] = grad
        return result + (logits,)
    if out is not None:
        out[...] = grad
        return result + (out,)
    return result + (grad,)


def nll_loss(log_probs, target, *, weight=None, ignore_index=-100, reduction="mean", axis=-1,
             base=None, sample_weight=None, num_threads=None):
    """Negative log-likelihood, as ``torch.nn.functional.nll_loss``: ``-w[y_i] * log_probs[i, y_i]``
    per row (classes along ``axis``; (C,) input is one row), 0 for rows whose label is
    ``ignore_index``; "mean" divides the sum by the total weight of the rows that are not
    ignored.  ``sample_weight`` multiplies row i and its weight in the mean by s_i."""
    return nll_loss_with_grad(log_probs, target, weight=weight, ignore_index=ignore_index,
                              reduction=reduction, axis=axis, base=base,
                              sample_weight=sample_weight)[0]


def nll_loss_with_grad(log_probs, target, *, weight=None, ignore_index=-100, reduction="mean",
                       axis=-1, base=None, grad_output=1.0, out=None, inplace=False,
                       sample_weight=None, num_threads=None):
    """``(loss, grad)``: the loss of :func:`nll_loss` and its gradient, ``-w[y_i] * s_i * g`` at
    each row's label and 0 elsewhere (``g``: grad_output, / the denominator of "mean")."""
    x = _logits_array(log_probs)
    if x.ndim < 1:
        raise ValueError("log_probs: expected at least 1 dimension, got a 0-d array")
    axis = axis % x.ndim
    c = x.shape[axis]
    row_shape = x.shape[:axis] + x.shape[axis + 1:]
    _check_reduction(reduction)
    dt = _compute_dtype(x.dtype)
    w = np.ones(c, dtype=dt) if weight is None else np.asarray(weight).astype(np.float64).astype(dt)
    y, valid = _check_target(target, row_shape, c, ignore_index)
    sw = np.ones(y.shape[0]) if sample_weight is None else \
        np.asarray(sample_weight, dtype=np.float64).reshape(-1)
    lp = _rows(x, axis, c).astype(dt)
    n = lp.shape[0]
    rows = np.arange(n)
    if c == 0:                 # every row is ignored (else its label is out of range)
        y, w = np.zeros(n, dtype=np.intp), np.zeros(1, dtype=dt)
        lp = np.zeros((n, 1), dtype=dt)
    w_y = np.where(valid, w[y], 0).astype(dt)
    with np.errstate(all="ignore"):
        loss = np.where(valid, -w[y] * lp[rows, y], 0).astype(dt)
        scale = np.broadcast_to(np.asarray(grad_output, dtype=np.float64).reshape(-1), (n,)) * sw
        if reduction == "mean":
            scale = scale / np.sum(w_y * sw, dtype=dt)
        grad = np.zeros((n, c), dtype=dt)
        if c:
            grad[rows, y] = np.where(valid, -w[y] * scale, 0)
        grad = (grad * _log_unit(base)).astype(dt)
    log_base = 1.0 if base is None else float(np.log(base))
    r = SimpleNamespace(w_y=w_y, dt=dt, log_base=log_base, row_shape=row_shape, sw=sw, c=c,
                        eps=0.0, soft=False)
    return _finish(loss, r, reduction), _unrows(grad, x.shape, axis).astype(x.dtype)


def perplexity(logits, target, *, base=None, **cross_entropy_kwargs):
    """exp(mean cross-entropy in nats) (reduction "mean"), or of each row's ("none"); ``base``
    does not change it."""
    _log_unit(base)
    _check_reduction(cross_entropy_kwargs.get("reduction", "mean"), ("mean", "none"))
    loss = cross_entropy(logits, target, **cross_entropy_kwargs)
    with np.errstate(over="ignore"):
        return np.exp(loss)


# --------------------------------------------------------------------------------------------
# batch scoring: the per-row statistics of fastxent.score
# --------------------------------------------------------------------------------------------
def score_rows(x, labels, kind="logits", ignore_index=-100, eps=None):
    """``(loss, rank, conf, brier, bad_row)`` of each row, in float64, one row at a time: the
    ground truth of ``fastxent.score._rows.row_scores`` (see its docstring for the contract).

    kind: "logits" (p = softmax(x)), "log-probs" (p = exp(x)) or "probs" (p = x, the loss
    clipped at ``eps``; None: the machine epsilon of x's dtype).  rank counts the classes that
    come before the label in a descending order of x with NaN first and ties by class index.
    """
    x = np.asarray(x)
    eps = float(np.finfo(x.dtype).eps) if eps is None else float(eps)
    x = x.astype(np.float64)
    y = np.asarray(labels).astype(np.int64)
    n, c = x.shape
    loss, conf, brier = np.zeros(n), np.zeros(n), np.zeros(n)
    rank = np.full(n, -1, dtype=np.int64)
    bad = (y != ignore_index) & ((y < 0) | (y >= c))
    if bad.any():
        return loss, rank, conf, brier, int(np.flatnonzero(bad)[0])
    with np.errstate(all="ignore"):
        for i in np.flatnonzero(y != ignore_index):
            row, k = x[i], int(y[i])
            if kind == "logits":
                p = softmax(row)
                loss[i] = cross_entropy(row[None], np.array([k]), reduction="none")[0]
            elif kind == "log-probs":
                p = np.exp(row)
                loss[i] = -row[k]
            elif kind == "probs":
                p = row
                loss[i] = -np.log(min(max(row[k], eps), 1.0)) if row[k] == row[k] else np.nan
            else:
                raise ValueError(f"kind: expected 'logits', 'log-probs' or 'probs', got {kind!r}")
            conf[i] = np.max(p)
            brier[i] = np.sum((p - (np.arange(c) == k)) ** 2)
            # the classes before the label: NaN first, then larger values, ties by class index
            isnan, earlier = np.isnan(row), np.arange(c) < k
            if isnan[k]:
                before = isnan & earlier
            else:
                before = isnan | (row > row[k]) | ((row == row[k]) & earlier)
            rank[i] = np.count_nonzero(before)
    return loss, rank, conf, brier, -1
