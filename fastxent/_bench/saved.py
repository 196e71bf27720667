"""Results on disk: ``fastxent bench --json`` writes them; ``--report FILE`` reads them back,
or converts the JSON of the pytest-benchmark suite in bench/ (whose ``extra_info`` carries the
case and the ceilings) into the same results.

Layer: above records.py and linear.py; cli.py uses it.
"""
import itertools
import json

from .grid import ALL_OPS, BenchError, Case
from .linear import LINEAR_IMPLS, LinearCase, linear_ratios
from .peers import IMPLS
from .records import add_speedups, fill_rates, new_record


def save_json(results, path):
    with open(path, "w") as f:
        json.dump(results, f, indent=1, default=str)


def load_results(path):
    """Load ``fastxent bench --json`` output, or convert a pytest-benchmark JSON file."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except OSError as exc:
        raise BenchError(f"--report: cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise BenchError(f"--report: {path} is not JSON ({exc.msg}, line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise BenchError(f"--report: {path} is not JSON (not UTF-8 text)") from None
    if isinstance(doc, dict) and isinstance(doc.get("results"), list) and "machine" in doc:
        return doc
    if isinstance(doc, dict) and isinstance(doc.get("benchmarks"), list):
        return _from_pytest_benchmark(doc)
    raise BenchError(f"--report: {path} is neither `fastxent bench --json` nor "
                     "pytest-benchmark JSON output")


def _stats(b):
    s = b["stats"]
    return {"best_s": s["min"], "median_s": s["median"], "repeats": s["rounds"],
            "number": s.get("iterations", 1)}


def _from_pytest_benchmark(doc):
    rows, linear = [], []
    ceil = {"read_gbs": {}, "exp_elems_per_s": {}}
    for b in doc["benchmarks"]:
        e = b.get("extra_info") or {}
        if "impl" not in e:
            continue
        if e.get("kind") == "linear":
            lcase = LinearCase(e["n"], e["d"], e["v"], e["dtype"], e["threads"])
            linear.append(dict(e, case=lcase.label, id=lcase.id, **_stats(b),
                               gflops=lcase.flops / b["stats"]["min"] / 1e9))
            continue
        case = Case(e["n"], e["c"], e["dtype"], e["op"], e["threads"])
        if e.get("ceiling_read_gbs"):
            ceil["read_gbs"][case.threads] = e["ceiling_read_gbs"]
        if e.get("ceiling_exp_elems_per_s"):
            ceil["exp_elems_per_s"].setdefault(case.dtype, {})[case.threads] = \
                e["ceiling_exp_elems_per_s"]
        rows.append(dict(new_record(case, e["impl"], e.get("impl_threads", case.threads)),
                         **_stats(b)))
    for rec in rows:
        fill_rates(rec, ceil)
    order = {impl.name: i for i, impl in enumerate(IMPLS)}
    rows.sort(key=lambda r: (r["n"], r["c"], r["dtype"], ALL_OPS.index(r["op"]), r["threads"],
                             order.get(r["impl"], 99)))
    for _, group in itertools.groupby(rows, key=lambda r: r["id"]):
        add_speedups(list(group))
    lorder = {impl.name: i for i, impl in enumerate(LINEAR_IMPLS)}
    linear.sort(key=lambda r: (r["n"], r["d"], r["v"], r["dtype"], r["threads"],
                               lorder.get(r["impl"], 99)))
    for _, group in itertools.groupby(linear, key=lambda r: r["id"]):
        linear_ratios(list(group))
    mi = doc.get("machine_info") or {}
    first = next((b.get("extra_info") or {} for b in doc["benchmarks"]
                  if "impl" in (b.get("extra_info") or {})), {})
    machine = {"cpu": first.get("cpu") or (mi.get("cpu") or {}).get("brand_raw") or "?",
               "usable_cpus": mi.get("fastxent_usable_cpus") or first.get("usable_cpus", "?"),
               "env": mi.get("fastxent_env") or {}, "versions": mi.get("fastxent_versions") or {},
               "fastxent_config": mi.get("fastxent_config")}
    return {"mode": "pytest-benchmark", "date": doc.get("datetime"), "machine": machine,
            "impls": {k: None for k in dict.fromkeys(r["impl"] for r in rows)},
            "ceilings": ceil, "results": rows, "threads_scaling": [], "linear": linear}
