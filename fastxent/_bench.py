"""Benchmark engine and report behind ``fastxent bench``; also defines the grid for ``bench/``.

``fastxent bench`` times softmax cross-entropy (mean reduction) on a grid of cases
(shape N x C, dtype, op, thread count) for fastxent and every installed peer doing the same work:

* ``fastxent``       ``fastxent.cross_entropy`` / ``cross_entropy_with_grad(..., out=buf)``
* ``reference``      ``fastxent.reference`` (plain NumPy, single threaded)
* ``torch``          ``F.cross_entropy``; loss+grad is ``loss.backward()`` on a leaf that requires
                     grad (torch allocates a fresh gradient each call, like ``zero_grad(set_to_none=True)``)
* ``torch.compile``  the same function through ``torch.compile`` (full mode only: compiling is slow)
* ``scipy``          ``scipy.special.logsumexp``; the gradient is written into ``out=`` with NumPy
* ``sklearn``        ``sklearn.metrics.log_loss`` on probabilities (softmax computed outside the
                     timed call), loss only
* ``jax``            ``jax.jit`` of log_softmax (+ ``value_and_grad``), all cores only, if installed

The probability family (``FAMILY_OPS`` on ``FAMILY_SHAPES``: ``cross_entropy_from_probs`` (+grad),
``binary_cross_entropy`` and ``..._with_logits`` (+grad), mean ``entropy``, ``kl_divergence``
batchmean) is timed in the same grid against ``fastxent.reference``, torch (binary cross-entropies,
``F.kl_div`` of ``log q``) and scipy (``scipy.stats.entropy``).

Every peer is optional: it is imported only when it runs, and left out when not installed.
Inputs are built once per shape and dtype, outside the timed calls.  Each measurement makes one
warm-up call (which also checks the loss against fastxent's), then times ``repeats`` samples with
``time.perf_counter``; a sample is several calls when one call is shorter than ~2 ms, and the
number of samples adapts to a time budget.  The report gives the best sample (median in the JSON).

Bandwidth roofline: the engine measures the machine itself, per thread count, with NumPy on a
512 MiB buffer split over threads: *read* = best of ``np.max``/``np.sum`` (bytes / time), *copy* =
``np.copyto`` (read + write bytes / time).  A loss must read ``N*C*itemsize`` bytes of logits plus
the int64 labels, and is compared with read bandwidth; loss+grad also writes ``N*C*itemsize`` bytes
of gradient and is compared with copy bandwidth.  Above 100% means the working set sits in cache.

NumPy-based peers (reference, scipy, sklearn) are single threaded: they are measured once per
shape/dtype/op and the figure is shown, marked ``[1T]``, in each thread-count block.

``bench/`` (pytest-benchmark) uses the same grid and the same peer definitions (``grid``,
``select_impls``, ``Inputs``); ``fastxent bench --report out.json`` prints this report from a
pytest-benchmark JSON file.
"""
import contextlib
import dataclasses
import gc
import importlib.metadata
import importlib.util
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time

import numpy as np

# --------------------------------------------------------------------------------------------
# The grid: the single definition shared by ``fastxent bench`` and ``bench/`` (pytest-benchmark).
# --------------------------------------------------------------------------------------------
FULL_SHAPES = ((4096, 32768), (64, 262144), (1_000_000, 10), (2_000_000, 2), (1, 10), (4096, 1000))
QUICK_SHAPES = ((1024, 32768), (64, 262144), (250_000, 10), (4096, 1000), (1, 10))
FULL_DTYPES = ("float32", "float64")
QUICK_DTYPES = ("float32",)
OPS = ("loss", "loss+grad")
# The probability-space family (fastxent._probs_api), timed against the reference (and torch /
# scipy where they have the function) on FAMILY_SHAPES; arrays read and written per element:
FAMILY_OPS = ("xent_probs", "xent_probs+grad", "bce", "bce+grad", "bce_logits", "bce_logits+grad",
              "entropy", "kl")
FAMILY_STREAMS = {"xent_probs": 2, "xent_probs+grad": 3, "bce": 2, "bce+grad": 3, "bce_logits": 2,
                  "bce_logits+grad": 3, "entropy": 1, "kl": 2}
FULL_FAMILY_SHAPES = ((4096, 1000), (1_000_000, 10), (64, 262144))
QUICK_FAMILY_SHAPES = ((4096, 1000), (250_000, 10))
ALL_OPS = OPS + FAMILY_OPS
SCALING_SHAPE = (4096, 32768)
SCALING_DTYPE = "float32"
LABEL_DTYPE = np.int64

# Seconds of timed samples per measurement (after warm-up), and the bounds on samples.
BUDGET = {"quick": 0.25, "full": 1.0}
MIN_REPEATS = 3
MAX_REPEATS = 200
MIN_SAMPLE_S = 2e-3          # one sample lasts at least this long (tiny shapes: many calls)
BANDWIDTH_BYTES = 512 * 2**20

ENV_PREFIXES = ("OMP_", "GOMP_", "KMP_", "OPENBLAS_", "MKL_", "BLIS_", "FASTXENT_", "XLA_",
                "TORCHINDUCTOR_")
PEER_DISTRIBUTIONS = ("numpy", "scipy", "scikit-learn", "torch", "jax", "jaxlib", "threadpoolctl",
                      "matplotlib", "pytest-benchmark", "Cython")


class BenchError(Exception):
    """A user-facing problem (bad option, missing optional dependency): one line, exit code 2."""


def all_cores():
    """CPUs this process may run on (the "all cores" thread count)."""
    if hasattr(os, "process_cpu_count"):          # Python 3.13+
        n = os.process_cpu_count()
    elif hasattr(os, "sched_getaffinity"):
        n = len(os.sched_getaffinity(0))
    else:
        n = os.cpu_count()
    return max(1, n or 1)


def thread_levels(ncpu=None):
    """Thread counts of the grid: 1 and all cores."""
    ncpu = all_cores() if ncpu is None else ncpu
    return (1,) if ncpu == 1 else (1, ncpu)


