"""Exact sums of floats (the scoring summary's arithmetic).

Every total of a scoring run (losses, weights, confidences, Brier terms, per calibration bin) is
an exact sum rounded once at the end, so a summary is bit-identical whatever the chunk size, the
thread count or the number of Dask workers, and partial sums from anywhere merge exactly.

Each finite float is ``+-mantissa * 2**p`` with an integer mantissa (a float32 converts to
float64 exactly).  The kernel ``exact_add`` (fastxent/fx_score.h) adds the mantissas into an
int64 accumulator per (group, binary exponent), split into two parts below 2**27, so the totals
stay exact for fewer than 2**35 values; accumulators of chunks merge by integer addition.  Before
that limit, and whenever a sum is read or pickled, the accumulator is folded into Python
integers (``buckets``: power of two p -> integer).  Non-finite values make a sum nan or +-inf as
IEEE addition would.
"""
import copy
import math

import numpy as np

from .. import _kernels
from .._validation import div

__all__ = ["ExactSum", "ExactSums"]

_EXPONENTS = 2048               # float64 biased exponents
_BIAS = 1075                    # value = mantissa * 2**(max(e, 1) - _BIAS)
_LIMIT = 1 << 35                # values an accumulator takes before it is folded


def _finite(x):
    """(the finite values of a flat array as float32/float64, its non-finite values)."""
    if x.dtype.kind != "f" or x.dtype.itemsize not in (4, 8):
        x = x.astype(np.float64)
    x = np.ascontiguousarray(x)
    finite = np.isfinite(x)
    if finite.all():
        return x, None, finite
    return x[finite], x[~finite], finite


def _fold(acc, buckets):
    """Add an accumulator (groups, 2048, 2) into ``buckets[group]`` ({p: integer} each)."""
    flat = acc.reshape(-1, 2)
    for k in np.flatnonzero(flat.any(axis=1)).tolist():
        g, e = divmod(k, _EXPONENTS)
        lo, hi = flat[k].tolist()
        p, b = max(e, 1) - _BIAS, buckets[g]
        b[p] = b.get(p, 0) + lo + (hi << 26)


class _Pending:
    """An int64 accumulator of ``groups`` exact sums and the number of values it holds."""

    __slots__ = ("acc", "count")

    def __init__(self, groups):
        self.acc = np.zeros((groups, _EXPONENTS, 2), np.int64)
        self.count = 0

    def room(self, n):
        return self.count + n < _LIMIT


class _Pooled:
    """What ExactSum and ExactSums share: the pending int64 accumulator of their groups
    (``_groups()`` of them, folded into ``_bucket_dicts()``)."""

    __slots__ = ()

    def _settle(self):
        if self._pending is not None:
            _fold(self._pending.acc, self._bucket_dicts())
            self._pending = None

    def _room(self, n):
        """A pending accumulator that takes n more values."""
        if self._pending is None or not self._pending.room(n):
            self._settle()
            self._pending = _Pending(self._groups())
        return self._pending

    def _accumulate(self, x, idx):
        """Add the finite float32/float64 values x (into groups idx; None: group 0)."""
        if x.size:
            pending = self._room(x.size)
            _kernels.xent.exact_add(x, idx, pending.acc)
            pending.count += x.size

    def merge(self, other):
        """Add ``other`` (of the same kind) to this: its pending accumulator by integer
        addition, its folded parts and flags by ``_merge_folded``."""
        if other is self:
            other = _copy(self)
        theirs = other._pending
        if theirs is not None:
            pending = self._room(theirs.count)
            pending.acc += theirs.acc
            pending.count += theirs.count
        self._merge_folded(other)
        return self


def _copy(s):
    """An independent copy of an ExactSum or ExactSums (a sum merged into itself)."""
    return copy.deepcopy(s)


