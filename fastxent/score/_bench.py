"""Measuring ``fastxent score``: its throughput beside its two ceilings.

Layer: a tool on top of ``fastxent.score`` (the benchmark suite in ``bench/`` and ``fastxent
bench --full`` call :func:`measure`).  For one .npy file of float32 logits it times, in GB/s of
the logits file:

* ``score``: :func:`fastxent.score.score_files` (loss, top-1 accuracy, calibration, Brier);
* ``kernel``: ``fastxent.cross_entropy(reduction="none")`` on the same array already in memory
  (warm only: the ceiling of the computation);
* ``read``: a plain sequential read of the file into one reused buffer (the ceiling of the I/O).

"warm" runs find the file in the page cache; "cold" runs first evict it with
``posix_fadvise(POSIX_FADV_DONTNEED)`` (Linux; no root needed; skipped where unavailable).
"""
import os
import shutil
import tempfile
import time

import numpy as np

__all__ = ["measure", "measure_dask", "report", "make_file", "plain_read"]

READ_BLOCK = 8 << 20


def make_file(directory, rows, classes, seed=0):
    """(logits path, labels path): float32 logits (rows, classes) and int64 labels, written in
    blocks (never the whole array in memory)."""
    rng = np.random.default_rng(seed)
    lg, lb = os.path.join(directory, "logits.npy"), os.path.join(directory, "labels.npy")
    x = np.lib.format.open_memmap(lg, mode="w+", dtype=np.float32, shape=(rows, classes))
    step = max(1, READ_BLOCK // (4 * classes))
    block = (2 * rng.standard_normal((min(step, rows), classes))).astype(np.float32)
    for i in range(0, rows, step):
        n = min(step, rows - i)
        x[i:i + n] = block[:n]
    x.flush()
    del x
    np.save(lb, rng.integers(0, classes, rows))
    return lg, lb


def _evict(path):
    """Drop ``path`` from the page cache; False where the platform cannot."""
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return True


def plain_read(path, block=READ_BLOCK):
    """Read the whole file front to back into one reused buffer; returns the bytes read."""
    buf = bytearray(block)
    view = memoryview(buf)
    total = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(view)
            if not n:
                return total
            total += n


def _best(fn, repeat, before=None):
    best = float("inf")
    for _ in range(repeat):
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure(logits=None, labels=None, *, rows=50_000, classes=1000, repeat=3, cold=True,
            num_threads=None, memory_limit=None):
    """Time scoring, the in-memory kernel and a plain read of the same file.

    logits/labels: paths of a .npy pair (default: a temporary file of ``rows`` x ``classes``
    float32 logits, removed afterwards).  Returns a dict: the file's ``bytes``, ``rows``,
    ``classes``, ``threads``, and ``warm`` / ``cold`` dicts of GB/s (``score``, ``kernel``
    (warm only), ``read``) with the ratios ``score_vs_kernel`` and ``score_vs_read``.
    """
    import fastxent
    from . import DEFAULT_MEMORY_LIMIT, score_files

    tmp = None
    if logits is None:
        tmp = tempfile.mkdtemp(prefix="fastxent-bench-score-")
        logits, labels = make_file(tmp, rows, classes)
    try:
        size = os.path.getsize(logits)
        x = np.load(logits, mmap_mode="r")
        rows, classes = x.shape
        kw = dict(num_threads=num_threads, memory_limit=memory_limit or DEFAULT_MEMORY_LIMIT)
        out = {"bytes": size, "rows": rows, "classes": classes,
               "threads": num_threads or fastxent.config()["default_threads"], "warm": {}}

        arr, y = np.array(x), np.load(labels)           # the kernel's input, in memory
        del x
        runs = {
            "read": lambda: plain_read(logits),
            "score": lambda: score_files(logits, labels, **kw),
            "kernel": lambda: fastxent.cross_entropy(arr, y, reduction="none",
                                                     num_threads=num_threads),
        }
        for fn in runs.values():                      # warm-up; the page cache holds the file
            fn()
        # interleaved, best of each: a slow moment of the machine hits all three alike
        best = dict.fromkeys(runs, float("inf"))
        for _ in range(repeat):
            for name, fn in runs.items():
                best[name] = min(best[name], _best(fn, 1))
        del arr
        warm = out["warm"]
        for name, t in best.items():
            warm[name] = size / t / 1e9
        warm["score_vs_kernel"] = warm["score"] / warm["kernel"]
        warm["score_vs_read"] = warm["score"] / warm["read"]
        if cold and _evict(logits):
            evict = lambda: _evict(logits)  # noqa: E731
            best = {"read": float("inf"), "score": float("inf")}
            for _ in range(repeat):
                for name in best:
                    best[name] = min(best[name], _best(runs[name], 1, evict))
            c = out["cold"] = {name: size / t / 1e9 for name, t in best.items()}
            c["score_vs_read"] = c["score"] / c["read"]
        return out
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def measure_dask(logits=None, labels=None, *, rows=500_000, classes=1000, workers=2, repeat=3):
    """Time ``fastxent.score_files`` against ``fastxent.dask.score_files`` on a LocalCluster of
    ``workers`` single-threaded worker processes (page cache warm), interleaved, best of each.

    Returns a dict: ``local_s``, ``dask_s``, ``ratio`` (dask / local), ``same`` (the summaries
    are equal but for the timing keys), ``workers``, ``bytes``.  Needs ``fastxent[dask]``.
    """
    import fastxent
    import fastxent.dask as fxd
    from distributed import Client, LocalCluster

    tmp = None
    if logits is None:
        tmp = tempfile.mkdtemp(prefix="fastxent-bench-dask-")
        logits, labels = make_file(tmp, rows, classes)
    timing = ("seconds", "rows_per_s", "gb_per_s")
    try:
        plain_read(logits)
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True) as cluster, \
                Client(cluster) as client:
            runs = {"local": lambda: fastxent.score_files(logits, labels),
                    "dask": lambda: fxd.score_files(logits, labels, client=client)}
            got = {name: fn().as_dict() for name, fn in runs.items()}      # warm-up
            best = dict.fromkeys(runs, float("inf"))
            for _ in range(repeat):
                for name, fn in runs.items():
                    best[name] = min(best[name], _best(fn, 1))
        same = all(got["local"][k] == got["dask"][k] for k in got["local"] if k not in timing)
        return {"local_s": best["local"], "dask_s": best["dask"],
                "ratio": best["dask"] / best["local"], "same": same, "workers": workers,
                "bytes": os.path.getsize(logits)}
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def report(result):
    """The lines ``fastxent bench --full`` prints for a :func:`measure` result."""
    r = result
    lines = [f"score: {r['rows']:,} x {r['classes']:,} float32 logits "
             f"({r['bytes'] / 1e9:.2f} GB), {r['threads']} threads"]
    for name, d in (("warm", r["warm"]), ("cold", r.get("cold"))):
        if not d:
            continue
        parts = [f"score {d['score']:.2f} GB/s", f"read {d['read']:.2f} GB/s"]
        if "kernel" in d:
            parts.insert(1, f"in-memory kernel {d['kernel']:.2f} GB/s")
            parts.append(f"score/kernel {d['score_vs_kernel']:.0%}")
        parts.append(f"score/read {d['score_vs_read']:.0%}")
        lines.append(f"  {name} cache: " + ", ".join(parts))
    return "\n".join(lines)
