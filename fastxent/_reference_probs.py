"""Plain NumPy reference of the probability-space family: the ground truth of
``fastxent._probs_api`` and ``fastxent._binary_api`` (same signatures, minus ``out``), re-exported
by :mod:`fastxent.reference` (read its docstring for the conventions).

Also the small input checks the whole reference shares.
"""
import numpy as np

__all__ = ["cross_entropy_from_probs", "cross_entropy_from_probs_with_grad",
           "binary_cross_entropy", "binary_cross_entropy_with_grad",
           "binary_cross_entropy_with_logits", "binary_cross_entropy_with_logits_with_grad",
           "entropy", "kl_divergence"]

_REDUCTIONS = ("mean", "sum", "none")


def _as_float_array(x, name):
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name}: expected a float32 or float64 array, got dtype {x.dtype}")
    return x


def _log_unit(base):
    """1 / ln(base): nats -> the unit of ``base`` (None: nats)."""
    if base is None:
        return 1.0
    b = float(base)
    if not (b > 0 and np.isfinite(b)) or b == 1:
        raise ValueError(f"base: must be a positive finite number other than 1, got {base!r}")
    return 1.0 / np.log(b)


def _check_reduction(reduction, allowed=_REDUCTIONS):
    if reduction not in allowed:
        raise ValueError(f"reduction: expected one of {allowed}, got {reduction!r}")


def _check_nonneg(a, name):
    with np.errstate(invalid="ignore"):
        if np.any(a < 0):
            raise ValueError(f"{name}: probabilities must be non-negative")


def _xlogy(x, y):
    """x * log(y) with 0 * log(anything) = 0, except that a NaN in x or y stays NaN."""
    with np.errstate(all="ignore"):
        zero = np.where(np.isnan(y), y, np.zeros((), dtype=np.result_type(x, y)))
        return np.where(x == 0, zero, x * np.log(y))


def _probs_and_q(p, q, axis):
    """(P, q, axis): targets as probabilities of q's shape (integer labels become one-hot)."""
    q = _as_float_array(q, "q")
    if not -q.ndim <= axis < q.ndim:
        raise ValueError(f"axis: {axis} is out of bounds for q of dimension {q.ndim}")
    axis = axis % q.ndim
    if q.shape[axis] == 0:
        raise ValueError("q: the class axis has length 0")
    p = np.asarray(p)
    if p.shape == q.shape:
        dt = np.result_type(q.dtype, p.dtype) if p.dtype.kind == "f" else q.dtype
        return p.astype(dt), q.astype(dt), axis
    row_shape = q.shape[:axis] + q.shape[axis + 1:]
    if p.shape != row_shape or p.dtype.kind not in "iu":
        raise ValueError(f"p: expected q's shape {q.shape} or integer labels of shape {row_shape}")
    c = q.shape[axis]
    if np.any((p < 0) | (p >= c)):
        raise ValueError(f"p: labels must be in [0, {c})")
    P = np.zeros(q.shape, dtype=q.dtype)
    np.put_along_axis(P, np.expand_dims(p.astype(np.intp), axis), 1, axis=axis)
    return P, q, axis


def _clip_eps(eps, dt):
    """The lower clip of q: the machine epsilon of ``dt`` for None, else eps in [0, 1)."""
    e = np.finfo(dt).eps if eps is None else float(eps)
    if not 0.0 <= e < 1.0:
        raise ValueError(f"eps: must be in [0, 1), got {eps!r}")
    return e


def _reduce_rows(rows, reduction, dt, sample_weight=None):
    """Reduce per-row values; with ``sample_weight`` each row counts s_i times (the mean is
    sum(s_i v_i) / sum(s_i))."""
    s = np.ones(rows.shape) if sample_weight is None else np.asarray(sample_weight, np.float64)
    if s.shape != rows.shape:
        raise ValueError(f"sample_weight: expected shape {rows.shape}, got {s.shape}")
    rows = rows * s
    if reduction == "none":
        return rows.astype(dt)[()]
    if reduction == "sum":
        return dt.type(np.sum(rows))
    with np.errstate(all="ignore"):
        return dt.type(np.sum(rows) / np.sum(s)) if rows.size else dt.type(np.nan)


def _read_q(p, q, axis):
    """(P, q, axis) of _probs_and_q, with integer labels q's other entries set to 1: only the
    entries the labels pick are read (checked, and NaN there propagates)."""
    P, q, axis = _probs_and_q(p, q, axis)
    return P, (np.where(P > 0, q, 1).astype(q.dtype) if np.shape(p) != q.shape else q), axis


