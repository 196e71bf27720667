"""The metrics of fastxent.score against their peers: torchmetrics (calibration error),
scikit-learn (log_loss, brier_score_loss, top_k_accuracy_score, sample weights), fastxent's own
losses (binary, probabilities, sequences); strict JSON; chunk- and thread-independence."""
import csv
import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, brier_score_loss, log_loss, top_k_accuracy_score
from torchmetrics.functional.classification import (
    binary_calibration_error,
    multiclass_calibration_error,
)

import fastxent
from fastxent import score
from fastxent.score import ScoreError


def logits_data(n=2000, c=10, seed=0, dtype=np.float64, scale=2.0):
    rng = np.random.default_rng(seed)
    x = (scale * rng.standard_normal((n, c))).astype(dtype)
    y = rng.integers(0, c, n)
    return x, y


def probs_of(x):
    return fastxent.softmax(x.astype(np.float64))


# ------------------------------------------------------------------ calibration and Brier
@pytest.mark.parametrize("bins", [15, 10, 1, 40])
@pytest.mark.parametrize("kind", ["logits", "probs"])
def test_ece_matches_torchmetrics(bins, kind):
    x, y = logits_data()
    scores = x if kind == "logits" else probs_of(x)
    s = score.score_arrays(scores, y, input=kind, ece_bins=bins, chunk_rows=333)
    want = multiclass_calibration_error(torch.from_numpy(probs_of(x)), torch.from_numpy(y),
                                        num_classes=10, n_bins=bins, norm="l1")
    assert s.ece == pytest.approx(float(want), abs=2e-6)
    assert s.input == kind and s.ece_bins == bins


def test_ece_of_confidences_at_the_edges():
    """Confidence exactly 1 has a bin of its own, as in torchmetrics."""
    q = np.array([[1.0, 0.0], [1.0, 0.0], [0.5, 0.5], [0.75, 0.25]])
    y = np.array([0, 1, 1, 0])
    s = score.score_arrays(q, y, input="probs", ece_bins=4)
    want = multiclass_calibration_error(torch.from_numpy(q), torch.from_numpy(y), num_classes=2,
                                        n_bins=4, norm="l1")
    assert s.ece == pytest.approx(float(want), abs=1e-12)


def test_brier_and_top_k_match_sklearn():
    x, y = logits_data(c=12)
    p = probs_of(x)
    s = score.score_arrays(x, y, top_k=(1, 2, 5, 12, 20), chunk_rows=100)
    assert s.brier == pytest.approx(brier_score_loss(y, p, labels=list(range(12)),
                                                     scale_by_half=False), rel=1e-12)
    for k in (2, 5):
        assert s.top_k_accuracy[k] == top_k_accuracy_score(y, p, k=k, labels=list(range(12)))
    assert s.top_k_accuracy[12] == s.top_k_accuracy[20] == 1.0
    assert 1 not in s.top_k_accuracy
    assert s.accuracy == accuracy_score(y, np.argmax(x, axis=1))


# ------------------------------------------------------------------ input kinds
def test_auto_reads_predict_proba_as_probabilities():
    """The issue's example: probabilities scored as logits gave 1.585 nats."""
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression
    X, y = make_classification(n_samples=1500, n_classes=3, n_informative=6, random_state=0)
    p = LogisticRegression(max_iter=500).fit(X, y).predict_proba(X)
    s = score.score_arrays(p, y)
    assert s.input == "probs"
    assert s.mean_nll == pytest.approx(log_loss(y, p), rel=1e-12)
    assert s.as_dict()["input"] == "probs"
    logits = score.score_arrays(np.log(p) + 3.0, y)         # shifted log-probs: logits
    assert logits.input == "logits"
    assert logits.mean_nll == pytest.approx(s.mean_nll, rel=1e-12)


def test_log_probs_are_minus_the_label_entry():
    x, y = logits_data(n=300)
    lp = fastxent.log_softmax(x)
    s = score.score_arrays(lp, y, input="log-probs")
    assert s.mean_nll == pytest.approx(-lp[np.arange(300), y].mean(), rel=1e-13)
    ref = score.score_arrays(x, y, input="logits")
    assert (s.accuracy, s.top_k_accuracy) == (ref.accuracy, ref.top_k_accuracy)
    assert s.ece == pytest.approx(ref.ece, abs=1e-12)
    assert s.brier == pytest.approx(ref.brier, rel=1e-12)


