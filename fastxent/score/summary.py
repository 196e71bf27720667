"""The metrics of a scoring run: mergeable totals of chunks, and the summary they give.

Layer: above the per-row statistics (``_rows.row_scores``), below the engine.  A chunk's rows
become a :class:`Totals` (exact sums, see ``_exact``), Totals merge in any order (a Dask worker
returns one per block), and :meth:`Totals.summary` turns them into a :class:`ScoreSummary`:

* mean NLL = sum of w * loss / sum of w over the scored rows (w = 1 without sample weights, as
  scikit-learn's ``log_loss(sample_weight=)``), perplexity, bits per item;
* top-1 and top-k accuracy (rank < k), the Brier score (mean of sum_c (p_c - [c = y])^2; for
  binary scores (p - y)^2);
* the expected calibration error of torchmetrics' ``MulticlassCalibrationError`` (norm "l1"):
  bins of the top-1 confidence with edges linspace(0, 1, B + 1), a bin counting confidences in
  [lo, hi) and one more bin for confidence 1, ECE = sum_b (n_b / n) |accuracy_b - confidence_b|;
  for binary scores (``BinaryCalibrationError``) the binned value is the probability of class 1
  and accuracy_b the fraction of positives.

Every figure but the per-class table and the per-sequence sums is exact (independent of chunks,
threads and workers).
"""
import dataclasses
import json
import math

import numpy as np

from .._validation import div
from ._exact import ExactSum, ExactSums

__all__ = ["Totals", "ScoreSummary", "JSON_KEYS"]


