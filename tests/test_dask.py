"""fastxent.dask: cross-entropy and scoring on dask arrays, on a LocalCluster of worker processes."""
import math
import os
import shutil

import numpy as np
import pytest

import fastxent
from fastxent import score
from fastxent.score import ScoreError

import dask.array as da  # noqa: E402  (a test dependency: the "test" extra installs dask[distributed])
import distributed  # noqa: E402

import fastxent.dask as fxd  # noqa: E402

WORKER_MEMORY = "200MiB"


def data(n=1000, c=13, dtype=np.float64, seed=0, ignore_every=9):
    rng = np.random.default_rng(seed)
    x = (3 * rng.standard_normal((n, c))).astype(dtype)
    y = rng.integers(0, c, n)
    y[::ignore_every] = -100
    return x, y


def rtol(dtype):
    return 1e-13 if np.dtype(dtype) == np.float64 else 1e-6


# ------------------------------------------------------------------ local scheduler (no cluster)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("options", [
    {},
    {"weight": "random"},
    {"label_smoothing": 0.1},
    {"weight": "random", "label_smoothing": 0.2, "ignore_index": 3},
    {"z_loss": 1e-3, "base": 2},
])
def test_cross_entropy_matches_fastxent(dtype, options):
    x, y = data(dtype=dtype)
    kw = dict(options)
    if "ignore_index" in kw:
        y[y == -100] = kw["ignore_index"]
    if kw.get("weight") == "random":
        kw["weight"] = np.random.default_rng(5).random(13) + 0.1
    X = da.from_array(x, chunks=(128, 5))            # class axis split too: rechunked
    Y = da.from_array(y, chunks=300)                 # different row chunks: rechunked
    for reduction in ("mean", "sum"):
        got = fxd.cross_entropy(X, Y, reduction=reduction, **kw).compute(scheduler="sync")
        want = fastxent.cross_entropy(x, y, reduction=reduction, **kw)
        assert np.asarray(got).dtype == want.dtype
        assert float(got) == pytest.approx(float(want), rel=rtol(dtype))
    rows = fxd.cross_entropy(X, Y, reduction="none", **kw)
    assert rows.chunks == ((128,) * 7 + (104,),)
    np.testing.assert_array_equal(rows.compute(), fastxent.cross_entropy(x, y, reduction="none",
                                                                         **kw))


def test_mean_is_exact_and_independent_of_chunking():
    x, y = data(n=3000, c=7)
    losses = fastxent.cross_entropy(x, y, reduction="none")
    from fractions import Fraction
    keep = int((y != -100).sum())
    exact = float(sum(map(Fraction, losses.tolist()), Fraction(0)) / keep)
    for rows in (1000, 333, 3000, 17):
        m = fxd.cross_entropy(da.from_array(x, chunks=(rows, 7)), y).compute()
        assert float(m) == exact


def test_soft_targets():
    x, _ = data(n=200, c=6)
    p = np.random.default_rng(3).dirichlet(np.ones(6), 200)
    got = fxd.cross_entropy(da.from_array(x, chunks=(64, 6)), da.from_array(p, chunks=(50, 3)))
    assert float(got.compute()) == pytest.approx(float(fastxent.cross_entropy(x, p)), rel=1e-13)


def test_cross_entropy_validation():
    x, y = data(n=20, c=4)
    X = da.from_array(x, chunks=5)
    with pytest.raises(ValueError, match="target: expected shape"):
        fxd.cross_entropy(X, y[:10])
    with pytest.raises(ValueError, match="reduction"):
        fxd.cross_entropy(X, y, reduction="avg")
    with pytest.raises(ValueError, match="2-D"):
        fxd.cross_entropy(da.from_array(x[:, :, None], chunks=5), y)
    with pytest.raises(TypeError, match="float"):
        fxd.cross_entropy(X.astype(int), y)
    with pytest.raises(TypeError, match="not supported"):
        fxd.cross_entropy(X, y, return_z_loss=True)
    bad = y.copy()
    bad[13] = 4
    with pytest.raises(ScoreError, match="label 4 at row 13"):
        fxd.cross_entropy(X, bad).compute()
    with pytest.raises(ScoreError, match="label 4 at row 13"):
        fxd.cross_entropy(X, bad, reduction="none").compute()


