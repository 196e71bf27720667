"""The benchmark machinery (``fastxent bench``, ``fastxent._bench``, ``bench/``) in smoke mode:
tiny sizes through the same code paths as the quick and full runs -- grid, the measuring loop,
ceilings, records, the report text and JSON, the plot, the pytest-benchmark suite read back.

Structure and sanity only (every case and installed peer present, losses agreeing with
fastxent's, ratios positive, % of the ceiling finite); nothing here asserts a speed.
"""
import contextlib
import io
import itertools
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from fastxent import cli
from fastxent._bench import ceilings, grid, linear, peers, plot, records, report, run, saved, timing


# ------------------------------------------------------------------ grid
@pytest.mark.parametrize("mode", grid.MODES)
def test_grid_is_grouped_by_inputs(mode):
    cases = grid.grid(mode, ncpu=4)
    assert cases
    keys = [c.data_key for c in cases]
    # each (N, C, dtype) forms one contiguous run, so its inputs are built once
    runs = [k for k, _ in itertools.groupby(keys)]
    assert len(runs) == len(set(keys))
    assert {c.threads for c in cases} == {1, 4}
    assert {c.dtype for c in cases} == set(grid.DTYPES[mode])
    assert all(c.op in grid.ALL_OPS for c in cases)
    assert len({c.id for c in cases}) == len(cases)


def test_grid_modes_and_bytes():
    assert grid.thread_levels(1) == (1,)
    assert {c.dtype for c in grid.grid("quick")} == {"float32"}
    loss = grid.Case(8, 5, "float64", "loss", 1)
    assert loss.bytes_moved == 8 * 5 * 8 + 8 * 8                 # logits + int64 labels
    assert grid.Case(8, 5, "float64", "loss+grad", 1).bytes_moved == 2 * 8 * 5 * 8 + 8 * 8
    assert grid.Case(8, 5, "float32", "kl", 1).bytes_moved == 2 * 8 * 5 * 4
    assert [c.threads for c in grid.scaling_cases("smoke", ncpu=3)] == [1, 2, 3] * 2
    with pytest.raises(grid.BenchError, match="unknown benchmark mode 'fast'"):
        grid.grid("fast")


def test_inputs_are_what_the_cases_need():
    data = grid.Inputs(16, 7, "float32")
    assert data.logits.shape == (16, 7) and data.logits.dtype == np.float32
    assert data.target.min() >= 0 and data.target.max() < 7
    fam = data.family()
    assert fam is data.family()                                   # built once
    np.testing.assert_allclose(fam["p"].sum(axis=1), 1, rtol=1e-5)
    assert ((fam["probs"] > 0) & (fam["probs"] < 1)).all()