def _bin_of(conf, bins):
    """The calibration bin of each confidence: the index of the last of the edges
    linspace(0, 1, bins + 1) at or below it, within [0, bins] (NaN: bins).  The same as
    ``clip(searchsorted(edges, conf, side="right") - 1, 0, bins)``, by arithmetic: floor(conf *
    bins), moved by one where the rounded edges disagree."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    with np.errstate(invalid="ignore"):
        b = np.floor(np.clip(conf, 0.0, 1.0) * bins)
    b = np.where(np.isnan(b), bins, b).astype(np.intp)
    b -= (b > 0) & (conf < edges[b])
    b += (b < bins) & (conf >= edges[np.minimum(b + 1, bins)])
    return b


class Totals:
    """Sums over the scored rows seen so far (picklable; ``merge`` adds another Totals)."""

    def __init__(self, *, top_k=(), ece_bins=15, weighted=False, binary=False, n_classes=0,
                 per_class=False):
        self.ks = tuple(sorted({1, *top_k}))
        self.bins, self.weighted, self.binary = ece_bins, weighted, binary
        self.rows = self.scored = self.correct = self.bytes = 0
        self.weight = ExactSum() if weighted else 0
        self.nll, self.brier = ExactSum(), ExactSum()
        self.hits = {k: ExactSum() if weighted else 0 for k in self.ks}
        self.bin_n = ExactSums(ece_bins + 1) if weighted else np.zeros(ece_bins + 1, np.int64)
        self.bin_hits = ExactSums(ece_bins + 1) if weighted else np.zeros(ece_bins + 1, np.int64)
        self.bin_conf = ExactSums(ece_bins + 1)
        self.classes = None
        if per_class:
            self.classes = np.zeros((3, n_classes))      # weight, w * loss, w * hit per class

    # -------------------------------------------------------------------- adding rows
    def _tally(self, mask, w):
        return int(np.count_nonzero(mask)) if w is None else ExactSum(w[mask])

    def add(self, labels, loss, rank, conf, brier, weights=None, nbytes=0):
        """Add a chunk's per-row statistics (``row_scores``' outputs; ignored rows have rank -1)."""
        self.rows += labels.shape[0]
        self.bytes += nbytes
        keep = rank >= 0
        if not keep.all():
            labels, loss, rank, conf, brier = (a[keep] for a in (labels, loss, rank, conf, brier))
            weights = None if weights is None else weights[keep]
        w = weights if self.weighted else None
        n = labels.shape[0]
        self.scored += n
        top1 = rank == 0
        self.correct += int(np.count_nonzero(top1))
        if w is not None:
            self.weight.add(w)
            loss, brier = loss * w, brier * w
        self.nll.add(loss)
        self.brier.add(brier * 0.5 if self.binary else brier)
        for k in self.ks:
            t = self._tally(rank < k, w)
            if w is None:
                self.hits[k] += t
            else:
                self.hits[k].merge(t)
        if self.binary:        # the probability of class 1 against the label
            pos = labels == 1
            conf = np.where(top1 == pos, conf, 1.0 - conf)
            hit = pos
        else:
            hit = top1
        b = _bin_of(conf, self.bins)
        if w is None:
            self.bin_n += np.bincount(b, minlength=self.bins + 1)
            self.bin_hits += np.bincount(b[hit], minlength=self.bins + 1)
            self.bin_conf.add(conf, b)
        else:
            self.bin_n.add(w, b)
            self.bin_hits.add(w[hit], b[hit])
            self.bin_conf.add(conf * w, b)
        if self.classes is not None:
            C = self.classes.shape[1]
            ones = np.ones(n) if w is None else w
            self.classes[0] += np.bincount(labels, ones, C)
            self.classes[1] += np.bincount(labels, loss, C)
            self.classes[2] += np.bincount(labels[top1], ones[top1], C)
        return self

    def merge(self, other):
        self.rows += other.rows
        self.scored += other.scored
        self.correct += other.correct
        self.bytes += other.bytes
        if self.weighted:
            self.weight.merge(other.weight)
            for k in self.ks:
                self.hits[k].merge(other.hits[k])
            self.bin_n.merge(other.bin_n)
            self.bin_hits.merge(other.bin_hits)
        else:
            self.weight += other.weight
            for k in self.ks:
                self.hits[k] += other.hits[k]
            self.bin_n += other.bin_n
            self.bin_hits += other.bin_hits
        self.nll.merge(other.nll)
        self.brier.merge(other.brier)
        self.bin_conf.merge(other.bin_conf)
        if self.classes is not None:
            self.classes += other.classes
        return self

    # -------------------------------------------------------------------- results
    def _ratio(self, s):
        den = self.weight if self.weighted else self.scored
        if isinstance(s, ExactSum):
            return s.ratio(den)
        return div(float(s), float(den))          # counts (no sample weights)

    def ece(self):
        """Expected calibration error (nan without scored rows)."""
        n = [float(v) for v in (self.bin_n.sums if self.weighted else self.bin_n)]
        hits = [float(v) for v in (self.bin_hits.sums if self.weighted else self.bin_hits)]
        total = math.fsum(n)
        if not total > 0:
            return math.nan
        terms = []
        for b, nb in enumerate(n):
            if nb > 0:
                conf = self.bin_conf[b].ratio(self.bin_n[b] if self.weighted else int(nb))
                terms.append(nb / total * abs(hits[b] / nb - conf))
        return math.fsum(terms)

    def per_class_table(self):
        """(count, mean NLL, accuracy) per class as float64 arrays (nan where count is 0)."""
        w, loss, hit = self.classes
        with np.errstate(invalid="ignore", divide="ignore"):
            return w, loss / w, hit / w

    def summary(self, **fields):
        top = {k: self._ratio(self.hits[k]) for k in self.ks}
        return ScoreSummary(
            rows=self.rows, scored=self.scored, correct=self.correct,
            nll_sum=float(self.nll), mean_nll=self._ratio(self.nll), accuracy=top[1],
            top_k_accuracy={k: v for k, v in top.items() if k != 1},
            brier=self._ratio(self.brier), ece=self.ece(), ece_bins=self.bins,
            weight_sum=float(self.weight) if self.weighted else None, bytes=self.bytes,
            **fields)


@dataclasses.dataclass
class ScoreSummary:
    """The result of a scoring run.  NLL figures are in nats unless the name says ``_base``;
    means are weighted means when sample weights were given."""
    rows: int
    scored: int
    correct: int                    # rows whose top-1 prediction is the label (unweighted count)
    nll_sum: float                  # exact sum of the scored rows' (weighted) losses, nats
    mean_nll: float = math.nan
    accuracy: float = math.nan      # top-1 (binary: at probability 0.5)
    top_k_accuracy: dict = dataclasses.field(default_factory=dict)
    brier: float = math.nan
    ece: float = math.nan
    ece_bins: int = 15
    weight_sum: float | None = None
    classes: int = 0
    dtype: str = ""
    input: str = "logits"           # how the scores were read: logits, log-probs or probs
    binary: bool = False
    base: float | None = None
    seconds: float = 0.0
    bytes: int = 0                  # bytes of scores, labels and weights read
    sequences: int | None = None
    sequence_nll_sum: float | None = None
    out: str | None = None
    out_content: str = "per-row NLL"
    per_class: str | None = None

    @property
    def ignored(self):
        return self.rows - self.scored

    @property
    def weighted(self):
        return self.weight_sum is not None

    @property
    def mean_nll_base(self):
        return self.mean_nll / math.log(self.base) if self.base else self.mean_nll

    @property
    def perplexity(self):
        m = self.mean_nll
        return math.exp(m) if m < 709.78 or m != m else math.inf

    @property
    def bits_per_item(self):
        return self.mean_nll / math.log(2)

    @property
    def mean_sequence_nll(self):
        if self.sequences is None:
            return None
        return div(self.sequence_nll_sum, float(self.sequences))

    @property
    def rows_per_s(self):
        return self.rows / self.seconds if self.seconds > 0 else math.nan

    @property
    def gb_per_s(self):
        return self.bytes / self.seconds / 1e9 if self.seconds > 0 else math.nan

    def as_dict(self):
        """The summary as strict JSON-ready data (NaN and infinities become None); the keys are
        :data:`JSON_KEYS`, documented in the README."""
        d = {}
        for key in JSON_KEYS:
            v = getattr(self, key)
            if key == "top_k_accuracy":
                v = {str(k): _finite(a) for k, a in sorted(v.items())}
            d[key] = _finite(v)
        return d

    to_dict = as_dict

    def to_json(self, indent=1):
        return json.dumps(self.as_dict(), indent=indent, allow_nan=False)

    def format(self):
        """The text summary ``fastxent score`` prints."""
        unit = "nats" if self.base is None else ("bits" if self.base == 2 else f"log{self.base:g}")
        what = "binary scores" if self.binary else f"{self.classes:,} classes"
        head = f"rows              {self.rows:,} x {what} ({self.dtype}, read as {self.input})"
        lines = [head + (f", {self.ignored:,} ignored" if self.ignored else "")]
        if self.weighted:
            lines.append(f"sample weights    sum {self.weight_sum:.6g} (means are weighted)")
        nll = f"{self.mean_nll:.6f} nats"
        if self.base is not None:
            nll += f" = {self.mean_nll_base:.6f} {unit}"
        name = "mean BCE" if self.binary else "mean NLL"
        lines += [f"{name:<18}{nll}",
                  f"perplexity        {self.perplexity:.6g}",
                  f"bits per item     {self.bits_per_item:.6f}",
                  f"{'accuracy @0.5' if self.binary else 'top-1 accuracy':<18}{self.accuracy:.6f}"
                  f" ({self.correct:,} / {self.scored:,})"]
        for k, v in sorted(self.top_k_accuracy.items()):
            lines.append(f"{f'top-{k} accuracy':<18}{v:.6f}")
        lines += [f"{f'ECE ({self.ece_bins} bins)':<18}{self.ece:.6f}",
                  f"Brier score       {self.brier:.6f}"]
        if self.sequences is not None:
            m = self.mean_sequence_nll
            seq = f"{m:.6f} nats"
            if self.base is not None:
                seq += f" = {m / math.log(self.base):.6f} {unit}"
            lines += [f"sequences         {self.sequences:,}",
                      f"NLL per sequence  {seq} (mean of the per-sequence sums)",
                      f"per-token ppl     {self.perplexity:.6g}"]
        lines.append(f"throughput        {self.rows_per_s:,.0f} rows/s, {self.gb_per_s:.3f} GB/s "
                     f"({self.seconds:.3f} s)")
        if self.out:
            lines.append(f"written           {self.out} ({self.out_content}, {unit})")
        if self.per_class:
            lines.append(f"written           {self.per_class} (per-class table)")
        return "\n".join(lines)


JSON_KEYS = ("rows", "scored", "ignored", "classes", "dtype", "input", "binary", "weighted",
             "weight_sum", "mean_nll", "base", "mean_nll_base", "nll_sum", "perplexity",
             "bits_per_item", "accuracy", "correct", "top_k_accuracy", "ece", "ece_bins", "brier",
             "sequences", "sequence_nll_sum", "mean_sequence_nll", "seconds", "bytes",
             "rows_per_s", "gb_per_s", "out", "per_class")


def _finite(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (np.floating, np.integer)):
        return _finite(v.item())
    return v