def test_empty():
    X = da.zeros((0, 3), chunks=(1, 3))
    Y = da.zeros((0,), dtype=int, chunks=1)
    assert math.isnan(float(fxd.cross_entropy(X, Y).compute()))
    assert float(fxd.cross_entropy(X, Y, reduction="sum").compute()) == 0.0


def test_score_summary_matches_local_engine(tmp_path):
    x, y = data(n=900, c=10, dtype=np.float32)
    offs = np.array([0, 10, 10, 455, 900])
    local = score.score_arrays(x, y, offsets=offs, base=2)
    remote = fxd.score_summary(da.from_array(x, chunks=(100, 10)), da.from_array(y, chunks=100),
                               offsets=offs, base=2, out=tmp_path / "seq.npy")
    for name in ("rows", "scored", "correct", "nll_sum", "mean_nll", "sequences"):
        assert getattr(remote, name) == getattr(local, name), name
    assert remote.sequence_nll_sum == pytest.approx(local.sequence_nll_sum, rel=1e-14)
    assert np.load(tmp_path / "seq.npy").shape == (4,)


def test_from_npy_pickles_the_path_only(tmp_path):
    import pickle
    x, y = data(n=5000, c=50, dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    arr = fxd.from_npy(tmp_path / "x.npy", chunk_rows=1000)
    assert arr.chunks == ((1000,) * 5, (50,))
    np.testing.assert_array_equal(arr.compute(), x)
    src = score.NpyArray(tmp_path / "x.npy")
    assert len(pickle.dumps(src)) < 2000
    src[:5]                                          # the original holds its file open now
    copy = pickle.loads(pickle.dumps(src))
    assert copy._fd is None                          # an unpickled copy holds no open file
    np.testing.assert_array_equal(copy[10:20], x[10:20])   # rows are read, never mapped
    copy.close()
    src.close()


def test_compressed_npz_is_refused(tmp_path):
    x, y = data(n=10, c=3)
    np.savez_compressed(tmp_path / "d.npz", logits=x, labels=y)
    with pytest.raises(ScoreError, match="compressed .npz"):
        fxd.score_files(tmp_path / "d.npz")


# ------------------------------------------------------------------ a LocalCluster of processes
@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      memory_limit=WORKER_MEMORY, dashboard_address=None,
                      silence_logs=40) as c:
        yield c


@pytest.fixture
def client(cluster):
    from distributed import Client
    with Client(cluster) as c:
        yield c


def test_cluster_cross_entropy(client):
    x, y = data(n=2000, c=20)
    w = np.linspace(0.5, 2.0, 20)
    X = da.from_array(x, chunks=(250, 20))
    got = fxd.cross_entropy(X, y, weight=w).compute()
    assert float(got) == pytest.approx(float(fastxent.cross_entropy(x, y, weight=w)), rel=1e-13)
    np.testing.assert_array_equal(fxd.cross_entropy(X, y, reduction="none").compute(),
                                  fastxent.cross_entropy(x, y, reduction="none"))
    bad = y.copy()
    bad[1234] = 99
    with pytest.raises(ScoreError, match="label 99 at row 1234"):
        fxd.cross_entropy(X, bad).compute()


def _write_shards(directory, n_shards, rows, c, seed=0):
    directory.mkdir()
    rng = np.random.default_rng(seed)
    for k in range(n_shards):
        x = rng.standard_normal((rows, c), dtype=np.float32)
        x *= 2
        y = rng.integers(0, c, rows)
        y[::17] = -100
        np.save(directory / f"logits_{k}.npy", x)
        np.save(directory / f"labels_{k}.npy", y)
        del x


def test_cluster_scores_input_larger_than_a_worker_memory_limit(cluster, client, tmp_path):
    """~420 MB of float32 logits in 4 .npy shards; each worker may hold 200 MiB."""
    d = tmp_path / "shards"
    _write_shards(d, n_shards=4, rows=12_800, c=2048)
    try:
        _score_big_shards(cluster, client, tmp_path, d)
    finally:
        shutil.rmtree(d)                     # pytest keeps old tmp dirs: don't leave 420 MB


