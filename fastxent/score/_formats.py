"""Readers of the formats that come through their own maintained library (optional extras):
safetensors (``safetensors``), Zarr (``zarr``), Parquet and Arrow IPC files (``pyarrow``).

Each library is imported when a file of its format is opened; a missing one is a one-line
error naming the extra to install.  Files are opened per read and closed again, so no mapping
outlives a chunk.
"""
import math
import os
import threading

import numpy as np

from ._common import ScoreError
from ._npy import bfloat16
from .readers import Reader, register

__all__ = ["SafetensorsReader", "ZarrReader", "ParquetReader", "ArrowReader"]


def _need(module, extra, label):
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ScoreError(f"{label}: reading this format needs {module.split('.')[0]}: "
                         f"pip install 'fastxent[{extra}]'") from None


# ============================================================================ safetensors
_ST_DTYPES = {"F16": "float16", "F32": "float32", "F64": "float64", "I8": "int8", "I16": "int16",
              "I32": "int32", "I64": "int64", "U8": "uint8", "U16": "uint16", "U32": "uint32",
              "U64": "uint64", "BOOL": "bool"}


@register
class SafetensorsReader(Reader):
    """A tensor of a safetensors file (``safetensors.safe_open``, NumPy framework)."""

    format_name = "safetensors"

    @staticmethod
    def sniff(path, head):
        if head is None or len(head) < 10:
            return False
        n = int.from_bytes(head[:8], "little")
        return head[8:9] == b"{" and 2 <= n <= os.path.getsize(path) - 8

    @staticmethod
    def members(path):
        with _safe_open(path, path) as f:
            return sorted(f.keys())

    def __init__(self, path, key=None, *, label=None):
        self.path = os.fspath(path)
        self.paths = (self.path,)
        with _safe_open(self.path, label or self.path) as f:
            keys = sorted(f.keys())
            if key is None and len(keys) == 1:
                key = keys[0]
            if key not in keys:
                raise ScoreError(f"{label or self.path}: has no tensor {key!r} (it holds {keys})")
            sl = f.get_slice(key)
            self.shape, code = tuple(int(n) for n in sl.get_shape()), sl.get_dtype()
        self.key = key
        self.label = label or f"{self.path}[{key}]"
        if code == "BF16":
            self.dtype = bfloat16()
            if self.dtype is None:
                raise ScoreError(f"{self.label}: bfloat16 tensors need ml_dtypes: "
                                 "pip install 'fastxent[bf16]'")
        elif code in _ST_DTYPES:
            self.dtype = np.dtype(_ST_DTYPES[code])
        else:
            raise ScoreError(f"{self.label}: tensors of dtype {code} are not read")

    def _read_flat(self, start, stop, out):
        from .readers import _boxes

        pos = 0
        with _safe_open(self.path, self.label) as f:
            sl = f.get_slice(self.key)
            for box in _boxes(self.shape, start, stop):
                part = np.asarray(sl[box]).reshape(-1)
                out[pos:pos + part.size] = part
                pos += part.size


def _safe_open(path, label):
    st = _need("safetensors", "safetensors", label)
    try:
        return st.safe_open(path, framework="numpy")
    except Exception as exc:  # noqa: BLE001 - SafetensorError and friends: a bad file
        raise ScoreError(f"{label}: not a valid safetensors file ({exc})") from None


# ============================================================================ Zarr
@register
class ZarrReader(Reader):
    """A Zarr array (v2 or v3), or an array of a Zarr group (``zarr.open``)."""

    format_name = "Zarr"
    _transient = ("_array",)

    @staticmethod
    def sniff(path, head):
        return head is None and any(os.path.exists(os.path.join(path, n))
                                    for n in (".zarray", ".zgroup", "zarr.json"))

    @staticmethod
    def members(path):
        node = _zarr_open(path, path)
        if hasattr(node, "array_keys"):
            return sorted(node.array_keys())
        return [None]

    def __init__(self, path, key=None, *, label=None):
        self.path = os.fspath(path)
        self.paths = (self.path,)
        node = _zarr_open(self.path, label or self.path)
        if hasattr(node, "array_keys"):
            keys = sorted(node.array_keys())
            if key is None and len(keys) == 1:
                key = keys[0]
            if key not in keys:
                raise ScoreError(f"{label or self.path}: the Zarr group has no array {key!r} "
                                 f"(it holds {keys})")
            node = node[key]
        self.key = key
        self.label = label or (f"{self.path}[{key}]" if key else self.path)
        self._array = node
        self.shape, self.dtype = tuple(int(n) for n in node.shape), np.dtype(node.dtype)
        chunks = tuple(int(n) for n in node.chunks)
        self.storage_rows = math.prod(chunks[:-1]) if len(chunks) > 1 else chunks[0]
        self.overhead = 2 * math.prod(chunks) * self.dtype.itemsize

    def _read_box(self, index):
        if self._array is None:
            node = _zarr_open(self.path, self.label)
            self._array = node[self.key] if self.key is not None else node
        return np.asarray(self._array[index])


