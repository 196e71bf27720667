"""Interleaved A/B timing of two builds of the xent kernel module, in one process.

    python tools/ab_kernels.py A.so B.so [threads]

Loads both compiled modules (e.g. the dispatched ``fastxent/_xent_x86_64_v4*.so`` and the
``_xent_native*.so`` of a ``FASTXENT_NATIVE=1`` build in another checkout), points
``fastxent._kernels.xent`` at each in turn, and times loss and loss+grad (``out=``) over the
benchmark shapes, float32 and float64, best of 7 interleaved rounds: on a shared machine, two
builds timed in separate runs differ by more than the builds do.  Prints time(A) / time(B) per
case and their geometric mean.
"""
import importlib.machinery
import importlib.util
import os
import sys
import time

import numpy as np

import fastxent as fx
from fastxent import _kernels

SHAPES = ((4096, 32768), (64, 262144), (1_000_000, 10), (4096, 1000))


def load(path):
    """The extension module at ``path``, under the name its init function has."""
    name = "fastxent." + os.path.basename(path).split(".")[0]
    loader = importlib.machinery.ExtensionFileLoader(name, path)
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def main(a, b, threads=2, rounds=7):
    mods = {"A": load(a), "B": load(b)}
    rng = np.random.default_rng(0)
    cases = []
    for rows, cols in SHAPES:
        for dt in (np.float32, np.float64):
            x = (rng.standard_normal((rows, cols)) * 3).astype(dt)
            y = rng.integers(0, cols, rows)
            g = np.empty_like(x)
            reps = max(1, int(3e7 // (rows * cols)))
            name = f"{np.dtype(dt).name} {rows}x{cols}"
            cases.append((name + " loss", reps, lambda x=x, y=y: fx.cross_entropy(x, y, num_threads=threads)))
            cases.append((name + " loss+grad", reps,
                          lambda x=x, y=y, g=g: fx.cross_entropy_with_grad(x, y, out=g, num_threads=threads)))
    best = {}
    saved = _kernels.xent
    try:
        for _ in range(rounds):
            for name, reps, fn in cases:
                for key, module in mods.items():
                    _kernels.xent = module
                    fn()
                    t0 = time.perf_counter()
                    for _ in range(reps):
                        fn()
                    t = (time.perf_counter() - t0) / reps
                    best[name, key] = min(best.get((name, key), float("inf")), t)
    finally:
        _kernels.xent = saved
    ratios = []
    for name, _, _ in cases:
        ta, tb = best[name, "A"], best[name, "B"]
        ratios.append(ta / tb)
        print(f"{name:28s} A {ta * 1e3:9.3f} ms   B {tb * 1e3:9.3f} ms   A/B {ta / tb:.3f}")
    print(f"geometric mean of A/B over {len(ratios)} cases, {threads} threads: "
          f"{float(np.exp(np.mean(np.log(ratios)))):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 2)
