"""Output files of a scoring run, written atomically.

A file is written under a temporary name (``.NAME.XXXX.tmp``) in the target's directory and
renamed into place by ``commit()``; ``abort()`` (on any error, Ctrl-C or a stop signal the
command turns into an exception) removes it, so an interrupted run leaves whatever was at the
target before, untouched, and no temporary file.  The .npy writer fills its rows with
``os.pwrite`` in any order (Dask blocks arrive out of order), never holding them in memory.
"""
import os
import tempfile

import numpy as np

from ._common import ScoreError

__all__ = ["AtomicFile", "NpyWriter", "check_out_path", "check_not_input", "npy_file", "csv_file",
           "commit_all"]


def check_out_path(path, what):
    """``path`` can be created: its directory exists and is writable, it is no directory."""
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ScoreError(f"{what}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise ScoreError(f"{what}: directory {parent} is not writable")
    if os.path.isdir(path):
        raise ScoreError(f"{what}: {path} is a directory")
    return path


def check_not_input(path, what, inputs):
    """Refuse an output path that is one of the input files (or inside an input directory)."""
    if path is None:
        return
    target = os.path.realpath(path)
    for p in inputs:
        if p is None or isinstance(p, np.ndarray):
            continue
        p = os.fspath(p)
        real = os.path.realpath(p)
        same = real == target or (os.path.exists(path) and os.path.exists(p)
                                  and os.path.samefile(p, path))
        if same or (os.path.isdir(real) and target.startswith(real + os.sep)):
            raise ScoreError(f"{what}: {path} is one of the inputs ({p})")


class AtomicFile:
    """A file created under a temporary name; ``commit()`` renames it to ``path``."""

    def __init__(self, path):
        self.path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(self.path))
        self.fd, self.tmp = tempfile.mkstemp(dir=directory, suffix=".tmp",
                                             prefix=f".{os.path.basename(self.path)}.")

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def write_all(self, data):
        view = memoryview(data).cast("B")
        while view:
            view = view[os.write(self.fd, view):]

    def commit(self):
        try:
            os.close(self.fd)
            self.fd = None
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.tmp, 0o666 & ~umask)
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise

    def abort(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


def _header(shape, dtype):
    import io
    d = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
         "shape": tuple(shape)}
    buf = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(buf, d)
    except ValueError:            # a header over 64 KiB
        buf = io.BytesIO()
        np.lib.format.write_array_header_2_0(buf, d)
    return buf.getvalue()


class NpyWriter(AtomicFile):
    """A .npy of ``shape`` and ``dtype`` written row by row: ``write(row0, values)`` puts the
    flat ``values`` at element ``row0 * row size``."""

    def __init__(self, path, shape, dtype):
        super().__init__(path)
        try:
            self.dtype = np.dtype(dtype)
            head = _header(shape, self.dtype)
            self.write_all(head)
            self.data = len(head)
            self.end = self.data + int(np.prod(shape, dtype=np.int64)) * self.dtype.itemsize
        except BaseException:
            self.abort()
            raise

    def write(self, start, values):
        data = np.ascontiguousarray(values, dtype=self.dtype).reshape(-1)
        view = memoryview(data).cast("B")
        offset = self.data + start * self.dtype.itemsize
        while view:
            n = os.pwrite(self.fd, view, offset)
            view, offset = view[n:], offset + n

    def commit(self):
        if self.fd is not None:
            os.ftruncate(self.fd, self.end)        # an empty tail (no rows) is still a valid file
        super().commit()


def npy_file(path, array):
    """An uncommitted NpyWriter holding ``array`` (``commit()`` puts it at ``path``)."""
    w = NpyWriter(path, array.shape, array.dtype)
    try:
        w.write(0, array)
    except BaseException:
        w.abort()
        raise
    return w


def csv_file(path, header, columns):
    """An uncommitted AtomicFile holding a CSV of ``header`` and the rows of ``columns``."""
    lines = [",".join(header)]
    for row in zip(*columns):
        lines.append(",".join(_cell(v) for v in row))
    f = AtomicFile(path)
    try:
        f.write_all(("\n".join(lines) + "\n").encode())
    except BaseException:
        f.abort()
        raise
    return f


def commit_all(files):
    """Commit every file; on a failure, remove the ones not yet committed."""
    for i, f in enumerate(files):
        try:
            f.commit()
        except BaseException:
            for g in files[i + 1:]:
                g.abort()
            raise


def _cell(v):
    if isinstance(v, (float, np.floating)):
        return repr(float(v)) if np.isfinite(v) else ""
    return str(v)
