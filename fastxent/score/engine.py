"""The scoring engine: chunks of rows through ``row_scores`` into :class:`Totals`.

Layer: the top of ``fastxent.score`` (``score_files``/``score_arrays`` and ``fastxent.dask`` call
it).  The local run reads chunks of rows into two reused buffers: while the main thread scores
chunk k (``row_scores`` spreads its rows over threads, and the kernels release the GIL), a
reader thread fills the other buffer with chunk k + 1.  Scores of a native-endian .npy are not
copied: the reader thread maps the rows of chunk k + 1 (a window whose pages it populates
ahead) and the window is unmapped once chunk k + 1 is scored.  The chunk size comes from the memory
limit, so the resident memory of a run stays bounded whatever the input size: two chunk
buffers, one read copy where a format needs one, the per-row statistics of a chunk, the
``row_scores`` temporaries and the per-sequence and per-class tables; ``--out`` is written to
its file chunk by chunk.  Totals are exact sums, so the summary does not depend on the chunking.
"""
import dataclasses
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ._common import ScoreError, format_bytes, resident_bytes
from ._exact import ExactSum
from ._output import NpyWriter, commit_all, csv_file, npy_file
from ._rows import row_scores, working_bytes
from .summary import Totals

__all__ = ["Context", "Run", "score_chunk", "detect_kind", "run_local", "plan_rows",
           "compute_dtype", "CHUNK_BYTES", "DETECT_BYTES", "detect_rows", "Buffers", "read_chunk",
           "read_rows"]

CHUNK_BYTES = 32 << 20         # scores per chunk when memory allows (fewer, larger chunks: the
                               # per-chunk bookkeeping of the exact sums is amortised)
DETECT_BYTES = 8 << 20         # input="auto" decides from the first rows holding this many bytes


