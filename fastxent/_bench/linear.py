"""The fused linear cross-entropy case (the LM head: loss of hidden @ weight.T and the gradients
of hidden and weight): its own small grid, shared by ``fastxent bench`` and
bench/test_bench_linear.py.

* ``fastxent``  ``fastxent.linear_cross_entropy(..., return_grad=True)``: row chunks, the
                N x V logits never exist
* ``naive``     materialise the N x V logits (NumPy matmul), ``cross_entropy_with_grad(...,
                inplace=True)`` on them, then grad_hidden = g @ W and grad_weight = g.T @ h
* ``torch``     ``F.cross_entropy(F.linear(h, W), t)`` + ``backward()`` (left out when its
                ~3 N x V tensors would not fit comfortably in the available memory)

All cores only (BLAS and OpenMP threads set with threadpoolctl when installed).  The calls take
seconds, so timing.time_calls interleaves the implementations round by round.  Peak extra memory
is measured per implementation in a fresh subprocess: the high-water mark of the resident set
during one call after a warm-up call (VmHWM, reset through /proc/self/clear_refs) above the
resident set before it, minus the returned gradients (which every implementation must produce);
tracemalloc's peak of traced allocations (NumPy registers its buffers with it) minus the same is
recorded too.

Layer: above grid, peers, timing and report (it prints its own table as it runs).
"""
import dataclasses
import gc
import json
import math
import os
import subprocess
import sys

import numpy as np

from . import report
from .grid import LABEL_DTYPE, SHORT, check_mode
from .machine import all_cores, all_pools, cpu_model, mem_available
from .peers import Impl, TorchImpl, split_names
from .records import warm_up
from .timing import time_calls

LINEAR_SHAPES = {"full": ((8192, 1024, 131072),),     # (N, d, V) per mode (grid.MODES)
                 "quick": ((1024, 256, 16384),),
                 "smoke": ((256, 8, 512),)}
LINEAR_DTYPE = "float32"
LINEAR_MIN_ROUNDS = 3
LINEAR_BUDGET = {"full": 20.0, "quick": 0.5, "smoke": 0.0}   # seconds of calls per implementation


@dataclasses.dataclass(frozen=True)
class LinearCase:
    """One fused-linear case: hidden (n, d), weight (v, d), loss + both gradients."""

    n: int
    d: int
    v: int
    dtype: str
    threads: int
    op = "linear+grad"

    @property
    def flops(self):
        """Three N x d x V matrix products (logits, grad_hidden, grad_weight)."""
        return 6 * self.n * self.d * self.v

    @property
    def logits_bytes(self):
        return self.n * self.v * np.dtype(self.dtype).itemsize

    @property
    def label(self):
        return f"{SHORT[self.dtype]} {self.n}x{self.d} V={self.v} T={self.threads}"

    @property
    def id(self):
        return f"{SHORT[self.dtype]}-{self.n}x{self.d}x{self.v}-linear_grad-T{self.threads}"


def linear_grid(mode="quick", ncpu=None):
    ncpu = all_cores() if ncpu is None else ncpu
    return [LinearCase(n, d, v, LINEAR_DTYPE, ncpu) for n, d, v in LINEAR_SHAPES[check_mode(mode)]]


class LinearInputs:
    """hidden (N, d), weight (V, d) scaled like a trained head (logits of order 1), labels."""

    def __init__(self, n, d, v, dtype, seed=0):
        rng = np.random.default_rng(seed)
        dt = np.dtype(dtype)
        self.hidden = rng.standard_normal((n, d), dtype=dt)
        self.weight = rng.standard_normal((v, d), dtype=dt)
        self.weight *= dt.type(1.0 / math.sqrt(d))
        self.target = rng.integers(0, v, n, dtype=LABEL_DTYPE)


class FastxentLinearImpl(Impl):
    name = "fastxent"
    module = "fastxent"

    def version(self):
        import fastxent
        return fastxent.__version__

    def supports(self, case):
        return True

    def prepare(self, case, data):
        from fastxent import linear_cross_entropy

        h, w, t, nt = data.hidden, data.weight, data.target, case.threads
        return lambda: linear_cross_entropy(h, w, t, return_grad=True, num_threads=nt)


class NaiveLinearImpl(Impl):
    name = "naive"
    module = "fastxent"

    def version(self):
        return "numpy " + np.__version__

    def supports(self, case):
        return True

    def prepare(self, case, data):
        import fastxent

        h, w, t, nt = data.hidden, data.weight, data.target, case.threads

        def naive():
            z = np.matmul(h, w.T)
            loss, g = fastxent.cross_entropy_with_grad(z, t, inplace=True, num_threads=nt)
            return loss, np.matmul(g, w), np.matmul(g.T, h)
        return naive


class TorchLinearImpl(TorchImpl):
    def supports(self, case):
        avail = mem_available()
        return avail is None or 3 * case.logits_bytes < avail // 2

    def prepare(self, case, data):
        import torch
        import torch.nn.functional as F

        h = torch.from_numpy(data.hidden).requires_grad_(True)
        w = torch.from_numpy(data.weight).requires_grad_(True)
        t = torch.from_numpy(data.target)

        def step():
            h.grad = w.grad = None
            loss = F.cross_entropy(F.linear(h, w), t)
            loss.backward()
            return loss, h.grad, w.grad
        return step


