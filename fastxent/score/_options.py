"""The options of a scoring run, validated once (the local engine and Dask share them).

Every error names the Python keyword argument (``fastxent score`` maps it to its flag).
"""
import dataclasses
import math
import numbers

from .. import _validation as check
from ._common import ScoreError, parse_bytes
from ._rows import KINDS

__all__ = ["Options", "options", "DEFAULT_MEMORY_LIMIT"]

DEFAULT_MEMORY_LIMIT = 300 * 10**6
INPUTS = ("auto",) + KINDS


@dataclasses.dataclass(frozen=True)
class Options:
    input: str = "auto"
    binary: bool = False
    ignore_index: int = -100
    base: float | None = None
    top_k: tuple = ()
    ece_bins: int = 15
    eps: float | None = None
    shift: bool = False
    per_sequence: bool = False
    chunk_rows: int | None = None
    num_threads: int = 1
    memory_limit: int = DEFAULT_MEMORY_LIMIT
    progress: bool = False

    @property
    def scale(self):
        """Factor from nats to the unit of ``base``."""
        return 1.0 if self.base is None else 1.0 / math.log(self.base)


def _value_error(fn, *args):
    try:
        return fn(*args)
    except ValueError as exc:
        raise ScoreError(str(exc)) from None


def _positive(value, name, allow_none=True):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected a positive int, got {type(value).__name__}")
    if value < 1:
        raise ScoreError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


MAX_BINS = 1 << 20     # calibration bins / top-k: far beyond any use, far below a memory error


def _bins(value):
    n = _positive(value, "ece_bins", False)
    if n > MAX_BINS:
        raise ScoreError(f"ece_bins: at most {MAX_BINS}, got {n}")
    return n


def _base(base):
    if base is None or (isinstance(base, str) and base.strip().lower() == "e"):
        return None
    if isinstance(base, str):
        try:
            base = float(base)
        except ValueError:
            raise ScoreError(f"base: expected a number > 0 other than 1 (or 'e'), "
                             f"got {base!r}") from None
    _value_error(check.log_base_scale, base)
    return float(base)


def _memory(value):
    if isinstance(value, str):
        try:
            value = parse_bytes(value)
        except ValueError as exc:
            raise ScoreError(f"memory_limit: {exc}") from None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"memory_limit: expected bytes (an int) or a size such as '300MB', got "
                        f"{type(value).__name__}")
    if not value >= 1 << 20 or not math.isfinite(value):
        raise ScoreError(f"memory_limit: expected at least 1 MiB, got {value!r}")
    return int(value)


def options(*, input="auto", binary=False, ignore_index=-100, base=None, top_k=(), ece_bins=15,
            eps=None, shift=False, per_sequence=False, chunk_rows=None, num_threads=None,
            memory_limit=DEFAULT_MEMORY_LIMIT, progress=False):
    """Validated :class:`Options` from the keyword arguments of ``score_files``."""
    if not isinstance(input, str):
        raise TypeError(f"input: expected one of {', '.join(INPUTS)}, got {type(input).__name__}")
    if input not in INPUTS:
        raise ScoreError(f"input: expected one of {', '.join(INPUTS)}, got {input!r}")
    binary, shift, per_sequence, progress = (check.flag(v, n) for v, n in (
        (binary, "binary"), (shift, "shift"), (per_sequence, "per_sequence"),
        (progress, "progress")))
    if isinstance(top_k, numbers.Integral):
        top_k = (top_k,)
    if not isinstance(top_k, (tuple, list, range)):
        raise TypeError(f"top_k: expected an int or a sequence of ints, got {type(top_k).__name__}")
    ks = tuple(sorted({_positive(k, "top_k", False) for k in top_k}))
    if ks and ks[-1] > MAX_BINS:
        raise ScoreError(f"top_k: at most {MAX_BINS}, got {ks[-1]}")
    if binary and ks:
        raise ScoreError("top_k: top-k accuracy needs several classes, not binary scores")
    if eps is not None:
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
            raise TypeError(f"eps: expected a float in [0, 1) or None, got {type(eps).__name__}")
        if not 0.0 <= eps < 1.0:
            raise ScoreError(f"eps: must be in [0, 1), got {eps!r}")
        eps = float(eps)
    threads = _value_error(check.num_threads, num_threads)
    return Options(
        input=input, binary=binary,
        ignore_index=_value_error(check.integer, ignore_index, "ignore_index"),
        base=_base(base), top_k=ks, ece_bins=_bins(ece_bins), eps=eps,
        shift=shift, per_sequence=per_sequence,
        chunk_rows=_positive(chunk_rows, "chunk_rows"), num_threads=threads,
        memory_limit=_memory(memory_limit), progress=progress)