_SHORT = {"float32": "f32", "float64": "f64"}


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark case: same work for every implementation."""

    n: int
    c: int
    dtype: str
    op: str          # "loss" | "loss+grad"
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
    def label(self):
        return f"{_SHORT[self.dtype]} {self.n}x{self.c} {self.op} T={self.threads}"

    @property
    def id(self):
        return f"{_SHORT[self.dtype]}-{self.n}x{self.c}-{self.op.replace('+', '_')}-T{self.threads}"

    def with_threads(self, threads):
        return dataclasses.replace(self, threads=threads)


def grid(full=False, ncpu=None):
    """The cases, ordered by (shape, dtype) so that inputs are built once per data key."""
    shapes = FULL_SHAPES if full else QUICK_SHAPES
    family = FULL_FAMILY_SHAPES if full else QUICK_FAMILY_SHAPES
    dtypes = FULL_DTYPES if full else QUICK_DTYPES
    return [Case(n, c, dt, op, t)
            for (n, c) in dict.fromkeys(shapes + family)
            for dt in dtypes
            for op in (OPS if (n, c) in shapes else ()) + (FAMILY_OPS if (n, c) in family else ())
            for t in thread_levels(ncpu)]


def scaling_cases(ncpu=None):
    """fastxent at 1..N threads on SCALING_SHAPE, for both ops."""
    ncpu = all_cores() if ncpu is None else ncpu
    n, c = SCALING_SHAPE
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


def _softmax_np(x):
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


# The probability family's work, shared by every implementation of a FAMILY_OPS case.
TORCH_FAMILY_OPS = ("bce", "bce+grad", "bce_logits", "bce_logits+grad", "kl")


def _family_arrays(data):
    """Inputs of the probability family, built once per shape: row distributions p and q,
    probabilities in (0, 1) (sigmoid of the logits) and soft binary targets in [0, 1]."""
    def build():
        rng = np.random.default_rng(1)
        x = data.logits
        probs = np.empty_like(x)
        np.negative(x, out=probs)
        np.exp(probs, out=probs)
        probs += 1
        np.reciprocal(probs, out=probs)
        return {"p": _softmax_np(rng.standard_normal(x.shape, dtype=x.dtype)),
                "q": _softmax_np(x), "probs": probs, "soft": rng.random(x.shape, dtype=x.dtype)}
    return data.derived("family", build)


def _family_call(mod, case, data, threads=None):
    """One FAMILY_OPS case for ``fastxent`` (``threads`` given: num_threads and out=) or
    ``fastxent.reference``: cross_entropy_from_probs(p, q) and binary cross-entropies (mean
    reduction), mean entropy of the rows, KL divergence (batchmean)."""
    a = _family_arrays(data)
    kw = {} if threads is None else {"num_threads": threads}
    gkw = dict(kw, **({} if threads is None else {"out": data.out}))
    p, q, probs, soft, x = a["p"], a["q"], a["probs"], a["soft"], data.logits
    calls = {
        "xent_probs": lambda: mod.cross_entropy_from_probs(p, q, **kw),
        "xent_probs+grad": lambda: mod.cross_entropy_from_probs_with_grad(p, q, **gkw),
        "bce": lambda: mod.binary_cross_entropy(probs, soft, **kw),
        "bce+grad": lambda: mod.binary_cross_entropy_with_grad(probs, soft, **gkw),
        "bce_logits": lambda: mod.binary_cross_entropy_with_logits(x, soft, **kw),
        "bce_logits+grad": lambda: mod.binary_cross_entropy_with_logits_with_grad(x, soft, **gkw),
        "entropy": lambda: mod.entropy(p, **kw).mean(),
        "kl": lambda: mod.kl_divergence(p, q, reduction="batchmean", **kw),
    }
    return calls[case.op]


def _torch_family_call(case, data):
    """TORCH_FAMILY_OPS with torch.nn.functional (the gradient through backward() on a leaf)."""
    import torch
    import torch.nn.functional as F

    a = _family_arrays(data)
    soft = data.derived("torch_soft", lambda: torch.from_numpy(a["soft"]))
    if case.op == "kl":
        p = data.derived("torch_p", lambda: torch.from_numpy(a["p"]))
        q = data.derived("torch_q", lambda: torch.from_numpy(a["q"]))
        return lambda: F.kl_div(torch.log(q), p, reduction="batchmean")
    base = case.op.removesuffix("+grad")
    f = F.binary_cross_entropy if base == "bce" else F.binary_cross_entropy_with_logits
    src = a["probs"] if base == "bce" else data.logits
    if case.op == base:
        x = data.derived("torch_" + base, lambda: torch.from_numpy(src))
        return lambda: f(x, soft)
    leaf = data.derived("torch_leaf_" + base, lambda: torch.from_numpy(src).requires_grad_(True))

    def loss_and_grad():
        leaf.grad = None
        loss = f(leaf, soft)
        loss.backward()
        return loss, leaf.grad
    return loss_and_grad


# --------------------------------------------------------------------------------------------
# Implementations.  ``prepare`` returns a zero-argument callable doing one case's work; it
# returns the loss (or (loss, grad)).  Heavy imports happen in ``prepare``, never at import time.
# --------------------------------------------------------------------------------------------
class Impl:
    name = ""
    module = None           # import name whose presence makes the peer available
    distribution = None     # for the version string
    threaded = True         # honours the case's thread count
    full_only = False       # left out of quick mode

    def available(self):
        try:
            return importlib.util.find_spec(self.module) is not None
        except (ImportError, ValueError):
            return False

    def supports(self, case):
        return case.op in OPS          # the probability family: fastxent, reference, FAMILY_PEERS

    def version(self):
        try:
            return importlib.metadata.version(self.distribution or self.module)
        except importlib.metadata.PackageNotFoundError:
            return None

    @contextlib.contextmanager
    def threads(self, n):
        """Context in which the implementation runs with ``n`` threads."""
        yield

    def prepare(self, case, data):
        raise NotImplementedError


class FastxentImpl(Impl):
    name = "fastxent"
    module = "fastxent"

    def supports(self, case):
        return True

    def version(self):
        import fastxent
        return fastxent.__version__

    def prepare(self, case, data):
        import fastxent

        if case.op in FAMILY_OPS:
            return _family_call(fastxent, case, data, threads=case.threads)
        x, y, nt = data.logits, data.target, case.threads
        if case.op == "loss":
            return lambda: fastxent.cross_entropy(x, y, num_threads=nt)
        out = data.out
        return lambda: fastxent.cross_entropy_with_grad(x, y, out=out, num_threads=nt)


class ReferenceImpl(Impl):
    name = "reference"
    module = "fastxent.reference"
    threaded = False

    def supports(self, case):
        return True

    def version(self):
        return "numpy " + np.__version__

    def prepare(self, case, data):
        from fastxent import reference

        if case.op in FAMILY_OPS:
            return _family_call(reference, case, data)
        x, y = data.logits, data.target
        if case.op == "loss":
            return lambda: reference.cross_entropy(x, y)
        return lambda: reference.cross_entropy_with_grad(x, y)


class TorchImpl(Impl):
    name = "torch"
    module = "torch"

    @contextlib.contextmanager
    def threads(self, n):
        import torch

        old = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(old)

    def supports(self, case):
        return case.op in OPS or case.op in TORCH_FAMILY_OPS

    def _function(self):
        import torch.nn.functional as F
        return F.cross_entropy

    def prepare(self, case, data):
        import torch

        if case.op in FAMILY_OPS:
            return _torch_family_call(case, data)
        f = self._function()
        t = data.derived("torch_target", lambda: torch.from_numpy(data.target))
        if case.op == "loss":
            x = data.derived("torch_logits", lambda: torch.from_numpy(data.logits))
            return lambda: f(x, t)
        x = data.derived("torch_leaf", lambda: torch.from_numpy(data.logits).requires_grad_(True))

        def loss_and_grad():
            x.grad = None
            loss = f(x, t)
            loss.backward()
            return loss, x.grad
        return loss_and_grad


def _torch_cross_entropy(x, t):
    import torch.nn.functional as F
    return F.cross_entropy(x, t)


class TorchCompileImpl(TorchImpl):
    name = "torch.compile"
    full_only = True

    def supports(self, case):
        return case.op in OPS

    def _function(self):
        import torch
        import torch._dynamo

        # A fresh compile per case: static shapes, code generated for the current thread count
        # (inductor bakes it in), and no recompile limit to run into over the grid.
        torch._dynamo.reset()
        return torch.compile(_torch_cross_entropy, dynamic=False)


class ScipyImpl(Impl):
    name = "scipy"
    module = "scipy"
    threaded = False

    def supports(self, case):
        return case.op in OPS or case.op in ("entropy", "kl")

    def prepare(self, case, data):
        if case.op in ("entropy", "kl"):
            from scipy.stats import entropy

            a = _family_arrays(data)
            p, q = a["p"], a["q"]
            if case.op == "entropy":
                return lambda: entropy(p, axis=1).mean()
            return lambda: entropy(p, q, axis=1).mean()
        from scipy.special import logsumexp

        x, y, out = data.logits, data.target, data.out
        rows = np.arange(x.shape[0])
        if case.op == "loss":
            return lambda: np.mean(logsumexp(x, axis=1) - x[rows, y])
        scale = 1.0 / x.shape[0]

        def loss_and_grad():
            lse = logsumexp(x, axis=1)
            loss = np.mean(lse - x[rows, y])
            np.subtract(x, lse[:, None], out=out)
            np.exp(out, out=out)
            out[rows, y] -= 1
            np.multiply(out, scale, out=out)
            return loss, out
        return loss_and_grad


class SklearnImpl(Impl):
    name = "sklearn"
    module = "sklearn"
    distribution = "scikit-learn"
    threaded = False

    def supports(self, case):
        return case.op == "loss"

    def prepare(self, case, data):
        from sklearn.metrics import log_loss

        probs = data.derived("probs", lambda: _softmax_np(data.logits))
        labels = np.arange(data.logits.shape[1])
        y = data.target
        return lambda: log_loss(y, probs, labels=labels)


class JaxImpl(Impl):
    """jax.jit on the CPU backend; its thread count cannot be set per call, so all cores only."""

    name = "jax"
    module = "jax"

    def supports(self, case):
        return case.threads == all_cores() and case.op in OPS

    def prepare(self, case, data):
        import jax
        import jax.numpy as jnp

        if data.logits.dtype == np.float64:
            jax.config.update("jax_enable_x64", True)

        def loss_fn(x, t):
            lp = jax.nn.log_softmax(x, axis=-1)
            return -jnp.mean(jnp.take_along_axis(lp, t[:, None], axis=-1))

        x = jax.device_put(data.logits)
        t = jax.device_put(data.target.astype(np.int32))
        f = jax.jit(loss_fn if case.op == "loss" else jax.value_and_grad(loss_fn))
        return lambda: jax.block_until_ready(f(x, t))


IMPLS = (FastxentImpl(), ReferenceImpl(), TorchImpl(), TorchCompileImpl(), ScipyImpl(),
         SklearnImpl(), JaxImpl())


def impl_names():
    return [impl.name for impl in IMPLS]


def select_impls(full=False, names=None, option="--impls"):
    """Installed implementations for a run: all of them (quick mode: not the full-only ones),
    or exactly ``names`` (a list or comma-separated string), which must be known and installed."""
    if names:
        if isinstance(names, str):
            names = [s.strip() for s in names.split(",") if s.strip()]
        known = {impl.name: impl for impl in IMPLS}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise BenchError(f"{option}: unknown implementation {unknown[0]!r} "
                             f"(choose from {', '.join(known)})")
        missing = [n for n in names if not known[n].available()]
        if missing:
            raise BenchError(f"{option}: {missing[0]!r} is not installed")
        return [impl for impl in IMPLS if impl.name in names]
    return [impl for impl in IMPLS if impl.available() and (full or not impl.full_only)]


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Timing:
    best: float      # seconds per call
    median: float
    repeats: int
    number: int      # calls per sample


def time_callable(fn, budget, min_repeats=MIN_REPEATS, max_repeats=MAX_REPEATS,
                  min_sample=MIN_SAMPLE_S):
    """Time ``fn`` (already warmed up): best and median seconds per call over adaptive samples."""
    perf = time.perf_counter
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        t0 = perf()
        fn()
        once = max(perf() - t0, 1e-9)
        samples = []
        if once >= min_sample:               # the calibration call is a sample of one call
            number = 1
            samples.append(once)
        else:                                # re-calibrate on a batch: single tiny calls are noisy
            number = min(10**6, math.ceil(min_sample / once))
            t0 = perf()
            for _ in itertools.repeat(None, number):
                fn()
            once = max((perf() - t0) / number, 1e-9)
            number = max(1, math.ceil(min_sample / once))
        repeats = int(min(max_repeats, max(min_repeats, budget // (once * number))))
        while len(samples) < repeats:
            t0 = perf()
            for _ in itertools.repeat(None, number):
                fn()
            samples.append((perf() - t0) / number)
    finally:
        if gc_was_enabled:
            gc.enable()
    return Timing(min(samples), statistics.median(samples), repeats, number)


def _loss_value(result):
    if isinstance(result, tuple):
        result = result[0]
    try:
        return float(result.item() if hasattr(result, "item") else result)
    except (TypeError, ValueError):
        return float("nan")


def _close(a, b, dtype):
    rtol = 1e-3 if dtype == "float32" else 1e-6
    return a == b or abs(a - b) <= rtol * max(abs(a), abs(b))


# --------------------------------------------------------------------------------------------
# Machine: bandwidth and description
# --------------------------------------------------------------------------------------------
def measure_bandwidth(thread_counts, nbytes=BANDWIDTH_BYTES, repeats=7):
    """Memory bandwidth in GB/s per thread count: {"read": ..., "copy": ...} (copy = read+write)."""
    from concurrent.futures import ThreadPoolExecutor

    n = nbytes // 4
    src = np.empty(n, np.float32)
    src.fill(1.0)
    dst = np.empty_like(src)
    dst.fill(0.0)
    perf = time.perf_counter
    result = {}
    for k in sorted(set(thread_counts)):
        parts = [slice(i * n // k, (i + 1) * n // k) for i in range(k)]
        with ThreadPoolExecutor(k) as pool:
            def best(op):
                ts = []
                for _ in range(repeats):
                    t0 = perf()
                    list(pool.map(op, parts))
                    ts.append(perf() - t0)
                return min(ts)
            copy = best(lambda s: np.copyto(dst[s], src[s]))
            read = min(best(lambda s: src[s].max()), best(lambda s: src[s].sum()))
        result[k] = {"read": src.nbytes / read / 1e9, "copy": 2 * src.nbytes / copy / 1e9}
    # k threads can always do what fewer threads did: a dip at higher k is noise, not bandwidth.
    for k in sorted(result):
        for j in (j for j in result if j < k):
            for kind in ("read", "copy"):
                result[k][kind] = max(result[k][kind], result[j][kind])
    return result


def roofline(bandwidth, case):
    """The bandwidth (GB/s) a case is compared with: read for loss, copy for loss+grad."""
    bw = bandwidth.get(case.threads) or bandwidth.get(str(case.threads))
    if not bw:
        return None
    return bw["copy" if case.op.endswith("+grad") else "read"]


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def l3_cache_bytes():
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index3/size") as f:
            s = f.read().strip().upper()
        mult = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(s[-1:], 1)
        return int(s.rstrip("KMG")) * mult
    except (OSError, ValueError):
        return None


def env_overrides():
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith(ENV_PREFIXES)}


def versions():
    out = {"python": platform.python_version()}
    for dist in PEER_DISTRIBUTIONS:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    try:
        import fastxent
        out["fastxent"] = fastxent.__version__
    except ImportError:
        pass
    return out


def machine_info():
    info = {
        "cpu": cpu_model(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "cpu_count": os.cpu_count(),
        "usable_cpus": all_cores(),
        "l3_bytes": l3_cache_bytes(),
        "platform": platform.platform(),
        "env": env_overrides(),
        "versions": versions(),
    }
    try:
        import fastxent
        info["fastxent_config"] = fastxent.config()
    except (ImportError, AttributeError):
        pass
    try:
        import threadpoolctl
        info["threadpools"] = [{k: p.get(k) for k in ("user_api", "internal_api", "num_threads",
                                                        "version", "filepath")}
                               for p in threadpoolctl.threadpool_info()]
    except ImportError:
        pass
    return info


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------
def _record(case, impl, bandwidth):
    return {
        "case": case.label, "id": case.id, "n": case.n, "c": case.c, "dtype": case.dtype,
        "op": case.op, "threads": case.threads, "impl": impl.name,
        "impl_threads": case.threads if impl.threaded else 1,
        "elements": case.elements, "bytes": case.bytes_moved,
        "bandwidth_gbs": roofline(bandwidth, case),
    }


def extra_info(case, impl, bandwidth):
    """What a pytest-benchmark case records in ``benchmark.extra_info`` (read back by
    ``load_results``): the case, the thread counts, the CPU, bytes moved and the roofline."""
    bw = bandwidth.get(case.threads) or {}
    return {
        "impl": impl.name, "impl_version": impl.version(), "n": case.n, "c": case.c,
        "dtype": case.dtype, "op": case.op, "threads": case.threads,
        "impl_threads": case.threads if impl.threaded else 1, "usable_cpus": all_cores(),
        "cpu": cpu_model(), "elements": case.elements, "bytes": case.bytes_moved,
        "bandwidth_read_gbs": bw.get("read"), "bandwidth_copy_gbs": bw.get("copy"),
        "bandwidth_gbs": roofline(bandwidth, case),
    }


def _fill_rates(rec):
    t = rec.get("best_s")
    if t:
        rec["elements_per_s"] = rec["elements"] / t
        rec["gb_per_s"] = rec["bytes"] / t / 1e9
        bw = rec.get("bandwidth_gbs")
        rec["pct_bandwidth"] = 100.0 * rec["gb_per_s"] / bw if bw else None
    return rec


def measure_case(case, impl, data, bandwidth, budget):
    """Warm up, check and time one implementation on one case; errors become a record."""
    rec = _record(case, impl, bandwidth)
    fn = None
    try:
        with impl.threads(case.threads):
            fn = impl.prepare(case, data)
            t0 = time.perf_counter()
            value = fn()
            rec["first_call_s"] = time.perf_counter() - t0
            rec["loss"] = _loss_value(value)
            del value
            timing = time_callable(fn, budget)
    except Exception as exc:  # a peer failing (e.g. no C++ compiler for inductor) is reported
        rec["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return rec
    finally:
        del fn
    rec.update(best_s=timing.best, median_s=timing.median, repeats=timing.repeats,
               number=timing.number)
    return _fill_rates(rec)


def _add_speedups(rows):
    """speedup = time(impl) / time(fastxent) within one case; check losses against fastxent."""
    base = next((r for r in rows if r["impl"] == "fastxent" and r.get("best_s")), None)
    for r in rows:
        if base is None or not r.get("best_s"):
            r["fastxent_speedup"] = None
            continue
        r["fastxent_speedup"] = r["best_s"] / base["best_s"]
        if "loss" in r and "loss" in base:
            r["loss_matches"] = _close(r["loss"], base["loss"], r["dtype"])


def run(full=False, impls=None, threads_scaling=False, budget=None, out=None, ncpu=None):
    """Run the benchmark, streaming the report to ``out``; return the results as a dict."""
    out = sys.stdout if out is None else out
    mode = "full" if full else "quick"
    budget = BUDGET[mode] if budget is None else budget
    ncpu = all_cores() if ncpu is None else ncpu
    impls = select_impls(full, impls)
    if not any(i.name == "fastxent" for i in impls):
        raise BenchError("--impls: must include fastxent (speedups are relative to it)")
    import fastxent  # noqa: F401  (fail early and clearly if the extension is missing)

    started = time.perf_counter()
    info = machine_info()
    levels = thread_levels(ncpu)
    bw_levels = sorted(set(levels) | (set(range(1, ncpu + 1)) if threads_scaling else set()))
    bandwidth = measure_bandwidth(bw_levels)
    results = {"mode": mode, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": info,
               "impls": {i.name: i.version() for i in impls}, "budget_s": budget,
               "bandwidth_gbs": bandwidth, "results": [], "threads_scaling": []}
    print_header(results, out)
    print_table_header(out)

    cases = grid(full, ncpu)
    single = {}   # (impl, data key, op) -> record of a single-threaded peer, reused across threads
    for key, group in itertools.groupby(cases, key=lambda c: c.data_key):
        data = Inputs(*key)
        for case in group:
            rows = []
            for impl in impls:
                if not impl.supports(case):
                    continue
                skey = (impl.name, case.data_key, case.op)
                if not impl.threaded and skey in single:
                    rec = dict(single[skey], case=case.label, id=case.id, threads=case.threads,
                               bandwidth_gbs=roofline(bandwidth, case), reused=True)
                    rows.append(_fill_rates(rec))
                    continue
                rec = measure_case(case, impl, data, bandwidth, budget)
                if not impl.threaded:
                    single[skey] = rec
                rows.append(rec)
            _add_speedups(rows)
            print_case(rows, out)
            results["results"].extend(rows)
        del data
        gc.collect()

    if threads_scaling:
        fx = next(i for i in impls if i.name == "fastxent")
        data = Inputs(*scaling_cases(ncpu)[0].data_key)
        rows = [measure_case(case, fx, data, bandwidth, budget) for case in scaling_cases(ncpu)]
        del data
        gc.collect()
        for r in rows:
            one = next(x for x in rows if x["op"] == r["op"] and x["threads"] == 1)
            if r.get("best_s") and one.get("best_s"):
                r["scaling_speedup"] = one["best_s"] / r["best_s"]
        results["threads_scaling"] = rows
        print_scaling(rows, out)

    results["linear"] = run_linear(full, impls=[i.name for i in impls], out=out)
    print_summary(results, out)
    results["elapsed_s"] = time.perf_counter() - started
    print(f"\n{mode} run: {results['elapsed_s']:.1f} s", file=out)
    return results


# --------------------------------------------------------------------------------------------
# Fused linear cross-entropy (the LM head: loss of hidden @ weight.T and the gradients of hidden
# and weight).  Its own small grid, shared by ``fastxent bench`` and bench/test_bench_linear.py:
#
# * ``fastxent``  ``fastxent.linear_cross_entropy(..., return_grad=True)``: row chunks, the
#                 N x V logits never exist
# * ``naive``     materialise the N x V logits (NumPy matmul), ``cross_entropy_with_grad(...,
#                 inplace=True)`` on them, then grad_hidden = g @ W and grad_weight = g.T @ h
# * ``torch``     ``F.cross_entropy(F.linear(h, W), t)`` + ``backward()`` (skipped when its
#                 ~3 N x V tensors would not fit comfortably in the available memory)
#
# All cores only (BLAS and OpenMP threads set with threadpoolctl when installed).  Timing
# interleaves the implementations round by round (the cases take seconds; a drifting machine
# load then hits them alike).  Peak extra memory is measured per implementation in a fresh
# subprocess: the high-water mark of the resident set during one call after a warm-up call
# (VmHWM, reset through /proc/self/clear_refs) above the resident set before it, minus the
# returned gradients
# (which every implementation must produce); tracemalloc's peak of traced allocations (NumPy
# registers its buffers with it) minus the same is recorded too.
# --------------------------------------------------------------------------------------------
FULL_LINEAR_SHAPES = ((8192, 1024, 131072),)    # (N, d, V)
QUICK_LINEAR_SHAPES = ((1024, 256, 16384),)
LINEAR_DTYPE = "float32"
LINEAR_MIN_ROUNDS = 3
LINEAR_BUDGET = {"quick": 2.0, "full": 60.0}    # seconds of timed rounds per case (after warm-up)


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
        return f"{_SHORT[self.dtype]} {self.n}x{self.d} V={self.v} T={self.threads}"

    @property
    def id(self):
        return f"{_SHORT[self.dtype]}-{self.n}x{self.d}x{self.v}-linear_grad-T{self.threads}"


def linear_grid(full=False, ncpu=None):
    shapes = FULL_LINEAR_SHAPES if full else QUICK_LINEAR_SHAPES
    ncpu = all_cores() if ncpu is None else ncpu
    return [LinearCase(n, d, v, LINEAR_DTYPE, ncpu) for n, d, v in shapes]


class LinearInputs:
    """hidden (N, d), weight (V, d) scaled like a trained head (logits of order 1), labels."""

    def __init__(self, n, d, v, dtype, seed=0):
        rng = np.random.default_rng(seed)
        dt = np.dtype(dtype)
        self.hidden = rng.standard_normal((n, d), dtype=dt)
        self.weight = rng.standard_normal((v, d), dtype=dt)
        self.weight *= dt.type(1.0 / math.sqrt(d))
        self.target = rng.integers(0, v, n, dtype=LABEL_DTYPE)


@contextlib.contextmanager
def _all_pools(n):
    """BLAS and OpenMP pools limited to ``n`` threads (threadpoolctl), if installed."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=n):
        yield