def _zarr_open(path, label):
    zarr = _need("zarr", "zarr", label)
    try:
        return zarr.open(store=os.fspath(path), mode="r")
    except Exception as exc:  # noqa: BLE001 - corrupt metadata in any of zarr's forms
        raise ScoreError(f"{label}: not a readable Zarr store "
                         f"({type(exc).__name__}: {exc})") from None


# ============================================================================ Arrow columns
def _column_layout(field, label):
    """(width or None (variable lists), numpy value dtype) of a column of floats or ints."""
    pa = _need("pyarrow", "parquet", label)
    t = field.type
    width = 1
    if pa.types.is_fixed_size_list(t):
        width, t = t.list_size, t.value_type
    elif pa.types.is_list(t) or pa.types.is_large_list(t):
        width, t = None, t.value_type
    if not (pa.types.is_floating(t) or pa.types.is_integer(t)):
        raise ScoreError(f"{label}: column type {field.type} holds no numbers (expected floats, a "
                         "(fixed-size) list of floats, or integers)")
    return width, np.dtype(t.to_pandas_dtype())


def _column_values(col, width, label, row0):
    """The values of an Arrow array (lists flattened) as a 1-D ndarray, nulls refused."""
    pa = _need("pyarrow", "parquet", label)
    pc = _need("pyarrow.compute", "parquet", label)
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if col.null_count:
        i = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise ScoreError(f"{label}: row {row0 + i} is null")
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        if lengths.size and (lengths != width).any():
            i = int(np.flatnonzero(lengths != width)[0])
            raise ScoreError(f"{label}: row {row0 + i} has {lengths[i]} values, row 0 has {width}")
    if width != 1 or pa.types.is_fixed_size_list(col.type):
        col = col.flatten()
        if col.null_count:
            raise ScoreError(f"{label}: a list of rows {row0}..{row0 + len(col) // width} "
                             "holds nulls")
    return col.to_numpy(zero_copy_only=False)


class _TableReader(Reader):
    """A column of a table read in batches of rows (Parquet, Arrow IPC)."""

    def _setup(self, path, key, schema, label, first_row):
        self.path = os.fspath(path)
        self.paths = (self.path,)
        names = list(schema.names)
        if key is None and len(names) == 1:
            key = names[0]
        if key not in names:
            raise ScoreError(f"{label or self.path}: has no column {key!r} (it holds {names})")
        self.key = key
        self.label = label or f"{self.path}[{key}]"
        self.width, self.dtype = _column_layout(schema.field(key), self.label)
        if self.width is None:      # variable lists: the first row's length, checked on every read
            first = first_row()
            self.width = len(first[0].as_py()) if first is not None and len(first) else 0
        self.shape = (self.num_rows,) if self.width == 1 else (self.num_rows, self.width)

    def _read_flat(self, start, stop, out):
        w = max(self.width, 1)
        r0, r1 = start // w, -(-stop // w)
        pos = 0
        for row0, col in self._batches(r0, r1):
            vals = _column_values(col, self.width, self.label, row0)
            lo = max(start - row0 * w, 0)
            hi = min(stop - row0 * w, vals.size)
            out[pos:pos + hi - lo] = vals[lo:hi]
            pos += hi - lo


