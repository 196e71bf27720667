"""The benchmarks of fastxent: ``fastxent bench`` and the pytest-benchmark suite in ``bench/``.

One responsibility per module, in layers (each imports only the ones above it in this list):

    machine.py   the machine: usable CPUs, CPU model, caches, memory, environment, versions
    grid.py      the cases (shape, dtype, op, thread count) per mode, and their inputs
    timing.py    the one measuring loop (calibrated samples, interleaved callables)
    peers.py     fastxent and each optional peer (reference, torch, torch.compile, jax, scipy,
                 sklearn), imported lazily
    ceilings.py  the machine's two ceilings: DRAM read bandwidth and fastxent's exp rate
    records.py   result records and derived figures: rates, % of the lower ceiling, speedups,
                 fastest peer
    report.py    the text report (tables, summary)
    linear.py    the fused linear cross-entropy case (its own grid, memory in a subprocess)
    saved.py     results as JSON, and pytest-benchmark JSON read back
    plot.py      the ``--plot`` figure (matplotlib, optional)
    run.py       the engine: ceilings, then every case, streaming the report

Layer: tooling on top of the public API; nothing in the library imports it.
"""
