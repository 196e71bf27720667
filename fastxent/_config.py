"""Build and runtime configuration: ``fastxent.show_config()`` / ``python -m fastxent info``."""
import os
import platform

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


def config():
    """The configuration as a dict (see ``show_config``)."""
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


def show_config():
    """Print version, OpenMP on/off and runtime, default thread count, compiler and flags,
    and the SIMD level the kernels were built for."""
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
