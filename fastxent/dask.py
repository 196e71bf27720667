"""fastxent on ``dask.array``: cross-entropy and batch scoring beyond one machine.

The arrays are split by rows only (the class axis is rechunked to one chunk), fastxent's kernel
runs on each block where it lives, and a reduction goes back as a small exact partial sum per
block (:class:`fastxent.score.ExactSum`: the losses' sum, and the sum of the weights that form
the mean's denominator).  So ``reduction="mean"`` is *sum of weighted losses / sum of weights*
with ignored rows left out, rounded once, and the same for any chunking or number of workers.

Works with any Dask scheduler; with ``dask.distributed``::

    from dask.distributed import Client
    import fastxent.dask as fxd

    client = Client("tcp://scheduler:8786")          # or LocalCluster() for one machine
    logits, labels = fxd.from_npy_shards(sorted(glob("shards/logits_*.npy")),
                                         sorted(glob("shards/labels_*.npy")))
    loss = fxd.cross_entropy(logits, labels).compute()
    print(fxd.score_summary(logits, labels).format())

``from_npy``/``from_npy_shards`` memory-map the files inside the workers (only the path travels,
so the files must be visible to every worker at the same path, e.g. on a shared file system).
Requires the optional extra ``dask`` (``pip install 'fastxent[dask]'``); dask is imported lazily.
"""
import math
import os
import time

import numpy as np

from . import score as _score
from .score import ExactSum, NpyArray, ScoreError

__all__ = ["cross_entropy", "score_summary", "score_files", "from_npy", "from_npy_shards"]

_UNSUPPORTED = ("axis", "return_z_loss", "out", "inplace", "grad_output", "grad_dtype")


def _dask():
    try:
        import dask
        import dask.array as da
    except ImportError as exc:
        raise ImportError("fastxent.dask needs dask: pip install 'fastxent[dask]' "
                          "(dask[distributed])") from exc
    return dask, da


# ============================================================================ inputs
def _from_source(src, chunk_rows):
    _, da = _dask()
    from dask.base import tokenize

    if isinstance(src, _score.NpzStream):
        raise ScoreError(f"{src.label}: compressed .npz members cannot be split across Dask "
                         "workers; use .npy files (or np.savez)")
    if not isinstance(src, NpyArray):
        return da.asarray(src).rechunk((chunk_rows,) + (-1,) * (src.ndim - 1))
    chunks = (chunk_rows,) + tuple(src.shape[1:])
    return da.from_array(src, chunks=chunks, name="fastxent-npy-" + tokenize(src, chunks),
                         meta=np.empty((0,) * src.ndim, src.dtype), fancy=False)


def from_npy(path, chunk_rows=None, *, member=None):
    """A .npy file (or an uncompressed .npz ``member``) as a dask array chunked by rows; each
    block is read from a memory map opened by the worker that needs it."""
    src = NpyArray(path, member)
    if chunk_rows is None:
        chunk_rows = _score.default_chunk_rows(math.prod(src.shape[1:]), src.dtype.itemsize)
    return _from_source(src, chunk_rows)


def from_npy_shards(logits_paths, labels_paths, chunk_rows=None):
    """(logits, labels) dask arrays: the shards' .npy files concatenated by rows, in the order
    given (validated like ``fastxent score``'s inputs)."""
    if len(logits_paths) != len(labels_paths):
        raise ScoreError(f"labels: {len(labels_paths)} files for {len(logits_paths)} logits files")
    pairs = [(NpyArray(a), NpyArray(b)) for a, b in zip(logits_paths, labels_paths)]
    _score._check_pairs(pairs)
    return _from_pairs(pairs, chunk_rows)


def _from_pairs(pairs, chunk_rows=None):
    _, da = _dask()
    C, dt = pairs[0][0].shape[1], pairs[0][0].dtype
    K = chunk_rows or _score.default_chunk_rows(C, dt.itemsize)
    logits = da.concatenate([_from_source(lg, K) for lg, _ in pairs], axis=0)
    labels = da.concatenate([_from_source(lb, K) for _, lb in pairs], axis=0)
    return logits, labels


def _by_rows(logits, target, soft):
    """Class axis in one chunk; target chunked like the logits' rows."""
    if logits.numblocks[1] != 1:
        logits = logits.rechunk({1: -1})
    want = logits.chunks if soft else (logits.chunks[0],)
    if target.chunks != want:
        target = target.rechunk(want)
    return logits, target


def _row_starts(chunks):
    return np.concatenate([[0], np.cumsum(chunks)[:-1]]).astype(np.int64).tolist()


# ============================================================================ cross-entropy
def _block_losses(x, t, row0, kw, ignore_index):
    import fastxent

    if t.dtype.kind != "f":
        _score.check_labels(t, x.shape[1], ignore_index, int(row0), "target")
    return fastxent.cross_entropy(x, t, ignore_index=ignore_index, reduction="none", **kw)


def _block_losses_mb(x, t, kw, ignore_index, block_info=None):
    row0 = block_info[0]["array-location"][0][0] if block_info else 0
    return _block_losses(x, t if t.dtype.kind == "f" else t[:, 0], row0, kw, ignore_index)


