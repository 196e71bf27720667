"""The one measuring loop of the benchmarks: grid cases, ceilings and the linear case all time
their calls with ``time_calls``.

Each callable (already warmed up by the caller) is calibrated first: a sample is one call, or
several when one call is shorter than ``min_sample`` (tiny shapes: single calls are noisy).  Then
samples are taken round by round across the callables (several callables are interleaved, so a
drifting machine load hits them alike) until each has ``min_repeats`` samples and has spent
``budget`` seconds, or reached ``max_repeats``.  Wall time is ``time.perf_counter``; the CPU time
of the process (``time.process_time``) is kept too.  The garbage collector is off meanwhile.

Layer: no dependency inside ``fastxent._bench``.
"""
import contextlib
import dataclasses
import gc
import itertools
import math
import statistics
import time

MIN_REPEATS = 3
MAX_REPEATS = 200
MIN_SAMPLE_S = 2e-3          # one sample lasts at least this long (tiny shapes: many calls)


@dataclasses.dataclass
class Timing:
    best: float      # seconds per call, best sample
    median: float    # seconds per call, median sample
    repeats: int     # samples
    number: int      # calls per sample
    cpu: float       # process CPU seconds per call, best sample


def _sample(fn, number):
    """(wall, cpu) seconds per call of ``number`` calls of ``fn``."""
    c0 = time.process_time()
    t0 = time.perf_counter()
    for _ in itertools.repeat(None, number):
        fn()
    t1 = time.perf_counter()
    c1 = time.process_time()
    return max(t1 - t0, 1e-9) / number, (c1 - c0) / number


def time_calls(fns, budget, *, min_repeats=MIN_REPEATS, max_repeats=MAX_REPEATS,
               min_sample=MIN_SAMPLE_S, context=None):
    """Time each zero-argument callable of the dict ``fns`` (name -> callable, warmed up);
    return {name: Timing}.  ``budget``: seconds of samples per callable; ``context(name)``, if
    given, is entered around each of its samples (e.g. a thread-count setting)."""
    context = context or (lambda name: contextlib.nullcontext())
    number, samples = {}, {name: [] for name in fns}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for name, fn in fns.items():
            with context(name):
                once = _sample(fn, 1)
                if once[0] >= min_sample:         # the calibration call is a sample of one call
                    number[name] = 1
                    samples[name].append(once)
                else:                             # re-calibrate on a batch
                    batch = min(10**6, math.ceil(min_sample / once[0]))
                    number[name] = max(1, math.ceil(min_sample / _sample(fn, batch)[0]))
        while True:
            active = [name for name, s in samples.items() if len(s) < max_repeats and (
                len(s) < min_repeats or sum(w for w, _ in s) * number[name] < budget)]
            if not active:
                break
            for name in active:
                with context(name):
                    samples[name].append(_sample(fns[name], number[name]))
    finally:
        if gc_was_enabled:
            gc.enable()
    return {name: Timing(min(w for w, _ in s), statistics.median(w for w, _ in s), len(s),
                         number[name], min(c for _, c in s))
            for name, s in samples.items()}


def time_call(fn, budget, **options):
    """``time_calls`` for one callable: its Timing."""
    return time_calls({"": fn}, budget, **options)[""]
