"""The log-sum-exp family against SciPy: ``scipy.special.logsumexp`` / ``softmax`` /
``log_softmax`` semantics (axis tuples and None, ``b=``, ``keepdims=``, ``return_sign=``,
empty reductions, special values), with SciPy's own test situations restated here, plus
float16 / bfloat16 input computed in float32.
"""
import math

import ml_dtypes
import numpy as np
import pytest
import scipy.special as sp

import fastxent
from fastxent import reference as ref

from tests.conftest import assert_close

LSE_FUNCS = [fastxent.logsumexp, ref.logsumexp]


def same(actual, expected, **kw):
    """Equal within float64 round-off; NaN/inf must match exactly, and so must the shape."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    np.testing.assert_allclose(actual, expected, equal_nan=True, **({"rtol": 1e-13} | kw))


# ------------------------------------------------------------------ logsumexp, SciPy's cases
@pytest.mark.parametrize("lse", LSE_FUNCS)
def test_empty_sum_is_minus_inf(lse):
    assert lse(np.array([]), axis=None) == -np.inf
    assert lse(np.zeros((3, 0)), axis=-1).tolist() == [-np.inf] * 3
    assert lse(np.zeros((0, 3)), axis=-1).shape == (0,)
    # the sign of an empty sum is 0, as of any zero sum (SciPy says -1 for zero-size input)
    assert lse(np.array([]), axis=None, return_sign=True) == (-np.inf, 0.0)
    assert lse(np.array([-np.inf]), axis=None, return_sign=True) == (-np.inf, 0.0)


@pytest.mark.parametrize("lse", LSE_FUNCS)
def test_large_values_do_not_overflow(lse):
    a = np.arange(200.0)
    same(lse(a), np.log(np.sum(np.exp(a))))
    same(lse(np.array([1000.0, 1000.0])), 1000.0 + math.log(2.0))
    same(lse(np.full(1000, 10000.0)), 10000.0 + math.log(1000))


@pytest.mark.parametrize("lse", LSE_FUNCS)
def test_tiny_values_sum_back(lse):
    """log of 1e-40 many times: exp(lse) is the plain sum, over every axis choice."""
    x = np.full((2, 100000), 1e-40)
    logx = np.log(x)
    same(np.exp(lse(logx, axis=None)), x.sum())
    same(np.exp(lse(logx, axis=0)), x.sum(axis=0))
    same(np.exp(lse(logx, axis=1)), x.sum(axis=1))


@pytest.mark.parametrize("lse", LSE_FUNCS)
@pytest.mark.parametrize("a, expected", [([np.inf], np.inf), ([-np.inf], -np.inf),
                                         ([np.nan], np.nan), ([-np.inf, -np.inf], -np.inf),
                                         ([np.inf, 1.0], np.inf), ([np.nan, np.inf], np.nan)])
def test_special_values(lse, a, expected):
    same(lse(np.array(a)), expected)
    same(lse(np.array(a)), sp.logsumexp(np.array(a)))


@pytest.mark.parametrize("lse", LSE_FUNCS)
def test_mixed_magnitudes_axes_and_keepdims(lse):
    a = np.array([[1e10, 1e-10], [-1e10, -np.inf]])
    same(lse(a, axis=-1), [1e10, -1e10])
    same(lse(a, axis=-1, keepdims=True), [[1e10], [-1e10]])
    same(lse(a, axis=(-1, -2)), 1e10)
    same(lse(a, axis=(0, 1), keepdims=True), [[1e10]])


@pytest.mark.parametrize("lse", LSE_FUNCS)
def test_one_dominant_term_keeps_the_small_result(lse):
    """log(1 + e^-40) is 4.2e-18: the largest term is taken out and log1p keeps the rest."""
    a = np.array([0.0, -40.0])
    same(lse(a), np.logaddexp(0.0, -40.0), rtol=1e-15)


@pytest.mark.parametrize("lse", LSE_FUNCS)
def test_scale_factors(lse):
    a = np.arange(200.0)
    b = np.arange(200.0, 0.0, -1.0)
    same(lse(a, b=b), np.log(np.sum(b * np.exp(a))))
    same(lse(np.array([1000.0, 1000.0]), b=np.array([1.2, 1.2])), 1000 + math.log(2 * 1.2))
    x = np.full(100000, 1e-40)
    bb = np.linspace(1, 1000, 100000)
    X, B = np.stack([x, x]), np.stack([bb, bb])
    for axis in (None, 0, 1):
        same(np.exp(lse(np.log(X), b=B, axis=axis)), np.sum(B * X, axis=axis))


@pytest.mark.parametrize("lse", LSE_FUNCS)
def test_negative_scale_and_sign(lse):
    r, s = lse(np.array([1.0, 1.0, 1.0]), b=np.array([1, -1, -1]), return_sign=True)
    same(r, 1.0)
    assert s == -1.0
    r, s = lse(np.array([1.0, 1.0]), b=np.array([1, -1]), return_sign=True)
    assert r == -np.inf and s == 0.0
    # a positive result although the largest term has a negative scale
    a = np.array([3.06409428, 0.37251854, 3.87471931])
    b = np.array([1.88190708, 2.84174795, -0.85016884])
    same(lse(a, b=b), lse(a, b=b, return_sign=True)[0])
    same(lse(a, b=b), sp.logsumexp(a, b=b))
    # a negative result without return_sign is NaN
    assert np.isnan(lse(a, b=np.array([1.88190708, 2.84174795, -3.85016884])))


@pytest.mark.parametrize("lse", LSE_FUNCS)
@pytest.mark.parametrize("b, sign", [(None, 1.0), ([-1.0], -1.0)])
def test_infinite_element_keeps_its_sign(lse, b, sign):
    val, s = lse(np.array([np.inf]), b=b, return_sign=True)
    assert val == np.inf and s == sign


@pytest.mark.parametrize("lse", LSE_FUNCS)
def test_zero_scale_leaves_the_element_out(lse):
    same(lse(np.array([1.0, 10000.0]), b=np.array([1, 0])), 1.0)
    same(lse(np.array([1.0, np.nan]), b=np.array([1, 0])), 1.0)
    same(lse(np.array([1.0, np.inf]), b=np.array([1, 0])), 1.0)


@pytest.mark.parametrize("lse", LSE_FUNCS)
def test_result_shapes(lse):
    a = np.ones((1, 2, 3, 4))
    r, s = lse(a, axis=2, b=np.ones_like(a), return_sign=True)
    assert r.shape == s.shape == (1, 2, 4)
    r, s = lse(a, axis=(1, 3), b=np.ones_like(a), return_sign=True)
    assert r.shape == s.shape == (1, 3)
    # a and b broadcast against each other (the result has the broadcast shape)
    r = lse(np.zeros((4, 1, 2, 1)), b=np.ones((3, 1, 5)), axis=None)
    same(r, sp.logsumexp(np.zeros((4, 1, 2, 1)), b=np.ones((3, 1, 5))))
    assert lse(np.zeros((4, 1, 2, 1)), b=np.ones((3, 1, 5)), axis=0).shape == (3, 2, 5)


def test_array_like_and_scalar_input():
    same(fastxent.logsumexp([1000.0, 1000.0]), 1000.0 + math.log(2.0))
    same(fastxent.logsumexp(2.0, axis=None), 2.0)
    assert type(fastxent.logsumexp(np.arange(3.0))) is np.float64


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtypes(dtype):
    a = np.array([1000.0, 1000.0], dtype=dtype)
    r = fastxent.logsumexp(a)
    assert r.dtype == dtype
    assert_close(r, 1000.0 + math.log(2.0), dtype)
    # a float64 b promotes float32 x to float64, as SciPy
    r = fastxent.logsumexp(np.array([2.0, 1.0], dtype=dtype), b=np.array([1.0, -1.0]))
    assert r.dtype == np.float64
    same(r, math.log(math.exp(2) - math.exp(1)))
    # integer b keeps x's dtype
    r = fastxent.logsumexp(np.array([2.0, 1.0], dtype=dtype), b=np.array([1, -1]))
    assert r.dtype == dtype
    assert_close(r, math.log(math.exp(2) - math.exp(1)), dtype)


def test_inputs_are_not_modified():
    a, b = np.array([5.0, 4.0]), np.array([3.0, -2.0])
    fastxent.logsumexp(a)
    fastxent.logsumexp(a, b=b, return_sign=True)
    assert a.tolist() == [5.0, 4.0] and b.tolist() == [3.0, -2.0]


# ------------------------------------------------------------------ against SciPy, at random
@pytest.mark.parametrize("shape, axis", [((5, 7), None), ((5, 7), 0), ((5, 7), (0, 1)),
                                         ((3, 4, 5), (0, 2)), ((3, 4, 5), (2, 0)),
                                         ((3, 4, 5), -2), ((3, 4, 5), ()), ((6,), 0),
                                         ((2, 3, 4, 5), (1, 3))])
@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("signs", ["none", "positive", "mixed"])
def test_matches_scipy(shape, axis, keepdims, signs, rng):
    a = rng.standard_normal(shape) * 5
    b = {"none": None, "positive": rng.uniform(0, 2, shape),
         "mixed": rng.standard_normal(shape)}[signs]
    if b is not None:
        b.flat[::5] = 0
    got = fastxent.logsumexp(a, axis=axis, b=b, keepdims=keepdims, return_sign=True)
    want = sp.logsumexp(a, axis=axis, b=b, keepdims=keepdims, return_sign=True)
    refv = ref.logsumexp(a, axis=axis, b=b, keepdims=keepdims, return_sign=True)
    for g, w, r in zip(got, want, refv):
        assert np.shape(g) == np.shape(w) == np.shape(r)
        # the difference of two sums cancels: its error is relative to the larger part
        same(g, r, rtol=1e-11, atol=1e-12)
        same(r, w, rtol=1e-11, atol=1e-12)
    same(fastxent.logsumexp(a, axis=axis, b=b, keepdims=keepdims),
         sp.logsumexp(a, axis=axis, b=b, keepdims=keepdims), rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("func", ["softmax", "log_softmax"])
@pytest.mark.parametrize("shape, axis", [((5, 7), None), ((5, 7), 0), ((3, 4, 5), (0, 2)),
                                         ((3, 4, 5), (2, 1)), ((2, 3, 4, 5), (0, 3)),
                                         ((4,), None), ((3, 4), ())])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_axes_match_scipy(func, shape, axis, dtype, rng):
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    got = getattr(fastxent, func)(x, axis=axis)
    want = getattr(sp, func)(x.astype(np.float64), axis=axis)
    assert got.shape == x.shape and got.dtype == dtype
    assert_close(got, want, dtype)
    assert_close(got, getattr(ref, func)(x.astype(np.float64), axis=axis), dtype)


# ------------------------------------------------------------------ softmax, SciPy's cases
def test_softmax_fixtures():
    same(fastxent.softmax(np.array([1000.0, 0.0, 0.0, 0.0])), [1.0, 0.0, 0.0, 0.0])
    same(fastxent.softmax(np.array([1.0, 1.0])), [0.5, 0.5])
    same(fastxent.softmax(np.array([0.0, 1.0])), np.array([1.0, np.e]) / (1 + np.e))
    x = np.arange(4.0)
    # mpmath at 200 digits
    expected = np.array([0.03205860328008499, 0.08714431874203256, 0.23688281808991013,
                         0.6439142598879722])
    same(fastxent.softmax(x), expected)
    same(fastxent.softmax(x + 100), expected)                    # shift invariance
    same(fastxent.softmax(x.reshape(2, 2), axis=None), expected.reshape(2, 2))


def test_softmax_multi_axes():
    x = np.array([[1000.0, 0.0], [1000.0, 0.0]])
    same(fastxent.softmax(x, axis=0), [[0.5, 0.5], [0.5, 0.5]])
    same(fastxent.softmax(x, axis=1), [[1.0, 0.0], [1.0, 0.0]])
    x = np.array([[-25.0, 0.0, 25.0, 50.0], [1.0, 325.0, 749.0, 750.0]])
    # mpmath at 200 digits
    expected = np.array([[2.678636961770877e-33, 1.9287498479371314e-22,
                          1.3887943864771144e-11, 0.999999999986112],
                         [0.0, 1.9444526359919372e-185, 0.2689414213699951,
                          0.7310585786300048]])
    same(fastxent.softmax(x, axis=1), expected)
    same(fastxent.softmax(x.T, axis=0), expected.T)
    same(fastxent.softmax(x.reshape(2, 2, 2), axis=(1, 2)), expected.reshape(2, 2, 2))


def test_softmax_scalar_and_array_like():
    assert fastxent.softmax(1000.0, axis=None) == 1.0
    same(fastxent.softmax([1000.0, 0.0, 0.0, 0.0]), [1.0, 0.0, 0.0, 0.0])
    assert fastxent.log_softmax(1.0, axis=None) == 0.0
    same(fastxent.log_softmax([1000.0, 1.0]), [0.0, -999.0])


def test_log_softmax_cases():
    # mpmath at 200 digits
    expect = np.array([-3.4401896985611953, -2.4401896985611953, -1.4401896985611953,
                       -0.44018969856119533])
    for offset in (0, 100):
        same(fastxent.log_softmax(np.arange(4.0) + offset), expect)
    same(fastxent.log_softmax(np.arange(4.0).reshape(2, 2), axis=None), expect.reshape(2, 2))
    x = np.array([[1000.0, 1.0], [1000.0, 1.0]])
    same(fastxent.log_softmax(x, axis=0), np.log(0.5) * np.ones((2, 2)))
    same(fastxent.log_softmax(x, axis=1), [[0.0, -999.0], [0.0, -999.0]])
    x2 = np.arange(8.0).reshape(2, 4)
    same(fastxent.log_softmax(x2, axis=1), np.stack([expect, expect]))
    same(fastxent.log_softmax(x2.T, axis=0), np.stack([expect, expect]).T)
    same(fastxent.log_softmax(x2.reshape(2, 2, 2), axis=(1, 2)),
         np.stack([expect, expect]).reshape(2, 2, 2))


@pytest.mark.parametrize("func", [fastxent.softmax, fastxent.log_softmax])
def test_softmax_of_nothing_is_empty(func):
    for shape, axis in [((0,), -1), ((3, 0), -1), ((0, 4), 0), ((2, 0, 3), (1, 2))]:
        out = func(np.zeros(shape), axis=axis)
        assert out.shape == shape and out.dtype == np.float64


# ------------------------------------------------------------------ 16-bit input
@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("func", ["logsumexp", "softmax", "log_softmax"])
@pytest.mark.parametrize("axis", [-1, 0, None, (0, 1)])
def test_16_bit_input_computed_in_float32(dtype, func, axis, rng):
    x = (rng.standard_normal((7, 9)) * 3).astype(dtype)
    got = getattr(fastxent, func)(x, axis=axis)
    want = getattr(ref, func)(x.astype(np.float64), axis=axis)
    assert np.asarray(got).dtype == np.float32
    assert_close(got, want, np.float32)


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("kw, exc, name", [
    (dict(axis=(0, 0)), ValueError, "axis"),
    (dict(axis=(0, -2)), ValueError, "axis"),
    (dict(axis=(0, 5)), ValueError, "axis"),
    (dict(axis=1.0), TypeError, "axis"),
    (dict(axis=(0, 1.0)), TypeError, "axis"),
    (dict(axis=[0, 1]), TypeError, "axis"),
    (dict(axis=2**70), ValueError, "axis"),
    (dict(b=np.ones(4)), ValueError, "b"),
    (dict(b="abc"), TypeError, "b"),
    (dict(b=np.ones(3, dtype=complex)), TypeError, "b"),
    (dict(b=[[1, 2], [3]]), TypeError, "b"),
    (dict(keepdims="yes"), TypeError, "keepdims"),
    (dict(return_sign=1), TypeError, "return_sign"),
    (dict(num_threads=2**70), ValueError, "num_threads"),
    (dict(num_threads=0), ValueError, "num_threads"),
])
def test_logsumexp_bad_arguments(kw, exc, name):
    with pytest.raises(exc, match=rf"^{name}\b"):
        fastxent.logsumexp(np.ones((2, 3)), **kw)


@pytest.mark.parametrize("func", [fastxent.logsumexp, fastxent.softmax, fastxent.log_softmax])
@pytest.mark.parametrize("x, exc", [([[1.0, 2.0], [3.0]], TypeError), ("abc", TypeError),
                                    (np.ones(3, dtype=object), TypeError),
                                    (np.arange(3), TypeError), (None, TypeError)])
def test_bad_x(func, x, exc):
    with pytest.raises(exc, match=r"^x\b"):
        func(x)


@pytest.mark.parametrize("func", [fastxent.softmax, fastxent.log_softmax])
@pytest.mark.parametrize("axis, exc", [((0, 0), ValueError), ("0", TypeError), (3, ValueError)])
def test_softmax_bad_axis(func, axis, exc):
    with pytest.raises(exc, match=r"^axis\b"):
        func(np.ones((2, 3)), axis=axis)
