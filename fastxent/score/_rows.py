"""The per-row statistics of a chunk of scored rows: the one function every scoring path calls.

Layer: between the kernels and the scoring engine.  ``row_scores`` has a fixed contract (below);
its body is one kernel call that reads each row from memory once and computes the loss (through
the cross-entropy's own per-row formula), the rank of the label, the top-1 confidence and the
Brier score together, threads over the rows.  ``fastxent.reference.score_rows`` is the plain
float64 ground truth the tests compare it with.
"""
import numpy as np

from .. import _kernels
from .._validation import F32, F64, rows_per_block

__all__ = ["KINDS", "row_scores", "working_bytes"]

KINDS = ("logits", "log-probs", "probs")
_KIND_CODE = {"logits": "SCORE_LOGITS", "log-probs": "SCORE_LOGPROBS", "probs": "SCORE_PROBS"}


def working_bytes(n_classes, n_threads):
    """Upper bound of the temporary memory ``row_scores`` allocates (beyond its outputs): a
    copy of a strided row per thread."""
    return n_threads * 8 * max(1, n_classes)


def row_scores(x, labels, kind, ignore_index, eps, n_threads, rank_cap=None):
    """Per-row statistics of a chunk: ``(loss, rank, conf, brier, bad_row)``, from one read of
    each row by the kernel ``fastxent._xent.score_rows`` (see fastxent/fx_score.h), threads over
    the rows.

    x: 2-D (rows, C) C-contiguous float32/float64; labels: int64 (rows,); kind: "logits",
    "log-probs" or "probs"; ignore_index: int; eps: the probability clip of "probs" (as
    ``cross_entropy_from_probs``); n_threads: threads over the rows; rank_cap: ranks at or above
    it are reported as rank_cap (the largest k of the top-k accuracies wanted; None: exact
    ranks).  With rank_cap 1 the kernel counts nothing for the rank of logits.

    Per row (float64 arrays, rank int64):

    * loss: the NLL of the label -- logits: logsumexp(x) - x[y] (fastxent.cross_entropy's own
      row loss, bit for bit); log-probs: -x[y]; probs: -log(clip(q[y], eps, 1));
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
    if n == 0 or C == 0:                 # no class: every row is ignored, or has a bad label
        bad = labels != ignore_index
        return (np.zeros(n), np.full(n, -1, dtype=np.int64), np.zeros(n), np.zeros(n),
                int(np.argmax(bad)) if bad.any() else -1)
    # the kernel writes every row of the four outputs
    loss, conf, brier, rank = np.empty(n), np.empty(n), np.empty(n), np.empty(n, np.int64)
    y = np.ascontiguousarray(labels, dtype=np.int64)
    kern = _kernels.xent
    bad = kern.score_rows(x, y, getattr(kern, _KIND_CODE[kind]), int(ignore_index), float(eps),
                          loss, rank, conf, brier, rows_per_block(C), max(1, int(n_threads)),
                          C if rank_cap is None else max(1, min(int(rank_cap), C)))
    return loss, rank, conf, brier, int(bad)


