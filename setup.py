"""Build the fastxent extension modules.

Kernel families and instruction-set levels:
  * Every ``fastxent/_<family>.pyx`` is a kernel family (``_xent``, ``_probs``, ...).  Each one is
    built once per instruction-set level, as the module ``fastxent._<family>_<level>``; at import
    ``fastxent._kernels`` picks the best level the CPU runs (``FASTXENT_ISA`` forces one).
  * x86-64 (the default, portable build): ``x86-64-v2`` (SSE4.2, the baseline),
    ``x86-64-v3`` (AVX2, FMA) and ``x86-64-v4`` (AVX-512, with ``-mprefer-vector-width=512``).
    Other architectures: one ``generic`` level (the compiler's default target).
  * ``FASTXENT_NATIVE=1``: one ``native`` level compiled with ``-march=native`` for the machine
    that builds it (not portable: import refuses to run it on a CPU that lacks its features).
    ``FASTXENT_PORTABLE=1`` is accepted and means the default.
  * Each level is a small generated ``.pyx`` (``include`` of the family's source) cythonized
    under its own module name, so names, tracebacks and pickling are right for every level.
  * The C code of a level sees ``-DFX_ISA_LEVEL=<n>``: 2, 3, 4 for x86-64-v2/v3/v4, 0 for the
    generic and native levels.

Compiler flags, chosen per compiler:
  * OpenMP (``-fopenmp``) when a probe program compiles and links with it; otherwise the
    kernels are built single threaded, a warning is printed and ``show_config()`` reports
    ``openmp: off`` (``FASTXENT_NO_OPENMP=1`` forces that).
  * ``-O3 -fno-math-errno -fno-trapping-math -ffp-contract=fast``, no ``-ffast-math``: the
    kernels' NaN/inf semantics are part of the contract and are kept explicit in the code.
  * ``fastxent._cpu`` (CPU feature detection) gets no level flags: it runs on every CPU.
The extensions compile in parallel (``FASTXENT_BUILD_JOBS``, default: the usable CPUs).  The
levels, their flags, the vector width the compiler chooses for each and the CPU features each
needs are written into ``fastxent/_build_info.py`` for ``_kernels`` and ``show_config()``.
"""
import glob
import os
import platform
import re
import shlex
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
from setuptools.errors import PlatformError

HERE = os.path.dirname(os.path.abspath(__file__))
GENERATED = os.path.join("build", "fastxent-levels")   # the per-level .pyx and .c files

# x86-64 levels: name, FX_ISA_LEVEL, -march flag, the same as feature flags (compilers that lack
# the -march name), extra flags.
_V2 = ["-mcx16", "-msahf", "-mpopcnt", "-msse3", "-msse4.1", "-msse4.2", "-mssse3"]
_V3 = _V2 + ["-mavx", "-mavx2", "-mbmi", "-mbmi2", "-mf16c", "-mfma", "-mlzcnt", "-mmovbe", "-mxsave"]
_V4 = _V3 + ["-mavx512f", "-mavx512bw", "-mavx512cd", "-mavx512dq", "-mavx512vl"]
X86_64_LEVELS = [
    ("x86-64-v2", 2, "-march=x86-64-v2", _V2, []),
    ("x86-64-v3", 3, "-march=x86-64-v3", _V3, []),
    # 512-bit vectors: gcc's tuning may prefer 256-bit ones; 512 measured faster on Intel Xeon
    ("x86-64-v4", 4, "-march=x86-64-v4", _V4, ["-mprefer-vector-width=512"]),
]

CYTHON_DIRECTIVES = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": False,
    "nonecheck": False,
    "embedsignature": True,
}

OPENMP_PROBE = """
#include <omp.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    return n > 0 ? 0 : 1;
}
"""
# a loop like the kernels' (auto-vectorised, FMA-able): the vector registers it compiles to show
# the width the compiler chooses for a level's flags
VECTOR_PROBE = """
void fx_probe(float *restrict a, const float *restrict b, int n)
{ for (int i = 0; i < n; i++) a[i] = a[i] * b[i] + 1.0f; }
"""
PYTHON_PROBE = "#include <Python.h>\nint main(void) { return Py_IsInitialized(); }\n"

