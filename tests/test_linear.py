"""fastxent.linear_cross_entropy: chunked cross-entropy of hidden @ weight.T (+ bias).

Ground truth is the naive computation: materialise the logits, run
fastxent.cross_entropy_with_grad on them (itself checked against fastxent.reference elsewhere),
then the two matrix products.  float64 comparisons are tight: chunking only changes the order
of the sums.
"""
import tracemalloc

import numpy as np
import pytest

import fastxent
from fastxent import _linear
from fastxent import reference as ref
from tests.conftest import assert_close

linear_cross_entropy = _linear.linear_cross_entropy


def _inputs(rng, N=37, d=6, V=11, dtype=np.float64, ignore_every=4):
    h = rng.standard_normal((N, d)).astype(dtype)
    w = rng.standard_normal((V, d)).astype(dtype)
    b = rng.standard_normal(V).astype(dtype)
    t = rng.integers(0, V, N)
    if ignore_every:
        t[::ignore_every] = -100
    return h, w, b, t


def _naive(h, w, t, bias=None, **kw):
    """(loss, grad_hidden, grad_weight, grad_bias) by materialising the logits."""
    h64, w64 = np.asarray(h, np.float64), np.asarray(w, np.float64)
    z = h64 @ w64.T
    if bias is not None:
        z = z + np.asarray(bias, np.float64)
    loss, g = fastxent.cross_entropy_with_grad(z, t, **kw)
    return loss, g @ w64, g.T @ h64, g.sum(0)


def _check(res, exp, dtype, with_bias):
    loss, gh, gw = res[:3]
    assert_close(loss, exp[0], dtype, err_msg="loss")
    for got, want, name in ((gh, exp[1], "grad_hidden"), (gw, exp[2], "grad_weight")):
        assert got.dtype == np.dtype(dtype)
        assert_close(got, want, dtype, err_msg=name)
    if with_bias:
        assert len(res) == 4
        assert res[3].dtype == np.dtype(dtype) and res[3].shape == exp[3].shape
        assert_close(res[3], exp[3], dtype, err_msg="grad_bias")
    else:
        assert len(res) == 3


@pytest.mark.parametrize("chunk_size", [None, 1, 5, 8, 37, 100])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_naive(rng, chunk_size, reduction, with_bias):
    h, w, b, t = _inputs(rng)
    bias = b if with_bias else None
    res = linear_cross_entropy(h, w, t, bias=bias, chunk_size=chunk_size, reduction=reduction,
                               return_grad=True)
    _check(res, _naive(h, w, t, bias, reduction=reduction), np.float64, with_bias)
    # The loss alone (no gradient work) is the same.
    loss = linear_cross_entropy(h, w, t, bias=bias, chunk_size=chunk_size, reduction=reduction)
    assert_close(loss, res[0], np.float64)


def test_matches_reference_textbook(rng):
    """Anchor the naive path on fastxent.reference too (plain NumPy)."""
    h, w, b, t = _inputs(rng)
    z = h @ w.T + b
    exp_loss, exp_g = ref.cross_entropy_with_grad(z, t, label_smoothing=0.2)
    loss, gh, gw, gb = linear_cross_entropy(h, w, t, bias=b, label_smoothing=0.2, chunk_size=6,
                                            return_grad=True)
    assert_close(loss, exp_loss, np.float64)
    assert_close(gh, exp_g @ w, np.float64)
    assert_close(gw, exp_g.T @ h, np.float64)
    assert_close(gb, exp_g.sum(0), np.float64)


def test_result_types(rng):
    h, w, b, t = _inputs(rng, dtype=np.float32)
    assert type(linear_cross_entropy(h, w, t)) is np.float32
    assert type(linear_cross_entropy(h, w, t, reduction="sum")) is np.float32
    none = linear_cross_entropy(h, w, t, reduction="none")
    assert none.dtype == np.float32 and none.shape == t.shape


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_mean_uses_the_global_denominator(rng, label_smoothing):
    """All ignored rows in the first chunks, none in the last: a per-chunk mean would differ."""
    h, w, b, t = _inputs(rng, N=30, ignore_every=0)
    t[:20] = -100
    kw = dict(label_smoothing=label_smoothing)
    res = linear_cross_entropy(h, w, t, chunk_size=8, return_grad=True, **kw)
    _check(res, _naive(h, w, t, **kw), np.float64, False)
    rows = ~(t == -100)
    per_row = linear_cross_entropy(h, w, t, reduction="none", **kw)
    assert_close(res[0], per_row[rows].sum() / rows.sum(), np.float64)
    assert np.all(res[1][:20] == 0)                      # ignored rows: zero gradient


