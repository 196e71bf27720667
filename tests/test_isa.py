"""Instruction-set levels: the kernels built per level, the choice at import (CPU detection,
FASTXENT_ISA), ``fastxent._kernels.use``, what ``show_config`` reports, and the same results
from every level this CPU supports.

The representative modules of the suite (extremes, precision, gradients, the probability family
and binary cross-entropy) also run under every supported level (``every_isa`` in conftest.py).
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastxent
from fastxent import _kernels
from fastxent._build_info import BUILD_INFO

X86_64 = ("x86-64-v2", "x86-64-v3", "x86-64-v4")
SIMD = {"x86-64-v2": "SSE4.2, 128-bit vectors", "x86-64-v3": "AVX2+FMA, 256-bit vectors",
        "x86-64-v4": "AVX-512, 512-bit vectors"}
DISPATCHED = BUILD_INFO["build"] == "dispatched"
SUPPORTED = _kernels.supported()
x86_only = pytest.mark.skipif(not DISPATCHED, reason="the x86-64 levels are built on x86-64 only")


@pytest.fixture
def restore_level():
    before = _kernels.level, _kernels.chosen_by
    yield
    _kernels.use(before[0])
    _kernels.chosen_by = before[1]


def run_python(code, *args, **env):
    """Run ``code`` in a fresh interpreter with ``env`` added (FASTXENT_ISA removed unless given)."""
    full = {k: v for k, v in os.environ.items() if k != "FASTXENT_ISA"}
    full.update(env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          env=full, cwd=os.path.dirname(sys.executable), timeout=300)


# ------------------------------------------------------------------ what is built
def test_levels_built():
    assert _kernels.LEVELS == tuple(lv["name"] for lv in BUILD_INFO["levels"])
    if DISPATCHED:
        assert _kernels.LEVELS == X86_64
        assert {lv["name"]: lv["simd"] for lv in BUILD_INFO["levels"]} == SIMD
        for lv in BUILD_INFO["levels"]:
            assert "-DFX_ISA_LEVEL=%s" % lv["name"][-1] in lv["flags"]
        assert "-mprefer-vector-width=512" in BUILD_INFO["levels"][-1]["flags"]
    else:
        assert _kernels.LEVELS == (BUILD_INFO["build"],)        # "native" or "generic"
    assert set(_kernels.FAMILIES) >= {"xent", "probs"}


def test_cpu_runs_its_levels():
    """This CPU runs at least the baseline, and the levels it runs are a prefix (v4 implies v3)."""
    assert SUPPORTED and SUPPORTED == list(_kernels.LEVELS[:len(SUPPORTED)])
    if DISPATCHED:
        features = _kernels.cpu_features()
        assert features["sse4_2"] and features["popcnt"]
        assert ("x86-64-v4" in SUPPORTED) == all(features[f] for f in
                                                  ("avx512f", "avx512bw", "avx512dq", "avx512vl", "os_avx512"))


def test_import_picks_the_best_level():
    p = run_python("import fastxent, json; c = fastxent.config(); "
                   "print(json.dumps([c['isa'], c['isa_chosen_by']]))")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == [SUPPORTED[-1], "CPU"]


@pytest.mark.parametrize("level", SUPPORTED)
def test_fastxent_isa_forces_a_level(level):
    p = run_python("""
        import fastxent, json, numpy as np
        from fastxent import _kernels
        c = fastxent.config()
        names = sorted(getattr(_kernels, f).__name__ for f in _kernels.FAMILIES)
        print(json.dumps([c['isa'], c['isa_chosen_by'], names, float(fastxent.logsumexp(np.arange(3.0)))]))
        """, FASTXENT_ISA=level)
    assert p.returncode == 0, p.stderr
    isa, by, names, lse = json.loads(p.stdout)
    suffix = level.replace("-", "_")
    assert (isa, by) == (level, "FASTXENT_ISA")
    assert names == sorted(f"fastxent._{f}_{suffix}" for f in _kernels.FAMILIES)
    assert lse == pytest.approx(np.log(np.exp(np.arange(3.0)).sum()), rel=1e-15)


@pytest.mark.parametrize("value", ["x86-64-v9", "avx512", "native-ish"])
def test_fastxent_isa_unknown_is_refused(value):
    p = run_python("import fastxent", FASTXENT_ISA=value)
    assert p.returncode != 0
    last = p.stderr.strip().splitlines()[-1]
    assert last == (f"ImportError: FASTXENT_ISA={value}: unknown instruction-set level {value!r}; "
                    f"this build has {', '.join(_kernels.LEVELS)}")


# ------------------------------------------------------------------ a CPU that lacks a level
def fake_cpu(**off):
    """The features of an x86-64 CPU that has every known feature except the ones set False."""
    features = dict.fromkeys(_kernels.cpu_features(), True)
    features.update(off)
    return features


V3_CPU = dict.fromkeys(["avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl", "avx512vnni",
                        "avx512bf16", "avx512fp16", "avx512ifma", "avx512vbmi", "avx512vbmi2",
                        "avx512bitalg", "avx512vpopcntdq", "os_avx512"], False)
OLD_CPU = dict(V3_CPU, sse4_2=False, popcnt=False, sse4_1=False, avx=False, avx2=False, fma=False, os_avx=False)


@x86_only
def test_missing_features_of_a_level():
    assert _kernels.missing("x86-64-v4", fake_cpu(**V3_CPU)) == [
        "avx512bw", "avx512cd", "avx512dq", "avx512f", "avx512vl", "os_avx512"]
    assert _kernels.supported(fake_cpu(**V3_CPU)) == ["x86-64-v2", "x86-64-v3"]
    # the CPU has AVX-512 but the operating system does not save its registers
    assert _kernels.missing("x86-64-v4", fake_cpu(os_avx512=False)) == ["os_avx512"]
    assert _kernels.missing("x86-64-v3", fake_cpu(os_avx=False)) == ["os_avx"]
    assert _kernels.supported(fake_cpu(os_avx=False)) == ["x86-64-v2"]
    assert _kernels.supported(fake_cpu(**OLD_CPU)) == []
    with pytest.raises(ValueError, match=r"^this CPU cannot run the x86-64-v4 kernels: it lacks os_avx512 "
                                         r"\(os_avx / os_avx512: the operating system does not enable those "
                                         r"registers\); it runs x86-64-v2, x86-64-v3$"):
        _kernels._check("x86-64-v4", fake_cpu(os_avx512=False))


def import_on(features, **env):
    """Import fastxent in a fresh interpreter whose CPU reader reports ``features``."""
    return run_python("""
        import json, sys, types
        cpu = types.ModuleType("fastxent._cpu")          # stands in for the CPUID reader
        cpu.features = lambda: json.loads(sys.argv[1])
        cpu.brand = lambda: "a test CPU"
        sys.modules["fastxent._cpu"] = cpu
        import fastxent
        print(fastxent.config()["isa"])
        """, json.dumps(features), **env)


@x86_only
def test_import_on_a_cpu_without_avx512():
    p = import_on(fake_cpu(**V3_CPU))
    assert p.returncode == 0 and p.stdout.strip() == "x86-64-v3", p.stderr
    p = import_on(fake_cpu(**V3_CPU), FASTXENT_ISA="x86-64-v4")
    assert p.returncode != 0
    assert p.stderr.strip().splitlines()[-1] == (
        "ImportError: FASTXENT_ISA=x86-64-v4: this CPU cannot run the x86-64-v4 kernels: it lacks avx512bw, "
        "avx512cd, avx512dq, avx512f, avx512vl, os_avx512 (os_avx / os_avx512: the operating system does not "
        "enable those registers); it runs x86-64-v2, x86-64-v3")


@x86_only
def test_import_on_a_cpu_below_the_baseline():
    p = import_on(fake_cpu(**OLD_CPU))
    assert p.returncode != 0
    assert p.stderr.strip().splitlines()[-1] == (
        "ImportError: fastxent cannot run on this CPU: its lowest kernel level, x86-64-v2, needs popcnt, "
        "sse4_1, sse4_2")


CHECK_ISA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "check_isa.py")


@x86_only
@pytest.mark.skipif(not os.path.exists(CHECK_ISA), reason="tools/ is not next to these tests")
@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump (GNU binutils)")
def test_machine_code_matches_levels():
    """No module holds an instruction beyond its level (e.g. AVX leaking into x86-64-v2 through
    CFLAGS), and the x86-64-v4 modules really use 512-bit vectors."""
    p = subprocess.run([sys.executable, CHECK_ISA, os.path.dirname(_kernels.__file__)], capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    rows = {line.split()[0]: line.split() for line in p.stdout.splitlines()[1:]}
    for fam in _kernels.FAMILIES:
        assert int(rows[f"_{fam}_x86_64_v4"][6]) > 0                 # 512-bit instructions
        assert int(rows[f"_{fam}_x86_64_v2"][4]) == 0                # no VEX 128-bit


# ------------------------------------------------------------------ use() and show_config()
def test_use_switches_every_family(restore_level):
    x = np.random.default_rng(0).standard_normal((50, 7))
    t = np.arange(50) % 7
    expected = fastxent.cross_entropy(x, t)
    for level in SUPPORTED:
        assert _kernels.use(level) == level
        suffix = level.replace("-", "_")
        for fam in _kernels.FAMILIES:
            assert getattr(_kernels, fam).__name__ == f"fastxent._{fam}_{suffix}"
        c = fastxent.config()
        assert (c["isa"], c["isa_chosen_by"]) == (level, "use()")
        assert fastxent.cross_entropy(x, t) == pytest.approx(expected, rel=1e-14)


@pytest.mark.parametrize("name", ["x86-64-v5", "", "X86-64-V2"])
def test_use_refuses_unknown_levels(name, restore_level):
    before = _kernels.level, _kernels.xent
    with pytest.raises(ValueError, match=rf"^unknown instruction-set level {name!r}; this build has "):
        _kernels.use(name)
    assert (_kernels.level, _kernels.xent) == before


def test_show_config_reports_levels(capsys, restore_level):
    fastxent.show_config()
    out = dict(line.split(" : ", 1) for line in capsys.readouterr().out.splitlines())
    out = {k.strip(): v for k, v in out.items()}
    level = _kernels.level
    assert out["isa"].startswith(f"{level}: {BUILD_INFO['levels'][_kernels.LEVELS.index(level)]['simd']} (")
    assert out["cpu"].endswith("(runs %s)" % ", ".join(SUPPORTED))
    for lv in BUILD_INFO["levels"]:
        assert f"{lv['name']}: {lv['simd']}" in out["isa built"]
    assert out["isa built"].endswith(f"[{BUILD_INFO['build']} build]")
    for flag in BUILD_INFO["levels"][_kernels.LEVELS.index(level)]["flags"]:
        assert flag in out["compile flags"].split()
    _kernels.use(SUPPORTED[0])
    fastxent.show_config()
    out = capsys.readouterr().out
    assert f"isa             : {SUPPORTED[0]}: " in out and "(chosen with fastxent._kernels.use())" in out
    if DISPATCHED:
        assert "isa             : x86-64-v2: SSE4.2, 128-bit vectors (chosen" in out


def test_config_json_lists_levels(restore_level):
    c = json.loads(json.dumps(fastxent.config()))
    assert c["isa"] == _kernels.level and c["isa_supported"] == SUPPORTED
    assert list(c["isa_built"]) == list(_kernels.LEVELS)
    assert c["simd"] == c["isa_built"][c["isa"]]


# ------------------------------------------------------------------ the same results on every level
# Largest difference between the results of two levels, in units in the last place (ulp) of
# max(|a|, |b|, floor):
#   * "value": per-row values of the logits (loss, log-sum-exp, log-softmax); floor: the row's
#     largest |logit| (the magnitude of the numbers the last subtraction cancels);
#   * "grad": gradients, against their natural unit (1 for reduction="none": floor 1), as the
#     rest of the suite measures gradients (entries such as p - 1 cancel to far below it);
#   * "prob": softmax, relative to each probability (floor 0);
#   * "elem": elementwise terms of the probability family (binary cross-entropy, d/dq), relative;
#   * "sum": per-row sums of the probability family (p log q, entropy, KL), relative.
# Values, gradients and the row sums of the probability family agree within 2 ulp on every level
# (row sums are kept in 16 partial sums combined in a fixed order, whatever the vector width).
# x86-64-v3 and x86-64-v4 evaluate the exp/log/tanh polynomials with the same fused
# multiply-adds, so their softmax and elementwise terms agree within 2 ulp too; the baseline has
# no FMA (each product is rounded before the add): up to 5 ulp measured there.
ULP = {  # kind: (between the FMA levels, between the baseline and the others)
    "value": (2, 2),
    "grad": (2, 2),
    "prob": (2, 6),
    "elem": (2, 6),
    "sum": (2, 2),
}


def ulps(a, b, floor=0.0):
    """Largest |a - b| in ulp of max(|a|, |b|, floor); NaN and inf must be in the same places."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    finite = np.isfinite(a) & np.isfinite(b)
    assert np.array_equal(a[~finite], b[~finite], equal_nan=True)
    floor = np.broadcast_to(np.asarray(floor, dtype=np.float64), a.shape)[finite]
    a, b = a[finite], b[finite]
    if a.size == 0:
        return 0.0
    scale = np.maximum(np.maximum(np.abs(a), np.abs(b)).astype(np.float64), floor).astype(a.dtype)
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)) / np.spacing(scale)))