NO_COMPILER = (
    "fastxent: no working C compiler ({cc!r} {why}).  Building fastxent from source needs one:\n"
    "  Debian/Ubuntu: apt-get install gcc python3-dev    Fedora/RHEL: dnf install gcc python3-devel\n"
    "  Alpine: apk add gcc musl-dev python3-dev    conda: conda install -c conda-forge c-compiler\n"
    "  macOS: xcode-select --install\n"
    "or set CC to a compiler, or install a prebuilt wheel (pip install --only-binary fastxent fastxent)."
)
NO_PYTHON_HEADERS = (
    "fastxent: the C compiler works but cannot find Python.h.  Install Python's development "
    "headers (Debian/Ubuntu: apt-get install python3-dev; Fedora/RHEL: dnf install python3-devel)."
)


def _env_flag(name):
    return os.environ.get(name, "").strip() not in ("", "0")


def _jobs():
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return max(1, int(os.environ.get("FASTXENT_BUILD_JOBS", "0") or 0) or n)


class _Compiler:
    """Runs small probe programs through the compiler command setuptools builds with."""

    def __init__(self, command, include_dirs=()):
        self.command = list(command)
        self.includes = ["-I" + d for d in include_dirs]

    def run(self, flags, source="int main(void){return 0;}\n", link=True, link_flags=()):
        """(ok, stdout, stderr) of compiling ``source``: linked into a program, or ``-S``."""
        tmp = tempfile.mkdtemp(prefix="fastxent-probe-")
        try:
            src = os.path.join(tmp, "probe.c")
            with open(src, "w") as f:
                f.write(source)
            out = ["-o", os.path.join(tmp, "probe")] if link else ["-S", "-o", "-"]
            cmd = self.command + list(flags) + self.includes + [src] + out + list(link_flags)
            p = subprocess.run(cmd, capture_output=True, text=True)
            return p.returncode == 0, p.stdout, p.stderr
        except OSError as e:
            return False, "", str(e)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def accepts(self, flags, source="int main(void){return 0;}\n", link_flags=()):
        return self.run(flags, source, True, link_flags)[0]

    def macros(self, flags):
        """The names of the predefined macros that are defined as 1 (``__AVX2__`` -> "AVX2")."""
        p = subprocess.run(self.command + list(flags) + ["-dM", "-E", "-x", "c", os.devnull],
                           capture_output=True, text=True)
        names = set(re.findall(r"#define __(\w+?)__ 1$", p.stdout, re.M))
        if "#define __GCC_HAVE_SYNC_COMPARE_AND_SWAP_16 1" in p.stdout:
            names.add("CX16")
        return names

    def vector_bits(self, flags):
        """Widest vector register the probe loop compiles to (x86: xmm/ymm/zmm), or None."""
        ok, asm, _ = self.run(["-O3"] + list(flags), VECTOR_PROBE, link=False)
        for reg, bits in (("zmm", 512), ("ymm", 256), ("xmm", 128)):
            if ok and "%" + reg in asm:
                return bits
        if ok and re.search(r"\bz\d+\.[sd]\b", asm):
            return "scalable (SVE)"
        if ok and re.search(r"\bv\d+\.(4s|2d)\b", asm):
            return 128
        return None


def _isa_name(macros):
    for macro, name in (("AVX512F", "AVX-512"), ("AVX2", "AVX2"), ("AVX", "AVX"),
                        ("SSE4_2", "SSE4.2"), ("SSE2", "SSE2"), ("ARM_FEATURE_SVE", "SVE"),
                        ("ARM_NEON", "NEON")):
        if macro in macros:
            return name + ("+FMA" if name == "AVX2" and "FMA" in macros else "")
    return "scalar"


def _level(cc, name, number, flags, baseline_macros, base_flags):
    """One level's build description; ``requires``: features its flags let the compiler use."""
    macros = cc.macros(base_flags + flags)
    bits = cc.vector_bits(base_flags + flags)
    width = "no vector loops" if bits is None else (
        bits if isinstance(bits, str) else "%d-bit vectors" % bits)
    return {
        "name": name,
        "suffix": re.sub(r"\W", "_", name),
        "flags": flags + ["-DFX_ISA_LEVEL=%d" % number],
        "simd": "%s, %s" % (_isa_name(macros), width),
        "requires": sorted(m.lower() for m in macros - baseline_macros),
    }


