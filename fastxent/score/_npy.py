""".npy files and .npz archives: a strict header parser and two readers.

The header is parsed here (format versions 1.0, 2.0 and 3.0 as NumPy writes them) with
``ast.literal_eval`` and ``np.dtype`` only: a corrupt, truncated, negative or overflowing header
and object dtypes give a one-line :class:`ScoreError`.  Rows are read with ``os.preadv`` straight
into the caller's buffer when no conversion is needed, so nothing of the file stays mapped.
A raw 2-byte ``V2`` dtype (how NumPy saves ml_dtypes' bfloat16) is read as bfloat16.
"""
import ast
import math
import mmap
import os
import struct
import threading
import zipfile

import numpy as np

from ._common import ScoreError
from .readers import Reader, register

__all__ = ["NpyReader", "NpzReader", "read_header", "bfloat16"]

MAGIC = b"\x93NUMPY"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
MAX_HEADER = 1 << 20
_OPEN_LOCK = threading.Lock()
_KEYS = {"descr", "fortran_order", "shape"}


def bfloat16():
    """ml_dtypes' bfloat16 dtype, or None when ml_dtypes is not installed."""
    try:
        import ml_dtypes
    except ImportError:
        return None
    return np.dtype(ml_dtypes.bfloat16)


def _dtype(descr, label):
    if not isinstance(descr, str):
        raise ScoreError(f"{label}: structured dtype {descr!r}: expected plain numbers")
    try:
        dt = np.dtype(descr)
    except (TypeError, ValueError, SyntaxError) as exc:
        raise ScoreError(f"{label}: not a valid .npy file (dtype {descr!r}: {exc})") from None
    if dt.hasobject:
        raise ScoreError(f"{label}: holds Python objects (dtype {dt}), not numbers")
    if dt.kind == "V" and dt.itemsize == 2 and dt.fields is None:
        bf16 = bfloat16()
        if bf16 is None:
            raise ScoreError(f"{label}: raw 2-byte values (dtype {descr}, how NumPy saves "
                             "bfloat16): install ml_dtypes (pip install 'fastxent[bf16]')")
        dt = bf16
    return dt


def read_header(f, label):
    """(shape, dtype, fortran_order, header bytes) of the .npy header at ``f``'s position."""
    head = f.read(8)
    if len(head) < 8 or head[:6] != MAGIC:
        raise ScoreError(f"{label}: not a valid .npy file (no .npy magic)")
    version = (head[6], head[7])
    if version == (1, 0):
        size_bytes, fmt, encoding = 2, "<H", "latin1"
    elif version in ((2, 0), (3, 0)):
        size_bytes, fmt, encoding = 4, "<I", "latin1" if version == (2, 0) else "utf8"
    else:
        raise ScoreError(f"{label}: not a valid .npy file (format version {version[0]}."
                         f"{version[1]}; 1.0, 2.0 and 3.0 are known)")
    raw = f.read(size_bytes)
    if len(raw) < size_bytes:
        raise ScoreError(f"{label}: not a valid .npy file (truncated header)")
    (hlen,) = struct.unpack(fmt, raw)
    if hlen > MAX_HEADER:
        raise ScoreError(f"{label}: not a valid .npy file (header of {hlen} bytes)")
    text = f.read(hlen)
    if len(text) < hlen:
        raise ScoreError(f"{label}: not a valid .npy file (truncated header)")
    try:
        d = ast.literal_eval(text.decode(encoding))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError,
            UnicodeDecodeError) as exc:
        raise ScoreError(f"{label}: not a valid .npy file (header: "
                         f"{type(exc).__name__}: {exc})") from None
    if not isinstance(d, dict) or set(d) != _KEYS:
        keys = sorted(d) if isinstance(d, dict) else type(d).__name__
        raise ScoreError(f"{label}: not a valid .npy file (header holds {keys}, expected "
                         "'descr', 'fortran_order' and 'shape')")
    shape, fortran = d["shape"], d["fortran_order"]
    if not isinstance(fortran, bool):
        raise ScoreError(f"{label}: not a valid .npy file (fortran_order {fortran!r})")
    if not isinstance(shape, tuple) or not all(type(n) is int for n in shape):
        raise ScoreError(f"{label}: not a valid .npy file (shape {shape!r})")
    for n in shape:
        if n < 0:
            raise ScoreError(f"{label}: not a valid .npy file (negative dimension in shape "
                             f"{shape})")
        if n >= 1 << 63:
            raise ScoreError(f"{label}: not a valid .npy file (dimension {n} overflows)")
    return shape, _dtype(d["descr"], label), fortran, 8 + size_bytes + hlen


