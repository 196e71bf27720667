"""The per-row statistics of a chunk of scored rows: the one function every scoring path calls.

Layer: between the kernels and the scoring engine.  ``row_scores`` has a fixed contract (below)
so that its body can be one fused kernel pass over memory; today it is written with fastxent's
kernels and NumPy, over sub-blocks of rows small enough to stay in cache, spread over threads
(NumPy and the kernels release the GIL).  ``fastxent.reference.score_rows`` is the plain float64
ground truth the tests compare it with.
"""
import atexit
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .._api import cross_entropy, softmax
from .._validation import F32, F64

__all__ = ["KINDS", "row_scores", "working_bytes"]

KINDS = ("logits", "log-probs", "probs")

# Rows are processed in sub-blocks of about this many elements (each thread's temporaries stay
# in its cache); the temporaries of one sub-block take at most _TEMPS times its element count.
SUB_ELEMS = 1 << 17
_TEMPS = 12                 # bytes per element: a float64 square and two boolean masks


def working_bytes(n_classes, n_threads):
    """Upper bound of the temporary memory ``row_scores`` allocates (beyond its outputs)."""
    rows = max(1, SUB_ELEMS // max(1, n_classes))
    return n_threads * rows * max(1, n_classes) * _TEMPS


def row_scores(x, labels, kind, ignore_index, eps, n_threads):
    """Per-row statistics of a chunk: ``(loss, rank, conf, brier, bad_row)``.

    x: 2-D (rows, C) C-contiguous float32/float64; labels: int64 (rows,); kind: "logits",
    "log-probs" or "probs"; ignore_index: int; eps: the probability clip of "probs" (as
    ``cross_entropy_from_probs``); n_threads: threads over the rows.

    Per row (float64 arrays, rank int64):

    * loss: the NLL of the label -- logits: logsumexp(x) - x[y]; log-probs: -x[y]; probs:
      -log(clip(q[y], eps, 1));
    * rank: the number of classes c with x[c] > x[y], plus those with x[c] == x[y] and c < y
      (NaN counts as larger than any number, as ``np.argmax`` sees it); rank < k is a top-k hit,
      rank == 0 a top-1 hit;
    * conf: the top-1 probability (softmax maximum for logits, exp(max) for log-probs, max q);
    * brier: sum_c (p_c - [c == y])^2 with p the row's probabilities.

    Rows whose label is ``ignore_index`` get loss 0, rank -1, conf 0 and brier 0.  bad_row is
    the first row whose label is outside [0, C) and not ``ignore_index`` (-1 if none); when it
    is >= 0 the other outputs are unspecified.
    """
    if x.ndim != 2 or x.dtype not in (F32, F64) or not x.flags.c_contiguous:
        raise TypeError("x: expected a C-contiguous 2-D float32 or float64 array")
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    n, C = x.shape
    loss = np.zeros(n)
    conf = np.zeros(n)
    brier = np.zeros(n)
    rank = np.full(n, -1, dtype=np.int64)
    bad = (labels < 0) | (labels >= C)
    if bad.any():
        bad &= labels != ignore_index
        if bad.any():
            return loss, rank, conf, brier, int(np.argmax(bad))
    if n == 0 or C == 0:
        return loss, rank, conf, brier, -1
    step = max(1, SUB_ELEMS // C)
    spans = [(a, min(n, a + step)) for a in range(0, n, step)]
    outs = (loss, rank, conf, brier)

    def run(part):
        for a, b in part:
            _sub_block(x, labels, a, b, kind, ignore_index, eps, outs)

    n_threads = min(n_threads, len(spans))
    if n_threads <= 1:
        run(spans)
    else:               # a static schedule: thread t takes sub-blocks t, t + T, t + 2T, ...
        for _ in _pool(n_threads).map(run, [spans[t::n_threads] for t in range(n_threads)]):
            pass
    return loss, rank, conf, brier, -1


def _sub_block(x, labels, a, b, kind, ignore_index, eps, outs):
    xs, y = x[a:b], labels[a:b]
    keep = y != ignore_index
    if keep.all():
        at = slice(a, b)
    else:
        rows = np.flatnonzero(keep)
        if not rows.size:
            return
        xs, y, at = xs[rows], y[rows], rows + a
    r = np.arange(y.shape[0])
    xy = xs[r, y]
    xy64 = xy.astype(np.float64)
    with np.errstate(all="ignore"):
        if kind == "logits":
            loss = cross_entropy(xs, y, reduction="none", num_threads=1).astype(np.float64)
            p = softmax(xs, num_threads=1)
            conf = p.max(axis=1).astype(np.float64)
            miss = -np.expm1(-loss)                 # 1 - p[y], accurate when p[y] is near 1
            sq = np.multiply(p, p, out=p)
        elif kind == "log-probs":
            loss = -xy64
            conf = np.exp(xs.max(axis=1).astype(np.float64))
            miss = -np.expm1(xy64)
            sq = np.exp(xs)
            sq *= sq
        else:
            loss = -np.log(np.clip(xy64, eps, 1.0))
            conf = xs.max(axis=1).astype(np.float64)
            miss = 1.0 - xy64
            sq = xs * xs
        sq[r, y] = 0
        # pairwise sums along the rows (NumPy's add.reduce): accurate in the row's own precision
        brier = miss * miss + sq.sum(axis=1).astype(np.float64)
        ranks = np.count_nonzero(xs > xy[:, None], axis=1)
        ties = np.count_nonzero(xs == xy[:, None], axis=1) > 1
        if ties.any():                          # equal values before the label count too
            t = np.flatnonzero(ties)
            lower = np.arange(xs.shape[1]) < y[t, None]
            ranks[t] += np.count_nonzero((xs[t] == xy[t, None]) & lower, axis=1)
    odd = np.isnan(brier) | np.isnan(xy64)      # a NaN somewhere in the row: rank it as argmax does
    if odd.any():
        ranks[odd] = _nan_ranks(xs[odd], y[odd], xy[odd])
    for out, v in zip(outs, (loss, ranks, conf, brier)):
        out[at] = v


def _nan_ranks(xs, y, xy):
    """Ranks of rows holding NaN, NaN counting as the largest value (ties by class index)."""
    isnan = np.isnan(xs)
    lower = np.arange(xs.shape[1]) < y[:, None]
    with np.errstate(invalid="ignore"):
        finite_rank = (np.count_nonzero(xs > xy[:, None], axis=1) + np.count_nonzero(isnan, axis=1)
                       + np.count_nonzero((xs == xy[:, None]) & lower, axis=1))
    nan_rank = np.count_nonzero(isnan & lower, axis=1)
    return np.where(np.isnan(xy), nan_rank, finite_rank)


# ------------------------------------------------------------------ the worker threads
_POOL = None
_POOL_SIZE = 0
_LOCK = threading.Lock()


def _pool(n):
    global _POOL, _POOL_SIZE
    with _LOCK:
        if _POOL is None or _POOL_SIZE < n:
            if _POOL is not None:
                _POOL.shutdown(wait=False)
            _POOL, _POOL_SIZE = ThreadPoolExecutor(n, thread_name_prefix="fastxent-score"), n
        return _POOL


def _reset_after_fork():
    global _POOL, _POOL_SIZE
    _POOL, _POOL_SIZE = None, 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
atexit.register(lambda: _POOL is not None and _POOL.shutdown(wait=False))