def _mem_available():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class FastxentLinearImpl(Impl):
    name = "fastxent"
    module = "fastxent"

    def version(self):
        import fastxent
        return fastxent.__version__

    def supports(self, case):
        return True

    def prepare(self, case, data):
        from fastxent._linear import linear_cross_entropy

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


class TorchLinearImpl(Impl):
    name = "torch"
    module = "torch"

    def supports(self, case):
        avail = _mem_available()
        return avail is None or 3 * case.logits_bytes < avail // 2

    @contextlib.contextmanager
    def threads(self, n):
        with TorchImpl().threads(n):
            yield

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
    if isinstance(names, str):
        names = [s.strip() for s in names.split(",") if s.strip()]
    return [i for i in LINEAR_IMPLS
            if i.name in ("fastxent", "naive") or (i.available() and (not names or i.name in names))]


_LINEAR_MEMORY_CHILD = """
import json, sys, tracemalloc
from fastxent import _bench
print(json.dumps(_bench._linear_memory_child(json.loads(sys.argv[1]), sys.argv[2])))
"""


def _proc_status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _linear_memory_child(case_fields, impl_name):
    """In a fresh process: one call of ``impl_name`` on the case; returns the memory figures."""
    import tracemalloc

    case = LinearCase(**case_fields)
    impl = next(i for i in LINEAR_IMPLS if i.name == impl_name)
    data = LinearInputs(case.n, case.d, case.v, case.dtype)
    with _all_pools(case.threads), impl.threads(case.threads):
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
    """Peak extra memory of one call, measured in a subprocess (see the section comment)."""
    import subprocess

    import fastxent

    fields = dataclasses.asdict(case)
    # run where the fastxent imported here lives, so the child imports the same one (not, say,
    # an unbuilt source tree in the current directory)
    where = os.path.dirname(os.path.dirname(os.path.abspath(fastxent.__file__)))
    proc = subprocess.run([sys.executable, "-c", _LINEAR_MEMORY_CHILD, json.dumps(fields),
                           impl.name], capture_output=True, text=True, cwd=where)
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


