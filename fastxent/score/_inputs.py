"""What a scoring run reads: paths (or arrays) resolved to readers, validated as one layout.

Accepted (``logits``, ``labels`` are paths; see :mod:`fastxent.score.readers` for the formats):

* ``LOGITS LABELS``: one array each (a file holding several arrays gives the one named
  ``logits_key``/``labels_key``, by default "logits"/"labels", or its only array);
* ``FILE`` alone: a file holding both (.npz, safetensors, Zarr group, Parquet/Arrow table), by
  name or, failing that, the only two arrays (the float one is the logits);
* ``DIR`` alone: shards ``logits_<key>.npy`` + ``labels_<key>.npy`` paired by ``<key>`` in natural
  order (``logits_2`` before ``logits_10``); ``LOGITS_DIR LABELS_DIR``: every ``*.npy`` of each
  directory, in natural order, paired by position.

Layouts: logits (N, C) with labels (N,); sequences (B, T, V) with labels (B, T) (rows are the
B * T positions); binary: one logit or probability per row, (N,) or (N, 1), labels 0/1.
"""
import dataclasses
import math
import os

import numpy as np

from . import _formats, _npy  # noqa: F401  (registers the readers)
from ._common import ScoreError, natural_key
from .readers import ArrayReader, ConcatReader, Reader, format_of

__all__ = ["Inputs", "open_inputs", "inputs_from_arrays", "load_offsets", "open_array", "validate"]

LOGITS_DTYPES = ("float16", "float32", "float64", "bfloat16")


@dataclasses.dataclass
class Inputs:
    """Validated readers and their layout (rows are what one loss is computed for)."""
    logits: Reader
    labels: Reader
    weights: Reader | None = None
    binary: bool = False
    rows: int = 0
    classes: int = 0          # C (2 for binary inputs: a logit or probability per row)
    width: int = 0            # stored values per row of logits (1 for binary)
    seq_len: int | None = None
    row_shape: tuple = ()     # the shape of per-row outputs: (N,) or (B, T)

    @property
    def readers(self):
        return [r for r in (self.logits, self.labels, self.weights) if r is not None]

    @property
    def paths(self):
        return [p for r in self.readers for p in r.paths]

    def close(self):
        for r in self.readers:
            r.close()


