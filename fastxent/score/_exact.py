"""Exact sums of floats (the scoring summary's arithmetic).

Every total of a scoring run (losses, weights, confidences, Brier terms, per calibration bin) is
an exact sum rounded once at the end, so a summary is bit-identical whatever the chunk size, the
thread count or the number of Dask workers, and partial sums from anywhere merge exactly.

Each finite float is ``mantissa * 2**p`` with an integer mantissa; ``add`` totals the mantissas
per (group, exponent) with ``np.bincount`` (exact: fewer than 2**53 in each bucket) and keeps the
totals as Python integers.  Non-finite values make a sum nan or +-inf as IEEE addition would.
"""
import math

import numpy as np

from .._validation import div

__all__ = ["ExactSum", "ExactSums"]


def _split(x):
    """(finite values as float32 or float64, nan, +inf, -inf) of a flat float array."""
    if x.dtype.kind != "f" or x.dtype.itemsize not in (4, 8):
        x = x.astype(np.float64)
    finite = np.isfinite(x)
    if finite.all():
        return x, None
    return x, finite


def _mantissas(v):
    """(biased exponents, [(mantissa part, left shift), ...]) of non-negative finite floats."""
    if v.dtype.itemsize == 4:
        bits = np.ascontiguousarray(v).view(np.int32)
        e = bits >> 23
        m = bits & 0x7FFFFF
        m[e != 0] |= 0x800000
        return e, ((m, 0),)
    bits = np.ascontiguousarray(v).view(np.int64)
    e = bits >> 52
    m = bits & ((1 << 52) - 1)
    m[e != 0] |= 1 << 52
    return e, ((m & ((1 << 26) - 1), 0), (m >> 26, 26))


def _buckets(x, index, n):
    """{(group, p): integer} totals of the finite values ``x`` (float32/64) in groups ``index``.

    float32 = m * 2**(max(e, 1) - 150), m < 2**24, at most 2**28 values per bincount;
    float64 = m * 2**(max(e, 1) - 1075), m < 2**53 split into 26 + 27 bits, 2**26 values:
    either way every bucket total stays below 2**53, so the float64 bincount is exact.
    """
    f32 = x.dtype.itemsize == 4
    step, nexp, bias = (1 << 28, 256, 150) if f32 else (1 << 26, 2048, 1075)
    out = {}
    for sign, sel in ((1, x >= 0), (-1, x < 0)):
        if not sel.any():
            continue
        whole = bool(sel.all())
        v = np.abs(x if whole else x[sel])       # abs: -0.0 has its sign bit set
        g = index if whole or index is None else index[sel]
        for i in range(0, v.size, step):
            e, parts = _mantissas(v[i:i + step])
            key = e if g is None else g[i:i + step] * nexp + e
            for m, shift in parts:
                totals = np.bincount(key, m, n * nexp)
                for k in np.flatnonzero(totals).tolist():
                    grp, ex = divmod(k, nexp)
                    p = max(ex, 1) - bias
                    out[grp, p] = out.get((grp, p), 0) + sign * (int(totals[k]) << shift)
    return out


class ExactSum:
    """The exact sum of many floats, rounded once at the end.

    The result is independent of how the values are split into chunks, of their order and of
    where they were added (sums from Dask workers are combined with ``merge``).  Picklable.
    """

    __slots__ = ("buckets", "nan", "pinf", "ninf")

    def __init__(self, values=None):
        self.buckets = {}   # power of two p -> integer total of the mantissas at scale 2**p
        self.nan = self.pinf = self.ninf = False
        if values is not None:
            self.add(values)

    def __getstate__(self):
        return (self.buckets, self.nan, self.pinf, self.ninf)

    def __setstate__(self, state):
        self.buckets, self.nan, self.pinf, self.ninf = state

    def add(self, values):
        x = np.asarray(values).reshape(-1)
        if x.size:
            sums = ExactSums(1)
            sums.add(x, None)
            self.merge(sums[0])
        return self

    def merge(self, other):
        for p, v in other.buckets.items():
            self.buckets[p] = self.buckets.get(p, 0) + v
        self.nan |= other.nan
        self.pinf |= other.pinf
        self.ninf |= other.ninf
        return self

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
        if not self.buckets:
            return 0, 0
        pmin = min(self.buckets)
        return sum(v << (p - pmin) for p, v in self.buckets.items()), pmin

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


class ExactSums:
    """``n`` exact sums side by side: ``add(values, index)`` adds ``values[i]`` to sum
    ``index[i]`` (all to sum 0 when ``index`` is None).  ``s[g]`` is the ExactSum of group g."""

    __slots__ = ("sums",)

    def __init__(self, n):
        self.sums = [ExactSum() for _ in range(n)]

    def __getstate__(self):
        return self.sums

    def __setstate__(self, state):
        self.sums = state

    def __len__(self):
        return len(self.sums)

    def __getitem__(self, g):
        return self.sums[g]

    def add(self, values, index=None):
        x = np.asarray(values).reshape(-1)
        if not x.size:
            return self
        n = len(self.sums)
        idx = None if index is None else np.asarray(index, np.int64).reshape(-1)
        x, finite = _split(x)
        if finite is not None:
            for g in (range(1) if idx is None else np.unique(idx[~finite]).tolist()):
                bad = ~finite if idx is None else (~finite & (idx == g))
                special = x[bad]
                s = self.sums[g]
                s.nan |= bool(np.isnan(special).any())
                s.pinf |= bool((special == np.inf).any())
                s.ninf |= bool((special == -np.inf).any())
            x = x[finite]
            idx = None if idx is None else idx[finite]
        for (g, p), v in _buckets(x, idx, n if idx is not None else 1).items():
            b = self.sums[g].buckets
            b[p] = b.get(p, 0) + v
        return self

    def merge(self, other):
        for a, b in zip(self.sums, other.sums):
            a.merge(b)
        return self

    def values(self):
        """The sums as a float64 array, each rounded once."""
        return np.array([float(s) for s in self.sums], dtype=np.float64)
