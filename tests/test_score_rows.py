"""fastxent.score._rows.row_scores: the per-row statistics every scoring path uses, against
fastxent.reference.score_rows (float64, one row at a time) and against the peers."""
import numpy as np
import pytest
import torch

import fastxent
from fastxent import reference as ref
from fastxent.score._rows import row_scores
from tests.conftest import FLOAT_DTYPES, assert_close

KINDS = ["logits", "log-probs", "probs"]


def scores_of(kind, x):
    """Rows of ``kind`` made from logits ``x`` (same dtype)."""
    if kind == "logits":
        return x
    if kind == "log-probs":
        return fastxent.log_softmax(x)
    return fastxent.softmax(x)


def special_rows(x, y, kind):
    """Masks (-inf), ties, NaN, +inf and constant rows planted in ``x`` (logits or scores)."""
    C = x.shape[1]
    low = -np.inf if kind != "probs" else 0.0
    x[0, :] = x[0, 0]                            # a constant row: every class ties
    y[0] = C - 1
    x[1, 1::2] = low                             # masked classes
    y[1] = 1 if C > 1 else 0                     # the label itself masked
    x[2, :] = np.nan
    x[3, C // 2] = np.nan                        # one NaN
    y[3] = 0
    if C > 2:
        x[4, 2] = x[4, 1] = x[4].max() if kind != "probs" else 0.5
        y[4] = 2                                 # tied with the maximum, after it
        x[5, 0] = np.nan
        y[5] = 0                                 # the label is NaN
    if kind == "logits":
        x[6, 0] = np.inf
        x[7, :] = -np.inf                        # every class masked
    y[8] = -100
    return x, y


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("C", [1, 2, 7, 3000])
@pytest.mark.parametrize("threads", [1, 2])
def test_row_scores_match_reference(rng, dtype, kind, C, threads):
    n = 300 if C < 1000 else 60
    x = scores_of(kind, (3 * rng.standard_normal((n, C))).astype(dtype))
    y = rng.integers(0, C, n)
    y[::11] = -100
    x, y = special_rows(x.copy(), y, kind)
    eps = 1e-7
    loss, rank, conf, brier, bad = row_scores(np.ascontiguousarray(x), y, kind, -100, eps,
                                              threads)
    rl, rr, rc, rb, rbad = ref.score_rows(x, y, kind, -100, eps)
    assert bad == rbad == -1
    for a in (loss, conf, brier):
        assert a.dtype == np.float64 and a.shape == (n,)
    assert rank.dtype == np.int64
    np.testing.assert_array_equal(rank, rr)
    assert_close(loss, rl, dtype)
    assert_close(conf, rc, dtype)
    assert_close(brier, rb, dtype)
    ignored = y == -100
    assert (loss[ignored] == 0).all() and (rank[ignored] == -1).all()
    assert (conf[ignored] == 0).all() and (brier[ignored] == 0).all()


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_logit_losses_are_fastxents(rng, dtype):
    """The loss of logits is fastxent.cross_entropy's, row for row, bit for bit."""
    x = (4 * rng.standard_normal((500, 37))).astype(dtype)
    y = rng.integers(0, 37, 500)
    loss = row_scores(x, y, "logits", -100, 0.0, 2)[0]
    np.testing.assert_array_equal(loss, fastxent.cross_entropy(x, y, reduction="none")
                                  .astype(np.float64))


def test_rank_is_argmax_and_topk(rng):
    """rank == 0 exactly where np.argmax (first maximum, NaN first) picks the label; rank < k
    where torch.topk's stable descending order puts the label in the first k."""
    x = rng.integers(-3, 4, (400, 9)).astype(np.float32)      # many ties
    x[::13, 4] = np.nan
    y = rng.integers(0, 9, 400)
    rank = row_scores(x, y, "logits", -100, 0.0, 1)[1]
    np.testing.assert_array_equal(rank == 0, np.argmax(x, axis=1) == y)
    finite = ~np.isnan(x).any(axis=1)
    order = torch.sort(torch.from_numpy(x[finite]), dim=1, descending=True, stable=True).indices
    pos = (order == torch.from_numpy(y[finite])[:, None]).int().argmax(dim=1).numpy()
    np.testing.assert_array_equal(rank[finite], pos)


def test_textbook_values():
    x = np.log(np.array([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]]))
    y = np.array([1, 0])
    loss, rank, conf, brier, bad = row_scores(x, y, "logits", -100, 0.0, 1)
    np.testing.assert_allclose(loss, [-np.log(0.2), -np.log(0.25)], rtol=1e-14)
    np.testing.assert_array_equal(rank, [1, 1])         # class 0 ties class 1, and comes first
    np.testing.assert_allclose(conf, [0.7, 0.5], rtol=1e-14)
    np.testing.assert_allclose(brier, [0.49 + 0.64 + 0.01, 0.5625 + 0.0625 + 0.25], rtol=1e-14)
    assert bad == -1
    q = np.exp(x)
    np.testing.assert_allclose(row_scores(q, y, "probs", -100, 1e-12, 1)[3], brier, rtol=1e-14)
    np.testing.assert_allclose(row_scores(x, y, "log-probs", -100, 0.0, 1)[0], loss, rtol=1e-14)