def _check_size(label, shape, dtype, available):
    need = math.prod(shape) * dtype.itemsize
    if need > available:
        raise ScoreError(f"{label}: truncated .npy data ({max(available, 0)} bytes of data, "
                         f"{need} expected for shape {shape} {dtype})")


def _open_error(label, exc):
    if isinstance(exc, FileNotFoundError):
        return ScoreError(f"{label}: no such file")
    if isinstance(exc, IsADirectoryError):
        return ScoreError(f"{label}: is a directory")
    return ScoreError(f"{label}: {exc.strerror or exc}")


@register
class NpyReader(Reader):
    """A ``.npy`` file (or, with ``offset``, a .npy stored uncompressed at that byte offset of
    a larger file: an ``np.savez`` member)."""

    format_name = ".npy"
    _transient = ("_fd",)

    @staticmethod
    def sniff(path, head):
        return head is not None and head.startswith(MAGIC)

    @staticmethod
    def members(path):
        return [None]

    def __init__(self, path, key=None, *, offset=0, size=None, label=None):
        self.path = os.fspath(path)
        self.paths = (self.path,)
        self.key, self.base = key, offset
        self.label = label or self.path
        self._fd = None
        try:
            with open(self.path, "rb") as f:
                f.seek(offset)
                self.shape, self.dtype, self.fortran, hbytes = read_header(f, self.label)
                end = offset + size if size is not None else os.fstat(f.fileno()).st_size
        except OSError as exc:
            raise _open_error(self.label, exc) from None
        self.data = offset + hbytes
        _check_size(self.label, self.shape, self.dtype, end - self.data)
        if self.fortran and self.ndim > 2:
            raise ScoreError(f"{self.label}: Fortran-ordered arrays of more than 2 dimensions "
                             "are not read; save the array in C order")
        self.fortran = self.fortran and self.ndim == 2
        self.staging = self.fortran or not (self.dtype.isnative or self.dtype.byteorder == "|")

    def _file(self):
        with _OPEN_LOCK:       # threads may share a reader (Dask's threaded scheduler)
            if self._fd is None:
                try:
                    self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
                except OSError as exc:
                    raise _open_error(self.label, exc) from None
            return self._fd

    def close(self):
        with _OPEN_LOCK:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def window(self, start, stop, width, dtype):
        """Rows ``[start, stop)`` (of ``width`` elements) as a read-only ndarray over a memory
        map of the file -- no copy -- when the file holds them as C-contiguous native
        ``dtype``; else None (read them into a buffer).  The pages are asked for ahead
        (``madvise``) and touched here, so the caller computes from memory.  ``release()`` the
        returned :class:`Window` after use: its pages then leave the process's resident set."""
        if self.staging or self.fortran or self.dtype != dtype or stop <= start or not width:
            return None
        it = self.dtype.itemsize
        begin, end = self.data + start * width * it, self.data + stop * width * it
        page = mmap.ALLOCATIONGRANULARITY
        base = begin - begin % page
        try:
            mm = mmap.mmap(self._file(), end - base, access=mmap.ACCESS_READ, offset=base)
        except (OSError, ValueError):
            return None
        return Window(mm, begin - base, (stop - start, width), dtype)

    def _pread(self, buf, offset):
        view = memoryview(buf.reshape(-1).view(np.uint8))     # buf: a contiguous array
        fd, done = self._file(), 0
        while done < len(view):
            n = os.preadv(fd, [view[done:]], offset + done)
            if n <= 0:
                raise ScoreError(f"{self.label}: truncated .npy data (the file shrank while read)")
            done += n

    def _read_flat(self, start, stop, out):
        it = self.dtype.itemsize
        if self.fortran:
            n, c = self.shape
            r0, r1 = start // c, -(-stop // c)
            block = np.empty((c, r1 - r0), self.dtype)
            for j in range(c):
                self._pread(block[j], self.data + (j * n + r0) * it)
            out[...] = block.T.reshape(-1)[start - r0 * c:stop - r0 * c]
        elif out.dtype == self.dtype and out.flags.c_contiguous:
            self._pread(out, self.data + start * it)
        else:
            tmp = np.empty(stop - start, self.dtype)
            self._pread(tmp, self.data + start * it)
            out[...] = tmp


def _zip_members(path, label):
    try:
        with zipfile.ZipFile(path) as z:
            return {i.filename[:-4]: i for i in z.infolist() if i.filename.endswith(".npy")}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise ScoreError(f"{label}: corrupt .npz archive ({exc})") from None