def _score_big_shards(cluster, client, tmp_path, d):
    total = sum(os.path.getsize(d / f"logits_{k}.npy") for k in range(4))
    limit = client.run(lambda dask_worker: dask_worker.memory_manager.memory_limit)
    assert all(total > 2 * lim for lim in limit.values())
    workers_before = set(client.scheduler_info()["workers"])

    local = score.score_files(d)
    lg, lb = fxd.from_npy_shards([d / f"logits_{k}.npy" for k in range(4)],
                                 [d / f"labels_{k}.npy" for k in range(4)], chunk_rows=1024)
    remote = fxd.score_summary(lg, lb, client=client)
    assert (remote.rows, remote.scored, remote.correct) == (local.rows, local.scored, local.correct)
    assert remote.mean_nll == local.mean_nll                 # exact sums: bit-identical
    assert remote.nll_sum == local.nll_sum
    mean = fxd.cross_entropy(lg, lb).compute()
    assert float(mean) == pytest.approx(local.mean_nll, rel=1e-6)

    # the same through the command line, with --out gathered block by block
    from fastxent import cli
    out = tmp_path / "losses.npy"
    rc = cli.main(["score", str(d), "--dask", cluster.scheduler_address, "--out", str(out),
                   "--chunk-rows", "2048", "--json"])
    assert rc == 0
    assert np.load(out).shape == (4 * 12_800,)
    assert math.fsum(np.load(out).astype(float).tolist()) == pytest.approx(local.nll_sum, rel=1e-12)
    assert set(client.scheduler_info()["workers"]) == workers_before   # no worker was killed


def test_cli_dask_errors_are_one_line(cluster, tmp_path, capsys):
    from fastxent import cli
    x, y = data(n=100, c=5, dtype=np.float32)
    y[42] = 5
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    rc = cli.main(["score", str(tmp_path / "x.npy"), str(tmp_path / "y.npy"),
                   "--dask", cluster.scheduler_address, "--chunk-rows", "10",
                   "--out", str(tmp_path / "o.npy")])
    out, err = capsys.readouterr()
    assert rc == 2 and err.count("\n") == 1 and "label 5 at row 42" in err
    assert sorted(os.listdir(tmp_path)) == ["x.npy", "y.npy"]


# ------------------------------------------------------------------ every format, the same summary
def _summary_dict(s):
    d = s.as_dict()
    for key in ("seconds", "rows_per_s", "gb_per_s"):
        d.pop(key)
    return d


