"""Batch scoring: cross-entropy, perplexity and accuracy of stored logits, streamed in row chunks.

Behind ``fastxent score`` (and ``fastxent.dask.score_summary``).  Inputs are memory-mapped and read
one chunk of rows at a time, so files larger than RAM work: only one chunk's logits (plus the
per-row outputs) are ever in memory.

Inputs (see :func:`open_inputs`):

* ``LOGITS.npy LABELS.npy``: logits (N, C) float16/float32/float64, labels (N,) of any integer dtype;
* ``DATA.npz``: an archive holding arrays ``logits`` and ``labels`` (or exactly two arrays: the 2-D
  one is the logits, the 1-D one the labels); ``LOGITS.npz LABELS.npz``: one array each (or keys
  ``logits``/``labels``).  Uncompressed members (``np.savez``) are memory-mapped; compressed ones
  (``np.savez_compressed``) are decompressed as a stream, chunk by chunk;
* ``DIR``: a directory of shards ``logits_<key>.npy`` + ``labels_<key>.npy``, paired by ``<key>`` and
  read in natural order of ``<key>`` (``logits_2`` before ``logits_10``); ``LOGITS_DIR LABELS_DIR``:
  every ``*.npy`` of each directory, in natural order, paired by position.

Per chunk: ``fastxent.cross_entropy(..., reduction="none")`` gives the loss of each row (nats) and
``argmax`` the top-1 prediction.  The total NLL is an *exact* sum (:class:`ExactSum`: every float
is added as an integer mantissa per binary exponent), so the mean is correctly rounded and
bit-identical whatever the chunk size, thread count or number of Dask workers.  Rows whose label
is ``ignore_index`` are left out of the mean and the accuracy.

``offsets`` (S + 1 ascending integers, ``offsets[0] == 0``, ``offsets[-1] == N``, as CSR row
pointers) splits the rows into S sequences laid end to end; sequence s holds rows
``offsets[s]:offsets[s+1]`` and gets the sum of its rows' losses.
"""
import dataclasses
import math
import os
import re
import sys
import tempfile
import time
import zipfile

import numpy as np

from ._validation import div as _div

__all__ = [
    "ExactSum",
    "NpyArray",
    "ScoreError",
    "ScoreSummary",
    "open_inputs",
    "load_offsets",
    "score_arrays",
    "score_files",
]

# Default chunk: about this many bytes of logits (the chunk is read twice, by the kernel and by
# argmax, so it should stay in the last-level cache).
CHUNK_BYTES = 8 * 2**20
LOGITS_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"


class ScoreError(ValueError):
    """A problem with the scoring inputs or options; its message is one line."""

    def __init__(self, message):
        super().__init__(" ".join(str(message).split()))


