"""The compiled kernel modules in use: the one place where they are chosen.

setup.py builds every kernel family (``fastxent/_<family>.pyx``: ``xent`` the softmax
cross-entropy and log-sum-exp family, ``probs`` the probability-space losses) once per
instruction-set level, as ``fastxent._<family>_<level>``: on x86-64 ``x86-64-v2`` (SSE4.2),
``x86-64-v3`` (AVX2, FMA) and ``x86-64-v4`` (AVX-512); elsewhere one ``generic`` level, and one
``native`` level in a ``FASTXENT_NATIVE=1`` build.  At import the best level this CPU runs is
used, or the one named by the environment variable ``FASTXENT_ISA``; ``use(level)`` switches at
run time.  API modules reach the kernels as ``_kernels.xent`` / ``_kernels.probs``, looked up at
each call, so a switch applies at once.

A level is "supported" when the CPU has every feature its compiler flags allow (read with CPUID
by ``fastxent._cpu``, not from /proc/cpuinfo) and the operating system saves the AVX / AVX-512
register state.
"""
import os
from importlib import import_module
from typing import TYPE_CHECKING

from . import _cpu
from ._build_info import BUILD_INFO

if TYPE_CHECKING:      # the families' interfaces (_xent.pyi, _probs.pyi); set by use() at run time
    from . import _probs as probs
    from . import _xent as xent

ENV = "FASTXENT_ISA"
LEVELS = tuple(level["name"] for level in BUILD_INFO["levels"])     # built, lowest first
FAMILIES = tuple(BUILD_INFO["families"])
_BY_NAME = {level["name"]: level for level in BUILD_INFO["levels"]}

level = None    # the name of the level in use
chosen_by = None  # how: "CPU" (the best it runs), "FASTXENT_ISA" or "use()"


def cpu_features():
    """The features of this CPU (``fastxent._cpu.features()``; empty off x86-64)."""
    return _cpu.features()


def missing(name, features=None):
    """The CPU features level ``name`` needs that ``features`` (default: this CPU's) lack."""
    features = cpu_features() if features is None else features
    needs = [f for f in _BY_NAME[name]["requires"] if f in features]   # unknown names: unchecked
    if any(f.startswith("avx") or f in ("fma", "f16c") for f in needs):
        needs.append("os_avx")
    if any(f.startswith("avx512") for f in needs):
        needs.append("os_avx512")
    return sorted(f for f in set(needs) if not features.get(f))


def supported(features=None):
    """The built levels this CPU runs, lowest first."""
    return [name for name in LEVELS if not missing(name, features)]


def _check(name, features=None):
    """Raise ValueError unless ``name`` is a built level this CPU runs."""
    if name not in _BY_NAME:
        raise ValueError(f"unknown instruction-set level {name!r}; this build has {', '.join(LEVELS)}")
    lack = missing(name, features)
    if lack:
        runs = supported(features)
        os_note = (" (os_avx / os_avx512: the operating system does not enable those registers)"
                   if {"os_avx", "os_avx512"} & set(lack) else "")
        raise ValueError(f"this CPU cannot run the {name} kernels: it lacks {', '.join(lack)}{os_note}; "
                         f"it runs {', '.join(runs) if runs else 'none of the built levels'}")


def use(name):
    """Switch the kernels of every family to level ``name`` (a built level this CPU runs)."""
    global level, chosen_by
    _check(name)
    modules = {fam: import_module(f"{__package__}._{fam}_{_BY_NAME[name]['suffix']}") for fam in FAMILIES}
    globals().update(modules)
    level, chosen_by = name, "use()"
    return name


def _select():
    global chosen_by
    forced = os.environ.get(ENV, "").strip()
    if forced:
        try:
            use(forced)
        except ValueError as e:
            raise ImportError(f"{ENV}={forced}: {e}") from None
        chosen_by = ENV
        return
    runs = supported()
    if not runs:
        hint = ("; this is a FASTXENT_NATIVE=1 build for another CPU: rebuild it here, or build the "
                "default (portable) way" if LEVELS == ("native",) else "")
        raise ImportError(f"fastxent cannot run on this CPU: "
                          f"its lowest kernel level, {LEVELS[0]}, needs {', '.join(missing(LEVELS[0]))}{hint}")
    use(runs[-1])
    chosen_by = "CPU"


_select()
