"""Results as records (one dict per implementation and case, the rows of the JSON) and the
figures derived from them: rates, % of the lower ceiling, speedups and the fastest peer.

* ``elements_per_s`` = N*C / best time; ``gb_per_s`` = bytes that must move / best time;
* ``pct_ceiling`` = elements_per_s as a % of the lower of the two ceilings (ceilings.py) at the
  case's thread count, ``bound`` = which one ("mem" or "exp");
* ``fastxent_speedup`` = time(impl) / time(fastxent) in the same case (> 1: fastxent is faster);
* on the fastxent row, ``fastest_peer`` (the fastest implementation doing the same work) and
  ``vs_fastest`` = time(fastest peer) / time(fastxent).

Layer: above grid.py, peers.py and ceilings.py; used by run.py (live runs), saved.py (JSON read
back) and bench/ (``extra_info`` of pytest-benchmark cases).
"""
import time

from .ceilings import at, case_ceiling
from .machine import all_cores, cpu_model
from .peers import IMPLS

_SAME_WORK = {impl.name: impl.same_work for impl in IMPLS}


def new_record(case, impl_name, impl_threads):
    return {
        "case": case.label, "id": case.id, "n": case.n, "c": case.c, "dtype": case.dtype,
        "op": case.op, "threads": case.threads, "impl": impl_name, "impl_threads": impl_threads,
        "elements": case.elements, "bytes": case.bytes_moved,
    }


def fill_rates(rec, ceilings):
    """Rates and the % of the lower ceiling of a timed record (in place; returns it)."""
    t = rec.get("best_s")
    if t:
        rec["elements_per_s"] = rec["elements"] / t
        rec["gb_per_s"] = rec["bytes"] / t / 1e9
        limit, bound = case_ceiling(ceilings, rec["threads"], rec["dtype"],
                                    rec["bytes"] / rec["elements"])
        rec["ceiling_elems_per_s"], rec["bound"] = limit, bound
        rec["pct_ceiling"] = 100.0 * rec["elements_per_s"] / limit if limit else None
    return rec


def _close(a, b, dtype):
    rtol = 1e-3 if dtype == "float32" else 1e-6
    return a == b or abs(a - b) <= rtol * max(abs(a), abs(b))


def loss_value(result):
    """The loss of an implementation's return value (a scalar or (loss, grad...)) as a float."""
    if isinstance(result, tuple):
        result = result[0]
    try:
        return float(result.item() if hasattr(result, "item") else result)
    except (TypeError, ValueError):
        return float("nan")


def warm_up(impl, case, data, rec):
    """Prepare the implementation's call for the case and make the first call (its time and
    loss go into ``rec``); return the call, or None with an "error" in ``rec`` (a peer failing,
    e.g. no C++ compiler for inductor, is reported, not raised)."""
    try:
        with impl.threads(case.threads):
            fn = impl.prepare(case, data)
            t0 = time.perf_counter()
            value = fn()
            rec["first_call_s"] = time.perf_counter() - t0
            rec["loss"] = loss_value(value)
        return fn
    except Exception as exc:
        rec["error"] = error_text(exc)
        return None


def error_text(exc):
    """One line naming a peer's exception, for its record."""
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def add_speedups(rows):
    """Speedups of one case's rows against fastxent, the fastest peer, and the loss check."""
    base = next((r for r in rows if r["impl"] == "fastxent" and r.get("best_s")), None)
    peers = [r for r in rows if r["impl"] != "fastxent" and r.get("best_s")
             and _SAME_WORK.get(r["impl"], True)]
    for r in rows:
        if base is None or not r.get("best_s"):
            r["fastxent_speedup"] = None
            continue
        r["fastxent_speedup"] = r["best_s"] / base["best_s"]
        if "loss" in r and "loss" in base:
            r["loss_matches"] = _close(r["loss"], base["loss"], r["dtype"])
    if base is not None and peers:
        fastest = min(peers, key=lambda r: r["best_s"])
        base["fastest_peer"] = fastest["impl"]
        base["vs_fastest"] = fastest["best_s"] / base["best_s"]


def extra_info(case, impl, ceilings):
    """What a pytest-benchmark case records in ``benchmark.extra_info`` (read back by
    saved.load_results): the case, the thread counts, the CPU, bytes moved and the ceilings."""
    return {
        "impl": impl.name, "impl_version": impl.version(), "n": case.n, "c": case.c,
        "dtype": case.dtype, "op": case.op, "threads": case.threads,
        "impl_threads": case.threads if impl.threaded else 1, "usable_cpus": all_cores(),
        "cpu": cpu_model(), "elements": case.elements, "bytes": case.bytes_moved,
        "ceiling_read_gbs": at(ceilings["read_gbs"], case.threads),
        "ceiling_exp_elems_per_s": at(ceilings["exp_elems_per_s"].get(case.dtype), case.threads),
    }