def test_probabilities_clip_like_cross_entropy_from_probs():
    q = np.array([[0.0, 1.0], [0.3, 0.7], [1.0, 0.0]])
    y = np.array([0, 1, 0])
    for eps in (None, 1e-3):
        s = score.score_arrays(q, y, input="probs", eps=eps)
        want = fastxent.cross_entropy_from_probs(y, q, eps=eps)
        assert s.mean_nll == pytest.approx(float(want), rel=1e-14)


def test_auto_detection_is_checked_on_every_chunk():
    p = probs_of(logits_data(n=400)[0])
    y = np.zeros(400, np.int64)
    p[350] *= 2                                       # no longer sums to 1
    with pytest.raises(ScoreError, match="row 350 is not"):
        score.score_arrays(p, y, chunk_rows=100)
    p[350] = -p[350]
    with pytest.raises(ScoreError, match="must be non-negative"):
        score.score_arrays(p, y, input="probs", chunk_rows=100)
    assert score.score_arrays(np.abs(p), y, input="logits").input == "logits"


# ------------------------------------------------------------------ binary
@pytest.mark.parametrize("kind", ["logits", "probs", "log-probs"])
@pytest.mark.parametrize("shape", ["(N,)", "(N, 1)"])
def test_binary_scores(kind, shape):
    rng = np.random.default_rng(3)
    z = 2 * rng.standard_normal(3000)
    y = rng.integers(0, 2, 3000)
    y[::17] = -100
    keep = y != -100
    p = 1 / (1 + np.exp(-z))
    scores = {"logits": z, "probs": p, "log-probs": -np.logaddexp(0, -z)}[kind]
    if shape == "(N, 1)":
        scores = scores[:, None]
    s = score.score_arrays(scores, y, binary=True, input="auto" if kind != "log-probs" else kind,
                           chunk_rows=500)
    assert s.binary and s.input == kind and s.classes == 2
    yk, pk = y[keep], p[keep]
    want = fastxent.binary_cross_entropy_with_logits(z[keep], yk.astype(float))
    assert s.mean_nll == pytest.approx(float(want), rel=1e-9)
    assert s.accuracy == accuracy_score(yk, (pk > 0.5).astype(int))
    assert s.brier == pytest.approx(brier_score_loss(yk, pk), rel=1e-9)
    ece = binary_calibration_error(torch.from_numpy(pk), torch.from_numpy(yk), n_bins=15)
    assert s.ece == pytest.approx(float(ece), abs=1e-6)
    assert "mean BCE" in s.format() and "accuracy @0.5" in s.format()


def test_binary_threshold_tie_goes_to_class_0():
    s = score.score_arrays(np.array([0.0, 0.0]), np.array([0, 1]), binary=True, input="logits")
    assert s.accuracy == 0.5 and s.correct == 1


# ------------------------------------------------------------------ sample weights
def test_weights_are_sklearn_weighted_means(tmp_path):
    x, y = logits_data(n=1500, c=6)
    p = probs_of(x)
    w = np.random.default_rng(1).uniform(0.0, 3.0, 1500)
    s = score.score_arrays(p, y, weights=w, chunk_rows=200)
    assert s.weighted and s.weight_sum == pytest.approx(w.sum(), rel=1e-14)
    assert s.mean_nll == pytest.approx(log_loss(y, p, sample_weight=w), rel=1e-12)
    assert s.accuracy == pytest.approx(accuracy_score(y, p.argmax(1), sample_weight=w), rel=1e-12)
    assert s.brier == pytest.approx(brier_score_loss(y, p, sample_weight=w, scale_by_half=False,
                                                     labels=list(range(6))), rel=1e-12)
    np.save(tmp_path / "w.npy", w.astype(np.float32))
    np.save(tmp_path / "x.npy", p)
    np.save(tmp_path / "y.npy", y)
    f = score.score_files(tmp_path / "x.npy", tmp_path / "y.npy", weights=tmp_path / "w.npy")
    want = log_loss(y, p, sample_weight=w.astype(np.float32))
    assert f.mean_nll == pytest.approx(want, rel=1e-12)


def test_integer_weights_equal_repeated_rows():
    """Every weighted mean (NLL, accuracy, top-k, ECE, Brier) equals the unweighted one of the
    rows repeated weight times -- exactly, since all totals are exact."""
    x, y = logits_data(n=400, c=5)
    w = np.random.default_rng(2).integers(0, 4, 400)
    a = score.score_arrays(x, y, weights=w, top_k=2, chunk_rows=64)
    b = score.score_arrays(np.repeat(x, w, axis=0), np.repeat(y, w), top_k=2)
    for key in ("mean_nll", "accuracy", "top_k_accuracy", "brier"):
        assert getattr(a, key) == getattr(b, key), key
    assert a.ece == pytest.approx(b.ece, abs=1e-15)


