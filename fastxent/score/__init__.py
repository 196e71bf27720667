"""Batch scoring: loss, perplexity, accuracy and calibration of stored model outputs.

Behind ``fastxent score`` and ``fastxent.dask``.  The subpackage has one responsibility per
module, in layers (each uses only the ones above it):

* ``readers``, ``_npy``, ``_formats``: one reader class per file format (.npy, .npz, shard
  directories, safetensors, Zarr, Parquet/Arrow), chosen by file signature;
* ``_inputs``: paths or arrays to validated readers and their layout (rows, classes, sequences);
* ``_rows``: ``row_scores``, the per-row statistics of a chunk (loss, rank, confidence, Brier);
* ``_exact``: exact sums; ``summary``: mergeable :class:`Totals` and the :class:`ScoreSummary`;
* ``engine``: chunks into reused buffers (the next read overlapping the current chunk's
  scoring) within the memory limit, and the run's outputs (``_output``: atomic files);
* this module: :func:`score_files` and :func:`score_arrays`, the Python API.

The mean NLL and every other total is an exact sum rounded once, so results are bit-identical
whatever the chunk size, the thread count or the number of Dask workers.
"""
import os

import numpy as np

from ._common import ScoreError, resident_bytes
from ._exact import ExactSum, ExactSums
from ._inputs import Inputs, inputs_from_arrays, load_offsets, open_inputs
from ._inputs import validate as validate_inputs
from ._npy import NpyReader, NpzReader
from ._options import DEFAULT_MEMORY_LIMIT, Options, options
from ._output import check_not_input, check_out_path
from .engine import Context, run_local
from .readers import Reader
from .summary import JSON_KEYS, ScoreSummary, Totals

__all__ = [
    "DEFAULT_MEMORY_LIMIT", "ExactSum", "ExactSums", "Inputs", "JSON_KEYS", "NpyArray",
    "NpyReader", "NpzReader",
    "Options", "Reader", "ScoreError", "ScoreSummary", "Totals", "check_labels", "context",
    "load_offsets", "open_inputs", "options", "score_arrays", "score_files", "sequences",
    "validate_inputs", "check_outputs", "inputs_from_arrays",
]

NpyArray = NpyReader          # an ndarray-like .npy file: shape, dtype, a[i:j] reads rows

_DOC_OPTIONS = """
    Options (keyword arguments; ``fastxent score`` has a flag for each):

    input: "auto" (default), "logits", "log-probs" or "probs".  "auto" reads probabilities
        when the rows of the first chunk are all in [0, 1] and sum to 1 (within 1e-3), and then
        checks every chunk; otherwise logits.  Probabilities are scored as
        ``cross_entropy_from_probs`` does (clipped at ``eps``), log-probabilities as -x[y].
    binary: one logit or probability per row, shape (N,) or (N, 1), labels 0/1: binary
        cross-entropy, accuracy at 0.5, Brier score and calibration error.
    weights: per-row sample weights (array or path): every mean becomes a weighted mean.
    offsets: S + 1 ascending row offsets (array or path) of ragged sequences laid end to end.
    shift: score position t against label t + 1 within each sequence (3-D logits (B, T, V)
        or ``offsets``); the last position of a sequence is not scored.
    per_sequence: ``out`` receives each sequence's summed NLL (implied by ``offsets``).
    ignore_index: rows with this label are not scored (default -100).
    base: report the mean NLL in this log base too (2: bits); the unit of ``out``.
    top_k: int or ints: top-k accuracies.  ece_bins: calibration bins (default 15).
    eps: probability clip of probabilities (default: machine epsilon of the computation).
    out: .npy path for the per-row NLL (shape of the labels; float64 for float64 scores, else
        float32), or per-sequence sums (float64), written atomically, chunk by chunk.
    per_class: .csv path for a per-class table (class, count, mean_nll, accuracy).
    chunk_rows: rows per chunk (default: about 32 MiB of scores, within memory_limit).
    num_threads: threads over the rows of a chunk (default: the OpenMP default).
    memory_limit: the most memory the call adds (bytes or "300MB"; default 300 MB).
    progress: a tqdm progress bar on stderr.

    Returns a :class:`ScoreSummary` (``as_dict()`` is the JSON of ``fastxent score --json``).
    Raises :class:`ScoreError` (a ValueError) with a one-line message naming the argument.
"""


def score_files(logits, labels=None, *, logits_key=None, labels_key=None, weights=None,
                offsets=None, input="auto", binary=False, shift=False, per_sequence=False,
                ignore_index=-100, base=None, top_k=(), ece_bins=15, eps=None, out=None,
                per_class=None, chunk_rows=None, num_threads=None,
                memory_limit=DEFAULT_MEMORY_LIMIT, progress=False):
    entry = resident_bytes()
    opts = options(input=input, binary=binary, ignore_index=ignore_index, base=base, top_k=top_k,
                   ece_bins=ece_bins, eps=eps, shift=shift, per_sequence=per_sequence,
                   chunk_rows=chunk_rows, num_threads=num_threads, memory_limit=memory_limit,
                   progress=progress)
    inputs = open_inputs(logits, labels, logits_key=logits_key, labels_key=labels_key,
                         weights=weights, binary=opts.binary)
    return _score(inputs, opts, offsets, out, per_class, entry)