@register
class ParquetReader(_TableReader):
    """A column of a Parquet file (``pyarrow.parquet``), read batch by batch; reads in row
    order continue the open batch stream."""

    format_name = "Parquet"
    _transient = ("_local",)
    BATCH_ROWS = 8192

    @staticmethod
    def sniff(path, head):
        return head is not None and head.startswith(b"PAR1")

    @staticmethod
    def members(path):
        return list(_parquet(path, path).schema_arrow.names)

    def __init__(self, path, key=None, *, label=None):
        pf = _parquet(path, label or path)
        meta = pf.metadata
        self.num_rows = meta.num_rows
        self._group_rows = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        self._local = None

        def first_row():
            batch = next(pf.iter_batches(batch_size=1, columns=[self.key]), None)
            return None if batch is None else batch.column(0)

        self._setup(path, key, pf.schema_arrow, label, first_row)
        j = pf.schema_arrow.names.index(self.key)
        sizes = [meta.row_group(i).column(j).total_uncompressed_size
                 for i in range(meta.num_row_groups)] or [0]
        self.overhead = 2 * max(sizes)
        self.storage_rows = max(self._group_rows or [1])

    def close(self):
        self._local = None

    def _batches(self, r0, r1):
        """(first row, column array) of the batches covering rows [r0, r1); each thread keeps
        its own open batch stream (Dask's threads may read one reader at once)."""
        if self._local is None:
            self._local = threading.local()
        s = getattr(self._local, "stream", None)
        if s is None or s[0] > r0:
            starts = np.cumsum([0] + self._group_rows)
            g = int(np.searchsorted(starts, r0, side="right")) - 1
            pf = _parquet(self.path, self.label)
            it = pf.iter_batches(batch_size=self.BATCH_ROWS, columns=[self.key],
                                 row_groups=range(g, len(self._group_rows)))
            s = self._local.stream = [int(starts[g]), None, it]
        while s[0] < r1:
            if s[1] is None:
                try:
                    s[1] = next(s[2]).column(0)
                except StopIteration:
                    raise ScoreError(f"{self.label}: fewer rows than the metadata says") from None
                except Exception as exc:  # noqa: BLE001 - a corrupt page
                    raise ScoreError(f"{self.label}: cannot read ({exc})") from None
            n = len(s[1])
            if s[0] + n > r0:
                a, b = max(r0 - s[0], 0), min(r1 - s[0], n)
                yield s[0] + a, s[1].slice(a, b - a)
            if s[0] + n > r1:
                return
            s[0], s[1] = s[0] + n, None


def _parquet(path, label):
    pq = _need("pyarrow.parquet", "parquet", label)
    try:
        return pq.ParquetFile(os.fspath(path), buffer_size=1 << 22, pre_buffer=False)
    except Exception as exc:  # noqa: BLE001 - ArrowInvalid on a bad footer, OSError, ...
        raise ScoreError(f"{label}: not a valid Parquet file ({exc})") from None


@register
class ArrowReader(_TableReader):
    """A column of an Arrow IPC file (Feather v2), memory-mapped only while a read runs."""

    format_name = "Arrow"

    @staticmethod
    def sniff(path, head):
        return head is not None and head.startswith(b"ARROW1")

    @staticmethod
    def members(path):
        with _arrow(path, path) as (_, reader):
            return list(reader.schema.names)

    def __init__(self, path, key=None, *, label=None):
        with _arrow(path, label or path) as (_, reader):
            self._batch_rows = [reader.get_batch(i).num_rows
                                for i in range(reader.num_record_batches)]
            self.num_rows = sum(self._batch_rows)
            schema = reader.schema

            def first_row():
                k = schema.names.index(self.key)
                return reader.get_batch(0).column(k).slice(0, 1) if self._batch_rows else None

            self._setup(path, key, schema, label, first_row)
        self.storage_rows = max(self._batch_rows or [1])

    def _batches(self, r0, r1):
        starts = np.cumsum([0] + self._batch_rows)
        k = int(np.searchsorted(starts, r0, side="right")) - 1
        with _arrow(self.path, self.label) as (_, reader):
            j = reader.schema.names.index(self.key)
            while k < len(self._batch_rows) and starts[k] < r1:
                a = max(r0 - int(starts[k]), 0)
                b = min(r1 - int(starts[k]), self._batch_rows[k])
                yield int(starts[k]) + a, reader.get_batch(k).column(j).slice(a, b - a)
                k += 1


class _arrow:
    """``with _arrow(path, label) as (source, reader)``: an IPC file reader over a memory map
    that is closed (unmapped) at the end of the block."""

    def __init__(self, path, label):
        self.path, self.label = os.fspath(path), label

    def __enter__(self):
        pa = _need("pyarrow", "parquet", self.label)
        try:
            self.source = pa.memory_map(self.path, "r")
            return self.source, pa.ipc.open_file(self.source)
        except Exception as exc:  # noqa: BLE001 - ArrowInvalid on a bad file
            if getattr(self, "source", None) is not None:
                self.source.close()
            raise ScoreError(f"{self.label}: not a valid Arrow IPC file ({exc})") from None

    def __exit__(self, *exc):
        self.source.close()
