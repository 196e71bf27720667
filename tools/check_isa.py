"""Check the machine code of every kernel module against its instruction-set level.

    python tools/check_isa.py                       # the installed fastxent
    python tools/check_isa.py dist/fastxent-*.whl   # the modules inside a wheel
    python tools/check_isa.py fastxent/             # a directory of built modules

Disassembles each ``fastxent/_<family>_<level>*.so`` (and ``_cpu``) with ``objdump -d`` (GNU
binutils, x86-64 only) and prints how many instructions use 128-bit (SSE and VEX), 256-bit and
512-bit vector registers.  Exits 1 when a module holds an instruction its level does not allow:
x86-64-v2 and ``_cpu``: no VEX/EVEX encoding (no AVX), no BMI/LZCNT/MOVBE; x86-64-v3: no 512-bit
or EVEX-only registers.  The x86-64-v4 column shows whether the code really uses 512-bit vectors.
"""
import collections
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile

LEVEL = re.compile(r"_(x86_64_v[234]|generic|native)\.")
# BMI1/2, LZCNT, MOVBE: part of x86-64-v3, not of v2
V3_SCALAR = {"andn", "bextr", "blsi", "blsmsk", "blsr", "bzhi", "mulx", "pdep", "pext", "rorx",
             "sarx", "shlx", "shrx", "lzcnt", "tzcnt", "movbe"}
EVEX_ONLY = re.compile(r"%(?:[xyz]mm(?:1[6-9]|2\d|3[01])|k[0-7])\b")


def level_of(path):
    name = os.path.basename(path)
    if name.startswith("_cpu."):
        return "baseline"
    m = LEVEL.search(name)
    return m.group(1).replace("_", "-") if m else None


def census(path):
    """Counts of instruction classes in the code of one shared object."""
    asm = subprocess.run(["objdump", "-d", "--no-show-raw-insn", path], capture_output=True,
                         text=True, check=True).stdout
    counts = collections.Counter()
    for line in asm.splitlines():
        parts = line.split("\t")
        if len(parts) < 2 or not parts[0].strip().endswith(":"):
            continue
        insn = parts[1].strip()
        if not insn:
            continue
        mnemonic, _, operands = insn.partition(" ")
        counts["instructions"] += 1
        if "%zmm" in operands:
            counts["512-bit"] += 1
        elif "%ymm" in operands:
            counts["256-bit"] += 1
        elif "%xmm" in operands:
            counts["VEX 128-bit" if mnemonic.startswith("v") else "SSE 128-bit"] += 1
        if mnemonic.startswith("v") and "%" in operands and "mm" in operands:
            counts["VEX/EVEX"] += 1
        if EVEX_ONLY.search(operands):
            counts["EVEX-only"] += 1
        if mnemonic in V3_SCALAR:
            counts["BMI/LZCNT/MOVBE"] += 1
    return counts


def violations(level, counts):
    bad = []
    if level in ("baseline", "x86-64-v2"):
        bad += [k for k in ("VEX/EVEX", "BMI/LZCNT/MOVBE") if counts[k]]
    if level == "x86-64-v3":
        bad += [k for k in ("512-bit", "EVEX-only") if counts[k]]
    return bad


def modules(args):
    tmp = None
    if not args:
        import fastxent
        args = [os.path.dirname(fastxent.__file__)]
    paths = []
    for arg in args:
        if arg.endswith(".whl"):
            tmp = tmp or tempfile.mkdtemp(prefix="fastxent-check-isa-")
            with zipfile.ZipFile(arg) as z:
                for name in z.namelist():
                    if name.startswith("fastxent/") and name.endswith(".so"):
                        paths.append(z.extract(name, os.path.join(tmp, os.path.basename(arg))))
        elif os.path.isdir(arg):
            paths += glob.glob(os.path.join(arg, "*.so"))
        else:
            paths.append(arg)
    return sorted(p for p in paths if level_of(p)), tmp


def main(args):
    if shutil.which("objdump") is None:
        print("check_isa: objdump (GNU binutils) is needed", file=sys.stderr)
        return 2
    paths, tmp = modules(args)
    if not paths:
        print("check_isa: no fastxent kernel modules found in %s" % (args or "the installed fastxent"),
              file=sys.stderr)
        return 2
    cols = ["instructions", "SSE 128-bit", "VEX 128-bit", "256-bit", "512-bit"]
    print("%-28s %-10s" % ("module", "level") + "".join("%13s" % c for c in cols) + "  verdict")
    failed = False
    try:
        for path in paths:
            level = level_of(path)
            counts = census(path)
            bad = violations(level, counts)
            failed |= bool(bad)
            verdict = "ok" if not bad else "NOT %s: %s" % (level, ", ".join(
                "%d %s" % (counts[k], k) for k in bad))
            print("%-28s %-10s" % (os.path.basename(path).split(".")[0], level)
                  + "".join("%13d" % counts[c] for c in cols) + "  " + verdict)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
