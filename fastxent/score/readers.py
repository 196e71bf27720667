"""Readers: one small class per stored format, behind one interface.

Layer: the input side of ``fastxent.score`` (the local engine and ``fastxent.dask`` use the same
readers).  A reader is opened on a path (and a key for formats that hold several arrays); it
knows the stored ``shape`` and ``dtype`` and reads rows ``[i, j)`` of a given width into a
buffer the caller owns (``read``), converting to the buffer's dtype.  Nothing stays mapped
between reads, so the resident memory of a scoring run is its buffers, whatever the file size.
A reader pickles as its path and key (a Dask worker reopens the file itself).

Formats (chosen by the file's signature, not its name; see :func:`format_of`):

=================  ======================================  ==============================
format             reader                                  needs
=================  ======================================  ==============================
.npy (1.0-3.0)     :class:`NpyReader` (own strict parser)   --
.npz member        :class:`NpzReader`                       --
safetensors        :class:`SafetensorsReader`               ``fastxent[safetensors]``
Zarr array/group   :class:`ZarrReader`                      ``fastxent[zarr]``
Parquet            :class:`ParquetReader`                   ``fastxent[parquet]``
Arrow IPC file     :class:`ArrowReader`                     ``fastxent[parquet]``
ndarray in memory  :class:`ArrayReader`                     --
several shards     :class:`ConcatReader` (rows end to end)  --
=================  ======================================  ==============================

A new format is one class: ``sniff`` (does this path look like mine?), ``members`` (the names of
the arrays it holds, or ``[None]``), the constructor ``(path, key)`` setting ``shape``/``dtype``,
and ``_read_flat`` (or ``_read_box`` for formats that slice N-D arrays).
"""
import math
import os

import numpy as np

from ._common import ScoreError

__all__ = ["Reader", "ArrayReader", "ConcatReader", "FORMATS", "format_of", "register"]