LINEAR_IMPLS = (FastxentLinearImpl(), NaiveLinearImpl(), TorchLinearImpl())


def select_linear_impls(names=None):
    """fastxent and naive always (the ratios are fastxent / naive); torch when installed and,
    if ``names`` are given (--impls), named there."""
    names = split_names(names)
    return [i for i in LINEAR_IMPLS
            if i.name in ("fastxent", "naive") or (i.available() and (not names or i.name in names))]


_MEMORY_CHILD = """
import json, sys
from fastxent._bench import linear
print(json.dumps(linear.memory_child(json.loads(sys.argv[1]), sys.argv[2])))
"""


def _proc_status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def memory_child(case_fields, impl_name):
    """In a fresh process: one call of ``impl_name`` on the case; returns the memory figures."""
    import tracemalloc

    case = LinearCase(**case_fields)
    impl = next(i for i in LINEAR_IMPLS if i.name == impl_name)
    data = LinearInputs(case.n, case.d, case.v, case.dtype)
    with all_pools(case.threads), impl.threads(case.threads):
        fn = impl.prepare(case, data)
        out_bytes = (case.n * case.d + case.v * case.d) * np.dtype(case.dtype).itemsize
        fn()                      # warm-up: BLAS/OpenMP buffers and thread stacks stay allocated
        gc.collect()
        hwm_ok = True
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")                          # reset VmHWM to the current RSS
        except OSError:
            hwm_ok = False
        rss0 = _proc_status_kib("VmRSS") * 1024
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        res = fn()
        traced = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        hwm = _proc_status_kib("VmHWM") * 1024 - rss0 if hwm_ok else None
        del res
    return {"hwm_extra_bytes": None if hwm is None else hwm - out_bytes,
            "traced_extra_bytes": traced - out_bytes, "output_bytes": out_bytes}


def measure_linear_memory(case, impl):
    """Peak extra memory of one call, measured in a subprocess (see the module docstring)."""
    import fastxent

    fields = dataclasses.asdict(case)
    # run where the fastxent imported here lives, so the child imports the same one (not, say,
    # an unbuilt source tree in the current directory)
    where = os.path.dirname(os.path.dirname(os.path.abspath(fastxent.__file__)))
    proc = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, json.dumps(fields), impl.name],
                          capture_output=True, text=True, cwd=where)
    if proc.returncode != 0:
        msg = (proc.stderr.strip().splitlines() or ["exit code %d" % proc.returncode])[-1]
        return {"memory_error": msg}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def linear_extra_info(case, impl):
    """``benchmark.extra_info`` of a bench/test_bench_linear.py case (``kind`` marks it)."""
    return {"kind": "linear", "impl": impl.name, "impl_version": impl.version(), "n": case.n,
            "d": case.d, "v": case.v, "dtype": case.dtype, "op": case.op,
            "threads": case.threads, "usable_cpus": all_cores(), "cpu": cpu_model(),
            "flops": case.flops}


def linear_ratios(rows):
    """time_vs_naive and memory_vs_naive of one case's rows."""
    base = next((r for r in rows if r["impl"] == "naive"), None)
    for r in rows:
        if base and r.get("best_s") and base.get("best_s"):
            r["time_vs_naive"] = r["best_s"] / base["best_s"]
        mem, bmem = r.get("hwm_extra_bytes"), (base or {}).get("hwm_extra_bytes")
        if mem and bmem:
            r["memory_vs_naive"] = mem / bmem


def run_linear(mode="quick", impls=None, out=None, budget=None, memory=True, progress=None):
    """Time (interleaved rounds) and measure the memory of the linear cases; print a table.
    ``progress``: a report.Progress told of each case (default: none)."""
    out = sys.stdout if out is None else out
    budget = LINEAR_BUDGET[check_mode(mode)] if budget is None else budget
    progress = progress or report.Progress(0, False)
    rows = []
    report.print_linear_header(out)
    for case in linear_grid(mode):
        progress.start(case.label)
        chosen = {i.name: i for i in select_linear_impls(impls) if i.supports(case)}
        data = LinearInputs(case.n, case.d, case.v, case.dtype)
        recs = {name: {"kind": "linear", "case": case.label, "id": case.id, "n": case.n,
                       "d": case.d, "v": case.v, "dtype": case.dtype, "op": case.op,
                       "threads": case.threads, "impl": name, "flops": case.flops}
                for name in chosen}
        with all_pools(case.threads):
            fns = {name: warm_up(impl, case, data, recs[name]) for name, impl in chosen.items()}
            fns = {name: fn for name, fn in fns.items() if fn is not None}
            timings = time_calls(fns, budget, min_repeats=LINEAR_MIN_ROUNDS, min_sample=0.0,
                                 context=lambda name: chosen[name].threads(case.threads))
        fns.clear()
        del data
        gc.collect()
        for name, t in timings.items():
            recs[name].update(best_s=t.best, median_s=t.median, cpu_s=t.cpu, repeats=t.repeats,
                              gflops=case.flops / t.best / 1e9)
        if memory:
            for name, impl in chosen.items():
                if "error" not in recs[name]:
                    progress.step(f"memory of {name}")
                    recs[name].update(measure_linear_memory(case, impl))
        case_rows = list(recs.values())
        linear_ratios(case_rows)
        progress.done()
        report.print_linear_case(case_rows, out)
        rows.extend(case_rows)
    return rows
