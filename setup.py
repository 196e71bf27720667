"""Build the fastxent extension modules.

Compiler flags, chosen per compiler:
  * OpenMP (``-fopenmp``) when a probe program compiles and links with it; otherwise the
    kernels are built single threaded, a warning is printed and ``fastxent.show_config()``
    reports ``openmp: off``.
  * ``-O3`` plus ``-march=native`` so the SIMD exp/log loops use the widest vectors of the
    machine fastxent is installed on.  Set ``FASTXENT_PORTABLE=1`` to build code that runs on
    any x86-64 (or other) CPU instead (``-march`` is then left to the compiler default).
  * ``-fno-math-errno`` only: no ``-ffast-math``, because the kernels' NaN/inf semantics are
    part of the contract and are kept explicit in the code.
The chosen flags are written into ``fastxent/_build_info.py`` for ``show_config()``.
"""
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import warnings

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))


def _compiler_cmd():
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return cc.split()


def _compiles(flags, source="int main(void){return 0;}\n", link_flags=()):
    """Return True if the C compiler accepts ``flags`` for a small program."""
    tmp = tempfile.mkdtemp(prefix="fastxent-probe-")
    try:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(source)
        cmd = _compiler_cmd() + list(flags) + [src, "-o", os.path.join(tmp, "probe")] + list(link_flags)
        return subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
    except OSError:
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


OPENMP_PROBE = """
#include <omp.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    return n > 0 ? 0 : 1;
}
"""


def _flags():
    compile_args = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=fast"]
    link_args = []
    portable = os.environ.get("FASTXENT_PORTABLE", "").strip() not in ("", "0")
    if not portable and _compiles(["-march=native"]):
        compile_args.append("-march=native")
    openmp = False
    if os.environ.get("FASTXENT_NO_OPENMP", "").strip() in ("", "0"):
        openmp = _compiles(["-fopenmp"], OPENMP_PROBE, ["-fopenmp"])
    if openmp:
        compile_args.append("-fopenmp")
        link_args.append("-fopenmp")
    else:
        msg = ("fastxent: the C compiler does not support OpenMP (-fopenmp); building the "
               "kernels single threaded. Install a compiler with OpenMP for multi-core speed.")
        warnings.warn(msg)
        print("WARNING: " + msg, file=sys.stderr)
        if _compiles(["-fopenmp-simd"]):
            compile_args += ["-fopenmp-simd", "-DFASTXENT_OMP_SIMD"]
    return compile_args, link_args, openmp, portable


class BuildExt(build_ext):
    def build_extensions(self):
        compile_args, link_args, openmp, portable = _flags()
        for ext in self.extensions:
            ext.extra_compile_args = compile_args + ext.extra_compile_args
            ext.extra_link_args = link_args + ext.extra_link_args
        cc = " ".join(self.compiler.compiler_so[:1]) if hasattr(self.compiler, "compiler_so") else "cc"
        try:
            version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
        except (OSError, IndexError):
            version = cc
        info = {
            "openmp": openmp,
            "portable": portable,
            "compiler": version,
            "compile_args": compile_args,
            "link_args": link_args,
        }
        target = os.path.join(self.build_lib, "fastxent", "_build_info.py")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        for path in {target, os.path.join(HERE, "fastxent", "_build_info.py")} if self.inplace else {target}:
            with open(path, "w") as f:
                f.write('"""Written by setup.py at build time."""\nBUILD_INFO = %r\n' % (info,))
        super().build_extensions()


def _extensions():
    common = dict(
        include_dirs=[np.get_include(), os.path.join(HERE, "fastxent")],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION")],
    )
    # one extension per kernel family: fastxent/_<family>.pyx
    sources = sorted(glob.glob(os.path.join("fastxent", "_*.pyx")))
    headers = sorted(glob.glob(os.path.join("fastxent", "*.h")))  # rebuild when a header changes
    exts = [Extension("fastxent." + os.path.basename(src)[:-4], [src], depends=headers, **common)
            for src in sources]
    return cythonize(
        exts,
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
            "nonecheck": False,
            "embedsignature": True,
        },
    )


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})
