"""numpydoc entries that many public functions share, written once.

A public function's docstring names a shared entry as ``%(name)s`` (at the indentation of a
parameter line); ``@fill`` substitutes the entries when the module is imported, so ``help()``,
the doctests and the documentation see the full text.
"""
from __future__ import annotations

from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)

ENTRIES = {
    "base": """base : float, optional
        The unit of the result: None (nats), 2 (bits), any finite b > 0 other than 1.""",
    "num_threads": """num_threads : int, optional
        Threads for this call, 1 to a cap of at least 1024; by default OpenMP's default
        (``OMP_NUM_THREADS``, threadpoolctl).  Results are bit-identical for any value.""",
    "lse_x": """x : array_like
        float32 or float64 values (float16 and bfloat16 are computed in float32), any shape
        and memory layout.""",
    "lse_axis": """axis : int, tuple of int or None, default -1
        The axis or axes that form one distribution; ``None``: the whole array.  (SciPy's
        default is ``None``; fastxent's is the last axis, the class axis of logits.)""",
    "lse_raises": """TypeError
        ``x`` is not a float array (integers included), or an option has the wrong type.
    ValueError
        An axis is out of bounds or repeated, or ``num_threads`` is out of range.""",
}


# the Parameters section of softmax and log_softmax
ENTRIES["lse_params"] = "\n    ".join(["Parameters", "----------"] + [
    ENTRIES[k] for k in ("lse_x", "lse_axis", "num_threads")])


def fill(func: F) -> F:
    """Substitute the shared entries into ``func``'s docstring."""
    if func.__doc__:
        func.__doc__ = func.__doc__ % ENTRIES
    return func