@pytest.mark.parametrize("bad", [-1.0, np.nan, np.inf])
def test_bad_weights(bad):
    x, y = logits_data(n=50)
    w = np.ones(50)
    w[33] = bad
    with pytest.raises(ScoreError, match="weights: .* at row 33"):
        score.score_arrays(x, y, weights=w)
    with pytest.raises(ScoreError, match="weights: expected shape"):
        score.score_arrays(x, y, weights=np.ones(49))


# ------------------------------------------------------------------ sequences
def lm_data(B=4, T=50, V=30, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, T, V)).astype(np.float32)
    y = rng.integers(0, V, (B, T))
    y[1, 40:] = -100                                  # padding
    return x, y


def test_sequences_are_rows(tmp_path):
    x, y = lm_data()
    flat = score.score_arrays(x.reshape(-1, 30), y.reshape(-1))
    s = score.score_arrays(x, y, out=tmp_path / "rows.npy")
    assert (s.mean_nll, s.accuracy, s.rows) == (flat.mean_nll, flat.accuracy, 200)
    assert s.sequences == 4 and s.mean_sequence_nll == pytest.approx(s.nll_sum / 4, rel=1e-15)
    rows = np.load(tmp_path / "rows.npy")
    assert rows.shape == (4, 50)
    want = fastxent.cross_entropy(x, y, axis=-1, reduction="none")
    np.testing.assert_array_equal(rows, want)


def test_shift_is_the_causal_lm_loss(tmp_path):
    """Position t against label t+1; the last position and padding are not scored (as
    transformers' ForCausalLMLoss)."""
    x, y = lm_data()
    s = score.score_arrays(x, y, shift=True, per_sequence=True, out=tmp_path / "seq.npy",
                           chunk_rows=7)
    logits = torch.from_numpy(x[:, :-1]).reshape(-1, 30)
    labels = torch.from_numpy(y[:, 1:]).reshape(-1)
    want = torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100)
    assert s.mean_nll == pytest.approx(float(want), rel=1e-6)
    assert s.scored == int((y[:, 1:] != -100).sum())
    per_seq = torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100,
                                                reduction="none").reshape(4, 49).sum(1)
    np.testing.assert_allclose(np.load(tmp_path / "seq.npy"), per_seq.numpy(), rtol=1e-5)
    assert "per-sequence NLL" in s.format()


def test_shift_with_offsets_and_ragged_sequences():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((60, 8))
    y = rng.integers(0, 8, 60)
    offs = np.array([0, 10, 10, 11, 45, 60])
    s = score.score_arrays(x, y, offsets=offs, shift=True, chunk_rows=9)
    losses = []
    for a, b in zip(offs[:-1], offs[1:]):
        for t in range(a, b - 1):
            losses.append(fastxent.cross_entropy(x[t:t + 1], y[t + 1:t + 2], reduction="sum"))
    assert s.scored == len(losses)
    assert s.mean_nll == pytest.approx(np.mean(losses), rel=1e-13)


def test_sequence_errors():
    x, y = lm_data()
    with pytest.raises(ScoreError, match="shift: needs sequences"):
        score.score_arrays(x[0], y[0], shift=True)
    with pytest.raises(ScoreError, match="per_sequence: needs sequences"):
        score.score_arrays(x[0], y[0], per_sequence=True)
    with pytest.raises(ScoreError, match="offsets: 3-D logits"):
        score.score_arrays(x, y, offsets=np.array([0, 200]))
    with pytest.raises(ScoreError, match=r"labels: shape \(4, 49\) does not match"):
        score.score_arrays(x, y[:, 1:])
    bad = y.copy()
    bad[2, 7] = 30
    with pytest.raises(ScoreError, match=r"label 30 at index \(2, 7\)"):
        score.score_arrays(x, bad)
    with pytest.raises(ScoreError, match=r"label 30 at index \(2, 7\)"):
        score.score_arrays(x, bad, shift=True)


# ------------------------------------------------------------------ per class
def test_per_class_table(tmp_path):
    x, y = logits_data(n=900, c=6)
    y[y == 4] = 5                                     # class 4 never appears
    y[::10] = -100
    path = tmp_path / "classes.csv"
    s = score.score_arrays(x, y, per_class=path, chunk_rows=100)
    assert s.per_class == str(path)
    rows = list(csv.DictReader(open(path)))
    assert [int(r["class"]) for r in rows] == [0, 1, 2, 3, 5]
    losses = fastxent.cross_entropy(x, y, reduction="none")
    for r in rows:
        c = int(r["class"])
        sel = y == c
        assert int(float(r["count"])) == sel.sum()
        assert float(r["mean_nll"]) == pytest.approx(losses[sel].mean(), rel=1e-12)
        assert float(r["accuracy"]) == (x[sel].argmax(1) == c).mean()


