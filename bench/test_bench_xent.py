"""Cross-entropy benchmarks: fastxent vs the NumPy reference and every installed peer.

Each case -- shape N x C, dtype, op ("loss": ``cross_entropy``, mean reduction; "loss+grad":
``cross_entropy_with_grad`` into a preallocated ``out=``), thread count (1 and all cores) -- is one
``benchmark.group`` holding fastxent, ``fastxent.reference`` and each installed peer (torch eager,
torch.compile with --xent-grid=full, scipy, scikit-learn for loss, jax if installed) doing the
same work on the same arrays.  Inputs are built in fixtures; each implementation makes one
warm-up call (torch.compile compiles there) before pytest-benchmark times it.  ``extra_info``
records the threads, CPU, shape, dtype, bytes that must move and the machine's two measured
ceilings (DRAM read bandwidth, fastxent's exp rate).

Run from the repository root with fastxent installed (pyproject's --import-mode=importlib makes
the installed package the one imported):

    pytest bench --benchmark-only                               # quick grid, all installed peers
    pytest bench --benchmark-only --benchmark-json=out.json     # ... and save the results
    pytest bench --benchmark-only --xent-grid=full              # the whole grid (long)
    pytest bench --benchmark-only -k "4096x1000 and loss_grad"  # a subset
    pytest bench --benchmark-only --xent-impls=fastxent,torch   # chosen implementations

``fastxent bench`` runs the same grid (``fastxent._bench`` defines it for both) with its own
adaptive timer and prints a table of ratios ("3.41x") and percentages of the lower ceiling;
``fastxent bench --report out.json`` prints that table from this suite's JSON.
pytest-benchmark's own columns (min, median, ...) compare within each group.
"""
from fastxent._bench import records


def test_cross_entropy(benchmark, xent_case, xent_impl, xent_inputs, xent_ceilings):
    case, impl = xent_case, xent_impl
    benchmark.group = case.label
    benchmark.extra_info.update(records.extra_info(case, impl, xent_ceilings))
    with impl.threads(case.threads):
        fn = impl.prepare(case, xent_inputs)
        fn()                                     # warm-up outside the timing
        benchmark(fn)