def test_custom_ignore_index(rng):
    h, w, b, t = _inputs(rng, ignore_every=0)
    t[::3] = 4                                           # a real class used as ignore_index
    res = linear_cross_entropy(h, w, t, ignore_index=4, chunk_size=7, return_grad=True)
    _check(res, _naive(h, w, t, ignore_index=4), np.float64, False)


def test_all_rows_ignored_and_empty(rng):
    h, w, b, t = _inputs(rng, N=10, ignore_every=1)
    loss, gh, gw, gb = linear_cross_entropy(h, w, t, bias=b, chunk_size=3, return_grad=True)
    assert np.isnan(loss)
    assert not gh.any() and not gw.any() and not gb.any()
    assert linear_cross_entropy(h, w, t, reduction="sum") == 0.0
    h0, t0 = h[:0], t[:0]
    loss, gh, gw, gb = linear_cross_entropy(h0, w, t0, bias=b, return_grad=True)
    assert np.isnan(loss) and gh.shape == (0, 6) and gw.shape == w.shape and not gw.any()
    assert gb.shape == b.shape and not gb.any()
    assert linear_cross_entropy(h0, w, t0, reduction="sum") == 0.0
    assert linear_cross_entropy(h0, w, t0, reduction="none").shape == (0,)


def test_float32_against_float64(rng):
    h, w, b, t = _inputs(rng, N=64, d=16, V=50, dtype=np.float32)
    res = linear_cross_entropy(h, w, t, bias=b, chunk_size=10, label_smoothing=0.1,
                               return_grad=True)
    exp = _naive(h, w, t, b, label_smoothing=0.1)
    loss, gh, gw, gb = res
    assert_close(loss, exp[0], np.float32)
    # products of float32 operands: relative to the size of each gradient
    for got, want in ((gh, exp[1]), (gw, exp[2]), (gb, exp[3])):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_batched_hidden_shape(rng):
    """hidden (B, T, d) and target (B, T), as in a language model."""
    h, w, b, t = _inputs(rng, N=24)
    h3, t3 = h.reshape(4, 6, -1), t.reshape(4, 6)
    loss, gh, gw = linear_cross_entropy(h3, w, t3, chunk_size=5, return_grad=True)
    exp = _naive(h, w, t)
    assert gh.shape == h3.shape
    assert_close(loss, exp[0], np.float64)
    assert_close(gh.reshape(h.shape), exp[1], np.float64)
    assert_close(gw, exp[2], np.float64)
    none = linear_cross_entropy(h3, w, t3, reduction="none")
    assert none.shape == (4, 6)


def test_grad_output(rng):
    h, w, b, t = _inputs(rng)
    res = linear_cross_entropy(h, w, t, bias=b, grad_output=2.5, chunk_size=4, return_grad=True)
    _check(res, _naive(h, w, t, b, grad_output=2.5), np.float64, True)
    go = rng.uniform(-1, 2, t.shape)
    res = linear_cross_entropy(h, w, t, bias=b, reduction="none", grad_output=go, chunk_size=4,
                               return_grad=True)
    _check(res, _naive(h, w, t, b, reduction="none", grad_output=go), np.float64, True)
    with pytest.raises(ValueError, match="grad_output"):
        linear_cross_entropy(h, w, t, grad_output=go, return_grad=True)


@pytest.mark.parametrize("option", [dict(z_loss=1e-2), dict(softcap=3.0),
                                    dict(z_loss=1e-3, softcap=2.0, label_smoothing=0.1)])
def test_z_loss_and_softcap(rng, option):
    h, w, b, t = _inputs(rng)
    res = linear_cross_entropy(h, w, t, bias=b, chunk_size=6, return_grad=True, **option)
    _check(res, _naive(h, w, t, b, **option), np.float64, True)
    plain = linear_cross_entropy(h, w, t, bias=b)
    assert res[0] != plain


@pytest.mark.parametrize("block_rows", [1, 7, 11, 100])
def test_grad_weight_vocabulary_blocks(rng, monkeypatch, block_rows):
    """grad_weight is accumulated in blocks of vocabulary rows: any block size, same result."""
    h, w, b, t = _inputs(rng, V=50)
    monkeypatch.setattr(_linear, "_BLOCK_BYTES", block_rows * h.shape[1] * 8)
    res = linear_cross_entropy(h, w, t, bias=b, chunk_size=5, return_grad=True)
    _check(res, _naive(h, w, t, b), np.float64, True)


def test_layouts_and_inputs_untouched(rng):
    """Non-contiguous hidden/weight, Python lists for target and bias; inputs never written."""
    h, w, b, t = _inputs(rng)
    hF, wF = np.asfortranarray(h), w.T.copy().T            # Fortran order; weight as a .T view
    copies = [a.copy() for a in (hF, wF, b, t)]
    res = linear_cross_entropy(hF, wF, t.tolist(), bias=b.tolist(), chunk_size=9,
                               return_grad=True)
    _check(res, _naive(h, w, t, b), np.float64, True)
    for a, c in zip((hF, wF, b, t), copies):
        assert np.array_equal(a, c)