def _linear_ratios(rows):
    base = next((r for r in rows if r["impl"] == "naive"), None)
    for r in rows:
        if base and r.get("best_s") and base.get("best_s"):
            r["time_vs_naive"] = r["best_s"] / base["best_s"]
        mem, bmem = r.get("hwm_extra_bytes"), (base or {}).get("hwm_extra_bytes")
        if mem and bmem:
            r["memory_vs_naive"] = mem / bmem


def run_linear(full=False, impls=None, out=None, budget=None, memory=True):
    """Time (interleaved rounds) and measure the memory of the linear cases; print a table."""
    out = sys.stdout if out is None else out
    budget = LINEAR_BUDGET["full" if full else "quick"] if budget is None else budget
    rows = []
    print_linear_header(out)
    for case in linear_grid(full):
        chosen = [i for i in select_linear_impls(impls) if i.supports(case)]
        data = LinearInputs(case.n, case.d, case.v, case.dtype)
        recs = {i.name: {"kind": "linear", "case": case.label, "id": case.id, "n": case.n,
                         "d": case.d, "v": case.v, "dtype": case.dtype, "op": case.op,
                         "threads": case.threads, "impl": i.name, "flops": case.flops}
                for i in chosen}
        fns, samples = {}, {i.name: [] for i in chosen}
        with _all_pools(case.threads):
            for impl in chosen:
                try:
                    with impl.threads(case.threads):
                        fns[impl.name] = impl.prepare(case, data)
                        t0 = time.perf_counter()
                        value = fns[impl.name]()          # warm-up
                        recs[impl.name]["first_call_s"] = time.perf_counter() - t0
                        recs[impl.name]["loss"] = _loss_value(value)
                        del value
                except Exception as exc:
                    recs[impl.name]["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
                    fns.pop(impl.name, None)
            started = time.perf_counter()
            rounds = 0
            while fns and (rounds < LINEAR_MIN_ROUNDS or time.perf_counter() - started < budget):
                for impl in chosen:
                    if impl.name in fns:
                        with impl.threads(case.threads):
                            c0, t0 = time.process_time(), time.perf_counter()
                            fns[impl.name]()
                            samples[impl.name].append((time.perf_counter() - t0,
                                                       time.process_time() - c0))
                rounds += 1
        fns.clear()
        del data
        gc.collect()
        for name, s in samples.items():
            if s:
                wall = [w for w, _ in s]
                recs[name].update(best_s=min(wall), median_s=statistics.median(wall),
                                  cpu_s=min(c for _, c in s), repeats=len(s),
                                  gflops=case.flops / min(wall) / 1e9)
        if memory:
            for impl in chosen:
                if "error" not in recs[impl.name]:
                    recs[impl.name].update(measure_linear_memory(case, impl))
        case_rows = list(recs.values())
        _linear_ratios(case_rows)
        print_linear_case(case_rows, out)
        rows.extend(case_rows)
    return rows


def fmt_bytes(b):
    if b is None:
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(b) >= scale:
            return f"{b / scale:.3g} {unit}"
    return f"{b} B"


_LCOLS = (("linear+grad case", 29, "<"), ("impl", 9, "<"), ("time", 9, ">"), ("GFLOP/s", 8, ">"),
          ("vs naive", 9, ">"), ("extra mem", 10, ">"), ("vs naive", 9, ">"))


def _lline(values):
    return "  ".join(f"{v:{align}{w}}" for v, (_, w, align) in zip(values, _LCOLS)).rstrip()


def print_linear_header(out):
    print("\nfused linear cross-entropy (loss + grad_hidden + grad_weight); extra mem = peak RSS "
          "during the call\nabove the RSS before it, minus the returned gradients:", file=out)
    print(_lline([c[0] for c in _LCOLS]), file=out)
    print(_lline(["-" * c[1] for c in _LCOLS]), file=out)
    out.flush()


def print_linear_case(rows, out):
    for i, r in enumerate(rows):
        case = r["case"] if i == 0 else ""
        if r.get("error"):
            print(_lline([case, r["impl"], "error"]) + "  " + r["error"][:80], file=out)
            continue
        tv, mv = r.get("time_vs_naive"), r.get("memory_vs_naive")
        print(_lline([case, r["impl"], fmt_time(r.get("best_s")),
                      f"{r['gflops']:.0f}" if r.get("gflops") else "-",
                      "-" if r["impl"] == "naive" else fmt_ratio(tv),
                      fmt_bytes(r.get("hwm_extra_bytes")),
                      "-" if r["impl"] == "naive" or mv is None else f"1/{1 / mv:.3g}"])
              + (f"  memory: {r['memory_error'][:60]}" if r.get("memory_error") else ""),
              file=out)
    out.flush()


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------
def fmt_time(s):
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.3g} us"
    if s < 1:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.3g} s"