@register
class NpzReader(Reader):
    """An array of a ``.npz`` archive: stored members (``np.savez``) are read like .npy files;
    compressed members (``np.savez_compressed``) are decompressed front to back as a stream."""

    format_name = ".npz"
    _transient = ("_zip", "_stream")

    @staticmethod
    def sniff(path, head):
        return head is not None and head.startswith(ZIP_MAGICS)

    @staticmethod
    def members(path):
        return sorted(_zip_members(path, path))

    def __init__(self, path, key=None, *, label=None):
        self.path = os.fspath(path)
        self.paths = (self.path,)
        members = _zip_members(self.path, label or self.path)
        if key is None:
            if len(members) != 1:
                raise ScoreError(f"{label or self.path}: holds arrays {sorted(members)}; name one")
            key = next(iter(members))
        if key not in members:
            raise ScoreError(f"{label or self.path}: has no array {key!r} "
                             f"(it holds {sorted(members)})")
        self.key = key
        self.label = label or f"{self.path}[{key}]"
        info = members[key]
        self._zip = self._stream = self._inner = None
        if info.compress_type == zipfile.ZIP_STORED:
            start = self._member_start(info)
            self._inner = NpyReader(self.path, offset=start, size=info.file_size, label=self.label)
            self.shape, self.dtype, self.staging = (self._inner.shape, self._inner.dtype,
                                                    self._inner.staging)
        else:
            self.sequential = True
            self._open_stream()
            self.shape, self.dtype, fortran, _ = self._header
            if fortran and self.ndim > 1:
                raise ScoreError(f"{self.label}: a compressed Fortran-ordered member cannot be "
                                 "read in rows; save it in C order or with np.savez")

    def _member_start(self, info):
        with open(self.path, "rb") as f:
            f.seek(info.header_offset)
            head = f.read(30)
            if len(head) != 30 or head[:4] != ZIP_MAGICS[0]:
                raise ScoreError(f"{self.label}: corrupt .npz archive (bad member header)")
            return (info.header_offset + 30 + int.from_bytes(head[26:28], "little")
                    + int.from_bytes(head[28:30], "little"))

    def _open_stream(self):
        try:
            self._zip = zipfile.ZipFile(self.path)
            self._stream = self._zip.open(self.key + ".npy")
            self._header = read_header(self._stream, self.label)
        except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError, EOFError,
                KeyError) as exc:
            raise ScoreError(f"{self.label}: cannot read the .npz member ({exc})") from None
        self._pos = 0

    def close(self):
        for name in ("_stream", "_zip"):
            obj = getattr(self, name, None)
            if obj is not None:
                obj.close()
                setattr(self, name, None)
        if self._inner is not None:
            self._inner.close()

    def __getstate__(self):
        if self.sequential:
            raise TypeError(f"{self.label}: a compressed .npz member can only be read in order; "
                            "use .npy files (or np.savez) to read it in parallel")
        return super().__getstate__()

    def _read_flat(self, start, stop, out):
        if self._inner is not None:
            self._inner._read_flat(start, stop, out)
            return
        if self._stream is None or start < self._pos:
            if start < self._pos and self._stream is not None:
                self.close()
            self._open_stream()
        if start > self._pos:          # skip forward
            self._bytes(start - self._pos)
            self._pos = start
        buf = self._bytes(stop - start)
        out[...] = np.frombuffer(buf, self.dtype)
        self._pos = stop

    def _bytes(self, count):
        nbytes = count * self.dtype.itemsize
        try:
            buf = self._stream.read(nbytes)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise ScoreError(f"{self.label}: corrupt .npz member ({exc})") from None
        if len(buf) != nbytes:
            raise ScoreError(f"{self.label}: truncated .npy data in the .npz archive")
        return buf


_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)   # Linux >= 5.14


class Window:
    """A memory-mapped run of rows (see :meth:`NpyReader.window`)."""

    def __init__(self, mm, offset, shape, dtype):
        self._mm = mm
        try:                                # fault the pages in now (the reader thread)
            mm.madvise(_POPULATE_READ)
        except (OSError, ValueError, AttributeError):
            try:
                mm.madvise(mmap.MADV_WILLNEED)
            except (OSError, ValueError, AttributeError):
                pass
        self.array = np.frombuffer(mm, dtype, count=shape[0] * shape[1], offset=offset).reshape(shape)

    def release(self):
        """Unmap the pages (once nothing refers to ``array`` any more)."""
        self.array = None
        try:
            self._mm.close()
        except BufferError:     # still referenced: unmapped when the last reference goes
            pass