def _formats(tmp_path, x, y):
    """The same rows in every format fastxent reads (path arguments for score_files)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zarr
    from safetensors.numpy import save_file
    np.savez(tmp_path / "d.npz", logits=x, labels=y)
    save_file({"logits": x, "labels": y}, tmp_path / "d.safetensors")
    g = zarr.open_group(str(tmp_path / "d.zarr"), mode="w")
    g.create_array("logits", data=x, chunks=(100, x.shape[1]))
    g.create_array("labels", data=y, chunks=(100,))
    col = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])
    pq.write_table(pa.table({"logits": col, "labels": y}), tmp_path / "d.parquet",
                   row_group_size=150)
    shards = tmp_path / "shards"
    shards.mkdir()
    for k in range(3):
        np.save(shards / f"logits_{k}.npy", x[k * 200:(k + 1) * 200])
        np.save(shards / f"labels_{k}.npy", y[k * 200:(k + 1) * 200])
    return ["d.npz", "d.safetensors", "d.zarr", "d.parquet", "shards"]


def test_score_files_reads_every_format_like_the_local_engine(tmp_path):
    x, y = data(n=600, c=11, dtype=np.float32)
    w = np.random.default_rng(1).random(600)
    np.save(tmp_path / "w.npy", w)
    kw = dict(top_k=(2, 3), weights=tmp_path / "w.npy", offsets=np.array([0, 250, 600]))
    names = _formats(tmp_path, x, y)
    want = _summary_dict(score.score_arrays(x, y, **kw))
    for name in names:
        got = fxd.score_files(tmp_path / name, chunk_rows=128, **kw)
        assert _summary_dict(got) == want, name


def test_default_blocks_hold_at_least_128_mib(tmp_path):
    a = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.float32,
                                  shape=(120_000, 1000))             # a sparse 480 MB file
    del a
    arr = fxd.from_npy(tmp_path / "big.npy")
    rows = arr.chunks[0]
    assert rows[0] * 1000 * 4 >= fxd.BLOCK_BYTES == 128 * 2**20
    assert len(rows) == 4 and sum(rows) == 120_000


def test_cluster_summary_equals_local_exactly(cluster, client, tmp_path):
    x, y = data(n=5000, c=40, dtype=np.float32)
    y[::7] = -100
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    kw = dict(top_k=5, ece_bins=20)
    local = score.score_files(tmp_path / "x.npy", tmp_path / "y.npy", out=tmp_path / "a.npy",
                              chunk_rows=700, **kw)
    remote = fxd.score_files(tmp_path / "x.npy", tmp_path / "y.npy", client=client,
                             out=tmp_path / "b.npy", chunk_rows=900, **kw)
    assert _summary_dict(remote) == {**_summary_dict(local), "out": str(tmp_path / "b.npy")}
    assert (tmp_path / "a.npy").read_bytes() == (tmp_path / "b.npy").read_bytes()


def test_no_worker_left_stops_after_the_timeout(tmp_path, capsys):
    from distributed import Client, LocalCluster
    x, y = data(n=300, c=5, dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    before = sorted(os.listdir(tmp_path))
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=":0", silence_logs=50) as lonely:   # any free port
        with Client(lonely) as c:
            c.retire_workers(list(c.scheduler_info()["workers"]), close_workers=True)
            assert not c.scheduler_info()["workers"]
            with pytest.raises(ScoreError, match="dask_timeout: no Dask worker left for 0.5 s"):
                fxd.score_files(tmp_path / "x.npy", tmp_path / "y.npy", client=c, timeout=0.5,
                                out=tmp_path / "o.npy", chunk_rows=100)
            from fastxent import cli
            rc = cli.main(["score", str(tmp_path / "x.npy"), str(tmp_path / "y.npy"), "--dask",
                           lonely.scheduler_address, "--dask-timeout", "0.5", "--out",
                           str(tmp_path / "o.npy")])
            out, err = capsys.readouterr()
            assert rc == 2 and err.count("\n") == 1
            assert "--dask-timeout: no Dask worker left" in err
    assert sorted(os.listdir(tmp_path)) == before


def test_score_summary_detects_probabilities_like_local():
    """Both read the kind from the rows of a first local chunk (8 MiB: 524 rows of 2000
    float64) and then check every row."""
    rng = np.random.default_rng(7)
    p = rng.dirichlet(np.ones(2000), 900)
    y = rng.integers(0, 2000, 900)
    local = score.score_arrays(p, y, top_k=2)
    remote = fxd.score_summary(da.from_array(p, chunks=(200, 2000)),
                               da.from_array(y, chunks=300), top_k=2)
    assert remote.input == local.input == "probs"
    assert _summary_dict(remote) == _summary_dict(local)
    p[850] *= 3
    with pytest.raises(ScoreError, match="row 850 is not"):
        score.score_arrays(p, y)
    with pytest.raises(ScoreError, match="row 850 is not"):
        fxd.score_summary(da.from_array(p, chunks=(200, 2000)), y)


def test_score_files_shifted_sequences_like_the_local_engine(tmp_path):
    """(B, T, V) logits with --shift and per-sequence sums: blocks that cut sequences, read and
    scored in one task each, give the local summary and per-sequence file."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 50, 7)).astype(np.float32)
    y = rng.integers(0, 7, (6, 50))
    y[2, 10:20] = -100
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    kw = dict(shift=True, per_sequence=True, top_k=2)
    local = score.score_files(tmp_path / "x.npy", tmp_path / "y.npy", out=tmp_path / "a.npy",
                              chunk_rows=33, **kw)
    remote = fxd.score_files(tmp_path / "x.npy", tmp_path / "y.npy", out=tmp_path / "b.npy",
                             chunk_rows=41, **kw)
    got, want = _summary_dict(remote), _summary_dict(local)
    assert got.pop("out") != want.pop("out")
    assert got == want and want["sequences"] == 6
    np.testing.assert_allclose(np.load(tmp_path / "b.npy"), np.load(tmp_path / "a.npy"),
                               rtol=1e-12)