def fmt_rate(x):
    if x is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g} {unit}/s"
    return f"{x:.3g} /s"


def fmt_gbs(x):
    if x is None:
        return "-"
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}" if x >= 1 else f"{x:.3f}"


def fmt_ratio(x):
    if x is None:
        return "-"
    return f"{x:.3g}x" if x < 100 else f"{x:.0f}x"


_COLS = (("case", 36, "<"), ("impl", 19, "<"), ("time", 9, ">"), ("elem/s", 10, ">"),
         ("GB/s", 7, ">"), ("%bw", 6, ">"), ("fastxent speedup", 17, ">"))


def _line(values):
    return "  ".join(f"{v:{align}{w}}" for v, (_, w, align) in zip(values, _COLS)).rstrip()


def print_header(results, out):
    m = results["machine"]
    cfg = m.get("fastxent_config") or {}
    print(f"fastxent bench ({results['mode']}): {m['cpu']}, {m['usable_cpus']} usable CPUs"
          + (f", L3 {m['l3_bytes'] // 2**20} MiB" if m.get("l3_bytes") else ""), file=out)
    if cfg:
        print(f"fastxent {cfg.get('version')}: openmp {'on' if cfg.get('openmp') else 'off'}, "
              f"kernels {cfg.get('isa', '?')} ({cfg.get('simd')}), default threads {cfg.get('default_threads')}",
              file=out)
    print("peers: " + ", ".join(f"{k} {v}" if v else k for k, v in results["impls"].items()),
          file=out)
    if m.get("env"):
        print("environment: " + " ".join(f"{k}={v}" for k, v in m["env"].items())
              + "  (thread counts below are set explicitly)", file=out)
    load = m.get("load_average")
    if load and load[0] > 0.5:
        print(f"note: load average {load[0]:.2f} before the run: other processes compete for "
              "the CPUs, figures are noisy", file=out)
    bw = results["bandwidth_gbs"]
    print("measured memory bandwidth (GB/s): "
          + "; ".join(f"{k} thread{'s' if int(k) > 1 else ''}: read {v['read']:.1f}, "
                      f"copy {v['copy']:.1f}" for k, v in bw.items()), file=out)
    print(file=out)