def test_tiny_brier_and_loss_stay_accurate():
    """A confident correct row: 1 - p[y] is computed without cancellation."""
    x = np.array([[40.0, 0.0, 0.0]])
    loss, _, conf, brier, _ = row_scores(x, np.array([0]), "logits", -100, 0.0, 1)
    p_other = np.exp(-40.0)
    np.testing.assert_allclose(loss, [2 * p_other], rtol=1e-12)
    np.testing.assert_allclose(brier, [(2 * p_other) ** 2 + 2 * p_other ** 2], rtol=1e-10)
    assert conf[0] == 1.0 - 2 * p_other or abs(conf[0] - 1.0) < 1e-15


@pytest.mark.parametrize("kind", KINDS)
def test_bad_labels_name_the_first_row(kind):
    x = np.full((6, 4), 0.25)
    y = np.array([0, -100, 3, 4, -1, 7])
    assert row_scores(x, y, kind, -100, 0.0, 1)[4] == 3
    assert ref.score_rows(x, y, kind, -100, 0.0)[4] == 3
    y[3] = -100
    assert row_scores(x, y, kind, -100, 0.0, 1)[4] == 4
    assert row_scores(x, np.array([0, 1, 2, 3, 2, 1]), kind, 99, 0.0, 2)[4] == -1
    assert row_scores(x, np.array([9, 1, 2, 3, 2, 1]), kind, 9, 0.0, 2)[4] == -1


def test_probability_clip():
    q = np.array([[0.0, 1.0], [1e-30, 1.0], [2.0, 0.0]])
    y = np.array([0, 0, 0])
    loss = row_scores(q, y, "probs", -100, 1e-7, 1)[0]
    np.testing.assert_allclose(loss, [-np.log(1e-7), -np.log(1e-7), 0.0])
    want = fastxent.cross_entropy_from_probs(y[:2], q[:2], eps=1e-7, reduction="none")
    np.testing.assert_allclose(loss[:2], want, rtol=1e-14)


def test_empty_and_argument_checks():
    out = row_scores(np.zeros((0, 3)), np.zeros(0, np.int64), "logits", -100, 0.0, 2)
    assert [a.shape for a in out[:4]] == [(0,)] * 4 and out[4] == -1
    with pytest.raises(TypeError, match="x: expected a C-contiguous"):
        row_scores(np.zeros((3, 2), np.float16), np.zeros(3, np.int64), "logits", -100, 0.0, 1)
    with pytest.raises(TypeError, match="x: expected a C-contiguous"):
        row_scores(np.zeros((3, 2)).T, np.zeros(2, np.int64), "logits", -100, 0.0, 1)
    with pytest.raises(ValueError, match="kind"):
        row_scores(np.zeros((3, 2)), np.zeros(3, np.int64), "odds", -100, 0.0, 1)


def test_inputs_are_not_modified(rng):
    x = rng.random((50, 5))
    y = rng.integers(0, 5, 50)
    x0, y0 = x.copy(), y.copy()
    for kind in KINDS:
        row_scores(x, y, kind, -100, 0.1, 2)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(y, y0)
