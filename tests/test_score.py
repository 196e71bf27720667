"""fastxent.score: the streaming scoring engine behind ``fastxent score``."""
import math
import os
from fractions import Fraction

import numpy as np
import pytest

import fastxent
from fastxent import score
from fastxent.score import ExactSum, ScoreError, engine


# ------------------------------------------------------------------ helpers
def make_data(n=500, c=11, dtype=np.float32, seed=0, ignore_every=7, label_dtype=np.int64):
    rng = np.random.default_rng(seed)
    x = (3 * rng.standard_normal((n, c))).astype(dtype)
    y = rng.integers(0, c, n).astype(label_dtype)
    if ignore_every:
        y[::ignore_every] = -100 if np.dtype(label_dtype).kind == "i" else c + 1
    return x, y


def save(tmp_path, x, y, name="data"):
    lg, lb = tmp_path / f"{name}_logits.npy", tmp_path / f"{name}_labels.npy"
    np.save(lg, x)
    np.save(lb, y)
    return lg, lb


def exact_mean(losses, count):
    total = sum((Fraction(v) for v in np.asarray(losses, np.float64).tolist()), Fraction(0))
    return float(total / count) if count else math.nan


def expected(x, y, ignore_index=-100):
    """(per-row losses, exact mean, correct, scored) straight from fastxent and NumPy
    (16-bit scores are read into float32 buffers, so they are compared as float32)."""
    if x.dtype == np.float16:
        x = x.astype(np.float32)
    losses = fastxent.cross_entropy(x, y, reduction="none", ignore_index=ignore_index)
    keep = y != ignore_index
    scored = int(keep.sum())
    correct = int(((np.argmax(x, axis=1) == y) & keep).sum())
    return losses, exact_mean(losses, scored), correct, scored


# ------------------------------------------------------------------ ExactSum
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exact_sum_is_correctly_rounded_and_chunk_independent(dtype):
    rng = np.random.default_rng(1)
    v = (rng.standard_normal(10_000) * 10.0 ** rng.integers(-30, 30, 10_000)).astype(dtype)
    want = math.fsum(v.astype(np.float64).tolist())
    assert float(ExactSum(v)) == want
    for k in (1, 3, 999):
        acc = ExactSum()
        for i in range(0, v.size, k):
            acc.add(v[i:i + k])
        assert float(acc) == want
    parts = [ExactSum(v[:5000]), ExactSum(v[5000:])]
    assert float(parts[1].merge(parts[0])) == want


def test_exact_sum_extremes_and_ratio():
    v = np.array([1e308, 1e308, -1e308, 5e-324, -5e-324, 1.0, 2.0 ** -60])
    assert float(ExactSum(v)) == 1e308        # fsum itself overflows on this one
    assert float(ExactSum(v[2:])) == math.fsum(v[2:].tolist())
    assert float(ExactSum(np.zeros(0))) == 0.0
    assert float(ExactSum([1.0, np.inf])) == math.inf
    assert float(ExactSum([-np.inf, 1.0])) == -math.inf
    assert math.isnan(float(ExactSum([np.inf, -np.inf])))
    assert math.isnan(float(ExactSum([np.nan, 1.0])))
    # ratio is the exact quotient rounded once
    x = np.random.default_rng(2).random(1000)
    exact = sum(map(Fraction, x.tolist()), Fraction(0))
    assert ExactSum(x).ratio(7) == float(exact / 7)
    assert ExactSum(x).ratio(ExactSum([0.1, 0.2])) == float(exact / (Fraction(0.1) + Fraction(0.2)))
    assert math.isnan(ExactSum([]).ratio(0))
    assert ExactSum([1.0]).ratio(0) == math.inf


def test_exact_sum_pickles():
    import pickle
    s = ExactSum(np.arange(10.0))
    assert float(pickle.loads(pickle.dumps(s))) == 45.0