def print_table_header(out):
    print(_line([c[0] for c in _COLS]), file=out)
    print(_line(["-" * c[1] for c in _COLS]), file=out)
    out.flush()


def _impl_label(r):
    label = r["impl"]
    if r.get("impl_threads") == 1 and r["threads"] > 1:
        label += " [1T]"
    if r.get("loss_matches") is False:
        label += " !"
    return label


def print_case(rows, out):
    for i, r in enumerate(rows):
        case = r["case"] if i == 0 else ""
        if r.get("error"):
            print(_line([case, r["impl"], "error", "", "", "", ""]) + "  " + r["error"][:80],
                  file=out)
            continue
        pct = r.get("pct_bandwidth")
        speed = "-" if r["impl"] == "fastxent" else fmt_ratio(r.get("fastxent_speedup"))
        print(_line([case, _impl_label(r), fmt_time(r.get("best_s")),
                     fmt_rate(r.get("elements_per_s")), fmt_gbs(r["gb_per_s"]),
                     f"{pct:.0f}%" if pct is not None else "-", speed]), file=out)
    out.flush()


def print_scaling(rows, out):
    if not rows:
        return
    n, c, dt = rows[0]["n"], rows[0]["c"], rows[0]["dtype"]
    print(f"\nthreads scaling, fastxent {_SHORT[dt]} {n}x{c}:", file=out)
    head = f"{'op':<10} {'threads':>7} {'time':>9} {'GB/s':>7} {'%bw':>6} {'speedup':>8} {'eff':>5}"
    print(head + "\n" + "-" * len(head), file=out)
    for r in rows:
        if r.get("error"):
            print(f"{r['op']:<10} {r['threads']:>7} error: {r['error']}", file=out)
            continue
        sp = r.get("scaling_speedup")
        pct = r.get("pct_bandwidth")
        pct = "-" if pct is None else f"{pct:.0f}%"
        eff = f"{100 * sp / r['threads']:.0f}%" if sp else "-"
        print(f"{r['op']:<10} {r['threads']:>7} {fmt_time(r['best_s']):>9} {fmt_gbs(r['gb_per_s']):>7} "
              f"{pct:>6} {fmt_ratio(sp):>8} {eff:>5}", file=out)