score_files.__doc__ = """Score model outputs stored in files.

    logits: a path: .npy, .npz, safetensors, Zarr array or group, Parquet or Arrow file, or a
    directory of shards; labels: a path, or None when ``logits`` holds both (see
    :mod:`fastxent.score._inputs`).  logits_key / labels_key: the array, tensor or column names
    in files of several arrays (default "logits" / "labels").
""" + _DOC_OPTIONS


def score_arrays(logits, labels, *, weights=None, offsets=None, input="auto", binary=False,
                 shift=False, per_sequence=False, ignore_index=-100, base=None, top_k=(),
                 ece_bins=15, eps=None, out=None, per_class=None, chunk_rows=None,
                 num_threads=None, memory_limit=DEFAULT_MEMORY_LIMIT, progress=False):
    entry = resident_bytes()
    opts = options(input=input, binary=binary, ignore_index=ignore_index, base=base, top_k=top_k,
                   ece_bins=ece_bins, eps=eps, shift=shift, per_sequence=per_sequence,
                   chunk_rows=chunk_rows, num_threads=num_threads, memory_limit=memory_limit,
                   progress=progress)
    inputs = inputs_from_arrays(logits, labels, weights=weights, binary=opts.binary)
    return _score(inputs, opts, offsets, out, per_class, entry)


score_arrays.__doc__ = """:func:`score_files` for arrays at hand (ndarrays, memory maps, readers),
    read ``chunk_rows`` rows at a time: logits (N, C), (B, T, V) or binary (N,), labels of the
    matching shape.
""" + _DOC_OPTIONS


def sequences(inputs, opts, offsets):
    """The sequence offsets of a run: ``offsets`` validated, implied by 3-D logits, or None."""
    if offsets is not None and inputs.seq_len is not None:
        raise ScoreError("offsets: 3-D logits (B, T, V) are sequences already; offsets apply to "
                         "2-D logits laid end to end")
    if offsets is not None:
        offs = load_offsets(offsets, inputs.rows)
    elif inputs.seq_len is not None:
        offs = np.arange(inputs.row_shape[0] + 1, dtype=np.int64) * inputs.seq_len
    else:
        offs = None
    for flag, name in ((opts.shift, "shift"), (opts.per_sequence, "per_sequence")):
        if flag and offs is None:
            raise ScoreError(f"{name}: needs sequences: 3-D logits (B, T, V) with labels (B, T), "
                             "or offsets")
    return offs


def context(inputs, opts, per_class=False):
    """The :class:`~fastxent.score.engine.Context` of a run (its kind may still be "auto")."""
    row_bytes = sum(r.dtype.itemsize * (inputs.width if r is inputs.logits else 1)
                    for r in inputs.readers)
    return Context(kind=opts.input, binary=opts.binary, ignore_index=opts.ignore_index,
                   eps=opts.eps, n_threads=opts.num_threads, row_shape=inputs.row_shape,
                   shift=opts.shift, row_bytes=row_bytes,
                   totals=dict(top_k=opts.top_k, ece_bins=opts.ece_bins, binary=opts.binary,
                               weighted=inputs.weights is not None, n_classes=inputs.classes,
                               per_class=per_class))


def check_outputs(out, per_class, paths):
    """``out`` and ``per_class`` can be written and are none of the input ``paths``."""
    for path, what in ((out, "out"), (per_class, "per_class")):
        if path is not None:
            if not isinstance(path, (str, os.PathLike)) or not isinstance(os.fspath(path), str):
                raise TypeError(f"{what}: expected a file path (str or os.PathLike), got "
                                f"{type(path).__name__}")
            check_out_path(path, what)
            check_not_input(path, what, paths)
    if out is not None and per_class is not None:
        check_not_input(per_class, "per_class", [out])


def _input_paths(inputs, *extra):
    return inputs.paths + [os.fspath(p) for p in extra if isinstance(p, (str, os.PathLike))]


def _score(inputs, opts, offsets, out, per_class, entry):
    try:
        offs = sequences(inputs, opts, offsets)
        check_outputs(out, per_class, _input_paths(inputs, offsets))
        ctx = context(inputs, opts, per_class is not None)
    except BaseException:
        inputs.close()
        raise
    return run_local(inputs, opts, ctx, offs, out, per_class, entry)


def check_labels(labels, n_classes, ignore_index, row0=0, where="labels"):
    """Raise ScoreError naming the first label outside [0, C) that is not ``ignore_index``."""
    if not labels.size:
        return
    if labels.min() >= 0 and labels.max() < n_classes:
        return
    bad = ((labels < 0) | (labels >= n_classes)) & (labels != ignore_index)
    if bad.any():
        i = int(np.argmax(bad))
        raise ScoreError(f"{where}: label {labels[i]} at row {row0 + i} is out of range "
                         f"[0, {n_classes}) and is not the ignore index ({ignore_index})")