# ------------------------------------------------------------------ the measuring loop
def test_time_calls_interleaves_and_counts():
    calls = {"a": 0, "b": 0}
    order = []

    def make(name):
        def fn():
            calls[name] += 1
        return fn

    @contextlib.contextmanager
    def ctx(name):
        order.append(name)
        yield

    result = timing.time_calls({"a": make("a"), "b": make("b")}, 0.0, min_repeats=4,
                               min_sample=1e-4, context=ctx)
    for name, t in result.items():
        assert t.repeats == 4 and t.number >= 1
        assert 0 < t.best <= t.median and t.cpu >= 0
        assert calls[name] >= t.repeats * t.number
    # calibration of each, then samples round by round
    assert order[2:] == ["a", "b"] * (len(order[2:]) // 2)


def test_time_calls_stops_at_max_repeats_and_budget():
    t = timing.time_call(lambda: None, 10.0, min_repeats=1, max_repeats=5, min_sample=1e-5)
    assert t.repeats == 5
    t = timing.time_call(lambda: sum(range(1000)), 0.0, min_repeats=2, min_sample=0.0)
    assert t.repeats == 2 and t.number == 1


# ------------------------------------------------------------------ ceilings
@pytest.fixture(scope="module")
def small_ceilings():
    return ceilings.measure(("float32", "float64"), (1, 2), read_bytes=4 << 20, exp_bytes=1,
                            budget=0.0)


def test_ceilings_structure(small_ceilings):
    c = small_ceilings
    assert set(c["read_gbs"]) == {1, 2} and set(c["exp_elems_per_s"]) == {"float32", "float64"}
    for rates in [c["read_gbs"]] + list(c["exp_elems_per_s"].values()):
        assert all(math.isfinite(v) and v > 0 for v in rates.values())
        assert rates[2] >= rates[1]                       # more threads never report less
    assert c["read_bytes"] == 4 << 20 and c["exp_row"] == ceilings.EXP_ROW


def test_case_ceiling_is_the_lower_one():
    c = {"read_gbs": {1: 8.0}, "exp_elems_per_s": {"float32": {1: 1e9}}}
    assert ceilings.case_ceiling(c, 1, "float32", 4) == (1e9, "exp")      # mem: 2e9 elem/s
    assert ceilings.case_ceiling(c, 1, "float32", 16) == (5e8, "mem")
    assert ceilings.case_ceiling(c, 2, "float32", 4) == (None, None)
    # after a JSON round trip the thread counts are strings
    back = json.loads(json.dumps(c))
    assert ceilings.case_ceiling(back, 1, "float32", 16) == (5e8, "mem")
    assert ceilings.case_ceiling({}, 1, "float32", 4) == (None, None)


def test_records_speedups_and_fastest_peer():
    case = grid.Case(10, 10, "float32", "loss", 1)
    rows = []
    for name, t, loss in (("fastxent", 1.0, 2.0), ("reference", 4.0, 2.0), ("torch", 2.0, 2.5),
                          ("sklearn", 0.5, 2.0)):
        rec = records.new_record(case, name, 1)
        rec.update(best_s=t, loss=loss)
        rows.append(records.fill_rates(rec, {"read_gbs": {1: 1.0}}))
    records.add_speedups(rows)
    fx, ref, torch_, skl = rows
    assert fx["fastest_peer"] == "torch" and fx["vs_fastest"] == 2.0   # sklearn: not same work
    assert ref["fastxent_speedup"] == 4.0 and skl["fastxent_speedup"] == 0.5
    assert ref["loss_matches"] and not torch_["loss_matches"]
    assert fx["bound"] == "mem" and fx["pct_ceiling"] == pytest.approx(100 * 100 / (1e9 / 4.8))


# ------------------------------------------------------------------ a whole smoke run
_SMOKE_CHILD = """
import io, sys
from fastxent._bench import run, saved
out, progress = io.StringIO(), io.StringIO()
results = run.run("smoke", out=out, progress=progress, threads_scaling=True, linear=False)
saved.save_json(results, sys.argv[1])
open(sys.argv[2], "w").write(out.getvalue())
open(sys.argv[3], "w").write(progress.getvalue())
"""


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """A whole smoke run with every installed peer: (results as saved in JSON, report text,
    progress text).  It runs in a child process, because peers such as jax start threads that
    a later fork() in this test process must not inherit.  The linear case runs in
    test_cli_smoke_json_plot_report (and tests/test_linear.py)."""
    where = tmp_path_factory.mktemp("smoke")
    paths = [where / name for name in ("results.json", "report.txt", "progress.txt")]
    proc = subprocess.run([sys.executable, "-c", _SMOKE_CHILD] + [str(p) for p in paths],
                          capture_output=True, text=True, cwd=where)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return (saved.load_results(paths[0]),) + tuple(p.read_text() for p in paths[1:])


def _main_table(text):
    """The lines of the main table (from its header to the first blank line)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("case "))
    end = next(i for i in range(start, len(lines)) if not lines[i].strip())
    return lines[start:end]


def _impl_column(text):
    """The implementation names of the main table's rows."""
    width = report.MAIN.cols[0][1] + 2
    return {line[width:].split()[0] for line in _main_table(text)[2:]}


def test_smoke_run_has_every_case_and_peer(smoke_run):
    results, text, _ = smoke_run
    impls = peers.select_impls(False)
    names = {i.name for i in impls}
    assert set(results["impls"]) == names
    rows = results["results"]
    for case in grid.grid("smoke"):
        got = {r["impl"] for r in rows if r["id"] == case.id}
        assert got == {i.name for i in impls if i.supports(case)}, case.label
    for r in rows:
        assert "error" not in r, r
    assert _impl_column(text) == names


def test_smoke_run_figures_are_sane(smoke_run):
    results, _, _ = smoke_run
    for r in results["results"] + results["threads_scaling"]:
        assert r["best_s"] > 0 and r["median_s"] >= r["best_s"]
        assert r["elements_per_s"] > 0 and r["gb_per_s"] > 0
        assert math.isfinite(r["pct_ceiling"]) and r["pct_ceiling"] > 0
        assert r["bound"] in ("mem", "exp")
        assert r["ceiling_elems_per_s"] > 0
    for _, group in itertools.groupby(results["results"], key=lambda r: r["id"]):
        group = list(group)
        fx = next(r for r in group if r["impl"] == "fastxent")
        same = [r for r in group if r["impl"] != "fastxent"
                and next(i for i in peers.IMPLS if i.name == r["impl"]).same_work]
        for r in group:
            assert r["fastxent_speedup"] > 0
            # every peer computes the same loss as fastxent
            assert r.get("loss_matches", True), (r["impl"], r["case"], r["loss"], fx["loss"])
        if same:
            fastest = min(same, key=lambda r: r["best_s"])
            assert fx["fastest_peer"] == fastest["impl"]
            assert fx["vs_fastest"] == pytest.approx(fastest["best_s"] / fx["best_s"])
    for r in results["threads_scaling"]:
        assert r["scaling_speedup"] > 0
    score = results["score"]                  # fastxent score beside the kernel and a plain read
    assert score["rows"] == run.SCORE_ROWS["smoke"] and score["classes"] == 1000
    for key in ("score", "kernel", "read"):
        assert score["warm"][key] > 0
    assert score["warm"]["score_vs_kernel"] == pytest.approx(
        score["warm"]["score"] / score["warm"]["kernel"])


def test_smoke_run_report_and_progress(smoke_run):
    results, text, progress = smoke_run
    assert "fastxent bench (smoke)" in text
    assert "memory: DRAM read" in text and "exp: fastxent.logsumexp, f64 rows in L2" in text
    assert "% ceil" in text and "fastest peer" in text
    assert "threads scaling" in text and "geometric mean" in text
    assert "score: 2,000 x 1,000 float32 logits" in text and "warm cache: score" in text
    n = len(grid.grid("smoke")) + len(grid.scaling_cases("smoke"))
    lines = progress.splitlines()
    assert lines[0] == "case 1 of %d: %s" % (n, grid.grid("smoke")[0].label)
    assert lines[-1].startswith(f"case {n} of {n}: ")
    assert len(lines) == n
    for case in grid.grid("smoke"):
        assert any(line.startswith(case.label) for line in _main_table(text)), case.label


def test_json_round_trip_reprints_the_same_table(smoke_run, tmp_path):
    results, text, _ = smoke_run
    path = tmp_path / "bench.json"
    saved.save_json(results, path)
    back = saved.load_results(path)
    assert len(back["results"]) == len(results["results"])
    out = io.StringIO()
    report.print_report(back, out)
    assert _main_table(out.getvalue()) == _main_table(text)
    assert "memory: DRAM read" in out.getvalue()


def test_plot_writes_a_png(smoke_run, tmp_path):
    path = tmp_path / "bench.png"
    plot.plot(smoke_run[0], path)
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(path) > 20_000
    with pytest.raises(grid.BenchError, match="--plot: no fastxent results"):
        plot.plot(dict(smoke_run[0], results=[]), tmp_path / "empty.png")


def test_load_results_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(grid.BenchError, match="is not JSON"):
        saved.load_results(bad)
    other = tmp_path / "other.json"
    other.write_text("[1, 2]")
    with pytest.raises(grid.BenchError, match="neither"):
        saved.load_results(other)
    with pytest.raises(grid.BenchError, match="cannot read"):
        saved.load_results(tmp_path / "missing.json")


# ------------------------------------------------------------------ bench/ (pytest-benchmark)
def test_pytest_benchmark_suite_reads_back(tmp_path):
    """bench/ on the smoke grid (one shape, two implementations), its JSON turned into the
    report: the same cases, the ceilings carried in extra_info."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = tmp_path / "pb.json"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           os.path.join(root, "bench", "test_bench_xent.py"), "--xent-grid=smoke",
           "--xent-impls=fastxent,reference", "-k", "64x512", "--benchmark-only",
           "--benchmark-max-time=0.0001", "--benchmark-min-rounds=1",
           "--benchmark-warmup=off", f"--benchmark-json={path}"]
    # run outside the repository so that the child imports the installed fastxent, not the source tree
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    back = saved.load_results(path)
    cases = [c for c in grid.grid("smoke") if (c.n, c.c) == (64, 512)]
    assert {r["id"] for r in back["results"]} == {c.id for c in cases}
    assert len(back["results"]) == 2 * len(cases)
    for r in back["results"]:
        assert r["best_s"] > 0 and math.isfinite(r["pct_ceiling"])
        assert r["fastxent_speedup"] > 0
    out = io.StringIO()
    report.print_report(back, out)
    assert "memory: DRAM read" in out.getvalue() and cases[0].label in out.getvalue()


# ------------------------------------------------------------------ the command
def test_cli_smoke_json_plot_report(tmp_path, capsys, monkeypatch):
    # the wiring of the command, on a grid smaller still
    monkeypatch.setitem(grid.SHAPES, "smoke", ((8, 16),))
    monkeypatch.setitem(grid.FAMILY_SHAPES, "smoke", ((8, 16),))
    monkeypatch.setitem(grid.DTYPES, "smoke", ("float32",))
    js, png = tmp_path / "r.json", tmp_path / "r.png"
    rc = cli.main(["bench", "--smoke", "--impls", "fastxent,reference", "--json", str(js),
                   "--plot", str(png), "--no-progress"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "results saved to" in out and "figure saved to" in out
    assert err == ""
    saved_run = json.loads(js.read_text())
    assert saved_run["mode"] == "smoke"
    assert [r["impl"] for r in saved_run["linear"]] == ["fastxent", "naive"]
    assert all(r["best_s"] > 0 and "error" not in r for r in saved_run["linear"])
    assert "fused linear cross-entropy" in out
    rc = cli.main(["bench", "--report", str(js)])
    out2, _ = capsys.readouterr()
    assert rc == 0 and _main_table(out2) == _main_table(out)


@pytest.mark.parametrize("argv, message", [
    (["--smoke", "--full"], "--smoke: cannot be combined with --full"),
    (["--report", "x.json", "--smoke"], "--report: only --plot can be combined with it"),
    (["--impls", "reference"], "--impls: must include fastxent"),
    (["--impls", "fastxent,nope"], "--impls: unknown implementation 'nope'"),
])
def test_cli_bench_errors(argv, message, capsys):
    rc = cli.main(["bench"] + argv)
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith(f"fastxent: error: {message}"), err


def test_linear_impl_selection():
    names = [i.name for i in linear.select_linear_impls("fastxent")]
    assert names == ["fastxent", "naive"]


class _Failing(peers.Impl):
    """A peer that fails on its first call (``at=1``) or on a later one."""

    name = "failing"

    def __init__(self, at):
        self.at = at

    def prepare(self, case, data):
        calls = []

        def fn():
            calls.append(1)
            if len(calls) >= self.at:
                raise RuntimeError("no luck\nsecond line")
            return 1.0
        return fn


@pytest.mark.parametrize("at", [1, 2])
def test_a_failing_peer_becomes_an_error_row(at):
    case = grid.Case(4, 3, "float32", "loss", 1)
    rec = run.measure_case(case, _Failing(at), grid.Inputs(4, 3, "float32"), {},
                           {"budget": 0.0, "min_repeats": 2})
    assert rec["error"] == "RuntimeError: no luck" and "best_s" not in rec
    ok = records.fill_rates(dict(records.new_record(case, "fastxent", 1), best_s=1e-3), {})
    records.add_speedups([ok, rec])
    out = io.StringIO()
    report.print_case([ok, rec], out)
    assert out.getvalue().splitlines()[1].split()[:2] == ["failing", "error"]
    assert "RuntimeError: no luck" in out.getvalue()