def detect_rows(width, cdtype, chunk_rows=None):
    """How many first rows ``input="auto"`` looks at (the same locally and with Dask)."""
    return chunk_rows or max(1, DETECT_BYTES // max(1, width * cdtype.itemsize))
SLACK = 4 << 20                # interpreter objects, thread stacks, small temporaries
_ROW_EXTRA = 160               # bytes per row: labels, weights, row statistics, summary masks


# ============================================================================ input kinds
def compute_dtype(dtype):
    """float64 scores (any byte order) are scored in float64, every other float in float32."""
    return np.dtype(np.float64 if dtype.kind == "f" and dtype.itemsize == 8 else np.float32)


def _probability_rows(x, binary):
    """Per row: True when its values are in [0, 1] (and, for classes, sum to 1 within 1e-3);
    rows with NaN or inf are None-like (masked out through the second array)."""
    finite = np.isfinite(x).all(axis=1)
    with np.errstate(invalid="ignore"):
        ok = (x.min(axis=1) >= 0) & (x.max(axis=1) <= 1)
        if not binary:
            ok &= np.abs(x.sum(axis=1, dtype=np.float64) - 1.0) <= 1e-3
    return ok, finite


def detect_kind(x, binary):
    """'probs' when the finite rows of ``x`` (rows, width) are all probabilities, else 'logits'."""
    ok, finite = _probability_rows(x, binary)
    return "probs" if finite.any() and ok[finite].all() else "logits"


def _check_probs(x, row0, binary, detected, first_rows):
    """Probabilities must be >= 0; auto-detected ones must keep looking like probabilities."""
    if detected:
        ok, finite = _probability_rows(x, binary)
        bad = finite & ~ok
        if bad.any():
            r = row0 + int(np.argmax(bad))
            raise ScoreError(f"input: the first {first_rows:,} rows are probabilities (input='auto'"
                             f"), but row {r} is not (values in [0, 1] summing to 1); pass "
                             "input='logits' or input='probs'")
    with np.errstate(invalid="ignore"):
        neg = x < 0
    if neg.any():
        r, c = np.unravel_index(int(np.argmax(neg)), x.shape)
        raise ScoreError(f"logits: probabilities must be non-negative, got {x[r, c]!r} at row "
                         f"{row0 + r}")


def _two_classes(x, kind, out):
    """One score per row as the two columns of class 0 and class 1."""
    s = x[:, 0]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if kind == "logits":
            out[:, 0] = 0
        elif kind == "probs":
            out[:, 0] = 1 - s
        else:     # log(1 - exp(s)), accurate at both ends (log1mexp)
            s64 = s.astype(np.float64)
            near = s64 > -math.log(2)
            out[:, 0] = np.where(near, np.log(-np.expm1(s64)), np.log1p(-np.exp(s64)))
    out[:, 1] = s
    return out


# ============================================================================ one chunk
@dataclasses.dataclass
class Context:
    """What scoring a chunk needs besides its rows (small and picklable: Dask sends it)."""
    kind: str
    binary: bool
    ignore_index: int
    eps: float | None
    n_threads: int
    totals: dict                       # Totals keyword arguments
    row_shape: tuple = ()              # (N,) or (B, T): row numbers in messages
    shift: bool = False
    detected: bool = False             # kind auto-detected as probs: every chunk is checked
    first_rows: int = 0
    keep_losses: bool = False
    row_bytes: int = 0                 # stored bytes of a row's scores, label and weight


def score_chunk(x, labels, weights, row0, ctx, offsets=None, totals=None):
    """Score rows ``row0 .. row0 + len(x)``: (Totals, per-row losses or None, sequence part).

    x: (rows, width) float32/float64 C-contiguous; labels: int64 (already shifted);
    weights: float64 or None; offsets: the sequence offsets (or ``(seq0, offsets[seq0:])`` part)
    for per-sequence sums; totals: the Totals to add the rows to (default: new ones).
    """
    n = x.shape[0]
    if ctx.kind == "probs":
        _check_probs(x, row0, ctx.binary, ctx.detected, ctx.first_rows)
    if weights is not None:
        bad = ~(weights >= 0) | ~np.isfinite(weights)
        if bad.any():
            r = int(np.argmax(bad))
            raise ScoreError(f"weights: sample weights must be finite and >= 0, got "
                             f"{float(weights[r])} at {_where(row0 + r, ctx, False)}")
    scores = _two_classes(x, ctx.kind, np.empty((n, 2), x.dtype)) if ctx.binary else x
    loss, rank, conf, brier, bad = row_scores(scores, labels, ctx.kind, ctx.ignore_index,
                                              ctx.eps, ctx.n_threads,
                                              max((1, *ctx.totals.get("top_k", ()))))
    if bad >= 0:
        C = scores.shape[1]
        raise ScoreError(f"labels: label {labels[bad]} at {_where(row0 + bad, ctx, ctx.shift)} "
                         f"is out of range [0, {C}) and is not the ignore index "
                         f"({ctx.ignore_index})")
    part = (Totals(**ctx.totals) if totals is None else totals).add(
        labels, loss, rank, conf, brier, weights, nbytes=n * ctx.row_bytes)
    seq = None if offsets is None else _sequence_sums(loss, row0, offsets)
    return part, (loss if ctx.keep_losses else None), seq


def _where(row, ctx, shifted):
    """'row R' or 'index (b, t)' of the label that row ``row`` was scored against."""
    r = row + 1 if shifted else row
    if len(ctx.row_shape) == 1:
        return f"row {r}"
    return f"index {tuple(int(i) for i in np.unravel_index(r, ctx.row_shape))}"


def _sequence_sums(losses, row0, offsets):
    """(s0, float64 sums of the chunk's rows for sequences s0, s0 + 1, ...)."""
    base, offs = offsets if isinstance(offsets, tuple) else (0, offsets)
    n = losses.shape[0]
    if n == 0:
        return 0, np.zeros(0)
    lo = int(np.searchsorted(offs, row0, side="right")) - 1
    hi = int(np.searchsorted(offs, row0 + n - 1, side="right")) - 1
    bounds = np.clip(offs[lo:hi + 2], row0, row0 + n) - row0
    ids = np.repeat(np.arange(hi - lo + 1), np.diff(bounds))
    return base + lo, np.bincount(ids, weights=losses, minlength=hi - lo + 1)


def offsets_part(offsets, row0, rows):
    """The part ``(seq0, offsets[seq0:seq1 + 2])`` of the offsets a block of rows needs."""
    if rows == 0:
        return (0, offsets[:1])
    lo = int(np.searchsorted(offsets, row0, side="right")) - 1
    hi = int(np.searchsorted(offsets, row0 + rows - 1, side="right")) - 1
    return (lo, offsets[lo:hi + 2])


def shift_labels(labels, row0, ends, ignore_index):
    """Labels of rows row0.. already read one position ahead: the last row of each sequence
    (``ends``: sorted row numbers) has no next token and is ignored (in place)."""
    n = labels.shape[0]
    a, b = np.searchsorted(ends, [row0, row0 + n])
    labels[ends[a:b] - row0] = ignore_index
    return labels


# ============================================================================ a run
class Run:
    """Totals, --out, per-sequence sums and the per-class table of one run; parts of chunks or
    Dask blocks are added in any order."""

    def __init__(self, inputs, opts, ctx, offsets=None, out=None, per_class=None):
        self.inputs, self.opts, self.ctx = inputs, opts, ctx
        self.totals = Totals(**ctx.totals)
        self.offsets, self.per_class = offsets, per_class
        self.out = None if out is None else os.fspath(out)
        self.per_seq_out = offsets is not None and (opts.per_sequence or inputs.seq_len is None)
        self.seq = None if offsets is None else np.zeros(offsets.shape[0] - 1)
        self.edges = {}            # sequence -> [(row0, partial sum)] of sequences cut by chunks
        self.writer = None
        if self.out is not None and not self.per_seq_out:
            self.writer = NpyWriter(self.out, inputs.row_shape, compute_dtype(inputs.logits.dtype))

    def add(self, row0, part, losses=None, seq=None):
        """Add a chunk's results: ``part`` its Totals (or this run's own ``totals``, which the
        chunk was added to directly), its per-row losses and sequence sums."""
        if part is not self.totals:
            self.totals.merge(part)
        if self.writer is not None and losses is not None and losses.size:
            self.writer.write(row0, losses * self.opts.scale)
        if seq is not None and seq[1].size:
            s0, sums = seq
            k = sums.shape[0]
            self.seq[s0 + 1:s0 + k - 1] = sums[1:-1]          # sequences inside the chunk
            for s, v in {s0: sums[0], s0 + k - 1: sums[-1]}.items():
                self.edges.setdefault(s, []).append((row0, v))

    def abort(self):
        if self.writer is not None:
            self.writer.abort()
            self.writer = None

    def execute(self, work):
        """``work(add)`` scores the chunks, calling ``add(row0, totals, losses, sequences)`` for
        each (any order); then the summary.  Any error or interruption removes the outputs."""
        bar = progress_bar(self.inputs.rows, self.opts.progress)
        t0 = time.perf_counter()
        shown = 0

        def add(row0, part, losses=None, seq=None):
            nonlocal shown
            self.add(row0, part, losses, seq)
            bar.update(self.totals.rows - shown)
            shown = self.totals.rows

        try:
            work(add)
            return self.finish(time.perf_counter() - t0)
        except BaseException:
            self.abort()
            raise
        finally:
            bar.close()

    def finish(self, seconds, **fields):
        t = self.totals
        summary = t.summary(classes=self.inputs.classes, dtype=self.inputs.logits.dtype.name,
                            input=self.ctx.kind, binary=self.inputs.binary, base=self.opts.base,
                            seconds=seconds, **fields)
        if self.seq is not None:
            for s, parts in self.edges.items():       # in row order: a fixed order of additions
                total = 0.0
                for _, v in sorted(parts, key=lambda p: p[0]):
                    total += v
                self.seq[s] = total
            summary.sequences = self.seq.shape[0]
            summary.sequence_nll_sum = float(ExactSum(self.seq) if t.weighted else t.nll)
        files = []                 # every output is written first, then all are renamed
        try:
            if self.per_class is not None:
                count, mean, acc = t.per_class_table()
                keep = np.flatnonzero(count > 0)
                files.append(csv_file(self.per_class, ("class", "count", "mean_nll", "accuracy"),
                                      (keep.tolist(), count[keep], mean[keep], acc[keep])))
                summary.per_class = os.fspath(self.per_class)
            if self.out is not None:
                if self.per_seq_out:
                    files.append(npy_file(self.out, self.seq * self.opts.scale))
                    summary.out_content = "per-sequence NLL"
                else:
                    files.append(self.writer)
                    self.writer = None
                summary.out = self.out
        except BaseException:
            for f in files:
                f.abort()
            raise
        commit_all(files)
        return summary


def plan_rows(inputs, opts, cdtype, fixed):
    """Rows per chunk: ``opts.chunk_rows`` or about CHUNK_BYTES of scores, at most what the
    memory limit leaves after ``fixed`` bytes, aligned to the storage chunks when possible."""
    w, src = inputs.width, inputs.logits
    per_row = 2 * w * cdtype.itemsize + _ROW_EXTRA
    if src.staging:
        per_row += w * src.dtype.itemsize
    if inputs.binary:
        per_row += 2 * cdtype.itemsize
    budget = opts.memory_limit - fixed - SLACK
    if budget < per_row:
        need = fixed + SLACK + per_row
        err = ScoreError(f"memory_limit: {format_bytes(opts.memory_limit)} is too small for rows "
                         f"of {w:,} values (needs at least {format_bytes(need)})")
        err.needed = need
        raise err
    target = opts.chunk_rows or max(1, CHUNK_BYTES // max(1, w * cdtype.itemsize))
    rows = max(1, min(target, budget // per_row, max(inputs.rows, 1)))
    sr = src.storage_rows
    if opts.chunk_rows is None and sr and sr <= rows:
        rows -= rows % sr
    return rows


def _fixed_bytes(inputs, opts, offsets, per_class):
    fixed = working_bytes(inputs.classes, opts.num_threads)
    fixed += sum(r.overhead for r in inputs.readers)
    if offsets is not None:
        fixed += 16 * offsets.shape[0]
    if per_class:
        fixed += 24 * inputs.classes
    return fixed


class Buffers:
    """One chunk's rows: the scores (in a reused buffer, or a memory-mapped window of the file
    when it holds them as they are scored), labels and weights."""

    def __init__(self, rows, width, cdtype, weighted):
        self.x = np.empty((rows, width), cdtype)
        self.y = np.empty(rows, np.int64)
        self.w = np.empty(rows) if weighted else None
        self.window = None

    def release(self):
        if self.window is not None:
            self.window.release()
            self.window = None


def read_rows(reader, what, start, stop, out, width):
    """``reader.read`` with its errors named after the argument ``what``."""
    try:
        if what == "labels" and reader.dtype.kind == "u" and reader.dtype.itemsize == 8:
            tmp = reader.read(start, stop, np.empty(stop - start, np.uint64), 1)
            big = tmp > np.iinfo(np.int64).max
            if big.any():
                i = int(np.argmax(big))
                raise ScoreError(f"labels: label {tmp[i]} at row {start + i} is out of range")
            out[...] = tmp
            return out
        return reader.read(start, stop, out, width)
    except ScoreError as exc:
        msg = str(exc)
        raise ScoreError(msg if msg.startswith(what + ":") else f"{what}: {msg}") from None


def read_chunk(inputs, ctx, ends, start, stop, buf):
    """Rows [start, stop) of logits, labels (shifted: one ahead) and weights into ``buf``."""
    n = stop - start
    x, y = buf.x[:n], buf.y[:n]
    buf.release()
    view = getattr(inputs.logits, "window", None)
    win = None if view is None or ctx.binary else view(start, stop, inputs.width, buf.x.dtype)
    if win is not None:         # no copy: scored straight from the page cache
        buf.window, x = win, win.array
    else:
        read_rows(inputs.logits, "logits", start, stop, x, inputs.width)
    if ctx.shift:
        last = min(stop + 1, inputs.rows)
        read_rows(inputs.labels, "labels", start + 1, last, y[:last - start - 1], 1)
        y[last - start - 1:] = ctx.ignore_index
        shift_labels(y, start, ends, ctx.ignore_index)
    else:
        read_rows(inputs.labels, "labels", start, stop, y, 1)
    w = None if buf.w is None else read_rows(inputs.weights, "weights", start, stop, buf.w[:n], 1)
    return x, y, w


def sequence_ends(offsets):
    """Sorted row numbers of the last row of each non-empty sequence."""
    return np.unique(offsets[1:][np.diff(offsets) > 0] - 1)


def run_local(inputs, opts, ctx, offsets=None, out=None, per_class=None, entry_rss=None):
    """Score ``inputs`` on this machine (``ctx``: a :class:`Context`, its kind possibly "auto");
    returns the :class:`ScoreSummary`.  ``entry_rss``: the resident memory when the call began
    (what the run grew since counts against ``opts.memory_limit``)."""
    try:
        cdtype = compute_dtype(inputs.logits.dtype)
        growth = max(0, resident_bytes() - entry_rss) if entry_rss else 0
        K = plan_rows(inputs, opts, cdtype, growth + _fixed_bytes(inputs, opts, offsets, per_class))
        bufs = [Buffers(K, inputs.width, cdtype, inputs.weights is not None) for _ in range(2)]
        ends = None if offsets is None else sequence_ends(offsets)
        N = inputs.rows
        spans = [(a, min(N, a + K)) for a in range(0, N, K)]
        first = None
        if ctx.kind == "auto":          # from the first chunk, then checked in every chunk
            first = read_chunk(inputs, ctx, ends, *spans[0], bufs[0]) if spans else None
            k = min(detect_rows(inputs.width, cdtype, opts.chunk_rows), spans[0][1] if spans else 0)
            ctx.kind = "logits" if first is None else detect_kind(first[0][:k], inputs.binary)
            ctx.detected, ctx.first_rows = ctx.kind == "probs", k
        if ctx.eps is None:
            ctx.eps = float(np.finfo(cdtype).eps)
        ctx.keep_losses = out is not None

        def work(add):
            nonlocal first
            chunk, first = first, None      # no reference left once scored: its window unmaps
            with ThreadPoolExecutor(1, thread_name_prefix="fastxent-read") as pool:
                pending = None
                for k, (a, b) in enumerate(spans):
                    if chunk is None:
                        chunk = (pending.result() if pending is not None
                                 else read_chunk(inputs, ctx, ends, a, b, bufs[k % 2]))
                    pending = None
                    if k + 1 < len(spans):      # the next read overlaps this chunk's scoring
                        pending = pool.submit(read_chunk, inputs, ctx, ends, *spans[k + 1],
                                              bufs[(k + 1) % 2])
                    try:
                        add(a, *score_chunk(*chunk, a, ctx, offsets, run.totals))
                    except BaseException:
                        if pending is not None:
                            _wait_quietly(pending)
                        raise
                    chunk = None

        try:
            run = Run(inputs, opts, ctx, offsets, out, per_class)
            return run.execute(work)
        finally:
            for b in bufs:
                b.release()
    finally:
        inputs.close()


def _wait_quietly(future):
    try:
        future.result()
    except BaseException:  # noqa: BLE001 - the first error is the one reported
        pass


# ============================================================================ progress
class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def progress_bar(total, enabled, desc="scoring"):
    """A tqdm bar on stderr when ``enabled`` and tqdm is installed, otherwise a no-op."""
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, unit="row", unit_scale=True, desc=desc, file=sys.stderr,
                dynamic_ncols=True, leave=False)