def _block_sums(x, t, row0, kw, ignore_index, weight):
    """(ExactSum of the losses, denominator part: ExactSum of weights or a row count)."""
    losses = _block_losses(x, t, row0, kw, ignore_index)
    if t.dtype.kind == "f":
        den = x.shape[0]
    else:
        keep = t[t != ignore_index]
        den = keep.size if weight is None else ExactSum(np.asarray(weight, np.float64)[keep])
    return ExactSum(losses), den


def _finish(parts, reduction, dtype):
    total, wsum, count = ExactSum(), ExactSum(), 0
    for s, d in parts:
        total.merge(s)
        if isinstance(d, ExactSum):
            wsum.merge(d)
        else:
            count += d
    if reduction == "sum":
        return dtype.type(float(total))
    weighted = any(isinstance(d, ExactSum) for _, d in parts)
    return dtype.type(total.ratio(wsum if weighted else count))


def cross_entropy(logits, target, *, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, **kwargs):
    """``fastxent.cross_entropy`` on dask arrays: logits (N, C), target (N,) integer labels or
    (N, C) class probabilities, chunked by rows (the class axis is rechunked to one chunk).

    reduction="none" -> a lazy (N,) dask array; "mean"/"sum" -> a lazy 0-d dask array (call
    ``.compute()``).  The mean is the exact sum of the weighted losses over the exact sum of
    the weights of the non-ignored rows (soft targets: over N), rounded once.  Other keywords
    (z_loss, softcap, logit_scale, base, num_threads) are passed to each block's kernel call.
    """
    dask, da = _dask()
    for name in _UNSUPPORTED:
        if name in kwargs and not (name == "axis" and kwargs[name] in (-1, 1)):
            raise TypeError(f"{name}: not supported by fastxent.dask.cross_entropy")
    kwargs.pop("axis", None)
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction: expected one of 'mean', 'sum', 'none', got {reduction!r}")
    logits, target = da.asarray(logits), da.asarray(target)
    if logits.ndim != 2:
        raise ValueError(f"logits: expected a 2-D (N, C) array, got shape {logits.shape}")
    if logits.dtype.kind != "f":
        raise TypeError(f"logits: expected a float array, got dtype {logits.dtype}")
    soft = target.dtype.kind == "f"
    if not soft and target.dtype.kind not in "iu":
        raise TypeError(f"target: expected integer class labels or float class probabilities, "
                        f"got dtype {target.dtype}")
    want = logits.shape if soft else logits.shape[:1]
    if target.shape != want:
        raise ValueError(f"target: expected shape {want} to match the logits' rows, "
                         f"got {target.shape}")
    logits, target = _by_rows(logits, target, soft)
    kw = dict(kwargs, weight=weight, label_smoothing=label_smoothing)
    dtype = np.dtype(np.float64) if logits.dtype == np.float64 else np.dtype(np.float32)
    starts = _row_starts(logits.chunks[0])
    if reduction == "none":
        t2 = target if soft else target[:, None]
        return da.map_blocks(_block_losses_mb, logits, t2, kw, ignore_index, dtype=dtype,
                             drop_axis=1, chunks=(logits.chunks[0],), meta=np.empty((0,), dtype))
    lb = logits.to_delayed().ravel()
    tb = target.to_delayed().ravel()
    block = dask.delayed(_block_sums, pure=True)
    parts = [block(x, t, r, kw, ignore_index, weight) for x, t, r in zip(lb, tb, starts)]
    total = dask.delayed(_finish, pure=True)(parts, reduction, dtype)
    return da.from_delayed(total, shape=(), dtype=dtype, meta=np.empty((), dtype))


# ============================================================================ scoring
def _active_client(client):
    if client is not None:
        return client
    try:
        from distributed import default_client
        return default_client()
    except (ImportError, ValueError):
        return None


def _score_rows(logits, labels, start, stop, row0, kw):
    """score_block on rows start:stop of two NpyArrays, read by the worker running it."""
    return _score.score_block(logits[start:stop], labels[start:stop], row0,
                              where=_score._label(labels, "labels"), **kw)


def _check_arrays(logits, labels):
    if logits.ndim != 2 or logits.dtype not in _score.LOGITS_DTYPES:
        raise ScoreError(f"logits: expected a 2-D float16/32/64 array, got shape {logits.shape} "
                         f"dtype {logits.dtype}")
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or labels.shape[0] != logits.shape[0]:
        raise ScoreError(f"labels: expected {logits.shape[0]} integer labels, got shape "
                         f"{labels.shape} dtype {labels.dtype}")