def cross_entropy_from_probs(p, q, *, eps=None, axis=-1, reduction="mean", base=None,
                             sample_weight=None, num_threads=None):
    """-sum_c p_c log(clip(q_c, eps, 1)) per row along ``axis`` (0 log 0 = 0); eps=None: the
    machine epsilon of q's dtype; integer labels p pick -log q[label]; ``sample_weight`` (one
    weight s_i per row) multiplies row i, and the mean is sum(s_i H_i) / sum(s_i)."""
    _check_reduction(reduction)
    P, q, axis = _read_q(p, q, axis)
    _check_nonneg(P, "p")
    _check_nonneg(q, "q")
    dt = q.dtype
    e = _clip_eps(eps, dt)
    qc = np.clip(q, dt.type(e), dt.type(1))
    rows = -np.sum(_xlogy(P, qc), axis=axis) * dt.type(_log_unit(base))
    return _reduce_rows(rows, reduction, dt, sample_weight)


def cross_entropy_from_probs_with_grad(p, q, *, eps=None, axis=-1, reduction="mean", base=None,
                                       grad_output=1.0, sample_weight=None, num_threads=None):
    """(loss, d loss / d q): grad = -p / q * g * s_i where eps <= q <= 1 and p != 0, else 0
    (g: grad_output, divided by sum(s_i) (the number of rows) for "mean")."""
    loss = cross_entropy_from_probs(p, q, eps=eps, axis=axis, reduction=reduction, base=base,
                                    sample_weight=sample_weight)
    P, q, axis = _read_q(p, q, axis)
    dt = q.dtype
    e = _clip_eps(eps, dt)
    g = np.asarray(grad_output, dtype=np.float64)
    s = g if (reduction == "none" and g.ndim) else float(g)
    s = np.expand_dims(s, axis) if np.ndim(s) else s
    s = s * _log_unit(base)
    n = q.size // q.shape[axis]
    if sample_weight is not None:
        sw = np.asarray(sample_weight, dtype=np.float64)
        s = s * np.expand_dims(sw, axis)
        n = np.sum(sw)
    with np.errstate(all="ignore"):
        if reduction == "mean":
            s = s / n if q.size // q.shape[axis] else s * np.nan
        grad = np.where((q < e) | (q > 1) | (P == 0), 0.0, -s * P / q)
        grad = np.where(np.isnan(q), np.nan, grad).astype(dt)       # NaN stays NaN
    return loss, grad


def entropy(p, axis=-1, base=None, *, num_threads=None):
    """-sum p log p per row along ``axis`` (0 log 0 = 0), p's shape without ``axis``."""
    p = _as_float_array(p, "p")
    _check_nonneg(p, "p")
    return (-np.sum(_xlogy(p, p), axis=axis) * p.dtype.type(_log_unit(base))).astype(p.dtype)[()]


def kl_divergence(p, q, *, axis=-1, reduction="none", base=None, log_q=False, log_p=False,
                  num_threads=None):
    """sum p (log p - log q) per row along ``axis`` (terms with p == 0 are 0); log_q / log_p:
    the argument holds log-probabilities.  reduction: none (per row), sum, mean (sum / p.size),
    batchmean (sum / p.shape[0])."""
    _check_reduction(reduction, ("none", "sum", "mean", "batchmean"))
    p = _as_float_array(p, "p")
    q = _as_float_array(q, "q")
    dt = np.result_type(p.dtype, q.dtype)
    p, q = p.astype(dt), q.astype(dt)
    if not log_p:
        _check_nonneg(p, "p")
    if not log_q:
        _check_nonneg(q, "q")
    with np.errstate(all="ignore"):
        pe = np.exp(p) if log_p else p
        lp = p if log_p else np.log(p)
        lq = q if log_q else np.log(q)
        # a term with p == 0 is 0, unless q holds NaN there (NaN propagates to its row)
        terms = np.where(pe == 0, np.where(np.isnan(lq), np.nan, 0.0), pe * (lp - lq)).astype(dt)
    rows = np.sum(terms, axis=axis) * _log_unit(base)
    if reduction == "none":
        return rows.astype(dt)[()]
    total = np.sum(rows)
    if reduction == "mean":
        total = total / p.size if p.size else np.nan
    elif reduction == "batchmean":
        total = total / p.shape[0] if p.shape[0] else np.nan
    return dt.type(total)


