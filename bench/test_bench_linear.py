"""Fused linear cross-entropy benchmark: fastxent.linear_cross_entropy vs the naive path.

Each case -- hidden (N, d), weight (V, d), float32, loss + grad_hidden + grad_weight, all cores
-- is one ``benchmark.group`` holding ``fastxent`` (row chunks, no N x V logits), ``naive``
(materialise the logits, ``cross_entropy_with_grad(inplace=True)``, the two products) and
``torch`` (F.linear + F.cross_entropy + backward) when installed and when its N x V tensors
fit.  The grid, inputs and implementations come from ``fastxent._bench.linear`` (``linear_grid``,
``LinearInputs``, ``LINEAR_IMPLS``), the same definitions ``fastxent bench`` uses.  Each case
also records its peak extra memory (measured in a subprocess) in ``extra_info``;
``fastxent bench --report out.json`` prints the time and memory ratios.

    pytest bench/test_bench_linear.py --benchmark-only                      # quick shape
    pytest bench/test_bench_linear.py --benchmark-only --xent-grid=full     # N=8192 d=1024 V=131072
"""
import gc

import pytest

from fastxent._bench import linear, machine


def pytest_generate_tests(metafunc):
    if "linear_case" not in metafunc.fixturenames:
        return
    mode = metafunc.config.getoption("--xent-grid")
    impls = linear.select_linear_impls(metafunc.config.getoption("--xent-impls"))
    params = [pytest.param(case, impl, id=f"{case.id}-{impl.name}")
              for case in linear.linear_grid(mode) for impl in impls if impl.supports(case)]
    metafunc.parametrize(("linear_case", "linear_impl"), params)


@pytest.fixture(scope="module")
def _linear_data_cache():
    cache = {}
    yield cache
    cache.clear()


@pytest.fixture
def linear_inputs(linear_case, _linear_data_cache):
    key = (linear_case.n, linear_case.d, linear_case.v, linear_case.dtype)
    if key not in _linear_data_cache:
        _linear_data_cache.clear()
        gc.collect()
        _linear_data_cache[key] = linear.LinearInputs(*key)
    return _linear_data_cache[key]


def test_linear_cross_entropy(benchmark, linear_case, linear_impl, linear_inputs):
    case, impl = linear_case, linear_impl
    benchmark.group = "linear " + case.label
    benchmark.extra_info.update(linear.linear_extra_info(case, impl))
    benchmark.extra_info.update(linear.measure_linear_memory(case, impl))
    with machine.all_pools(case.threads), impl.threads(case.threads):
        fn = impl.prepare(case, linear_inputs)
        fn()                                     # warm-up outside the timing
        benchmark.pedantic(fn, rounds=linear.LINEAR_MIN_ROUNDS, iterations=1)