# ------------------------------------------------------------------ summary: JSON and text
def test_json_is_strict_and_documented():
    x, y = logits_data(n=30, c=4)
    x[3, 1] = np.nan                                    # a NaN row: NaN mean, ECE, Brier
    s = score.score_arrays(x, y, top_k=3)
    text = s.to_json()

    def no_constants(name):
        raise AssertionError(f"not strict JSON: {name}")

    d = json.loads(text, parse_constant=no_constants)
    assert d["mean_nll"] is None and d["perplexity"] is None and d["brier"] is None
    assert d["ece"] is None and d["top_k_accuracy"] == {"3": s.top_k_accuracy[3]}
    assert list(d) == list(score.JSON_KEYS)
    readme = open(__file__.replace("tests/test_score_metrics.py", "README.md")).read()
    for key in score.JSON_KEYS:
        assert f"`{key}`" in readme, f"JSON key {key} is not documented in the README"


def test_empty_and_all_ignored():
    s = score.score_arrays(np.zeros((0, 4)), np.zeros(0, np.int64), top_k=2)
    assert s.rows == 0 and math.isnan(s.mean_nll) and math.isnan(s.ece) and math.isnan(s.brier)
    d = s.as_dict()
    assert d["mean_nll"] is None and d["ece"] is None
    x, y = logits_data(n=20)
    s = score.score_arrays(x, np.full(20, -100))
    assert s.scored == 0 and math.isnan(s.accuracy) and math.isnan(s.ece)


# ------------------------------------------------------------------ independence
def test_every_metric_is_independent_of_chunks_and_threads(tmp_path):
    x, y = logits_data(n=3000, c=9, dtype=np.float32)
    y[::13] = -100
    w = np.random.default_rng(5).random(3000)
    runs = []
    for k, t in ((1000, 1), (7, 2), (3000, 2), (333, 1)):
        for weights in (None, w):
            s = score.score_arrays(x, y, weights=weights, top_k=(2, 3), chunk_rows=k,
                                   num_threads=t)
            d = s.as_dict()
            for key in ("seconds", "rows_per_s", "gb_per_s"):
                d.pop(key)
            runs.append((weights is None, d))
    for weighted in (True, False):
        group = [d for flag, d in runs if flag == weighted]
        assert all(d == group[0] for d in group)


def test_memory_limit_sets_the_chunk_size(tmp_path):
    from fastxent.score import engine
    x, y = logits_data(n=3000, c=1000, dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    inputs = score.open_inputs(tmp_path / "x.npy", tmp_path / "y.npy")
    small = engine.plan_rows(inputs, score.options(memory_limit="10MB"), np.dtype(np.float32), 0)
    big = engine.plan_rows(inputs, score.options(memory_limit="1GB"), np.dtype(np.float32), 0)
    assert small * 2 * 4000 < 10e6 < big * 2 * 4000 * 4
    assert big == min(engine.CHUNK_BYTES // 4000, 3000)
    a = score.score_files(tmp_path / "x.npy", tmp_path / "y.npy", memory_limit="12MB")
    b = score.score_files(tmp_path / "x.npy", tmp_path / "y.npy")
    assert (a.nll_sum, a.ece, a.brier) == (b.nll_sum, b.ece, b.brier)
    with pytest.raises(ScoreError, match="memory_limit: .* is too small"):
        score.score_files(tmp_path / "x.npy", tmp_path / "y.npy", memory_limit="2MB")
    with pytest.raises(ScoreError, match="memory_limit: expected a size"):
        score.score_files(tmp_path / "x.npy", tmp_path / "y.npy", memory_limit="lots")
    inputs.close()


@pytest.mark.parametrize("bins", [1, 2, 3, 7, 10, 15, 100, 1000, 4097])
def test_calibration_bins_are_those_of_searchsorted(bins):
    """The bin arithmetic equals the edge search of torchmetrics' binning at every edge, next
    to it, and at the ends (NaN into the last bin)."""
    from fastxent.score.summary import _bin_of
    edges = np.linspace(0.0, 1.0, bins + 1)
    conf = np.concatenate([np.random.default_rng(bins).random(20000), edges,
                           np.nextafter(edges, 2.0), np.nextafter(edges, -1.0),
                           [0.0, -0.0, 1.0, 1.5, -0.5, np.inf, -np.inf, np.nan, 5e-324]])
    want = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, bins)
    np.testing.assert_array_equal(_bin_of(conf, bins), want)