def _binary_args(x, target, weight, pos_weight, reduction, xname):
    _check_reduction(reduction)
    x = _as_float_array(x, xname)
    dt = x.dtype
    y = np.asarray(target)
    if y.shape != x.shape:
        raise ValueError(f"target: expected shape {x.shape}, got {y.shape}")
    y = y.astype(dt)
    w = np.ones((), dt) if weight is None else np.asarray(weight).astype(dt)
    pw = np.ones((), dt) if pos_weight is None else np.asarray(pos_weight).astype(dt)
    for a, name in ((w, "weight"), (pw, "pos_weight")):
        if np.broadcast_shapes(a.shape, x.shape) != x.shape:
            raise ValueError(f"{name}: cannot be broadcast to shape {x.shape}")
    return x, y, w, pw, dt


def _reduce_elems(loss, reduction, dt):
    if reduction == "none":
        return loss.astype(dt)[()]
    if reduction == "sum":
        return dt.type(np.sum(loss))
    return dt.type(np.mean(loss)) if loss.size else dt.type(np.nan)


def _elem_grad_scale(grad_output, reduction, n, base):
    g = np.asarray(grad_output, dtype=np.float64)
    s = g if reduction == "none" else float(g)
    s = s * _log_unit(base)
    if reduction == "mean":
        s = s / n if n else s * np.nan
    return s


def binary_cross_entropy(probs, target, *, weight=None, reduction="mean", base=None,
                         num_threads=None):
    """As torch: -w (y max(log p, -100) + (1 - y) max(log(1 - p), -100)); p, y in [0, 1]."""
    p, y, w, _, dt = _binary_args(probs, target, weight, None, reduction, "probs")
    if np.any(~((p >= 0) & (p <= 1))) or np.any(~((y >= 0) & (y <= 1))):
        raise ValueError("probs: all elements must be in [0, 1]")
    with np.errstate(all="ignore"):
        lp = np.maximum(np.log(p), -100)
        lq = np.maximum(np.log1p(-p), -100)
        loss = (w * ((y - 1) * lq - y * lp) * _log_unit(base)).astype(dt)
    return _reduce_elems(loss, reduction, dt)


def binary_cross_entropy_with_grad(probs, target, *, weight=None, reduction="mean", base=None,
                                   grad_output=1.0, num_threads=None):
    """(loss, grad): grad = w (p - y) / max((1 - p) p, 1e-12) * s, torch's formula."""
    loss = binary_cross_entropy(probs, target, weight=weight, reduction=reduction, base=base)
    p, y, w, _, dt = _binary_args(probs, target, weight, None, reduction, "probs")
    s = _elem_grad_scale(grad_output, reduction, p.size, base)
    # torch's EPSILON is the float 1e-12 (9.99999996e-13), also for double
    grad = (s * w * (p - y) / np.maximum((1 - p) * p, float(np.float32(1e-12)))).astype(dt)
    return loss, np.broadcast_to(grad, p.shape).copy()


def _softplus(x):
    """log(1 + exp(x)) without overflow."""
    return np.logaddexp(np.zeros((), x.dtype), x)


def binary_cross_entropy_with_logits(logits, target, *, weight=None, pos_weight=None,
                                     reduction="mean", base=None, num_threads=None):
    """w ((1 - y) softplus(x) + pw y softplus(-x)), a term with a zero coefficient being 0
    (algebraically torch's (1 - y) x - (1 + (pw - 1) y) log sigmoid(x))."""
    x, y, w, pw, dt = _binary_args(logits, target, weight, pos_weight, reduction, "logits")
    with np.errstate(all="ignore"):
        a, c = 1 - y, pw * y
        t1 = np.where(a == 0, 0.0, a * _softplus(x))
        t2 = np.where(c == 0, 0.0, c * _softplus(-x))
        loss = (w * (t1 + t2) * _log_unit(base)).astype(dt)
    return _reduce_elems(loss, reduction, dt)


def binary_cross_entropy_with_logits_with_grad(logits, target, *, weight=None, pos_weight=None,
                                               reduction="mean", base=None, grad_output=1.0,
                                               num_threads=None):
    """(loss, grad): grad = w ((1 - y) sigmoid(x) - pw y sigmoid(-x)) * s."""
    loss = binary_cross_entropy_with_logits(logits, target, weight=weight, pos_weight=pos_weight,
                                            reduction=reduction, base=base)
    x, y, w, pw, dt = _binary_args(logits, target, weight, pos_weight, reduction, "logits")
    s = _elem_grad_scale(grad_output, reduction, x.size, base)
    with np.errstate(all="ignore"):
        sig = np.exp(-_softplus(-x))          # sigmoid(x)
        sig_n = np.exp(-_softplus(x))         # sigmoid(-x)
        grad = (s * w * ((1 - y) * sig - pw * y * sig_n)).astype(dt)
    return loss, np.broadcast_to(grad, x.shape).copy()
