"""fastxent on ``dask.array``: cross-entropy and batch scoring beyond one machine.

The arrays are split by rows only (the class axis is rechunked to one chunk), fastxent's kernel
runs on each block where it lives, and a reduction goes back as a small exact partial sum per
block (:class:`fastxent.score.ExactSum`: the losses' sum, and the sum of the weights that form
the mean's denominator).  So ``reduction="mean"`` is *sum of weighted losses / sum of weights*
with ignored rows left out, rounded once, and the same for any chunking or number of workers.

Scoring (:func:`score_files`, :func:`score_summary`) reads every format ``fastxent score`` reads
through the same readers (Zarr through ``dask.array.from_zarr``), in blocks of at least 128 MiB
of scores, scores each block where it lives with the local engine's chunk function and gathers
only its exact totals: the summary equals the local one exactly.  For files, one task per block
reads it (a native .npy through a memory map, no copy) and scores it, so no block of scores
ever travels between workers.

Works with any Dask scheduler; with ``dask.distributed``::

    from dask.distributed import Client
    import fastxent.dask as fxd

    client = Client("tcp://scheduler:8786")          # or LocalCluster() for one machine
    print(fxd.score_files("/shared/shards", client=client).format())
    logits, labels = fxd.from_npy_shards(sorted(glob("shards/logits_*.npy")),
                                         sorted(glob("shards/labels_*.npy")))
    loss = fxd.cross_entropy(logits, labels).compute()

Files are opened by the workers themselves (only the path travels), so they must be visible to
every worker at the same path, e.g. on a shared file system.  Requires the optional extra
``dask`` (``pip install 'fastxent[dask]'``); dask is imported lazily.
"""
import math
import os
import time

import numpy as np

from . import score as _score
from .score import ExactSum, ScoreError, check_labels, engine

__all__ = ["cross_entropy", "score_summary", "score_files", "from_npy", "from_npy_shards",
           "BLOCK_BYTES"]

_UNSUPPORTED = ("axis", "return_z_loss", "out", "inplace", "grad_output", "grad_dtype")
BLOCK_BYTES = 128 << 20       # default block: at least this many bytes of scores (Dask's own
                              # default array chunk; fewer tasks, less scheduling per byte)


def _dask():
    try:
        import dask
        import dask.array as da
    except ImportError as exc:
        raise ImportError("fastxent.dask needs dask: pip install 'fastxent[dask]' "
                          "(dask[distributed])") from exc
    return dask, da