# ============================================================================ exact summation
class ExactSum:
    """The exact sum of many floats, rounded once at the end.

    Each finite float is ``mantissa * 2**p`` with an integer mantissa; ``add`` totals the
    mantissas per exponent with ``np.bincount`` (exact: fewer than 2**53 in each bucket) and
    keeps the totals as Python integers.  The result is therefore independent of how the values
    are split into chunks, of their order and of where they were added (sums from Dask workers
    are combined with ``merge``).  Non-finite values make the result nan or +-inf as IEEE
    addition would.  Picklable.
    """

    __slots__ = ("buckets", "nan", "pinf", "ninf")

    def __init__(self, values=None):
        self.buckets = {}   # power of two p -> integer total of the mantissas at scale 2**p
        self.nan = self.pinf = self.ninf = False
        if values is not None:
            self.add(values)

    def __getstate__(self):
        return (self.buckets, self.nan, self.pinf, self.ninf)

    def __setstate__(self, state):
        self.buckets, self.nan, self.pinf, self.ninf = state

    def add(self, values):
        x = np.asarray(values)
        if x.dtype.kind != "f":
            x = x.astype(np.float64)
        x = x.reshape(-1)
        if not x.size:
            return self
        if not np.isfinite(x).all():
            bad = ~np.isfinite(x)
            special = x[bad]
            self.nan |= bool(np.isnan(special).any())
            self.pinf |= bool((special == np.inf).any())
            self.ninf |= bool((special == -np.inf).any())
            x = x[~bad]
        if x.dtype.itemsize > 4:
            x = x.astype(np.float64, copy=False)
            step, add = 1 << 26, self._add_f64
        else:
            x = x.astype(np.float32, copy=False)
            step, add = 1 << 28, self._add_f32
        if (x < 0).any():
            neg = x < 0
            for part, sign in ((x[~neg], 1), (-x[neg], -1)):
                for i in range(0, part.size, step):
                    add(part[i:i + step], sign)
        else:
            for i in range(0, x.size, step):
                add(x[i:i + step], 1)
        return self

    def _collect(self, totals, sign, shift, scale=0):
        buckets = self.buckets
        for e in np.flatnonzero(totals).tolist():
            p = max(e, 1) - shift
            buckets[p] = buckets.get(p, 0) + sign * (int(totals[e]) << scale)

    def _add_f32(self, x, sign):
        # float32 = m * 2**(max(e, 1) - 150), m < 2**24; < 2**28 values: bucket totals < 2**52.
        bits = np.ascontiguousarray(x).view(np.int32)
        e = bits >> 23
        m = bits & 0x7FFFFF
        m[e != 0] |= 0x800000
        self._collect(np.bincount(e, m, 256), sign, 150)

    def _add_f64(self, x, sign):
        # float64 = m * 2**(max(e, 1) - 1075), m < 2**53, split into 27 + 26 bits; < 2**26 values.
        bits = np.ascontiguousarray(x).view(np.int64)
        e = bits >> 52
        m = bits & ((1 << 52) - 1)
        m[e != 0] |= 1 << 52
        self._collect(np.bincount(e, m >> 26, 2048), sign, 1075, 26)
        self._collect(np.bincount(e, m & ((1 << 26) - 1), 2048), sign, 1075)

    def merge(self, other):
        for p, v in other.buckets.items():
            self.buckets[p] = self.buckets.get(p, 0) + v
        self.nan |= other.nan
        self.pinf |= other.pinf
        self.ninf |= other.ninf
        return self

    def _special(self):
        if self.nan or (self.pinf and self.ninf):
            return math.nan
        if self.pinf:
            return math.inf
        if self.ninf:
            return -math.inf
        return None

    def _exact(self):
        """(integer n, power p) with the sum == n * 2**p."""
        if not self.buckets:
            return 0, 0
        pmin = min(self.buckets)
        return sum(v << (p - pmin) for p, v in self.buckets.items()), pmin

    def __float__(self):
        return self.ratio(1)

    value = __float__

    def ratio(self, den):
        """The sum divided by ``den`` (an int or another ExactSum), correctly rounded."""
        special = self._special()
        if isinstance(den, ExactSum):
            dspecial = den._special()
            d, dp = den._exact()
        else:
            dspecial, d, dp = None, int(den), 0
        if special is not None or dspecial is not None:
            a = special if special is not None else self.ratio(1)
            b = dspecial if dspecial is not None else float(den)
            return _div(a, b)
        n, p = self._exact()
        if d == 0:
            return _div(float(n), 0.0)
        if d < 0:
            n, d = -n, -d
        k = p - dp
        try:
            return (n << k) / d if k >= 0 else n / (d << -k)
        except OverflowError:
            return math.copysign(math.inf, n)


# ============================================================================ inputs
class NpyArray:
    """A ``.npy`` file, or an uncompressed member of a ``.npz``, as a lazily opened read-only
    memory map: ``shape``, ``dtype``, ``ndim`` and ``a[rows]`` like an ndarray.

    Pickling sends the path, not the data (Dask workers open the file themselves), and an
    unpickled copy maps the file anew on each ``[]`` so that no worker keeps pages mapped.
    """

    def __init__(self, path, member=None, *, label=None):
        self.path = os.fspath(path)
        self.member = member
        self.label = label or (f"{self.path}[{member}]" if member else self.path)
        self._cache = None
        self._keep_open = True
        self.shape, self.dtype, self.fortran, self.offset = _npy_layout(self.path, member, self.label)

    ndim = property(lambda self: len(self.shape))
    size = property(lambda self: math.prod(self.shape))
    nbytes = property(lambda self: self.size * self.dtype.itemsize)

    def __len__(self):
        return self.shape[0]

    def __repr__(self):
        return f"NpyArray({self.label!r}, shape={self.shape}, dtype={self.dtype})"

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cache"] = None
        state["_keep_open"] = False
        return state

    def __dask_tokenize__(self):
        st = os.stat(self.path)
        return ("fastxent.NpyArray", self.path, self.member, st.st_size, st.st_mtime_ns)

    def open(self):
        """The whole array as a read-only ``np.memmap`` (an empty ndarray when it has no data)."""
        if self._cache is not None:
            return self._cache
        if self.size == 0:
            a = np.empty(self.shape, self.dtype, order="F" if self.fortran else "C")
        else:
            a = np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.offset,
                          shape=self.shape, order="F" if self.fortran else "C")
            _advise_sequential(a)
        if self._keep_open:
            self._cache = a
        return a

    def __getitem__(self, index):
        return self.open()[index]

    def __array__(self, dtype=None, copy=None):
        a = self.open()
        return a if dtype is None else a.astype(dtype)