def print_summary(results, out):
    rows = results["results"]
    peers = [p for p in dict.fromkeys(r["impl"] for r in rows) if p != "fastxent"]
    print("\nfastxent speedup over each peer, geometric mean (min .. max) over cases:", file=out)
    for p in peers:
        for op in ALL_OPS:
            sp = [r["fastxent_speedup"] for r in rows
                  if r["impl"] == p and r["op"] == op and r.get("fastxent_speedup")]
            if sp:
                gm = math.exp(sum(math.log(s) for s in sp) / len(sp))
                print(f"  {p:<15} {op:<15} {fmt_ratio(gm):>7}  ({fmt_ratio(min(sp))} .. "
                      f"{fmt_ratio(max(sp))}, {len(sp)} cases)", file=out)
    notes = ["%bw: GB/s over the measured read bandwidth (loss) or copy bandwidth (loss+grad) at "
             "the case's thread count; > 100% = working set in cache."]
    if any(r.get("impl_threads") == 1 and r["threads"] > 1 for r in rows):
        notes.append("[1T]: single-threaded NumPy-based peer, measured once, repeated per thread "
                     "count.")
    if any(r["impl"] == "sklearn" for r in rows):
        notes.append("sklearn log_loss is given probabilities (softmax done outside the timing).")
    if any(r["impl"].startswith("torch") and r["op"] == "loss+grad" for r in rows):
        notes.append("torch loss+grad allocates a new gradient per call; fastxent and scipy write "
                     "into a preallocated out=.")
    bad = [r for r in rows if r.get("loss_matches") is False and not r.get("reused")]
    if bad:
        notes.append("!: loss differs from fastxent's beyond rtol (f32 1e-3, f64 1e-6): "
                     + ", ".join(f"{r['impl']} {r['case']} ({r['loss']:.6g})" for r in bad[:4])
                     + (" ..." if len(bad) > 4 else "")
                     + ("; sklearn clips probabilities to [eps, 1-eps] of the dtype, which "
                        "lowers the loss when C is large" if any(r["impl"] == "sklearn"
                                                                  for r in bad) else ""))
    for n in notes:
        print("  " + n, file=out)


def save_json(results, path):
    with open(path, "w") as f:
        json.dump(results, f, indent=1, default=str)