def _wrap(what, fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except ScoreError as exc:
        msg = str(exc)
        raise ScoreError(msg if msg.startswith(f"{what}:") else f"{what}: {msg}") from None


def open_array(path, what, key=None, default_key=None):
    """The reader of the array ``path`` holds (by ``key``, ``default_key`` or as the only one)."""
    path = os.fspath(path)
    fmt = format_of(path, what)
    if fmt is None:
        raise ScoreError(f"{what}: {path} is a directory; expected a file of arrays or a "
                         "Zarr store")
    members = _wrap(what, fmt.members, path)
    if members == [None]:
        if key is not None:
            raise ScoreError(f"{what}_key: {path} holds a single array; a key ({key!r}) "
                             "applies to files of several arrays")
        return _wrap(what, fmt, path)
    if key is None:
        if default_key in members:
            key = default_key
        elif len(members) == 1:
            key = members[0]
        else:
            raise ScoreError(f"{what}: {path} has arrays {members}; expected '{default_key}' or a "
                             f"single array (or name one with {what}_key)")
    return _wrap(what, fmt, path, key)


def _open_both(path, logits_key, labels_key):
    """(logits, labels) readers of one file that holds both."""
    fmt = format_of(path, "logits")
    members = _wrap("logits", fmt.members, path)
    if members == [None]:
        raise ScoreError("labels: missing (needed unless logits is a file holding both arrays, "
                         "or a directory of logits_*/labels_* shards)")
    for key, what in ((logits_key, "logits_key"), (labels_key, "labels_key")):
        if key is not None and key not in members:
            raise ScoreError(f"{what}: {path} has no array {key!r} (it holds {members})")
    lk, yk = logits_key or "logits", labels_key or "labels"
    if lk in members and yk in members:
        pair = _wrap("logits", fmt, path, lk), _wrap("labels", fmt, path, yk)
    elif len(members) == 2 and logits_key is None and labels_key is None:
        a, b = (_wrap("logits", fmt, path, k) for k in members)
        if _is_float(b.dtype) and not _is_float(a.dtype) or (
                _is_float(a.dtype) == _is_float(b.dtype) and b.ndim > a.ndim):
            a, b = b, a
        pair = a, b
    else:
        raise ScoreError(f"logits: {path} has arrays {members}; expected '{lk}' and '{yk}' "
                         "(or exactly two arrays)")
    return pair


def _is_float(dt):
    return dt.kind == "f" or dt.name == "bfloat16"


def _shards(directory, prefix):
    names = [n for n in os.listdir(directory) if n.endswith(".npy") and n.startswith(prefix)
             and os.path.isfile(os.path.join(directory, n))]
    return {n[len(prefix):-4]: os.path.join(directory, n) for n in names}


def _open_shards(logits, labels):
    if labels is None:
        lg, lb = _shards(logits, "logits_"), _shards(logits, "labels_")
        if not lg:
            raise ScoreError(f"logits: directory {logits} has no logits_*.npy shards")
        odd = sorted(set(lg) ^ set(lb), key=natural_key)
        if odd:
            k = odd[0]
            have, need = ("logits", "labels") if k in lg else ("labels", "logits")
            raise ScoreError(f"labels: directory {logits} has no {need}_{k}.npy to pair with "
                             f"{have}_{k}.npy")
        keys = sorted(lg, key=natural_key)
        return [(lg[k], lb[k]) for k in keys]
    if format_of(labels, "labels") is not None or not os.path.isdir(labels):
        raise ScoreError("labels: must be a directory when logits is a directory (or left out "
                         "to use the labels_*.npy beside logits_*.npy)")
    lg, lb = _shards(logits, ""), _shards(labels, "")
    if not lg:
        raise ScoreError(f"logits: directory {logits} has no .npy files")
    if len(lg) != len(lb):
        raise ScoreError(f"labels: directory {labels} has {len(lb)} .npy files, the logits "
                         f"directory {logits} has {len(lg)}")
    return list(zip((lg[k] for k in sorted(lg, key=natural_key)),
                    (lb[k] for k in sorted(lb, key=natural_key))))


def open_inputs(logits, labels=None, *, logits_key=None, labels_key=None, weights=None,
                weights_key=None, binary=False):
    """Open and validate the inputs of a scoring run (see the module docstring)."""
    logits = os.fspath(logits)
    labels = None if labels is None else os.fspath(labels)
    fmt = format_of(logits, "logits")
    if fmt is None:
        pairs = []
        for a, b in _open_shards(logits, labels):
            pairs.append((_wrap("logits", _npy.NpyReader, a), _wrap("labels", _npy.NpyReader, b)))
    elif labels is None:
        pairs = [_open_both(logits, logits_key, labels_key)]
    else:
        pairs = [(open_array(logits, "logits", logits_key, "logits"),
                  open_array(labels, "labels", labels_key, "labels"))]
    return validate(pairs, _weights(weights, weights_key), binary)


def _weights(weights, key=None):
    """The reader of sample weights given as a path, a reader or an array (or None)."""
    if weights is None or isinstance(weights, Reader):
        return weights
    if isinstance(weights, (str, os.PathLike)):
        return open_array(weights, "weights", key, "weights")
    return ArrayReader(weights, "weights")


def inputs_from_arrays(logits, labels, *, weights=None, binary=False):
    """:class:`Inputs` over arrays at hand (ndarrays, memory maps, readers)."""
    def reader(a, what):
        return a if isinstance(a, Reader) else ArrayReader(a, what)

    return validate([(reader(logits, "logits"), reader(labels, "labels"))], _weights(weights),
                    binary)


def validate(pairs, weights=None, binary=False):
    """:class:`Inputs` of (logits, labels) reader pairs (shards, concatenated by rows), checked."""
    first = None
    for lg, lb in pairs:
        _check_pair(lg, lb, binary)
        if first is None:
            first = lg
        elif lg.shape[1:] != first.shape[1:] or lg.dtype != first.dtype:
            raise ScoreError(f"{_named('logits', lg)}: shape {lg.shape} {lg.dtype} does not "
                             f"match the first shard's (*, {', '.join(map(str, first.shape[1:]))}) "
                             f"{first.dtype}")
    if len(pairs) == 1:
        lg, lb = pairs[0]
    else:
        lg = ConcatReader([p[0] for p in pairs])
        lb = ConcatReader([p[1] for p in pairs], label=pairs[0][1].label)
    if binary:
        rows, width, classes, seq_len, row_shape = lg.shape[0], 1, 2, None, (lg.shape[0],)
    else:
        width = classes = lg.shape[-1]
        rows = math.prod(lg.shape[:-1])
        seq_len = lg.shape[1] if lg.ndim == 3 else None
        row_shape = tuple(lg.shape[:-1])
    if weights is not None:
        if weights.dtype.kind not in "fiu" and weights.dtype.name != "bfloat16":
            raise ScoreError(f"weights: expected real numbers, got dtype {weights.dtype}")
        if weights.shape not in (row_shape, (rows,)):
            raise ScoreError(f"weights: expected shape {row_shape} (one weight per row), got "
                             f"{weights.shape}")
    return Inputs(lg, lb, weights, binary, rows, classes, width, seq_len, row_shape)


def _named(what, reader):
    """"logits: PATH" for messages (just "logits" for an array without a path)."""
    return what if reader.label == what else f"{what}: {reader.label}"


def _check_pair(lg, lb, binary):
    name, lname = _named("logits", lg), _named("labels", lb)
    if lg.dtype.name not in LOGITS_DTYPES:
        raise ScoreError(f"{name}: must be float16, float32 or float64 (or bfloat16), "
                         f"got dtype {lg.dtype}")
    if lb.dtype.kind not in "iu":
        raise ScoreError(f"{lname}: labels must be integers, got dtype {lb.dtype}")
    if binary:
        if not (lg.ndim == 1 or (lg.ndim == 2 and lg.shape[1] == 1)):
            raise ScoreError(f"{name}: binary scores must be (N,) or (N, 1), got shape "
                             f"{lg.shape}")
        want = (lg.shape[0],)
        if lb.shape not in (want, (lg.shape[0], 1)):
            raise ScoreError(f"{lname}: expected {lg.shape[0]} labels (shape {want}), "
                             f"got shape {lb.shape}")
        return
    if lg.ndim not in (2, 3):
        raise ScoreError(f"{name}: logits must be 2-D (N, C) or 3-D (B, T, V), got shape "
                         f"{lg.shape} (one score per row: pass binary=True / --binary)")
    if lg.shape[-1] == 0:
        raise ScoreError(f"{name}: logits have no classes (shape {lg.shape})")
    want = tuple(lg.shape[:-1])
    if lb.ndim != len(want):
        dims = "1-D (N,)" if len(want) == 1 else "2-D (B, T)"
        raise ScoreError(f"{lname}: labels must be {dims}, got shape {lb.shape}")
    if lb.shape != want:
        if len(want) == 1:
            raise ScoreError(f"{lname}: {lb.shape[0]} labels for {want[0]} rows of "
                             f"logits ({name})")
        raise ScoreError(f"{lname}: shape {lb.shape} does not match the logits' "
                         f"{want} ({name})")


def load_offsets(offsets, n_rows):
    """Validated sequence offsets (int64, S + 1 entries) from an array or a path."""
    if isinstance(offsets, (str, os.PathLike)):
        r = open_array(offsets, "offsets", None, "offsets")
        what = f"offsets: {os.fspath(offsets)}"
        if r.ndim != 1 or r.dtype.kind not in "iu":
            raise ScoreError(f"{what}: must be a 1-D array of integers, got shape {r.shape} "
                             f"dtype {r.dtype}")
        with r:
            offs = _wrap("offsets", r.__getitem__, slice(None))
    else:
        what = "offsets"
        try:
            offs = np.asarray(offsets)
        except (TypeError, ValueError) as exc:
            raise ScoreError(f"offsets: expected a 1-D array of integers ({exc})") from None
    if offs.size == 0:
        raise ScoreError(f"{what}: is empty; it needs S + 1 entries from 0 to N")
    if offs.ndim != 1 or offs.dtype.kind not in "iu":
        raise ScoreError(f"{what}: must be a 1-D array of integers, got shape {offs.shape} "
                         f"dtype {offs.dtype}")
    if offs.dtype == np.uint64 and offs.max() > np.iinfo(np.int64).max:
        raise ScoreError(f"{what}: value {offs.max()} is larger than the number of rows")
    offs = np.ascontiguousarray(offs, dtype=np.int64)
    if offs[0] != 0:
        raise ScoreError(f"{what}: must start at 0, got {offs[0]}")
    if offs[-1] != n_rows:
        raise ScoreError(f"{what}: must end at the number of rows {n_rows}, got {offs[-1]}")
    step = np.diff(offs)
    if (step < 0).any():
        i = int(np.argmax(step < 0))
        raise ScoreError(f"{what}: must be non-decreasing, but offsets[{i + 1}] = {offs[i + 1]} "
                         f"< offsets[{i}] = {offs[i]}")
    return offs