def _levels(cc, base_flags):
    """The levels to build (those of ``_planned_levels``), lowest first.  A level's ``requires``
    are measured against the bare compiler (no CFLAGS): flags such as ``-mavx2`` in CFLAGS reach
    every level, and then import refuses a level on a CPU without AVX2 instead of crashing."""
    bare = _Compiler(shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"))
    names = _planned_levels()
    baseline = bare.macros(["-march=x86-64"] if names[0].startswith("x86-64") else [])
    if names == ["native"]:
        if not cc.accepts(["-march=native"]):
            raise PlatformError("fastxent: FASTXENT_NATIVE=1 but the C compiler does not accept -march=native.")
        return [_level(cc, "native", 0, ["-march=native"], baseline, base_flags)]
    if names == ["generic"]:
        return [_level(cc, "generic", 0, [], baseline, base_flags)]
    if not cc.accepts(["-c"], "#if !defined(__x86_64__) || defined(__ILP32__)\n#error\n#endif\n"):
        raise PlatformError("fastxent: this is an x86-64 machine but the C compiler does not build for "
                            "x86-64; set CC to an x86-64 compiler.")
    levels = []
    for name, number, march, features, extra in X86_64_LEVELS:
        flags = [march] if cc.accepts([march]) else ["-march=x86-64"] + features
        flags += [f for f in extra if cc.accepts([f])]
        if not cc.accepts(flags):
            raise PlatformError("fastxent: the C compiler does not accept the flags of %s (%s); use a newer "
                                "compiler, or build for this machine only with FASTXENT_NATIVE=1."
                                % (name, " ".join(flags)))
        levels.append(_level(cc, name, number, flags, baseline, base_flags))
    return levels


def _common_flags(cc):
    compile_args = ["-O3", "-g0", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=fast"]
    if cc.accepts(["-Werror=implicit-function-declaration"]):
        # a misspelt intrinsic must stop the build, not leave an undefined symbol for import
        compile_args.append("-Werror=implicit-function-declaration")
    link_args = []
    openmp = not _env_flag("FASTXENT_NO_OPENMP") and cc.accepts(["-fopenmp"], OPENMP_PROBE, ["-fopenmp"])
    if openmp:
        compile_args.append("-fopenmp")
        link_args.append("-fopenmp")
    else:
        msg = ("fastxent: the C compiler does not support OpenMP (-fopenmp); building the "
               "kernels single threaded. Install a compiler with OpenMP for multi-core speed.")
        warnings.warn(msg)
        print("WARNING: " + msg, file=sys.stderr)
        if cc.accepts(["-fopenmp-simd"]):
            compile_args += ["-fopenmp-simd", "-DFASTXENT_OMP_SIMD"]
    return compile_args, link_args, openmp


def _families():
    return sorted(os.path.basename(p)[1:-4] for p in glob.glob(os.path.join(HERE, "fastxent", "_*.pyx")))


def _write_level_source(family, level):
    """The generated .pyx of one family at one level: the family's source, under its own name."""
    path = os.path.join(HERE, GENERATED, "_%s_%s.pyx" % (family, level["suffix"]))
    text = ('"""fastxent._%s built for %s (%s): the kernels of fastxent/_%s.pyx."""\n'
            'include "fastxent/_%s.pyx"\n' % (family, level["name"], level["simd"], family, family))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    old = open(path).read() if os.path.exists(path) else None
    if old != text:                   # unchanged files keep their time: no needless rebuilds
        with open(path, "w") as f:
            f.write(text)
    return path


class BuildExt(build_ext):
    """Probes the compiler, plans the levels, generates and cythonizes the per-level sources and
    compiles every extension in parallel."""

    def finalize_options(self):
        super().finalize_options()
        if not self.parallel:
            self.parallel = _jobs()

    def _probe_compiler(self):
        command = list(getattr(self.compiler, "compiler_so", None) or ["cc"])
        cc = _Compiler([a for a in command if a not in ("-c",)])
        ok, _, err = cc.run([])
        if not ok:
            why = err.strip().splitlines()[-1] if err.strip() else "failed"
            raise PlatformError(NO_COMPILER.format(cc=command[0], why="does not run: " + why[:200]))
        py_includes = [sysconfig.get_paths()["include"]] + list(self.include_dirs or [])
        if not _Compiler(cc.command, py_includes).accepts(["-c"], PYTHON_PROBE):
            raise PlatformError(NO_PYTHON_HEADERS)
        return cc

    def build_extensions(self):
        cc = self._probe_compiler()
        compile_args, link_args, openmp = _common_flags(cc)
        levels = _levels(cc, compile_args)
        families = _families()
        by_name = {"fastxent._%s_%s" % (fam, lv["suffix"]): (fam, lv) for fam in families for lv in levels}
        kernels = [ext for ext in self.extensions if ext.name in by_name]
        for ext in kernels:
            fam, lv = by_name[ext.name]
            ext.sources = [_write_level_source(fam, lv)]
            ext.extra_compile_args = compile_args + lv["flags"]
            ext.extra_link_args = link_args
        cythonize(kernels, nthreads=self.parallel if self.parallel > 1 else 0, quiet=True,
                  include_path=[HERE], compiler_directives=CYTHON_DIRECTIVES)
        for ext in kernels:
            ext.sources = [s[:-4] + ".c" if s.endswith(".pyx") else s for s in ext.sources]
        version = subprocess.run(cc.command[:1] + ["--version"], capture_output=True, text=True).stdout
        info = {
            "openmp": openmp,
            "build": {"native": "native", "generic": "generic"}.get(levels[0]["name"], "dispatched"),
            "compiler": (version.splitlines() or cc.command[:1])[0],
            "compile_args": compile_args,
            "link_args": link_args,
            "families": families,
            "levels": levels,
        }
        self._write_build_info(info)
        self._remove_stale_modules(os.path.join(self.build_lib, "fastxent"))
        super().build_extensions()

    def _write_build_info(self, info):
        path = os.path.join(self.build_lib, "fastxent", "_build_info.py")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write('"""Written by setup.py at build time."""\nfrom typing import Any\n\n'
                    'BUILD_INFO: dict[str, Any] = %r\n' % (info,))

    def get_outputs(self):
        return super().get_outputs() + [os.path.join(self.build_lib, "fastxent", "_build_info.py")]

    def copy_extensions_to_source(self):
        """In-place and editable builds: the build info too, and no stale kernel modules."""
        super().copy_extensions_to_source()
        package = os.path.join(HERE, "fastxent")
        shutil.copyfile(os.path.join(self.build_lib, "fastxent", "_build_info.py"),
                        os.path.join(package, "_build_info.py"))
        self._remove_stale_modules(package)

    def _remove_stale_modules(self, directory):
        """Kernel modules of earlier builds (other levels, or one module per family) that this
        build does not produce: they must not end up in a wheel next to the current ones."""
        current = {os.path.basename(self.get_ext_filename(e.name)) for e in self.extensions}
        suffix = re.escape(self.get_ext_filename("x")[1:])
        families = "|".join(re.escape(f) for f in _families())
        for path in glob.glob(os.path.join(directory, "_*")):
            name = os.path.basename(path)
            if name not in current and re.fullmatch(r"_(%s)(_\w+)?%s" % (families, suffix), name):
                os.remove(path)


def _planned_levels():
    """Level names, known before the compiler is probed (they fix the extension names)."""
    if _env_flag("FASTXENT_NATIVE") and _env_flag("FASTXENT_PORTABLE"):
        raise PlatformError("fastxent: FASTXENT_NATIVE=1 and FASTXENT_PORTABLE=1 contradict each other; set one.")
    if _env_flag("FASTXENT_NATIVE"):
        return ["native"]
    if platform.machine().lower() in ("x86_64", "amd64") and sys.maxsize > 2 ** 32:
        return [name for name, *_ in X86_64_LEVELS]
    return ["generic"]


def _extensions():
    include_dirs = [np.get_include(), os.path.join(HERE, "fastxent")]
    depends = sorted(glob.glob(os.path.join("fastxent", "*.h")) + glob.glob(os.path.join("fastxent", "*.pxd")))
    exts = [Extension("fastxent._cpu", [os.path.join("fastxent", "_cpu.c")])]
    for fam in _families():
        for level in _planned_levels():
            exts.append(Extension(
                "fastxent._%s_%s" % (fam, re.sub(r"\W", "_", level)),
                [os.path.join("fastxent", "_%s.pyx" % fam)],      # replaced by the level's source
                include_dirs=include_dirs, depends=depends,
                define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION")]))
    return exts


if __name__ == "__main__":        # cythonize's worker processes import this file too
    setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})