# ------------------------------------------------------------------ scoring arrays
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("label_dtype", [np.int8, np.int32, np.int64, np.uint16])
def test_score_arrays_matches_direct(dtype, label_dtype):
    x, y = make_data(dtype=dtype, label_dtype=label_dtype)
    ignore = -100 if np.dtype(label_dtype).kind == "i" else 12
    losses, mean, correct, scored = expected(x, y, ignore)
    s = score.score_arrays(x, y, chunk_rows=64, ignore_index=ignore)
    assert (s.rows, s.scored, s.correct, s.ignored) == (500, scored, correct, 500 - scored)
    assert s.mean_nll == mean                       # exact mean, rounded once
    assert s.accuracy == correct / scored
    assert s.perplexity == pytest.approx(math.exp(mean), rel=1e-15)
    assert s.bits_per_item == pytest.approx(mean / math.log(2), rel=1e-15)
    # and close to fastxent's own mean (float64 accumulation in its fixed order)
    want = fastxent.cross_entropy(x.astype(np.float64) if dtype == np.float64 else x, y,
                                  ignore_index=ignore)
    assert s.mean_nll == pytest.approx(float(want), rel=1e-6 if dtype != np.float64 else 1e-13)


def test_reference_agreement_float64():
    from fastxent import reference
    x, y = make_data(dtype=np.float64)
    s = score.score_arrays(x, y)
    assert s.mean_nll == pytest.approx(float(reference.cross_entropy(x, y)), rel=1e-12)


def test_base_and_summary_text(tmp_path):
    x, y = make_data()
    s = score.score_arrays(x, y, base=2)
    assert s.base == 2.0
    assert s.mean_nll_base == pytest.approx(s.mean_nll / math.log(2), rel=1e-15)
    text = s.format()
    for word in ("rows", "mean NLL", "bits", "perplexity", "bits per item", "top-1 accuracy",
                 "throughput", "rows/s", "GB/s"):
        assert word in text
    d = s.to_dict()
    import json
    json.dumps(d)
    assert d["rows"] == 500 and d["mean_nll"] == s.mean_nll and d["accuracy"] == s.accuracy
    assert score.score_arrays(x, y, base="e").base is None
    assert score.score_arrays(x, y, base=10).mean_nll_base == pytest.approx(
        s.mean_nll / math.log(10))


def test_empty_input(tmp_path):
    x = np.zeros((0, 5), np.float32)
    y = np.zeros(0, np.int64)
    lg, lb = save(tmp_path, x, y)
    out = tmp_path / "out.npy"
    s = score.score_files(lg, lb, out=out)
    assert s.rows == 0 and math.isnan(s.mean_nll) and math.isnan(s.accuracy)
    assert np.load(out).shape == (0,)
    s.format()


def test_all_rows_ignored():
    x, y = make_data(n=20)
    y[:] = -100
    s = score.score_arrays(x, y)
    assert s.scored == 0 and math.isnan(s.mean_nll) and s.nll_sum == 0.0


# ------------------------------------------------------------------ streaming memory-mapped files
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_streaming_chunk_sizes_give_identical_results(tmp_path, dtype):
    x, y = make_data(n=1000, c=13, dtype=dtype)
    lg, lb = save(tmp_path, x, y)
    losses, mean, correct, scored = expected(x, y)
    results = []
    for k in (1, 7, 64, 999, 1000, 5000, None):
        out = tmp_path / f"out_{k}.npy"
        s = score.score_files(lg, lb, out=out, chunk_rows=k)
        results.append((s.nll_sum, s.mean_nll, s.correct, s.scored))
        np.testing.assert_array_equal(np.load(out), losses)   # bit-identical per-row losses
        assert np.load(out).dtype == losses.dtype
    assert all(r == results[0] for r in results)
    assert results[0][1:] == (mean, correct, scored)


def test_threads_do_not_change_results(tmp_path):
    x, y = make_data(n=3000, c=40)
    lg, lb = save(tmp_path, x, y)
    a = score.score_files(lg, lb, num_threads=1, chunk_rows=1000)
    b = score.score_files(lg, lb, num_threads=2, chunk_rows=1000)
    assert (a.nll_sum, a.correct) == (b.nll_sum, b.correct)


def test_inputs_are_read_in_chunks_into_two_reused_buffers(tmp_path, monkeypatch):
    # a file that must be converted (big-endian floats) is read into two reused buffers
    x, y = make_data(n=1000, c=9)
    np.save(tmp_path / "be.npy", x.astype(">f4"))
    np.save(tmp_path / "y.npy", y)
    seen = []
    real = score.NpyReader.read

    def spy(self, start, stop, out, width=None):
        if self.ndim == 2:
            seen.append((stop - start, out.__array_interface__["data"][0]))
        return real(self, start, stop, out, width)

    monkeypatch.setattr(score.NpyReader, "read", spy)
    s = score.score_files(tmp_path / "be.npy", tmp_path / "y.npy", chunk_rows=128)
    assert [n for n, _ in seen] == [128] * 7 + [104]
    assert len({addr for _, addr in seen}) == 2         # double buffering, no new allocations
    assert s.mean_nll == expected(x, y)[1]


