"""Build and runtime configuration: ``fastxent.show_config()`` / ``python -m fastxent info``."""
from __future__ import annotations

import os
import platform
from typing import Any

from ._kernels import xent as _xent

try:
    from ._build_info import BUILD_INFO
except ImportError:  # pragma: no cover - only when built without setup.py
    BUILD_INFO = {"openmp": _xent.openmp_enabled(), "compiler": "unknown", "compile_args": [],
                  "link_args": [], "portable": None}


def _openmp_runtime():
    """Name of the OpenMP runtime library loaded into this process (from /proc/self/maps)."""
    if not _xent.openmp_enabled():
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

    openmp = _xent.openmp_enabled()
    return {
        "version": __version__,
        "openmp": openmp,
        "openmp_runtime": _openmp_runtime(),
        "default_threads": _xent.max_threads(),
        "cpu_count": os.cpu_count(),
        "compiler": BUILD_INFO.get("compiler"),
        "compile_args": list(BUILD_INFO.get("compile_args", [])),
        "link_args": list(BUILD_INFO.get("link_args", [])),
        "portable_build": BUILD_INFO.get("portable"),
        "simd": _xent.simd_level(),
        "machine": platform.machine(),
        "python": platform.python_version(),
    }


def show_config() -> None:
    """Print the version, OpenMP on/off and runtime, the default thread count, the compiler and
    flags, and the SIMD level the kernels were built for.

    Examples
    --------
    >>> import fastxent
    >>> fastxent.show_config()          # doctest: +ELLIPSIS
    fastxent        : ...
    openmp          : ...
    """
    c = config()
    omp = "on (%s)" % c["openmp_runtime"] if c["openmp"] else "off (single threaded build)"
    lines = [
        ("fastxent", c["version"]),
        ("openmp", omp),
        ("default threads", "%d (of %s CPUs; OMP_NUM_THREADS / threadpoolctl / num_threads=)"
         % (c["default_threads"], c["cpu_count"])),
        ("compiler", c["compiler"]),
        ("compile flags", " ".join(c["compile_args"])),
        ("link flags", " ".join(c["link_args"]) or "-"),
        ("simd", c["simd"] + (" [portable build]" if c["portable_build"] else "")),
        ("machine", "%s, Python %s" % (c["machine"], c["python"])),
    ]
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        print(f"{k:<{width}} : {v}")