@pytest.mark.parametrize("dtype", [np.int32, np.uint8, np.int16, np.uint64])
def test_target_dtypes(rng, dtype):
    h, w, b, t = _inputs(rng, ignore_every=0)
    loss = linear_cross_entropy(h, w, t.astype(dtype), chunk_size=8)
    assert_close(loss, _naive(h, w, t)[0], np.float64)


def test_errors(rng):
    h, w, b, t = _inputs(rng)
    with pytest.raises(TypeError, match="^weight: dtype float32 differs"):
        linear_cross_entropy(h, w.astype(np.float32), t)
    with pytest.raises(TypeError, match="^hidden: expected a float32 or float64"):
        linear_cross_entropy(h.astype(np.int64), w, t)
    with pytest.raises(ValueError, match=r"^weight: expected shape \(V, 6\)"):
        linear_cross_entropy(h, w[:, :5], t)
    with pytest.raises(ValueError, match="^hidden: expected shape"):
        linear_cross_entropy(h[0], w, t[0])
    with pytest.raises(ValueError, match="^target: expected shape"):
        linear_cross_entropy(h, w, t[:-1])
    with pytest.raises(TypeError, match="^target: expected integer"):
        linear_cross_entropy(h, w, t.astype(np.float64))
    with pytest.raises(ValueError, match=r"^bias: expected shape \(11,\)"):
        linear_cross_entropy(h, w, t, bias=b[:3])
    with pytest.raises(ValueError, match="^chunk_size: must be >= 1"):
        linear_cross_entropy(h, w, t, chunk_size=0)
    with pytest.raises(TypeError, match="^chunk_size: expected an int"):
        linear_cross_entropy(h, w, t, chunk_size=2.5)
    with pytest.raises(ValueError, match="^reduction"):
        linear_cross_entropy(h, w, t, reduction="avg")
    with pytest.raises(ValueError, match="^label_smoothing"):
        linear_cross_entropy(h, w, t, label_smoothing=2.0)
    with pytest.raises(ValueError, match="^weight: the vocabulary has length 0"):
        linear_cross_entropy(h, w[:0], t)
    bad = t.copy()
    bad[30] = 11                   # row 30 lies in the 4th chunk of 8: the row index is global
    with pytest.raises(ValueError, match=r"^target: label 11 at row 30 is out of range \[0, 11\)"):
        linear_cross_entropy(h, w, bad, chunk_size=8, return_grad=True)


def test_peak_memory_is_one_chunk():
    """tracemalloc sees NumPy's allocations: the extra memory is the chunk buffer (plus the
    outputs), far below the N x V logits (32 MiB here)."""
    rng = np.random.default_rng(0)
    N, d, V, chunk = 2048, 32, 4096, 64
    h = rng.standard_normal((N, d), dtype=np.float32)
    w = rng.standard_normal((V, d), dtype=np.float32)
    t = rng.integers(0, V, N)
    outputs = (N * d + V * d) * 4
    chunk_bytes = chunk * V * 4
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        res = linear_cross_entropy(h, w, t, chunk_size=chunk, return_grad=True)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    block_bytes = min(_linear._BLOCK_BYTES, V * d * 4)   # grad_weight's accumulation block
    extra = peak - outputs
    assert extra <= chunk_bytes + block_bytes + 256 * 1024, (extra, chunk_bytes)
    assert N * V * 4 >= 10 * peak
    del res


def test_benchmark_machinery(monkeypatch):
    """The linear benchmark (fastxent bench / bench/test_bench_linear.py) on a tiny shape:
    timing rounds, the memory subprocess, the ratios and the report."""
    import io

    from fastxent._bench import linear

    monkeypatch.setitem(linear.LINEAR_SHAPES, "quick", ((256, 8, 512),))
    monkeypatch.setattr(linear, "LINEAR_MIN_ROUNDS", 1)
    out = io.StringIO()
    rows = linear.run_linear("quick", impls="fastxent", out=out, budget=0.0)
    assert [r["impl"] for r in rows] == ["fastxent", "naive"]
    for r in rows:
        assert "error" not in r and "memory_error" not in r, r
        assert r["best_s"] > 0 and r["hwm_extra_bytes"] is not None
        assert r["traced_extra_bytes"] >= 0
    assert np.isclose(rows[0]["loss"], rows[1]["loss"], rtol=1e-5)
    assert rows[1]["time_vs_naive"] == 1.0
    assert "f32 256x8 V=512" in out.getvalue()