def _advise_sequential(a):
    mm = getattr(a, "_mmap", None)
    if mm is not None and hasattr(mm, "madvise"):
        import mmap
        try:
            mm.madvise(mmap.MADV_SEQUENTIAL)
        except (OSError, AttributeError, ValueError):
            pass


def _read_header(f, label):
    """(shape, dtype, fortran) from a file object positioned at a .npy header."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(f)
        else:
            shape, fortran, dtype = fmt._read_array_header(f, version)
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise ScoreError(f"{label}: not a valid .npy file ({exc})") from None
    if dtype.hasobject:
        raise ScoreError(f"{label}: holds Python objects (dtype {dtype}), not numbers")
    return tuple(int(n) for n in shape), dtype, bool(fortran)


def _npy_layout(path, member, label):
    """(shape, dtype, fortran, data offset) of a .npy file or a stored .npz member."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            if member is None:
                shape, dtype, fortran = _read_header(f, label)
                offset = f.tell()
            else:
                info = zipfile.ZipFile(f).getinfo(member)
                if info.compress_type != zipfile.ZIP_STORED:
                    raise ScoreError(f"{label}: compressed .npz member cannot be memory-mapped")
                f.seek(info.header_offset)
                head = f.read(30)
                if len(head) != 30 or head[:4] != _ZIP_MAGIC:
                    raise ScoreError(f"{label}: corrupt .npz archive")
                f.seek(info.header_offset + 30 + int.from_bytes(head[26:28], "little")
                       + int.from_bytes(head[28:30], "little"))
                start = f.tell()
                shape, dtype, fortran = _read_header(f, label)
                offset = f.tell()
                size = start + info.file_size
    except FileNotFoundError:
        raise ScoreError(f"{label}: no such file") from None
    except IsADirectoryError:
        raise ScoreError(f"{label}: is a directory") from None
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ScoreError(f"{label}: corrupt .npz archive ({exc})") from None
    except OSError as exc:
        raise ScoreError(f"{label}: {exc.strerror or exc}") from None
    need = offset + math.prod(shape) * dtype.itemsize
    if need > size:
        raise ScoreError(f"{label}: truncated .npy data ({size - offset} bytes of data, "
                         f"{need - offset} expected for shape {shape} {dtype})")
    return shape, dtype, fortran, offset


class NpzStream:
    """A compressed ``.npz`` member read front to back, one block of rows at a time
    (``a[start:stop]`` with ``start`` where the previous read stopped)."""

    def __init__(self, path, member, *, label=None):
        self.path, self.member = os.fspath(path), member
        self.label = label or f"{self.path}[{member}]"
        self._zip = zipfile.ZipFile(self.path)
        self._f = self._zip.open(member)
        self.shape, self.dtype, self.fortran = _read_header(self._f, self.label)
        self._pos = 0
        self._whole = None
        if self.fortran and len(self.shape) > 1:     # rows are not contiguous: read it all
            self._whole = self._read(self.size).reshape(self.shape, order="F")

    ndim = property(lambda self: len(self.shape))
    size = property(lambda self: math.prod(self.shape))
    nbytes = property(lambda self: self.size * self.dtype.itemsize)

    def __len__(self):
        return self.shape[0]

    def __reduce__(self):
        raise TypeError(f"{self.label}: a compressed .npz member can only be read in order; "
                        "use .npy files (or np.savez) to read it in parallel")

    def _read(self, count):
        nbytes = count * self.dtype.itemsize
        try:
            buf = self._f.read(nbytes)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise ScoreError(f"{self.label}: corrupt .npz member ({exc})") from None
        if len(buf) != nbytes:
            raise ScoreError(f"{self.label}: truncated .npy data in the .npz archive")
        return np.frombuffer(buf, dtype=self.dtype)

    def __getitem__(self, index):
        if self._whole is not None:
            return self._whole[index]
        start, stop, _ = index.indices(self.shape[0])
        if start != self._pos:
            raise ValueError(f"{self.label}: compressed .npz members are read in order")
        row = math.prod(self.shape[1:])
        out = self._read((stop - start) * row).reshape((stop - start,) + self.shape[1:])
        self._pos = stop
        return out


