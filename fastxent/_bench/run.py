"""The engine behind ``fastxent bench``: measure the ceilings, then time every case of the grid
for fastxent and each installed peer, streaming the report as it goes.

Inputs are built once per shape and dtype, outside the timed calls.  Each measurement makes one
warm-up call (which also checks the loss against fastxent's), then timing.time_calls takes its
samples; the report gives the best sample (the median is in the JSON).  NumPy-based peers
(reference, scipy, sklearn) are single threaded: they are measured once per shape/dtype/op and
the figure is shown, marked ``[1T]``, in each thread-count block.  Progress ("case i of n",
report.Progress) goes to a status line on stderr when it is a terminal.

Layer: the top of ``fastxent._bench`` (cli.py calls ``run``).
"""
import gc
import itertools
import sys
import time

from . import ceilings, report
from .grid import (DTYPES, SCALING_DTYPE, BenchError, Inputs, check_mode, grid, scaling_cases,
                   thread_levels)
from .linear import linear_grid, run_linear
from .machine import all_cores, machine_info
from .peers import select_impls
from .records import add_speedups, error_text, fill_rates, new_record, warm_up
from .timing import time_call

# Seconds of timed samples per measurement (after warm-up) and the least number of samples.
BUDGET = {"full": 1.0, "quick": 0.1, "smoke": 0.0}
MIN_REPEATS = {"full": 3, "quick": 2, "smoke": 2}


def measure_case(case, impl, data, ceil, timing_options):
    """Warm up, check and time one implementation on one case (``timing_options``: keyword
    arguments of timing.time_call); errors become a record."""
    rec = new_record(case, impl.name, case.threads if impl.threaded else 1)
    fn = warm_up(impl, case, data, rec)
    if fn is None:
        return rec
    try:
        with impl.threads(case.threads):
            timing = time_call(fn, **timing_options)
    except Exception as exc:          # a peer failing in a later call is reported too
        rec["error"] = error_text(exc)
        return rec
    finally:
        del fn
    rec.update(best_s=timing.best, median_s=timing.median, repeats=timing.repeats,
               number=timing.number)
    return fill_rates(rec, ceil)


def _run_grid(cases, impls, ceil, timing_options, out, progress):
    rows_all = []
    single = {}   # (impl, data key, op) -> record of a single-threaded peer, reused across threads
    for key, group in itertools.groupby(cases, key=lambda c: c.data_key):
        data = Inputs(*key)
        for case in group:
            progress.start(case.label)
            rows = []
            for impl in (i for i in impls if i.supports(case)):
                skey = (impl.name, case.data_key, case.op)
                if not impl.threaded and skey in single:
                    rec = dict(single[skey], case=case.label, id=case.id, threads=case.threads,
                               reused=True)
                    rows.append(fill_rates(rec, ceil))
                    continue
                progress.step(impl.name)
                rec = measure_case(case, impl, data, ceil, timing_options)
                if not impl.threaded:
                    single[skey] = rec
                rows.append(rec)
            add_speedups(rows)
            progress.done()
            report.print_case(rows, out)
            rows_all.extend(rows)
        del data
        gc.collect()
    return rows_all


def _run_scaling(cases, fx, ceil, timing_options, progress):
    data = Inputs(*cases[0].data_key)
    rows = []
    for case in cases:
        progress.start(f"threads scaling {case.label}")
        rows.append(measure_case(case, fx, data, ceil, timing_options))
    progress.done()
    del data
    gc.collect()
    for r in rows:
        one = next(x for x in rows if x["op"] == r["op"] and x["threads"] == 1)
        if r.get("best_s") and one.get("best_s"):
            r["scaling_speedup"] = one["best_s"] / r["best_s"]
    return rows


# rows of the float32 (rows, 1000) .npy file that the scoring measurement writes and scores
# (full: 2 GB; smoke: a check that it runs; quick: not measured)
SCORE_ROWS = {"full": 500_000, "smoke": 2_000}


def run(mode="quick", impls=None, threads_scaling=False, budget=None, out=None, ncpu=None,
        progress=None, linear=True):
    """Run the benchmark of ``mode`` (grid.MODES), streaming the report to ``out``; return the
    results as a dict (what ``--json`` saves).  The full and smoke modes also measure
    ``fastxent score`` on a temporary .npy file beside the in-memory kernel and a plain read of
    the same file (``fastxent.score._bench``)."""
    out = sys.stdout if out is None else out
    budget = BUDGET[check_mode(mode)] if budget is None else budget
    timing_options = {"budget": budget, "min_repeats": MIN_REPEATS[mode]}
    ncpu = all_cores() if ncpu is None else ncpu
    impls = select_impls(mode == "full", impls)
    fx = next((i for i in impls if i.name == "fastxent"), None)
    if fx is None:
        raise BenchError("--impls: must include fastxent (speedups are relative to it)")
    import fastxent  # noqa: F401  (fail early and clearly if the extension is missing)

    started = time.perf_counter()
    cases = grid(mode, ncpu)
    scaling = scaling_cases(mode, ncpu) if threads_scaling else []
    linear_cases = linear_grid(mode, ncpu) if linear else []
    progress = report.Progress(len(cases) + len(scaling) + len(linear_cases), progress)
    progress.note("measuring the ceilings: DRAM read bandwidth, exp rate")
    levels = sorted(set(thread_levels(ncpu)) | set(range(1, ncpu + 1) if threads_scaling else ()))
    dtypes = DTYPES[mode] + ((SCALING_DTYPE,) if scaling else ())
    ceil = ceilings.measure(dtypes, levels, mode)
    progress.done()
    results = {"mode": mode, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "machine": machine_info(), "impls": {i.name: i.version() for i in impls},
               "budget_s": budget, "ceilings": ceil, "results": [], "threads_scaling": []}
    report.print_header(results, out)
    report.MAIN.header(out)
    results["results"] = _run_grid(cases, impls, ceil, timing_options, out, progress)
    if scaling:
        results["threads_scaling"] = _run_scaling(scaling, fx, ceil, timing_options, progress)
        report.print_scaling(results["threads_scaling"], out)
    results["linear"] = (run_linear(mode, impls=[i.name for i in impls], out=out,
                                    progress=progress) if linear else [])
    if mode in SCORE_ROWS:
        from fastxent.score import _bench as score_bench
        progress.note("measuring fastxent score on a temporary file (warm and cold page cache)")
        results["score"] = score_bench.measure(rows=SCORE_ROWS[mode], classes=1000)
        progress.done()
        print("\n" + score_bench.report(results["score"]), file=out)
    report.print_summary(results, out)
    results["elapsed_s"] = time.perf_counter() - started
    print(f"\n{mode} run: {results['elapsed_s']:.1f} s", file=out)
    return results
