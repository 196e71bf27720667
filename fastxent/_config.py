"""Build and runtime configuration: ``fastxent.show_config()`` / ``python -m fastxent info``."""
from __future__ import annotations

import os
import platform
from typing import Any

from . import _cpu, _kernels
from ._build_info import BUILD_INFO

_LEVELS = {level["name"]: level for level in BUILD_INFO["levels"]}
_CHOSEN = {"CPU": "the best this CPU runs", "FASTXENT_ISA": "forced by FASTXENT_ISA",
           "use()": "chosen with fastxent._kernels.use()"}


def _openmp_runtime():
    """Name of the OpenMP runtime library loaded into this process (from /proc/self/maps)."""
    if not _kernels.xent.openmp_enabled():
        return None
    try:
        with open("/proc/self/maps") as f:
            libs = {line.split()[-1] for line in f if "omp" in line.rsplit("/", 1)[-1]}
        return ", ".join(sorted(os.path.basename(p) for p in libs)) or "linked"
    except OSError:
        return "linked"


def config() -> dict[str, Any]:
    """The build and runtime configuration as a dict (what :func:`show_config` prints).

    Returns
    -------
    dict
        version, openmp (bool), openmp_runtime, default_threads, cpu_count, compiler,
        compile_args, link_args, portable_build, simd, machine, python.

    Examples
    --------
    >>> import fastxent
    >>> c = fastxent.config()
    >>> c["version"] == fastxent.__version__, c["default_threads"] >= 1
    (True, True)
    """
    from . import __version__

    openmp = _kernels.xent.openmp_enabled()
    level = _LEVELS[_kernels.level]
    return {
        "version": __version__,
        "openmp": openmp,
        "openmp_runtime": _openmp_runtime(),
        "default_threads": _kernels.xent.max_threads(),
        "cpu_count": os.cpu_count(),
        "compiler": BUILD_INFO.get("compiler"),
        "compile_args": list(BUILD_INFO.get("compile_args", [])),
        "link_args": list(BUILD_INFO.get("link_args", [])),
        "build": BUILD_INFO["build"],
        "isa": level["name"],
        "isa_chosen_by": _kernels.chosen_by,
        "simd": level["simd"],
        "isa_flags": list(level["flags"]),
        "isa_built": {name: lv["simd"] for name, lv in _LEVELS.items()},
        "isa_supported": _kernels.supported(),
        "cpu": _cpu.brand() or platform.processor() or None,
        "machine": platform.machine(),
        "python": platform.python_version(),
    }


def show_config() -> None:
    """Print the version, OpenMP on/off and runtime, the default thread count, the CPU, the
    kernels' instruction-set level in use and the levels built, the compiler and flags.

    Examples
    --------
    >>> import fastxent
    >>> fastxent.show_config()          # doctest: +ELLIPSIS
    fastxent ...
    """
    c = config()
    omp = "on (%s)" % c["openmp_runtime"] if c["openmp"] else "off (single threaded build)"
    lines = [
        ("fastxent", c["version"]),
        ("openmp", omp),
        ("default threads", "%d (of %s CPUs; OMP_NUM_THREADS / threadpoolctl / num_threads=)"
         % (c["default_threads"], c["cpu_count"])),
        ("cpu", "%s (runs %s)" % (c["cpu"] or "unknown", ", ".join(c["isa_supported"]) or "-")),
        ("isa", "%s: %s (%s)" % (c["isa"], c["simd"], _CHOSEN[c["isa_chosen_by"]])),
        ("isa built", "; ".join("%s: %s" % kv for kv in c["isa_built"].items())
         + " [%s build]" % c["build"]),
        ("compiler", c["compiler"]),
        ("compile flags", " ".join(c["compile_args"] + c["isa_flags"])),
        ("link flags", " ".join(c["link_args"]) or "-"),
        ("machine", "%s, Python %s" % (c["machine"], c["python"])),
    ]
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        print(f"{k:<{width}} : {v}")