def test_native_inputs_are_scored_from_released_memory_map_windows(tmp_path, monkeypatch):
    # scores stored as they are computed are not copied: each chunk is a window of a memory
    # map, unmapped once scored (the resident set holds at most two windows)
    from fastxent.score import _npy
    x, y = make_data(n=1000, c=9)
    lg, lb = save(tmp_path, x, y)
    windows, released = [], []
    real_window, real_release = _npy.NpyReader.window, _npy.Window.release

    def window(self, start, stop, width, dtype):
        w = real_window(self, start, stop, width, dtype)
        windows.append((stop - start, w is not None))
        return w

    def release(self):
        released.append(True)
        return real_release(self)

    monkeypatch.setattr(_npy.NpyReader, "window", window)
    monkeypatch.setattr(_npy.Window, "release", release)
    s = score.score_files(lg, lb, chunk_rows=128)
    assert windows == [(128, True)] * 7 + [(104, True)]
    assert len(released) == len(windows)
    assert s.mean_nll == expected(x, y)[1]


def test_fortran_ordered_and_non_native_inputs(tmp_path):
    x, y = make_data(n=300, c=6, dtype=np.float64)
    losses, mean, correct, _ = expected(x, y)
    np.save(tmp_path / "f.npy", np.asfortranarray(x))
    np.save(tmp_path / "y.npy", y.astype(">i4"))
    s = score.score_files(tmp_path / "f.npy", tmp_path / "y.npy", chunk_rows=50)
    assert (s.mean_nll, s.correct) == (mean, correct)


def test_score_arrays_accepts_memmap_and_npyarray(tmp_path):
    x, y = make_data()
    lg, lb = save(tmp_path, x, y)
    _, mean, correct, _ = expected(x, y)
    s1 = score.score_arrays(np.load(lg, mmap_mode="r"), np.load(lb, mmap_mode="r"), chunk_rows=50)
    s2 = score.score_arrays(score.NpyArray(lg), score.NpyArray(lb), chunk_rows=77)
    assert (s1.mean_nll, s1.correct) == (s2.mean_nll, s2.correct) == (mean, correct)


def test_bad_label_names_global_row(tmp_path):
    x, y = make_data(n=200, c=5)
    y[157] = 5
    lg, lb = save(tmp_path, x, y)
    with pytest.raises(ScoreError, match=r"label 5 at row 157 is out of range \[0, 5\)"):
        score.score_files(lg, lb, chunk_rows=50)


# ------------------------------------------------------------------ offsets (sequences)
def seq_sums(losses, offsets):
    return np.array([math.fsum(losses[a:b].astype(np.float64).tolist())
                     for a, b in zip(offsets[:-1], offsets[1:])])


@pytest.mark.parametrize("chunk_rows", [1, 5, 17, 100, 10_000])
def test_offsets_per_sequence_sums(tmp_path, chunk_rows):
    x, y = make_data(n=400, c=8)
    lg, lb = save(tmp_path, x, y)
    offs = np.array([0, 0, 3, 3, 50, 51, 200, 399, 400, 400])    # empty + one-row sequences
    np.save(tmp_path / "offs.npy", offs.astype(np.int32))
    out = tmp_path / "seq.npy"
    s = score.score_files(lg, lb, offsets=tmp_path / "offs.npy", out=out, chunk_rows=chunk_rows)
    losses, mean, _, _ = expected(x, y)
    got = np.load(out)
    assert got.dtype == np.float64 and got.shape == (9,)
    np.testing.assert_allclose(got, seq_sums(losses, offs), rtol=1e-13, atol=0)
    assert got[0] == 0 and got[2] == 0 and got[-1] == 0
    assert s.sequences == 9
    assert s.mean_sequence_nll == pytest.approx(got.sum() / 9, rel=1e-13)
    assert s.mean_nll == mean
    assert "sequences" in s.format() and "per-token" in s.format()


