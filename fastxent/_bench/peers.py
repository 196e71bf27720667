"""The implementations a grid case is timed for: fastxent and every installed peer doing the
same work on the same arrays.

* ``fastxent``       ``fastxent.cross_entropy`` / ``cross_entropy_with_grad(..., out=buf)``
* ``reference``      ``fastxent.reference`` (plain NumPy, single threaded)
* ``torch``          ``F.cross_entropy``; loss+grad is ``loss.backward()`` on a leaf with
                     requires_grad (a fresh gradient each call: ``zero_grad(set_to_none=True)``)
* ``torch.compile``  the same function through ``torch.compile`` (full mode only: compiling is slow)
* ``jax``            ``jax.jit`` of log_softmax (+ ``value_and_grad``), all cores only
* ``scipy``          ``scipy.special.logsumexp``; the gradient is written into ``out=`` with NumPy
* ``sklearn``        ``sklearn.metrics.log_loss`` on probabilities (softmax computed outside the
                     timed call), loss only, full mode only; it does less work, so it is never
                     the "fastest peer"

The probability family (grid.FAMILY_OPS) runs for fastxent, the reference, torch (binary
cross-entropies, ``F.kl_div`` of ``log q``) and scipy (``scipy.stats.entropy``).

Layer: above grid.py.  Every peer is optional: ``prepare`` imports it when it runs, never at
import time, and ``select_impls`` leaves out what is not installed.
"""
import contextlib
import importlib.metadata
import importlib.util

import numpy as np

from .grid import FAMILY_OPS, OPS, BenchError, softmax_rows
from .machine import all_cores

TORCH_FAMILY_OPS = ("bce", "bce+grad", "bce_logits", "bce_logits+grad", "kl")


class Impl:
    """One implementation.  ``prepare(case, data)`` returns a zero-argument callable doing the
    case's work and returning the loss (or (loss, grad))."""

    name = ""
    module = None           # import name whose presence makes the peer available
    distribution = None     # for the version string
    threaded = True         # honours the case's thread count
    full_only = False       # left out of quick mode
    same_work = True        # does all of the case's work (a candidate for "fastest peer")

    def available(self):
        try:
            return importlib.util.find_spec(self.module) is not None
        except (ImportError, ValueError):
            return False

    def supports(self, case):
        return case.op in OPS

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


def _loss_and_grad(leaf, f, *args):
    """A call computing ``f(leaf, *args)`` and its gradient through backward() on a torch leaf
    (a fresh gradient each call, like ``zero_grad(set_to_none=True)``)."""
    def step():
        leaf.grad = None
        loss = f(leaf, *args)
        loss.backward()
        return loss, leaf.grad
    return step


def _family_call(mod, case, data, threads=None):
    """One FAMILY_OPS case for ``fastxent`` (``threads`` given: num_threads and out=) or
    ``fastxent.reference``: cross_entropy_from_probs(p, q) and binary cross-entropies (mean
    reduction), mean entropy of the rows, KL divergence (batchmean)."""
    a = data.family()
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
            return self._family(case, data)
        f = self._function()
        t = data.derived("torch_target", lambda: torch.from_numpy(data.target))
        if case.op == "loss":
            x = data.derived("torch_logits", lambda: torch.from_numpy(data.logits))
            return lambda: f(x, t)
        x = data.derived("torch_leaf", lambda: torch.from_numpy(data.logits).requires_grad_(True))
        return _loss_and_grad(x, f, t)

    @staticmethod
    def _family(case, data):
        """TORCH_FAMILY_OPS with torch.nn.functional."""
        import torch
        import torch.nn.functional as F

        a = data.family()
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
        return _loss_and_grad(leaf, f, soft)


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


class ScipyImpl(Impl):
    name = "scipy"
    module = "scipy"
    threaded = False

    def supports(self, case):
        return case.op in OPS or case.op in ("entropy", "kl")

    def prepare(self, case, data):
        if case.op in ("entropy", "kl"):
            from scipy.stats import entropy

            p, q = data.family()["p"], data.family()["q"]
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
    full_only = True
    same_work = False

    def supports(self, case):
        return case.op == "loss"

    def prepare(self, case, data):
        from sklearn.metrics import log_loss

        probs = data.derived("probs", lambda: softmax_rows(data.logits))
        labels = np.arange(data.logits.shape[1])
        y = data.target
        return lambda: log_loss(y, probs, labels=labels)


IMPLS = (FastxentImpl(), ReferenceImpl(), TorchImpl(), TorchCompileImpl(), JaxImpl(), ScipyImpl(),
         SklearnImpl())


def impl_names():
    return [impl.name for impl in IMPLS]


def split_names(names):
    """A list of names from a list or a comma-separated string (None stays None)."""
    if isinstance(names, str):
        return [s.strip() for s in names.split(",") if s.strip()]
    return names


def select_impls(full=False, names=None, option="--impls"):
    """Installed implementations for a run: all of them (quick mode: not the full-only ones),
    or exactly ``names`` (a list or comma-separated string), which must be known and installed."""
    names = split_names(names)
    if names:
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