class ExactSum(_Pooled):
    """The exact sum of many floats, rounded once at the end.

    The result is independent of how the values are split into chunks, of their order and of
    where they were added (sums from Dask workers are combined with ``merge``).  Picklable.
    """

    __slots__ = ("_buckets", "nan", "pinf", "ninf", "_pending")

    def __init__(self, values=None):
        self._buckets = {}  # power of two p -> integer total of the mantissas at scale 2**p
        self.nan = self.pinf = self.ninf = False
        self._pending = None
        if values is not None:
            self.add(values)

    @property
    def buckets(self):
        self._settle()
        return self._buckets

    def _groups(self):
        return 1

    def _bucket_dicts(self):
        return [self._buckets]

    def _note_special(self, special):
        self.nan |= bool(np.isnan(special).any())
        self.pinf |= bool((special == np.inf).any())
        self.ninf |= bool((special == -np.inf).any())

    def __getstate__(self):
        return (self.buckets, self.nan, self.pinf, self.ninf)

    def __setstate__(self, state):
        self._buckets, self.nan, self.pinf, self.ninf = state
        self._pending = None

    def add(self, values):
        x, special, _ = _finite(np.asarray(values).reshape(-1))
        if special is not None:
            self._note_special(special)
        self._accumulate(x, None)
        return self

    def _merge_folded(self, other):
        for p, v in other._buckets.items():
            self._buckets[p] = self._buckets.get(p, 0) + v
        self.nan |= other.nan
        self.pinf |= other.pinf
        self.ninf |= other.ninf

    def _special(self):
        if self.nan or (self.pinf and self.ninf):
            return math.nan
        if self.pinf:
            return math.inf
        if self.ninf:
            return -math.inf
        return None

    def _exact(self):
        """(integer n, power p) with the sum == n * 2**p."""
        buckets = self.buckets
        if not buckets:
            return 0, 0
        pmin = min(buckets)
        return sum(v << (p - pmin) for p, v in buckets.items()), pmin

    def __float__(self):
        return self.ratio(1)

    value = __float__

    def ratio(self, den):
        """The sum divided by ``den`` (an int or another ExactSum), correctly rounded."""
        special = self._special()
        if isinstance(den, ExactSum):
            dspecial = den._special()
            d, dp = den._exact()
        else:
            dspecial, d, dp = None, int(den), 0
        if special is not None or dspecial is not None:
            a = special if special is not None else self.ratio(1)
            b = dspecial if dspecial is not None else float(den)
            return div(a, b)
        n, p = self._exact()
        if d == 0:
            return div(float(n), 0.0)
        if d < 0:
            n, d = -n, -d
        k = p - dp
        try:
            return (n << k) / d if k >= 0 else n / (d << -k)
        except OverflowError:
            return math.copysign(math.inf, n)


class ExactSums(_Pooled):
    """``n`` exact sums side by side: ``add(values, index)`` adds ``values[i]`` to sum
    ``index[i]`` (all to sum 0 when ``index`` is None).  ``s[g]`` is the ExactSum of group g."""

    __slots__ = ("_sums", "_pending")

    def __init__(self, n):
        self._sums = [ExactSum() for _ in range(n)]
        self._pending = None

    @property
    def sums(self):
        self._settle()
        return self._sums

    def _groups(self):
        return len(self._sums)

    def _bucket_dicts(self):
        return [s._buckets for s in self._sums]

    def __getstate__(self):
        return self.sums

    def __setstate__(self, state):
        self._sums = state
        self._pending = None

    def __len__(self):
        return len(self._sums)

    def __getitem__(self, g):
        return self.sums[g]

    def add(self, values, index=None):
        idx = None if index is None else np.ascontiguousarray(index, np.int64).reshape(-1)
        x, special, finite = _finite(np.asarray(values).reshape(-1))
        if special is not None:
            bad_idx = np.zeros(special.size, np.int64) if idx is None else idx[~finite]
            for g in np.unique(bad_idx).tolist():
                self._sums[g]._note_special(special[bad_idx == g])
            idx = None if idx is None else idx[finite]
        self._accumulate(x, idx)
        return self

    def _merge_folded(self, other):
        for a, b in zip(self._sums, other._sums):
            a.merge(b)

    def values(self):
        """The sums as a float64 array, each rounded once."""
        return np.array([float(s) for s in self.sums], dtype=np.float64)
