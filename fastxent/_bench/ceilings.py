"""The machine's two ceilings for a cross-entropy pass, measured at run time per thread count.

* memory: the DRAM read bandwidth (GB/s) -- ``np.max`` over a float32 array of at least 1 GiB
  and 4x the L3 cache, split over k threads (NumPy releases the GIL in reductions);
* exp: the element rate (elements/s) of fastxent's own exp polynomial -- ``fastxent.logsumexp``
  over rows of 4096 that stay in cache (about half of each core's L2 per thread), per dtype.

A case that moves B bytes for E elements cannot run faster than ``min(read / (B/E), exp)``
elements/s at its thread count: ``case_ceiling`` gives that lower ceiling and which one it is
("mem" or "exp"), and the report shows each case's rate as a % of it.  The exp ceiling counts
one exp per element, the least any loss pass evaluates; ops that need more (loss+grad today
evaluates exp twice; bce_logits an exp and a log) stay further below it.

Layer: above timing.py and machine.py; the ceilings are a plain dict (JSON-ready; its thread-count
keys may come back from JSON as strings, ``at`` reads both).
"""
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .machine import cache_bytes, mem_available
from .timing import time_call

READ_MIN_BYTES = 1 << 30
EXP_ROW = 4096
EXP_PER_THREAD_BYTES = 256 * 1024       # when the L2 size is unknown
BUDGET_S = 0.25                         # seconds of samples per ceiling and thread count
# per mode (grid.MODES): seconds of samples, and sizes (None: the defaults above)
MODE_OPTIONS = {"full": {"budget": 0.5}, "quick": {"budget": 0.25},
                "smoke": {"budget": 0.0, "read_bytes": 16 << 20, "exp_bytes": 1}}


def read_nbytes():
    """Size of the read-bandwidth array: >= 1 GiB and 4x L3, at most a quarter of free memory."""
    n = max(READ_MIN_BYTES, 4 * (cache_bytes(3) or 0))
    avail = mem_available()
    return min(n, max(avail // 4, 64 << 20)) if avail else n


def _monotone(rates):
    """k threads can always do what fewer threads did: a dip at higher k is noise."""
    best = 0.0
    for k in sorted(rates):
        best = rates[k] = max(rates[k], best)
    return rates


def read_bandwidth(thread_counts, nbytes=None, budget=BUDGET_S):
    """DRAM read bandwidth in GB/s per thread count: {k: GB/s}."""
    src = np.empty((read_nbytes() if nbytes is None else nbytes) // 4, np.float32)
    src.fill(1.0)                           # fault the pages in before timing
    rates = {}
    for k in sorted(set(thread_counts)):
        parts = np.array_split(src, k)
        with ThreadPoolExecutor(k) as pool:
            def read():
                return list(pool.map(np.max, parts))
            read()
            rates[k] = src.nbytes / time_call(read, budget).best / 1e9
    return _monotone(rates)


def exp_throughput(dtypes, thread_counts, per_thread_bytes=None, budget=BUDGET_S):
    """Elements/s of fastxent.logsumexp over in-cache rows of EXP_ROW: {dtype: {k: elem/s}}.
    Each thread gets whole blocks of rows (the kernel's unit of work), about
    ``per_thread_bytes`` (default half the L2) in all."""
    import fastxent
    from fastxent import _validation as check

    if per_thread_bytes is None:
        l2 = cache_bytes(2)
        per_thread_bytes = l2 // 2 if l2 else EXP_PER_THREAD_BYTES
    rows_per_block = check.rows_per_block(EXP_ROW)
    rng = np.random.default_rng(2)
    out = {}
    for dtype in dict.fromkeys(dtypes):
        blocks = max(1, per_thread_bytes // (rows_per_block * EXP_ROW * np.dtype(dtype).itemsize))
        rates = {}
        for k in sorted(set(thread_counts)):
            x = rng.standard_normal((k * blocks * rows_per_block, EXP_ROW), dtype=dtype)
            x *= 2.0

            def lse(x=x, k=k):
                return fastxent.logsumexp(x, num_threads=k)
            lse()
            rates[k] = x.size / time_call(lse, budget).best
        out[dtype] = _monotone(rates)
    return out


def measure(dtypes, thread_counts, mode=None, read_bytes=None, exp_bytes=None, budget=BUDGET_S):
    """Both ceilings at each thread count, for the dtypes of a run (a JSON-ready dict); a
    ``mode`` sets the sizes and budget of MODE_OPTIONS."""
    if mode is not None:
        return measure(dtypes, thread_counts, **MODE_OPTIONS[mode])
    nbytes = read_nbytes() if read_bytes is None else read_bytes
    return {"read_gbs": read_bandwidth(thread_counts, nbytes, budget),
            "exp_elems_per_s": exp_throughput(dtypes, thread_counts, exp_bytes, budget),
            "read_bytes": nbytes, "exp_row": EXP_ROW}


def at(mapping, threads):
    """``mapping[threads]`` for int or (after a JSON round trip) str keys; None if absent."""
    if not mapping:
        return None
    value = mapping.get(threads)
    return mapping.get(str(threads)) if value is None else value


def case_ceiling(ceilings, threads, dtype, bytes_per_element):
    """(elements/s, "mem" | "exp") of the lower ceiling for a case, or (None, None) when
    neither was measured at that thread count."""
    limits = []
    read = at((ceilings or {}).get("read_gbs"), threads)
    if read and bytes_per_element:
        limits.append((read * 1e9 / bytes_per_element, "mem"))
    exp = at(((ceilings or {}).get("exp_elems_per_s") or {}).get(dtype), threads)
    if exp:
        limits.append((exp, "exp"))
    return min(limits) if limits else (None, None)
