"""The machine a benchmark runs on: usable CPUs, CPU model, cache and memory sizes, the
environment variables that change thread pools, versions, and a threadpoolctl limit.

Layer: the bottom of ``fastxent._bench`` (imports nothing from it).  Only reads the system;
ceilings.py measures the machine's speed.
"""
import contextlib
import importlib.metadata
import os
import platform

ENV_PREFIXES = ("OMP_", "GOMP_", "KMP_", "OPENBLAS_", "MKL_", "BLIS_", "FASTXENT_", "XLA_",
                "TORCHINDUCTOR_")
PEER_DISTRIBUTIONS = ("numpy", "scipy", "scikit-learn", "torch", "jax", "jaxlib", "threadpoolctl",
                      "matplotlib", "pytest-benchmark", "Cython")


def all_cores():
    """CPUs this process may run on (the "all cores" thread count)."""
    if hasattr(os, "process_cpu_count"):          # Python 3.13+
        n = os.process_cpu_count()
    elif hasattr(os, "sched_getaffinity"):
        n = len(os.sched_getaffinity(0))
    else:
        n = os.cpu_count()
    return max(1, n or 1)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_bytes(level):
    """Size of the level-``level`` data or unified cache of CPU 0 (Linux sysfs), or None."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for index in sorted(os.listdir(base)):
            path = os.path.join(base, index)
            with open(os.path.join(path, "level")) as f:
                if int(f.read()) != level:
                    continue
            with open(os.path.join(path, "type")) as f:
                if f.read().strip() == "Instruction":
                    continue
            with open(os.path.join(path, "size")) as f:
                s = f.read().strip().upper()
            mult = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(s[-1:], 1)
            return int(s.rstrip("KMG")) * mult
    except (OSError, ValueError):
        pass
    return None


def mem_available():
    """MemAvailable of /proc/meminfo in bytes, or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


@contextlib.contextmanager
def all_pools(n):
    """BLAS and OpenMP pools limited to ``n`` threads (threadpoolctl), if installed."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=n):
        yield


def env_overrides():
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith(ENV_PREFIXES)}


def versions():
    out = {"python": platform.python_version()}
    for dist in PEER_DISTRIBUTIONS:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    try:
        import fastxent
        out["fastxent"] = fastxent.__version__
    except ImportError:
        pass
    return out


def machine_info():
    info = {
        "cpu": cpu_model(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "cpu_count": os.cpu_count(),
        "usable_cpus": all_cores(),
        "l2_bytes": cache_bytes(2),
        "l3_bytes": cache_bytes(3),
        "platform": platform.platform(),
        "env": env_overrides(),
        "versions": versions(),
    }
    try:
        import fastxent
        info["fastxent_config"] = fastxent.config()
    except (ImportError, AttributeError):
        pass
    try:
        import threadpoolctl
        info["threadpools"] = [{k: p.get(k) for k in ("user_api", "internal_api", "num_threads",
                                                        "version", "filepath")}
                               for p in threadpoolctl.threadpool_info()]
    except ImportError:
        pass
    return info