# ============================================================================ inputs
def _block_rows(width, itemsize, chunk_rows=None):
    return chunk_rows or max(1, -(-BLOCK_BYTES // max(1, width * itemsize)))


def _splittable(reader):
    if reader.sequential:
        raise ScoreError(f"{reader.label}: compressed .npz members cannot be split across Dask "
                         "workers; use .npy files (or np.savez)")


def _rows_array(reader, width, rows_per_block):
    """A reader's rows of ``width`` values as a dask array chunked by rows (each block read by
    the worker that needs it; Zarr through dask.array.from_zarr)."""
    _, da = _dask()
    _splittable(reader)
    rows = reader.size // width if width else 0
    if type(reader).__name__ == "ZarrReader":
        arr = da.from_zarr(reader.path, component=reader.key)
        arr = arr.reshape((rows,) if width == 1 else (rows, width))
        return arr.rechunk({0: rows_per_block} if width == 1 else {0: rows_per_block, 1: -1})
    view = reader.rows(width)
    chunks = (rows_per_block,) + view.shape[1:]
    from dask.base import tokenize
    return da.from_array(view, chunks=chunks, name="fastxent-rows-" + tokenize(view, chunks),
                         meta=np.empty((0,) * view.ndim, view.dtype), fancy=False)


def from_npy(path, chunk_rows=None, *, member=None):
    """A .npy file (or an uncompressed .npz ``member``) as a dask array chunked by rows (default:
    blocks of at least 128 MiB); each block is read by the worker that needs it."""
    src = _score.NpzReader(path, member) if member is not None else _score.NpyReader(path)
    width = math.prod(src.shape[1:])
    arr = _rows_array(src, width, _block_rows(width, src.dtype.itemsize, chunk_rows))
    return arr.reshape(src.shape) if src.ndim > 2 else arr


def from_npy_shards(logits_paths, labels_paths, chunk_rows=None):
    """(logits, labels) dask arrays: the shards' .npy files concatenated by rows, in the order
    given (validated like ``fastxent score``'s inputs)."""
    if len(logits_paths) != len(labels_paths):
        raise ScoreError(f"labels: {len(labels_paths)} files for {len(logits_paths)} logits files")
    readers = [(_score.NpyReader(a), _score.NpyReader(b))
               for a, b in zip(logits_paths, labels_paths)]
    inputs = _score.validate_inputs(readers)
    K = _block_rows(inputs.width, inputs.logits.dtype.itemsize, chunk_rows)
    return (_rows_array(inputs.logits, inputs.width, K), _rows_array(inputs.labels, 1, K))


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
        check_labels(t, x.shape[1], ignore_index, int(row0), "target")
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
def _labels64(y, row0):
    y = np.asarray(y).reshape(-1)
    big = np.iinfo(np.int64).max
    if y.dtype.kind == "u" and y.dtype.itemsize == 8 and y.size and y.max() > big:
        i = int(np.argmax(y > big))
        raise ScoreError(f"labels: label {y[i]} at row {row0 + i} is out of range")
    return y.astype(np.int64)


def _score_block(x, y, w, row0, ctx, cdtype, offsets, ends):
    """The local engine's chunk function on one block of rows, where the block lives."""
    x = np.ascontiguousarray(x, dtype=cdtype).reshape(x.shape[0], -1)
    y = _labels64(y, row0)
    if ctx.shift:
        engine.shift_labels(y, row0, ends, ctx.ignore_index)
    w = None if w is None else np.asarray(w, np.float64).reshape(-1)
    part, losses, seq = engine.score_chunk(x, y, w, row0, ctx, offsets)
    return row0, part, losses, seq


def _active_client(client):
    if client is not None:
        return client
    try:
        from distributed import default_client
        return default_client()
    except (ImportError, ValueError):
        return None


def _workers(client):
    try:
        return len(client.scheduler_info().get("workers", {}))
    except Exception:  # noqa: BLE001 - the scheduler is gone: no worker either
        return 0


def _gather_distributed(client, tasks, add, timeout):
    """Compute ``tasks`` on the cluster, passing each result to ``add`` as it arrives; stop with
    an error when no worker has been left for ``timeout`` seconds."""
    from distributed import as_completed

    futures = client.compute(tasks)
    ready, left, alone_since = as_completed(futures, loop=client.loop), len(futures), None
    checked = time.monotonic()
    try:
        while left:
            if ready.has_ready():
                for fut in ready.next_batch(block=False):
                    add(_result(fut))
                    fut.release()
                    left -= 1
                alone_since = None
                continue
            now = time.monotonic()
            if now - checked < min(0.5, timeout):
                time.sleep(0.005)
                continue
            checked = now
            if _workers(client):
                alone_since = None
            else:
                alone_since = alone_since or time.monotonic()
                if time.monotonic() - alone_since >= timeout:
                    raise ScoreError(f"dask_timeout: no Dask worker left for {timeout:g} s; "
                                     f"stopped with {left} of {len(futures)} blocks not scored")
            time.sleep(0.005)
    except BaseException:
        client.cancel(futures)
        raise


def _compute(tasks, client, timeout, add):
    """Compute delayed ``tasks``, passing each result to ``add`` (in any order)."""
    if client is not None:
        _gather_distributed(client, list(tasks), add, timeout)
        return
    dask, _ = _dask()
    step = 4 * (os.cpu_count() or 1)
    for i in range(0, len(tasks), step):
        for r in dask.compute(*tasks[i:i + step], scheduler="threads"):
            add(r)


def _result(fut):
    try:
        return fut.result()
    except ScoreError:
        raise
    except Exception as exc:  # noqa: BLE001 - KilledWorker, CommClosedError, ...
        if type(exc).__name__ == "KilledWorker":
            raise ScoreError(f"address: a block was lost with its workers too often "
                             f"({exc})") from None
        raise


def _prepare(inputs, opts, offsets, out, per_class, paths, first_rows):
    """(sequence offsets, chunk Context, compute dtype) of a run; ``first_rows(k)``: the first k
    rows of scores (input="auto" decides from them)."""
    offs = _score.sequences(inputs, opts, offsets)
    _score.check_outputs(out, per_class, paths)
    ctx = _score.context(inputs, opts, per_class is not None)
    cdtype = engine.compute_dtype(inputs.logits.dtype)
    if ctx.kind == "auto":          # from the first rows, then checked in every block
        k = min(inputs.rows, engine.detect_rows(inputs.width, cdtype, opts.chunk_rows))
        first = first_rows(k) if k else None
        ctx.kind = "logits" if first is None else engine.detect_kind(
            np.asarray(first, cdtype).reshape(first.shape[0], -1), inputs.binary)
        ctx.detected, ctx.first_rows = ctx.kind == "probs", k
    if ctx.eps is None:
        ctx.eps = float(np.finfo(cdtype).eps)
    ctx.keep_losses = out is not None
    return offs, ctx, cdtype


def _block_parts(offs, ends, r0, n):
    """The offsets part and the sequence ends a block of rows [r0, r0 + n) needs."""
    part = None if offs is None else engine.offsets_part(offs, r0, n)
    e = None if ends is None else ends[np.searchsorted(ends, r0):np.searchsorted(ends, r0 + n)]
    return part, e


def _execute(inputs, opts, ctx, offs, out, per_class, tasks, client, timeout):
    run = engine.Run(inputs, opts, ctx, offs, out, per_class)
    return run.execute(lambda add: _compute(tasks, client, timeout, lambda r: add(*r)))


def _run(inputs, x, y, w, opts, offsets, out, per_class, client, timeout, paths):
    """Score the row views ``x`` (rows, width), ``y``, ``w`` (dask arrays)."""
    dask, da = _dask()
    client = _active_client(client)

    def first_rows(k):
        got = []
        _compute(x[:k].rechunk({0: -1}).to_delayed().ravel(), client, timeout, got.append)
        return got[0]

    offs, ctx, cdtype = _prepare(inputs, opts, offsets, out, per_class, paths, first_rows)
    rows_chunks = x.chunks[0]
    if opts.shift:
        y = da.concatenate([y[1:], da.full((1,), opts.ignore_index, dtype=y.dtype)])
    y = y.rechunk((rows_chunks,))
    w = None if w is None else w.rechunk((rows_chunks,))
    ends = engine.sequence_ends(offs) if opts.shift else None
    starts = np.concatenate([[0], np.cumsum(rows_chunks)[:-1]]).astype(np.int64).tolist()
    block = dask.delayed(_score_block, pure=True)
    wb = [None] * len(starts) if w is None else w.to_delayed().ravel()
    tasks = [block(xb, yb, wbk, r0, ctx, cdtype, *_block_parts(offs, ends, r0, n))
             for xb, yb, wbk, r0, n in zip(x.to_delayed().ravel(), y.to_delayed().ravel(), wb,
                                           starts, rows_chunks)]
    return _execute(inputs, opts, ctx, offs, out, per_class, tasks, client, timeout)


def _score_span(inputs, ctx, cdtype, start, stop, offsets, ends):
    """Read rows [start, stop) through the readers and score them, in one task where it runs:
    the local engine's chunk reader (a native .npy is memory-mapped, not copied) and chunk
    function."""
    buf = engine.Buffers(stop - start, inputs.width, cdtype, inputs.weights is not None)
    try:        # the readers stay open: with the threaded scheduler, tasks share them
        x, y, w = engine.read_chunk(inputs, ctx, ends, start, stop, buf)
        part, losses, seq = engine.score_chunk(x, y, w, start, ctx, offsets)
        return start, part, losses, seq
    finally:
        buf.release()


def _run_files(inputs, K, opts, offsets, out, per_class, client, timeout, paths):
    """Score opened file inputs in blocks of K rows: one task per block reads and scores it."""
    dask, _ = _dask()
    client = _active_client(client)

    def first_rows(k):
        x = np.empty((k, inputs.width), engine.compute_dtype(inputs.logits.dtype))
        return engine.read_rows(inputs.logits, "logits", 0, k, x, inputs.width)

    offs, ctx, cdtype = _prepare(inputs, opts, offsets, out, per_class, paths, first_rows)
    ends = engine.sequence_ends(offs) if opts.shift else None
    N = inputs.rows
    span = dask.delayed(_score_span, pure=False)
    tasks = [span(inputs, ctx, cdtype, a, min(N, a + K),
                  *_block_parts(offs, ends, a, min(K, N - a))) for a in range(0, N, K)]
    return _execute(inputs, opts, ctx, offs, out, per_class, tasks, client, timeout)


def _options(chunk_rows, kw):
    """Validated options; without ``num_threads`` a block uses one thread (Dask runs blocks in
    parallel: as many as the workers have threads)."""
    kw.setdefault("num_threads", 1)
    return _score.options(chunk_rows=chunk_rows, **kw)


def score_summary(logits, labels, *, weights=None, offsets=None, out=None, per_class=None,
                  client=None, timeout=60.0, **options):
    """``fastxent.score`` over dask arrays: a :class:`fastxent.score.ScoreSummary`, computed now.

    logits: (N, C), (B, T, V) or binary (N,) dask arrays (or anything ``dask.array.asarray``
    takes), labels and ``weights`` of the matching shape; ``options``: those of
    :func:`fastxent.score.score_files` (input, binary, shift, per_sequence, ignore_index, base,
    top_k, ece_bins, eps, num_threads, progress).  Each row block is scored where it lives and
    sends back its exact totals (and its per-row losses when ``out`` is given, written to the
    file as they arrive).  With a ``dask.distributed`` client (``client`` or the default one)
    blocks are gathered as they finish and ``timeout`` seconds without any worker stop the run
    with a ScoreError; otherwise ``dask.compute``.
    """
    _, da = _dask()
    logits, labels = da.asarray(logits), da.asarray(labels)
    weights = None if weights is None else da.asarray(weights)
    opts = _options(None, options)
    inputs = _score.inputs_from_arrays(logits, labels, weights=weights, binary=opts.binary)
    x = logits.reshape((inputs.rows, inputs.width)).rechunk({1: -1})
    y = labels.reshape((inputs.rows,))
    w = None if weights is None else weights.reshape((inputs.rows,))
    return _run(inputs, x, y, w, opts, offsets, out, per_class, client, timeout,
                [p for p in (offsets,) if isinstance(p, (str, os.PathLike))])


def score_files(logits, labels=None, *, address=None, client=None, chunk_rows=None,
                timeout=60.0, logits_key=None, labels_key=None, weights=None, offsets=None,
                out=None, per_class=None, **options):
    """:func:`fastxent.score.score_files` on Dask: the same inputs and options, read through the
    same readers by the workers (the files must be visible to every worker at the same path)
    in blocks of ``chunk_rows`` rows (default: at least 128 MiB of scores).  ``address``
    connects a ``dask.distributed.Client`` (e.g. "tcp://scheduler:8786") for the duration of
    the call; otherwise ``client``, the default client, or the local Dask scheduler is used.
    ``timeout``: seconds without any worker before the run stops with a ScoreError.  The
    summary equals the local one exactly.
    """
    _dask()
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
        raise ScoreError(f"dask_timeout: expected seconds >= 0, got {timeout!r}")
    opts = _options(chunk_rows, options)
    inputs = _score.open_inputs(logits, labels, logits_key=logits_key, labels_key=labels_key,
                                weights=weights, binary=opts.binary)
    K = _block_rows(inputs.width, inputs.logits.dtype.itemsize, opts.chunk_rows)
    paths = inputs.paths + [os.fspath(offsets)] if isinstance(offsets, (str, os.PathLike)) \
        else inputs.paths
    for r in inputs.readers:
        _splittable(r)
    if any(type(r).__name__ == "ZarrReader" for r in inputs.readers):
        x = _rows_array(inputs.logits, inputs.width, K)
        y = _rows_array(inputs.labels, 1, K)
        w = None if inputs.weights is None else _rows_array(inputs.weights, 1, K)

        def go(c):
            return _run(inputs, x, y, w, opts, offsets, out, per_class, c, float(timeout), paths)
    else:
        def go(c):
            return _run_files(inputs, K, opts, offsets, out, per_class, c, float(timeout), paths)

    try:
        if address is None:
            return go(client)
        from distributed import Client

        try:
            client = Client(os.fspath(address), timeout="10s", set_as_default=False)
        except (OSError, ValueError, TypeError) as exc:
            raise ScoreError(f"address: cannot connect to {address}: {exc}") from None
        with client:
            return go(client)
    finally:
        inputs.close()