def _natural_key(s):
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", s)]


def _kind(path, what):
    """'dir', 'npy' or 'npz' (by content, not by name)."""
    if os.path.isdir(path):
        return "dir"
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except FileNotFoundError:
        raise ScoreError(f"{what}: no such file or directory: {path}") from None
    except OSError as exc:
        raise ScoreError(f"{what}: {path}: {exc.strerror or exc}") from None
    if magic.startswith(_NPY_MAGIC):
        return "npy"
    if magic.startswith(_ZIP_MAGIC):
        return "npz"
    raise ScoreError(f"{what}: {path} is not a .npy or .npz file")


def _npz_members(path, what):
    try:
        with zipfile.ZipFile(path) as z:
            infos = [i for i in z.infolist() if i.filename.endswith(".npy")]
    except (zipfile.BadZipFile, OSError) as exc:
        raise ScoreError(f"{what}: {path}: corrupt .npz archive ({exc})") from None
    return {i.filename[:-4]: i for i in infos}


def _npz_array(path, info, what):
    label = f"{path}[{info.filename[:-4]}]"
    if info.compress_type == zipfile.ZIP_STORED:
        return NpyArray(path, info.filename, label=label)
    try:
        return NpzStream(path, info.filename, label=label)
    except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError) as exc:
        raise ScoreError(f"{what}: {label}: cannot read ({exc})") from None


def _pick_member(path, members, key, what):
    if key in members:
        return _npz_array(path, members[key], what)
    if len(members) == 1:
        return _npz_array(path, next(iter(members.values())), what)
    raise ScoreError(f"{what}: {path} has arrays {sorted(members)}; expected '{key}' "
                     f"or a single array")


def _open_one(path, what, key):
    kind = _kind(path, what)
    if kind == "npy":
        return NpyArray(path)
    if kind == "npz":
        return _pick_member(path, _npz_members(path, what), key, what)
    raise ScoreError(f"{what}: {path} is a directory; expected a .npy or .npz file")


def _shards(directory, prefix, what):
    names = [n for n in os.listdir(directory) if n.endswith(".npy") and n.startswith(prefix)
             and os.path.isfile(os.path.join(directory, n))]
    return {n[len(prefix):-4]: os.path.join(directory, n) for n in names}


def open_inputs(logits, labels=None):
    """The inputs as a list of ``(logits, labels)`` array pairs (one per shard), validated:
    logits 2-D float16/32/64 with the same C and dtype in every shard, labels 1-D integers of
    the same length.  Paths: see the module docstring."""
    logits = os.fspath(logits)
    labels = None if labels is None else os.fspath(labels)
    kind = _kind(logits, "LOGITS")
    if kind == "dir":
        if labels is None:
            lg, lb = _shards(logits, "logits_", "LOGITS"), _shards(logits, "labels_", "LOGITS")
            if not lg:
                raise ScoreError(f"LOGITS: directory {logits} has no logits_*.npy shards")
            missing = sorted(set(lg) ^ set(lb), key=_natural_key)
            if missing:
                k = missing[0]
                name = f"labels_{k}.npy" if k in lg else f"logits_{k}.npy"
                raise ScoreError(f"LOGITS: directory {logits} has no {name} to pair with "
                                 f"{'logits' if k in lg else 'labels'}_{k}.npy")
            keys = sorted(lg, key=_natural_key)
            pairs = [(NpyArray(lg[k]), NpyArray(lb[k])) for k in keys]
        else:
            if _kind(labels, "LABELS") != "dir":
                raise ScoreError("LABELS: must be a directory when LOGITS is a directory "
                                 "(or left out to use the labels_*.npy beside logits_*.npy)")
            lg, lb = _shards(logits, "", "LOGITS"), _shards(labels, "", "LABELS")
            if not lg:
                raise ScoreError(f"LOGITS: directory {logits} has no .npy files")
            if len(lg) != len(lb):
                raise ScoreError(f"LABELS: directory {labels} has {len(lb)} .npy files, "
                                 f"LOGITS directory {logits} has {len(lg)}")
            pairs = [(NpyArray(lg[a]), NpyArray(lb[b]))
                     for a, b in zip(sorted(lg, key=_natural_key), sorted(lb, key=_natural_key))]
    elif labels is None:
        if kind != "npz":
            raise ScoreError("LABELS: missing (needed unless LOGITS is a .npz archive holding "
                             "both, or a directory of logits_*/labels_* shards)")
        members = _npz_members(logits, "LOGITS")
        if "logits" in members and "labels" in members:
            pairs = [(_npz_array(logits, members["logits"], "LOGITS"),
                      _npz_array(logits, members["labels"], "LOGITS"))]
        elif len(members) == 2:
            a, b = (_npz_array(logits, i, "LOGITS") for i in members.values())
            if a.ndim == 1 and b.ndim == 2:
                a, b = b, a
            pairs = [(a, b)]
        else:
            raise ScoreError(f"LOGITS: {logits} has arrays {sorted(members)}; expected "
                             "'logits' and 'labels' (or exactly two arrays)")
    else:
        pairs = [(_open_one(logits, "LOGITS", "logits"), _open_one(labels, "LABELS", "labels"))]
    _check_pairs(pairs)
    return pairs


