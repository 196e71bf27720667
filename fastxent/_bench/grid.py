"""The benchmark grid: the cases (shape N x C, dtype, op, thread count) and their inputs.

Layer: the base of ``fastxent._bench`` (above machine.py).  The single definition of the cases
shared by ``fastxent bench`` and ``bench/`` (pytest-benchmark), so the two never drift.
"""
import dataclasses

import numpy as np

from .machine import all_cores

# Sizes per mode: "quick" (the default of ``fastxent bench``, under a minute on 2 cores),
# "full" (the whole grid, minutes) and "smoke" (tiny sizes through the same code paths, seconds:
# checks that everything runs; its figures mean nothing).
MODES = ("quick", "full", "smoke")
SHAPES = {"full": ((4096, 32768), (64, 262144), (1_000_000, 10), (2_000_000, 2), (1, 10),
                   (4096, 1000)),
          "quick": ((1024, 32768), (64, 262144), (250_000, 10), (4096, 1000), (1, 10)),
          "smoke": ((64, 512), (1, 10))}
DTYPES = {"full": ("float32", "float64"), "quick": ("float32",), "smoke": ("float32", "float64")}
OPS = ("loss", "loss+grad")
# The probability-space family (fastxent._probs_api), timed against the reference (and torch /
# scipy where they have the function) on FAMILY_SHAPES; arrays read and written per element:
FAMILY_OPS = ("xent_probs", "xent_probs+grad", "bce", "bce+grad", "bce_logits", "bce_logits+grad",
              "entropy", "kl")
FAMILY_STREAMS = {"xent_probs": 2, "xent_probs+grad": 3, "bce": 2, "bce+grad": 3, "bce_logits": 2,
                  "bce_logits+grad": 3, "entropy": 1, "kl": 2}
FAMILY_SHAPES = {"full": ((4096, 1000), (1_000_000, 10), (64, 262144)),
                 "quick": ((250_000, 10),),
                 "smoke": ((64, 100),)}
ALL_OPS = OPS + FAMILY_OPS
SCALING_SHAPE = {"full": (4096, 32768), "quick": (4096, 32768), "smoke": (64, 512)}
SCALING_DTYPE = "float32"
LABEL_DTYPE = np.int64
SHORT = {"float32": "f32", "float64": "f64"}


class BenchError(Exception):
    """A user-facing problem (bad option, missing optional dependency): one line, exit code 2."""


def thread_levels(ncpu=None):
    """Thread counts of the grid: 1 and all cores."""
    ncpu = all_cores() if ncpu is None else ncpu
    return (1,) if ncpu == 1 else (1, ncpu)


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark case: same work for every implementation."""

    n: int
    c: int
    dtype: str
    op: str          # one of ALL_OPS
    threads: int

    @property
    def elements(self):
        return self.n * self.c

    @property
    def itemsize(self):
        return np.dtype(self.dtype).itemsize

    @property
    def bytes_moved(self):
        """Bytes that must move: logits (+ gradient for loss+grad) and the int64 labels; for
        the probability family, every array read or written (FAMILY_STREAMS)."""
        if self.op in FAMILY_STREAMS:
            return FAMILY_STREAMS[self.op] * self.elements * self.itemsize
        per = 2 if self.op == "loss+grad" else 1
        return per * self.elements * self.itemsize + self.n * np.dtype(LABEL_DTYPE).itemsize

    @property
    def data_key(self):
        return (self.n, self.c, self.dtype)

    @property
    def shape_label(self):
        return f"{SHORT[self.dtype]} {self.n}x{self.c}"

    @property
    def label(self):
        return f"{self.shape_label} {self.op} T={self.threads}"

    @property
    def id(self):
        return f"{SHORT[self.dtype]}-{self.n}x{self.c}-{self.op.replace('+', '_')}-T{self.threads}"


def check_mode(mode):
    if mode not in MODES:
        raise BenchError(f"unknown benchmark mode {mode!r} (choose from {', '.join(MODES)})")
    return mode


def grid(mode="quick", ncpu=None):
    """The cases of a mode, ordered by (shape, dtype) so that inputs are built once per data key."""
    shapes, family = SHAPES[check_mode(mode)], FAMILY_SHAPES[mode]
    return [Case(n, c, dt, op, t)
            for (n, c) in dict.fromkeys(shapes + family)
            for dt in DTYPES[mode]
            for op in (OPS if (n, c) in shapes else ()) + (FAMILY_OPS if (n, c) in family else ())
            for t in thread_levels(ncpu)]


def scaling_cases(mode="quick", ncpu=None):
    """fastxent at 1..N threads on the mode's SCALING_SHAPE (float32), for both ops."""
    ncpu = all_cores() if ncpu is None else ncpu
    n, c = SCALING_SHAPE[check_mode(mode)]
    return [Case(n, c, SCALING_DTYPE, op, t) for op in OPS for t in range(1, ncpu + 1)]


class Inputs:
    """Arrays for one (N, C, dtype), built outside any timed call.

    ``out`` is a preallocated (and page-faulted) gradient buffer.  Peers that need derived data
    (torch tensors, probabilities) cache it with ``derived`` so it is built once per shape.
    """

    def __init__(self, n, c, dtype, seed=0):
        rng = np.random.default_rng(seed)
        self.logits = rng.standard_normal((n, c), dtype=np.dtype(dtype))
        self.logits *= 2.0
        self.target = rng.integers(0, c, n, dtype=LABEL_DTYPE)
        self.out = np.empty_like(self.logits)
        self.out.fill(0)                      # fault the pages in now, not in the first call
        self._derived = {}

    @property
    def key(self):
        n, c = self.logits.shape
        return (n, c, self.logits.dtype.name)

    def derived(self, name, factory):
        if name not in self._derived:
            self._derived[name] = factory()
        return self._derived[name]

    def family(self):
        """Inputs of the probability family, built once per shape: row distributions p and q,
        probabilities in (0, 1) (sigmoid of the logits) and soft binary targets in [0, 1]."""
        def build():
            rng = np.random.default_rng(1)
            x = self.logits
            probs = np.empty_like(x)
            np.negative(x, out=probs)
            np.exp(probs, out=probs)
            probs += 1
            np.reciprocal(probs, out=probs)
            return {"p": softmax_rows(rng.standard_normal(x.shape, dtype=x.dtype)),
                    "q": softmax_rows(x), "probs": probs, "soft": rng.random(x.shape, dtype=x.dtype)}
        return self.derived("family", build)


def softmax_rows(x):
    """Row softmax computed in float64 (for sklearn's probabilities), cast to x.dtype."""
    out = np.empty_like(x)
    step = max(1, (1 << 22) // max(1, x.shape[1]))
    for i in range(0, x.shape[0], step):
        blk = x[i:i + step].astype(np.float64)
        blk -= blk.max(axis=1, keepdims=True)
        np.exp(blk, out=blk)
        blk /= blk.sum(axis=1, keepdims=True)
        out[i:i + step] = blk
    return out
