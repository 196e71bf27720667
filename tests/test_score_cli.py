"""`fastxent score`: the new options, bad input as one line on stderr with exit code 2 (no output
file, inputs untouched), stop signals, --version, --quiet and the memory bound."""
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

import fastxent
from fastxent import cli


def files(tmp_path, n=300, c=9, seed=0):
    rng = np.random.default_rng(seed)
    x = (2 * rng.standard_normal((n, c))).astype(np.float32)
    y = rng.integers(0, c, n)
    paths = {name: str(tmp_path / f"{name}.npy") for name in ("x", "y", "w", "offs")}
    np.save(paths["x"], x)
    np.save(paths["y"], y)
    np.save(paths["w"], np.ones(n))
    np.save(paths["offs"], np.array([0, 100, n]))
    return x, y, paths


def run(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def snapshot(directory):
    return {n: (directory / n).read_bytes() for n in sorted(os.listdir(directory))}


def assert_one_line_error(rc, out, err, match):
    assert rc == 2 and out == "", (rc, out)
    assert err.count("\n") == 1 and err.startswith("fastxent: error: "), err
    assert match in err, err


# ------------------------------------------------------------------ new options, end to end
def test_options_reach_the_summary(tmp_path, capsys):
    x, y, p = files(tmp_path)
    rc, out, err = run(capsys, "score", p["x"], p["y"], "--json", "--top-k", 2, "--top-k", 5,
                       "--ece-bins", 10, "--weights", p["w"], "--input", "logits",
                       "--per-class", tmp_path / "c.csv", "--threads", 1)
    assert rc == 0 and err == ""
    d = json.loads(out)
    want = fastxent.score_arrays(x, y, top_k=(2, 5), ece_bins=10, weights=np.ones(300))
    assert d["top_k_accuracy"] == {"2": want.top_k_accuracy[2], "5": want.top_k_accuracy[5]}
    assert (d["ece"], d["ece_bins"], d["weighted"]) == (want.ece, 10, True)
    assert d["per_class"] == str(tmp_path / "c.csv") and (tmp_path / "c.csv").exists()


def test_probabilities_binary_and_sequences(tmp_path, capsys):
    rng = np.random.default_rng(1)
    q = rng.dirichlet(np.ones(4), 200)
    y = rng.integers(0, 4, 200)
    np.save(tmp_path / "q.npy", q)
    np.save(tmp_path / "y.npy", y)
    rc, out, _ = run(capsys, "score", tmp_path / "q.npy", tmp_path / "y.npy", "--json")
    assert rc == 0 and json.loads(out)["input"] == "probs"
    np.save(tmp_path / "z.npy", rng.standard_normal(200))
    np.save(tmp_path / "b.npy", rng.integers(0, 2, 200))
    rc, out, _ = run(capsys, "score", tmp_path / "z.npy", tmp_path / "b.npy", "--binary")
    assert rc == 0 and "mean BCE" in out
    np.save(tmp_path / "lm.npy", rng.standard_normal((3, 20, 5)).astype(np.float32))
    np.save(tmp_path / "t.npy", rng.integers(0, 5, (3, 20)))
    rc, out, _ = run(capsys, "score", tmp_path / "lm.npy", tmp_path / "t.npy", "--shift",
                     "--per-sequence", "--out", tmp_path / "seq.npy")
    assert rc == 0 and "sequences         3" in out
    assert np.load(tmp_path / "seq.npy").shape == (3,)


def test_version_and_quiet(tmp_path, capsys):
    rc, out, _ = run(capsys, "--version")
    assert rc == 0 and out.strip() == f"fastxent {fastxent.__version__}"
    _, _, p = files(tmp_path)
    rc, out, err = run(capsys, "score", p["x"], p["y"], "--quiet", "--out", tmp_path / "o.npy")
    assert rc == 0 and out == "" and err == "" and (tmp_path / "o.npy").exists()
    rc, out, err = run(capsys, "score", p["x"], p["y"], "--quiet", "--json")
    assert_one_line_error(rc, out, err, "not allowed with argument")


# ------------------------------------------------------------------ bad input
BAD = {
    "out is logits": (lambda p, t: ["--out", p["x"]], "--out: "),
    "out is labels": (lambda p, t: ["--out", p["y"]], "is one of the inputs"),
    "out is offsets": (lambda p, t: ["--offsets", p["offs"], "--out", p["offs"]],
                       "is one of the inputs"),
    "out is weights": (lambda p, t: ["--weights", p["w"], "--out", p["w"]], "is one of the inputs"),
    "per-class is labels": (lambda p, t: ["--per-class", p["y"]], "--per-class: "),
    "per-class is out": (lambda p, t: ["--out", t / "o.npy", "--per-class", t / "o.npy"],
                         "--per-class: "),
    "ignore index too big": (lambda p, t: ["--ignore-index", str(2**63)],
                             "--ignore-index: 9223372036854775808 does not fit a 64-bit integer"),
    "ignore index too small": (lambda p, t: ["--ignore-index", str(-2**63 - 1)],
                               "does not fit a 64-bit integer"),
    "weights shape": (lambda p, t: ["--weights", _save(t / "w2.npy", np.ones(299))],
                      "--weights: expected shape (300,)"),
    "weights negative": (lambda p, t: ["--weights", _save(t / "w2.npy", -np.ones(300))],
                         "--weights: sample weights must be finite and >= 0"),
    "shift without sequences": (lambda p, t: ["--shift"], "--shift: needs sequences"),
    "top-k binary": (lambda p, t: ["--top-k", "2", "--binary"], "--top-k"),
    "memory too small": (lambda p, t: ["--memory-limit", "1KB"], "--memory-limit: "),
    "memory not a size": (lambda p, t: ["--memory-limit", "lots"], "--memory-limit: expected"),
    "input unknown": (lambda p, t: ["--input", "odds"], "--input"),
    "base one": (lambda p, t: ["--base", "1"], "--base: "),
    "eps negative": (lambda p, t: ["--eps=-1"], "--eps"),
    "key of a plain npy": (lambda p, t: ["--logits-key", "z"], "--logits-key: "),
}


def _save(path, a):
    np.save(path, a)
    return str(path)


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_exit_2_and_touches_nothing(tmp_path, capsys, case):
    _, _, p = files(tmp_path)
    build, match = BAD[case]
    args = build(p, tmp_path)
    before = snapshot(tmp_path)
    rc, out, err = run(capsys, "score", p["x"], p["y"], *args)
    assert_one_line_error(rc, out, err, match)
    assert snapshot(tmp_path) == before           # no output, no temporary, inputs untouched


def test_mismatched_shard_and_format_rows(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq
    _, y, p = files(tmp_path)
    pq.write_table(pa.table({"labels": y[:-1]}), tmp_path / "y.parquet")
    rc, out, err = run(capsys, "score", p["x"], tmp_path / "y.parquet")
    assert_one_line_error(rc, out, err, "299 labels for 300 rows")


# ------------------------------------------------------------------ stop signals
_STOPPER = """
import os, signal, sys
from fastxent import cli
from fastxent.score import engine
real, calls = engine.score_chunk, []
def chunk(*a, **kw):
    calls.append(1)
    if len(calls) == 3:
        os.kill(os.getpid(), getattr(signal, sys.argv[1]))
    return real(*a, **kw)
engine.score_chunk = chunk
sys.exit(cli.main(sys.argv[2:]))
"""


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_stop_signals_leave_no_file(tmp_path, name):
    _, _, p = files(tmp_path, n=1000)
    out = tmp_path / "o.npy"
    before = snapshot(tmp_path)
    r = subprocess.run([sys.executable, "-c", _STOPPER, name, "score", p["x"], p["y"], "--out",
                        str(out), "--chunk-rows", "50", "--per-class", str(tmp_path / "c.csv")],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)  # the installed package
    signum = getattr(signal, name)
    assert r.returncode == (130 if name == "SIGINT" else 128 + signum), r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert ("interrupted" if name == "SIGINT" else f"stopped by {name}") in r.stderr
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------ the memory bound
_RSS = """
import os, resource, subprocess, sys
p = subprocess.Popen(sys.argv[1:])
_, status, usage = os.wait4(p.pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss * 1024)
"""


def test_peak_memory_stays_under_the_limit(tmp_path):
    """A 200 MB input scored with --memory-limit 60MB (--out included) in a fresh process."""
    n, c = 50_000, 1000
    d = tmp_path / "big"
    d.mkdir()
    try:
        x = np.lib.format.open_memmap(d / "x.npy", mode="w+", dtype=np.float32, shape=(n, c))
        block = np.random.default_rng(0).standard_normal((1000, c), dtype=np.float32)
        for i in range(0, n, 1000):
            x[i:i + 1000] = block
        x.flush()
        del x
        np.save(d / "y.npy", np.tile(np.arange(c), n // c))
        limit = 60 * 10**6
        r = subprocess.run([sys.executable, "-c", _RSS, sys.executable, "-m", "fastxent", "score",
                            str(d / "x.npy"), str(d / "y.npy"), "--out", str(d / "o.npy"),
                            "--memory-limit", "60MB", "--quiet"],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
        rc, peak = map(int, r.stdout.split())
        assert rc == 0, r.stderr
        assert peak <= limit, f"peak resident memory {peak / 1e6:.1f} MB > 60 MB"
        assert np.load(d / "o.npy", mmap_mode="r").shape == (n,)
    finally:
        shutil.rmtree(d)