def test_offsets_out_in_base_units(tmp_path):
    x, y = make_data(n=100, c=4)
    lg, lb = save(tmp_path, x, y)
    offs = np.array([0, 10, 100])
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    score.score_files(lg, lb, offsets=offs, out=a)
    score.score_files(lg, lb, offsets=offs, out=b, base=2)
    np.testing.assert_allclose(np.load(b), np.load(a) / math.log(2), rtol=1e-15)
    c = tmp_path / "c.npy"
    score.score_files(lg, lb, out=c, base=2)
    np.testing.assert_allclose(np.load(c), expected(x, y)[0] / np.log(2), rtol=1e-6)


@pytest.mark.parametrize("offs, match", [
    ([1, 100], "must start at 0"),
    ([0, 99], "must end at the number of rows 100"),
    ([0, 60, 50, 100], r"non-decreasing, but offsets\[2\] = 50 < offsets\[1\] = 60"),
    ([], "empty"),
    ([[0, 100]], "1-D array of integers"),
    ([0.0, 100.0], "1-D array of integers"),
])
def test_bad_offsets(offs, match):
    x, y = make_data(n=100, c=4)
    with pytest.raises(ScoreError, match=match):
        score.score_arrays(x, y, offsets=np.array(offs))


# ------------------------------------------------------------------ .npz and shard directories
@pytest.mark.parametrize("compressed", [False, True])
def test_npz_with_logits_and_labels(tmp_path, compressed):
    x, y = make_data(n=333, c=10)
    path = tmp_path / "d.npz"
    (np.savez_compressed if compressed else np.savez)(path, logits=x, labels=y, other=np.zeros(3))
    _, mean, correct, _ = expected(x, y)
    out = tmp_path / "o.npy"
    s = score.score_files(path, chunk_rows=40, out=out)
    assert (s.mean_nll, s.correct) == (mean, correct)
    np.testing.assert_array_equal(np.load(out), expected(x, y)[0])
    inputs = score.open_inputs(path)
    assert inputs.logits.sequential == inputs.labels.sequential == compressed   # streamed
    inputs.close()


def test_npz_single_pair_and_separate_files(tmp_path):
    x, y = make_data(n=120, c=3)
    _, mean, correct, _ = expected(x, y)
    np.savez(tmp_path / "pair.npz", y, x)                  # arr_0 (labels), arr_1 (logits)
    assert score.score_files(tmp_path / "pair.npz").mean_nll == mean
    np.savez(tmp_path / "x.npz", x)
    np.savez_compressed(tmp_path / "y.npz", labels=y)
    s = score.score_files(tmp_path / "x.npz", tmp_path / "y.npz", chunk_rows=13)
    assert (s.mean_nll, s.correct) == (mean, correct)
    np.save(tmp_path / "y.npy", y)
    assert score.score_files(tmp_path / "x.npz", tmp_path / "y.npy").mean_nll == mean


def test_shard_directory_pairs_by_key_in_natural_order(tmp_path):
    x, y = make_data(n=1100, c=6)
    d = tmp_path / "shards"
    d.mkdir()
    bounds = list(range(0, 1101, 100))
    for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        np.save(d / f"logits_{k}.npy", x[a:b])
        np.save(d / f"labels_{k}.npy", y[a:b])
    (d / "README.txt").write_text("not a shard")
    offs = np.array([0, 150, 1000, 1100])
    out = tmp_path / "rows.npy"
    s = score.score_files(d, out=out, chunk_rows=64)
    losses, mean, correct, _ = expected(x, y)
    assert (s.rows, s.mean_nll, s.correct) == (1100, mean, correct)
    np.testing.assert_array_equal(np.load(out), losses)        # logits_10 comes after logits_9
    s2 = score.score_files(d, offsets=offs, chunk_rows=64)
    assert s2.sequence_nll_sum == pytest.approx(math.fsum(losses.astype(float).tolist()))
    # two directories, paired by position
    lx, ly = tmp_path / "lx", tmp_path / "ly"
    lx.mkdir()
    ly.mkdir()
    for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        np.save(lx / f"part{k}.npy", x[a:b])
        np.save(ly / f"y{k}.npy", y[a:b])
    s3 = score.score_files(lx, ly)
    assert (s3.mean_nll, s3.correct) == (mean, correct)