def _label(a, default):
    return getattr(a, "label", default)


def _check_pairs(pairs):
    first = None
    for lg, lb in pairs:
        name, lname = _label(lg, "logits"), _label(lb, "labels")
        if lg.ndim != 2:
            raise ScoreError(f"{name}: logits must be 2-D (N, C), got shape {lg.shape}")
        if lg.dtype not in LOGITS_DTYPES:
            raise ScoreError(f"{name}: logits must be float16, float32 or float64, "
                             f"got dtype {lg.dtype}")
        if lg.shape[1] == 0:
            raise ScoreError(f"{name}: logits have no classes (shape {lg.shape})")
        if lb.ndim != 1:
            raise ScoreError(f"{lname}: labels must be 1-D (N,), got shape {lb.shape}")
        if lb.dtype.kind not in "iu":
            raise ScoreError(f"{lname}: labels must be integers, got dtype {lb.dtype}")
        if lb.shape[0] != lg.shape[0]:
            raise ScoreError(f"{lname}: {lb.shape[0]} labels for {lg.shape[0]} rows of logits "
                             f"({name})")
        if first is None:
            first = lg
        elif lg.shape[1] != first.shape[1] or lg.dtype != first.dtype:
            raise ScoreError(f"{name}: shape {lg.shape} {lg.dtype} does not match the first "
                             f"shard's (*, {first.shape[1]}) {first.dtype}")


def load_offsets(offsets, n_rows):
    """Validated sequence offsets (int64, S + 1 entries) from an array or a .npy/.npz path."""
    if isinstance(offsets, (str, os.PathLike)):
        path = os.fspath(offsets)
        what = f"--offsets: {path}"
        if _kind(path, "--offsets") == "dir":
            raise ScoreError(f"{what} is a directory")
        try:
            obj = np.load(path, allow_pickle=False)
            if isinstance(obj, np.lib.npyio.NpzFile):
                with obj:
                    keys = list(obj.keys())
                    if "offsets" not in keys and len(keys) != 1:
                        raise ScoreError(f"{what} has arrays {sorted(keys)}; expected "
                                         "'offsets' or a single array")
                    obj = obj["offsets" if "offsets" in keys else keys[0]]
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            if isinstance(exc, ScoreError):
                raise
            raise ScoreError(f"{what}: cannot read ({exc})") from None
        offs = np.asarray(obj)
    else:
        what = "offsets"
        offs = np.asarray(offsets)
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


# ============================================================================ one block of rows
@dataclasses.dataclass
class BlockResult:
    """What scoring rows ``row0 : row0 + rows`` gives (a Dask task returns one of these)."""
    row0: int
    rows: int
    nll: ExactSum          # sum of the row losses, nats
    scored: int            # rows whose label is not ignore_index
    correct: int           # of those, rows whose argmax is the label
    losses: object = None  # per-row losses (nats, kernel dtype) when asked for
    seq0: int = 0          # first sequence the block touches
    seq_nll: object = None  # float64 partial sums of sequences seq0, seq0 + 1, ...


def check_labels(labels, n_classes, ignore_index, row0=0, where="labels"):
    """Raise ScoreError naming the first label outside [0, C) that is not ignore_index."""
    if not labels.size:
        return
    lo, hi = labels.min(), labels.max()
    if lo >= 0 and hi < n_classes:
        return
    bad = (labels < 0) | (labels >= n_classes)
    bad &= labels != ignore_index
    if bad.any():
        i = int(np.argmax(bad))
        raise ScoreError(f"{where}: label {labels[i]} at row {row0 + i} is out of range "
                         f"[0, {n_classes}) and is not the ignore index ({ignore_index})")