def _score_tasks(make_tasks, n_rows, n_classes, dtype, nbytes, *, offsets, ignore_index, base,
                 num_threads, out, progress, client):
    """Run the block tasks ``make_tasks(kw, offs, keep_losses)`` gives, gathering results."""
    dask, _ = _dask()
    base = _score._log_base(base)
    num_threads = _score._positive_int(num_threads, "--threads")
    offs = None if offsets is None else _score.load_offsets(offsets, n_rows)
    run = _score._Run(n_rows, n_classes, dtype, offs, out, base, _score._loss_dtype(dtype))
    bar = _score.progress_bar(n_rows, progress)
    t0 = time.perf_counter()
    try:
        kw = dict(ignore_index=ignore_index, num_threads=num_threads,
                  keep_losses=run.writer is not None)
        tasks = make_tasks(kw, offs)
        client = _active_client(client)
        if client is not None:
            from distributed import as_completed

            futures = client.compute(tasks)
            try:
                for fut in as_completed(futures, loop=client.loop):
                    r = fut.result()
                    run.add(r)
                    bar.update(r.rows)
                    fut.release()
            except BaseException:
                client.cancel(futures)
                raise
        else:
            for r in dask.compute(*tasks):
                run.add(r)
                bar.update(r.rows)
        return run.finish(time.perf_counter() - t0, nbytes)
    except BaseException:
        run.abort()
        raise
    finally:
        bar.close()


def _with_offsets(kw, offs, row0, rows):
    return kw if offs is None else dict(kw, offsets=_score.offsets_slice(offs, row0, rows))


def score_summary(logits, labels, *, offsets=None, ignore_index=-100, base=None,
                  num_threads=None, out=None, progress=False, client=None):
    """``fastxent.score`` over dask arrays: a :class:`fastxent.score.ScoreSummary` (computed now).

    Each row block is scored where it lives (``fastxent.score.score_block``) and sends back
    only its exact sums and counts (and its per-row losses when ``out`` is given, which the
    client writes atomically as they arrive).  With a ``dask.distributed`` client (``client``
    or the default one) blocks are gathered as they finish; otherwise ``dask.compute``.
    """
    dask, da = _dask()
    logits, labels = da.asarray(logits), da.asarray(labels)
    _check_arrays(logits, labels)
    logits, labels = _by_rows(logits, labels, False)

    def make_tasks(kw, offs):
        block = dask.delayed(_score.score_block, pure=True)
        return [block(x, y, r, **_with_offsets(kw, offs, r, n))
                for x, y, r, n in zip(logits.to_delayed().ravel(), labels.to_delayed().ravel(),
                                      _row_starts(logits.chunks[0]), logits.chunks[0])]

    return _score_tasks(make_tasks, logits.shape[0], logits.shape[1], logits.dtype,
                        logits.nbytes + labels.nbytes, offsets=offsets, ignore_index=ignore_index,
                        base=base, num_threads=num_threads, out=out, progress=progress,
                        client=client)


def score_files(logits, labels=None, *, address=None, client=None, chunk_rows=None,
                offsets=None, ignore_index=-100, base=None, num_threads=None, out=None,
                progress=False):
    """``fastxent.score.score_files`` on Dask: the same inputs and options.  Each task opens
    its ``chunk_rows`` rows as a memory map where it runs (the files must be visible to every
    worker at the same path) and sends back only sums and counts.  ``address`` connects a
    ``dask.distributed.Client`` (e.g. "tcp://scheduler:8786") for the duration of the call;
    otherwise ``client``, the default client, or the local Dask scheduler is used."""
    dask, _ = _dask()
    pairs = _score.open_inputs(logits, labels)
    for pair in pairs:
        for src in pair:
            if isinstance(src, _score.NpzStream):
                raise ScoreError(f"{src.label}: compressed .npz members cannot be split across "
                                 "Dask workers; use .npy files (or np.savez)")
    chunk_rows = _score._positive_int(chunk_rows, "--chunk-rows")
    if out is not None:
        _score._check_out_not_input(out, pairs)
    n_rows = sum(lg.shape[0] for lg, _ in pairs)
    C, dtype = pairs[0][0].shape[1], pairs[0][0].dtype
    K = chunk_rows or _score.default_chunk_rows(C, dtype.itemsize)
    nbytes = sum(lg.nbytes + lb.nbytes for lg, lb in pairs)

    def make_tasks(kw, offs):
        task = dask.delayed(_score_rows, pure=True)
        tasks, row0 = [], 0
        for lg, lb in pairs:
            lg._cache = lb._cache = None       # the client's maps stay out of the graph
            n = lg.shape[0]
            for a in range(0, n, K):
                b = min(n, a + K)
                tasks.append(task(lg, lb, a, b, row0 + a, _with_offsets(kw, offs, row0 + a, b - a)))
            row0 += n
        return tasks

    def go(client):
        return _score_tasks(make_tasks, n_rows, C, dtype, nbytes, offsets=offsets,
                            ignore_index=ignore_index, base=base, num_threads=num_threads,
                            out=out, progress=progress, client=client)

    if address is None:
        return go(client)
    from distributed import Client

    try:
        client = Client(os.fspath(address), timeout="10s", set_as_default=False)
    except (OSError, ValueError, TypeError) as exc:
        raise ScoreError(f"--dask: cannot connect to {address}: {exc}") from None
    with client:
        return go(client)
