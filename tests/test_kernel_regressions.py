"""Defects of the kernels found against the peers' test cases, each pinned by a test that fails
without its fix."""
import numpy as np
import pytest
from numpy.lib.stride_tricks import as_strided

import fastxent


def test_soft_targets_full_smoothing_masked_logit_is_inf():
    # label_smoothing=1.0: the target is uniform, so a -inf logit gives an infinite loss (as
    # torch); the (1 - eps) * sum(p (m - x)) term is 0 * inf and must not turn it into NaN
    x = np.array([[0.0, -np.inf, 1.0], [0.5, 0.2, 0.1]])
    p = np.array([[0.5, 0.0, 0.5], [0.2, 0.3, 0.5]])
    loss = fastxent.cross_entropy(x, p, label_smoothing=1.0, reduction="none")
    assert loss[0] == np.inf and np.isfinite(loss[1])
    torch = pytest.importorskip("torch")
    exp = torch.nn.functional.cross_entropy(torch.tensor(x), torch.tensor(p), label_smoothing=1.0,
                                            reduction="none")
    np.testing.assert_allclose(loss, exp.numpy(), rtol=1e-12)


@pytest.mark.parametrize("log_q", [False, True])
def test_kl_nan_q_where_p_is_zero_propagates(log_q):
    p = np.array([[0.0, 1.0], [0.5, 0.5]])
    q = np.array([[np.nan, 1.0], [0.5, 0.5]])
    if log_q:
        q = np.log(q)
    got = fastxent.kl_divergence(p, q, log_q=log_q)
    assert np.isnan(got[0]) and got[1] == 0.0


def test_cross_entropy_from_probs_nan_q_where_p_is_zero_propagates():
    p = np.array([[0.0, 1.0], [0.0, 1.0]], dtype=np.float32)
    q = np.array([[np.nan, 0.9], [0.1, 0.9]], dtype=np.float32)
    loss, grad = fastxent.cross_entropy_from_probs_with_grad(p, q, reduction="none")
    assert np.isnan(loss[0]) and np.isfinite(loss[1])
    assert np.isnan(grad[0, 0]) and grad[1, 0] == 0.0


@pytest.mark.parametrize("func", [
    lambda x: fastxent.cross_entropy(x, np.array([0, 1])),
    lambda x: fastxent.cross_entropy_with_grad(
        x, np.array([0, 1]), out=as_strided(np.zeros(1, np.float32), shape=x.shape, strides=(0, 0))),
    lambda x: fastxent.logsumexp(x),
])
def test_scratch_allocation_failure_is_memory_error(func):
    # rows of 2**40 classes read through a zero stride: the buffered path asks for a 4 TiB
    # row buffer, which the allocator refuses -- a MemoryError, not a crash
    x = as_strided(np.zeros(1, np.float32), shape=(2, 2**40), strides=(0, 0))
    with pytest.raises(MemoryError):
        func(x)


def test_mean_with_cancelling_weights_divides_as_torch():
    # negative and positive class weights summing to exactly 0: torch's mean is sum / 0 = +-inf
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal((4, 3))
    t = np.array([0, 1, 0, 1])
    w = np.array([1.0, -1.0, 5.0])
    exp = torch.nn.functional.cross_entropy(torch.tensor(x), torch.tensor(t), weight=torch.tensor(w))
    got = fastxent.cross_entropy(x, t, weight=w)
    assert np.isinf(got) and got == exp.item()
    loss, _ = fastxent.cross_entropy_with_grad(x, t, weight=w)
    assert loss == exp.item()