def score_block(logits, labels, row0=0, *, ignore_index=-100, num_threads=None,
                offsets=None, keep_losses=False, where="labels"):
    """Score one block of rows; ``offsets`` are the global sequence offsets (or a slice
    ``(seq0, offsets[seq0:seq1 + 1])`` of them)."""
    import fastxent

    x = np.asarray(logits)
    y = np.asarray(labels)
    n, C = x.shape
    check_labels(y, C, ignore_index, row0, where)
    if y.dtype != np.int64 and y.dtype != np.int32:
        y = y.astype(np.int64)
    losses = fastxent.cross_entropy(x, y, ignore_index=ignore_index, reduction="none",
                                    num_threads=num_threads)
    keep = y != ignore_index
    scored = int(np.count_nonzero(keep))
    hit = np.argmax(x, axis=1) == y
    if scored != n:
        hit &= keep
    res = BlockResult(row0, n, ExactSum(losses), scored, int(np.count_nonzero(hit)))
    if keep_losses:
        res.losses = losses
    if offsets is not None:
        res.seq0, res.seq_nll = _sequence_sums(losses, row0, offsets)
    return res


def _sequence_sums(losses, row0, offsets):
    """(s0, sums): float64 sums of the block's rows per sequence s0, s0 + 1, ..."""
    if isinstance(offsets, tuple):
        base, offs = offsets
    else:
        base, offs = 0, offsets
    n = losses.shape[0]
    if n == 0:
        return 0, np.zeros(0)
    lo = int(np.searchsorted(offs, row0, side="right")) - 1
    hi = int(np.searchsorted(offs, row0 + n - 1, side="right")) - 1
    bounds = np.clip(offs[lo:hi + 2], row0, row0 + n) - row0
    ids = np.repeat(np.arange(hi - lo + 1), np.diff(bounds))
    return base + lo, np.bincount(ids, weights=losses.astype(np.float64), minlength=hi - lo + 1)


def offsets_slice(offsets, row0, rows):
    """The part of ``offsets`` a block of rows needs, for ``score_block`` (small to send)."""
    if rows == 0:
        return (0, offsets[:1])
    lo = int(np.searchsorted(offsets, row0, side="right")) - 1
    hi = int(np.searchsorted(offsets, row0 + rows - 1, side="right")) - 1
    return (lo, offsets[lo:hi + 2])


# ============================================================================ summary
def _log_base(base):
    if base is None:
        return None
    msg = f"--base: expected a number > 0 other than 1 (or 'e'), got {base!r}"
    if isinstance(base, str):
        if base.strip().lower() == "e":
            return None
        try:
            b = float(base)
        except ValueError:
            raise ScoreError(msg) from None
    else:
        b = float(base)
    if not (b > 0 and b != 1 and math.isfinite(b)):
        raise ScoreError(msg)
    return b


@dataclasses.dataclass
class ScoreSummary:
    """Totals of a scoring run.  NLL figures are in nats unless the name says ``_base``."""
    rows: int
    scored: int
    correct: int
    nll_sum: float                  # exact sum of the scored rows' losses (nats), rounded once
    classes: int = 0
    dtype: str = ""
    base: float | None = None
    seconds: float = 0.0
    bytes: int = 0                  # bytes of logits and labels read
    sequences: int | None = None
    sequence_nll_sum: float | None = None
    out: str | None = None
    _mean: float | None = dataclasses.field(default=None, repr=False)

    @property
    def ignored(self):
        return self.rows - self.scored

    @property
    def mean_nll(self):
        """Mean NLL per scored row, nats (correctly rounded exact mean when built by fastxent)."""
        if self._mean is not None:
            return self._mean
        return _div(self.nll_sum, float(self.scored))

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
    def accuracy(self):
        return _div(float(self.correct), float(self.scored))

    @property
    def mean_sequence_nll(self):
        if not self.sequences:
            return None if self.sequences is None else math.nan
        return self.sequence_nll_sum / self.sequences

    @property
    def rows_per_s(self):
        return self.rows / self.seconds if self.seconds > 0 else math.nan

    @property
    def gb_per_s(self):
        return self.bytes / self.seconds / 1e9 if self.seconds > 0 else math.nan

    def to_dict(self):
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
             if not f.name.startswith("_")}
        for name in ("ignored", "mean_nll", "mean_nll_base", "perplexity", "bits_per_item",
                     "accuracy", "mean_sequence_nll", "rows_per_s", "gb_per_s"):
            d[name] = getattr(self, name)
        return d

    def format(self):
        unit = "nats" if self.base is None else ("bits" if self.base == 2 else f"log{self.base:g}")
        lines = [f"rows              {self.rows:,} x {self.classes:,} classes ({self.dtype})"
                 + (f", {self.ignored:,} ignored" if self.ignored else "")]
        nll = f"{self.mean_nll:.6f} nats"
        if self.base is not None:
            nll += f" = {self.mean_nll_base:.6f} {unit}"
        lines += [f"mean NLL          {nll}",
                  f"perplexity        {self.perplexity:.6g}",
                  f"bits per item     {self.bits_per_item:.6f}",
                  f"top-1 accuracy    {self.accuracy:.6f} ({self.correct:,} / {self.scored:,})"]
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
            what = "per-sequence NLL" if self.sequences is not None else "per-row NLL"
            lines.append(f"written           {self.out} ({what}, {unit})")
        return "\n".join(lines)


