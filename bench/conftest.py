"""pytest-benchmark plumbing for bench/: the grid, inputs and machine figures.

The grid (shapes x dtypes x ops x thread counts), the implementations and the ceilings come
from ``fastxent._bench`` -- the same definitions ``fastxent bench`` uses -- so the two never
drift.  Only installed peers are parametrized.  Options:

    --xent-grid=quick|full|smoke   quick (default), the whole grid (adds float64 and
                                   torch.compile), or tiny sizes (checks that everything runs)
    --xent-impls=LIST              comma-separated subset, e.g. fastxent,torch
"""
import gc

import pytest

from fastxent._bench import ceilings, grid, machine, peers

# Captured before any peer is imported: importing sklearn or torch sets KMP_* variables.
_ENV_AT_START = machine.env_overrides()


def pytest_addoption(parser):
    group = parser.getgroup("fastxent", "fastxent benchmark grid")
    group.addoption("--xent-grid", choices=grid.MODES, default="quick",
                    help="benchmark grid: quick (default), full or smoke")
    group.addoption("--xent-impls", default=None, metavar="LIST",
                    help="comma-separated implementations (default: all installed); known: "
                         + ", ".join(peers.impl_names()))


def pytest_generate_tests(metafunc):
    if "xent_case" not in metafunc.fixturenames:
        return
    mode = metafunc.config.getoption("--xent-grid")
    try:
        impls = peers.select_impls(mode == "full", metafunc.config.getoption("--xent-impls"),
                                   option="--xent-impls")
    except grid.BenchError as exc:
        raise pytest.UsageError(str(exc)) from None
    params = [pytest.param(case, impl, id=f"{case.id}-{impl.name}")
              for case in grid.grid(mode) for impl in impls if impl.supports(case)]
    metafunc.parametrize(("xent_case", "xent_impl"), params)


@pytest.fixture(scope="session")
def xent_ceilings(pytestconfig):
    """The machine's two ceilings (DRAM read bandwidth, fastxent's exp rate per dtype) at the
    grid's thread counts."""
    mode = pytestconfig.getoption("--xent-grid")
    return ceilings.measure(grid.DTYPES[mode], grid.thread_levels(), mode)


@pytest.fixture(scope="session")
def _xent_data_cache():
    cache = {}
    yield cache
    cache.clear()


@pytest.fixture
def xent_inputs(xent_case, _xent_data_cache):
    """Arrays for the case, built outside the timed call and shared by every implementation and
    op of the same (N, C, dtype): cases are generated grouped by shape, so each is built once."""
    key = xent_case.data_key
    if key not in _xent_data_cache:
        _xent_data_cache.clear()
        gc.collect()
        _xent_data_cache[key] = grid.Inputs(*key)
    return _xent_data_cache[key]


def pytest_benchmark_update_machine_info(config, machine_info):
    info = machine.machine_info()
    machine_info["fastxent_usable_cpus"] = info["usable_cpus"]
    machine_info["fastxent_env"] = _ENV_AT_START
    machine_info["fastxent_versions"] = info["versions"]
    machine_info["fastxent_config"] = info.get("fastxent_config")