# --------------------------------------------------------------------------------------------
# Reading results back (our JSON, or pytest-benchmark's JSON from bench/)
# --------------------------------------------------------------------------------------------
def load_results(path):
    """Load ``fastxent bench --json`` output, or convert a pytest-benchmark JSON file."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except OSError as exc:
        raise BenchError(f"--report: cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise BenchError(f"--report: {path} is not JSON ({exc.msg}, line {exc.lineno})") from None
    if isinstance(doc, dict) and "results" in doc and "bandwidth_gbs" in doc:
        return doc
    if isinstance(doc, dict) and "benchmarks" in doc:
        return _from_pytest_benchmark(doc)
    raise BenchError(f"--report: {path} is neither `fastxent bench --json` nor "
                     "pytest-benchmark JSON output")


def _from_pytest_benchmark(doc):
    rows, bandwidth, linear = [], {}, []
    for b in doc["benchmarks"]:
        e = b.get("extra_info") or {}
        if "impl" not in e:
            continue
        if e.get("kind") == "linear":
            lcase = LinearCase(e["n"], e["d"], e["v"], e["dtype"], e["threads"])
            linear.append(dict(e, case=lcase.label, id=lcase.id, best_s=b["stats"]["min"],
                               median_s=b["stats"]["median"], repeats=b["stats"]["rounds"],
                               gflops=lcase.flops / b["stats"]["min"] / 1e9))
            continue
        case = Case(e["n"], e["c"], e["dtype"], e["op"], e["threads"])
        rec = {"case": case.label, "id": case.id, "n": case.n, "c": case.c, "dtype": case.dtype,
               "op": case.op, "threads": case.threads, "impl": e["impl"],
               "impl_threads": e.get("impl_threads", case.threads), "elements": case.elements,
               "bytes": e.get("bytes", case.bytes_moved), "bandwidth_gbs": e.get("bandwidth_gbs"),
               "best_s": b["stats"]["min"], "median_s": b["stats"]["median"],
               "repeats": b["stats"]["rounds"], "number": b["stats"].get("iterations", 1)}
        for k in ("read", "copy"):
            if e.get(f"bandwidth_{k}_gbs"):
                bandwidth.setdefault(case.threads, {})[k] = e[f"bandwidth_{k}_gbs"]
        rows.append(_fill_rates(rec))
    order = {impl.name: i for i, impl in enumerate(IMPLS)}
    rows.sort(key=lambda r: (r["n"], r["c"], r["dtype"], ALL_OPS.index(r["op"]), r["threads"],
                             order.get(r["impl"], 99)))
    for _, group in itertools.groupby(rows, key=lambda r: r["id"]):
        _add_speedups(list(group))
    mi = doc.get("machine_info") or {}
    first = next((b.get("extra_info") or {} for b in doc["benchmarks"]
                  if "impl" in (b.get("extra_info") or {})), {})
    machine = {"cpu": first.get("cpu") or (mi.get("cpu") or {}).get("brand_raw") or "?",
               "usable_cpus": mi.get("fastxent_usable_cpus") or first.get("usable_cpus", "?"),
               "l3_bytes": None,
               "env": mi.get("fastxent_env") or {}, "versions": mi.get("fastxent_versions") or {},
               "fastxent_config": mi.get("fastxent_config")}
    impls = dict.fromkeys(r["impl"] for r in rows)
    return {"mode": "pytest-benchmark", "date": doc.get("datetime"), "machine": machine,
            "impls": {k: None for k in impls}, "bandwidth_gbs": bandwidth, "results": rows,
            "threads_scaling": [], "linear": _group_linear(linear)}


def _group_linear(rows):
    order = {impl.name: i for i, impl in enumerate(LINEAR_IMPLS)}
    rows.sort(key=lambda r: (r["n"], r["d"], r["v"], r["dtype"], r["threads"],
                             order.get(r["impl"], 99)))
    for _, group in itertools.groupby(rows, key=lambda r: r["id"]):
        _linear_ratios(list(group))
    return rows


def print_report(results, out=None):
    """Print a complete report for loaded results."""
    out = sys.stdout if out is None else out
    print_header(results, out)
    print_table_header(out)
    for _, group in itertools.groupby(results["results"], key=lambda r: r["id"]):
        print_case(list(group), out)
    print_scaling(results.get("threads_scaling") or [], out)
    if results.get("linear"):
        print_linear_header(out)
        for _, group in itertools.groupby(results["linear"], key=lambda r: r["id"]):
            print_linear_case(list(group), out)
    print_summary(results, out)


# --------------------------------------------------------------------------------------------
# Plot
# --------------------------------------------------------------------------------------------
def require_matplotlib():
    try:
        import matplotlib
    except ImportError:
        raise BenchError("--plot needs matplotlib: pip install matplotlib "
                         "(or pip install 'fastxent[bench]')") from None
    matplotlib.use("Agg")


def plot(results, path):
    """Bar charts of GB/s per case and implementation (one panel per op and thread count), the
    measured bandwidth as a black tick per case, and the threads-scaling curve if measured."""
    require_matplotlib()
    import matplotlib.pyplot as plt

    rows = [r for r in results["results"] if r.get("gb_per_s")]
    panels = sorted({(r["op"], r["threads"]) for r in rows},
                    key=lambda p: (ALL_OPS.index(p[0]), p[1]))
    scaling = [r for r in results.get("threads_scaling") or [] if r.get("gb_per_s")]
    npanels = len(panels) + (1 if scaling else 0)
    if npanels == 0:
        raise BenchError("--plot: no results to plot")
    fig, axes = plt.subplots(npanels, 1, figsize=(12, 3.4 * npanels), squeeze=False)
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    for ax, (op, threads) in zip(axes[:, 0], panels):
        sub = [r for r in rows if r["op"] == op and r["threads"] == threads]
        labels = list(dict.fromkeys(f"{_SHORT[r['dtype']]} {r['n']}x{r['c']}" for r in sub))
        width = 0.8 / max(1, len(impls))
        for j, impl in enumerate(impls):
            xs, ys = [], []
            for r in sub:
                if r["impl"] == impl:
                    xs.append(labels.index(f"{_SHORT[r['dtype']]} {r['n']}x{r['c']}")
                              - 0.4 + (j + 0.5) * width)
                    ys.append(r["gb_per_s"])
            if xs:
                ax.bar(xs, ys, width=width, label=impl)
        for i, lab in enumerate(labels):
            bw = next((r["bandwidth_gbs"] for r in sub
                       if f"{_SHORT[r['dtype']]} {r['n']}x{r['c']}" == lab and r["bandwidth_gbs"]),
                      None)
            if bw:
                ax.hlines(bw, i - 0.45, i + 0.45, colors="black", linewidth=2)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("GB/s")
        ax.set_title(f"{op}, {threads} thread{'s' if threads > 1 else ''} "
                     "(black: measured memory bandwidth)", fontsize=10)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if scaling:
        ax = axes[-1, 0]
        for op in OPS:
            pts = [(r["threads"], r["gb_per_s"]) for r in scaling if r["op"] == op]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=f"fastxent {op}")
        ticks = sorted({r["threads"] for r in scaling})
        ax.set_xticks(ticks)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("threads")
        ax.set_ylabel("GB/s")
        ax.set_title(f"threads scaling, {_SHORT[scaling[0]['dtype']]} "
                     f"{scaling[0]['n']}x{scaling[0]['c']}", fontsize=10)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(f"fastxent bench ({results['mode']}) on {results['machine'].get('cpu')}",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise BenchError(f"--plot: cannot write {path}: {exc.strerror}") from None
    finally:
        plt.close(fig)