# ============================================================================ atomic output
class AtomicNpy:
    """A .npy written under a temporary name in the target's directory and renamed into place
    by ``commit()``; ``abort()`` (or any exception inside ``with``) removes it, leaving whatever
    was at the target before untouched."""

    def __init__(self, path, shape, dtype):
        self.path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(self.path))
        fd, self.tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(self.path)}.",
                                        suffix=".tmp")
        os.close(fd)
        try:
            if math.prod(shape):
                self.array = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=dtype,
                                                       shape=shape)
            else:
                self.array = np.empty(shape, dtype)
        except BaseException:
            os.unlink(self.tmp)
            raise

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def commit(self):
        a, self.array = self.array, None
        try:
            if isinstance(a, np.memmap):
                a.flush()
                del a
            else:
                with open(self.tmp, "wb") as f:   # np.save(name) would append .npy
                    np.save(f, a)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.tmp, 0o666 & ~umask)
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise

    def abort(self):
        self.array = None
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


def _save_atomic(path, array):
    """np.save(path, array), atomically (and without np.save's habit of appending .npy)."""
    w = AtomicNpy(path, (0,), array.dtype)   # an empty placeholder, replaced below
    w.array = np.asarray(array)
    w.commit()


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


# ============================================================================ the engine
def default_chunk_rows(n_classes, itemsize):
    return max(1, CHUNK_BYTES // max(1, n_classes * itemsize))


def _positive_int(value, what):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ScoreError(f"{what}: expected a positive integer, got {value!r}")
    return int(value)


class _Run:
    """Accumulates BlockResults (in any order) into a ScoreSummary and the --out arrays."""

    def __init__(self, n_rows, n_classes, dtype, offsets, out, base, loss_dtype):
        self.n_rows, self.C, self.dtype = n_rows, n_classes, np.dtype(dtype)
        self.offsets, self.out, self.base = offsets, out, base
        self.scale = 1.0 / math.log(base) if base is not None else None
        self.nll = ExactSum()
        self.scored = self.correct = self.done = 0
        self.seq_parts = []
        self.writer = None
        if out is not None:
            _check_out_path(out)
            if offsets is None:
                self.writer = AtomicNpy(out, (n_rows,), loss_dtype)

    def add(self, r):
        self.nll.merge(r.nll)
        self.scored += r.scored
        self.correct += r.correct
        self.done += r.rows
        if r.seq_nll is not None:
            self.seq_parts.append((r.row0, r.seq0, r.seq_nll))
        if self.writer is not None and r.rows:
            losses = r.losses
            if self.scale is not None:
                losses = (losses.astype(np.float64) * self.scale).astype(losses.dtype)
            self.writer.array[r.row0:r.row0 + r.rows] = losses

    def abort(self):
        if self.writer is not None:
            self.writer.abort()

    def finish(self, seconds, nbytes):
        summary = ScoreSummary(
            rows=self.n_rows, scored=self.scored, correct=self.correct,
            nll_sum=float(self.nll), classes=self.C, dtype=str(self.dtype), base=self.base,
            seconds=seconds, bytes=nbytes, _mean=self.nll.ratio(self.scored))
        if self.offsets is not None:
            S = self.offsets.shape[0] - 1
            seq = np.zeros(S)
            for _, s0, part in sorted(self.seq_parts, key=lambda t: t[0]):   # fixed order
                seq[s0:s0 + part.shape[0]] += part
            summary.sequences = S
            summary.sequence_nll_sum = float(ExactSum(seq))
            if self.out is not None:
                _save_atomic(self.out, seq * self.scale if self.scale is not None else seq)
        if self.writer is not None:
            self.writer.commit()
        if self.out is not None:
            summary.out = os.fspath(self.out)
        return summary


def _check_out_path(out):
    path = os.fspath(out)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ScoreError(f"--out: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise ScoreError(f"--out: directory {parent} is not writable")
    if os.path.isdir(path):
        raise ScoreError(f"--out: {path} is a directory")


def _check_out_not_input(out, pairs):
    if out is None or not os.path.exists(out):
        return
    for pair in pairs:
        for a in pair:
            p = getattr(a, "path", None)
            if p is not None and os.path.exists(p) and os.path.samefile(p, out):
                raise ScoreError(f"--out: {out} is one of the inputs")


def _loss_dtype(dtype):
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def _score_pairs(pairs, *, offsets=None, out=None, chunk_rows=None, ignore_index=-100,
                 base=None, num_threads=None, progress=False):
    base = _log_base(base)
    chunk_rows = _positive_int(chunk_rows, "--chunk-rows")
    num_threads = _positive_int(num_threads, "--threads")
    n_rows = sum(lg.shape[0] for lg, _ in pairs)
    C, dtype = pairs[0][0].shape[1], pairs[0][0].dtype
    offs = None if offsets is None else load_offsets(offsets, n_rows)
    _check_out_not_input(out, pairs)
    K = chunk_rows or default_chunk_rows(C, dtype.itemsize)
    run = _Run(n_rows, C, dtype, offs, out, base, _loss_dtype(dtype))
    bar = progress_bar(n_rows, progress)
    nbytes = 0
    t0 = time.perf_counter()
    try:
        row0 = 0
        for lg, lb in pairs:
            n = lg.shape[0]
            where = _label(lb, "labels")
            for start in range(0, n, K):
                stop = min(n, start + K)
                y = lb[start:stop]
                x = lg[start:stop]
                r = score_block(x, y, row0 + start, ignore_index=ignore_index,
                                num_threads=num_threads, offsets=offs,
                                keep_losses=run.writer is not None, where=where)
                nbytes += x.nbytes + y.nbytes
                run.add(r)
                bar.update(stop - start)
            row0 += n
        seconds = time.perf_counter() - t0
        return run.finish(seconds, nbytes)
    except BaseException:
        run.abort()
        raise
    finally:
        bar.close()


def score_files(logits, labels=None, *, offsets=None, out=None, chunk_rows=None,
                ignore_index=-100, base=None, num_threads=None, progress=False):
    """Score logits stored on disk (see :func:`open_inputs` for the accepted layouts).

    offsets: sequence offsets (array or .npy/.npz path).  out: path of a .npy receiving the
    per-row losses (or, with offsets, the per-sequence summed losses, float64), in the unit of
    ``base`` (nats by default); written atomically.  chunk_rows: rows per chunk (default: about
    8 MiB of logits).  Returns a :class:`ScoreSummary`.  Raises :class:`ScoreError`.
    """
    return _score_pairs(open_inputs(logits, labels), offsets=offsets, out=out,
                        chunk_rows=chunk_rows, ignore_index=ignore_index, base=base,
                        num_threads=num_threads, progress=progress)


def score_arrays(logits, labels, *, offsets=None, out=None, chunk_rows=None, ignore_index=-100,
                 base=None, num_threads=None, progress=False):
    """:func:`score_files` for arrays already at hand (ndarrays, np.memmap, :class:`NpyArray`);
    they are read ``chunk_rows`` rows at a time."""
    if not hasattr(logits, "shape") or not hasattr(logits, "dtype"):
        logits = np.asarray(logits)
    if not hasattr(labels, "shape") or not hasattr(labels, "dtype"):
        labels = np.asarray(labels)
    pairs = [(logits, labels)]
    _check_pairs(pairs)
    return _score_pairs(pairs, offsets=offsets, out=out, chunk_rows=chunk_rows,
                        ignore_index=ignore_index, base=base, num_threads=num_threads,
                        progress=progress)
