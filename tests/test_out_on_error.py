"""Nothing is written to ``out=`` before every argument has been checked: a bad label, a negative
probability or a value out of range leaves ``out`` (also ``out=q`` / ``out=probs``, the
documented in-place forms) exactly as it was, and the error message quotes the caller's value,
never a gradient written over it.
"""
import numpy as np
import pytest

import fastxent

N, C = 4000, 16        # several blocks of rows: the kernels write early rows before late ones


def _probs(rng, n=N, c=C):
    return rng.dirichlet(np.ones(c), n)


@pytest.mark.parametrize("in_place", [True, False], ids=["out=q", "out=buffer"])
def test_from_probs_bad_label_leaves_out_alone(in_place, rng):
    q = _probs(rng)
    t = rng.integers(0, C, N)
    t[-1] = C + 3
    q0 = q.copy()
    out = q if in_place else np.full_like(q, 7.0)
    before = out.copy()
    with pytest.raises(ValueError, match=rf"^p: label {C + 3} at index \({N - 1},\)"):
        fastxent.cross_entropy_from_probs_with_grad(t, q, out=out)
    assert np.array_equal(out, before) and np.array_equal(q, q0)


@pytest.mark.parametrize("in_place", [True, False], ids=["out=q", "out=buffer"])
@pytest.mark.parametrize("which", ["p", "q"])
def test_from_probs_negative_probability_leaves_out_alone(in_place, which, rng):
    p, q = _probs(rng), _probs(rng)
    (p if which == "p" else q)[-1, 3] = -0.25
    out = q if in_place else np.full_like(q, 7.0)
    before = out.copy()
    with pytest.raises(ValueError, match=rf"^{which}: probabilities must be non-negative, "
                                         rf"got -0.25 at index \({N - 1}, 3\)"):
        fastxent.cross_entropy_from_probs_with_grad(p, q, out=out)
    assert np.array_equal(out, before)


@pytest.mark.parametrize("in_place", [True, False], ids=["out=probs", "out=buffer"])
@pytest.mark.parametrize("which", ["probs", "target"])
def test_binary_out_of_range_leaves_out_alone(in_place, which, rng):
    probs = rng.uniform(0.01, 0.99, (N, C))
    target = rng.uniform(0, 1, (N, C))
    (probs if which == "probs" else target)[-1, -1] = 1.5
    out = probs if in_place else np.full_like(probs, 7.0)
    before = out.copy()
    with pytest.raises(ValueError, match=rf"^{which}: all elements must be in \[0, 1\].*got 1.5 "
                                         rf"at index \({N - 1}, {C - 1}\)"):
        fastxent.binary_cross_entropy_with_grad(probs, target, out=out)
    assert np.array_equal(out, before)


def test_cross_entropy_bad_label_leaves_out_alone(rng):
    x = rng.standard_normal((N, C))
    t = rng.integers(0, C, N)
    t[-1] = -7
    out = np.full_like(x, 7.0)
    with pytest.raises(ValueError, match=rf"^target: label -7 at row {N - 1}"):
        fastxent.cross_entropy_with_grad(x, t, out=out)
    assert (out == 7.0).all()
    x0 = x.copy()
    with pytest.raises(ValueError, match=r"^target\b"):
        fastxent.cross_entropy_with_grad(x, t, inplace=True)
    assert np.array_equal(x, x0)


def test_valid_input_still_writes_out(rng):
    """The checking pass changes nothing for good input: out= gets the same gradient."""
    p, q = _probs(rng), _probs(rng)
    out = np.empty_like(q)
    loss, g = fastxent.cross_entropy_from_probs_with_grad(p, q, out=out)
    loss2, g2 = fastxent.cross_entropy_from_probs_with_grad(p, q)
    assert g is out and np.array_equal(g, g2) and loss == loss2
    q2 = q.copy()
    assert np.array_equal(fastxent.cross_entropy_from_probs_with_grad(p, q2, out=q2)[1], g2)
    probs = rng.uniform(0.01, 0.99, (N, C))
    target = rng.uniform(0, 1, (N, C))
    g3 = fastxent.binary_cross_entropy_with_grad(probs, target)[1]
    assert np.array_equal(fastxent.binary_cross_entropy_with_grad(probs, target, out=probs)[1], g3)