@pytest.mark.parametrize("setup, match", [
    ("missing_labels_shard", "no labels_1.npy to pair with logits_1.npy"),
    ("empty", "has no logits_"),
    ("c_mismatch", "does not match the first shard"),
    ("dtype_mismatch", "does not match the first shard"),
])
def test_shard_directory_errors(tmp_path, setup, match):
    d = tmp_path / "s"
    d.mkdir()
    if setup != "empty":
        np.save(d / "logits_0.npy", np.zeros((3, 4), np.float32))
        np.save(d / "labels_0.npy", np.zeros(3, np.int64))
    if setup == "missing_labels_shard":
        np.save(d / "logits_1.npy", np.zeros((3, 4), np.float32))
    if setup == "c_mismatch":
        np.save(d / "logits_1.npy", np.zeros((3, 5), np.float32))
        np.save(d / "labels_1.npy", np.zeros(3, np.int64))
    if setup == "dtype_mismatch":
        np.save(d / "logits_1.npy", np.zeros((3, 4), np.float64))
        np.save(d / "labels_1.npy", np.zeros(3, np.int64))
    with pytest.raises(ScoreError, match=match):
        score.score_files(d)


# ------------------------------------------------------------------ atomic --out
class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("exc", [Boom, KeyboardInterrupt])
@pytest.mark.parametrize("with_offsets", [False, True])
def test_out_is_atomic_when_interrupted(tmp_path, monkeypatch, exc, with_offsets):
    x, y = make_data(n=1000, c=5)
    lg, lb = save(tmp_path, x, y)
    out = tmp_path / "losses.npy"
    offs = np.array([0, 500, 1000]) if with_offsets else None
    real = engine.score_chunk
    calls = []

    def failing(*a, **kw):
        calls.append(1)
        if len(calls) == 4:
            raise exc("interrupted")
        return real(*a, **kw)

    monkeypatch.setattr(engine, "score_chunk", failing)
    # no previous file: none afterwards
    with pytest.raises(exc):
        score.score_files(lg, lb, out=out, offsets=offs, chunk_rows=100)
    assert sorted(os.listdir(tmp_path)) == sorted([lg.name, lb.name])
    # a previous file stays exactly as it was
    np.save(out, np.arange(3.0))
    before = out.read_bytes()
    calls.clear()
    with pytest.raises(exc):
        score.score_files(lg, lb, out=out, offsets=offs, chunk_rows=100)
    assert out.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == sorted([lg.name, lb.name, out.name])
    # and a complete run replaces it
    monkeypatch.setattr(engine, "score_chunk", real)
    score.score_files(lg, lb, out=out, offsets=offs, chunk_rows=100)
    assert np.load(out).shape == ((2,) if with_offsets else (1000,))
    assert sorted(os.listdir(tmp_path)) == sorted([lg.name, lb.name, out.name])


def test_out_failure_in_final_rename_leaves_no_temp(tmp_path, monkeypatch):
    x, y = make_data(n=50, c=5)
    lg, lb = save(tmp_path, x, y)

    def no_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(score.os, "replace", no_replace)
    with pytest.raises(OSError):
        score.score_files(lg, lb, out=tmp_path / "o.npy")
    assert sorted(os.listdir(tmp_path)) == sorted([lg.name, lb.name])


def test_out_file_permissions_follow_umask(tmp_path):
    x, y = make_data(n=10, c=3)
    lg, lb = save(tmp_path, x, y)
    out = tmp_path / "o.npy"
    score.score_files(lg, lb, out=out)
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(out).st_mode & 0o777 == 0o666 & ~umask


def test_out_must_not_be_an_input(tmp_path):
    x, y = make_data(n=10, c=3)
    lg, lb = save(tmp_path, x, y)
    with pytest.raises(ScoreError, match="is one of the inputs"):
        score.score_files(lg, lb, out=lb)
    assert np.array_equal(np.load(lb), y)


def test_progress_bar_optional(tmp_path, capsys):
    import tqdm  # noqa: F401  (a test dependency)
    x, y = make_data(n=100, c=3)
    s = score.score_arrays(x, y, progress=True, chunk_rows=10)
    assert s.rows == 100
    assert isinstance(engine.progress_bar(10, False), engine._NoBar)