class Reader:
    """The interface: ``shape``, ``dtype``, ``label`` (for messages), ``paths`` (files read),
    ``read(i, j, out, width)``, ``close()``, and ndarray-like ``r[index]`` / ``len(r)``."""

    label = "array"
    paths = ()
    sequential = False       # True: rows can only be read front to back (compressed streams)
    staging = True           # True: a read allocates a copy of the rows before filling ``out``
    overhead = 0             # bytes a reader may hold besides the rows (decoder buffers)
    storage_rows = None      # rows per storage chunk (Zarr chunks, row groups): reads align to it
    key = None

    ndim = property(lambda self: len(self.shape))
    size = property(lambda self: math.prod(self.shape))
    nbytes = property(lambda self: self.size * self.dtype.itemsize)

    def __len__(self):
        return self.shape[0]

    def __repr__(self):
        return f"{type(self).__name__}({self.label!r}, shape={self.shape}, dtype={self.dtype})"

    # -- reading
    def read(self, start, stop, out, width=None):
        """Rows ``[start, stop)`` of width ``width`` elements (default: one index of the first
        axis) of the array in C order, into ``out`` (an ndarray of (stop - start) * width
        elements, any shape, any dtype the values convert to)."""
        w = self.size // self.shape[0] if width is None else width
        flat = out.reshape(-1)
        if flat.size != (stop - start) * w:
            raise ValueError(f"out: expected {(stop - start) * w} elements, got {flat.size}")
        if stop > start and w:
            self._read_flat(start * w, stop * w, flat)
        return out

    def _read_flat(self, start, stop, out):
        """Elements ``[start, stop)`` of the array in C order into the 1-D ``out``."""
        pos = 0
        for box in _boxes(self.shape, start, stop):
            part = self._read_box(box)
            n = part.size
            out[pos:pos + n] = part.reshape(-1)
            pos += n

    def _read_box(self, index):
        raise NotImplementedError

    def close(self):
        """Release open files (reading again reopens them)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getstate__(self):
        state = self.__dict__.copy()
        for name in self._transient:
            state[name] = None
        return state

    _transient = ()

    def __getitem__(self, index):
        """ndarray-like reads: the rows the first index selects are read, the rest applied."""
        if not isinstance(index, tuple):
            index = (index,)
        first = index[0] if index else slice(None)
        n = self.shape[0]
        if isinstance(first, (int, np.integer)):
            i = int(first) + (n if first < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"{self.label}: index {first} out of range for {n} rows")
            rows, first_out = (i, i + 1), 0
        elif isinstance(first, slice):
            a, b, step = first.indices(n)
            if step != 1:
                raise IndexError(f"{self.label}: only contiguous row slices can be read")
            rows, first_out = (a, max(a, b)), slice(None)
        else:
            raise IndexError(f"{self.label}: rows must be an int or a slice")
        out = np.empty((rows[1] - rows[0],) + tuple(self.shape[1:]), _native(self.dtype))
        self.read(rows[0], rows[1], out)
        return out[(first_out,) + tuple(index[1:])]

    def __array__(self, dtype=None, copy=None):
        a = self[:]
        return a if dtype is None else a.astype(dtype)

    def rows(self, width=None):
        """This array as an ndarray-like of shape (rows, width) (or (rows,) for width 1): what
        ``dask.array.from_array`` reads blocks of rows from."""
        return RowView(self, width)


class RowView:
    """A reader seen as rows of ``width`` elements (pickles as the reader)."""

    def __init__(self, reader, width=None):
        self.reader = reader
        self.width = reader.size // max(reader.shape[0], 1) if width is None else width
        n = reader.size // self.width if self.width else 0
        self.shape = (n,) if self.width == 1 else (n, self.width)
        self.dtype = _native(reader.dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, index):
        if not isinstance(index, tuple):
            index = (index,)
        a, b, _ = index[0].indices(self.shape[0])
        out = np.empty((max(b - a, 0),) + self.shape[1:], self.dtype)
        self.reader.read(a, max(a, b), out, self.width)
        return out[(slice(None),) + tuple(index[1:])]

    def __dask_tokenize__(self):
        return (type(self.reader).__name__, self.reader.label, _stamp(self.reader), self.width)


def _stamp(reader):
    out = []
    for p in reader.paths:
        try:
            st = os.stat(p)
            out.append((p, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((p, None, None))
    return tuple(out) or (id(reader),)


def _native(dtype):
    return dtype.newbyteorder("=") if dtype.byteorder not in "=|" else dtype


def _boxes(shape, start, stop):
    """Index tuples of the boxes that cover the C-order elements [start, stop) of an array of
    ``shape``, in order (at most 2 * ndim - 1 of them)."""
    if start >= stop:
        return
    if len(shape) == 1:
        yield (slice(start, stop),)
        return
    inner = math.prod(shape[1:])
    b0, r0 = divmod(start, inner)
    b1, r1 = divmod(stop, inner)
    if b0 == b1:
        for t in _boxes(shape[1:], r0, r1):
            yield (b0,) + t
        return
    if r0:
        for t in _boxes(shape[1:], r0, inner):
            yield (b0,) + t
        b0 += 1
    if b1 > b0:
        yield (slice(b0, b1),) + (slice(None),) * (len(shape) - 1)
    if r1:
        for t in _boxes(shape[1:], 0, r1):
            yield (b1,) + t


# ============================================================================ in memory
class ArrayReader(Reader):
    """An array already at hand: an ndarray or np.memmap, an array-like with a NumPy dtype that
    slices lazily (Zarr, dask: read block by block), or anything ``np.asarray`` or DLPack takes
    (torch tensors, lists)."""

    staging = False

    def __init__(self, array, label="array"):
        if isinstance(array, Reader):
            raise TypeError("ArrayReader wraps arrays; a Reader is used as it is")
        if not (hasattr(array, "shape") and isinstance(getattr(array, "dtype", None), np.dtype)):
            from .._validation import as_array
            array = as_array(array)
        self.array, self.label = array, label
        self.shape, self.dtype = tuple(int(n) for n in array.shape), np.dtype(array.dtype)

    def _read_flat(self, start, stop, out):
        a = self.array
        if isinstance(a, np.ndarray):
            flat = a.reshape(-1) if a.flags.c_contiguous else None
            if flat is not None:
                out[...] = flat[start:stop]
                return
        super()._read_flat(start, stop, out)

    def _read_box(self, index):
        return np.asarray(self.array[index])


class ConcatReader(Reader):
    """Readers of the same trailing shape and dtype, their rows end to end (shards)."""

    def __init__(self, parts, label=None):
        self.parts = list(parts)
        first = self.parts[0]
        self.label = label or first.label
        self.dtype = first.dtype
        self.shape = (sum(p.shape[0] for p in self.parts),) + tuple(first.shape[1:])
        self.paths = tuple(p for r in self.parts for p in r.paths)
        self.staging = any(p.staging for p in self.parts)
        self.sequential = any(p.sequential for p in self.parts)
        self.overhead = max(p.overhead for p in self.parts)
        self._starts = np.cumsum([0] + [p.size for p in self.parts]).tolist()

    def _read_flat(self, start, stop, out):
        starts = self._starts
        k = int(np.searchsorted(starts, start, side="right")) - 1
        pos = start
        while pos < stop:
            part, lo, hi = self.parts[k], starts[k], starts[k + 1]
            end = min(stop, hi)
            if end > pos:
                part._read_flat(pos - lo, end - lo, out[pos - start:end - start])
            pos = end
            k += 1

    def close(self):
        for p in self.parts:
            p.close()


# ============================================================================ format registry
FORMATS = []


def register(cls):
    """Add a reader class to the formats :func:`format_of` tries (in registration order)."""
    FORMATS.append(cls)
    return cls


def format_of(path, what):
    """The reader class whose signature matches ``path`` (a directory that is no Zarr store
    gives None: a directory of shards)."""
    try:
        if os.path.isdir(path):
            head = None
        else:
            with open(path, "rb") as f:
                head = f.read(64)
    except FileNotFoundError:
        raise ScoreError(f"{what}: no such file or directory: {path}") from None
    except OSError as exc:
        raise ScoreError(f"{what}: {path}: {exc.strerror or exc}") from None
    for cls in FORMATS:
        if cls.sniff(path, head):
            return cls
    if head is None:
        return None
    names = ", ".join(c.format_name for c in FORMATS)
    raise ScoreError(f"{what}: {path} is not a file fastxent reads ({names})")
