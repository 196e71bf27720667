"""The ``fastxent`` command: ``score`` (and the shape of errors shared by every subcommand)."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import fastxent
from fastxent import cli, score
from fastxent.score import engine


def make_files(tmp_path, n=300, c=9, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    x = (2 * rng.standard_normal((n, c))).astype(dtype)
    y = rng.integers(0, c, n)
    y[::11] = -100
    lg, lb = tmp_path / "logits.npy", tmp_path / "labels.npy"
    np.save(lg, x)
    np.save(lb, y)
    return x, y, str(lg), str(lb)


def run(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc, out, err, match=None):
    assert rc == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fastxent: error: ")
    if match:
        assert match in lines[0], lines[0]


# ------------------------------------------------------------------ success paths
def test_score_prints_summary(tmp_path, capsys):
    x, y, lg, lb = make_files(tmp_path)
    rc, out, err = run(capsys, "score", lg, lb)
    assert rc == 0
    assert err == ""                         # no progress bar: stderr is not a terminal
    for word in ("rows", "mean NLL", "perplexity", "bits per item", "top-1 accuracy",
                 "throughput", "rows/s", "GB/s"):
        assert word in out
    keep = y != -100
    assert f"{int(keep.sum()):,}" in out


def test_score_json_matches_fastxent(tmp_path, capsys):
    x, y, lg, lb = make_files(tmp_path, dtype=np.float64)
    rc, out, _ = run(capsys, "score", lg, lb, "--json", "--chunk-rows", 17, "--threads", 1,
                     "--base", 2)
    assert rc == 0
    d = json.loads(out)
    want = float(fastxent.cross_entropy(x, y))
    assert d["rows"] == 300 and d["scored"] == int((y != -100).sum())
    assert d["mean_nll"] == pytest.approx(want, rel=1e-13)
    assert d["mean_nll_base"] == pytest.approx(want / math.log(2), rel=1e-13)
    assert d["bits_per_item"] == pytest.approx(want / math.log(2), rel=1e-13)
    assert d["perplexity"] == pytest.approx(math.exp(want), rel=1e-13)
    pred = np.argmax(x, axis=1)
    keep = y != -100
    assert d["accuracy"] == (pred[keep] == y[keep]).mean()


def test_score_out_and_offsets(tmp_path, capsys):
    x, y, lg, lb = make_files(tmp_path)
    out = tmp_path / "rows.npy"
    rc, text, _ = run(capsys, "score", lg, lb, "--out", out, "--chunk-rows", 64)
    assert rc == 0 and str(out) in text
    np.testing.assert_array_equal(np.load(out), fastxent.cross_entropy(x, y, reduction="none"))
    offs = tmp_path / "offs.npy"
    np.save(offs, np.array([0, 100, 100, 300]))
    seq = tmp_path / "seq.npy"
    rc, text, _ = run(capsys, "score", lg, lb, "--offsets", offs, "--out", seq, "--base", "2")
    assert rc == 0 and "sequences" in text and "bits" in text
    rows = np.load(out).astype(np.float64)
    np.testing.assert_allclose(np.load(seq), [rows[:100].sum() / math.log(2), 0.0,
                                              rows[100:].sum() / math.log(2)], rtol=1e-12)


def test_score_npz_and_directory(tmp_path, capsys):
    x, y, _, _ = make_files(tmp_path)
    np.savez(tmp_path / "d.npz", logits=x, labels=y)
    d = tmp_path / "shards"
    d.mkdir()
    for k in range(3):
        np.save(d / f"logits_{k}.npy", x[k * 100:(k + 1) * 100])
        np.save(d / f"labels_{k}.npy", y[k * 100:(k + 1) * 100])
    rc1, out1, _ = run(capsys, "score", tmp_path / "d.npz", "--json")
    rc2, out2, _ = run(capsys, "score", d, "--json")
    assert rc1 == rc2 == 0
    a, b = json.loads(out1), json.loads(out2)
    assert (a["mean_nll"], a["correct"]) == (b["mean_nll"], b["correct"])


def test_python_dash_m(tmp_path):
    _, _, lg, lb = make_files(tmp_path)
    env = dict(os.environ)
    p = subprocess.run([sys.executable, "-m", "fastxent", "score", lg, lb],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "mean NLL" in p.stdout
    p = subprocess.run([sys.executable, "-m", "fastxent", "score", lg, str(tmp_path / "nope.npy")],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "nope.npy" in p.stderr and "Traceback" not in p.stderr


def test_help_lists_score(capsys):
    rc, out, _ = run(capsys, "score", "--help")
    assert rc == 0 and "--offsets" in out and "--dask" in out
    rc, out, _ = run(capsys, "--help")
    assert rc == 0 and "score" in out and "bench" in out and "info" in out


# ------------------------------------------------------------------ every error: one line, exit 2
def _write(path, data):
    path.write_bytes(data)
    return path


ERRORS = {
    "missing logits": (lambda t, lg, lb: [t / "missing.npy", lb], "no such file"),
    "missing labels": (lambda t, lg, lb: [lg, t / "missing.npy"], "no such file"),
    "labels left out": (lambda t, lg, lb: [lg], "LABELS: missing"),
    "not npy": (lambda t, lg, lb: [_write(t / "x.npy", b"hello world"), lb],
                "is not a file fastxent reads"),
    "corrupt header": (lambda t, lg, lb: [_write(t / "x.npy", b"\x93NUMPY\x01\x00\x10\x00{garbage}   \n"),
                                          lb], "not a valid .npy file"),
    "truncated": (lambda t, lg, lb: [_write(t / "x.npy", open(lg, "rb").read()[:-100]), lb],
                  "truncated"),
    "object dtype": (lambda t, lg, lb: [_save(t / "o.npy", np.array([[None, 1]], dtype=object)),
                                        lb], "Python objects"),
    "shape mismatch": (lambda t, lg, lb: [lg, _save(t / "y.npy", np.zeros(299, np.int64))],
                       "299 labels for 300 rows"),
    "logits 1-D": (lambda t, lg, lb: [_save(t / "x.npy", np.zeros(300, np.float32)), lb],
                   "must be 2-D"),
    "logits int": (lambda t, lg, lb: [_save(t / "x.npy", np.zeros((300, 3), np.int32)), lb],
                   "float16, float32 or float64"),
    "logits complex": (lambda t, lg, lb: [_save(t / "x.npy", np.zeros((300, 3), np.complex64)), lb],
                       "float16, float32 or float64"),
    "zero classes": (lambda t, lg, lb: [_save(t / "x.npy", np.zeros((300, 0), np.float32)), lb],
                     "no classes"),
    "labels float": (lambda t, lg, lb: [lg, _save(t / "y.npy", np.zeros(300))], "integers"),
    "labels bool": (lambda t, lg, lb: [lg, _save(t / "y.npy", np.zeros(300, bool))], "integers"),
    "labels 2-D": (lambda t, lg, lb: [lg, _save(t / "y.npy", np.zeros((300, 1), np.int64))],
                   "must be 1-D"),
    "label out of range": (lambda t, lg, lb: [lg, _save(t / "y.npy", np.full(300, 9))],
                           "label 9 at row 0 is out of range [0, 9)"),
    "offsets missing": (lambda t, lg, lb: [lg, lb, "--offsets", t / "none.npy"], "no such file"),
    "offsets bad end": (lambda t, lg, lb: [lg, lb, "--offsets", _save(t / "o.npy", np.array([0, 5]))],
                        "must end at the number of rows 300"),
    "offsets decreasing": (lambda t, lg, lb: [lg, lb, "--offsets",
                                              _save(t / "o.npy", np.array([0, 200, 100, 300]))],
                           "non-decreasing"),
    "offsets float": (lambda t, lg, lb: [lg, lb, "--offsets", _save(t / "o.npy", np.array([0., 300.]))],
                      "1-D array of integers"),
    "offsets corrupt": (lambda t, lg, lb: [lg, lb, "--offsets", _write(t / "o.npy", b"\x93NUMPYxx")],
                        "--offsets"),
    "chunk rows 0": (lambda t, lg, lb: [lg, lb, "--chunk-rows", "0"], "--chunk-rows"),
    "chunk rows text": (lambda t, lg, lb: [lg, lb, "--chunk-rows", "many"], "--chunk-rows"),
    "threads negative": (lambda t, lg, lb: [lg, lb, "--threads", "-1"], "--threads"),
    "base 1": (lambda t, lg, lb: [lg, lb, "--base", "1"], "--base"),
    "base text": (lambda t, lg, lb: [lg, lb, "--base", "two"], "--base"),
    "base negative": (lambda t, lg, lb: [lg, lb, "--base=-2"], "--base"),
    "out dir missing": (lambda t, lg, lb: [lg, lb, "--out", t / "no" / "o.npy"], "does not exist"),
    "out is a directory": (lambda t, lg, lb: [lg, lb, "--out", t], "is a directory"),
    "out is an input": (lambda t, lg, lb: [lg, lb, "--out", lb], "is one of the inputs"),
    "npz without keys": (lambda t, lg, lb: [_savez(t / "d.npz", a=np.zeros((3, 2)), b=np.zeros(3),
                                                   c=np.zeros(1))], "expected 'logits' and 'labels'"),
    "corrupt npz": (lambda t, lg, lb: [_write(t / "d.npz", b"PK\x03\x04 not really a zip")],
                    "corrupt .npz"),
    "empty directory": (lambda t, lg, lb: [_mkdir(t / "empty")], "no logits_*.npy shards"),
    "dir with file labels": (lambda t, lg, lb: [_mkdir(t / "d"), lb], "must be a directory"),
    "unknown option": (lambda t, lg, lb: [lg, lb, "--frobnicate"], "unrecognized arguments"),
}


def _save(path, a):
    np.save(path, a, allow_pickle=True)
    return path


def _savez(path, **arrays):
    np.savez(path, **arrays)
    return path


def _mkdir(path):
    path.mkdir()
    return path


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_errors_are_one_line_exit_2(tmp_path, capsys, case):
    _, _, lg, lb = make_files(tmp_path)
    build, match = ERRORS[case]
    args = build(tmp_path, lg, lb)
    rc, out, err = run(capsys, "score", *args)
    assert_one_line_error(rc, out, err, match)
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_error_leaves_previous_out_intact(tmp_path, capsys):
    _, y, lg, _ = make_files(tmp_path)
    bad = y.copy()
    bad[250] = 99
    np.save(tmp_path / "bad.npy", bad)
    out = tmp_path / "o.npy"
    np.save(out, np.arange(4))
    rc, o, e = run(capsys, "score", lg, tmp_path / "bad.npy", "--out", out, "--chunk-rows", 50)
    assert_one_line_error(rc, o, e, "label 99 at row 250")
    np.testing.assert_array_equal(np.load(out), np.arange(4))
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_interrupt_exits_130_and_leaves_no_file(tmp_path, capsys, monkeypatch):
    _, _, lg, lb = make_files(tmp_path)
    calls = []
    real = engine.score_chunk

    def interrupted(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(engine, "score_chunk", interrupted)
    out = tmp_path / "o.npy"
    rc, o, e = run(capsys, "score", lg, lb, "--out", out, "--chunk-rows", 10)
    assert rc == 130 and "interrupted" in e
    assert not out.exists()
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_dask_option_without_dask(tmp_path, capsys, monkeypatch):
    _, _, lg, lb = make_files(tmp_path)
    monkeypatch.setitem(sys.modules, "dask", None)
    monkeypatch.setitem(sys.modules, "dask.array", None)
    monkeypatch.delitem(sys.modules, "fastxent.dask", raising=False)
    rc, o, e = run(capsys, "score", lg, lb, "--dask", "tcp://127.0.0.1:1")
    assert_one_line_error(rc, o, e, "pip install 'fastxent[dask]'")