def _logits(rng, n, c, dtype):
    x = rng.standard_normal((n, c)) * 4
    x[rng.random((n, c)) < 0.02] = -np.inf                 # masked classes
    x[0, :2] = (1e4, -1e4)
    return x.astype(dtype)


def _outputs(dtype, n, c):
    """Every kernel family's results on one input (each entry: kind, result, floor)."""
    rng = np.random.default_rng(n * 7919 + c)
    x = _logits(rng, n, c, dtype)
    t = rng.integers(0, c, n)
    t[x[np.arange(n), t] == -np.inf] = 0                     # a masked target makes the loss inf
    row_max = np.max(np.abs(np.where(np.isfinite(x), x, 0)), axis=1, keepdims=True).astype(np.float64)
    p = rng.dirichlet(np.ones(c), n).astype(dtype)
    q = rng.dirichlet(np.ones(c), n).astype(dtype)
    y = (rng.random((n, c)) < 0.5).astype(dtype)
    w = rng.uniform(0.5, 2.0, c)
    opts = dict(reduction="none", label_smoothing=0.1, z_loss=1e-3, weight=w)
    out = {}
    loss, grad = fastxent.cross_entropy_with_grad(x, t, reduction="none", num_threads=2)
    out["cross_entropy"] = ("value", loss, row_max[:, 0])
    out["cross_entropy grad"] = ("grad", grad, 1.0)
    loss, grad = fastxent.cross_entropy_with_grad(x, t, num_threads=2, **opts)
    out["cross_entropy options"] = ("value", loss, row_max[:, 0])
    out["cross_entropy options grad"] = ("grad", grad, 1.0)
    loss, grad = fastxent.cross_entropy_with_grad(x, t, reduction="none", softcap=5.0)
    out["cross_entropy softcap"] = ("value", loss, 5.0)
    out["cross_entropy softcap grad"] = ("grad", grad, 1.0)
    out["cross_entropy mean"] = ("value", fastxent.cross_entropy(x, t, weight=w), float(row_max.max()))
    out["logsumexp"] = ("value", fastxent.logsumexp(x, num_threads=2), row_max[:, 0])
    out["log_softmax"] = ("value", fastxent.log_softmax(x), row_max)
    out["softmax"] = ("prob", fastxent.softmax(x, num_threads=2), 0.0)
    out["cross_entropy_from_probs"] = ("sum", fastxent.cross_entropy_from_probs(p, q, reduction="none"), 0.0)
    out["cross_entropy_from_probs grad"] = (
        "elem", fastxent.cross_entropy_from_probs_with_grad(p, q, reduction="none")[1], 0.0)
    out["entropy"] = ("sum", fastxent.entropy(p), 0.0)
    out["kl_divergence"] = ("sum", fastxent.kl_divergence(p, q), 0.0)
    out["binary_cross_entropy"] = ("elem", fastxent.binary_cross_entropy(p, y, reduction="none"), 0.0)
    out["binary_cross_entropy grad"] = (
        "elem", fastxent.binary_cross_entropy_with_grad(p, y, reduction="none")[1], 0.0)
    bl = np.where(np.isfinite(x), x, 0).astype(dtype)
    out["binary_cross_entropy_with_logits"] = (
        "elem", fastxent.binary_cross_entropy_with_logits(bl, y, reduction="none"), 0.0)
    out["binary_cross_entropy_with_logits grad"] = (
        "grad", fastxent.binary_cross_entropy_with_logits_with_grad(bl, y, reduction="none")[1], 1.0)
    return out


@pytest.mark.skipif(len(SUPPORTED) < 2, reason="this CPU runs one kernel level only")
@pytest.mark.parametrize("shape", [(5, 3), (300, 10), (64, 1000), (3, 70000)], ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_every_level_gives_the_same_results(dtype, shape, restore_level):
    results = {}
    for level in SUPPORTED:
        _kernels.use(level)
        results[level] = _outputs(dtype, *shape)
    top = SUPPORTED[-1]
    failures = []
    for level in SUPPORTED[:-1]:
        column = 1 if level == "x86-64-v2" else 0
        for name, (kind, got, floor) in results[level].items():
            d = ulps(got, results[top][name][1], floor)
            if d > ULP[kind][column]:
                failures.append(f"{name}: {level} vs {top}: {d:g} ulp > {ULP[kind][column]}")
    assert not failures, "\n".join(failures)
