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

``cross_entropy_with_grad`` supports ``grad_output`` (a scalar, or an (N,) array for
``reduction="none"``), ``out=`` (the gradient is written into the caller's array, which is
returned) and ``inplace=True`` (the gradient overwrites ``logits``, which is returned).  Both are
written only after everything was computed, so a bad argument leaves them untouched.
"""
import numpy as np

__all__ = ["logsumexp", "log_softmax", "softmax", "cross_entropy", "cross_entropy_with_grad"]

_REDUCTIONS = ("mean", "sum", "none")


# --------------------------------------------------------------------------------------------
# validation helpers (minimal: this module is ground truth, not the API)
# --------------------------------------------------------------------------------------------
def _as_float_array(x, name):
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name}: expected a float32 or float64 array, got dtype {x.dtype}")
    return x


def _check_target(target, n, c, ignore_index):
    target = np.asarray(target)
    if target.dtype.kind not in "iu":
        raise TypeError(f"target: expected an integer array, got dtype {target.dtype}")
    if target.shape != (n,):
        raise ValueError(f"target: expected shape ({n},) to match logits, got {target.shape}")
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


def logsumexp(x, axis=-1, *, num_threads=None):
    """log(sum(exp(x), axis)) without overflow; the axis is removed (numpy scalar for 1-D input)."""
    x = _as_float_array(x, "x")
    if x.ndim < 1:
        raise ValueError("x: expected at least 1 dimension, got a 0-d array")
    if x.shape[axis] == 0:
        raise ValueError("x: the reduced axis has length 0")
    with np.errstate(all="ignore"):
        m, _, t = _lse_parts(x, axis)
        lse = np.where(np.isfinite(m), m + np.log1p(t), m)
    return np.squeeze(lse, axis=axis)[()]


def log_softmax(x, axis=-1, *, num_threads=None):
    """x - logsumexp(x) along ``axis``; NaN for rows whose maximum is not finite."""
    x = _as_float_array(x, "x")
    if x.ndim < 1:
        raise ValueError("x: expected at least 1 dimension, got a 0-d array")
    if x.shape[axis] == 0:
        return x.copy()
    with np.errstate(all="ignore"):
        m, shifted, t = _lse_parts(x, axis)
        out = shifted - np.log1p(t)
        out = np.where(np.isfinite(m), out, np.asarray(np.nan, dtype=x.dtype))
    return out.astype(x.dtype, copy=False)


def softmax(x, axis=-1, *, num_threads=None):
    """exp(x - max) / sum(exp(x - max)) along ``axis``; NaN for rows whose maximum is not finite."""
    x = _as_float_array(x, "x")
    if x.ndim < 1:
        raise ValueError("x: expected at least 1 dimension, got a 0-d array")
    if x.shape[axis] == 0:
        return x.copy()
    with np.errstate(all="ignore"):
        m, shifted, t = _lse_parts(x, axis)
        out = np.exp(shifted) / (1 + t)
        out = np.where(np.isfinite(m), out, np.asarray(np.nan, dtype=x.dtype))
    return out.astype(x.dtype, copy=False)


# --------------------------------------------------------------------------------------------
# cross-entropy
# --------------------------------------------------------------------------------------------
def _xent_rows(logits, target, weight, ignore_index, reduction, label_smoothing):
    """Validate, then return everything the loss and the gradient need."""
    logits = _as_float_array(logits, "logits")
    if logits.ndim != 2:
        raise ValueError(f"logits: expected a 2-D (N, C) array, got {logits.ndim}-D")
    n, c = logits.shape
    if c == 0:
        raise ValueError("logits: C (number of classes) must be at least 1")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction: expected one of {_REDUCTIONS}, got {reduction!r}")
    eps = float(label_smoothing)
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"label_smoothing: expected a value in [0, 1], got {label_smoothing!r}")
    y, valid = _check_target(target, n, c, ignore_index)
    dt = logits.dtype
    if weight is None:
        w = np.ones(c, dtype=dt)
    else:
        w = np.asarray(weight)
        if w.dtype.kind != "f":
            raise TypeError(f"weight: expected a float array, got dtype {w.dtype}")
        if w.shape != (c,):
            raise ValueError(f"weight: expected shape ({c},), got {w.shape}")
        if not (np.all(np.isfinite(w)) and np.all(w >= 0)):
            raise ValueError("weight: entries must be finite and non-negative")
        w = w.astype(dt)

    with np.errstate(all="ignore"):
        logp = log_softmax(logits, axis=1)                       # (N, C)
        rows = np.arange(n)
        w_y = np.where(valid, w[y], 0).astype(dt)                # weight of each row's target
        nll = np.where(valid, -w[y] * logp[rows, y], 0).astype(dt)
        if eps == 0.0:
            # As torch: no smoothing term at all (so a masked class does not give 0 * inf = nan).
            loss = nll
        else:
            smooth = np.where(valid, -np.sum(logp * w, axis=1), 0).astype(dt)
            loss = ((1 - eps) * nll + (eps / c) * smooth).astype(dt)
    return logits, y, valid, w, w_y, logp, loss, eps


def _reduce(loss, w_y, reduction, dt):
    if reduction == "none":
        return loss
    with np.errstate(all="ignore"):
        total = np.sum(loss, dtype=dt)
        if reduction == "sum":
            return dt.type(total)
        total_weight = np.sum(w_y, dtype=dt)
        if total_weight == 0:
            # All rows ignored, N = 0, or every target has weight 0: nan, as torch (which divides
            # the nll and the smoothing terms separately, and the nll term is then 0/0).
            return dt.type(np.nan)
        return dt.type(total / total_weight)


def cross_entropy(logits, target, *, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, num_threads=None):
    """Softmax cross-entropy of (N, C) ``logits`` against integer class labels ``target`` (N,).

    Same semantics as ``torch.nn.functional.cross_entropy``::

        loss_i = (1 - eps) * (-w[y_i] * logp[i, y_i]) + (eps / C) * (-sum_c w[c] * logp[i, c])

    with ``loss_i = 0`` where ``target == ignore_index``; ``"mean"`` divides the sum by the total
    weight of the rows that are not ignored.
    """
    logits, _, _, _, w_y, _, loss, _ = _xent_rows(
        logits, target, weight, ignore_index, reduction, label_smoothing)
    return _reduce(loss, w_y, reduction, logits.dtype)


def cross_entropy_with_grad(logits, target, *, weight=None, ignore_index=-100, reduction="mean",
                            label_smoothing=0.0, grad_output=1.0, out=None, inplace=False,
                            num_threads=None):
    """Return ``(loss, grad)``: the loss of :func:`cross_entropy` and d(loss)/d(logits) * grad_output.

    Gradient of row i (zero for ignored rows)::

        s * [(1 - eps) * w[y_i] * (p_i - onehot(y_i)) + (eps / C) * (sum(w) * p_i - w)]

    with ``p_i = softmax(logits[i])`` and ``s = grad_output`` (divided by the total weight of the
    rows that are not ignored for ``"mean"``; row i uses ``grad_output[i]`` when it is an (N,) array,
    allowed for ``reduction="none"`` only).
    """
    logits, y, valid, w, w_y, logp, loss, eps = _xent_rows(
        logits, target, weight, ignore_index, reduction, label_smoothing)
    n, c = logits.shape
    dt = logits.dtype

    g = np.asarray(grad_output, dtype=np.float64)
    if g.ndim == 0:
        scale = np.full(n, float(g))
    elif reduction == "none" and g.shape == (n,):
        scale = g.copy()
    else:
        want = f"a scalar or shape ({n},)" if reduction == "none" else "a scalar"
        raise ValueError(f"grad_output: expected {want} for reduction={reduction!r}, got shape {g.shape}")
    if out is not None:
        if not isinstance(out, np.ndarray) or out.shape != (n, c) or out.dtype != dt:
            raise ValueError(f"out: expected an array of shape {(n, c)} and dtype {dt}")
        if not out.flags.writeable:
            raise ValueError("out: array is read-only")
    if inplace and not logits.flags.writeable:
        raise ValueError("logits: inplace=True needs a writeable array")

    with np.errstate(all="ignore"):
        if reduction == "mean":
            total_weight = np.sum(w_y, dtype=dt)
            scale = scale / total_weight if total_weight != 0 else np.full(n, np.nan)
        scale = np.where(valid, scale, 0).astype(dt)
        p = softmax(logits, axis=1)                                # NaN rows stay NaN
        onehot = np.zeros((n, c), dtype=dt)
        onehot[np.arange(n), y] = 1
        grad = (1 - eps) * w_y[:, None] * (p - onehot) + (eps / c) * (np.sum(w) * p - w)
        grad = scale[:, None] * grad
        # Ignored rows get exactly 0, even when their logits hold NaN / inf.
        grad = np.where(valid[:, None], grad, 0).astype(dt)
    result = _reduce(loss, w_y, reduction, dt)

    if inplace:
        logits[...] = grad
        return result, logits
    if out is not None:
        out[...] = grad
        return result, out
    return result, grad
